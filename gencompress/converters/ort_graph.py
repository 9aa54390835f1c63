"""What onnxruntime actually runs for an ONNX model on the CPU, after its graph optimizations.

A QDQ model says what *may* run in int8; onnxruntime decides what does: it fuses a Q/DQ group
into an int8 kernel only for some ops (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, ...),
drops Q/DQ around data-movement ops and runs everything else in float between a Dequantize and
a Quantize. ``runtime_graph`` reads the graph onnxruntime saves after optimizing it with the
options the latency measurement uses (``runners.onnx_session_options``), so the answer is
deterministic; ``profile`` adds where one run's time goes (timings: it informs, never chooses).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from gencompress.converters.runners import ONNX_PROVIDERS, onnx_session_options
from gencompress.results import OpTime, RuntimeBreakdown, RuntimeGraph, RuntimeNode

QUANTIZE_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# Ops that only move, copy or re-index elements: on int8 data they are part of an int8 chain,
# on float data they cost no arithmetic. Neither is a "float compute node".
DATA_MOVEMENT = {
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "GatherElements",
    "GatherND", "Split", "Expand", "Tile", "Identity", "Shape", "Size", "Cast", "Constant",
    "ConstantOfShape", "Concat", "DepthToSpace", "SpaceToDepth", "Pad",
    "ReorderInput", "ReorderOutput",  # onnxruntime's blocked (NCHWc) layout for float convolutions
}
# Integer kernels not named QLinear*: int8 in, int8 (QGemm with an output scale), int32 or float out.
INT8_KERNELS = {"QGemm", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM"}
_INTEGER = {"int8", "uint8", "int16", "uint16", "int4", "uint4"}
# Node types onnxruntime makes by fusing a float op with what follows it: the op they compute.
_FUSED = re.compile(r"^(?:Nhwc)?(?:Fused)?(?=[A-Z])")
LEVELS = ("disable", "basic", "extended", "all")


def _level(name: str):
    import onnxruntime as ort

    return {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[name]


def _source(model) -> bytes | str:
    return model if isinstance(model, (bytes, bytearray)) else str(model)


def optimized_graph(model, level: str = "all"):
    """The graph onnxruntime runs for ``model`` (bytes or path) on the CPU, as an onnx
    ``ModelProto``: what ``optimized_model_filepath`` saves with the runner's options."""
    import onnx
    import onnxruntime as ort

    options = onnx_session_options()
    options.graph_optimization_level = _level(level)
    with tempfile.TemporaryDirectory(prefix="gencompress-ort-") as tmp:
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(_source(model), options, providers=ONNX_PROVIDERS)
        return onnx.load(options.optimized_model_filepath)


def runtime_graph(model, layer_names=(), level: str = "all") -> RuntimeGraph:
    """Which nodes of ``model`` onnxruntime runs as int8 kernels and which in float, and how many
    Quantize/Dequantize nodes remain (see ``RuntimeGraph``). ``layer_names``: the Keras layers
    to find in node names."""
    import onnxruntime as ort

    graph = optimized_graph(model, level).graph
    kinds = classify(graph)
    ops = Counter(n.op_type for n in graph.node)
    return RuntimeGraph(
        onnxruntime=ort.__version__,
        optimization_level=level,
        int8_kernels=dict(sorted(Counter(n.op_type for n in graph.node if kinds[n.name] == "int8").items())),
        float_nodes=[
            RuntimeNode(name=n.name, op=n.op_type, layers=_layers_in_name(n.name, layer_names))
            for n in graph.node
            if kinds[n.name] == "float"
        ],
        quantize_nodes=ops["QuantizeLinear"] + ops["DynamicQuantizeLinear"],
        dequantize_nodes=ops["DequantizeLinear"],
    )


def float_compute_nodes(model, level: str = "all") -> set[str]:
    """Op types of the compute nodes onnxruntime runs in float for ``model`` (bytes or path),
    named as in the graph before its fusions (a ``FusedConv`` is a ``Conv``): the ONNX
    counterpart of ``tflite_undelegated_ops``. Empty when everything computes in int8."""
    graph = optimized_graph(model, level).graph
    kinds = classify(graph)
    return {_FUSED.sub("", n.op_type) for n in graph.node if kinds[n.name] == "float"}


