"""Exact int8-friendly rewrites of float ONNX graphs (converters/onnx_rewrite.py), checked in
onnxruntime against the original graph on seeded inputs."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gencompress.converters.onnx_rewrite import TOLERANCE, rewrite_for_int8, subpixel_kernel
from gencompress.converters.ort_graph import float_compute_nodes, runtime_graph


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def _run(data, feed):
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


def _conv_transpose(cin, cout, k, strides, pads, output_padding=(0, 0), size=(5, 6), seed=0, after=()):
    """x → ConvTranspose (→ ``after`` node specs) → y, with seeded weights."""
    rng = np.random.default_rng(seed)
    kh, kw = (k, k) if isinstance(k, int) else k
    inits = {"w": rng.normal(size=(cin, cout, kh, kw)), "b": rng.normal(size=cout)}
    attrs = dict(strides=list(strides), pads=list(pads), kernel_shape=[kh, kw])
    if any(output_padding):
        attrs["output_padding"] = list(output_padding)
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["t0"], name="up/conv2d_transpose", **attrs)]
    for i, (op, extra_inputs, extra_inits, node_attrs) in enumerate(after):
        inits.update(extra_inits)
        nodes.append(helper.make_node(op, [f"t{i}", *extra_inputs], [f"t{i + 1}"], name=f"after{i}/{op}", **node_attrs))
    nodes[-1].output[0] = "y"
    return _model(nodes, [("x", ["N", cin, *size])], ["y"], inits)


def _feed(cin, size=(5, 6), n=3, seed=1):
    return {"x": np.random.default_rng(seed).normal(size=(n, cin, *size)).astype(np.float32)}


@pytest.mark.parametrize(
    "k, strides, pads, output_padding",
    [
        (3, (2, 2), (0, 0, 1, 1), (0, 0)),  # Keras 'same', k=3 s=2 (tf2onnx pads the end)
        (4, (2, 2), (1, 1, 1, 1), (0, 0)),  # DCGAN k=4 s=2 'same'
        (5, (2, 2), (1, 1, 2, 2), (0, 0)),  # k=5 s=2 'same': kernel not a multiple of the stride
        (5, (1, 1), (2, 2, 2, 2), (0, 0)),  # stride 1: a plain Conv with the flipped kernel
        (3, (3, 3), (0, 0, 0, 0), (0, 0)),  # 'valid', stride 3
        (2, (2, 2), (0, 0, 0, 0), (1, 1)),  # output_padding: bias-only rows at the end
        ((3, 4), (2, 1), (1, 0, 0, 2), (0, 0)),  # non-square kernel and strides, uneven crop
        (3, (2, 2), (2, 1, 0, 2), (1, 0)),  # crop past a phase boundary, output not a multiple of 2
    ],
)
def test_conv_transpose_becomes_an_exact_conv(k, strides, pads, output_padding):
    data = _conv_transpose(3, 4, k, strides, pads, output_padding)
    result = rewrite_for_int8(data, _feed(3))
    assert [r.op for r in result.rewritten] == ["ConvTranspose"] and not result.refused
    ops = [n.op_type for n in onnx.load_from_string(result.model).graph.node]
    assert "ConvTranspose" not in ops and ops[0] == "Conv"
    assert ("Transpose" in ops) == (strides != (1, 1))  # depth-to-space only when strided
    # exact on other inputs too, not only those it was checked with
    other = _feed(3, seed=7)
    (want,), (got,) = _run(data, other), _run(result.model, other)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= TOLERANCE
    assert result.max_abs_error <= TOLERANCE


def test_subpixel_kernel_of_same_padding_k3_s2():
    # 'same' k=3 s=2: even output rows take taps 0 (input row q) and 2 (row q - 1), odd rows tap 1
    w = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    kernel, pads, rows = subpixel_kernel(w, [2, 2], [0, 0], [10, 10], [5, 5])
    assert kernel.shape == (4, 1, 2, 2) and pads == [1, 1, 0, 0] and rows == [5, 5]
    assert kernel[0, 0].tolist() == [[8, 6], [2, 0]]  # phase (0, 0): the corners, flipped
    assert kernel[3, 0].tolist() == [[0, 0], [0, 4]]  # phase (1, 1): only the centre tap


def test_batchnorm_and_activation_are_folded_into_the_rewrite():
    c = 4
    rng = np.random.default_rng(3)
    bn = {"g": rng.uniform(0.5, 1.5, c), "be": rng.normal(size=c), "m": rng.normal(size=c), "v": rng.uniform(0.5, 2, c)}
    data = _conv_transpose(3, c, 4, (2, 2), (1, 1, 1, 1), after=[
        ("BatchNormalization", ["g", "be", "m", "v"], bn, {"epsilon": 1e-3}),
        ("LeakyRelu", [], {}, {"alpha": 0.2}),
    ])
    result = rewrite_for_int8(data, _feed(3))
    assert result.rewritten[0].into == "Conv + depth-to-space (BatchNormalization, LeakyRelu folded in)"
    ops = [n.op_type for n in onnx.load_from_string(result.model).graph.node]
    # the activation runs on the Conv's output, before the (element-permuting) depth-to-space
    assert ops == ["Conv", "LeakyRelu", "Transpose", "Reshape", "Transpose", "Reshape", "Transpose"]
    assert result.max_abs_error <= TOLERANCE


def test_slice_after_conv_transpose_is_folded_into_the_crop():
    crop = {"s": np.array([1, 0]), "e": np.array([9, 12]), "a": np.array([2, 3])}
    data = _conv_transpose(2, 3, 3, (2, 2), (0, 0, 0, 0), after=[("Slice", ["s", "e", "a"], {}, {})])
    # Slice's index inputs must be int64
    model = onnx.load_from_string(data)
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.int64), k) for k, v in crop.items())
    result = rewrite_for_int8(model.SerializeToString(), _feed(2))
    assert "Slice folded in" in result.rewritten[0].into
    assert result.max_abs_error <= TOLERANCE


def test_grouped_conv_transpose_is_left_alone_with_a_reason():
    rng = np.random.default_rng(0)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="grouped", strides=[2, 2], group=2, kernel_shape=[3, 3])
    data = _model([node], [("x", [1, 4, 5, 5])], ["y"], {"w": rng.normal(size=(4, 1, 3, 3))})
    result = rewrite_for_int8(data, _feed(4, (5, 5)))
    assert result.model == data and not result.changed
    assert result.refused == (("grouped", "ConvTranspose", "grouped"),)


def test_a_rewrite_that_changes_the_outputs_is_refused(monkeypatch):
    from gencompress.converters import onnx_rewrite

    data = _conv_transpose(3, 4, 3, (2, 2), (0, 0, 1, 1))
    real = onnx_rewrite.subpixel_kernel

    def off_by_one_tap(*args):  # a wrong kernel: the check must catch it and keep the node
        kernel, pads, rows = real(*args)
        return kernel + 0.01, pads, rows

    monkeypatch.setattr(onnx_rewrite, "subpixel_kernel", off_by_one_tap)
    result = rewrite_for_int8(data, _feed(3))
    assert result.model == data and not result.rewritten
    assert result.refused[0][:2] == ("up/conv2d_transpose", "ConvTranspose")
    assert result.refused[0][2].startswith("outputs differ by")


def test_neg_batchnorm_and_dense_batchnorm_rewrites_are_exact():
    rng = np.random.default_rng(5)
    c = 3
    inits = {
        "w": rng.normal(size=(6, 2 * 2 * c)), "bias": rng.normal(size=12), "mul": rng.normal(size=12), "add": rng.normal(size=12),
        "shape": np.array([0, c, 2, 2]), "g": rng.uniform(0.5, 1.5, c), "be": rng.normal(size=c), "m": rng.normal(size=c),
        "v": rng.uniform(0.5, 2, c),
    }
    nodes = [
        helper.make_node("MatMul", ["z", "w"], ["d"], name="dense/MatMul"),
        helper.make_node("Add", ["d", "bias"], ["db"], name="dense/BiasAdd"),
        helper.make_node("Mul", ["db", "mul"], ["dm"], name="bn/mul"),
        helper.make_node("Add", ["dm", "add"], ["da"], name="bn/add"),
        helper.make_node("Reshape", ["da", "shape_i"], ["r"], name="reshape"),
        helper.make_node("Relu", ["r"], ["a"], name="act"),
        helper.make_node("BatchNormalization", ["a", "g", "be", "m", "v"], ["n"], name="bn2"),
        helper.make_node("Neg", ["n"], ["y"], name="negate"),
    ]
    model = onnx.load_from_string(_model(nodes, [("z", ["N", 6])], ["y"], {k: v for k, v in inits.items() if k != "shape"}))
    model.graph.initializer.append(numpy_helper.from_array(inits["shape"].astype(np.int64), "shape_i"))
    data = model.SerializeToString()
    result = rewrite_for_int8(data, {"z": rng.normal(size=(4, 6)).astype(np.float32)})
    assert [(r.op, r.into) for r in result.rewritten] == [
        ("MatMul", "MatMul + Add (Add, Mul, Add folded)"),
        ("BatchNormalization", "1×1 depthwise Conv"),
        ("Neg", "Mul by -1"),
    ]
    ops = [n.op_type for n in onnx.load_from_string(result.model).graph.node]
    assert ops == ["MatMul", "Add", "Reshape", "Relu", "Conv", "Mul"]
    assert result.max_abs_error <= TOLERANCE


def test_rewrite_is_deterministic_and_keeps_the_interface():
    data = _conv_transpose(3, 4, 5, (2, 2), (1, 1, 2, 2))
    a, b = rewrite_for_int8(data, _feed(3)), rewrite_for_int8(data, _feed(3))
    assert a.model == b.model
    before, after = onnx.load_from_string(data).graph, onnx.load_from_string(a.model).graph
    assert [i.name for i in after.input] == [i.name for i in before.input]
    assert [o.name for o in after.output] == [o.name for o in before.output]
    assert {i.name for i in after.initializer}.isdisjoint({"w"})  # the old weight is gone


def test_quantized_rewrite_runs_conv_transpose_work_in_int8(dcgan, tmp_path):
    """The tiny DCGAN's int8 ONNX keeps both ConvTranspose in float; rewritten, onnxruntime
    runs them as QLinearConv and the fidelity stays where it was."""
    from gencompress.converters.onnx import export_onnx_float, quantize_onnx
    from gencompress.report.metrics import fidelity

    from conftest import make_session

    session = make_session(dcgan, 64, 16)
    float_bytes = export_onnx_float(session.model)
    rewritten = rewrite_for_int8(float_bytes, session.calibration.take(4).arrays)
    assert sorted(r.op for r in rewritten.rewritten) == ["ConvTranspose", "ConvTranspose", "MatMul"]

    plain = quantize_onnx(float_bytes, "int8", session.calibration)
    fast = quantize_onnx(rewritten.model, "int8", session.calibration)
    assert "ConvTranspose" in float_compute_nodes(plain)
    assert float_compute_nodes(fast) <= {"Tanh"}  # only the output activation, which has no int8 kernel
    graph = runtime_graph(fast, ["up1", "image"])
    assert graph.int8_kernels["QLinearConv"] == 2 and "QGemm" in graph.int8_kernels
    assert graph.quantize_nodes == 1 and graph.dequantize_nodes == 1  # only at the graph's edges

    psnr = {}
    for name, data in (("plain", plain), ("fast", fast)):
        outs = [np.concatenate(_run(data, {"z": session.evaluation.arrays["z"]}))]
        psnr[name] = fidelity(session.reference, outs, session.output_range)["psnr_db"]
    assert psnr["fast"] > 40.0 and psnr["fast"] >= psnr["plain"] - 1.0  # no fidelity given up for the speed
