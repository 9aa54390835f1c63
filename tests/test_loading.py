"""Loading the model files people publish: Keras 3 .h5, TF op layers, old Keras 2 configs,
community layers, Lambdas marshalled by an older Python, nested output activations, and one-line
errors for files that cannot load. Every model is tiny, seeded and built here; the real published
generators are checked at the end when ../shared/real_generators is present."""

import base64
import json
import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from gencompress.errors import ModelLoadError, UnsupportedModelError
from gencompress.loading.config_check import iter_layer_configs
from gencompress.model import load_model
from gencompress.tfenv import import_keras, import_tf

tf = import_tf()
keras = import_keras()

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real_generators"


# --------------------------------------------------------------------------- helpers


def rewrite_h5(path, edit, keras_version=None):
    """Edit the model_config attribute of an .h5 file the test wrote (``edit`` changes the dict)."""
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config = edit(config) or config
        f.attrs["model_config"] = json.dumps(config)
        if keras_version:
            f.attrs["keras_version"] = keras_version
            f["model_weights"].attrs["keras_version"] = keras_version


def layer_config(config, name):
    """The saved config dict of the layer called ``name``, wherever it is nested."""
    for layer_name, _, cfg in iter_layer_configs(config):
        if layer_name == name or cfg.get("name") == name:
            return cfg
    raise KeyError(name)


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def one_line(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------- 1. .h5 written by Keras 3


def build_keras3_generator():
    import keras as keras3

    keras3.utils.set_random_seed(0)
    z = keras3.Input((6,), name="z")
    x = keras3.layers.Dense(4 * 4 * 4, name="project")(z)
    x = keras3.layers.BatchNormalization(name="bn")(x)
    x = keras3.layers.LeakyReLU(0.2, name="act")(x)
    x = keras3.layers.Reshape((4, 4, 4), name="reshape")(x)
    out = keras3.layers.Conv2DTranspose(2, 3, 2, padding="same", activation="tanh", name="image")(x)
    model = keras3.Model(z, out, name="k3_generator")
    bn = model.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 1.5, 64), rng.normal(0, 0.1, 64), rng.normal(0, 0.2, 64), rng.uniform(0.5, 2, 64)])
    return model


def test_walker_visits_layers_not_dtype_policies(tmp_path):
    k3 = build_keras3_generator()
    k3.save(tmp_path / "k3.h5")
    with h5py.File(tmp_path / "k3.h5", "r") as f:
        assert f.attrs["keras_version"].startswith("3")
        config = json.loads(f.attrs["model_config"])
    assert '"DTypePolicy"' in json.dumps(config)  # what the old walker took for a custom layer
    names = [name for name, _, _ in iter_layer_configs(config)]
    assert names == ["k3_generator", "z", "project", "bn", "act", "reshape", "image"]


def test_keras3_h5_is_loaded_and_bridged(tmp_path):
    k3 = build_keras3_generator()
    path = tmp_path / "k3.h5"
    k3.save(path)
    before = path.read_bytes()
    model = load_model(path)
    assert model.format == "h5-keras3"
    assert model.output_activation == "tanh"
    assert model.params == k3.count_params()
    x = np.random.default_rng(1).standard_normal((5, 6)).astype("float32")
    assert max_diff(model.predict({"z": x})[0], k3(x)) <= 1e-5
    assert type(model.keras_model).__module__.startswith("tf_keras")
    assert path.read_bytes() == before


def test_keras3_h5_code_is_refused_before_loading(tmp_path):
    import keras as keras3

    z = keras3.Input((4,), name="z")
    out = keras3.layers.Lambda(lambda t: t * 2.0, name="double")(keras3.layers.Dense(4, name="d")(z))
    keras3.Model(z, out).save(tmp_path / "lambda.h5")
    with pytest.raises(UnsupportedModelError, match=r"'double' \(Lambda\).*--trust-code") as info:
        load_model(tmp_path / "lambda.h5")
    one_line(info)
    with pytest.raises(UnsupportedModelError, match="cannot be bridged"):
        load_model(tmp_path / "lambda.h5", trust_code=True)

    class Scale(keras3.layers.Layer):
        def call(self, x):
            return x * 3.0

    keras3.Model(z, Scale(name="scale3")(z)).save(tmp_path / "custom.h5")
    with pytest.raises(UnsupportedModelError, match="'scale3' has custom class Scale"):
        load_model(tmp_path / "custom.h5")


# --------------------------------------------------------------------------- 2. TF op layers

# NodeDefs as TF 2.0-2.3 saved them in TensorFlowOpLayer configs (json_format.MessageToDict).
DEPTH_TO_SPACE_NODE = {
    "name": "DepthToSpace", "op": "DepthToSpace", "input": ["conv/BiasAdd"],
    "attr": {"block_size": {"i": "2"}, "data_format": {"s": "TkhXQw=="}, "T": {"type": "DT_FLOAT"}},
}  # fmt: skip
MUL_NODE = {"name": "Mul", "op": "Mul", "input": ["DepthToSpace", "Mul/y"], "attr": {"T": {"type": "DT_FLOAT"}}}


def build_op_layer_model():
    """Pixel shuffle three ways: a TF 2.3 TensorFlowOpLayer (times a constant 0.5), a TF >= 2.4
    TFOpLambda (tf.nn.depth_to_space) and a SlicingOpLambda; ends in tf.math.tanh."""
    from tf_keras.src.engine.base_layer import TensorFlowOpLayer

    keras.utils.set_random_seed(4)
    img = keras.Input((4, 4, 3), name="img")
    conv = keras.layers.Conv2D(8, 3, padding="same", name="conv")(img)
    a = TensorFlowOpLayer(DEPTH_TO_SPACE_NODE, name="DepthToSpace")(conv)
    a = TensorFlowOpLayer(MUL_NODE, name="Mul", constants={1: np.float32(0.5)})(a)
    b = tf.nn.depth_to_space(conv, 2)
    out = tf.math.tanh(keras.layers.Concatenate(name="cat")([a, b[..., :1]]))
    return keras.Model(img, out, name="op_layers")


def depth_to_space(x, block=2):
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, block, block, c // block**2).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * block, w * block, c // block**2)


