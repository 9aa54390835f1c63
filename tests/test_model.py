"""Loading: every supported format gives the same handle; unsafe or broken files are refused."""

import hashlib
import os

import numpy as np
import pytest

from gencompress.errors import ModelLoadError, UnsupportedModelError
from gencompress.model import load_model

from conftest import build_conditional, build_dcgan


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_h5_sequential_handle(dcgan, dcgan_h5):
    assert dcgan.format == "h5"
    assert dcgan.stem == "dcgan"
    assert [t.to_dict() for t in dcgan.inputs] == [{"name": "z", "shape": [None, 8], "dtype": "float32"}]
    assert dcgan.outputs[0].shape == (None, 16, 16, 1)
    assert dcgan.output_activation == "tanh"
    assert dcgan.known_output_range() == (-1.0, 1.0)
    assert dcgan.params == dcgan.keras_model.count_params() == 8 * 128 + 4 * 128 + 8 * 9 * 4 + 4 + 4 * 9 + 1


def test_two_inputs_with_label_range(conditional):
    assert conditional.input_names == ["z", "label"]
    assert conditional.inputs[1].dtype == "int32" and conditional.inputs[1].is_integer
    assert conditional.label_ranges == {"label": 5}
    assert conditional.output_activation == "sigmoid"


def test_unbounded_output_has_no_known_range(i2i_keras):
    model = load_model(i2i_keras)
    assert model.format == "keras"
    assert model.output_activation is None and model.known_output_range() is None


def test_loading_never_writes_the_model_file(dcgan_h5):
    before = _digest(dcgan_h5)
    load_model(dcgan_h5).predict({"z": np.zeros((2, 8), np.float32)})
    assert _digest(dcgan_h5) == before


@pytest.mark.parametrize("how", ["tf_keras_savedmodel", "keras3_export", "tf_saved_model_save"])
def test_savedmodel_directories(keras, tmp_path, how):
    import keras as keras3
    import tensorflow as tf

    x = np.random.default_rng(0).standard_normal((3, 8)).astype("float32")
    if how == "tf_keras_savedmodel":
        ref = build_dcgan(keras)
        ref.save(tmp_path / "sm", save_format="tf")
        expected = ref(x).numpy()
    else:
        ref = keras3.Sequential([keras3.Input((8,), name="z"), keras3.layers.Dense(6, activation="tanh", name="d")])
        expected = np.asarray(ref(x))
        if how == "keras3_export":
            ref.export(str(tmp_path / "sm"), verbose=False)
        else:
            tf.saved_model.save(ref, str(tmp_path / "sm"))
    model = load_model(tmp_path / "sm")
    assert model.format == ("savedmodel-keras" if how == "tf_keras_savedmodel" else "savedmodel")
    # tf.saved_model.save names the serving input after the call argument, not the Input layer.
    name = "inputs" if how == "tf_saved_model_save" else "z"
    assert model.input_names == [name]
    out = model.predict({name: x})[0]
    assert out.shape == expected.shape
    assert np.max(np.abs(out - expected)) < 1e-6


def test_keras3_file_is_bridged(tmp_path):
    import keras as keras3

    keras3.utils.set_random_seed(0)
    k3 = keras3.Sequential(
        [keras3.Input((6,), name="z"), keras3.layers.Dense(16, name="d"), keras3.layers.LeakyReLU(0.2),
         keras3.layers.Reshape((4, 4, 1)), keras3.layers.Conv2DTranspose(2, 3, 2, padding="same", activation="sigmoid")]
    )
    k3.save(tmp_path / "k3.keras")
    model = load_model(tmp_path / "k3.keras")
    assert model.format == "keras3"
    assert model.output_activation == "sigmoid"
    x = np.random.default_rng(1).standard_normal((4, 6)).astype("float32")
    assert np.max(np.abs(model.predict({"z": x})[0] - np.asarray(k3(x)))) <= 1e-5


def test_lambda_layer_refused_without_trust(keras, tmp_path):
    z = keras.Input((4,), name="z")
    out = keras.layers.Lambda(lambda t: t * 2.0, name="double")(keras.layers.Dense(4)(z))
    path = tmp_path / "lambda.h5"
    keras.Model(z, out).save(path)
    with pytest.raises(UnsupportedModelError, match="'double' \\(Lambda\\).*--trust-code"):
        load_model(path)
    trusted = load_model(path, trust_code=True)
    assert trusted.outputs[0].shape == (None, 4)


def test_custom_layer_refused(keras, tmp_path):
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 3.0

    z = keras.Input((4,), name="z")
    path = tmp_path / "custom.h5"
    keras.Model(z, Scale(name="scale3")(z)).save(path)
    with pytest.raises(UnsupportedModelError, match="'scale3' has custom class Scale"):
        load_model(path)
    with pytest.raises(UnsupportedModelError, match="--trust-code"):
        load_model(path, custom_objects_file=str(tmp_path / "x.py"))
    objects = tmp_path / "objects.py"
    objects.write_text(
        "import tf_keras as keras\n"
        "class Scale(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return x * 3.0\n"
    )
    model = load_model(path, trust_code=True, custom_objects_file=str(objects))
    assert np.allclose(model.predict({"z": np.ones((1, 4), np.float32)})[0], 3.0)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.h5", None, "model not found"),
        ("corrupt.h5", b"not an hdf5 file at all", "cannot read .* as HDF5"),
        ("corrupt.keras", b"PK\x03\x04 broken zip", "cannot read .* as a .keras archive"),
        ("model.onnx", b"x", "unsupported model file"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(path)


def test_weights_only_h5_is_refused(keras, tmp_path):
    path = tmp_path / "weights.h5"
    build_conditional(keras).save_weights(path)
    with pytest.raises(ModelLoadError, match="no model config"):
        load_model(path)


def test_directory_that_is_not_a_savedmodel(tmp_path):
    with pytest.raises(ModelLoadError, match="not a SavedModel"):
        load_model(tmp_path)


def test_tensorflow_starts_with_our_environment(dcgan_h5, tmp_path):
    """The .h5 config reader imports tf-keras: TensorFlow must still start with tf-keras as
    tf.keras and oneDNN off (it reorders float sums with the thread count), and quietly."""
    import subprocess
    import sys

    code = (
        "import os, sys; from gencompress.model import load_model; load_model(sys.argv[1]); "
        "import tensorflow as tf; print(os.environ['TF_ENABLE_ONEDNN_OPTS'], tf.keras.__name__.split('.')[0])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run([sys.executable, "-c", code, str(dcgan_h5)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "tf_keras"]
    assert "oneDNN" not in result.stderr and "cuInit" not in result.stderr