def classify(graph) -> dict[str, str]:
    """Each node's kind by name: ``int8`` (an integer kernel, or a compute op on integer data),
    ``float`` (a compute op on float data), ``quantize`` (Q/DQ) or ``move`` (data movement)."""
    dtypes = _dtypes(graph)
    kinds = {}
    for node in graph.node:
        op = node.op_type
        if op in QUANTIZE_OPS:
            kinds[node.name] = "quantize"
        elif op.startswith("QLinear") or op in INT8_KERNELS:
            kinds[node.name] = "int8"
        elif op in DATA_MOVEMENT:
            kinds[node.name] = "move"
        else:
            first = next((dtypes.get(i) for i in node.input if i), None)
            kinds[node.name] = "int8" if first in _INTEGER else "float"
    return kinds


def _dtypes(graph) -> dict[str, str]:
    """Element type of every tensor, propagated through the nodes (the saved optimized graph has
    contrib and layout-internal ops that onnx shape inference does not know)."""
    import onnx

    names = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}
    dtypes = {v.name: names[v.type.tensor_type.elem_type] for v in list(graph.input) + list(graph.value_info)}
    dtypes.update({i.name: names[i.data_type] for i in graph.initializer})
    pending = list(graph.node)
    while pending:
        left = []
        for node in pending:
            out = _output_dtype(node, dtypes, names)
            if out is None:
                left.append(node)
                continue
            for name in node.output:
                dtypes.setdefault(name, out)
        if len(left) == len(pending):  # inputs never typed (a subgraph's): call them float
            for node in left:
                for name in node.output:
                    dtypes.setdefault(name, "float")
            break
        pending = left
    return dtypes


def _output_dtype(node, dtypes: dict, names: dict) -> str | None:
    op, inputs = node.op_type, [i for i in node.input]
    attrs = {a.name: a for a in node.attribute}
    if op == "QuantizeLinear":
        if "output_dtype" in attrs and attrs["output_dtype"].i:
            return names[attrs["output_dtype"].i]
        return dtypes.get(inputs[2]) if len(inputs) > 2 and inputs[2] else "uint8"
    if op in ("DequantizeLinear", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"):
        return "float"
    if op in ("MatMulInteger", "ConvInteger"):
        return "int32"
    if op in ("Shape", "Size"):
        return "int64"
    if op == "Cast":
        return names[attrs["to"].i]
    if op == "QGemm" and (len(inputs) < 8 or not inputs[7]):
        return "float"  # no output scale: float out
    if op == "QLinearConcat":
        return dtypes.get(inputs[2]) if len(inputs) > 2 else "uint8"
    first = next((i for i in inputs if i), None)
    if first is None:
        return "float"
    return dtypes.get(first)


def _layers_in_name(name: str, layer_names) -> list[str]:
    # compress.quantization.layers_in_name's rule, here because converters sit below compress/
    parts = set(re.split(r"[/;:]", name))
    return [n for n in layer_names if n in parts]


# --------------------------------------------------------------------------- where the time goes


def profile(model, sample: dict, runs: int = 50, max_seconds: float = 3.0, threads: int = 1) -> tuple[RuntimeBreakdown, dict[str, float]]:
    """Where a batch-1 run of ``model`` (bytes or path) spends its time: plain calls timed as the
    latency protocol does, a one-node graph's calls for the per-call floor, then onnxruntime's
    profiler; each up to ``runs`` runs within its share of ``max_seconds``. Returns the
    breakdown and each node's median milliseconds in the profile, by node name."""
    import onnxruntime as ort

    source = _source(model)
    call = _median_call(ort.InferenceSession(source, onnx_session_options(threads), providers=ONNX_PROVIDERS), sample, runs, max_seconds / 3)
    floor = _median_call(_one_node_session(source, threads), sample, runs, max_seconds / 6)
    options = onnx_session_options(threads)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="gencompress-profile-") as tmp:
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(source, options, providers=ONNX_PROVIDERS)
        profiled = len(_calls(session, sample, runs, max_seconds / 2))
        events = json.loads(Path(session.end_profiling()).read_text())
    graph = optimized_graph(model).graph
    return _breakdown(events, profiled, call, floor, classify(graph), _weight_dequantizers(graph))


def _weight_dequantizers(graph) -> set[str]:
    """DequantizeLinear nodes left on constant weights: onnxruntime folds none of them, so a node
    that runs in float pays for dequantizing its int8 weights on every call."""
    constants = {i.name for i in graph.initializer}
    return {n.name for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants}


