"""Nested models inlined (``flat_copy``): a Sequential body inside a functional wrapper, as in
catgan, fmnist_cgan and dlss_sr, so that QAT and --width students work on them."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gencompress.cli import cli
from gencompress.errors import UnsupportedModelError
from gencompress.model import flat_copy

FAST = ["--calibration-samples", "32", "--eval-samples", "8", "--latency-runs", "3"]


def _nested(keras, seed=0):
    keras.utils.set_random_seed(seed)
    body = keras.Sequential(
        [
            keras.layers.Dense(4 * 4 * 8, input_shape=(16,), name="project"),
            keras.layers.LeakyReLU(0.2, name="act"),
            keras.layers.Reshape((4, 4, 8), name="grid"),
            keras.layers.UpSampling2D(name="up"),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
            keras.layers.Conv2D(3, 3, padding="same", activation="tanh", name="rgb"),
        ],
        name="body",
    )
    z = keras.Input((16,), name="z")
    return keras.Model(z, body(z), name="wrapper")


def test_nested_sequential_inlined_with_the_same_outputs(keras):
    model = _nested(keras)
    flat = flat_copy(model)
    assert [layer.name for layer in flat.layers] == ["z", "project", "act", "grid", "up", "conv", "body"]
    assert flat.input_names == ["z"] and flat.output_names == model.output_names == ["body"]
    assert flat.count_params() == model.count_params()
    z = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    assert np.array_equal(flat.predict(z, verbose=0), model.predict(z, verbose=0))
    assert flat_copy(flat) is flat  # already flat: the model itself


def test_shared_layer_two_inputs_two_outputs(keras):
    keras.utils.set_random_seed(3)
    L = keras.layers
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    shared = L.Dense(6, activation="tanh", name="shared")
    sa, sb = shared(a), shared(b)
    block = keras.Sequential([L.Dense(5, input_shape=(6,), name="inner_fc"), L.ReLU(name="inner_relu")], name="block")
    model = keras.Model([a, b], [block(L.Add(name="sum")([sa, sb, shared(sa)])), L.Dense(2, name="side")(sb)])
    flat = flat_copy(model)
    assert flat.input_names == ["a", "b"] and flat.output_names == ["block", "side"]
    assert flat.count_params() == model.count_params()  # the shared layer stays one layer
    x = [np.random.default_rng(i).standard_normal((4, 6)).astype(np.float32) for i in (1, 2)]
    for u, v in zip(flat.predict(x, verbose=0), model.predict(x, verbose=0)):
        assert np.array_equal(u, v)


def test_nested_functional_refused_in_one_line(keras):
    inner_in = keras.Input((16,))
    inner = keras.Model(inner_in, keras.layers.Dense(8)(inner_in), name="inner")
    z = keras.Input((16,), name="z")
    with pytest.raises(UnsupportedModelError, match="layer 'inner' is a nested functional model"):
        flat_copy(keras.Model(z, inner(z)))


def test_distill_and_qat_a_nested_generator(keras, tmp_path):
    path = tmp_path / "wrapper.h5"
    _nested(keras).save(path)
    out = tmp_path / "distill"
    result = CliRunner().invoke(cli, ["distill", str(path), "-o", str(out), "--width", "0.5", "--steps", "40", "--batch-size", "8",
                                      "--eval-every", "20", "--min-psnr", "0", *FAST])
    assert result.exit_code == 0, result.output
    d = json.loads((out / "report.json").read_text())["distillation"]
    assert d["params_ratio"] < 0.5 and d["finetune"]["steps_run"] == 40
    out = tmp_path / "qat"
    result = CliRunner().invoke(cli, ["quantize", str(path), "-o", str(out), "--method", "qat", "--steps", "20", "--batch-size", "8", *FAST])
    assert result.exit_code in (0, 3), result.output
    q = json.loads((out / "report.json").read_text())["qat"]
    assert q["finetune"]["steps_run"] >= 1 and {e["format"] for e in q["exports"]} >= {"tflite"}
