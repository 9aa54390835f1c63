"""ONNX: float export through tf2onnx, quantization through onnxruntime, and an ORT runner."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path


from gencompress.config import CALIBRATION_METHODS  # noqa: F401  (the methods quantize_onnx takes)
from gencompress.errors import ConversionError
from gencompress.tfenv import import_tf, native_output_captured

OPSET = 17


def export_onnx_float(model) -> bytes:
    """The float32 ONNX graph of a ``LoadedModel`` (tf2onnx), inputs named as the model's."""
    tf = import_tf()
    import tf2onnx

    spec = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in model.inputs]
    try:
        with native_output_captured():
            proto = _tf2onnx_convert(tf, tf2onnx, model, spec)
    except Exception as exc:  # tf2onnx raises plain Exceptions for unsupported ops
        raise ConversionError(f"ONNX export (tf2onnx) failed: {str(exc).splitlines()[0][:400]}") from exc
    return canonical_names(proto).SerializeToString()


def _tf2onnx_convert(tf, tf2onnx, model, spec):
    from gencompress.compat.tf2onnx import reset_name_counter

    # tf2onnx's optimizers visit nodes in an order their generated names set: start every export
    # from the same counter, or a second export in one process can be optimized differently.
    reset_name_counter()
    if model.keras_model is not None:
        proto, _ = tf2onnx.convert.from_keras(model.keras_model, input_signature=spec, opset=OPSET)
        return proto
    names = [t.name for t in model.inputs]
    signature = model.signature

    @tf.function(input_signature=spec)
    def serve(*args):
        out = signature(**dict(zip(names, args)))
        return [out[t.name] for t in model.outputs]

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=OPSET)
    return proto


_GENERATED = re.compile(r"^(.*__)(\d+)(:\d+)?$")
# TensorFlow's own uniquifier as a last path component ("embedding_lookup/3017:0"): it counts
# the ops made in the process, so a second export in one process gets another number.
_UNIQUIFIED = re.compile(r"^(.*/)(\d+)(:\d+)?$")


def canonical_names(proto):
    """Make the same model give the same file: deterministic names and order.

    tf2onnx draws the N of its ``name__N`` names from a process-wide counter that TensorFlow's
    per-trace graph names also bump (as are TensorFlow's ``.../N`` uniquifiers), and the order
    of its initializers can change from process to process (a QAT export gave two different
    files). The generated names are renumbered in the
    order the nodes use them (node order is stable), merged constants are named after their
    first use, and initializers are ordered by first use.
    """
    graph = proto.graph
    mapping: dict[str, str] = {}

    def rename(name: str) -> str:
        m = _GENERATED.match(name) or _UNIQUIFIED.match(name)
        if not m:
            return name
        key = m.group(1) + m.group(2)  # "x__7" and its tensor "x__7:0" share one number
        if key not in mapping:
            mapping[key] = f"{m.group(1)}{len(mapping) + 1}"
        return mapping[key] + (m.group(3) or "")

    for node in graph.node:
        node.name = rename(node.name)
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = rename(value.name)
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = rename(dim.dim_param)
    for init in graph.initializer:
        init.name = rename(init.name)
    # "converted from b'__inference_serve_1050'": the traced function's number counts traces
    graph.doc_string = re.sub(r"_\d+(?=\W*$)", "", graph.doc_string)
    _name_shared_constants(graph)
    _order_initializers(graph)
    return proto


def _order_initializers(graph) -> None:
    """Initializers in the order the nodes first use them (unused ones last, by name)."""
    first_use: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            first_use.setdefault(name, i)
    ordered = sorted(graph.initializer, key=lambda init: (first_use.get(init.name, len(graph.node)), init.name))
    copies = []
    for init in ordered:
        copy = type(init)()
        copy.CopyFrom(init)
        copies.append(copy)
    del graph.initializer[:]
    graph.initializer.extend(copies)


def _name_shared_constants(graph) -> None:
    """Name each initializer that feeds several inputs after its first use.

    tf2onnx merges identical constants (a trained student's BatchNorm with a zero beta and a zero
    moving mean) and keeps one of their names, chosen in an order that changes from process to
    process: the same model gave files that differed only in those names. Merged constants are
    the ones used more than once; their name now follows the graph, not that order.
    """
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, list] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in inits:
                uses.setdefault(name, []).append((node, slot))
    taken = set(inits) | {o for n in graph.node for o in n.output} | {v.name for v in graph.input}
    for name, where in uses.items():
        if len(where) < 2:
            continue
        first, slot = where[0]
        new = f"{first.name}/shared_input_{slot}"
        while new in taken:
            new += "_"
        taken.add(new)
        inits[name].name = new
        for node, i in where:
            node.input[i] = new


