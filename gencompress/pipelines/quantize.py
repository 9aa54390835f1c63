"""``quantize``, ``export`` and ``analyze`` as library calls."""

from __future__ import annotations

from gencompress.calibration import Calibration
from gencompress.config import AnalyzeConfig, ExportConfig, QuantizeConfig
from gencompress.errors import GencompressError, UnsupportedModelError
from gencompress.pipelines.build import build_artifacts
from gencompress.pipelines.forms import float_onnx, int8_source, quantize_onnx_calibrated, tflite_calibrated
from gencompress.pipelines.gates import judge
from gencompress.pipelines.result import Result
from gencompress.pipelines.session import Session, make_report, prepare
from gencompress.progress import Progress
from gencompress.results import Sensitivity


def quantize(model, config: QuantizeConfig | None = None, calibration: Calibration | None = None, progress: Progress | None = None,
             strategy=None) -> Result:
    """Float32 references and each of ``config.modes`` per format; int8 through the fidelity
    search aiming at ``config.min_psnr``. ``config.method == "auto"`` (the default) then trains a
    quantization-aware copy of the model's fast form when no post-training int8 artifact meets
    the target at int8 speed (``pipelines.rescue``); ``"qat"`` always does. QAT artifacts are
    ``<stem>-qat.int8.*``, fine-tuned against the float model (under ``strategy``, a
    ``tf.distribute`` strategy, when given); the artifacts not shipped are kept as the reference."""
    from gencompress.pipelines import rescue

    config = config or QuantizeConfig()
    if config.method == "qat":
        _check_qat(model)
    session = prepare(model, config, calibration, progress)
    try:
        build_artifacts(session, config.modes)
        auto = rescue.auto_reason(session, lambda: _check_qat(model)) if config.method == "auto" else None
        fast = rescue.fast_form(session) if config.method == "qat" or auto else None
        training = config.qat if config.method == "qat" or fast is None else rescue.rescue_training(session, config.qat, fast)
        section = None
        if training is not None and fast is not None:
            from gencompress.pipelines.qat import add_qat_artifacts, compare_ptq_qat

            if auto:
                section = _rescue(session, training, fast, strategy)
            else:
                section = add_qat_artifacts(session, training, fast.keras_model, strategy=strategy)
            if section is not None:
                section = section.model_copy(update={"comparison": compare_ptq_qat(session.artifacts, "qat")})
        shipped = rescue.shipped_selector(session.artifacts, config.min_psnr, auto) if section is not None else rescue.int8_slot
        if config.min_psnr > 0:
            session.notes += rescue.speed_notes(session.artifacts, config.min_psnr, shipped)
        if section is not None:
            # float32 and the shipped artifacts graded; the others are the reference
            judge(session, config.min_psnr, lambda a: (a.precision == "float32" and not a.variant) or shipped(a))
        else:
            judge(session, config.min_psnr)
        report = make_report(session, "quantize")
        report.qat = section
    except BaseException:
        session.cache.close()
        raise
    return Result(report, session.files, session.cache, previews=session.previews)


def _rescue(session, training, fast, strategy):
    """The auto rescue's QAT, or ``None`` with a note when the model cannot be trained
    quantization-aware after all: the post-training picks ship as they are (a rescue that
    fails must not take the run down with it)."""
    from gencompress.errors import ConversionError, UnsupportedModelError
    from gencompress.pipelines.qat import add_qat_artifacts

    artifacts, files = list(session.artifacts), dict(session.files)  # restored if it fails midway
    failed = len(session.failures)
    try:
        section = add_qat_artifacts(session, training, fast.keras_model, strategy=strategy)
        for f in session.failures[failed:]:  # a rescue file that could not be made: said, not a failed run
            session.notes.append(f"--method auto: {f.format} {f.precision} qat not made ({f.error}); the post-training pick ships")
        del session.failures[failed:]
        return section
    except (ConversionError, UnsupportedModelError) as exc:
        session.artifacts[:] = artifacts
        session.files.clear()
        session.files.update(files)
        session.notes.append(f"--method auto: quantization-aware training failed ({exc}); the post-training picks ship")
        session.progress.log(f"auto: quantization-aware training failed: {exc}")
        return None


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
