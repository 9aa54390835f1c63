"""Real conversions checked in real runtimes (LiteRT, onnxruntime) against the Keras model."""

import numpy as np
import onnx
import pytest

from gencompress.converters.runners import OnnxRunner, TFLiteRunner
from gencompress.report.metrics import fidelity
from gencompress.pipelines.build import build_artifact

from conftest import make_session


@pytest.fixture(scope="module")
def dcgan_session(dcgan, tmp_path_factory):
    return make_session(dcgan, 64, 16, latency_runs=5)


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

    session = make_session(dcgan, 32, 8, int8_io=True)
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
    session = make_session(conditional, 32, 8)
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
    session = make_session(model, 16, 8)
    for fmt in ("tflite", "onnx"):
        out = _run(session, fmt, build_artifact(session, fmt, "float32"), tmp_path, f"sm-{fmt}")
        assert fidelity(session.reference, out, session.output_range)["psnr_db"] > 80.0
        out = _run(session, fmt, build_artifact(session, fmt, "int8"), tmp_path, f"sm-{fmt}-q")
        assert fidelity(session.reference, out, session.output_range)["psnr_db"] > 25.0


def test_input_names_that_are_not_signature_keys(keras, tmp_path):
    """from_keras_model writes no signature at all for an input named "Noise Input" (a published
    cGAN does this): the runner then cannot call the model. Such names get sanitized keys."""
    from ai_edge_litert.interpreter import Interpreter

    from gencompress.model import load_model

    keras.utils.set_random_seed(0)
    z = keras.Input((6,), name="Noise Input")
    label = keras.Input((1,), name="label Input", dtype="int32")
    e = keras.layers.Flatten()(keras.layers.Embedding(3, 6)(label))
    out = keras.layers.Dense(8, activation="tanh", name="image")(keras.layers.Multiply()([z, e]))
    keras.Model([z, label], out).save(tmp_path / "spaces.h5")
    model = load_model(tmp_path / "spaces.h5")
    session = make_session(model, 16, 8)
    for precision, minimum in (("float32", 80.0), ("int8", 25.0)):
        data = build_artifact(session, "tflite", precision)
        signature = Interpreter(model_content=data).get_signature_list()["serving_default"]
        assert sorted(signature["inputs"]) == ["Noise_Input", "label_Input"]
        out = _run(session, "tflite", data, tmp_path, precision)
        assert fidelity(session.reference, out, session.output_range)["psnr_db"] > minimum


def test_calibration_records_true_ranges_of_residual_add_inputs(keras):
    """TFLite's calibrator reads an op's inputs after the op ran, and LiteRT computes ADD in place:
    the conv feeding a residual Add got the Add's range (true ±2, recorded up to 4.5). The ranges
    gencompress records are the tensors' own."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tensorflow.lite.tools import flatbuffer_utils

    from gencompress.calibration import build_sets
    from gencompress.converters.tflite import calibrate, int8_converter
    from gencompress.model import _from_keras
    from gencompress.tfenv import native_output_captured

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 4), name="x")
    h = keras.layers.Conv2D(4, 3, padding="same", name="c1")(x)
    y = keras.layers.Add(name="add1")([h, keras.layers.Conv2D(4, 3, padding="same", name="c2")(h)])
    model = _from_keras("mem", "h5", keras.Model(x, keras.layers.Conv2D(3, 3, padding="same", name="out")(y)))
    calib, _ = build_sets(model.inputs, "noise", 16, 1, 0)

    def ranges(flat_bytes):
        flat = flatbuffer_utils.read_model_from_bytearray(bytearray(flat_bytes))
        return {
            t.name.decode(): (float(t.quantization.min[0]), float(t.quantization.max[0]))
            for t in flat.subgraphs[0].tensors
            if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min) == 1
        }

    ours = ranges(calibrate(model, calib))
    converter = int8_converter(model, calib)
    converter._experimental_calibrate_only = True
    with native_output_captured():
        theirs = ranges(bytes(converter.convert()))
    # the true ranges, from the float model with every tensor kept
    interp = Interpreter(
        model_content=calibrate(model, calib.take(1)),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    interp.allocate_tensors()
    true = {}
    for sample in calib.samples():
        interp.set_tensor(interp.get_input_details()[0]["index"], sample["x"])
        interp.invoke()
        for d in interp.get_tensor_details():
            if d["name"] in ours:
                v = interp.get_tensor(d["index"])
                lo, hi = true.get(d["name"], (np.inf, -np.inf))
                true[d["name"]] = (min(lo, float(v.min())), max(hi, float(v.max())))
    conv2 = next(n for n in ours if "c2" in n and "add" not in n)
    assert set(ours) == set(true) and all(ours[n] == pytest.approx(true[n], rel=1e-6) for n in ours)
    add = next(n for n in ours if "add1" in n and n != conv2)
    assert theirs[conv2] == pytest.approx(theirs[add], rel=1e-6) and theirs[conv2][1] > true[conv2][1] * 1.2  # the Add's range
    assert [n for n in ours if ours[n] != pytest.approx(theirs[n], rel=1e-6)] == [conv2]  # only that one differs


def test_onnx_export_names_merged_constants_after_their_use(keras):
    """tf2onnx merges identical constants and keeps one of their names in an order that changes
    between processes; a merged constant is named after its first use instead."""
    import onnx

    from gencompress.converters.onnx import export_onnx_float
    from gencompress.model import _from_keras

    keras.utils.set_random_seed(0)
    z = keras.Input((4, 4, 2), name="z")
    # a fresh BatchNorm after a transposed convolution: beta == mean == 0 and gamma == var == 1
    out = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2DTranspose(3, 3, 2, padding="same", name="up")(z))
    model = keras.Model(z, out)
    graph = onnx.load_from_string(export_onnx_float(_from_keras("mem", "h5", model))).graph
    inits = {i.name for i in graph.initializer}
    uses = [n for node in graph.node for n in node.input if n in inits]
    shared = {n for n in uses if uses.count(n) > 1}
    assert shared and all("/shared_input_" in n for n in shared)


def test_recurrent_layers_convert_unrolled(keras, tmp_path):
    """A GRU runs as a while loop over a TensorList: with an unknown batch the TFLite converter
    refused it (element_shape not static: a published GRU audio generator, exit 4), and with a
    batch of one its int8 calibration crashed the process. Unrolled over its known time steps it
    converts in float and int8 and gives the model's outputs."""
    from gencompress.model import load_model

    keras.utils.set_random_seed(0)
    z = keras.Input((12,), name="z")
    x = keras.layers.Reshape((4, 3))(z)
    x = keras.layers.GRU(8, return_sequences=True, name="gru")(x)
    out = keras.layers.Conv1DTranspose(2, 3, 2, padding="same", activation="tanh", name="wave")(x)
    keras.Model(z, out).save(tmp_path / "gru.h5")
    model = load_model(tmp_path / "gru.h5")
    session = make_session(model, 32, 8)
    for precision, minimum in (("float32", 80.0), ("int8", 25.0)):
        data = build_artifact(session, "tflite", precision)
        out = _run(session, "tflite", data, tmp_path, precision)
        assert fidelity(session.reference, out, session.output_range)["psnr_db"] > minimum, precision
