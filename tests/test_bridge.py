"""Tests for gencompress.bridge: Keras 3 .keras files -> verified tf-keras models."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is imported anywhere

import subprocess
import sys
import zipfile

import numpy as np
import pytest

import keras  # Keras 3, even with TF_USE_LEGACY_KERAS=1
import tensorflow as tf
import tf_keras

from gencompress.bridge import TOLERANCE, is_keras3_file, keras3_to_tf_keras, load_keras3_file, max_abs_error
from gencompress.errors import ModelLoadError, UnsupportedModelError

L = keras.layers


# ----------------------------------------------------------------------------- helpers


def _randomize(model, seed=0):
    """Give every weight non-trivial values (BN stats included) so a swapped weight would show."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomize(layer, seed + 1)
            continue
        values = []
        for w in layer.weights:
            v = rng.standard_normal(tuple(w.shape)).astype("float32") * 0.5
            if "variance" in w.name:
                v = np.abs(v) + 0.5
            values.append(v)
        if values:
            layer.set_weights(values)
    return model


def _input_names_k3(model):
    return [t._keras_history.operation.name for t in model.inputs]


def _output_names_k3(model):
    return [t._keras_history.operation.name for t in model.outputs]


def _inputs_for(model, seed=1):
    rng = np.random.default_rng(seed)
    arrays = []
    for t in model.inputs:
        shape = [3] + list(t.shape[1:])
        if "int" in str(t.dtype):
            arrays.append(rng.integers(0, 10, size=shape).astype("int32"))
        else:
            arrays.append(rng.standard_normal(shape).astype("float32"))
    return arrays[0] if len(arrays) == 1 else arrays


def _own_max_abs_error(k3_model, tfk_model):
    x = _inputs_for(k3_model)
    y3 = tf.nest.flatten(k3_model(x, training=False))
    y2 = tf.nest.flatten(tfk_model(x, training=False))
    assert len(y3) == len(y2)
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(y3, y2))


def _check_bridge(k3_model, tmp_path, fname):
    path = tmp_path / fname
    k3_model.save(str(path))
    assert is_keras3_file(str(path))
    tfk_model = load_keras3_file(str(path))
    assert isinstance(tfk_model, tf_keras.Model)
    assert tfk_model.name == k3_model.name
    assert list(tfk_model.input_names) == _input_names_k3(k3_model)
    assert list(tfk_model.output_names) == _output_names_k3(k3_model)
    assert [tuple(t.shape) for t in tfk_model.inputs] == [tuple(t.shape) for t in k3_model.inputs]
    assert [tuple(t.shape) for t in tfk_model.outputs] == [tuple(t.shape) for t in k3_model.outputs]
    assert [t.dtype.name for t in tfk_model.inputs] == [str(t.dtype) for t in k3_model.inputs]
    assert tfk_model.count_params() == k3_model.count_params()
    k3_names = [l.name for l in k3_model.layers]
    assert [l.name for l in tfk_model.layers] == k3_names
    err = _own_max_abs_error(k3_model, tfk_model)
    assert err <= 1e-5, err
    err_api = max_abs_error(k3_model, tfk_model, seed=3)
    assert err_api <= 1e-5, err_api
    print(f"{k3_model.name}: max abs error {err:.3g} / {err_api:.3g}")
    return tfk_model, max(err, err_api)


# ----------------------------------------------------------------------------- models


def dcgan_generator():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16,), name="z"),
            L.Dense(4 * 4 * 8, use_bias=False, name="fc"),
            L.BatchNormalization(name="fc_bn"),
            L.LeakyReLU(negative_slope=0.2, name="fc_lrelu"),
            L.Reshape((4, 4, 8), name="reshape"),
            L.Dropout(0.3, name="drop"),
            L.Conv2DTranspose(8, 4, strides=2, padding="same", name="up1"),
            L.BatchNormalization(name="up1_bn"),
            L.ReLU(name="up1_relu"),
            L.Conv2DTranspose(1, 3, strides=1, padding="same", name="to_img"),
            L.Activation("tanh", name="tanh"),
        ],
        name="dcgan_g",
    )
    return _randomize(model, 0)


