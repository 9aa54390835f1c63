"""``prune`` as a library call: the original's artifacts as the reference, the model pruned and
fine-tuned, its artifacts built and measured against the original, the pruning section."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gencompress.calibration import Calibration
from gencompress.compress.distribute import strategy_info
from gencompress.compress.pruning import RUNTIME_NOTE, prune_model, pruned_kernels, select_layers, tflite_weight_sparsity
from gencompress.config import PruneConfig
from gencompress.errors import UnsupportedModelError
from gencompress.pipelines.build import build_artifacts, build_pruned
from gencompress.pipelines.gates import judge
from gencompress.pipelines.result import Result
from gencompress.pipelines.session import Session, make_report, prepare
from gencompress.progress import Progress
from gencompress.results import PruningSection

PRUNE_HINT = "prune less or fine-tune longer"


def prune(model, config: PruneConfig | None = None, calibration: Calibration | None = None, progress: Progress | None = None, strategy=None) -> Result:
    """Prune + fine-tune ``model``, write and measure the original and pruned artifacts (float32
    and each ``config.then`` precision, per format), keep ``<stem>-pruned.h5|.keras`` and report
    the measured sparsity. Every artifact is measured against the *original* float model; the
    pruned model's quantized artifacts are graded against ``config.min_psnr``."""
    config = config or PruneConfig()
    if model.keras_model is None:
        raise UnsupportedModelError(
            f"{model.path} is a plain SavedModel (no Keras layers): pruning needs a Keras model (.h5, .keras or a Keras SavedModel)"
        )
    from gencompress.tfenv import import_tf

    import_tf()
    if config.structure == "channels":
        from gencompress.pipelines.prune_channels import prune_channels

        return prune_channels(model, config, calibration, progress, strategy)
    select_layers(model.keras_model, config)  # option errors before any work
    if config.training.steps is not None:
        config.effective_schedule()
    session = prepare(model, config, calibration, progress)
    try:
        return _prune(session, model, config, strategy)
    except BaseException:
        session.cache.close()
        raise


def _prune(session: Session, model, config: PruneConfig, strategy) -> Result:
    from gencompress.compress.finetune import training_sources

    precisions = [p for p in config.then if p != "qat"]
    # The original first: the size and fidelity reference. Its int8 goes through the same search
    # as the pruned model's, so that both are what `gencompress quantize` would write.
    build_artifacts(session, precisions, PRUNE_HINT)
    budget = config.training.time_budget
    if budget is not None and "qat" in config.then:  # the command's budget, shared by its two fine-tunings
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, time_budget=budget / 2))
    config, plan = plan_pruning(session, model, config, strategy)
    source, val = training_sources(model, session.calibration, config.training.batch_size, config.seed, session.config.eval_samples)
    pruned, info = prune_model(
        model.keras_model, config, source=source, held=val, output_range=session.output_range,
        seed=config.seed, progress=session.progress, strategy=strategy, plan=plan,
    )
    pruned_loaded = build_pruned(session, model, pruned, precisions, PRUNE_HINT).model
    saved = Path(pruned_loaded.path)
    qat = None
    if "qat" in config.then:  # pruning-preserving QAT of the pruned model, against the original
        from gencompress.config import QAT_TRAINING
        from gencompress.pipelines.qat import qat_after_pruning

        qat_training = QAT_TRAINING if budget is None else dataclasses.replace(QAT_TRAINING, time_budget=budget / 2)
        qat = qat_after_pruning(pruned_loaded, session, qat_training, strategy=strategy)
    judge(session, config.min_psnr, lambda a: a.variant == "pruned-qat" or (a.variant == "pruned" and a.precision != "float32"))
    report = make_report(session, "prune")
    report.pruning = pruning_section(info, session.artifacts, saved, model, pruned_kernels(pruned, info.layers))
    report.pruning.distribute = strategy_info(strategy)
    report.qat = qat
    return Result(report, session.files, session.cache, previews=session.previews, model=pruned)


def plan_pruning(session: Session, model, config: PruneConfig, strategy=None):
    """``config`` with its fine-tuning steps and batch decided (from the measured step cost of a
    plain copy of the model where they are not given) and the plan's record. Auto steps cover a
    given ``end_step``/``begin_step`` with at least one evaluation round after it."""
    from gencompress.compress.finetune import training_sources
    from gencompress.compress.finetune_plan import PROBE_BATCH, resolve_training
    from gencompress.tfenv import import_keras

    training = config.training
    probe = None
    if not training.resolved:
        keras = import_keras()
        probe = keras.models.clone_model(model.keras_model)  # never the input model: the probe trains it
        probe.set_weights(model.keras_model.get_weights())
    source, _ = training_sources(model, session.calibration, PROBE_BATCH, config.seed, 1)
    training, plan = resolve_training(
        training, probe, model.keras_model, next(iter(source)), session.config.eval_samples, strategy, session.progress,
    )
    needed = max(config.begin_step, config.end_step or 0)
    if "steps" in plan["chosen"] and training.steps <= needed:
        steps = training.eval_every * (needed // training.eval_every + 1)
        training, plan = dataclasses.replace(training, steps=steps), {**plan, "steps": steps}
    return dataclasses.replace(config, training=training), plan


def pruning_section(info, artifacts, saved: Path, model, kernels: dict) -> PruningSection:
    section = info.to_dict()
    total_params = int(model.params)
    originals = {(a.format, _slot(a)): a for a in artifacts if not a.variant}
    rows, stored = [], []
    for a in artifacts:
        if a.variant != "pruned":
            continue
        base = originals.get((a.format, _slot(a)))
        rows.append(
            {
                "format": a.format,
                "precision": a.precision,
                "original_gzip_bytes": base.gzip_bytes if base else None,
                "pruned_gzip_bytes": a.gzip_bytes,
                "gzip_ratio": round(a.gzip_bytes / base.gzip_bytes, 4) if base else None,
                "size_ratio": round(a.size_bytes / base.size_bytes, 4) if base else None,
                # what the fidelity search chose for each (e.g. "int8, per-tensor dense weights")
                "original_variant": _chosen(base),
                "pruned_variant": _chosen(a),
            }
        )
        if a.format == "tflite":
            stored.append({"artifact": a.name, "precision": a.precision, **tflite_weight_sparsity(a.path, kernels)})
    return PruningSection(
        **section,
        pruned_model=str(saved),
        model_params=total_params,
        model_sparsity=round(info.pruned_zeros / total_params, 5) if total_params else None,
        gzip=rows,
        artifact_sparsity=stored,
        runtime_note=RUNTIME_NOTE,
    )


def _slot(artifact) -> str:
    """The mode an artifact was made for: the int8 search may settle on mixed or weight-only."""
    return "int8" if artifact.fallback or artifact.smallest_int8_search else artifact.precision


def _chosen(artifact) -> str | None:
    search = None if artifact is None else (artifact.fallback or artifact.smallest_int8_search)
    return None if search is None else search.chosen