def _calls(session, sample: dict, runs: int, seconds: float) -> list[float]:
    feed = {i.name: sample[i.name] for i in session.get_inputs()}
    for _ in range(3):
        session.run(None, feed)
    calls, start = [], time.perf_counter()
    while len(calls) < runs and (len(calls) < 5 or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        session.run(None, feed)
        calls.append((time.perf_counter() - t0) * 1000.0)
    return calls


def _median_call(session, sample: dict, runs: int, seconds: float) -> float:
    return statistics.median(_calls(session, sample, runs, seconds))


def _one_node_session(source, threads: int):
    """A session over a graph that passes the model's first input through one Identity node."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load_from_string(source) if isinstance(source, (bytes, bytearray)) else onnx.load(source)
    inputs = [i for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer}]
    out = helper.make_tensor_value_info("floor_output", inputs[0].type.tensor_type.elem_type, None)
    graph = helper.make_graph([helper.make_node("Identity", [inputs[0].name], ["floor_output"])], "floor", inputs, [out])
    floor = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ort.InferenceSession(floor.SerializeToString(), onnx_session_options(threads), providers=ONNX_PROVIDERS)


def _breakdown(events: list, runs: int, call: float, floor: float, kinds: dict[str, str], weight_dq: set[str] = frozenset()) -> tuple[RuntimeBreakdown, dict[str, float]]:
    # the profile holds every run, warm-up included: keep each node's last ``runs``
    per_node: dict[str, list[float]] = {}
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            per_node.setdefault(name, []).append(e["dur"])
            op_of[name] = e.get("args", {}).get("op_name", "?")
    node_ms = {k: statistics.median(v[-runs:]) / 1000.0 for k, v in per_node.items()}
    by_op: dict[str, list[float]] = {}
    for name, ms in node_ms.items():
        by_op.setdefault(op_of[name], []).append(ms)
    kernels = sum(node_ms.values())
    compute = sum(ms for name, ms in node_ms.items() if kinds.get(name) in ("int8", "float"))
    quantize = sum(ms for name, ms in node_ms.items() if op_of[name] in QUANTIZE_OPS)
    weights = sum(ms for name, ms in node_ms.items() if name in weight_dq)
    rows = sorted((OpTime(op=op, nodes=len(v), ms=round(sum(v), 4)) for op, v in by_op.items()), key=lambda r: (-r.ms, r.op))
    breakdown = RuntimeBreakdown(
        runs=runs, call_ms=round(call, 4), floor_ms=round(floor, 4), nodes=len(node_ms), kernels_ms=round(kernels, 4),
        compute_ms=round(compute, 4), quantize_ms=round(quantize, 4), weight_dequantize_ms=round(weights, 4), by_op=rows,
        explanation=_explain(call, floor, kernels, compute, quantize, weights, len(node_ms), rows),
    )
    return breakdown, {k: round(v, 4) for k, v in node_ms.items()}


def _explain(call: float, floor: float, kernels: float, compute: float, quantize: float, weights: float, nodes: int, rows: list[OpTime]) -> str:
    """Which cost dominates, first match: the fixed cost of any call, Q/DQ conversions, data
    movement, else arithmetic (the op type with the most time)."""
    kernels = max(kernels, 1e-9)
    if floor >= 0.3 * call:
        return (
            f"overhead-bound: a call takes {call:.3f} ms, {floor:.3f} ms of it what a one-node graph's call costs; "
            f"the {nodes} nodes' kernels are not where the time goes, and int8 does not reduce that cost"
        )
    if quantize >= 0.25 * kernels:
        return (
            f"conversion-bound: Quantize/Dequantize take {100 * quantize / kernels:.0f} % of the nodes' time in the profile, "
            f"{100 * weights / kernels:.0f} % dequantizing constant int8 weights on every call"
        )
    if compute < 0.5 * kernels:
        return f"movement-bound: {100 * (kernels - compute - quantize) / kernels:.0f} % of the nodes' time moves data (no arithmetic)"
    top = next((r for r in rows if r.op not in QUANTIZE_OPS and r.op not in DATA_MOVEMENT), rows[0])
    return f"compute-bound: {100 * compute / kernels:.0f} % of the nodes' time is arithmetic, {100 * top.ms / kernels:.0f} % in {top.op}"


def with_costs(graph: RuntimeGraph, breakdown: RuntimeBreakdown, node_ms: dict[str, float]) -> RuntimeGraph:
    """``graph`` with the profile: each float node's median time and the breakdown."""
    nodes = [n.model_copy(update={"ms": node_ms.get(n.name)}) for n in graph.float_nodes]
    return graph.model_copy(update={"float_nodes": nodes, "breakdown": breakdown})