def conditional_generator():
    keras.utils.set_random_seed(1)
    z = keras.Input((8,), name="z")
    label = keras.Input((1,), dtype="int32", name="label")
    e = L.Embedding(10, 8, name="label_emb")(label)
    e = L.Flatten(name="label_flat")(e)
    h = L.Concatenate(name="concat")([z, e])
    h = L.Dense(4 * 4 * 6, name="fc")(h)
    h = L.LayerNormalization(name="fc_ln")(h)
    h = L.LeakyReLU(negative_slope=0.1, name="fc_lrelu")(h)
    gate = L.Dense(4 * 4 * 6, activation="sigmoid", name="gate")(z)
    h = L.Multiply(name="gated")([h, gate])
    h = L.Reshape((4, 4, 6), name="reshape")(h)
    h = L.UpSampling2D(interpolation="bilinear", name="up_bilinear")(h)
    h = L.Conv2D(6, 3, padding="same", name="conv")(h)
    h = L.Activation("relu", name="relu")(h)
    h = L.UpSampling2D(size=2, interpolation="nearest", name="up_nearest")(h)
    out = L.Conv2D(3, 3, padding="same", activation="sigmoid", name="rgb")(h)
    return _randomize(keras.Model([z, label], out, name="cond_g"), 1)


def image_to_image():
    keras.utils.set_random_seed(2)
    x = keras.Input((16, 16, 3), name="image")
    h = L.ZeroPadding2D(1, name="pad")(x)
    h = L.Conv2D(8, 3, name="stem")(h)  # 16x16 again
    h = L.PReLU(shared_axes=[1, 2], name="stem_prelu")(h)
    skip = h
    h = L.SeparableConv2D(8, 3, padding="same", name="sep")(h)
    h = L.BatchNormalization(name="sep_bn")(h)
    h = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1, name="dw")(h)
    h = L.Add(name="skip_add")([h, skip])
    # squeeze-and-excite
    se = L.GlobalAveragePooling2D(name="se_pool")(h)
    se = L.Dense(8, activation="sigmoid", name="se_fc")(se)
    se = L.Reshape((1, 1, 8), name="se_reshape")(se)
    h = L.Multiply(name="se_scale")([h, se])
    # down / up
    d = L.AveragePooling2D(2, name="avgpool")(h)
    d = L.MaxPooling2D(2, name="maxpool")(d)  # 4x4
    d = L.UpSampling2D(4, name="up")(d)  # 16x16
    h = L.Concatenate(name="cat")([h, d])
    h = L.ZeroPadding2D(((1, 2), (2, 1)), name="pad2")(h)
    h = L.Cropping2D(((1, 2), (2, 1)), name="crop")(h)
    h = L.Conv2D(3, 1, name="head")(h)
    out = L.Activation("tanh", name="out")(h)
    return _randomize(keras.Model(x, out, name="img2img"), 2)


def shared_and_nested():
    """Shared layer, nested Sequential, two outputs, multiple-input Add."""
    keras.utils.set_random_seed(3)
    a = keras.Input((6,), name="a")
    b = keras.Input((6,), name="b")
    shared = L.Dense(6, activation="tanh", name="shared")
    sa, sb = shared(a), shared(b)
    block = keras.Sequential([keras.Input((6,)), L.Dense(5, name="inner_fc"), L.ReLU(name="inner_relu")], name="block")
    s = L.Add(name="sum")([sa, sb, shared(sa)])
    return _randomize(keras.Model([a, b], [block(s), L.Dense(2, name="side")(sb)], name="shared_nested"), 3)


def generic_layers():
    """Layers outside the required list, through the generic translation."""
    keras.utils.set_random_seed(4)
    x = keras.Input((8, 8, 4), name="x")
    h = L.Conv2D(
        4,
        3,
        padding="same",
        dilation_rate=2,
        kernel_regularizer=keras.regularizers.L1L2(1e-4, 1e-4),
        kernel_constraint=keras.constraints.MaxNorm(3.0),
        kernel_initializer=keras.initializers.HeNormal(seed=3),
        name="dilated",
    )(x)
    h = L.GroupNormalization(groups=2, name="gn")(h)
    h = L.ELU(name="elu")(h)
    h = L.SpatialDropout2D(0.2, seed=5, name="sdrop")(h)
    h2 = L.Rescaling(0.5, offset=0.1, name="rescale")(h)
    h = L.Subtract(name="sub")([h, h2])
    h = L.Maximum(name="max")([h, h2])
    h = L.Average(name="avg")([h, h2])
    h = L.Permute((2, 1, 3), name="perm")(h)
    h = L.Activation("swish", name="swish")(h)
    p = L.GlobalMaxPooling2D(name="gmp")(h)
    p = L.Dense(4, activation="gelu", name="fc")(p)
    out = L.Softmax(name="softmax")(p)
    return _randomize(keras.Model(x, out, name="generic"), 4)


