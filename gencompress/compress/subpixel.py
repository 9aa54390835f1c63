"""Transposed convolutions in their sub-pixel form: a Conv2D with stride² times the filters,
then a depth-to-space shuffle. Exact in float; different for the quantizers.

A strided ``Conv2DTranspose`` scatters each input pixel through the kernel; gathered by output
phase (the position of an output pixel modulo the stride) it is ``s²`` ordinary convolutions of
the input with sub-kernels, whose outputs interleave. As one ``Conv2D`` (``s² · filters`` output
channels) followed by ``DepthToSpace`` it becomes ops every runtime and quantizer handles one by
one: TFLite's quantizer ignores node deny-lists for ``TRANSPOSE_CONV`` (it can keep one float
only by keeping every one float) but not for ``CONV_2D``; onnxruntime has no int8
``ConvTranspose`` kernel but has an int8 ``Conv``; and the conv's weights get a scale per
output phase and channel instead of one per tensor. A BatchNormalization right after the
transposed convolution is folded into it (the converters fold it into a ``TRANSPOSE_CONV`` but
cannot through the shuffle: it would stay two int8 ops, each with its own rounding).

For kernel ``k``, stride ``s`` and ``M = ceil(k / s)``: pad the input by ``M - 1`` on each side,
convolve (valid) with ``G[j, r] = W[r + s·(M - 1 - j)]`` (zero where past the kernel), shuffle,
and crop to the transposed convolution's output (its 'same' or 'valid' window). With stride 1
this is the flipped-kernel convolution and no shuffle.
"""

from __future__ import annotations

import math

import numpy as np

from gencompress.model import MODEL_CLASSES
from gencompress.tfenv import import_keras, import_tf

# Largest float difference accepted between a model and its rewrite, relative to its output range
# (float32 sums in another order: 3e-5 measured on a tanh output over logits in the hundreds).
TOLERANCE = 1e-4
_classes: dict = {}


def rewritable(layer) -> str | None:
    """Why ``layer`` (a Conv2DTranspose) cannot be rewritten, or ``None`` when it can."""
    config = layer.get_config()
    strides = tuple(config["strides"])
    if config.get("data_format", "channels_last") != "channels_last":
        return "channels first"
    if tuple(config.get("dilation_rate", (1, 1))) != (1, 1):
        return "dilated"
    if config.get("output_padding") not in (None, [None, None], (None, None)):
        return "output_padding set"
    if strides[0] != strides[1]:
        return f"strides {strides} differ (depth-to-space needs square blocks)"
    if config.get("padding") not in ("same", "valid"):
        return f"padding {config.get('padding')}"
    return None