@dataclass(frozen=True)
class Int8Layout:
    """How static int8 quantization lays out the graph: uint8 activations and per-channel int8
    weights by default; the others are there to measure (``benchmarks/onnx_runtime_graph.py``).

    ``activations``: ``uint8`` (the default) or ``int8``. onnxruntime's x86 int8 kernels take
    uint8 activations; int8 ones are converted where a Q/DQ pair allows it, and a Conv whose input
    feeds two consumers (a residual, a PReLU) then stays float (``tests/test_ort_graph.py``):
    measured at the same PSNR, uint8 ran the 96→384 SRGAN at 0.97× float instead of 0.80×, the
    Dense-heavy cGAN at 0.63× instead of 0.44×, the conv DCGAN at 2.53× instead of 2.05×.
    ``per_channel``: Conv weights per output channel. ``dense_per_tensor``: MatMul/Gemm weights
    per tensor. ``reduce_range``: 7-bit weights (for CPUs without VNNI). ``qoperator``: QLinear*
    operators instead of Q/DQ pairs.
    """

    activations: str = "uint8"
    per_channel: bool = True
    dense_per_tensor: bool = False
    reduce_range: bool = False
    qoperator: bool = False

    def __post_init__(self):
        if self.activations not in ("uint8", "int8"):
            raise ValueError(f"activations must be uint8 or int8, got {self.activations}")


def quantize_onnx(
    float_model: bytes,
    precision: str,
    calibration=None,
    calibration_method: str = "minmax",
    nodes_to_exclude: list[str] | None = None,
    range_overrides: dict | None = None,
    calibration_cache: str | os.PathLike | None = None,
    on_sample=None,
    layout: Int8Layout = Int8Layout(),
) -> bytes:
    """Quantize a float ONNX model with onnxruntime.

    int8: static QDQ, per-channel int8 weights and uint8 activations (``layout`` changes either),
    calibrated on ``calibration`` (or read from ``calibration_cache``,
    a JSON file onnxruntime writes on the first call with that path and reads on later ones: one
    calibration per model and method, whatever is then excluded or overridden).
    int16x8: static QDQ with int16 activations. dynamic: int8 weights, activations quantized at
    run time. float16: weights and compute in float16, float32 inputs and outputs.
    """
    from onnxruntime import set_default_logger_severity
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    set_default_logger_severity(3)

    if precision == "float16":
        return _to_float16(float_model)
    with tempfile.TemporaryDirectory(prefix="gencompress-onnx-") as tmp:
        src, pre, out = (os.path.join(tmp, n) for n in ("float.onnx", "pre.onnx", "out.onnx"))
        Path(src).write_bytes(float_model)
        try:
            with native_output_captured():
                quant_pre_process(src, pre, skip_symbolic_shape=True)
                if precision == "dynamic":
                    quantize_dynamic(pre, out, weight_type=QuantType.QInt8, per_channel=True)
                elif precision in ("int8", "int16x8"):
                    if calibration is None:
                        raise ValueError(f"{precision} needs a calibration set")
                    _quantize_static(pre, out, precision, calibration, calibration_method, nodes_to_exclude, range_overrides, calibration_cache, on_sample, layout)
                else:
                    raise ValueError(f"unknown precision {precision}")
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ConversionError(f"ONNX {precision} quantization failed: {str(exc).splitlines()[0][:400]}") from exc
        return Path(out).read_bytes()


def _quantize_static(pre, out, precision, calibration, calibration_method, nodes_to_exclude, range_overrides, calibration_cache, on_sample, layout):
    """QDQ, int8 weights, int8 (or int16) activations as ``layout`` says, calibrated (or cached)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration.samples())

        def get_next(self):
            sample = next(self._it, None)
            if sample is not None and on_sample is not None:
                on_sample(1)
            return sample

    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[calibration_method]
    int8 = precision == "int8"
    overrides = dict(range_overrides or {})
    if int8 and layout.dense_per_tensor:
        # a per-tensor override is how onnxruntime's quantizer keeps one weight per-tensor
        overrides.update({w: [{"quant_type": QuantType.QInt8}] for w in _dense_weights(pre) if w not in overrides})
    activations = (QuantType.QUInt8 if layout.activations == "uint8" else QuantType.QInt8) if int8 else QuantType.QInt16
    quantize_static(
        pre,
        out,
        Reader(),
        quant_format=QuantFormat.QOperator if int8 and layout.qoperator else QuantFormat.QDQ,
        per_channel=layout.per_channel or not int8,
        reduce_range=int8 and layout.reduce_range,
        activation_type=activations,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        nodes_to_exclude=nodes_to_exclude or [],
        calibration_cache_path=calibration_cache,
        extra_options={
            "CalibTensorRangeSymmetric": False,
            **({"TensorQuantOverrides": overrides} if overrides else {}),
        },
    )


def _dense_weights(path) -> list[str]:
    """Constant weights of the MatMul and Gemm nodes of the model at ``path``."""
    import onnx

    graph = onnx.load(path).graph
    constants = {i.name for i in graph.initializer}
    return sorted({n.input[1] for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants})


def _to_float16(float_model: bytes) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load_from_string(float_model)
    try:
        half = convert_float_to_float16(proto, keep_io_types=True)
    except Exception as exc:  # the converter raises bare Exceptions
        raise ConversionError(f"ONNX float16 conversion failed: {str(exc).splitlines()[0][:400]}") from exc
    return half.SerializeToString()
