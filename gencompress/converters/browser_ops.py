"""Which int8 ops the browser runtimes run slower than the float op they replace: the hook that
lets the fidelity search judge an attempt by its speed in the browser.

Measured with one-op models (``benchmarks/browser.py --ops``, p50 in headless Chromium,
single-threaded WebAssembly, float32 over int8; natively for comparison):

- onnxruntime-web 1.31.1: an int8 ``MatMul`` (a Dense: QDQ fused into an integer GEMM) runs at
  0.58x float, where native onnxruntime runs it 1.56x faster: the WebAssembly build has no SIMD
  path for that integer GEMM. (A depthwise int8 ``Conv`` runs at 0.62x, 0.79x natively; it has
  the op type of every ``Conv``, which stays 1.8x faster in int8, so it is not named here.)
- LiteRT.js 2.5.3: no int8 op runs slower than float where the native runtime runs it faster,
  once the copy the browser runs has static shapes (``converters/litertjs.py``). Without them an
  int8 ``TRANSPOSE_CONV`` (output shape computed at run time) is not taken by XNNPACK there and
  runs 9x slower than float; with them, 1.2x faster. The ops XNNPACK has no int8 kernel for
  (PRELU, ADD of two tensors) are slow natively too: the search's native ``slow_ops`` already
  class them.

``browser_slow_ops(fmt, data)`` returns those op types present in int8 in an artifact, in the
vocabulary the search's units use (TFLite builtin names, ONNX node op types), so a caller can
add them to what ``Candidates.slow_ops`` returns (see the README, "The browser and the fidelity
guard").
"""

from __future__ import annotations

LITERT_JS_SLOW_INT8: frozenset = frozenset()
ORT_WEB_SLOW_INT8 = frozenset({"MatMul", "Gemm"})
_TFLITE_INT8 = 9  # TensorType.INT8 in the TFLite schema


def browser_slow_ops(fmt: str, data: bytes) -> set[str]:
    """Op types of the artifact ``data`` (``fmt``: tflite or onnx) that run in int8 and that its
    browser runtime runs slower than float (``LITERT_JS_SLOW_INT8``, ``ORT_WEB_SLOW_INT8``)."""
    return (_tflite_int8_ops(data) & LITERT_JS_SLOW_INT8) if fmt == "tflite" else (_onnx_int8_ops(data) & ORT_WEB_SLOW_INT8)


def _tflite_int8_ops(data: bytes) -> set[str]:
    """Builtin op types with an int8 activation input (a tensor that is not a constant; int8
    weights beside float activations, a hybrid op, do not count)."""
    from gencompress.compat.tflite import builtin_op_name, read_flatbuffer

    model = read_flatbuffer(data)

    def int8_activation(subgraph, index: int) -> bool:
        tensor = subgraph.tensors[index]
        buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
        return tensor.type == _TFLITE_INT8 and (buffer is None or buffer.data is None or len(buffer.data) == 0)

    found = set()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if any(i >= 0 and int8_activation(subgraph, i) for i in op.inputs):
                found.add(builtin_op_name(model, model.operatorCodes[op.opcodeIndex]))
    return found


def _onnx_int8_ops(data: bytes) -> set[str]:
    """Op types of QDQ nodes: an activation input dequantized from a QuantizeLinear (the op then
    runs as an integer kernel; a weight-only DequantizeLinear leaves it float)."""
    import onnx

    graph = onnx.load_model_from_string(data).graph
    producer = {out: node for node in graph.node for out in node.output}

    def quantized_activation(name: str) -> bool:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return False
        q = producer.get(dq.input[0])
        return q is not None and q.op_type == "QuantizeLinear"

    return {node.op_type for node in graph.node if node.input and quantized_activation(node.input[0])}