# ----------------------------------------------------------------------------- tests


def test_keras_is_keras3_with_legacy_flag():
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert keras.__version__.startswith("3.")
    assert tf.keras.layers.Dense is tf_keras.layers.Dense


def test_module_import_is_cheap():
    code = "import sys, gencompress.bridge; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


@pytest.mark.parametrize("factory", [dcgan_generator, conditional_generator, image_to_image, shared_and_nested, generic_layers])
def test_bridge_matches_keras3(factory, tmp_path):
    k3_model = factory()
    _check_bridge(k3_model, tmp_path, f"{k3_model.name}.keras")


def test_sequential_stays_sequential_and_weights_are_copied(tmp_path):
    k3_model = dcgan_generator()
    tfk_model, _ = _check_bridge(k3_model, tmp_path, "g.keras")
    assert isinstance(tfk_model, tf_keras.Sequential)
    assert tfk_model.get_layer("fc_lrelu").alpha == pytest.approx(0.2)  # negative_slope -> alpha
    k3_bn = k3_model.get_layer("fc_bn").get_weights()
    for got, want in zip(tfk_model.get_layer("fc_bn").get_weights(), k3_bn):
        np.testing.assert_array_equal(got, want)


def test_conditional_model_keeps_int_input(tmp_path):
    tfk_model, _ = _check_bridge(conditional_generator(), tmp_path, "c.keras")
    assert tfk_model.input_names == ["z", "label"]
    assert tfk_model.inputs[1].dtype == tf.int32
    assert tfk_model.get_layer("label_emb").input_dim == 10
    assert tfk_model.get_layer("up_bilinear").interpolation == "bilinear"


def test_in_memory_conversion_and_shared_layer_nodes():
    k3_model = shared_and_nested()
    tfk_model = keras3_to_tf_keras(k3_model)
    assert len(tfk_model.get_layer("shared")._inbound_nodes) == 3
    assert isinstance(tfk_model.get_layer("block"), tf_keras.Sequential)
    assert _own_max_abs_error(k3_model, tfk_model) <= TOLERANCE


def test_is_keras3_file(tmp_path):
    k3_path = tmp_path / "k3.keras"
    dcgan_generator().save(str(k3_path))
    assert is_keras3_file(str(k3_path))

    tfk_model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    tfk_path = tmp_path / "tfk.keras"
    tfk_model.save(str(tfk_path))
    h5_path = tmp_path / "tfk.h5"
    tfk_model.save(str(h5_path))
    assert zipfile.is_zipfile(tfk_path)
    assert not is_keras3_file(str(tfk_path))
    assert not is_keras3_file(str(h5_path))
    assert not is_keras3_file(str(tmp_path / "missing.keras"))
    assert not is_keras3_file(str(tmp_path))

    with pytest.raises(ModelLoadError, match="not Keras 3"):
        load_keras3_file(str(tfk_path))
    with pytest.raises(ModelLoadError, match="not a .keras archive"):
        load_keras3_file(str(h5_path))


def _lambda_model():
    x = keras.Input((4,), name="x")
    h = L.Dense(4, name="fc")(x)
    h = L.Lambda(lambda t: t * 2.0, name="times_two")(h)
    return keras.Model(x, L.Dense(2, name="out")(h), name="with_lambda")


def test_lambda_refused_by_default(tmp_path):
    path = tmp_path / "lam.keras"
    _lambda_model().save(str(path))
    with pytest.raises(UnsupportedModelError, match=r"layer 'times_two' \(Lambda\).*--trust-code"):
        load_keras3_file(str(path))


def test_lambda_refused_even_when_trusted(tmp_path):
    path = tmp_path / "lam.keras"
    _lambda_model().save(str(path))
    with pytest.raises(UnsupportedModelError, match=r"layer 'times_two' \(Lambda\).*cannot be bridged") as info:
        load_keras3_file(str(path), trust_code=True)
    assert "--trust-code" not in str(info.value)
    with pytest.raises(UnsupportedModelError, match=r"'times_two' \(Lambda\)"):
        keras3_to_tf_keras(_lambda_model())


