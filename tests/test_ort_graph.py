"""What onnxruntime runs for an ONNX artifact (converters/ort_graph.py), in the report and in
``inspect``: read from the graph it optimizes and from its profiler, on real quantizations of tiny
models."""

import os
import re
import tempfile

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from gencompress.converters.onnx import Int8Layout, quantize_onnx
from gencompress.converters.ort_graph import classify, float_compute_nodes, optimized_graph, profile, runtime_graph
from gencompress.converters.runners import ONNX_PROVIDERS, onnx_session_options


class _Calibration:
    def __init__(self, arrays):
        self.arrays = arrays

    def samples(self):
        n = len(next(iter(self.arrays.values())))
        for i in range(n):
            yield {k: v[i : i + 1] for k, v in self.arrays.items()}


def _conv_net(residual: bool):
    """x → Conv → Relu → Conv (→ + x) → Neg: a residual makes the first activation feed two nodes."""
    rng = np.random.default_rng(0)
    inits = {f"w{i}": rng.normal(0, 0.3, (4, 4, 3, 3)) for i in (1, 2)} | {f"b{i}": rng.normal(0, 0.1, 4) for i in (1, 2)}
    # tensors named like tf2onnx's, after the Keras layer that makes them
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["block/conv1:0"], name="block/conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["block/conv1:0"], ["block/relu1:0"], name="block/relu1"),
        helper.make_node("Conv", ["block/relu1:0", "w2", "b2"], ["block/conv2:0"], name="block/conv2", pads=[1, 1, 1, 1]),
    ]
    last = "block/conv2:0"
    if residual:
        nodes.append(helper.make_node("Add", [last, "x"], ["block/add:0"], name="block/add"))
        last = "block/add:0"
    nodes.append(helper.make_node("Neg", [last], ["y"], name="head/negate"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@pytest.fixture(scope="module")
def calibration():
    return _Calibration({"x": np.random.default_rng(1).normal(size=(16, 4, 8, 8)).astype(np.float32)})


def test_float_model_runs_every_compute_node_in_float():
    graph = runtime_graph(_conv_net(False), ["block", "head"])
    assert graph.int8_kernels == {} and graph.quantize_nodes == graph.dequantize_nodes == 0
    # onnxruntime runs float Convs in its blocked layout (the Relu fused in, nodes named after
    # their outputs): the optimized graph is what is reported, its layout changes are not
    assert [(n.op, n.name, n.layers) for n in graph.float_nodes] == [
        ("Conv", "block/relu1:0_nchwc", ["block"]), ("Conv", "block/conv2:0_nchwc", ["block"]), ("Neg", "head/negate", ["head"]),
    ]
    assert float_compute_nodes(_conv_net(False)) == {"Conv", "Neg"}


def test_int8_model_int8_kernels_and_what_stays_float(calibration):
    data = quantize_onnx(_conv_net(False), "int8", calibration)
    graph = runtime_graph(data)
    assert graph.int8_kernels == {"QLinearConv": 2}
    assert [(n.op, n.name) for n in graph.float_nodes] == [("Neg", "head/negate")]  # no int8 Neg in onnxruntime
    assert graph.quantize_nodes == 1 and graph.dequantize_nodes == 1  # the input's, and the one before the Neg
    assert float_compute_nodes(data) == {"Neg"}
    assert runtime_graph(data) == graph  # read from the graph: the same answer every time


def test_int8_activations_leave_a_shared_conv_input_in_float(calibration):
    """With int8 activations onnxruntime converts Q/DQ pairs to uint8 for its x86 kernels; the
    input that feeds both the Conv and the residual Add cannot be converted, so that Conv runs in
    float. uint8 activations (the default) run both Convs in int8."""
    signed = runtime_graph(quantize_onnx(_conv_net(True), "int8", calibration, layout=Int8Layout(activations="int8")))
    unsigned = runtime_graph(quantize_onnx(_conv_net(True), "int8", calibration))
    assert "Conv" in {n.op for n in signed.float_nodes} and signed.int8_kernels.get("QLinearConv") == 1
    assert unsigned.int8_kernels["QLinearConv"] == 2 and {n.op for n in unsigned.float_nodes} == {"Neg"}


def test_dense_weights_are_per_tensor_and_conv_weights_per_channel(calibration):
    import onnx

    rng = np.random.default_rng(2)
    inits = {"w": rng.normal(size=(4, 4, 3, 3)), "m": rng.normal(size=(256, 16))}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "m"], ["y"], name="dense"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    scales = {}
    for layout in (Int8Layout(dense_per_tensor=True), Int8Layout()):
        q = onnx.load_from_string(quantize_onnx(data, "int8", calibration, layout=layout)).graph
        scales[layout.dense_per_tensor] = {i.name: list(i.dims) for i in q.initializer if i.name.endswith("_scale") and i.name[0] in "wm"}
    assert scales[True] == {"w_scale": [4], "m_scale": []}
    assert scales[False] == {"w_scale": [4], "m_scale": [16]}


def test_classify_names_each_kind(calibration):
    graph = optimized_graph(quantize_onnx(_conv_net(False), "int8", calibration)).graph
    kinds = classify(graph)
    assert sorted(k for k, v in kinds.items() if v == "float") == ["head/negate"]
    assert {n.op_type for n in graph.node if kinds[n.name] == "move"} == {"Transpose"}  # to and from channels-last
    assert {n.op_type for n in graph.node if kinds[n.name] == "quantize"} == {"QuantizeLinear", "DequantizeLinear"}


def test_profile_breakdown_adds_up(calibration):
    data = quantize_onnx(_conv_net(False), "int8", calibration)
    breakdown, node_ms = profile(data, {"x": calibration.arrays["x"][:1]}, runs=30, max_seconds=3.0)
    assert breakdown.runs >= 5 and breakdown.nodes == len(node_ms) >= 4
    assert 0 < breakdown.floor_ms < breakdown.call_ms
    assert sum(r.nodes for r in breakdown.by_op) == breakdown.nodes
    assert abs(sum(r.ms for r in breakdown.by_op) - breakdown.kernels_ms) < 1e-3
    assert breakdown.quantize_ms <= breakdown.kernels_ms and breakdown.compute_ms <= breakdown.kernels_ms
    assert breakdown.explanation.split(":")[0] in ("overhead-bound", "conversion-bound", "movement-bound", "compute-bound")
    assert "head/negate" in node_ms


def _conv_transpose_net():
    """x → ConvTranspose (stride 2): onnxruntime's CPU provider has no int8 ConvTranspose."""
    w = np.random.default_rng(3).normal(0, 0.3, (4, 256, 3, 3)).astype(np.float32)  # big enough to time
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up/conv_transpose", strides=[2, 2], pads=[1, 1, 0, 0])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_weights_of_a_float_node_are_dequantized_on_every_call(calibration):
    """A ConvTranspose stays float in int8: its int8 weights keep a DequantizeLinear that runs
    on every call, and the profile counts its time apart. The int8 Convs fold theirs away."""
    from gencompress.converters.ort_graph import _weight_dequantizers

    data = quantize_onnx(_conv_transpose_net(), "int8", calibration)
    graph = runtime_graph(data, ["up"])
    assert graph.int8_kernels == {} and [(n.op, n.layers) for n in graph.float_nodes] == [("ConvTranspose", ["up"])]
    assert graph.quantize_nodes == 2 and graph.dequantize_nodes == 3  # the input's and output's pairs, the weights' DQ
    dequantizers = _weight_dequantizers(optimized_graph(data).graph)
    assert dequantizers == {"w_DequantizeLinear"}
    assert _weight_dequantizers(optimized_graph(quantize_onnx(_conv_net(False), "int8", calibration)).graph) == set()
    breakdown, node_ms = profile(data, {"x": calibration.arrays["x"][:1]}, runs=20, max_seconds=2.0)
    assert breakdown.weight_dequantize_ms == node_ms["w_DequantizeLinear"] > 0
    assert breakdown.weight_dequantize_ms < breakdown.quantize_ms <= breakdown.kernels_ms


def test_excluding_a_conv_transpose_does_not_keep_its_weights_float(calibration):
    """What the README's figures rest on: excluded from quantization, a ConvTranspose between
    int8 nodes (its input from a DequantizeLinear, its output into a QuantizeLinear) still gets
    int8 weights, dequantized on every call: onnxruntime's WeightBiasQuantization transformer
    quantizes them itself; disabled, none is left."""
    import onnx
    import onnxruntime as ort

    from gencompress.converters.ort_graph import _weight_dequantizers

    model = onnx.load_from_string(_conv_transpose_net())
    w1 = numpy_helper.from_array(np.random.default_rng(4).normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w1")
    model.graph.initializer.append(w1)
    model.graph.node.insert(0, helper.make_node("Conv", ["x", "w1"], ["c"], name="lead/conv", pads=[1, 1, 1, 1]))
    model.graph.node[1].input[0] = "c"
    model.graph.node[1].output[0] = "t"
    model.graph.node.append(helper.make_node("LeakyRelu", ["t"], ["y"], name="up/leaky_relu", alpha=0.2))
    data = quantize_onnx(model.SerializeToString(), "int8", calibration, nodes_to_exclude=["up/conv_transpose"])
    assert "w_DequantizeLinear" not in {n.name for n in onnx.load_from_string(data).graph.node}  # float in the file
    assert runtime_graph(data).int8_kernels == {"QLinearConv": 1, "QLinearLeakyRelu": 1}
    assert len(_weight_dequantizers(optimized_graph(data).graph)) == 1  # int8 where it runs
    with tempfile.TemporaryDirectory() as tmp:
        options = onnx_session_options()
        options.optimized_model_filepath = os.path.join(tmp, "o.onnx")
        ort.InferenceSession(data, options, providers=ONNX_PROVIDERS, disabled_optimizers=["WeightBiasQuantization"])
        assert _weight_dequantizers(onnx.load(options.optimized_model_filepath).graph) == set()


@pytest.mark.parametrize(
    "times, expected",
    [
        # call, floor, kernels, compute, quantize, weights
        ((0.010, 0.004, 0.005, 0.004, 0.0, 0.0), "overhead-bound: a call takes 0.010 ms, 0.004 ms of it"),
        ((1.0, 0.01, 0.9, 0.5, 0.3, 0.2), "conversion-bound: Quantize/Dequantize take 33 % of the nodes' time in the profile, 22 % dequantizing"),
        ((1.0, 0.01, 0.9, 0.4, 0.1, 0.0), "movement-bound: 44 % of the nodes' time moves data"),
        ((1.0, 0.01, 0.9, 0.8, 0.05, 0.0), "compute-bound: 89 % of the nodes' time is arithmetic, 67 % in QLinearConv"),
    ],
)
def test_explanation_names_what_dominates(times, expected):
    from gencompress.converters.ort_graph import _explain
    from gencompress.results import OpTime

    rows = [OpTime(op="QuantizeLinear", nodes=1, ms=0.7), OpTime(op="QLinearConv", nodes=2, ms=0.6)]
    assert _explain(*times, nodes=3, rows=rows).startswith(expected)


def test_quantize_report_says_what_onnxruntime_runs(dcgan, tmp_path, monkeypatch):
    """Every quantized ONNX artifact of a run carries ``runtime``; the tiny DCGAN's plain int8
    keeps its ConvTranspose in float, and the notes name them with their Keras layers and cost.
    The profile is taken when int8 is under 1.3× float's speed: here always, so it is tested."""
    import json

    import gencompress as gc
    from gencompress.pipelines import session as session_module

    monkeypatch.setattr(session_module, "PROFILE_BELOW_SPEEDUP", 1e9)
    result = gc.quantize(dcgan, gc.QuantizeConfig(min_psnr=0, formats=("onnx",), latency_runs=5), gc.Calibration.noise(32, seed=0))
    onnx_float, onnx_int8 = result.report.artifacts
    assert onnx_float.runtime is None
    runtime = onnx_int8.runtime
    # BatchNorm folded before quantizing: the Dense and its BatchNorm are one QGemm (no int8 Mul + Add)
    assert runtime.optimization_level == "all" and runtime.int8_kernels == {"QGemm": 1, "QLinearLeakyRelu": 2}
    assert {(n.op, tuple(n.layers)) for n in runtime.float_nodes if n.op == "ConvTranspose"} == {("ConvTranspose", ("up1",)), ("ConvTranspose", ("image",))}
    assert all(n.ms is not None and n.ms >= 0 for n in runtime.float_nodes)
    breakdown = runtime.breakdown
    assert breakdown.nodes >= len(runtime.float_nodes) + sum(runtime.int8_kernels.values())
    assert 0 < breakdown.weight_dequantize_ms <= breakdown.quantize_ms <= breakdown.kernels_ms  # the ConvTransposes' weights
    assert re.search(r"^onnxruntime \S+ runs these in float: .*ConvTranspose ×2 \(image, up1\) \d+\.\d{3} ms", "\n".join(onnx_int8.notes), re.M)
    assert f"onnxruntime profile: {breakdown.explanation}" in onnx_int8.notes
    result.save(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["artifacts"][1]["runtime"]["breakdown"]["by_op"] and saved["artifacts"][1]["runtime"]["float_nodes"]


def test_inspect_lists_onnx_nodes_left_in_float(tmp_path, keras):
    """``inspect`` names the nodes onnxruntime runs in float in the int8 export, with their Keras
    layer and profiled cost: a ConvTranspose (no int8 kernel in onnxruntime's CPU provider) and
    its Elu, while the Dense runs as a QLinearMatMul."""
    from click.testing import CliRunner

    from gencompress.cli import cli

    z = keras.Input((4,), name="z")
    x = keras.layers.Dense(2 * 2 * 4, name="dense")(z)
    x = keras.layers.Reshape((2, 2, 4), name="reshape")(x)
    out = keras.layers.Conv2DTranspose(2, 3, 2, padding="same", activation="elu", name="up")(x)
    keras.Model(z, out).save(tmp_path / "up.h5")
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "up.h5"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("onnx int8: int8 kernels in onnxruntime "))
    assert lines[at].endswith(": QLinearMatMul ×1; Quantize/Dequantize left: 2/3"), lines[at]
    assert lines[at + 1].startswith("onnx int8: these nodes run in float in onnxruntime ")
    floats = lines[at + 2 : at + 4]
    assert [line.split(":")[0] for line in floats] == ["  ConvTranspose", "  Elu"]
    assert all(re.search(r" \(up\) \d+\.\d{3} ms$", line) for line in floats), floats
    assert re.match(r"onnx int8 profile \(batch 1, 1 thread\): \d+\.\d{3} ms per call, float \d+\.\d{3} ms; node time by op: ", lines[at + 4])
    assert lines[at + 5].split(":")[0] in ("  overhead-bound", "  conversion-bound", "  movement-bound", "  compute-bound")


def test_inspect_without_int8_check_skips_onnx(tmp_path, keras):
    from click.testing import CliRunner

    from gencompress.cli import cli

    z = keras.Input((4,), name="z")
    keras.Model(z, keras.layers.Dense(3, name="dense")(z)).save(tmp_path / "d.h5")
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "d.h5"), "--no-int8-check", "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "onnx int8" not in result.output and "int8: not checked" in result.output
