"""Quantization-aware training as a step of a run: ``quantize --method qat``, ``prune --then qat``
and ``distill --then qat``.

Builds the QAT model (``compress.qat``), fine-tunes it against the float teacher with the shared
loop, writes its int8 artifacts into the session and returns the report's QAT section: how the
model was built, the fine-tuning, each export's agreement with the QAT Keras model, and (for
``quantize``) post-training beside QAT.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from gencompress.compress.qat import (
    AGREEMENT_DB,
    PRELU_NOTE,
    build_qat_model,
    convert_qat_tflite,
    export_qat_onnx,
    int8_kernel_sparsity,
    settle_weight_ranges,
)
from gencompress.compat.tfmot import input_ranges_frozen
from gencompress.config import TrainingConfig
from gencompress.errors import ConversionError, UnsupportedModelError
from gencompress.pipelines.candidates import graph_compute
from gencompress.pipelines.session import Session, add_artifact, record_failure
from gencompress.results import QatExport, QatSection

# Noise validation set for early stopping (finite data: a tenth of it). The gains QAT fine-tuning
# finds are tenths of a dB; on 64 samples the held-out PSNR moves as much between sets.
VALIDATION_SAMPLES = 256
SAME_SIZE = 1.05  # "the same size": within 5 % of the QAT artifact's bytes (or smaller)


def add_qat_artifacts(
    session: Session,
    training: TrainingConfig,
    keras_model=None,
    *,
    teacher=None,
    prune_preserving: bool = False,
    tag: str = "qat",
    strategy=None,
) -> QatSection:
    """Build the QAT model of ``keras_model``, fine-tune it, write and measure its int8 artifacts.

    ``session`` gives the calibration set (activation ranges, and the fine-tuning source: fresh
    noise, or the training split of the user's data), the held-out evaluation set and the float
    reference of the *original* model, against which everything is measured. ``keras_model``
    defaults to the session's model; ``teacher`` (the fine-tuning target) to the session's
    original float model. Artifacts are ``<stem>-<tag>.int8.tflite|.onnx``; a format that fails
    to convert is recorded in ``session.failures``. Under a ``tf.distribute`` ``strategy`` the QAT
    model is built in its scope and fine-tuned on its devices.
    """
    from gencompress.compress.distribute import scope, strategy_info

    keras_model = keras_model if keras_model is not None else session.model.keras_model
    teacher = teacher if teacher is not None else session.model.keras_model
    if keras_model is None or teacher is None:
        raise UnsupportedModelError(
            f"{session.model.path} is a plain SavedModel (no Keras layers): quantization-aware training needs a "
            "Keras model (.h5, .keras or a Keras SavedModel)"
        )
    config = session.config
    with scope(strategy):
        built = build_qat_model(keras_model, session.calibration, prune_preserving=prune_preserving)
    qat = built.model
    session.progress.log(
        f"QAT: {len(built.quantized)} layers quantized, {sum(r['folded'] for r in built.batchnorm)} BatchNorm folded, "
        f"{len(built.left_float)} left float; ranges calibrated on {built.calibration_samples} samples"
    )
    result, restored, training = _finetune(session, qat, teacher, training, strategy, float_model=keras_model)

    held = _ordered(session.evaluation.arrays, list(qat.input_names))
    qat_outputs = [np.asarray(y) for y in _as_list(qat.predict(held, batch_size=64, verbose=0))]
    from gencompress.report.metrics import fidelity

    section = QatSection(
        scheme=built.scheme,
        variant=tag,
        batchnorm=built.batchnorm,
        fold_max_abs_error=built.fold_max_abs_error,
        quantized_layers=built.quantized,
        left_float=built.left_float,
        range_calibration={
            "samples": built.calibration_samples,
            "method": "min/max over the calibration set; while fine-tuning, activation ranges follow tfmot's moving "
            "averages and model-input ranges stay fixed",
        },
        finetune={
            **result.summary(),
            "kept_calibrated_start": restored,
            "final_psnr_db": _round(result.initial_psnr_db if restored or result.best_psnr_db is None else result.best_psnr_db),
            "config": dataclasses.asdict(training),  # as planned: steps and batch decided
        },
        qat_keras_psnr_db=fidelity(session.reference, qat_outputs, session.output_range)["psnr_db"],
        agreement_target_db=AGREEMENT_DB,
        exports=[],
        distribute=strategy_info(strategy),
    )
    for fmt in config.formats:
        try:
            data = convert_qat_tflite(qat, int8_io=getattr(config, "int8_io", False)) if fmt == "tflite" else export_qat_onnx(qat, session.model.inputs)
        except ConversionError as exc:
            record_failure(session, fmt, "int8", exc, variant=tag)
            session.progress.log(f"  {fmt} QAT int8: failed ({exc})")
            continue
        art = add_artifact(session, fmt, "int8", data, tag=tag)
        art.compute = graph_compute(session, fmt, data)
        export = _agreement(session, art, data, fmt, qat, qat_outputs)
        section.exports = section.exports + [export]
        art.notes = art.notes + export.notes
    return section


def _finetune(session: Session, qat, teacher, training: TrainingConfig, strategy=None, float_model=None):
    """Fine-tune the QAT model against the teacher; returns ``(result, kept the calibrated start,
    the training config with its steps and batch planned)``."""
    from gencompress.compress.finetune import train_to_match, training_sources
    from gencompress.compress.finetune_plan import PROBE_BATCH, resolve_training

    start_weights = qat.get_weights()
    probe = qat
    if strategy is not None and not training.resolved:  # the QAT model lives in the strategy: time a plain float copy
        from gencompress.compress.distillation import plain_copy

        probe = plain_copy(float_model if float_model is not None else teacher)
    sample, _ = training_sources(session.model, session.calibration, PROBE_BATCH, session.config.seed, 1)
    with input_ranges_frozen():
        training, plan = resolve_training(training, probe, teacher, next(iter(sample)), VALIDATION_SAMPLES, strategy, session.progress)
    source, val = training_sources(session.model, session.calibration, training.batch_size, session.config.seed, VALIDATION_SAMPLES)
    with input_ranges_frozen():
        result = train_to_match(
            qat, teacher, source, val, session.output_range, training, progress=session.progress, strategy=strategy, plan=plan,
        )
    restored = False
    if training.steps > 0 and (
        result.best_psnr_db is None or (result.initial_psnr_db is not None and result.best_psnr_db < result.initial_psnr_db)
    ):
        # Fine-tuning never beat the calibrated start (early stopping keeps the best *trained*
        # weights): keep the start.
        qat.set_weights(start_weights)
        restored = True
    settle_weight_ranges(qat)
    return result, restored, training


def _agreement(session: Session, art, data: bytes, fmt: str, qat, qat_outputs) -> QatExport:
    from gencompress.report.metrics import fidelity

    outputs = session.runner(art.path, fmt).run_all(session.evaluation)
    agreement = fidelity(qat_outputs, outputs, session.output_range)["psnr_db"]
    row = QatExport(
        format=fmt,
        artifact=Path(art.path).name,
        psnr_db=art.fidelity.psnr_db,
        agreement_psnr_db=agreement,
        agrees=agreement is not None and agreement >= AGREEMENT_DB,
    )
    notes = []
    if fmt == "tflite":
        from gencompress.compress.qat.model import all_layers
        from gencompress.compress.quantization import tflite_float_ops

        floats = tflite_float_ops(data, [layer.name for layer in all_layers(qat)])
        row.float_ops = [u.label for u in floats]
        if any(u.op == "PRELU" for u in floats):
            notes.append(PRELU_NOTE)
    else:
        import onnx

        graph = onnx.load_from_string(data).graph
        row.qdq_pairs = sum(n.op_type == "QuantizeLinear" for n in graph.node)
        row.int8_weights = sum(i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2 for i in graph.initializer)
    if not row.agrees:
        notes.append(f"differs from the QAT Keras model: {agreement} dB between them (target {AGREEMENT_DB:g} dB)")
    row.notes = notes
    return row


def qat_after_pruning(pruned, session: Session, training: TrainingConfig, tag: str = "pruned-qat", strategy=None) -> QatSection:
    """``prune … --then qat``: pruning-preserving QAT of an already pruned model.

    ``pruned`` is the pruned (stripped) ``LoadedModel``; ``session`` is the *original* model's
    (its float reference, calibration and held-out sets; the original is the fine-tuning
    teacher). tfmot's pruning-preserving scheme masks the zero weights of Dense and Conv2D
    kernels through fine-tuning (Conv2DTranspose through our config, as the scheme has none).
    The section's ``sparsity``: zeros of each pruned kernel in the float model and in the int8
    TFLite file.
    """
    if pruned.keras_model is None:
        raise UnsupportedModelError("pruning-preserving QAT needs the pruned Keras model")
    section = add_qat_artifacts(
        session, training, pruned.keras_model, teacher=session.model.keras_model, prune_preserving=True, tag=tag, strategy=strategy,
    )
    tflite = next((a for a in session.artifacts if a.variant == tag and a.format == "tflite"), None)
    return section.model_copy(update={"sparsity": int8_kernel_sparsity(pruned.keras_model, tflite.path if tflite else None)})


def compare_ptq_qat(artifacts, tag: str = "qat") -> list[dict]:
    """Per format: the post-training int8 artifact beside the QAT int8 artifact, with the best
    post-training int8 variant at the same size or smaller (``ptq_int8_best``: the fidelity
    search's int8 attempts when it ran, else the plain int8 artifact)."""
    rows = []
    for qat in (a for a in artifacts if a.variant == tag):
        ptq = [a for a in artifacts if a.format == qat.format and not a.variant and a.precision != "float32"]
        guarded = next((a for a in ptq if a.fallback is not None), None)
        plain = next((a for a in ptq if a.precision == "int8"), None)
        main = guarded or plain
        if guarded is not None:
            tries = [
                {"label": t.label, "size_bytes": t.size_bytes, "psnr_db": t.psnr_db}
                for t in guarded.fallback.attempts
                if t.precision == "int8" and t.psnr_db is not None
            ]
        elif plain is not None:
            tries = [{"label": "int8", "size_bytes": plain.size_bytes, "psnr_db": plain.fidelity.psnr_db}]
        else:
            tries = []
        same_size = [t for t in tries if t["size_bytes"] <= SAME_SIZE * qat.size_bytes]
        # Nothing as small: compare with the smallest post-training int8 variants there are.
        smallest = min((t["size_bytes"] for t in tries), default=None)
        pool = same_size or [t for t in tries if t["size_bytes"] == smallest]
        best = max(pool, key=lambda t: t["psnr_db"], default=None)
        row = {
            "format": qat.format,
            "ptq_artifact": None if main is None else main.name,
            "ptq_precision": None if main is None else main.precision,
            "ptq_chosen": None if guarded is None else guarded.fallback.chosen,
            "ptq_size_bytes": None if main is None else main.size_bytes,
            "ptq_psnr_db": None if main is None else main.fidelity.psnr_db,
            "ptq_int8_best": best,
            "qat_artifact": qat.name,
            "qat_size_bytes": qat.size_bytes,
            "qat_psnr_db": qat.fidelity.psnr_db,
        }
        q, p = row["qat_psnr_db"], (best or {}).get("psnr_db")
        row["qat_minus_ptq_int8_db"] = None if q is None or p is None else round(q - p, 3)
        rows.append(row)
    return rows


def _ordered(arrays: dict, names: list[str]):
    values = [arrays[n] for n in names]
    return values[0] if len(values) == 1 else values


def _as_list(y) -> list:
    return list(y) if isinstance(y, (list, tuple)) else [y]


def _round(x, digits: int = 3):
    return None if x is None else round(float(x), digits)
