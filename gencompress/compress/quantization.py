"""Quantized variants beyond the converters' defaults, for meeting a fidelity target.

- **Units**: the ops a quantizer can keep in float, each mapped to the Keras layers whose names
  appear in its tensor/node name (BatchNorm is already folded into the op before it).
- **TFLite mixed**: calibrate once, then re-quantize the calibrated model with
  ``mlir_quantize`` and deny-lists (milliseconds per variant).
- **ONNX mixed**: onnxruntime static quantization with ``nodes_to_exclude``.
- **Weight-only int8**: int8 storage, float compute (ai-edge-quantizer for TFLite; per-channel
  ``DequantizeLinear`` on Conv/ConvTranspose weights for ONNX).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from gencompress.compat.tflite import builtin_op_name, mlir_quantize, ops_details, read_flatbuffer, write_flatbuffer
from gencompress.compress.saturation import OPS as SATURATION_OPS
from gencompress.compress.saturation import SATURATION
from gencompress.errors import ConversionError
from gencompress.tfenv import import_tf, native_output_captured

# TFLite ops that move or reshape data: keeping one float changes nothing worth a search step.
_TFLITE_PASSIVE = {
    "QUANTIZE", "DEQUANTIZE", "SHAPE", "STRIDED_SLICE", "SLICE", "PACK", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "GATHER",
    "CONCATENATION", "PAD", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "TRANSPOSE",
}
_ONNX_PASSIVE = {"Reshape", "Pad", "DepthToSpace", "SpaceToDepth", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Identity", "Flatten"}
# Elementwise activations: a tensor they write stays float only when they compute in float too.
_ACTIVATIONS = {
    "LEAKY_RELU", "RELU", "RELU6", "RELU_N1_TO_1", "PRELU", "ELU", "HARD_SWISH", "GELU", "LOGISTIC", "TANH",
    "LeakyRelu", "Relu", "PRelu", "Elu", "HardSwish", "Gelu", "Sigmoid", "Tanh", "Clip",
}
# ONNX node types onnxruntime quantizes and that compute (shape ops just pass ranges through).
_ONNX_COMPUTE = {
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "LeakyRelu", "Relu", "Sigmoid", "Clip",
    "Resize", "AveragePool", "MaxPool", "GlobalAveragePool", "BatchNormalization", "InstanceNormalization",
    "LayerNormalization", "Softmax", "Concat", "Where", "PRelu",
}
# The TFLite quantizer ignores node deny-lists for TRANSPOSE_CONV (TF 2.21): the only way to
# keep one in float is to deny the op type, which keeps every TRANSPOSE_CONV in float.
TFLITE_OPS_DENIED_BY_TYPE = {"TRANSPOSE_CONV"}


@dataclass(frozen=True)
class Unit:
    """One quantizable op: its tensor (TFLite) or node (ONNX) name, op type and Keras layers."""

    name: str
    op: str
    layers: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{'+'.join(self.layers) or self.name} ({self.op})"

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "layers": list(self.layers)}


def layers_in_name(name: str, layer_names: list[str]) -> tuple[str, ...]:
    """Keras layer names that appear as whole path components of a tensor or node name."""
    parts = set(re.split(r"[/;:]", name))
    return tuple(n for n in layer_names if n in parts)


def keras_layer_names(model) -> list[str]:
    if model.keras_model is None:
        return []
    from gencompress.model import iter_layers

    return [layer.name for layer in iter_layers(model.keras_model)]


def _output_layers(model) -> tuple[str, ...]:
    return tuple(model.keras_model.output_names) if model.keras_model is not None else ()


# Where a sigmoid/tanh input's calibrated range is clamped, by op (see ``compress.saturation``).
SATURATION_BOUNDS = {op: SATURATION[activation].clamp for op, activation in SATURATION_OPS.items()}
# Ops that only move values (their output's values are their data inputs' values, plus zeros for
# padding): a bound on the output holds for the input. Value: which inputs carry data.
_PASS_THROUGH = {
    # TFLite builtins
    "DEPTH_TO_SPACE": "first", "SPACE_TO_DEPTH": "first", "STRIDED_SLICE": "first", "SLICE": "first",
    "RESHAPE": "first", "SQUEEZE": "first", "EXPAND_DIMS": "first", "TRANSPOSE": "first", "PAD": "first",
    "CONCATENATION": "all",
    # ONNX node types
    "DepthToSpace": "first", "SpaceToDepth": "first", "Slice": "first", "Reshape": "first", "Squeeze": "first",
    "Unsqueeze": "first", "Transpose": "first", "Pad": "first", "Identity": "first", "Concat": "all",
}


def input_activations(ops, keys) -> dict:
    """``{key: [keys]}``: for each op, the activation op that alone writes its data input, and the
    data movement between them (a pad, a reshape: each feeding nothing else).

    Keeping an op float does not keep its input float: the activation before it still writes
    int8 (a LeakyReLU's 8-bit output into a generator's last convolution costs 20 dB on one
    real VAE-GAN), and so does an int8 pad between them, or an int8 depth-to-space before the
    activation (the previous layer's output is rounded there). The search restores such a chain
    together with the op it feeds. ``ops``: ``(type, inputs, outputs)`` per op; ``keys[i]``:
    op i's key (``None``: cannot be kept float by itself).
    """
    producer = {t: i for i, (_, _, outputs) in enumerate(ops) for t in outputs}
    uses: dict = {}
    for _, inputs, _ in ops:
        for t in inputs:
            uses[t] = uses.get(t, 0) + 1
    passive = _TFLITE_PASSIVE | _ONNX_PASSIVE

    def walk(t, chain):
        """Back from tensor ``t`` through single-use data movement (added to ``chain``): the
        index of the first other op (``None`` if none, or if its output has other uses), and
        whether the walk ended at a model input."""
        j = producer.get(t)
        while j is not None and ops[j][0] in passive and uses.get(t) == 1 and ops[j][1] and keys[j] is not None:
            chain.append(keys[j])
            t = ops[j][1][0]
            j = producer.get(t)
        return (j if uses.get(t) == 1 else None), (j is None and t is not None and uses.get(t) == 1)

    found = {}
    for i, (op, inputs, _) in enumerate(ops):
        if keys[i] is None or op in passive or not inputs:
            continue
        chain, t = [], inputs[0]  # the data input (weights and shapes come after it)
        j, at_input = walk(t, chain)
        if j is not None and ops[j][0] in _ACTIVATIONS and uses.get(ops[j][2][0]) == 1 and keys[j] is not None:
            chain.append(keys[j])
            walk(ops[j][1][0] if ops[j][1] else None, chain)  # the shuffle or crop before it, too
            found[keys[i]] = chain
        elif at_input and chain:
            # the first layer: the reshape/pad between it and the model input go float with
            # it, or the input is still rounded to int8 on its way (a DCGAN's first sub-pixel
            # convolution kept float: 35.2 dB in TFLite with its pad and reshape int8, 38.2 dB
            # in onnxruntime, which leaves them float by itself)
            found[keys[i]] = chain
    return found


def saturation_bounds(ops, graph_outputs) -> dict:
    """``{tensor: bound}`` for each tensor whose every use ends in a saturating activation.

    ``ops`` is the graph's ``(op type, inputs, outputs)`` in topological order. A tensor is
    bounded when each consumer is a sigmoid/tanh, or a pass-through op (depth-to-space, the crop
    of a sub-pixel transposed convolution, a reshape) on a bounded output: walking backwards,
    the clamp reaches the logits behind the data movement.
    """
    consumers: dict = {}
    for i, (_, inputs, _) in enumerate(ops):
        for t in inputs:
            consumers.setdefault(t, []).append(i)
    bounds: dict = {}

    def use_bound(i, t):
        op, inputs, outputs = ops[i]
        if op in SATURATION_BOUNDS and inputs and inputs[0] == t:
            return SATURATION_BOUNDS[op]
        mode = _PASS_THROUGH.get(op)
        if mode is None or (mode == "first" and inputs[0] != t) or len(outputs) != 1:
            return None
        return bounds.get(outputs[0])

    for _, inputs, _ in reversed(ops):
        for t in inputs:
            if t in bounds or t in graph_outputs:
                continue
            uses = [use_bound(i, t) for i in consumers[t]]
            if uses and None not in uses:
                bounds[t] = min(uses)
    return bounds


# ---------------------------------------------------------------- TFLite


class TFLiteMixed:
    """Calibrates a model once; builds int8 variants with chosen units kept in float.

    The one TFLite calibration of a run: the plain int8 artifact, the fidelity search's variants
    and the mixed-precision attempts are all re-quantized from ``calibrated`` (calibrating a
    96→384 super-resolution model on 200 samples takes minutes in TFLite's calibrator).
    """

    def __init__(self, model, calibration, progress=None):
        from gencompress.converters.tflite import calibrate

        self.kept: dict = {}  # a subsample of each tensor's calibration values
        self.calibrated = calibrate(model, calibration, progress, keep=self.kept)
        self.units = tflite_units(self.calibrated, keras_layer_names(model), _output_layers(model))
        self.clamped = saturation_clamped(self.calibrated)
        self.companions = tflite_companions(self.calibrated, self.units)
        self._mse = None

    def mse_calibrated(self) -> bytes | None:
        """The calibrated model (saturation-aware when it has clamps) with ranges chosen for the
        quantization error (``compress.ranges``), or ``None`` when none changes. Made once."""
        from gencompress.compress.ranges import mse_ranges

        if self._mse is None:
            model = read_flatbuffer(self.clamped or self.calibrated)
            names = {i: builtin_op_name(model, code) for i, code in enumerate(model.operatorCodes)}
            graph = model.subgraphs[0]
            ops = [(names[op.opcodeIndex], [int(t) for t in op.inputs], [int(t) for t in op.outputs]) for op in graph.operators]
            # not the model's inputs: clipping what the user feeds in spoils every layer after it
            kept = {i: v for i, v in self.kept.items() if i not in set(graph.outputs) | set(graph.inputs)}
            changed = len(model.subgraphs) == 1 and mse_ranges(graph.tensors, ops, kept, _PASS_THROUGH)
            self._mse = write_flatbuffer(model) if changed else b""
        return self._mse or None

    def build(
        self, float_units=(), dense_per_tensor: bool = False, saturation_aware: bool = False, int8_io: bool = False,
        mse: bool = False,
    ) -> bytes:
        """int8 with ``float_units`` kept float; ``saturation_aware`` clamps the calibrated range of
        tensors that only feed a sigmoid/tanh to where those saturate (see ``saturation_clamped``).

        Inputs and outputs stay float (a QUANTIZE/DEQUANTIZE at each end, as the converter
        writes them) unless ``int8_io``. With no units kept float this is exactly the
        converter's int8 model (same ops, tensors, weights and scales).
        """
        tf = import_tf()
        calibrated = self.clamped if saturation_aware and self.clamped else self.calibrated
        if mse and self.mse_calibrated() is not None:
            calibrated = self.mse_calibrated()
        names = [u.name for u in float_units if u.op not in TFLITE_OPS_DENIED_BY_TYPE]
        ops = sorted({u.op for u in float_units if u.op in TFLITE_OPS_DENIED_BY_TYPE})
        io_type = tf.int8 if int8_io else tf.float32
        try:
            with native_output_captured():
                return mlir_quantize(
                    calibrated,
                    # True would also quantize the model's inputs and outputs (int8 I/O)
                    fully_quantize=False,
                    input_data_type=io_type,
                    output_data_type=io_type,
                    denylisted_nodes=names or None,
                    denylisted_ops=ops or None,
                    disable_per_channel_for_dense_layers=dense_per_tensor,
                )
        except Exception as exc:  # ConverterError and friends
            raise ConversionError(f"TFLite mixed quantization failed: {str(exc).splitlines()[0][:300]}") from exc


def saturation_clamped(calibrated: bytes) -> bytes | None:
    """The calibrated model with the recorded range of each sigmoid/tanh input (and of the
    tensors that only reach one through data movement, see ``saturation_bounds``) clamped to
    ``SATURATION_BOUNDS``, or ``None`` when no such tensor would change.

    A generator trained to saturation drives its logits far past the knee (hundreds of units):
    a per-tensor int8 step over that range is wider than the whole transition band, and the edge
    pixels, which sit on the knee, are lost. Only tensors whose every consumer is a saturating
    activation are clamped, so nothing else sees the narrower range.
    """
    model = read_flatbuffer(calibrated)
    names = {i: builtin_op_name(model, code) for i, code in enumerate(model.operatorCodes)}
    changed = False
    for graph in model.subgraphs:
        ops = [(names[op.opcodeIndex], [int(t) for t in op.inputs], [int(t) for t in op.outputs]) for op in graph.operators]
        for t, bound in saturation_bounds(ops, set(graph.outputs)).items():
            q = graph.tensors[t].quantization if t >= 0 else None
            if q is None or q.min is None or q.max is None or len(q.min) != 1:
                continue
            lo, hi = max(float(q.min[0]), -bound), min(float(q.max[0]), bound)
            if (lo, hi) != (float(q.min[0]), float(q.max[0])) and lo < hi:
                q.min, q.max = [lo], [hi]
                changed = True
    return write_flatbuffer(model) if changed else None


def tflite_companions(tflite_bytes: bytes, units: list[Unit]) -> dict:
    """``{unit: [units]}``: the activations to keep float with each unit (``input_activations``)."""
    model = read_flatbuffer(tflite_bytes)
    if len(model.subgraphs) != 1:
        return {}
    graph = model.subgraphs[0]
    names = {i: builtin_op_name(model, code) for i, code in enumerate(model.operatorCodes)}
    by_name = {u.name: u for u in units}
    ops, keys = [], []
    for op in graph.operators:
        outputs = [int(t) for t in op.outputs]
        kind = names[op.opcodeIndex]
        ops.append((kind, [int(t) for t in op.inputs], outputs))
        name = graph.tensors[outputs[0]].name.decode() if outputs else None
        # data movement is no unit of the search, but is denied by its tensor's name all the same
        keys.append(by_name.get(name) or (Unit(name, kind, ()) if kind in _TFLITE_PASSIVE and name else None))
    return input_activations(ops, keys)


def _ops(tflite_bytes: bytes):
    from ai_edge_litert.interpreter import Interpreter

    with native_output_captured():
        interpreter = Interpreter(model_content=tflite_bytes)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    for op in ops_details(interpreter):
        outs = [tensors[i] for i in op["outputs"] if i >= 0]
        if outs:
            yield op["op_name"], outs[0]


def tflite_units(tflite_bytes: bytes, layer_names: list[str], output_layers=()) -> list[Unit]:
    """Compute ops of a TFLite model. The final activation's tensor is named after the signature
    (``StatefulPartitionedCall:0``), so an op with no layer in its name that writes a model output
    is attributed to the output layer."""
    from ai_edge_litert.interpreter import Interpreter

    with native_output_captured():
        outputs = {d["name"] for d in Interpreter(model_content=tflite_bytes).get_output_details()}
    units = []
    for op, t in _ops(tflite_bytes):
        if op in _TFLITE_PASSIVE:
            continue
        layers = layers_in_name(t["name"], layer_names)
        if not layers and t["name"] in outputs:
            layers = tuple(output_layers)
        units.append(Unit(t["name"], op, layers))
    return units


def tflite_float_ops(tflite_bytes: bytes, layer_names: list[str] = ()) -> list[Unit]:
    """Compute ops whose outputs are float32 in a (partly) quantized TFLite model."""
    return [
        Unit(t["name"], op, layers_in_name(t["name"], list(layer_names)))
        for op, t in _ops(tflite_bytes)
        if op not in _TFLITE_PASSIVE and t["dtype"] == np.float32
    ]


def tflite_undelegated_ops(tflite_bytes: bytes) -> set[str]:
    """Compute op types XNNPACK does not take in this model (they run LiteRT's reference kernels,
    often far slower than XNNPACK's float ones: int8 PReLU, every int16 op).

    A delegate node's inputs are its partition's inputs, constants included, and its outputs the
    partition's outputs. Walking the graph backwards, an op is delegated when its output is a
    delegate output, or when it feeds only delegated ops and is neither a delegate input nor a
    model output.
    """
    from ai_edge_litert.interpreter import Interpreter

    with native_output_captured():
        interpreter = Interpreter(model_content=tflite_bytes)
        interpreter.allocate_tensors()
        ops = ops_details(interpreter)
    graph_outputs = {d["index"] for d in interpreter.get_output_details()}
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    d_in = {int(t) for d in delegates for t in d["inputs"]}
    d_out = {int(t) for d in delegates for t in d["outputs"]}
    originals = [o for o in ops if o["op_name"] != "DELEGATE"]
    consumers: dict[int, list[int]] = {}
    for o in originals:
        for t in o["inputs"]:
            consumers.setdefault(int(t), []).append(o["index"])
    delegated: dict[int, bool] = {}
    for o in reversed(originals):
        outs = [int(t) for t in o["outputs"]]
        if any(t in d_out for t in outs):
            delegated[o["index"]] = True
            continue
        users = [c for t in outs for c in consumers.get(t, [])]
        delegated[o["index"]] = bool(
            delegates
            and users
            and not any(t in d_in or t in graph_outputs for t in outs)
            and all(delegated.get(c, False) for c in users)
        )
    return {o["op_name"] for o in originals if not delegated[o["index"]] and o["op_name"] not in _TFLITE_PASSIVE}


def tflite_weight_only(float_tflite: bytes) -> bytes:
    """int8 weights (per channel), float activations and compute: ai-edge-quantizer's recipe."""
    from ai_edge_quantizer import quantizer, qtyping

    q = quantizer.Quantizer(float_tflite)
    q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=8)
    try:
        with native_output_captured():
            # The result's model is a bytearray: LiteRT wants bytes.
            return bytes(q.quantize(None, enable_progress_report=False).quantized_model)
    except Exception as exc:  # the quantizer raises plain exceptions for unsupported ops
        raise ConversionError(f"TFLite weight-only quantization failed: {str(exc).splitlines()[0][:300]}") from exc


# ---------------------------------------------------------------- ONNX


def onnx_saturation_overrides(float_onnx: bytes) -> dict:
    """onnxruntime ``TensorQuantOverrides`` clamping sigmoid/tanh inputs (see ``saturation_clamped``)."""
    import onnx

    graph = onnx.load_from_string(float_onnx).graph
    ops = [(n.op_type, list(n.input), list(n.output)) for n in graph.node]
    constants = {i.name for i in graph.initializer}
    bounds = saturation_bounds(ops, {o.name for o in graph.output})
    return {
        name: [{"rmin": np.float32(-b), "rmax": np.float32(b)}] for name, b in bounds.items() if name not in constants
    }


def onnx_companions(float_onnx: bytes, units: list[Unit]) -> dict:
    """``{unit: [units]}``: the activations to keep float with each unit (``input_activations``)."""
    import onnx

    graph = onnx.load_from_string(float_onnx).graph
    by_name = {u.name: u for u in units}
    ops = [(n.op_type, list(n.input), list(n.output)) for n in graph.node]
    keys = [by_name.get(n.name) or (Unit(n.name, n.op_type, ()) if n.op_type in _ONNX_PASSIVE else None) for n in graph.node]
    return input_activations(ops, keys)


def _node_layers(node, layer_names) -> tuple[str, ...]:
    """The layers in a node's name; tf2onnx names some nodes by op type ("Conv__7"): then those
    in its outputs' names, then in its weights' ("model/image/Conv2D/ReadVariableOp:0")."""
    for names in ([node.name], list(node.output), list(node.input[1:])):
        found = tuple(dict.fromkeys(layer for name in names for layer in layers_in_name(name, layer_names)))
        if found:
            return found
    return ()


def onnx_units(float_onnx: bytes, layer_names: list[str]) -> list[Unit]:
    import onnx

    graph = onnx.load_from_string(float_onnx).graph
    return [
        Unit(n.name, n.op_type, _node_layers(n, layer_names))
        for n in graph.node
        if n.op_type in _ONNX_COMPUTE
    ]


# Output-channel axis of each op's weight. Not MatMul/Gemm: onnxruntime (>= 1.25, PR #27769)
# fuses DequantizeLinear → MatMul/Gemm into MatMulNBits, whose CPU kernel by default
# (session.qdq_matmulnbits_accuracy_level = 4) quantizes the *activations* to int8 on the fly:
# "weight-only" would silently become dynamic quantization in every user's default session.
_WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}


def onnx_weight_only(float_onnx: bytes) -> bytes:
    """Store Conv/ConvTranspose weights as per-channel symmetric int8 (MatMul/Gemm stay float).

    Each weight becomes an int8 initializer with a float scale, read through a
    ``DequantizeLinear``: int8 in the file, float compute (activations are not quantized).
    """
    import onnx

    def per_channel(node, w):
        axis = _WEIGHT_AXIS[node.op_type]
        if w.ndim < 2:
            return None
        reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
        absmax = np.max(np.abs(w), axis=reduce_axes)
        scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        return np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8), scale, axis

    proto = onnx.load_from_string(float_onnx)
    store_weights_int8(proto, {op: 1 for op in _WEIGHT_AXIS}, per_channel)
    return proto.SerializeToString()