@pytest.fixture(scope="module")
def op_layers_h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("ops") / "op_layers.h5"
    model = build_op_layer_model()
    model.save(path)
    x = np.random.default_rng(2).standard_normal((3, 4, 4, 3)).astype("float32")
    conv = keras.Model(model.input, model.get_layer("conv").output)(x).numpy()
    expected = np.tanh(np.concatenate([0.5 * depth_to_space(conv), depth_to_space(conv)[..., :1]], -1))
    return path, x, expected


def test_op_layers_load_by_default_and_compute_the_op(op_layers_h5):
    path, x, expected = op_layers_h5
    with h5py.File(path, "r") as f:
        classes = {cls for _, cls, _ in iter_layer_configs(json.loads(f.attrs["model_config"]))}
    assert {"TensorFlowOpLayer", "TFOpLambda", "SlicingOpLambda"} <= classes
    model = load_model(path)
    assert model.outputs[0].shape == (None, 8, 8, 3)
    assert model.output_activation == "tanh"
    assert max_diff(model.predict({"img": x})[0], expected) <= 1e-5


def test_op_layer_model_converts_to_tflite_and_onnx(op_layers_h5, tmp_path):
    from gencompress.converters.onnx import export_onnx_float
    from gencompress.converters.runners import OnnxRunner
    from gencompress.converters.runners import TFLiteRunner
    from gencompress.converters.tflite import convert_tflite

    path, x, expected = op_layers_h5
    model = load_model(path)
    outputs = [t.name for t in model.outputs]
    (tmp_path / "m.tflite").write_bytes(convert_tflite(model, "float32"))
    (tmp_path / "m.onnx").write_bytes(export_onnx_float(model))
    tflite = TFLiteRunner(str(tmp_path / "m.tflite"), ["img"], outputs)
    onnx = OnnxRunner(str(tmp_path / "m.onnx"), ["img"], outputs)
    for i in range(len(x)):
        assert max_diff(tflite.run({"img": x[i : i + 1]})[0], expected[i : i + 1]) <= 1e-5
    assert max_diff(onnx.run({"img": x})[0], expected) <= 1e-5


def _set_symbol(symbol):
    def edit(config):
        for _, cls, cfg in iter_layer_configs(config):
            if cls == "TFOpLambda":
                cfg["function"] = symbol

    return edit


def _set_op(op):
    def edit(config):
        layer_config(config, "DepthToSpace")["node_def"]["op"] = op

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set_symbol("io.write_file"), r"'tf.nn.depth_to_space(_\d+)?' \(TFOpLambda\) calls tf.io.write_file, which does file I/O"),
        (_set_symbol("io.read_file"), r"calls tf.io.read_file, which does file I/O"),
        (_set_symbol("print"), r"calls tf.print, which prints"),
        (_set_symbol("numpy_function"), r"calls tf.numpy_function, which calls back into Python"),
        (_set_symbol("compat.v1.py_func"), r"calls tf.compat.v1.py_func, which calls back into Python"),
        (_set_symbol("summary.scalar"), r"calls tf.summary.scalar, which is not a tensor operation"),
        (_set_symbol("load_op_library"), r"calls tf.load_op_library, which is not a tensor operation"),
        (_set_symbol("raw_ops.SaveV2"), r"calls tf.raw_ops.SaveV2, which does file I/O"),
        (_set_symbol("os.system"), r"names 'os.system', which is not a TensorFlow function"),
        (_set_op("WriteFile"), r"'tf_op_layer_DepthToSpace' \(TensorFlowOpLayer\) runs TF op 'WriteFile', which does file I/O"),
        (_set_op("PyFunc"), r"runs TF op 'PyFunc', which calls back into Python"),
        (_set_op("EagerPyFunc"), r"runs TF op 'EagerPyFunc', which calls back into Python"),
        (_set_op("PrintV2"), r"runs TF op 'PrintV2', which prints"),
        (_set_op("WriteScalarSummary"), r"runs TF op 'WriteScalarSummary', which writes summaries"),
        (_set_op("RestoreV2"), r"runs TF op 'RestoreV2', which saves or restores checkpoints"),
        (_set_op("StatefulPartitionedCall"), r"runs TF op 'StatefulPartitionedCall', which calls graph functions"),
        (_set_op("NoSuchOp"), r"runs TF op 'NoSuchOp', which this TensorFlow does not have"),
    ],
)
def test_side_effecting_op_layers_are_refused(op_layers_h5, tmp_path, edit, message):
    path = tmp_path / "edited.h5"
    shutil.copy(op_layers_h5[0], path)
    rewrite_h5(path, edit)
    for trust_code in (False, True):
        with pytest.raises(UnsupportedModelError, match=message) as info:
            load_model(path, trust_code=trust_code)
        one_line(info)


# --------------------------------------------------------------------------- 3. Keras 2.1-2.4 configs


def build_old_style_functional():
    """Functional generator around a nested Sequential, with the layers 2018-2020 code used."""
    keras.utils.set_random_seed(6)
    body = keras.Sequential(
        [
            keras.Input((6, 6, 4)),
            keras.layers.Conv2D(4, 3, padding="same", name="b_conv"),
            keras.layers.PReLU(shared_axes=[1, 2], name="b_prelu"),
            keras.layers.UpSampling2D(2, interpolation="bilinear", name="b_up"),
        ],
        name="body",
    )
    img = keras.Input((6, 6, 3), name="img")
    x = keras.layers.ZeroPadding2D(1, name="pad")(img)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    y = keras.layers.Cropping2D(((1, 1), (2, 0)), name="crop")(body(x))
    skip = keras.layers.Cropping2D(((1, 1), (2, 0)), name="skip_crop")(keras.layers.UpSampling2D(2, name="skip_up")(img))
    out = keras.layers.Conv2D(3, 1, activation="tanh", name="image")(keras.layers.Concatenate(name="cat")([y, skip]))
    model = keras.Model(img, out, name="old_style")
    model.get_layer("body").get_layer("b_prelu").set_weights([np.full((1, 1, 4), 0.25, np.float32)])
    return model


