"""Built-in versions of layers that generator code copies from keras_contrib, tensorflow_addons
and tutorials: ``InstanceNormalization`` (both kinds) and ``ReflectionPadding2D``.

A model file names these classes but holds no code for them, so loading one used to need the
user's own copy through ``--trust-code --custom-objects``. gencompress computes them itself, the
way the originals do (tested output-equal against their source). A built-in is used only when the
saved config has exactly the original's keys: another layer that happens to share the name is
still refused as custom.
"""

from __future__ import annotations

from gencompress.tfenv import import_keras, import_tf

# Keys every layer config may carry, whatever the class.
_BASE_KEYS = {"name", "trainable", "dtype", "batch_input_shape", "batch_size"}
_NORM_KEYS = {
    "axis", "epsilon", "center", "scale",
    "beta_initializer", "gamma_initializer",
    "beta_regularizer", "gamma_regularizer",
    "beta_constraint", "gamma_constraint",
}  # fmt: skip
CONTRIB_IN_KEYS = frozenset(_NORM_KEYS)
ADDONS_IN_KEYS = frozenset(_NORM_KEYS | {"groups"})
INSTANCE_NORM_NAMES = ("InstanceNormalization", "Addons>InstanceNormalization")
REFLECTION_PAD_NAMES = ("ReflectionPadding2D", "ReflectionPad2D")

_classes: dict = {}


def community_match(cls: str, cfg: dict):
    """``(built-in class, None)`` when ``cls`` with this config is a layer gencompress provides;
    ``(None, why)`` when the name matches but the config does not; ``(None, None)`` otherwise."""
    if cls not in INSTANCE_NORM_NAMES and cls not in REFLECTION_PAD_NAMES:
        return None, None
    keys = set(cfg) - _BASE_KEYS
    if cls in INSTANCE_NORM_NAMES:
        if keys == CONTRIB_IN_KEYS:
            return _layer_classes()["contrib"], None
        if keys == ADDONS_IN_KEYS:
            return _layer_classes()["addons"], None
        return None, _key_mismatch(keys, CONTRIB_IN_KEYS if "groups" not in keys else ADDONS_IN_KEYS)
    if not keys <= {"padding", "data_format"} or "padding" not in keys:
        return None, _key_mismatch(keys, {"padding"})
    if cfg.get("data_format") not in (None, "channels_last"):
        return None, f"data_format {cfg['data_format']!r} is not supported"
    try:
        _pad_amounts(cfg["padding"])
    except ValueError as exc:
        return None, str(exc)
    return _layer_classes()["reflection"], None


def _key_mismatch(keys: set, expected) -> str:
    extra, missing = sorted(keys - set(expected)), sorted(set(expected) - keys)
    parts = ([f"unknown config keys {', '.join(extra)}"] if extra else []) + (
        [f"missing {', '.join(missing)}"] if missing else []
    )
    return "not the layer gencompress provides: " + "; ".join(parts)


def community_objects() -> dict:
    """Names a saved config may use for these layers -> a class whose ``from_config`` builds the
    matching built-in (InstanceNormalization's two origins share a name; their keys differ)."""
    classes = _layer_classes()
    return {**{n: classes["dispatch"] for n in INSTANCE_NORM_NAMES}, **{n: classes["reflection"] for n in REFLECTION_PAD_NAMES}}


