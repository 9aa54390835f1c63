"""What the fidelity search can build per format (``Candidates``), and how a graph computes.

The search (``compress.search``) tries these in order; each variant re-quantizes one of the
run's forms (``pipelines.forms``) from its one calibration.
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
from gencompress.compress.search import Candidates, Variant
from gencompress.pipelines.forms import float_onnx, int8_source, layer_macs, quantize_onnx_calibrated, tflite_calibrated, transformed
from gencompress.pipelines.session import Session, artifact

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
        if not settled() and mixed.mse_calibrated() is not None:
            label = "int8, ranges for the least error" + (", saturation-aware" if mixed.clamped else "")
            yield label, lambda floats: mixed.build(floats, saturation_aware=True, mse=True, int8_io=int8_io)
        for kind, label in _transformed_forms(session, settled):
            form = transformed(session, kind)
            form_mixed = tflite_calibrated(session, form)
            sat = form_mixed.clamped is not None
            label += ", saturation-aware ranges" if sat else ""
            build = lambda floats, m=form_mixed, s=sat: m.build(floats, saturation_aware=s, int8_io=int8_io)  # noqa: E731
            yield label, Variant(build, form_mixed.units, frozenset(TFLITE_OPS_DENIED_BY_TYPE), form_mixed.companions, layer_macs(form))

    @functools.cache
    def float_tflite() -> bytes:
        # the run's float32 artifact of this model when it wrote one: no second conversion
        written = artifact(session, "tflite")
        return Path(written.path).read_bytes() if written is not None else convert_tflite(session.model, "float32")

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
        slow_ops=_with_browser(session, "tflite", lambda data: tflite_undelegated_ops(data) - float_undelegated()),
        companions=mixed.companions,
        macs=layer_macs(session.model),
        float_size=_float_size(session, "tflite"),
    )


def _float_size(session: Session, fmt: str) -> int | None:
    """The float artifact's size, which no pick may exceed (``None`` when the run made none)."""
    a = artifact(session, fmt)
    return a.size_bytes if a is not None else None


def _with_browser(session: Session, fmt: str, slow_ops):
    """``slow_ops`` and, with ``browser_guard``, the int8 ops the browser runtime runs slower than float."""
    if not getattr(session.config, "browser_guard", False):
        return slow_ops
    from gencompress.converters.browser_ops import browser_slow_ops

    return lambda data: set(slow_ops(data)) | browser_slow_ops(fmt, data)


def _transformed_forms(session: Session, settled):
    """``(kind, label)`` of the function-equal forms the search tries after the int8 source's
    variants while nothing has settled: the sub-pixel form (transposed convolutions run int8
    kernels there), then the equalized form (of the sub-pixel form when there is one). Each is
    made, checked and calibrated only when reached."""
    if settled():
        return
    if transformed(session, "subpixel") is not None:
        yield "subpixel", "int8, sub-pixel transposed convolutions"
        if not settled() and transformed(session, "equalized-subpixel") is not None:
            yield "equalized-subpixel", "int8, sub-pixel transposed convolutions, equalized channels"
    elif transformed(session, "equalized") is not None:
        yield "equalized", "int8, equalized channels"


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

    def methods(settled, which):
        for method in which:
            if (settled() and method != first) or (method == first and not overrides):
                continue
            label = "int8" + ("" if method == first else f", {method} calibration") + (", saturation-aware ranges" if overrides else "")
            yield label, variant(method, overrides or None)

    def same_size(settled):
        yield "int8", variant(first, None)
        yield from methods(settled, [first])
        # With transposed convolutions (run in float by onnxruntime: the plain form is slow
        # whatever its calibration) the sub-pixel form comes before the other calibrations,
        # which cost a histogram pass each (50 s on a 128x128 codec decoder).
        if transformed(session, "subpixel") is None:
            yield from methods(settled, [m for m in ("percentile", "entropy") if m != first])
        yield from forms(settled)
        if transformed(session, "subpixel") is not None:
            yield from methods(settled, [m for m in ("percentile", "entropy") if m != first])

    def forms(settled):
        for kind, label in _transformed_forms(session, settled):
            form = transformed(session, kind)
            form_float = float_onnx(session, form)
            form_overrides = onnx_saturation_overrides(form_float) or None
            label += ", saturation-aware ranges" if form_overrides else ""
            units = onnx_units(form_float, keras_layer_names(session.model))
            yield label, Variant(variant(first, form_overrides, form), units, None, onnx_companions(form_float, units), layer_macs(form))

    units = onnx_units(int8_bytes, keras_layer_names(session.model))
    return Candidates(
        fmt="onnx",
        units=units,
        slow_ops=_with_browser(session, "onnx", onnx_float_heavy_ops),
        companions=onnx_companions(int8_bytes, units),
        same_size=same_size,
        weight_only=lambda: onnx_weight_only(float_bytes),
        wider=[
            ("int16 activations", "int16x8", lambda: quantize_onnx_calibrated(session, "int16x8", first)),
            ("float16", "float16", lambda: quantize_onnx(float_bytes, "float16")),
        ],
        macs=layer_macs(session.model),
        float_size=_float_size(session, "onnx"),
    )


def graph_compute(session: Session, fmt: str, data: bytes, model=None) -> str:
    """How an int8 artifact built outside the search (QAT) computes, read from its graph as the
    search reads its attempts: ``slow`` when an op runs a reference kernel (TFLite) or a heavy
    op runs in float (ONNX), ``float``/``mixed`` when compute ops stayed float, else ``int8``."""
    from gencompress.compress.search import compute_class, float_macs_share

    if fmt == "tflite":
        c = tflite_candidates(session)
        floats = c.float_units(data)
        slow = c.slow_ops(data) - {u.op for u in floats}
    else:
        floats, slow = [], onnx_float_heavy_ops(data)
    share = float_macs_share(floats, layer_macs(model or session.model))
    return compute_class("mixed" if floats else "int8", floats, slow, share)