def store_weights_int8(proto, weight_inputs: dict, quantize) -> dict:
    """Rewrite float weight initializers as int8 + scale read through a ``DequantizeLinear``.

    ``weight_inputs``: op type → index of its weight input. ``quantize(node, w)`` returns
    ``(int8 values, scale, axis or None)``, or ``None`` to leave that weight float. Only
    initializers with a single consumer are rewritten. Modifies ``proto`` in place; returns
    counts ``{"int8": n, "float": m}``.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    counts = {"int8": 0, "float": 0}
    new_nodes = []
    for node in graph.node:
        index = weight_inputs.get(node.op_type)
        name = node.input[index] if index is not None and len(node.input) > index else None
        if name in inits and uses[name] == 1:
            w = numpy_helper.to_array(inits[name])
            quantized = quantize(node, w) if w.dtype == np.float32 and w.size > 1 else None
            if quantized is None:
                counts["float"] += 1
            else:
                q, scale, axis = quantized
                graph.initializer.remove(inits[name])
                graph.initializer.extend(
                    [
                        numpy_helper.from_array(q, name + "_int8"),
                        numpy_helper.from_array(scale, name + "_scale"),
                        numpy_helper.from_array(np.zeros(scale.shape, np.int8), name + "_zero_point"),
                    ]
                )
                attrs = {} if axis is None else {"axis": axis}
                new_nodes.append(
                    helper.make_node(
                        "DequantizeLinear",
                        [name + "_int8", name + "_scale", name + "_zero_point"],
                        [name],
                        name=name + "_dequantize",
                        **attrs,
                    )
                )
                counts["int8"] += 1
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return counts
