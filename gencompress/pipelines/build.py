"""Building a run's artifacts: each precision per format, int8 through the fidelity search.

The converters do the work; this module wires them to the run, over the forms of the model that
``pipelines.forms`` makes once per run and the candidates ``pipelines.candidates`` offers the search.
"""

from __future__ import annotations

from gencompress.compress.search import FAST_SCREEN_SAMPLES, SCREEN_SAMPLES, Measurer, search
from gencompress.errors import ConversionError
from gencompress.pipelines.candidates import onnx_candidates, tflite_candidates
from gencompress.pipelines.forms import float_onnx, quantize_onnx_calibrated, tflite_calibrated
from gencompress.pipelines.session import Session, add_artifact, artifact, record_failure
from gencompress.results import SearchRecord

# A fidelity "target" every artifact meets: the search then simply picks the smallest int8 variant.
_NO_FLOOR_DB = 1e-6


def build_artifact(session: Session, fmt: str, precision: str, model=None) -> bytes:
    """The bytes of one artifact: ``fmt`` in (tflite, onnx), ``precision`` in ``PRECISIONS``.

    ``model`` converts a derived model (pruned, fine-tuned, a student) instead of the session's;
    it is still measured against the session's original float model.
    """
    from gencompress.converters.onnx import quantize_onnx
    from gencompress.converters.tflite import convert_tflite

    config = session.config
    int8_model = model  # None: the session's int8 source (BatchNorm folded)
    model = model if model is not None else session.model
    int8_io = getattr(config, "int8_io", False)
    if fmt == "tflite" and precision == "int8":
        return tflite_calibrated(session, int8_model).build(int8_io=int8_io)
    if fmt == "onnx":
        float_bytes = float_onnx(session, model)
        if precision == "float32":
            return float_bytes
        if precision in ("int8", "int16x8"):
            return quantize_onnx_calibrated(session, precision, getattr(config, "calibration_method", "minmax"), model=int8_model)
    with session.progress.phase(f"{fmt} {precision}: converting"):
        if fmt == "tflite":
            return convert_tflite(model, precision, session.calibration, int8_io=int8_io)
        return quantize_onnx(float_bytes, precision)


def build_artifacts(session: Session, precisions, hint: str = "") -> None:
    """Write and measure each precision per format (float32 first: it is the reference).

    int8 goes through the fidelity search when the config has a target. When the session's own
    float model already misses it (a pruned model or a student, measured against the original),
    no quantization can reach it: the smallest int8 variant is kept, with a note (``hint`` says
    what to do instead). A precision a converter cannot build is recorded in
    ``session.failures`` and the others still go on.
    """
    target = getattr(session.config, "min_psnr", 0.0)
    for fmt in session.config.formats:
        for precision in ["float32"] + [p for p in precisions if p != "float32"]:
            try:
                if precision == "int8" and target > 0:
                    guarded_int8(session, fmt, hint)
                else:
                    add_artifact(session, fmt, precision, build_artifact(session, fmt, precision))
            except ConversionError as exc:
                if precision == "float32":
                    raise  # no reference: nothing else can be measured
                # One precision a converter cannot do (say, no 16x8 kernel for PReLU) must not
                # cost the user the others: record it, go on, and fail the run at the end.
                record_failure(session, fmt, precision, exc)


def build_pruned(session: Session, model, keras_model, precisions, hint: str) -> Session:
    """Save ``keras_model`` (pruned from ``model``) as ``<stem>-pruned``, build its artifacts in a
    session around it (measured against the original) and collect them into ``session`` as the
    ``pruned`` variant. Returns that derived session (its model: the saved one)."""
    import dataclasses

    from gencompress.artifacts import derived_model_name, save_keras

    name = derived_model_name(model, "pruned")
    saved = save_keras(keras_model, session.workdir / name)
    session.files[name] = saved
    derived = session.derived(dataclasses.replace(model, keras_model=keras_model, path=str(saved), params=int(keras_model.count_params())))
    build_artifacts(derived, precisions, hint)  # <stem>-pruned.<precision>.<ext>
    for a in derived.artifacts:
        a.variant = "pruned"
    session.artifacts.extend(derived.artifacts)
    session.failures.extend(f.model_copy(update={"variant": "pruned"}) for f in derived.failures)
    return derived


def guarded_int8(session: Session, fmt: str, hint: str = ""):
    """The smallest int8-or-better artifact meeting the target, with the search in the report."""
    target = session.config.min_psnr
    float_psnr = artifact(session, fmt).fidelity.psnr_db
    if float_psnr is None or float_psnr >= target:
        return _searched(session, fmt, target)
    result = _searched(session, fmt, _NO_FLOOR_DB)
    # Not a fidelity search: keep its record apart, and drop the notes about the floor.
    result.smallest_int8_search = result.fallback.model_copy(update={"target_psnr_db": None})
    result.fallback = None
    result.notes = [n for n in result.notes if f"{_NO_FLOOR_DB:g} dB" not in n] + [
        f"the float model is at {float_psnr} dB, below --min-psnr {target:g}: no quantization can "
        f"reach it, so the smallest int8 variant was kept{f' ({hint})' if hint else ''}"
    ]
    return result


def _searched(session: Session, fmt: str, target: float):
    float_p50 = artifact(session, fmt).latency_ms.p50
    candidates = tflite_candidates(session) if fmt == "tflite" else onnx_candidates(session)
    worst = session.config.gates.for_format(fmt).get("min_psnr_worst") if target > _NO_FLOOR_DB else None
    measure = Measurer(
        fmt, session.evaluation, session.reference, session.output_range,
        make_runner=lambda path: session.runner(path, fmt), latency=session.latency,
        float_p50=float_p50, min_psnr=target, workdir=session.workdir, progress=session.progress,
        screen_samples=FAST_SCREEN_SAMPLES if session.config.fast else SCREEN_SAMPLES, min_worst=worst,
    )
    chosen, attempts, ranking, rule, failed = search(candidates, measure, session.progress.log, prefer=session.config.prefer)
    notes = []
    if chosen.label != "int8":
        notes.append(f"chosen by the fidelity search: {chosen.label}")
    if chosen.slower_than_float:
        why = {
            "float": "it computes in float (no faster variant met the target)",
            "dequant": "it turns its int8 weights into float on every call (no faster variant met the target)",
            "slow": "it runs ops on reference kernels (no faster variant met the target)",
        }.get(chosen.compute, "measured; its graph runs every op on the fast path")
        notes.append(f"slower than float ({chosen.p50_ms:.3f} vs {float_p50:.3f} ms p50): {why}")
    measured = (chosen.outputs, chosen.latency) if chosen.outputs is not None else None
    result = add_artifact(session, fmt, chosen.precision, chosen.data, notes=notes, measured=measured)
    result.compute = chosen.compute
    plain = next(a for a in attempts if a.label == "int8") if attempts[0].label == "int8" else attempts[0]
    result.fallback = SearchRecord(
        target_psnr_db=target,
        target_psnr_worst_db=worst,
        chosen=chosen.label,
        rule=rule,
        compute=chosen.compute,
        float_layers=[u.label for u in chosen.float_units],
        size_cost_bytes=chosen.size_bytes - plain.size_bytes,
        latency_cost_ms=round(chosen.p50_ms - plain.p50_ms, 4),
        attempts=[a.summary() for a in attempts],
        failed_attempts=failed,
        most_harmful_units=[
            {"label": r["unit"].label, "only_quantized_psnr_db": r["only_quantized_psnr_db"], "all_but_psnr_db": r["all_but_psnr_db"]}
            for r in ranking
        ],
    )
    return result