def build_old_style_sequential():
    keras.utils.set_random_seed(7)
    return keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(3 * 3 * 4, name="project"),
            keras.layers.Reshape((3, 3, 4), name="reshape"),
            keras.layers.UpSampling2D(2, interpolation="bilinear", name="up"),
            keras.layers.Conv2D(2, 3, padding="same", name="conv"),
            keras.layers.PReLU(name="prelu"),
            keras.layers.ZeroPadding2D(((1, 0), (0, 1)), name="pad"),
            keras.layers.Cropping2D(1, name="crop"),
        ],
        name="seq",
    )


def _inline_input(sequential_config):
    """Drop a Sequential's InputLayer: Keras 2.2-2.4 put batch_input_shape on its first layer."""
    layers = sequential_config["layers"]
    if layers[0]["class_name"] == "InputLayer":
        shape = layers.pop(0)["config"]["batch_input_shape"]
        layers[0]["config"]["batch_input_shape"] = shape
    return layers


def keras24_nested(config):
    config["class_name"] = "Model"  # TF <= 2.3 named functional models "Model"
    _inline_input(layer_config(config, "body"))


def keras21_nested(config):
    config["class_name"] = "Model"
    for entry in config["config"]["layers"]:
        if entry["class_name"] == "Sequential":
            entry["config"] = _inline_input(entry["config"])  # Keras 2.1: a bare list of layers
            for layer in entry["config"][1:]:
                layer["config"].pop("dtype")  # Keras 2.1 wrote a dtype on the first layer only
        elif entry["class_name"] != "InputLayer":
            entry["config"].pop("dtype")


def keras21_sequential(config):
    config["config"] = _inline_input(config["config"])


def keras22_sequential(config):
    _inline_input(config["config"])


@pytest.mark.parametrize(
    "build, edit, version",
    [
        (build_old_style_functional, keras24_nested, "2.4.0"),
        (build_old_style_functional, keras21_nested, "2.1.6"),
        (build_old_style_sequential, keras21_sequential, "2.1.6"),
        (build_old_style_sequential, keras22_sequential, "2.2.4"),
    ],
    ids=["keras2.4-functional+sequential", "keras2.1-functional+bare-list-sequential", "keras2.1-bare-list-sequential", "keras2.2-sequential"],
)
def test_old_keras2_configs_load(tmp_path, build, edit, version):
    original = build()
    path = tmp_path / "old.h5"
    original.save(path)
    rewrite_h5(path, edit, keras_version=version)
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    functional = config["class_name"] != "Sequential"
    assert sum(cls == "InputLayer" for _, cls, _ in iter_layer_configs(config)) == int(functional)  # only "img"
    model = load_model(path)
    assert model.format == "h5"
    shape = original.input_shape[1:]
    x = np.random.default_rng(3).standard_normal((4, *shape)).astype("float32")
    assert max_diff(model.predict({model.input_names[0]: x})[0], original(x)) <= 1e-6
    names = [layer.name for layer in model.keras_model.layers]
    if "body" in [layer.name for layer in original.layers]:
        assert "body" in names  # the nested Sequential keeps its name when its config is a bare list
        assert model.output_activation == "tanh"


# --------------------------------------------------------------------------- 4. community layers
# The reference implementations the built-ins must equal, as the generator code of the time had them.

# keras_contrib's InstanceNormalization (keras_contrib/layers/normalization/instancenormalization.py,
# MIT license). keras_contrib is not on PyPI; its build and call are restated here with tf-keras
# imports, operation for operation.
class ContribInstanceNormalization(keras.layers.Layer):
    def __init__(self, axis=None, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.supports_masking = True
        self.axis = axis
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)

    def build(self, input_shape):
        ndim = len(input_shape)
        if self.axis == 0:
            raise ValueError("Axis cannot be zero")
        if (self.axis is not None) and (ndim == 2):
            raise ValueError("Cannot specify axis for rank 1 tensor")
        self.input_spec = keras.layers.InputSpec(ndim=ndim)
        shape = (1,) if self.axis is None else (input_shape[self.axis],)
        self.gamma = self.add_weight(shape=shape, name="gamma", initializer=self.gamma_initializer,
                                     regularizer=self.gamma_regularizer, constraint=self.gamma_constraint) if self.scale else None  # fmt: skip
        self.beta = self.add_weight(shape=shape, name="beta", initializer=self.beta_initializer,
                                    regularizer=self.beta_regularizer, constraint=self.beta_constraint) if self.center else None  # fmt: skip
        self.built = True

    def call(self, inputs, training=None):
        K = keras.backend
        input_shape = K.int_shape(inputs)
        reduction_axes = list(range(0, len(input_shape)))
        if self.axis is not None:
            del reduction_axes[self.axis]
        del reduction_axes[0]
        mean = K.mean(inputs, reduction_axes, keepdims=True)
        stddev = K.std(inputs, reduction_axes, keepdims=True) + self.epsilon
        normed = (inputs - mean) / stddev
        broadcast_shape = [1] * len(input_shape)
        if self.axis is not None:
            broadcast_shape[self.axis] = input_shape[self.axis]
        if self.scale:
            normed = normed * K.reshape(self.gamma, broadcast_shape)
        if self.center:
            normed = normed + K.reshape(self.beta, broadcast_shape)
        return normed

    def get_config(self):
        config = {
            "axis": self.axis,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": keras.initializers.serialize(self.beta_initializer),
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
            "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": keras.constraints.serialize(self.beta_constraint),
            "gamma_constraint": keras.constraints.serialize(self.gamma_constraint),
        }
        return dict(list(super().get_config().items()) + list(config.items()))


ContribInstanceNormalization.__name__ = "InstanceNormalization"  # the class name its files carry