def test_lambda_activation_refused(tmp_path):
    x = keras.Input((4,), name="x")
    model = keras.Model(x, L.Dense(2, activation=lambda t: t + 1.0, name="odd")(x))
    path = tmp_path / "act.keras"
    with pytest.warns(UserWarning):
        model.save(str(path))
    with pytest.raises(UnsupportedModelError, match=r"layer 'odd' \(Dense.*--trust-code"):
        load_keras3_file(str(path))


def test_custom_layer_refused(tmp_path):
    @keras.saving.register_keras_serializable(package="gencompress_test")
    class Doubler(L.Layer):
        def call(self, x):
            return x * 2.0

    x = keras.Input((4,), name="x")
    model = keras.Model(x, Doubler(name="dbl")(x))
    path = tmp_path / "custom.keras"
    model.save(str(path))
    with pytest.raises(UnsupportedModelError, match=r"layer 'dbl' \(Doubler\)"):
        load_keras3_file(str(path))
    with pytest.raises(UnsupportedModelError, match=r"layer 'dbl' \(Doubler\)"):
        keras3_to_tf_keras(model)


def test_custom_loss_in_compile_config_is_ignored(tmp_path):
    def my_loss(y_true, y_pred):  # not registered: only loadable because compile=False
        return keras.ops.mean(keras.ops.abs(y_true - y_pred))

    model = dcgan_generator()
    model.compile(optimizer="adam", loss=my_loss)
    path = tmp_path / "compiled.keras"
    model.save(path)
    tfk_model = load_keras3_file(path)  # a pathlib.Path works too
    assert _own_max_abs_error(model, tfk_model) <= TOLERANCE


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.keras"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelLoadError) as info:
        load_keras3_file(str(path))
    assert "\n" not in str(info.value)
    assert not is_keras3_file(str(path))
    with pytest.raises(ModelLoadError, match="no such file"):
        load_keras3_file(str(tmp_path / "nope.keras"))


def test_truncated_weights(tmp_path):
    path = tmp_path / "g.keras"
    dcgan_generator().save(str(path))
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[: len(data) // 2] if item.filename.endswith(".h5") else data)
    with pytest.raises(ModelLoadError) as info:
        load_keras3_file(str(broken))
    assert "\n" not in str(info.value)


def test_untranslatable_option_names_layer():
    x = keras.Input((4,), name="x")
    model = keras.Model(x, L.LayerNormalization(rms_scaling=True, name="rms_ln")(x))
    with pytest.raises(UnsupportedModelError, match=r"layer 'rms_ln' \(LayerNormalization\).*rms_scaling"):
        keras3_to_tf_keras(model)


def test_activation_that_differs_is_refused():
    x = keras.Input((4,), name="x")
    model = keras.Model(x, L.Dense(3, activation="hard_sigmoid", name="hs")(x))
    with pytest.raises(UnsupportedModelError, match=r"layer 'hs' \(Dense\).*hard_sigmoid"):
        keras3_to_tf_keras(model)


def test_keras3_only_layer_is_refused():
    x = keras.Input((4,), name="x")
    model = keras.Model(x, L.RMSNormalization(name="rms")(x))
    with pytest.raises(UnsupportedModelError, match=r"layer 'rms' \(RMSNormalization\) has no tf-keras equivalent"):
        keras3_to_tf_keras(model)


def test_keras_ops_node_is_refused():
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.ops.add(L.Dense(4, name="fc")(x), 1.0))
    with pytest.raises(UnsupportedModelError, match="keras.ops operation"):
        keras3_to_tf_keras(model)


@pytest.mark.parametrize("sequential", [False, True])
def test_output_mismatch_names_first_bad_layer(monkeypatch, sequential):
    # Let a known-different activation through translation: verification must catch it.
    import gencompress.bridge.translate as translate

    monkeypatch.setattr(translate, "_ACTIVATION_MISMATCH", {})
    layers = [L.Dense(3, name="d1"), L.Activation("hard_sigmoid", name="hs"), L.Dense(2, name="d2")]
    if sequential:
        model = keras.Sequential([keras.Input((4,), name="x")] + layers, name="bad")
    else:
        x = keras.Input((4,), name="x")
        h = x
        for layer in layers:
            h = layer(h)
        model = keras.Model(x, h, name="bad")
    _randomize(model, 5)
    with pytest.raises(UnsupportedModelError, match=r"does not match Keras 3 .*first differing layer: 'hs' \(Activation\)"):
        keras3_to_tf_keras(model)
