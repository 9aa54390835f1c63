"""Real conversions checked in real runtimes (LiteRT, onnxruntime) against the Keras model."""

import numpy as np
import onnx
import pytest

from gencompress.converters.onnx import OnnxRunner
from gencompress.converters.tflite import TFLiteRunner
from gencompress.report.metrics import fidelity
from gencompress.workflow import RunOptions, build_artifact, prepare


@pytest.fixture(scope="module")
def dcgan_session(dcgan, tmp_path_factory):
    opts = RunOptions(calibration_samples=64, eval_samples=16, latency_runs=5)
    return prepare(dcgan, opts, tmp_path_factory.mktemp("out"))


def _run(session, fmt, data, tmp_path, name="m"):
    path = tmp_path / f"{name}.{fmt}"
    path.write_bytes(data)
    cls = TFLiteRunner if fmt == "tflite" else OnnxRunner
    model = session.model
    return cls(str(path), model.input_names, [t.name for t in model.outputs]).run_all(session.evaluation)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_float_artifacts_match_keras(dcgan_session, tmp_path, fmt):
    out = _run(dcgan_session, fmt, build_artifact(dcgan_session, fmt, "float32"), tmp_path)
    assert out[0].shape == (16, 16, 16, 1)
    fid = fidelity(dcgan_session.reference, out, dcgan_session.output_range)
    assert fid["psnr_db"] > 80.0
    assert fid["max_abs_error"] < 1e-4


def test_int8_tflite_is_integer_inside_with_float_io(dcgan_session, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    data = build_artifact(dcgan_session, "tflite", "int8")
    interp = Interpreter(model_content=data)
    assert interp.get_input_details()[0]["dtype"] == np.float32
    assert interp.get_output_details()[0]["dtype"] == np.float32
    kinds = {t["dtype"] for t in interp.get_tensor_details()}
    assert np.int8 in kinds
    float_size = len(build_artifact(dcgan_session, "tflite", "float32"))
    assert len(data) < float_size
    fid = fidelity(dcgan_session.reference, _run(dcgan_session, "tflite", data, tmp_path), dcgan_session.output_range)
    assert 20.0 < fid["psnr_db"] < 80.0  # quantized: close, but no longer float-exact


def test_int8_io_tflite(dcgan, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    opts = RunOptions(calibration_samples=32, eval_samples=8, int8_io=True)
    session = prepare(dcgan, opts, tmp_path)
    data = build_artifact(session, "tflite", "int8")
    interp = Interpreter(model_content=data)
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    # the runner (de)quantizes at the edges, so fidelity is still comparable
    fid = fidelity(session.reference, _run(session, "tflite", data, tmp_path), session.output_range)
    assert fid["psnr_db"] > 20.0


def test_onnx_int8_is_qdq_per_channel(dcgan_session, tmp_path):
    data = build_artifact(dcgan_session, "onnx", "int8")
    graph = onnx.load_from_string(data).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    scales = [i for i in graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1 and i.dims[0] > 1]
    assert scales, "per-channel weight scales expected"
    fid = fidelity(dcgan_session.reference, _run(dcgan_session, "onnx", data, tmp_path), dcgan_session.output_range)
    assert 20.0 < fid["psnr_db"] < 80.0


@pytest.mark.parametrize("precision, minimum_db", [("float16", 60.0), ("dynamic", 30.0), ("int16x8", 45.0)])
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_other_precisions(dcgan_session, tmp_path, fmt, precision, minimum_db):
    data = build_artifact(dcgan_session, fmt, precision)
    out = _run(dcgan_session, fmt, data, tmp_path)
    assert fidelity(dcgan_session.reference, out, dcgan_session.output_range)["psnr_db"] > minimum_db


def test_conversions_are_deterministic(dcgan_session):
    for fmt in ("tflite", "onnx"):
        assert build_artifact(dcgan_session, fmt, "int8") == build_artifact(dcgan_session, fmt, "int8")


def test_two_input_conditional_model_int8(conditional, tmp_path):
    session = prepare(conditional, RunOptions(calibration_samples=32, eval_samples=8), tmp_path)
    for fmt in ("tflite", "onnx"):
        for precision, minimum in (("float32", 80.0), ("int8", 20.0)):
            out = _run(session, fmt, build_artifact(session, fmt, precision), tmp_path, f"{fmt}{precision}")
            assert out[0].shape == (8, 8, 8, 1)
            assert fidelity(session.reference, out, session.output_range)["psnr_db"] > minimum, (fmt, precision)


def test_plain_savedmodel_converts(tmp_path):
    import keras as keras3

    keras3.utils.set_random_seed(0)
    k3 = keras3.Sequential([keras3.Input((5,), name="z"), keras3.layers.Dense(12, activation="tanh", name="d")])
    k3.export(str(tmp_path / "sm"), verbose=False)
    from gencompress.model import load_model

    model = load_model(tmp_path / "sm")
    session = prepare(model, RunOptions(calibration_samples=16, eval_samples=8), tmp_path)
    for fmt in ("tflite", "onnx"):
        out = _run(session, fmt, build_artifact(session, fmt, "float32"), tmp_path, f"sm-{fmt}")
        assert fidelity(session.reference, out, session.output_range)["psnr_db"] > 80.0
        out = _run(session, fmt, build_artifact(session, fmt, "int8"), tmp_path, f"sm-{fmt}-q")
        assert fidelity(session.reference, out, session.output_range)["psnr_db"] > 25.0
