"""``prune --structure channels`` as a library call: the original's artifacts as the reference,
whole channels removed (``compress.channels``), the smaller model fine-tuned, its artifacts
built and measured against the original, the ``channel_pruning`` section."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gencompress.compress.channels.pruner import ChannelPruner
from gencompress.compress.channels.smallest import smallest_meeting
from gencompress.compress.channels.training import finetune_pruned
from gencompress.config import PruneConfig
from gencompress.pipelines.build import build_artifacts, build_pruned
from gencompress.pipelines.gates import judge
from gencompress.pipelines.result import Result
from gencompress.pipelines.session import Session, make_report, prepare
from gencompress.results import ChannelPruningSection

PRUNE_HINT = "prune fewer channels or fine-tune longer"
MEASURE_BATCH = 16


def prune_channels(model, config: PruneConfig, calibration=None, progress=None, strategy=None) -> Result:
    """Remove whole channels of ``model`` (a ``LoadedModel`` with Keras layers) to
    ``config.channel_target()``, fine-tune, write and measure the original and pruned artifacts
    (float32 and each ``config.then`` precision, per format) and keep ``<stem>-pruned.h5|.keras``,
    a plain Keras model with fewer filters. Everything is measured against the original."""
    from gencompress.model import flat_copy

    teacher = flat_copy(model.keras_model)
    session = prepare(model, config, calibration, progress)
    try:
        return _run(session, model, teacher, config, strategy)
    except BaseException:
        session.cache.close()
        raise


def _run(session: Session, model, teacher, config: PruneConfig, strategy) -> Result:
    from gencompress.compress.finetune import training_sources

    precisions = [p for p in config.then if p != "qat"]
    build_artifacts(session, precisions, PRUNE_HINT)  # the original first: the reference

    def sources(batch: int):
        return training_sources(model, session.calibration, batch, config.seed, session.config.eval_samples)

    source, val = sources(MEASURE_BATCH)
    pruner = ChannelPruner(teacher, source, val, session.output_range, config.importance, config.seed, session.progress)

    def train(keras_model, training, start_db):
        return finetune_pruned(keras_model, teacher, sources, session.output_range, training, start_db=start_db, progress=session.progress,
                               strategy=strategy)

    kind, value = config.channel_target()
    search, met = None, True
    if kind == "psnr":
        cand, result, kept, search = smallest_meeting(pruner, value, config.training, train)
        met = any(a["passed"] and a["picked"] for a in search)
    else:
        counts, met = pruner.counts_for(kind, value)
        cand = pruner.prune(counts)
        cand.model, result, kept = train(cand.model, config.training, cand.psnr_db)
    derived = build_pruned(session, model, cand.model, precisions, PRUNE_HINT)
    saved = Path(derived.model.path)
    qat = _qat(session, derived, config, cand.model, teacher, strategy)
    # --min-psnr alone is the pruned model's own target: its float artifacts are graded too
    judge(session, config.min_psnr, lambda a: a.variant == "pruned-qat" or (a.variant == "pruned" and (kind == "psnr" or a.precision != "float32")))
    report = make_report(session, "prune")
    report.channel_pruning = section(pruner, cand, result, kept, comparison(session), saved, config, met, search)
    report.qat = qat
    return Result(report, session.files, session.cache, previews=session.previews, model=cand.model)


def _qat(session: Session, derived: Session, config: PruneConfig, pruned_keras, teacher, strategy):
    """``--then qat``: quantization-aware training of the pruned model against the original
    (nothing to preserve: its weights are dense)."""
    if "qat" not in config.then:
        return None
    from gencompress.config import QAT_TRAINING
    from gencompress.pipelines.qat import add_qat_artifacts

    budget = config.training.time_budget
    training = QAT_TRAINING if budget is None else dataclasses.replace(QAT_TRAINING, time_budget=budget / 2)
    qat = add_qat_artifacts(derived, training, pruned_keras, teacher=teacher, tag="qat", strategy=strategy)  # <stem>-pruned-qat.int8.*
    for a in derived.artifacts:
        if a.variant == "qat":
            a.variant = "pruned-qat"
            session.artifacts.append(a)
    session.failures.extend(f.model_copy(update={"variant": "pruned-qat"}) for f in derived.failures if f.variant == "qat")
    return qat.model_copy(update={"variant": "pruned-qat"})


def section(pruner, cand, result, kept_start, rows, saved, config: PruneConfig, met: bool, search) -> ChannelPruningSection:
    """The report's ``channel_pruning`` section."""
    kind, value = config.channel_target()
    original_params = int(pruner.teacher.count_params())
    pruned_params = int(cand.model.count_params())
    return ChannelPruningSection(
        target={"kind": kind, "value": value}, met_target=bool(met), importance=config.importance,
        original_params=original_params, pruned_params=pruned_params, params_ratio=round(pruned_params / original_params, 4),
        original_macs=pruner.macs, pruned_macs=cand.macs, macs_ratio=round(cand.macs / max(pruner.macs, 1), 4),
        groups=pruner.group_rows(cand.counts), layers=layer_rows(pruner.teacher, cand.model),
        psnr_removed_db=cand.psnr_removed_db, psnr_refit_db=cand.psnr_refit_db, psnr_start_db=cand.psnr_db,
        batchnorm=cand.batchnorm, refit_layers=cand.refit_layers, not_refit=list(pruner.reconstruction.unsupported),
        finetune={**result.summary(), "config": getattr(result, "config", None)}, kept_start=bool(kept_start),
        final_psnr_db=None if result.final_psnr_db is None else round(float(result.final_psnr_db), 3),
        comparison=rows, search=search, timings={**pruner.timings, "prune_s": cand.seconds},
        pruned_model=str(saved), notes=_notes(pruner, met, search, kind, value),
    )