# tensorflow_addons 0.23.0 (PyPI wheel), tensorflow_addons/layers/normalizations.py.
# Copyright 2019 The TensorFlow Authors. Licensed under the Apache License, Version 2.0.
# Copied without docstrings, @typechecked and type annotations (typeguard and tfa's types module are
# not installed) and without @register_keras_serializable(package="Addons"): the test registers
# it only while saving, so that loading cannot find it.
class GroupNormalization(tf.keras.layers.Layer):

    def __init__(
        self,
        groups=32,
        axis=-1,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.groups = groups
        self.axis = axis
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.beta_initializer = tf.keras.initializers.get(beta_initializer)
        self.gamma_initializer = tf.keras.initializers.get(gamma_initializer)
        self.beta_regularizer = tf.keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = tf.keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = tf.keras.constraints.get(beta_constraint)
        self.gamma_constraint = tf.keras.constraints.get(gamma_constraint)
        self._check_axis()

    def build(self, input_shape):

        self._check_if_input_shape_is_none(input_shape)
        self._set_number_of_groups_for_instance_norm(input_shape)
        self._check_size_of_dimensions(input_shape)
        self._create_input_spec(input_shape)

        self._add_gamma_weight(input_shape)
        self._add_beta_weight(input_shape)
        self.built = True
        super().build(input_shape)

    def call(self, inputs):

        input_shape = tf.keras.backend.int_shape(inputs)
        tensor_input_shape = tf.shape(inputs)

        reshaped_inputs, group_shape = self._reshape_into_groups(
            inputs, input_shape, tensor_input_shape
        )

        normalized_inputs = self._apply_normalization(reshaped_inputs, input_shape)

        is_instance_norm = (input_shape[self.axis] // self.groups) == 1
        if not is_instance_norm:
            outputs = tf.reshape(normalized_inputs, tensor_input_shape)
        else:
            outputs = normalized_inputs

        return outputs

    def get_config(self):
        config = {
            "groups": self.groups,
            "axis": self.axis,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": tf.keras.initializers.serialize(self.beta_initializer),
            "gamma_initializer": tf.keras.initializers.serialize(
                self.gamma_initializer
            ),
            "beta_regularizer": tf.keras.regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": tf.keras.regularizers.serialize(
                self.gamma_regularizer
            ),
            "beta_constraint": tf.keras.constraints.serialize(self.beta_constraint),
            "gamma_constraint": tf.keras.constraints.serialize(self.gamma_constraint),
        }
        base_config = super().get_config()
        return {**base_config, **config}

    def _reshape_into_groups(self, inputs, input_shape, tensor_input_shape):

        group_shape = [tensor_input_shape[i] for i in range(len(input_shape))]
        is_instance_norm = (input_shape[self.axis] // self.groups) == 1
        if not is_instance_norm:
            group_shape[self.axis] = input_shape[self.axis] // self.groups
            group_shape.insert(self.axis, self.groups)
            group_shape = tf.stack(group_shape)
            reshaped_inputs = tf.reshape(inputs, group_shape)
            return reshaped_inputs, group_shape
        else:
            return inputs, group_shape

    def _apply_normalization(self, reshaped_inputs, input_shape):

        group_shape = tf.keras.backend.int_shape(reshaped_inputs)
        group_reduction_axes = list(range(1, len(group_shape)))
        is_instance_norm = (input_shape[self.axis] // self.groups) == 1
        if not is_instance_norm:
            axis = -2 if self.axis == -1 else self.axis - 1
        else:
            axis = -1 if self.axis == -1 else self.axis - 1
        group_reduction_axes.pop(axis)

        mean, variance = tf.nn.moments(
            reshaped_inputs, group_reduction_axes, keepdims=True
        )

        gamma, beta = self._get_reshaped_weights(input_shape)
        normalized_inputs = tf.nn.batch_normalization(
            reshaped_inputs,
            mean=mean,
            variance=variance,
            scale=gamma,
            offset=beta,
            variance_epsilon=self.epsilon,
        )
        return normalized_inputs

    def _get_reshaped_weights(self, input_shape):
        broadcast_shape = self._create_broadcast_shape(input_shape)
        gamma = None
        beta = None
        if self.scale:
            gamma = tf.reshape(self.gamma, broadcast_shape)

        if self.center:
            beta = tf.reshape(self.beta, broadcast_shape)
        return gamma, beta

    def _check_if_input_shape_is_none(self, input_shape):
        dim = input_shape[self.axis]
        if dim is None:
            raise ValueError(
                "Axis " + str(self.axis) + " of "
                "input tensor should have a defined dimension "
                "but the layer received an input with shape " + str(input_shape) + "."
            )

    def _set_number_of_groups_for_instance_norm(self, input_shape):
        dim = input_shape[self.axis]

        if self.groups == -1:
            self.groups = dim

    def _check_size_of_dimensions(self, input_shape):

        dim = input_shape[self.axis]
        if dim < self.groups:
            raise ValueError(
                "Number of groups (" + str(self.groups) + ") cannot be "
                "more than the number of channels (" + str(dim) + ")."
            )

        if dim % self.groups != 0:
            raise ValueError(
                "Number of groups (" + str(self.groups) + ") must be a "
                "multiple of the number of channels (" + str(dim) + ")."
            )

    def _check_axis(self):

        if self.axis == 0:
            raise ValueError(
                "You are trying to normalize your batch axis. Do you want to "
                "use tf.layer.batch_normalization instead"
            )

    def _create_input_spec(self, input_shape):

        dim = input_shape[self.axis]
        self.input_spec = tf.keras.layers.InputSpec(
            ndim=len(input_shape), axes={self.axis: dim}
        )

    def _add_gamma_weight(self, input_shape):

        dim = input_shape[self.axis]
        shape = (dim,)

        if self.scale:
            self.gamma = self.add_weight(
                shape=shape,
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
            )
        else:
            self.gamma = None

    def _add_beta_weight(self, input_shape):

        dim = input_shape[self.axis]
        shape = (dim,)

        if self.center:
            self.beta = self.add_weight(
                shape=shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
            )
        else:
            self.beta = None

    def _create_broadcast_shape(self, input_shape):
        broadcast_shape = [1] * len(input_shape)
        is_instance_norm = (input_shape[self.axis] // self.groups) == 1
        if not is_instance_norm:
            broadcast_shape[self.axis] = input_shape[self.axis] // self.groups
            broadcast_shape.insert(self.axis, self.groups)
        else:
            broadcast_shape[self.axis] = self.groups
        return broadcast_shape


class InstanceNormalization(GroupNormalization):

    def __init__(self, **kwargs):
        if "groups" in kwargs:
            logging.warning("The given value for groups will be overwritten.")

        kwargs["groups"] = -1
        super().__init__(**kwargs)


AddonsInstanceNormalization = InstanceNormalization


# The ReflectionPadding2D copied across Keras CycleGAN / pix2pix repositories (the form of the
# keras.io CycleGAN example): padding is (width, height).
class CommonReflectionPadding2D(keras.layers.Layer):
    def __init__(self, padding=(1, 1), **kwargs):
        self.padding = tuple(padding)
        super().__init__(**kwargs)

    def compute_output_shape(self, s):
        return (s[0], s[1] + 2 * self.padding[1], s[2] + 2 * self.padding[0], s[3])

    def call(self, input_tensor, mask=None):
        padding_width, padding_height = self.padding
        padding_tensor = [[0, 0], [padding_height, padding_height], [padding_width, padding_width], [0, 0]]
        return tf.pad(input_tensor, padding_tensor, mode="REFLECT")

    def get_config(self):
        config = super().get_config()
        config.update({"padding": self.padding})
        return config


# The other common form: ZeroPadding2D's ((top, bottom), (left, right)) padding, reflected.
class ZeroPaddingReflectionPadding2D(keras.layers.ZeroPadding2D):
    def call(self, x):
        (top, bottom), (left, right) = self.padding
        return tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], mode="REFLECT")


CommonReflectionPadding2D.__name__ = ZeroPaddingReflectionPadding2D.__name__ = "ReflectionPadding2D"


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(1.0 if w.name.endswith("gamma:0") else 0.0, 0.3, w.shape).astype("float32") for w in model.weights])


