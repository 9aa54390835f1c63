"""Building a run's artifacts: each precision per format, int8 through the fidelity search.

The converters do the work; this module wires them to the run: one float ONNX export, one TFLite
calibration and one ONNX calibration per method per model, reused by every artifact and search
attempt (``RunCache``).
"""

from __future__ import annotations

import functools

from pathlib import Path

from gencompress.compress.quantization import (
    TFLITE_OPS_DENIED_BY_TYPE,
    keras_layer_names,
    onnx_companions,
    onnx_saturation_overrides,
    onnx_units,
    onnx_weight_only,
    tflite_float_ops,
    tflite_undelegated_ops,
    tflite_weight_only,
)
from gencompress.compress.search import FAST_SCREEN_SAMPLES, SCREEN_SAMPLES, Candidates, Measurer, Variant, search
from gencompress.errors import ConversionError
from gencompress.pipelines.session import Session, add_artifact, artifact, record_failure
from gencompress.results import SearchRecord

# A fidelity "target" every artifact meets: the search then simply picks the smallest int8 variant.
_NO_FLOOR_DB = 1e-6


def float_onnx(session: Session, model=None) -> bytes:
    """The float ONNX graph of ``model`` (default: the session's), exported once per model."""
    from gencompress.converters.onnx import export_onnx_float

    model = model if model is not None else session.model
    cache = session.cache.onnx_exports
    if id(model) not in cache:
        with session.progress.phase("onnx: exporting the float graph (tf2onnx)"):
            cache[id(model)] = (model, export_onnx_float(model))
    return cache[id(model)][1]


def int8_source(session: Session):
    """What every int8 form of the session's model is built from: its BatchNorm-folded copy
    (``compress.batchnorm``), or the model itself when it has no BatchNorm to fold."""
    return transformed(session, "folded") or session.model


def tflite_calibrated(session: Session, model=None):
    """``model`` (default: the session's int8 source) calibrated for TFLite once per run (``TFLiteMixed``)."""
    from gencompress.compress.quantization import TFLiteMixed

    model = model if model is not None else int8_source(session)
    cache = session.cache.tflite_calibrations
    if id(model) not in cache:
        cache[id(model)] = (model, TFLiteMixed(model, session.calibration, session.progress))
    return cache[id(model)][1]


def quantize_onnx_calibrated(session: Session, precision: str, method: str, nodes_to_exclude=(), range_overrides=None, model=None) -> bytes:
    """Static ONNX quantization of ``model``'s float graph (default: the session's int8 source),
    calibrated once per model and method: onnxruntime writes the ranges to a cache file on the
    first call and reads them on every later one (variants, mixed precision, int16x8)."""
    from gencompress.converters.onnx import quantize_onnx

    model = model if model is not None else int8_source(session)
    float_bytes = float_onnx(session, model)
    index = list(session.cache.onnx_exports).index(id(model))  # the model's place names its cache
    cache = session.cache.dir / f"onnx-calibration-{index}-{method}.json"

    def build(on_sample=None):
        return quantize_onnx(
            float_bytes, precision, session.calibration, method, list(nodes_to_exclude) or None,
            range_overrides, calibration_cache=cache, on_sample=on_sample,
        )

    if cache.exists():
        return build()
    n = len(session.calibration)
    with session.progress.phase(f"onnx: calibrating ({method}) on {n} samples", total=n, unit="sample") as phase:
        return build(phase.update)


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
    chosen, attempts, ranking, rule = search(candidates, measure, session.progress.log, prefer=session.config.prefer)
    notes = []
    if chosen.label != "int8":
        notes.append(f"chosen by the fidelity search: {chosen.label}")
    if chosen.slower_than_float:
        why = {
            "float": "it computes in float (no faster variant met the target)",
            "slow": "it runs ops on reference kernels (no faster variant met the target)",
        }.get(chosen.compute, "measured; its graph runs every op on the fast path")
        notes.append(f"slower than float ({chosen.p50_ms:.3f} vs {float_p50:.3f} ms p50): {why}")
    measured = (chosen.outputs, chosen.latency) if chosen.outputs is not None else None
    result = add_artifact(session, fmt, chosen.precision, chosen.data, notes=notes, measured=measured)
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
        most_harmful_units=[
            {"label": r["unit"].label, "only_quantized_psnr_db": r["only_quantized_psnr_db"], "all_but_psnr_db": r["all_but_psnr_db"]}
            for r in ranking
        ],
    )
    return result