def layer_rows(original, pruned) -> list[dict]:
    """Per layer whose filters/units changed: before and after."""
    from gencompress.compress.channels.graph import WIDTH_PARAM

    rows = []
    for layer in pruned.layers:
        key = WIDTH_PARAM.get(type(layer).__name__)
        if key is None:
            continue
        before, after = original.get_layer(layer.name).get_config()[key], layer.get_config()[key]
        rows.append({"name": layer.name, "class": type(layer).__name__, "before": int(before), "after": int(after)})
    return rows


# The speed-up of a pruned artifact over the original's is timed in pairs: ROUNDS rounds, each
# timing the original then the pruned artifact (about PAIR_SECONDS a pair in all). Two timings
# minutes apart (as each artifact's own latency is) differed by 1.6x for nothing on this shared
# machine, and even paired wall-clock ratios moved by 20 % from run to run (catgan's ONNX float:
# 1.90x, then 1.55x): the CPU-time ratio (one runtime thread) is the speed-up reported first.
ROUNDS, PAIR_SECONDS = 5, 15.0


def comparison(session: Session) -> list[dict]:
    """Per format and precision slot: the original's and the pruned model's artifact side by
    side, timed against each other (``report.latency.measure_pair``)."""
    from gencompress.report.latency import measure_pair

    artifacts = session.artifacts
    originals = {(a.format, _slot(a)): a for a in artifacts if not a.variant}
    rows = []
    pairs = [(originals.get((a.format, _slot(a))), a) for a in artifacts if a.variant in ("pruned", "pruned-qat")]
    pairs = [(b, a) for b, a in pairs if b is not None]
    sample = session.evaluation.sample(0)
    with session.progress.phase(f"latency of original and pruned artifacts: {ROUNDS} interleaved rounds", total=len(pairs), unit="pair") as phase:
        for base, a in pairs:
            runs = int(min(10, max(2, PAIR_SECONDS / (2 * ROUNDS * max(base.latency_ms.p50, a.latency_ms.p50, 1e-3) / 1000.0))))
            timed = measure_pair(session.runner(base.path, base.format), session.runner(a.path, a.format), sample, ROUNDS, runs)
            phase.update()
            rows.append({
                "format": a.format, "precision": _slot(a) + (" (qat)" if a.variant == "pruned-qat" else ""),
                "original": base.name, "pruned": a.name,
                "original_size_bytes": base.size_bytes, "pruned_size_bytes": a.size_bytes, "size_ratio": round(a.size_bytes / base.size_bytes, 4),
                "original_p50_ms": timed["first_p50_ms"], "pruned_p50_ms": timed["second_p50_ms"],
                "speedup": timed["cpu_speedup"], "wall_speedup": timed["speedup"],
                "timing": f"{ROUNDS} interleaved rounds of {runs} runs; speedup: CPU time, wall_speedup: wall clock",
                "original_psnr_db": base.fidelity.psnr_db, "pruned_psnr_db": a.fidelity.psnr_db, "pruned_ssim": a.fidelity.ssim,
            })
    return rows


def _slot(a) -> str:
    return "int8" if a.fallback or a.smallest_int8_search or a.variant == "pruned-qat" else a.precision


def _notes(pruner, met: bool, search, kind: str, value: float) -> list[str]:
    notes = []
    if not met and kind != "psnr":
        notes.append(f"the {kind} target {value:g} could not be reached: every prunable group is at its smallest")
    if kind == "psnr" and not met:
        notes.append(f"no size tried reached {value:g} dB: the largest tried is kept (see search)")
    if pruner.reconstruction.unsupported:
        notes.append("not re-fitted (their weights are only cut): " + ", ".join(pruner.reconstruction.unsupported))
    return notes