def build_with(norm, pad, seed=8):
    """A tiny CycleGAN-style block: reflection pad, conv, instance norm, relu, conv."""
    keras.utils.set_random_seed(seed)
    img = keras.Input((6, 6, 3), name="img")
    x = pad(keras.layers.Conv2D(4, 1, name="c0")(img))
    x = keras.layers.Conv2D(4, 3, name="c1")(x)
    x = keras.layers.Activation("relu", name="relu")(norm(x))
    out = keras.layers.Conv2D(3, 3, padding="same", activation="tanh", name="image")(x)
    model = keras.Model(img, out, name="community")
    _randomize(model, seed)
    return model


COMMUNITY_CASES = {
    "keras_contrib-axis-None": (lambda: ContribInstanceNormalization(axis=None, name="norm"), lambda: CommonReflectionPadding2D((1, 1), name="rpad")),
    "keras_contrib-axis-3": (lambda: ContribInstanceNormalization(axis=3, epsilon=1e-5, name="norm"), lambda: CommonReflectionPadding2D((2, 2), name="rpad")),
    "tensorflow_addons": (lambda: AddonsInstanceNormalization(axis=-1, epsilon=1e-3, name="norm"), lambda: ZeroPaddingReflectionPadding2D(((1, 2), (0, 3)), name="rpad")),
    "tensorflow_addons-no-center": (lambda: AddonsInstanceNormalization(axis=3, center=False, name="norm"), lambda: ZeroPaddingReflectionPadding2D(1, name="rpad")),
}


def save_with_reference(model, path):
    # tensorflow_addons registers its layers as "Addons>..."; registered only while saving, so
    # the load below cannot find the reference class and must use gencompress' built-in.
    from tf_keras.src.saving import object_registration as registry

    keras.saving.register_keras_serializable(package="Addons")(AddonsInstanceNormalization)
    try:
        model.save(path)
    finally:
        registry._GLOBAL_CUSTOM_OBJECTS.pop("Addons>InstanceNormalization")
        registry._GLOBAL_CUSTOM_NAMES.pop(AddonsInstanceNormalization)


@pytest.mark.parametrize("case", list(COMMUNITY_CASES))
def test_community_layers_equal_their_original(tmp_path, case):
    norm, pad = COMMUNITY_CASES[case]
    reference = build_with(norm(), pad())
    path = tmp_path / "community.h5"
    save_with_reference(reference, path)
    with h5py.File(path, "r") as f:
        classes = [cls for _, cls, _ in iter_layer_configs(json.loads(f.attrs["model_config"]))]
    assert ("Addons>InstanceNormalization" in classes) == case.startswith("tensorflow_addons")
    model = load_model(path)  # by default: no --trust-code, no code from anywhere but gencompress
    for name in ("norm", "rpad"):
        assert type(model.keras_model.get_layer(name)).__module__ == "gencompress.loading.community_layers"
    x = np.random.default_rng(9).standard_normal((4, 6, 6, 3)).astype("float32")
    assert max_diff(model.predict({"img": x})[0], reference(x)) <= 1e-5


@pytest.mark.parametrize(
    "layer, edit, message",
    [
        ("norm", lambda cfg: cfg.update(momentum=0.9), "custom class InstanceNormalization .*unknown config keys momentum"),
        ("norm", lambda cfg: cfg.pop("gamma_constraint"), "custom class InstanceNormalization .*missing gamma_constraint"),
        ("rpad", lambda cfg: cfg.update(padding=[1, 2]), r"custom class ReflectionPadding2D \(padding \[1, 2\] is ambiguous"),
        ("rpad", lambda cfg: cfg.update(mode="SYMMETRIC"), "custom class ReflectionPadding2D .*unknown config keys mode"),
    ],
)
def test_community_lookalikes_stay_custom(tmp_path, layer, edit, message):
    path = tmp_path / "lookalike.h5"
    build_with(ContribInstanceNormalization(name="norm"), CommonReflectionPadding2D(name="rpad")).save(path)
    rewrite_h5(path, lambda config: edit(layer_config(config, layer)) and None)
    with pytest.raises(UnsupportedModelError, match=message + ".*--trust-code --custom-objects"):
        load_model(path)


def test_users_class_wins_over_the_builtin(tmp_path):
    path = tmp_path / "community.h5"
    build_with(ContribInstanceNormalization(name="norm"), CommonReflectionPadding2D(name="rpad")).save(path)
    objects = tmp_path / "objects.py"
    objects.write_text(
        "import tf_keras as keras\n"
        "class InstanceNormalization(keras.layers.Layer):\n"
        "    def __init__(self, axis=None, epsilon=1e-3, center=True, scale=True, **kwargs):\n"
        "        for key in list(kwargs):\n"
        "            if key.endswith(('_initializer', '_regularizer', '_constraint')):\n"
        "                kwargs.pop(key)\n"
        "        super().__init__(**kwargs)\n"
        "    def build(self, input_shape):\n"
        "        self.gamma = self.add_weight(name='gamma', shape=(1,))\n"
        "        self.beta = self.add_weight(name='beta', shape=(1,))\n"
        "    def call(self, x):\n"
        "        return x * 0.0\n"
    )
    model = load_model(path, trust_code=True, custom_objects_file=str(objects))
    assert type(model.keras_model.get_layer("norm")).__module__ == "gencompress_custom_objects"
    assert type(model.keras_model.get_layer("rpad")).__module__ == "gencompress.loading.community_layers"


