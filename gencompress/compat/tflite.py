"""TensorFlow Lite internals gencompress relies on (TF 2.21, ai-edge-litert 2.3)."""

from __future__ import annotations

import numpy as np


def calibrate_only(converter) -> None:
    """Make ``converter.convert()`` return the float model with each tensor's recorded min/max
    instead of a quantized one (the converter's private ``_experimental_calibrate_only``)."""
    if not hasattr(converter, "_experimental_calibrate_only"):
        raise RuntimeError("TFLiteConverter has no _experimental_calibrate_only: the TensorFlow release changed it")
    converter._experimental_calibrate_only = True


def mlir_quantize(calibrated: bytes, **kwargs) -> bytes:
    """Quantize a calibrated model with the converter's MLIR quantizer
    (``tensorflow.lite.python.convert.mlir_quantize``: deny-lists, per-tensor dense weights)."""
    from tensorflow.lite.python import convert

    return bytes(convert.mlir_quantize(calibrated, **kwargs))


def ops_details(interpreter) -> list[dict]:
    """Every op of an interpreter's graph (LiteRT's private ``_get_ops_details``): name, index,
    inputs, outputs; after ``allocate_tensors`` a delegated partition shows as one ``DELEGATE``."""
    return interpreter._get_ops_details()


def read_flatbuffer(data: bytes):
    """A TFLite flatbuffer as mutable Python objects (``flatbuffer_utils``)."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def flatbuffer_object(data: bytes):
    """A TFLite flatbuffer as mutable Python objects, buffers as they are (``convert_bytearray_to_object``)."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(bytearray(data))


def write_flatbuffer(model) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def builtin_op_name(model, code) -> str:
    """The builtin operator name (``CONV_2D``) of an operator code of a read flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    value = max(code.builtinCode, code.deprecatedBuiltinCode)
    return next((k for k, v in vars(schema.BuiltinOperator).items() if v == value), str(value))


def tensor_map(name: str, index: int):
    """A signature's entry naming tensor ``index`` (the schema's ``TensorMapT``)."""
    from tensorflow.lite.python import schema_py_generated as schema

    entry = schema.TensorMapT()
    entry.name, entry.tensorIndex = name, index
    return entry


def shape_signature_views(data: bytearray):
    """Every tensor's shape signature in the TFLite flatbuffer ``data`` as a numpy view into
    ``data`` itself (the schema's generated reader over a bytearray): writing a view edits the
    file in place, everything else byte for byte. Re-serializing (``write_flatbuffer``) would
    drop the weights ai-edge-quantizer keeps after the flatbuffer (buffers with an ``offset``)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            if not tensor.ShapeSignatureIsNone():
                yield tensor.ShapeSignatureAsNumpy()


def has_external_buffers(model) -> bool:
    """A read flatbuffer keeps some weights after the flatbuffer itself (``Buffer.offset``), which
    ``write_flatbuffer`` cannot carry over."""
    return any((getattr(b, "offset", 0) or 0) > 1 for b in model.buffers)


def constant_tensor(model, subgraph, values, tensor_type: int, name: str) -> int:
    """Append a constant tensor holding ``values`` (a numpy array) to a read flatbuffer's
    ``subgraph`` (and its buffer to ``model``); its index."""
    from tensorflow.lite.python import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.ascontiguousarray(values).tobytes(), dtype=np.uint8)
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = np.asarray(values.shape, dtype=np.int32)
    tensor.type = tensor_type
    tensor.buffer = len(model.buffers) - 1
    tensor.name = name.encode()
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1
