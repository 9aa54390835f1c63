"""The QAT model as deployable files: int8 TFLite and QDQ ONNX, keeping the learnt ranges.

The TFLite converter reads the ranges from the fake-quant ops; tf2onnx turns each activation
fake-quant into a QuantizeLinear/DequantizeLinear pair with the same scale and zero point, and
the weights (TF has folded their fake-quants into constants on the int8 grid) are stored as int8
behind a DequantizeLinear.
"""

from __future__ import annotations

import numpy as np

from gencompress.compress.batchnorm import _FOLD_AXIS
from gencompress.errors import ConversionError
from gencompress.model import iter_layers
from gencompress.tfenv import import_tf, native_output_captured

# A QAT export agrees with the QAT Keras model when its PSNR against it reaches this.
AGREEMENT_DB = 40.0


PRELU_NOTE = (
    "PRELU computes in float between int8 neighbours: the converter drops alpha's fake-quant when it "
    "fuses Keras' relu(x) - alpha * relu(-x) into PRELU, and LiteRT's CPU delegate (XNNPACK) has no int8 "
    "PRELU kernel anyway (int8 PRELU runs the reference kernel: sr_photos 0.56 ms p50 against 0.15 ms)"
)


def convert_qat_tflite(qat_model, int8_io: bool = False, calibration=None) -> bytes:
    """The QAT model as a TFLite flatbuffer: int8 wherever the fake-quant ops give ranges.

    Float inputs and outputs (a QUANTIZE / DEQUANTIZE at the ends, like the post-training int8
    artifacts) unless ``int8_io``. Without ``calibration`` every range comes from the QAT model
    and ops it computes in float stay float, PRELU included: Keras computes PReLU as
    ``relu(x) - alpha * relu(-x)`` and the converter, fusing that into PRELU, folds the
    negations around alpha's fake-quant and is left with a float alpha (TF 2.21). Given a
    ``CalibrationSet`` as representative data, the converter quantizes such tensors itself
    (int8 PRELU) and keeps every range the fake-quant ops carry (checked: same scales with and
    without). Not the default: XNNPACK has no int8 PRELU kernel (see ``PRELU_NOTE``).
    """
    import tempfile

    tf = import_tf()
    # Not from_keras_model: it saves the Keras model, which fails for tfmot's Conv2DTranspose
    # wrapper (the inner layer's saved call captures the quantized kernel of another graph), and
    # its silent fallback writes a model without a signature. A module holding only the variables
    # and one serving function saves cleanly; the signature keeps the model's input/output names.
    from gencompress.converters.tflite import serving_function

    serve, module = serving_function(tf, qat_model)
    with tempfile.TemporaryDirectory(prefix="gencompress-qat-") as tmp:
        with native_output_captured():
            tf.saved_model.save(module, tmp, signatures={"serving_default": serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if calibration is not None:
            converter.representative_dataset = _representative(calibration, qat_model.input_names)
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        try:
            with native_output_captured():
                return _short_tensor_names(bytes(converter.convert()))
        except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
            from gencompress.converters.tflite import error_summary

            raise ConversionError(f"TFLite conversion of the QAT model failed: {error_summary(exc)}") from exc


def _short_tensor_names(data: bytes) -> bytes:
    """Keep the first of the ``;``-joined names the converter gives a fused tensor.

    A QAT tensor is named after every op fused into it, fake-quant ops included
    (``model/quant_conv2/Conv2D;model/quant_conv2/LastValueQuant/FakeQuantWithMinMaxVarsPerChannel;…``):
    on sr_photos that was 2.6 KiB, 10 % of the file. The first name still holds the layer's.
    """
    from gencompress.compat.tflite import flatbuffer_object, write_flatbuffer

    model = flatbuffer_object(data)
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else (tensor.name or "")
            tensor.name = name.split(";")[0]
    return write_flatbuffer(model)


def _representative(calibration, names):
    from gencompress.converters.tflite import signature_key

    def dataset():
        for sample in calibration.samples():
            yield {signature_key(n): sample[n] for n in names}

    return dataset


def export_qat_onnx(qat_model, inputs) -> bytes:
    """The QAT model as a QDQ ONNX graph (opset 17) with int8 weights.

    tf2onnx maps every activation ``FakeQuantWithMinMaxVars`` (tfmot's ranges, frozen to
    constants) to QuantizeLinear → DequantizeLinear with TensorFlow's nudged scale and zero
    point. TensorFlow folds the weight fake-quants into constants already on the int8 grid;
    ``store_qat_weights_int8`` then keeps each as int8 + scale behind a DequantizeLinear.
    """
    tf = import_tf()
    import tf2onnx

    from gencompress.converters.onnx import OPSET, canonical_names

    from gencompress.compat.tf2onnx import reset_name_counter

    spec = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in inputs]
    try:
        reset_name_counter()  # as every export: the same optimization whatever ran before
        with native_output_captured():
            proto, _ = tf2onnx.convert.from_keras(qat_model, input_signature=spec, opset=OPSET)
    except Exception as exc:  # tf2onnx raises plain Exceptions
        raise ConversionError(f"ONNX export of the QAT model (tf2onnx) failed: {str(exc).splitlines()[0][:400]}") from exc
    proto = canonical_names(proto)
    store_qat_weights_int8(proto)
    propagate_qdq(proto)
    return proto.SerializeToString()


# Ops that only move values: their output is quantized on their input's grid.
_PASS_THROUGH = {"DepthToSpace", "SpaceToDepth", "Pad", "Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


def propagate_qdq(proto) -> int:
    """After each data-movement node fed by an activation's DequantizeLinear, a QuantizeLinear →
    DequantizeLinear pair on the same scale and zero point, for consumers that have none.

    tfmot fake-quantizes layer outputs, not layer inputs; a layer it has no rule for (the
    sub-pixel form's ``tf.nn.depth_to_space``) and the pad and crop after it leave no fake-quant,
    so the next ``Conv`` reads a float tensor and onnxruntime runs it in float (the TFLite
    converter carries the scale through such ops itself). Values on the input's grid stay on it
    (a pad adds zeros, which the grid holds exactly), so the pair changes nothing but the
    kernel onnxruntime picks. Modifies ``proto`` in place; returns the pairs added."""
    from onnx import helper

    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    quantized = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in producer
                 and producer[n.input[0]].op_type == "QuantizeLinear"}
    added, nodes = 0, []
    consumers: dict = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    for n in graph.node:
        nodes.append(n)
        dq = quantized.get(n.input[0]) if n.op_type in _PASS_THROUGH and n.input else None
        if dq is None or not n.output:
            continue
        out = n.output[0]
        users = [c for c in consumers.get(out, []) if c.op_type != "QuantizeLinear"]
        if out in outputs or all(c.op_type in _PASS_THROUGH for c in users):
            quantized[out] = dq  # carried on: a chain of data movement keeps the grid
            continue
        scale, zero = dq.input[1], dq.input[2] if len(dq.input) > 2 else ""
        q_out, dq_out = f"{out}/requantized", f"{out}/dequantized"
        nodes.append(helper.make_node("QuantizeLinear", [out, scale] + ([zero] if zero else []), [q_out], name=f"{n.name}/QuantizeLinear"))
        requant = helper.make_node("DequantizeLinear", [q_out, scale] + ([zero] if zero else []), [dq_out], name=f"{n.name}/DequantizeLinear")
        nodes.append(requant)
        for c in users:
            c.input[:] = [dq_out if i == out else i for i in c.input]
        quantized[dq_out] = requant
        added += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return added


# Weight input and its output-channel axis, per ONNX op (MatMul: B is (in, out)).
_ONNX_WEIGHTS = {"Conv": (1, 0), "ConvTranspose": (1, 1), "MatMul": (1, 1), "Gemm": (1, None), "PRelu": (1, None)}


def store_qat_weights_int8(proto) -> dict:
    """Store float weight initializers that lie on a symmetric int8 grid as int8 + DequantizeLinear.

    The grid is found from the values: per tensor (scale = max|w| / 127) or, failing that, per
    output channel; a weight on neither grid (a layer left float) stays float. Modifies
    ``proto`` in place; returns counts ``{"int8": n, "float": m}``.
    """
    from gencompress.compress.quantization import store_weights_int8

    def on_grid(node, w):
        axis = _ONNX_WEIGHTS[node.op_type][1]
        if node.op_type == "Gemm":
            axis = 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
        return _int8_grid(w, axis)

    return store_weights_int8(proto, {op: spec[0] for op, spec in _ONNX_WEIGHTS.items()}, on_grid)


def _int8_grid(w: np.ndarray, axis):
    """``(int8 values, scale, axis)`` if ``w`` is symmetric int8 per tensor or along ``axis``."""
    w64 = w.astype(np.float64)
    absmax = float(np.max(np.abs(w64)))
    if absmax == 0.0:
        return None
    scale = absmax / 127.0
    q = w64 / scale
    if np.max(np.abs(q - np.round(q))) < 1e-3:
        return np.round(q).astype(np.int8), np.array(scale, np.float32), None
    if axis is None:
        return None
    reduce = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    absmax_c = np.max(np.abs(w64), axis=reduce)
    scale_c = np.where(absmax_c > 0, absmax_c / 127.0, 1.0)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = w64 / scale_c.reshape(shape)
    if np.max(np.abs(q - np.round(q))) < 1e-3:
        return np.round(q).astype(np.int8), scale_c.astype(np.float32), axis % w.ndim
    return None


def int8_kernel_sparsity(float_model, tflite_path=None) -> list[dict]:
    """Per Dense/Conv/ConvTranspose kernel: zeros in the float model and in the int8 TFLite file.

    The TFLite tensor is the int8 constant of the same size named after the layer's tfmot
    wrapper (``.../quant_<layer>/...``). BatchNorm folding scales whole output channels, so a
    zero stays a zero; int8 symmetric quantization maps 0.0 to 0.
    """
    constants = []
    if tflite_path is not None:
        from ai_edge_litert.interpreter import Interpreter

        with native_output_captured():
            interpreter = Interpreter(model_path=str(tflite_path))
        for d in interpreter.get_tensor_details():
            if d["dtype"] != np.int8 or len(d["shape"]) < 2:
                continue
            try:
                constants.append((d["name"], interpreter.get_tensor(d["index"])))
            except ValueError:  # an activation: no data
                continue
    rows = []
    for layer in iter_layers(float_model):
        if type(layer).__name__ not in _FOLD_AXIS or type(layer).__name__ == "DepthwiseConv2D":
            continue
        kernel = layer.get_weights()[0]
        row = {"name": layer.name, "size": int(kernel.size), "float_zeros": int(np.count_nonzero(kernel == 0))}
        match = next(
            (v for n, v in constants if v.size == kernel.size and any(part.startswith(f"quant_{layer.name}/") or f"/quant_{layer.name}/" in part for part in n.split(";"))),
            None,
        )
        if match is not None:
            row["int8_zeros"] = int(np.count_nonzero(match == 0))
            row["zeros_kept"] = row["int8_zeros"] >= row["float_zeros"]
        rows.append(row)
    return rows