# --------------------------------------------------------------------------- 5. Lambdas from an older Python


def squash(x):  # the Lambda helper a model's training code defines; see CUSTOM_HELPERS
    return tf.tanh(x) * 0.9


CUSTOM_HELPERS = "import tensorflow as tf\n\ndef squash(x):\n    return tf.tanh(x) * 0.9\n"


def reflect_pad(padding):
    return lambda x: tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]], "REFLECT")


def affine(scale, offset):
    return lambda x: squash(x * scale + offset)


# base64(marshal.dumps(f.__code__)) of reflect_pad(1) and affine(2.0, 0.5) above, made once with
# /root/.pyenv/versions/3.6.15/bin/python and 3.9.18/bin/python from a file holding these two
# functions: print(base64.b64encode(marshal.dumps(reflect_pad(1).__code__)).decode()).
# Python 3.11's marshal reads none of them ("EOF read where object expected").
OLD_PYTHON_DUMPS = {
    "3.6": (
        "4wEAAAAAAAAAAQAAAAcAAAATAAAAcyYAAAB0AGoBfABkAWQBZwKIAIgAZwKIAIgAZwJkAWQBZwJnBGQCgwNTACkDTukAAAAA2gdSRUZM"
        "RUNUKQLaAnRm2gNwYWQpAdoBeKkB2gdwYWRkaW5nqQD6CGdlbjM2LnB52gg8bGFtYmRhPgQAAABzAAAAAA==",
        "4wEAAAAAAAAAAQAAAAMAAAATAAAAcxAAAAB0AHwAiAEUAIgAFwCDAVMAKQFOKQHaBnNxdWFzaCkB2gF4qQLaBm9mZnNldNoFc2NhbGWp"
        "APoIZ2VuMzYucHnaCDxsYW1iZGE+BwAAAHMAAAAA",
    ),
    # 3.9 shares 3.8's code object layout and, for these straight-line lambdas, its opcodes.
    "3.9": (
        "4wEAAAAAAAAAAAAAAAEAAAAIAAAAEwAAAHMmAAAAdACgAXwAZAFkAWcCiACIAGcCiACIAGcCZAFkAWcCZwRkAqEDUwApA07pAAAAANoH"
        "UkVGTEVDVCkC2gJ0ZtoDcGFkqQHaAXipAdoHcGFkZGluZ6kA+hAvdG1wL2x3L2dlbjM2LnB52gg8bGFtYmRhPgQAAADzAAAAAA==",
        "4wEAAAAAAAAAAAAAAAEAAAADAAAAEwAAAHMQAAAAdAB8AIgBFACIABcAgwFTACkBTikB2gZzcXVhc2ipAdoBeKkC2gZvZmZzZXTaBXNj"
        "YWxlqQD6EC90bXAvbHcvZ2VuMzYucHnaCDxsYW1iZGE+BwAAAPMAAAAA",
    ),
}
# Python 3.9, of `lambda x: x if padding is None else tf.pad(...)`: its IS_OP opcode is new in 3.9
# and uncompyle6 decompiles up to 3.8 only, so this one cannot be rebuilt.
PY39_IS_OP_DUMP = (
    "4wEAAAAAAAAAAAAAAAEAAAAIAAAAEwAAAHMyAAAAiABkAHUAcgx8AFMAdACgAXwAZAFkAWcCiACIAGcCiACIAGcCZAFkAWcCZwRkAqED"
    "UwCpA07pAAAAANoHUkVGTEVDVKkC2gJ0ZtoDcGFkqQHaAXipAdoHcGFkZGluZ6kA+hAvdG1wL2x3L2dlbjM5LnB52gg8bGFtYmRhPgMA"
    "AADzAAAAAA=="
)


def build_lambda_model():
    keras.utils.set_random_seed(10)
    img = keras.Input((5, 5, 2), name="img")
    x = keras.layers.Lambda(reflect_pad(1), name="pad")(img)
    x = keras.layers.Conv2D(3, 3, name="conv")(x)
    out = keras.layers.Lambda(affine(2.0, 0.5), name="affine")(x)
    return keras.Model(img, out, name="lambdas")


def old_lambda_file(folder, version):
    """The model saved as a Keras 2.2 under an older Python would have: same functions, its bytecode.
    Returns (path, helpers file, inputs, the original model's outputs)."""
    original = build_lambda_model()
    path = folder / f"py{version}.h5"
    original.save(path)

    def to_old_python(config):
        pad, aff = layer_config(config, "pad"), layer_config(config, "affine")
        assert pad["function"][2] == [1] and aff["function"][2] == [0.5, 2.0]  # closure, in co_freevars order
        pad["function"][0], aff["function"][0] = OLD_PYTHON_DUMPS[version]
        for cfg in (pad, aff):  # Keras 2.2 did not record the function's module (tf-keras adds its globals)
            cfg.pop("module")
            cfg.pop("output_shape_module")

    rewrite_h5(path, to_old_python, keras_version="2.2.4")
    (folder / "helpers.py").write_text(CUSTOM_HELPERS)
    x = np.random.default_rng(11).standard_normal((3, 5, 5, 2)).astype("float32")
    return path, folder / "helpers.py", x, original(x).numpy()


@pytest.fixture(scope="module", params=sorted(OLD_PYTHON_DUMPS))
def old_lambda_h5(request, tmp_path_factory):
    return old_lambda_file(tmp_path_factory.mktemp("lambdas"), request.param)


def unrebuildable_lambda_file(folder):
    path, helpers, _, _ = old_lambda_file(folder, "3.6")
    rewrite_h5(path, lambda config: layer_config(config, "pad")["function"].__setitem__(0, PY39_IS_OP_DUMP))
    return path, helpers