def transformed(session: Session, kind: str):
    """A function-equal copy of the session's model made for quantizing (``folded``: BatchNorm
    folded into the layer before it; ``subpixel``: that, and transposed convolutions as
    convolutions), or ``None`` when it changes nothing or does not match the model's outputs.
    Made once per run."""
    key = (kind, id(session.model))  # a run may quantize a derived model (pruned, student) too
    if key not in session.cache.transforms:
        session.cache.transforms[key] = (session.model, _transform(session, kind))  # held: ids stay unique
    return session.cache.transforms[key][1]


def _transform(session: Session, kind: str):
    import dataclasses

    import numpy as np

    from gencompress.compress import subpixel
    from gencompress.compress.batchnorm import fold_batchnorm
    from gencompress.model import flat_copy, iter_layers

    model = session.model
    if model.keras_model is None:
        return None
    if kind == "folded":
        if not any(type(layer).__name__ in ("BatchNormalization", "SyncBatchNormalization") for layer in iter_layers(model.keras_model)):
            return None
        with session.progress.phase("BatchNorm folded into the layers before it"):
            new, rows = fold_batchnorm(flat_copy(model.keras_model))
        if not any(r["folded"] for r in rows):
            return None
    else:
        if not subpixel.has_conv_transposes(model.keras_model):
            return None
        with session.progress.phase("transposed convolutions in sub-pixel form"):
            new, rows = subpixel.subpixel_model(model.keras_model)
        if new is None:
            return None
    held = session.evaluation.take(8)
    x = [held.arrays[n] for n in model.input_names]
    out = new(x if len(x) > 1 else x[0], training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    lo, hi = session.output_range
    error = max(float(np.max(np.abs(np.asarray(o) - r[:8]))) for o, r in zip(out, session.reference))
    if not error <= subpixel.TOLERANCE * max(1.0, hi - lo):
        session.progress.log(f"  {kind} form differs from the model by {error:.3g}: not used")
        return None
    return dataclasses.replace(model, keras_model=new)


def tflite_candidates(session: Session) -> Candidates:
    """What the search can build in TFLite: re-quantizations of the run's one calibration per
    model (the model, and its sub-pixel form when it has strided transposed convolutions)."""
    from gencompress.converters.tflite import convert_tflite

    mixed = tflite_calibrated(session)
    int8_io = session.config.int8_io
    layer_names = keras_layer_names(session.model)

    def same_size(settled):
        for sat in [False, True] if mixed.clamped else [False]:
            for dense in (False, True):
                label = "int8" + (", saturation-aware ranges" if sat else "") + (", per-tensor dense weights" if dense else "")
                yield label, lambda floats, s=sat, d=dense: mixed.build(floats, dense_per_tensor=d, saturation_aware=s, int8_io=int8_io)
        sub = None if settled() else transformed(session, "subpixel")
        if sub is not None:
            sub_mixed = tflite_calibrated(session, sub)
            sat = sub_mixed.clamped is not None
            label = "int8, sub-pixel transposed convolutions" + (", saturation-aware ranges" if sat else "")
            build = lambda floats: sub_mixed.build(floats, saturation_aware=sat, int8_io=int8_io)  # noqa: E731
            yield label, Variant(build, sub_mixed.units, frozenset(TFLITE_OPS_DENIED_BY_TYPE), sub_mixed.companions, layer_macs(sub))

    def float_tflite() -> bytes:
        # the run's float32 artifact of this model is already written: no second conversion
        return Path(artifact(session, "tflite").path).read_bytes()

    @functools.cache
    def float_undelegated() -> frozenset:
        # an op XNNPACK leaves out of the float model too (a resize of a shape computed at run
        # time) costs int8 nothing against float: only what int8 adds is slow
        return frozenset(tflite_undelegated_ops(float_tflite()))

    return Candidates(
        fmt="tflite",
        units=mixed.units,
        same_size=same_size,
        weight_only=lambda: tflite_weight_only(float_tflite()),
        wider=[
            ("int16 activations", "int16x8", lambda: convert_tflite(session.model, "int16x8", session.calibration)),
            ("float16", "float16", lambda: convert_tflite(session.model, "float16")),
        ],
        float_units=lambda data: tflite_float_ops(data, layer_names),
        denied_by_type=frozenset(TFLITE_OPS_DENIED_BY_TYPE),
        slow_ops=lambda data: tflite_undelegated_ops(data) - float_undelegated(),
        companions=mixed.companions,
        macs=layer_macs(session.model),
        float_size=artifact(session, "tflite").size_bytes,
    )


# Ops whose arithmetic is the model's cost: run in float between Q/DQ pairs (onnxruntime has no
# int8 ConvTranspose kernel; a Conv whose uint8 input cannot be converted) they take the speed
# int8 is for, with conversions on both sides. A float Tanh or Sigmoid at the output costs little.
ONNX_HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def onnx_float_heavy_ops(data: bytes) -> set[str]:
    """The heavy op types onnxruntime runs in float in an int8 ``.onnx`` (read from the graph it
    optimizes): the ONNX counterpart of ``tflite_undelegated_ops`` for the search's classes."""
    from gencompress.converters.ort_graph import float_compute_nodes

    return float_compute_nodes(data) & ONNX_HEAVY_OPS


def onnx_candidates(session: Session) -> Candidates:
    """What the search can build in ONNX: static quantizations of the float graph (and of the
    sub-pixel form's, where transposed convolutions would otherwise run in float)."""
    from gencompress.converters.onnx import quantize_onnx

    float_bytes = float_onnx(session)
    int8_bytes = float_onnx(session, int8_source(session))  # BatchNorm folded
    overrides = onnx_saturation_overrides(int8_bytes)
    first = session.config.calibration_method

    def variant(method, ranges, model=None):
        return lambda floats: quantize_onnx_calibrated(session, "int8", method, [u.name for u in floats], ranges, model=model)

    def same_size(settled):
        yield "int8", variant(first, None)
        for method in [first] + [m for m in ("percentile", "entropy") if m != first]:
            if (settled() and method != first) or (method == first and not overrides):
                continue
            label = "int8" + ("" if method == first else f", {method} calibration") + (", saturation-aware ranges" if overrides else "")
            yield label, variant(method, overrides or None)
        sub = None if settled() else transformed(session, "subpixel")
        if sub is not None:
            sub_float = float_onnx(session, sub)
            sub_overrides = onnx_saturation_overrides(sub_float) or None
            label = "int8, sub-pixel transposed convolutions" + (", saturation-aware ranges" if sub_overrides else "")
            units = onnx_units(sub_float, keras_layer_names(session.model))
            yield label, Variant(variant(first, sub_overrides, sub), units, None, onnx_companions(sub_float, units), layer_macs(sub))

    units = onnx_units(int8_bytes, keras_layer_names(session.model))
    return Candidates(
        fmt="onnx",
        units=units,
        slow_ops=onnx_float_heavy_ops,
        companions=onnx_companions(int8_bytes, units),
        same_size=same_size,
        weight_only=lambda: onnx_weight_only(float_bytes),
        wider=[
            ("int16 activations", "int16x8", lambda: quantize_onnx_calibrated(session, "int16x8", first)),
            ("float16", "float16", lambda: quantize_onnx(float_bytes, "float16")),
        ],
        macs=layer_macs(session.model),
        float_size=artifact(session, "onnx").size_bytes,
    )


def layer_macs(model) -> dict:
    """MACs by layer name of a ``LoadedModel`` (empty for a plain SavedModel)."""
    from gencompress.report.macs import count_macs

    if model.keras_model is None:
        return {}
    macs: dict = {}
    for row in count_macs(model.keras_model).layers:
        macs[row["name"]] = macs.get(row["name"], 0) + row["macs"]
    return macs
