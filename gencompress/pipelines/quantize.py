"""``quantize``, ``export`` and ``analyze`` as library calls."""

from __future__ import annotations

from gencompress.calibration import Calibration
from gencompress.config import AnalyzeConfig, ExportConfig, QuantizeConfig
from gencompress.errors import GencompressError, UnsupportedModelError
from gencompress.pipelines.build import build_artifacts, float_onnx, int8_source, quantize_onnx_calibrated, tflite_calibrated
from gencompress.pipelines.gates import judge
from gencompress.pipelines.result import Result
from gencompress.pipelines.session import Session, make_report, prepare
from gencompress.progress import Progress
from gencompress.results import Sensitivity


def quantize(model, config: QuantizeConfig | None = None, calibration: Calibration | None = None, progress: Progress | None = None,
             strategy=None) -> Result:
    """Float32 references and each of ``config.modes`` per format; int8 through the fidelity
    search aiming at ``config.min_psnr``. ``config.method == "qat"`` also fine-tunes a
    quantization-aware copy against the float model (``<stem>-qat.int8.*``), graded instead of
    the post-training artifacts, which are then the reference (fine-tuned under ``strategy``, a
    ``tf.distribute`` strategy, when given)."""
    config = config or QuantizeConfig()
    if config.method == "qat":
        _check_qat(model)
    session = prepare(model, config, calibration, progress)
    try:
        build_artifacts(session, config.modes)
        auto = _auto_reason(session, model) if config.method == "auto" else None
        if config.method == "qat" or auto:
            from gencompress.pipelines.qat import add_qat_artifacts, compare_ptq_qat

            section = add_qat_artifacts(session, config.qat, strategy=strategy)
            section = section.model_copy(update={"comparison": compare_ptq_qat(session.artifacts, "qat")})
            shipped = _shipped(session.artifacts, config.min_psnr, auto)
            # float32 and the shipped artifacts graded; the others are the reference
            judge(session, config.min_psnr, lambda a: (a.precision == "float32" and not a.variant) or shipped(a))
            report = make_report(session, "quantize")
            report.qat = section
        else:
            judge(session, config.min_psnr)
            report = make_report(session, "quantize")
    except BaseException:
        session.cache.close()
        raise
    return Result(report, session.files, session.cache, previews=session.previews)


FAST_COMPUTE = ("int8", "mixed")


def _int8_slot(a) -> bool:
    """A post-training artifact of the int8 mode (whatever precision its search settled on)."""
    return not a.variant and a.precision != "float32" and (a.fallback is not None or a.precision in ("int8", "mixed"))


def _fast_pass(a, target: float) -> bool:
    psnr = a.fidelity.psnr_db
    compute = a.fallback.compute if a.fallback else "int8"
    return a.precision in ("int8", "mixed") and psnr is not None and psnr >= target and compute in FAST_COMPUTE


def _auto_reason(session: Session, model) -> str | None:
    """``--method auto``: why QAT runs (no post-training int8 artifact of some format meets the
    target at full speed), or ``None`` when it does not need to or cannot (logged)."""
    target = session.config.min_psnr
    ptq = [a for a in session.artifacts if _int8_slot(a)]
    missing = sorted({a.format for a in ptq} - {a.format for a in ptq if _fast_pass(a, target)})
    if not missing:
        session.progress.log("auto: post-training int8 meets the target at full speed: no QAT")
        return None
    try:
        _check_qat(model)
    except GencompressError as exc:
        session.progress.log(f"auto: no QAT ({exc})")
        return None
    reason = f"no post-training {', '.join(missing)} artifact meets {target:g} dB in int8 or mixed compute"
    session.progress.log(f"auto: quantization-aware training: {reason}")
    return reason


def _shipped(artifacts, target: float, auto: str | None):
    """Which quantized artifacts are the deliverable: with ``--method qat`` the QAT ones; with
    ``auto``, per format, QAT when it meets the target at full speed, else post-training."""
    if not auto:
        return lambda a: a.variant == "qat"
    qat_wins = {a.format for a in artifacts if a.variant == "qat" and _fast_pass(a, target)}
    shipped = lambda a: (_int8_slot(a) or a.variant == "qat") and (a.format in qat_wins) == (a.variant == "qat")  # noqa: E731
    for a in artifacts:
        if _int8_slot(a) or a.variant == "qat":
            a.notes = a.notes + [f"--method auto: {'shipped' if shipped(a) else 'reference'} ({auto})"]
    return shipped


def _check_qat(model) -> None:
    from gencompress.compress.qat import check_flat
    from gencompress.tfenv import import_tf

    if model.keras_model is None:
        raise UnsupportedModelError(
            f"{model.path} is a plain SavedModel (no Keras layers): quantization-aware training needs a Keras model "
            "(.h5, .keras or a Keras SavedModel)"
        )
    import_tf()
    check_flat(model.keras_model)  # before any work


def export(model, config: ExportConfig | None = None, calibration: Calibration | None = None, progress: Progress | None = None) -> Result:
    """Float32 ``.tflite`` and ``.onnx``, measured against the Keras model."""
    config = config or ExportConfig()
    session = prepare(model, config, calibration, progress)
    try:
        build_artifacts(session, ["float32"])
        judge(session, config.min_psnr)
        report = make_report(session, "export")
    except BaseException:
        session.cache.close()
        raise
    return Result(report, session.files, session.cache, previews=session.previews)


def analyze(model, config: AnalyzeConfig | None = None, calibration: Calibration | None = None, progress: Progress | None = None) -> Result:
    """Per-unit int8 sensitivity for each format (``report.sensitivity``); writes no artifact."""
    config = config or AnalyzeConfig()
    session = prepare(model, config, calibration, progress)
    try:
        report = make_report(session, "analyze")
        report.sensitivity = {fmt: Sensitivity(**_sensitivity(session, fmt)) for fmt in config.formats}
    finally:
        session.cache.close()
    return Result(report, {}, None)


def _sensitivity(session: Session, fmt: str) -> dict:
    from gencompress.compress.quantization import TFLITE_OPS_DENIED_BY_TYPE, keras_layer_names, onnx_units
    from gencompress.compress.search import Measurer
    from gencompress.compress.sensitivity import debugger_stats, sensitivity

    measure = Measurer(
        fmt, session.evaluation, session.reference, session.output_range,
        make_runner=lambda path: session.runner(path, fmt), latency=session.latency,
        float_p50=float("inf"), min_psnr=0.0, workdir=session.workdir, progress=session.progress,
    )
    if fmt == "tflite":
        mixed = tflite_calibrated(session)
        stats = debugger_stats(int8_source(session), session.calibration, session.evaluation)
        return sensitivity(mixed.units, mixed.build, TFLITE_OPS_DENIED_BY_TYPE, measure, stats)
    units = onnx_units(float_onnx(session, int8_source(session)), keras_layer_names(session.model))
    method = session.config.calibration_method
    return sensitivity(units, lambda floats: quantize_onnx_calibrated(session, "int8", method, [u.name for u in floats]), frozenset(), measure)


__all__ = ["quantize", "export", "analyze"]