def test_old_python_lambda_refused_without_trust(old_lambda_h5):
    with pytest.raises(UnsupportedModelError, match=r"^layer 'pad' \(Lambda\) runs Python code stored in the model file; pass --trust-code to allow it$"):
        load_model(old_lambda_h5[0])


def test_old_python_lambda_is_rebuilt_with_trust(old_lambda_h5):
    import marshal

    path, helpers, x, expected = old_lambda_h5
    with h5py.File(path, "r") as f:
        dump = layer_config(json.loads(f.attrs["model_config"]), "pad")["function"][0]
    with pytest.raises((ValueError, EOFError)):
        marshal.loads(base64.b64decode(dump))  # what used to stop the load
    before = path.read_bytes()
    model = load_model(path, trust_code=True, custom_objects_file=str(helpers))
    assert max_diff(model.predict({"img": x})[0], expected) <= 1e-6
    assert path.read_bytes() == before


def test_old_lambda_without_the_optional_decompiler(old_lambda_h5, monkeypatch):
    """The decompiler is an optional extra (GPL-3.0): without it, one line says how to get it."""
    import sys

    path, helpers, _, _ = old_lambda_h5
    monkeypatch.setitem(sys.modules, "uncompyle6", None)  # makes `import uncompyle6` raise ImportError
    with pytest.raises(UnsupportedModelError, match=r"pip install 'gencompress\[old-lambdas\]'") as info:
        load_model(path, trust_code=True, custom_objects_file=str(helpers))
    one_line(info)


def test_missing_lambda_helper_is_one_line_error(old_lambda_h5, tmp_path):
    path, _, x, _ = old_lambda_h5
    (tmp_path / "empty.py").write_text("import tensorflow as tf\n")
    with pytest.raises(ModelLoadError, match="name 'squash' is not defined"):
        load_model(path, trust_code=True, custom_objects_file=str(tmp_path / "empty.py")).predict({"img": x})


def test_unrebuildable_lambda_is_one_clear_line(tmp_path):
    path, helpers = unrebuildable_lambda_file(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"^layer 'pad' \(Lambda\): its function was marshalled by another Python and could not be rebuilt") as info:
        load_model(path, trust_code=True, custom_objects_file=str(helpers))
    one_line(info)


# --------------------------------------------------------------------------- 6. output activation


def _nested_sigmoid():
    keras.utils.set_random_seed(12)
    head = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2DTranspose(1, 3, 2, padding="same", activation="sigmoid")], name="head")
    body = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32), keras.layers.Reshape((4, 4, 2)), head], name="body")
    z = keras.Input((8,), name="z")
    return keras.Model(z, body(keras.layers.Dense(8)(z)))


def _final_activation_layer():
    z = keras.Input((8,), name="z")
    return keras.Model(z, keras.layers.Activation("tanh", name="out")(keras.layers.Dense(4)(z)))


def _two_outputs_nested():
    z = keras.Input((8,), name="z")
    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, [keras.layers.Dense(2, activation="relu")(inner_in), keras.layers.Dense(2, activation="tanh")(inner_in)], name="inner")
    a, b = inner(z)
    return keras.Model(z, [keras.layers.Activation("tanh")(a), b])


@pytest.mark.parametrize(
    "build, expected",
    [(_nested_sigmoid, "sigmoid"), (_final_activation_layer, "tanh"), (_two_outputs_nested, "tanh")],
    ids=["sigmoid-inside-nested-sequentials", "final-Activation-layer", "each-output-through-a-nested-model"],
)
def test_output_activation_found_inside_nested_models(tmp_path, build, expected):
    path = tmp_path / "act.h5"
    build().save(path)
    model = load_model(path)
    assert model.output_activation == expected
    assert model.known_output_range() == {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}[expected]


# --------------------------------------------------------------------------- 7. files that cannot load


def _two_models(k):
    small = k.Sequential([k.Input((4,), name="z"), k.layers.Dense(5, name="d")], name="m")
    big = k.Sequential([k.Input((4,), name="z"), k.layers.Dense(5, name="d"), k.layers.Dense(3, name="e")], name="m")
    wide = k.Sequential([k.Input((4,), name="z"), k.layers.Dense(7, name="d")], name="m")
    return small, big, wide


def _swap_archive_config(config_from, weights_from, out):
    with zipfile.ZipFile(weights_from) as zw, zipfile.ZipFile(config_from) as zc, zipfile.ZipFile(out, "w") as zo:
        for name in zw.namelist():
            zo.writestr(name, zc.read(name) if name == "config.json" else zw.read(name))


@pytest.mark.parametrize("writer", ["tf_keras", "keras3"])
@pytest.mark.parametrize(
    "config_of, weights_of, message",
    [
        ("big", "small", "Layer 'e' expected 2 variables, but received 0"),
        ("wide", "small", "[Ss]hape"),
        ("small", "big", "its weights file holds 4 arrays but its config builds a model with 2"),
    ],
    ids=["config-has-more-layers", "other-shapes", "weights-have-more-layers"],
)
def test_keras_archive_whose_weights_do_not_match(tmp_path, writer, config_of, weights_of, message):
    import keras as keras3

    models = dict(zip(("small", "big", "wide"), _two_models(keras if writer == "tf_keras" else keras3)))
    for name, model in models.items():
        model.save(tmp_path / f"{name}.keras")
    path = tmp_path / "mixed.keras"
    _swap_archive_config(tmp_path / f"{config_of}.keras", tmp_path / f"{weights_of}.keras", path)
    with pytest.raises(ModelLoadError, match=f"{path}.*{message}") as info:
        load_model(path)
    one_line(info)


@pytest.mark.parametrize(
    "config_of, weights_of, message",
    [("big", "small", "Layer count mismatch"), ("wide", "small", "Shape mismatch"), ("small", "big", "Layer count mismatch")],
)
def test_h5_whose_weights_do_not_match(tmp_path, config_of, weights_of, message):
    models = dict(zip(("small", "big", "wide"), _two_models(keras)))
    for name, model in models.items():
        model.save(tmp_path / f"{name}.h5")
    path = tmp_path / "mixed.h5"
    shutil.copy(tmp_path / f"{weights_of}.h5", path)
    with h5py.File(tmp_path / f"{config_of}.h5", "r") as f:
        rewrite_h5(path, lambda _: json.loads(f.attrs["model_config"]))
    with pytest.raises(ModelLoadError, match=f"cannot load {path}: .*{message}") as info:
        load_model(path)
    one_line(info)