def subpixel_model(keras_model):
    """A copy of tf-keras ``keras_model`` with every rewritable strided ``Conv2DTranspose`` in its
    sub-pixel form (same names, same outputs to float rounding). Returns ``(model, rows)``: one
    row per Conv2DTranspose, ``{"layer", "rewritten", "reason"}``. ``model`` is ``None`` when no
    layer was rewritten."""
    keras = import_keras()
    rows = []
    if not _conv_transposes(keras_model):
        return None, []
    folded = {conv: bn for conv, bn in _batchnorms_after(keras_model).items() if rewritable(conv) is None}
    folded_bns = {bn.name for bn in folded.values()}

    def clone(layer):
        if type(layer).__name__ in MODEL_CLASSES:
            return keras.models.clone_model(layer, clone_function=clone)
        if type(layer).__name__ == "Conv2DTranspose":
            reason = rewritable(layer)
            rows.append({"layer": layer.name, "rewritten": reason is None, "reason": reason,
                         "folded": folded[layer].name if layer in folded else None})
            if reason is None:
                return _layer_class()["SubpixelConvTranspose"].from_transposed(layer, with_bias=layer in folded)
        if layer.name in folded_bns:  # folded into the convolution before it: an identity keeps its name
            return _layer_class()["FoldedAway"](name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    new = keras.models.clone_model(keras_model, clone_function=clone)
    _copy_weights(keras_model, new, {conv.name: bn for conv, bn in folded.items()})
    return (new if any(r["rewritten"] for r in rows) else None), rows


def _batchnorms_after(keras_model) -> dict:
    """``{conv: bn}`` for each linear Conv2DTranspose whose only consumer is an inference
    BatchNormalization over its channels (nested models included), read from the configs."""
    from gencompress.model import iter_models

    found = {}
    for model in iter_models(keras_model):
        layers = {layer.name: layer for layer in model.layers}
        for conv_name, consumers in _consumers(model).items():
            conv = layers.get(conv_name)
            if type(conv).__name__ != "Conv2DTranspose" or len(consumers) != 1:
                continue
            bn = layers.get(consumers[0])
            if type(bn).__name__ != "BatchNormalization" or conv.get_config().get("activation") != "linear":
                continue
            axis = bn.get_config()["axis"]
            if (list(axis) if isinstance(axis, (list, tuple)) else [axis]) in ([-1], [3]):
                found[conv] = bn
    return found


def _consumers(model) -> dict:
    """Layer name → names of the layers that take its output, from the model's config."""
    config = model.get_config()
    names = [layer["config"]["name"] for layer in config["layers"]]
    if type(model).__name__ == "Sequential":
        return {a: [b] for a, b in zip(names, names[1:])}
    consumers: dict = {}
    for layer in config["layers"]:
        for node in layer.get("inbound_nodes", []):
            for inbound in node if isinstance(node, list) else []:
                consumers.setdefault(inbound[0], []).append(layer["config"]["name"])
    return consumers


def has_conv_transposes(model) -> bool:
    return bool(_conv_transposes(model))


def _conv_transposes(model):
    from gencompress.model import iter_layers

    return [layer for layer in iter_layers(model) if type(layer).__name__ == "Conv2DTranspose"]


def _copy_weights(source, target, folded: dict) -> None:
    """Weights layer by layer (by name, nested models included); rewritten layers convert theirs
    (with the BatchNormalization folded into them, ``folded``: conv name → BN layer)."""
    from gencompress.model import iter_layers

    by_name = {layer.name: layer for layer in iter_layers(source)}
    for layer in iter_layers(target):
        original = by_name[layer.name]
        if hasattr(layer, "set_from_transposed"):
            layer.set_from_transposed(original, folded.get(layer.name))
        elif original.weights and layer.weights:
            layer.set_weights(original.get_weights())


def fold_batchnorm(kernel: np.ndarray, bias: np.ndarray | None, bn) -> tuple[np.ndarray, np.ndarray]:
    """A Conv2DTranspose's (``kh, kw, filters, channels``) weights with inference ``bn`` after it folded in."""
    config = bn.get_config()
    values = dict(zip([w.name.split("/")[-1].split(":")[0] for w in bn.weights], bn.get_weights()))
    filters = kernel.shape[2]
    gamma = values.get("gamma", np.ones(filters, kernel.dtype)) if config.get("scale", True) else np.ones(filters, kernel.dtype)
    beta = values.get("beta", np.zeros(filters, kernel.dtype)) if config.get("center", True) else np.zeros(filters, kernel.dtype)
    scale = gamma / np.sqrt(values["moving_variance"] + config["epsilon"])
    bias = np.zeros(filters, kernel.dtype) if bias is None else bias
    return (kernel * scale[None, None, :, None]).astype(kernel.dtype), ((bias - values["moving_mean"]) * scale + beta).astype(kernel.dtype)


def subpixel_weights(kernel: np.ndarray, bias: np.ndarray | None, stride: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Conv2DTranspose weights (``kh, kw, filters, channels``) as the sub-pixel Conv2D's
    (``M, M, channels, s² · filters``; output channel ``(a·s + b)·filters + f``: depth-to-space order)."""
    kh, kw, f, c = kernel.shape
    s = stride
    mh, mw = math.ceil(kh / s), math.ceil(kw / s)
    padded = np.zeros((mh * s, mw * s, f, c), kernel.dtype)
    padded[:kh, :kw] = kernel
    g = np.zeros((mh, mw, c, s * s * f), kernel.dtype)
    for a in range(s):
        for b in range(s):
            for j in range(mh):
                for i in range(mw):
                    # G[j, i, :, phase (a, b)] = W[a + s·(M-1-j), b + s·(M-1-i)], transposed to (c, f)
                    g[j, i, :, (a * s + b) * f : (a * s + b + 1) * f] = padded[a + s * (mh - 1 - j), b + s * (mw - 1 - i)].T
    return g, None if bias is None else np.tile(bias, s * s)


def _crop(size: int, k: int, s: int, m: int, padding: str) -> tuple[int, int]:
    """(start, length) of the transposed convolution's output inside the full sub-pixel output."""
    full = (size + m - 1) * s
    if padding == "valid":  # what Keras computes: size·s + max(k - s, 0)
        return 0, size * s + max(k - s, 0)
    total = max(k - s, 0)
    start = total // 2
    length = size * s
    assert start + length <= full
    return start, length


def _layer_class() -> dict:
    if _classes:
        return _classes
    keras = import_keras()
    tf = import_tf()

    class SubpixelConvTranspose(keras.layers.Layer):
        """A Conv2DTranspose computed as pad, Conv2D (stride² · filters), depth-to-space, crop."""

        def __init__(self, filters, kernel_size, strides, padding, activation=None, use_bias=True, **kwargs):
            super().__init__(**kwargs)
            self.filters, self.kernel_size, self.strides, self.padding = filters, tuple(kernel_size), tuple(strides), padding
            self.activation = keras.activations.get(activation)
            self.use_bias = use_bias

        @classmethod
        def from_transposed(cls, layer, with_bias: bool = False):
            c = layer.get_config()
            use_bias = c["use_bias"] or with_bias
            return cls(c["filters"], c["kernel_size"], c["strides"], c["padding"], c["activation"], use_bias, name=c["name"], dtype=c.get("dtype"))

        def build(self, input_shape):
            (kh, kw), (sh, sw) = self.kernel_size, self.strides
            self.m = (math.ceil(kh / sh), math.ceil(kw / sw))
            channels = int(input_shape[-1])
            out = sh * sw * self.filters
            self.kernel = self.add_weight(name="kernel", shape=(*self.m, channels, out), initializer="zeros")
            self.bias = self.add_weight(name="bias", shape=(out,), initializer="zeros") if self.use_bias else None
            super().build(input_shape)

        def set_from_transposed(self, layer, batchnorm=None) -> None:
            weights = layer.get_weights()
            kernel, bias = weights[0], weights[1] if len(weights) > 1 else None
            if batchnorm is not None:
                kernel, bias = fold_batchnorm(kernel, bias, batchnorm)
            g, b = subpixel_weights(kernel, bias, self.strides[0])
            self.set_weights([g, b] if self.use_bias else [g])

        def call(self, inputs):
            (mh, mw), (kh, kw), (s, _) = self.m, self.kernel_size, self.strides
            h, w = int(inputs.shape[1]), int(inputs.shape[2])
            x = tf.pad(inputs, [[0, 0], [mh - 1, mh - 1], [mw - 1, mw - 1], [0, 0]])
            x = tf.nn.conv2d(x, self.kernel, 1, "VALID")
            if self.use_bias:
                x = tf.nn.bias_add(x, self.bias)
            x = self.activation(x)
            if s > 1:  # stride 1: the flipped-kernel convolution alone
                x = tf.nn.depth_to_space(x, s)
            top, height = _crop(h, kh, s, mh, self.padding)
            left, width = _crop(w, kw, s, mw, self.padding)
            return x[:, top : top + height, left : left + width, :]

        def get_config(self):
            return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides,
                    "padding": self.padding, "activation": keras.activations.serialize(self.activation), "use_bias": self.use_bias}

    class FoldedAway(keras.layers.Layer):
        """Where a BatchNormalization folded into the convolution before it was: the identity."""

        def call(self, inputs, *args, **kwargs):  # the BN's call arguments (training, mask) are ignored
            return inputs

    _classes["SubpixelConvTranspose"] = SubpixelConvTranspose
    _classes["FoldedAway"] = FoldedAway
    return _classes