def _pad_amounts(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) from ``p``, ``(p, p)`` or ``((t, b), (l, r))``."""
    if isinstance(padding, int) and not isinstance(padding, bool):
        return (padding, padding), (padding, padding)
    if isinstance(padding, (list, tuple)) and len(padding) == 2:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in padding):
            if padding[0] != padding[1]:
                # Copies of this layer disagree on which of the two pads the height.
                raise ValueError(f"padding {list(padding)} is ambiguous (the copies of this layer disagree which is the height)")
            return (padding[0], padding[0]), (padding[0], padding[0])
        if all(isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, int) for v in p) for p in padding):
            return (padding[0][0], padding[0][1]), (padding[1][0], padding[1][1])
    raise ValueError(f"padding {padding!r} is not p, (p, p) or ((top, bottom), (left, right))")


def _layer_classes() -> dict:
    # Built on first use: defining tf-keras layers imports TensorFlow.
    if _classes:
        return _classes
    keras = import_keras()
    tf = import_tf()
    contrib, addons = _instance_normalizations(_normalization_base(keras), tf)
    # Saved under the original class name (what a model derived from a loaded one writes); the
    # config keys tell the two InstanceNormalizations apart again on the next load.
    contrib.__name__ = addons.__name__ = "InstanceNormalization"
    _classes.update(
        contrib=contrib,
        addons=addons,
        dispatch=_normalization_by_config(keras),
        reflection=_reflection_padding(keras, tf),
    )
    return _classes


def _normalization_base(keras):
    class _Normalization(keras.layers.Layer):
        """Shared by both InstanceNormalizations: same arguments, gamma then beta (as saved)."""

        def __init__(self, axis=None, epsilon=1e-3, center=True, scale=True, **kwargs):
            # Initializers, regularizers and constraints do not change inference and the weights
            # come from the file; they are kept as saved for get_config.
            self._saved = {k: kwargs.pop(k, None) for k in sorted(_NORM_KEYS - {"axis", "epsilon", "center", "scale"})}
            kwargs.pop("groups", None)  # tensorflow_addons overwrites it with -1 (one group per channel)
            super().__init__(**kwargs)
            self.supports_masking = True
            self.axis, self.epsilon, self.center, self.scale = axis, epsilon, center, scale

        def _weight_shape(self, input_shape):
            return (int(input_shape[self.axis]),)

        def build(self, input_shape):
            shape = self._weight_shape(input_shape)
            self.gamma = self.add_weight(name="gamma", shape=shape, initializer="ones") if self.scale else None
            self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros") if self.center else None
            super().build(input_shape)

        def _broadcast(self, ndim, size):
            shape = [1] * ndim
            if self.axis is not None:
                shape[self.axis] = size
            return shape

        def get_config(self):
            config = {"axis": self.axis, "epsilon": self.epsilon, "center": self.center, "scale": self.scale}
            return {**super().get_config(), **config, **self._saved}

        def compute_output_shape(self, input_shape):
            return input_shape

    return _Normalization


def _instance_normalizations(_Normalization, tf):
    class ContribInstanceNormalization(_Normalization):
        """keras_contrib's: (x - mean) / (std + epsilon) over every axis but the batch and
        ``axis``; ``axis=None`` normalizes each sample as a whole, with one gamma and beta."""

        def _weight_shape(self, input_shape):
            return (1,) if self.axis is None else super()._weight_shape(input_shape)

        def call(self, inputs):
            ndim = inputs.shape.rank
            axes = [i for i in range(1, ndim) if self.axis is None or i != self.axis % ndim]
            mean = tf.reduce_mean(inputs, axes, keepdims=True)
            stddev = tf.math.reduce_std(inputs, axes, keepdims=True) + self.epsilon
            normed = (inputs - mean) / stddev
            size = None if self.axis is None else inputs.shape[self.axis]
            if self.scale:
                normed = normed * tf.reshape(self.gamma, self._broadcast(ndim, size))
            if self.center:
                normed = normed + tf.reshape(self.beta, self._broadcast(ndim, size))
            return normed

    class AddonsInstanceNormalization(_Normalization):
        """tensorflow_addons': GroupNormalization with one group per channel, i.e.
        batch_normalization(x, moments over all axes but batch and ``axis``, gamma, beta, epsilon)."""

        def __init__(self, axis=-1, **kwargs):
            super().__init__(axis=axis, **kwargs)

        def call(self, inputs):
            ndim = inputs.shape.rank
            axes = [i for i in range(1, ndim) if i != self.axis % ndim]
            mean, variance = tf.nn.moments(inputs, axes, keepdims=True)
            shape = self._broadcast(ndim, inputs.shape[self.axis])
            gamma = tf.reshape(self.gamma, shape) if self.scale else None
            beta = tf.reshape(self.beta, shape) if self.center else None
            return tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, self.epsilon)

        def get_config(self):
            return {**super().get_config(), "groups": -1}

    return ContribInstanceNormalization, AddonsInstanceNormalization


def _normalization_by_config(keras):
    class InstanceNormalizationByConfig(keras.layers.Layer):
        """Only a name for deserialization: builds whichever InstanceNormalization the keys say."""

        @classmethod
        def from_config(cls, config):
            builtin, why = community_match("InstanceNormalization", config)
            if builtin is None:
                raise ValueError(f"InstanceNormalization config is {why}")
            return builtin.from_config(config)

    return InstanceNormalizationByConfig


def _reflection_padding(keras, tf):
    class ReflectionPadding2D(keras.layers.Layer):
        """tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], "REFLECT") on NHWC input."""

        def __init__(self, padding=(1, 1), data_format=None, **kwargs):
            super().__init__(**kwargs)
            self.padding = padding
            self.data_format = data_format
            self._amounts = _pad_amounts(padding)

        def call(self, inputs):
            (top, bottom), (left, right) = self._amounts
            return tf.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]], mode="REFLECT")

        def compute_output_shape(self, input_shape):
            (top, bottom), (left, right) = self._amounts
            n, h, w, c = input_shape
            return (n, None if h is None else h + top + bottom, None if w is None else w + left + right, c)

        def get_config(self):
            config = {"padding": self.padding}
            if self.data_format is not None:
                config["data_format"] = self.data_format
            return {**super().get_config(), **config}

    return ReflectionPadding2D