def test_truncated_keras3_h5(tmp_path):
    build_keras3_generator().save(tmp_path / "k3.h5")
    data = (tmp_path / "k3.h5").read_bytes()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=f"cannot read {path} as HDF5") as info:
        load_model(path)
    one_line(info)


def test_cli_gives_one_line_and_exit_2(tmp_path):
    bad, _ = unrebuildable_lambda_file(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "gencompress", "inspect", str(bad), "--trust-code", "--no-int8-check", "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Unknown type" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("gencompress: error:")]
    assert len(lines) == 1 and "layer 'pad' (Lambda)" in lines[0], result.stderr


# --------------------------------------------------------------------------- the published generators


@pytest.mark.skipif(not (REAL / "dfst_cyclegan_generator.h5").is_file(), reason=f"real generators not present at {REAL}")
def test_dfst_needs_only_trust_code(tmp_path):
    """Its Python 3.6 Lambdas call tf.pad: tf is already among tf-keras' Lambda globals."""
    path = REAL / "dfst_cyclegan_generator.h5"
    with pytest.raises(UnsupportedModelError, match=r"\(Lambda\).*--trust-code"):
        load_model(path)
    model = load_model(path, trust_code=True)
    assert model.outputs[0].shape == (None, 48, 48, 3)
    assert model.output_activation == "tanh"
    norms = [layer for layer in model.keras_model.layers if layer.name.startswith("instance_normalization")]
    assert len(norms) == 6 and {type(layer).__module__ for layer in norms} == {"gencompress.loading.community_layers"}
    x = np.random.default_rng(0).uniform(-1, 1, (2, 48, 48, 3)).astype("float32")
    y = model.predict({model.input_names[0]: x})[0]
    assert np.all(np.isfinite(y)) and np.abs(y).max() <= 1.0 and y.std() > 0.05


def test_fully_convolutional_model_gets_its_input_shape_from_the_user(keras, tmp_path):
    """(None, None, 3) inputs: refused in one line naming --input-shape; with it, the model is
    rebuilt on that size (same layers and weights) and runs end to end; the recipe records it."""
    from click.testing import CliRunner

    from gencompress.cli import cli
    from gencompress.model import load_model

    x = keras.Input((None, None, 3), name="image")
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    y = keras.layers.MaxPooling2D(2, name="pool")(y)
    y = keras.layers.UpSampling2D(2, name="up")(y)
    model = keras.Model(x, keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid", name="c2")(y))
    path = tmp_path / "fcn.keras"
    model.save(path)
    with pytest.raises(UnsupportedModelError, match="--input-shape 256,256,3"):
        load_model(path)
    fixed = load_model(path, input_shape=(16, 24, 3))
    assert fixed.inputs[0].shape == (None, 16, 24, 3) and fixed.outputs[0].shape == (None, 16, 24, 3)
    xs = np.random.default_rng(0).uniform(0, 1, (2, 16, 24, 3)).astype("float32")
    assert np.allclose(fixed.keras_model.predict(xs, verbose=0), model.predict(xs, verbose=0), atol=1e-6)
    for bad, words in (((16, 24), "give 3 dimensions"), ((16, 24, 4), "only its unknown dimensions")):
        with pytest.raises(Exception, match=words):
            load_model(path, input_shape=bad)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", str(path), "--input-shape", "16,24,3", "-o", str(out), "--eval-samples", "2",
                                      "--latency-runs", "1", "--save-recipe", str(tmp_path / "r.toml")])
    assert result.exit_code == 0, result.output
    assert "input_shape = [\n    16,\n    24,\n    3,\n]" in (tmp_path / "r.toml").read_text() or "input_shape = [16, 24, 3]" in (tmp_path / "r.toml").read_text()
    bad = CliRunner().invoke(cli, ["export", str(path), "--input-shape", "16,x,3", "-o", str(out)])
    assert bad.exit_code == 2 and "give dimensions such as 256,256,3" in bad.output


def test_keras_archive_from_tf_keras_2_14_loads_its_weights(keras, tmp_path):
    """tf.keras 2.13-2.15 wrote a .keras archive's weights under each layer's generic name
    (_layer_checkpoint_dependencies/conv2d/vars/0) instead of its config name ('Conv1'):
    tf-keras 2.21 found nothing ("Layer 'Conv1' expected 2 variables, but received 0") and a
    published document-cleaning autoencoder would not load. Built here by rewriting the
    weights file of a saved archive into that layout."""
    import zipfile

    import h5py

    from gencompress.model import load_model

    x = keras.Input((8, 8, 3), name="image_input")
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="Conv1")(x)
    y = keras.layers.MaxPooling2D(2, name="pool1")(y)
    y = keras.layers.Conv2D(4, 3, padding="same", name="Conv2")(y)
    model = keras.Model(x, keras.layers.UpSampling2D(2, name="up")(y))
    saved = tmp_path / "new.keras"
    model.save(saved)
    old_weights = tmp_path / "old.weights.h5"
    with h5py.File(old_weights, "w") as f:
        for generic, layer in (("conv2d", "Conv1"), ("conv2d_1", "Conv2")):
            for i, w in enumerate(model.get_layer(layer).get_weights()):
                f.create_dataset(f"_layer_checkpoint_dependencies/{generic}/vars/{i}", data=w)
        for generic in ("input_layer", "max_pooling2d", "up_sampling2d"):
            f.create_group(f"_layer_checkpoint_dependencies/{generic}/vars")
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(old, "w") as dst:
        for name in ("config.json", "metadata.json"):
            dst.writestr(name, src.read(name))
        dst.write(old_weights, "model.weights.h5")
    loaded = load_model(old)
    xs = np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype("float32")
    assert np.allclose(loaded.keras_model.predict(xs, verbose=0), model.predict(xs, verbose=0), atol=1e-6)
