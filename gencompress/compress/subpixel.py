"""Transposed convolutions in their sub-pixel form: a Conv2D with stride² times the filters,
then a depth-to-space shuffle. Exact in float; different for the quantizers.

A strided ``Conv2DTranspose`` scatters each input pixel through the kernel; gathered by output
phase (the position of an output pixel modulo the stride) it is ``s²`` ordinary convolutions of
the input with sub-kernels, whose outputs interleave. As one ``Conv2D`` (``s² · filters`` output
channels) followed by a depth-to-space shuffle it becomes ops every runtime and quantizer handles
one by one: TFLite's quantizer ignores node deny-lists for ``TRANSPOSE_CONV`` (it can keep one
float only by keeping every one float) but not for ``CONV_2D``; onnxruntime has no int8
``ConvTranspose`` kernel but has an int8 ``Conv``; LiteRT's int8 ``TRANSPOSE_CONV`` is not
delegated to XNNPACK; and the conv's weights get a scale per output phase and channel instead
of one per channel.

The form is built of standard Keras layers (``ZeroPadding2D`` → ``Conv2D`` → activation →
``tf.nn.depth_to_space`` → ``Cropping2D``), so tfmot can train it quantization-aware too. The
model is BatchNorm-folded first (``compress.batchnorm``), and an elementwise activation layer
right after a transposed convolution (ReLU, LeakyReLU, ``Activation``) moves before the shuffle:
it commutes with the shuffle and the crop, and there the converter fuses it into the ``CONV_2D``
as it does into a ``TRANSPOSE_CONV``. Left after the crop, the convolution's signed output was
rounded to int8 before the ReLU threw its negative half away: a DCGAN with six ConvTranspose →
BN → ReLU blocks lost 4 dB in sub-pixel form (28.8 against 32.8 dB in plain form).

For kernel ``k``, stride ``s`` and ``M = ceil(k / s)``: pad the input by ``M - 1`` on each side,
convolve (valid) with ``G[j, r] = W[r + s·(M - 1 - j)]`` (zero where past the kernel), shuffle,
and crop to the transposed convolution's output (its 'same' or 'valid' window). With stride 1
this is the flipped-kernel convolution and no shuffle.
"""

from __future__ import annotations

import math

import numpy as np

from gencompress.tfenv import import_keras, import_tf

# Largest float difference accepted between a model and its rewrite, relative to its output range
# (float32 sums in another order: 3e-5 measured on a tanh output over logits in the hundreds,
# 2.4e-4 on a 30-BatchNorm super-resolution network folded; a wrong rewrite differs by tenths).
TOLERANCE = 1e-3
# Elementwise activation layers that commute with depth-to-space and cropping.
POST_ACTIVATIONS = ("ReLU", "LeakyReLU", "Activation", "ELU")


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
    if None in tuple(layer.input_shape[1:3]):
        return "input of unknown height or width"
    return None


def subpixel_model(keras_model):
    """A functional copy of tf-keras ``keras_model`` (nested Sequentials inlined, BatchNorm folded)
    with every rewritable ``Conv2DTranspose`` in its sub-pixel form, the convolution keeping the
    layer's name. Returns ``(model, rows)``: one row per Conv2DTranspose, ``{"layer",
    "rewritten", "reason", "folded", "activation"}`` (the BatchNorm folded into it, the
    activation layer moved before its shuffle). ``model`` is ``None`` when no layer was rewritten."""
    from gencompress.compress.batchnorm import fold_batchnorm
    from gencompress.model import flat_copy

    if not _conv_transposes(keras_model):
        return None, []
    folded, bn_rows = fold_batchnorm(flat_copy(keras_model))
    into = {r["into"]: r["batchnorm"] for r in bn_rows if r["folded"]}
    new, rows = _Rebuild(folded, into).model()
    keep_output_names(new, keras_model)
    return (new if any(r["rewritten"] for r in rows) else None), rows


def keep_output_names(new, original) -> None:
    """Name ``new``'s outputs as ``original``'s: both converters name a model's outputs (the
    TFLite signature's keys, the ONNX graph outputs) after ``output_names``, and a rewrite that
    ends in another layer (a crop, a folded BatchNorm's predecessor) must not rename what a
    user's code reads."""
    if len(new.output_names) == len(original.output_names):
        new.output_names = list(original.output_names)


def _graph(model) -> tuple[list, list, list]:
    """``(inputs, nodes, outputs)`` of a flat model: ``inputs`` as ``(key, name, tensor)``, each node as
    ``(layer, input keys, kwargs, output keys)`` in call order, ``outputs`` as keys."""
    keras = import_keras()
    if isinstance(model, keras.Sequential):
        layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
        nodes = [(layer, [(i - 1, 0)], {}, [(i, 0)]) for i, layer in enumerate(layers)]
        return [((-1, 0), model.input_names[0], model.inputs[0])], nodes, [(len(layers) - 1, 0)]
    config = model.get_config()
    inputs = [((name, 0, 0), name, model.get_layer(name).output) for name, _, _ in config["input_layers"]]
    nodes = []
    for entry in config["layers"]:
        layer = model.get_layer(entry["name"])
        if type(layer).__name__ == "InputLayer":
            continue
        for node_index, node in enumerate(entry["inbound_nodes"]):
            kwargs = node[0][3] if len(node[0]) > 3 and isinstance(node[0][3], dict) else {}
            outs = len(layer.output) if isinstance(layer.output, (list, tuple)) and len(entry["inbound_nodes"]) == 1 else 1
            nodes.append((layer, [(n[0], n[1], n[2]) for n in node], kwargs, [(entry["name"], node_index, i) for i in range(outs)]))
    return inputs, nodes, [(n, i, j) for n, i, j in config["output_layers"]]


class _Rebuild:
    """The flat model's graph called again on fresh inputs, transposed convolutions rewritten."""

    def __init__(self, model, folded_into: dict):
        self.source, self.folded_into = model, folded_into
        self.names = {layer.name for layer in model.layers}
        self.rows: list[dict] = []

    def model(self):
        keras = import_keras()
        inputs, nodes, outputs = _graph(self.source)
        consumers: dict = {}
        for node in nodes:
            for key in node[1]:
                consumers.setdefault(key, []).append(node)
        calls: dict = {}
        for node in nodes:
            calls[node[0].name] = calls.get(node[0].name, 0) + 1
        tensors = {key: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=name) for key, name, t in inputs}
        fresh = [tensors[key] for key, _, _ in inputs]
        absorbed, copies = set(), {}
        for layer, ins, kwargs, outs in nodes:
            if id(layer) in absorbed:
                tensors[outs[0]] = tensors[ins[0]]  # moved before the shuffle: already applied
                continue
            x = [tensors[k] for k in ins]
            x = x[0] if len(x) == 1 else x
            if type(layer).__name__ == "Conv2DTranspose":
                reason = rewritable(layer) or ("called more than once" if calls[layer.name] > 1 else None)
                after = consumers.get(outs[0], [])
                act = after[0][0] if len(after) == 1 and _post_activation(after[0][0], layer) and calls[after[0][0].name] == 1 else None
                self.rows.append({"layer": layer.name, "rewritten": reason is None, "reason": reason,
                                  "folded": self.folded_into.get(layer.name), "activation": act.name if act and not reason else None})
                if reason is None:
                    if act is not None:
                        absorbed.add(id(act))
                    tensors[outs[0]] = self._subpixel(layer, x, act)
                    continue
            if layer.name not in copies:
                copies[layer.name] = type(layer).from_config(layer.get_config())
                y = copies[layer.name](x, **kwargs)
                copies[layer.name].set_weights(layer.get_weights())
            else:
                y = copies[layer.name](x, **kwargs)
            for key, t in zip(outs, y if isinstance(y, (list, tuple)) else [y]):
                tensors[key] = t
        out = [tensors[k] for k in outputs]
        new = keras.Model(fresh if len(fresh) > 1 else fresh[0], out if len(out) > 1 else out[0], name=self.source.name)
        return new, self.rows

    def _name(self, base: str) -> str:
        name = base
        while name in self.names:
            name += "_"
        self.names.add(name)
        return name

    def _subpixel(self, conv, x, act):
        """``conv`` (a Conv2DTranspose) applied to ``x`` in sub-pixel form, ``act`` before the shuffle."""
        keras, tf = import_keras(), import_tf()
        c = conv.get_config()
        (kh, kw), s, filters = tuple(c["kernel_size"]), int(c["strides"][0]), c["filters"]
        mh, mw = math.ceil(kh / s), math.ceil(kw / s)
        h, w = int(x.shape[1]), int(x.shape[2])
        x = keras.layers.ZeroPadding2D(((mh - 1, mh - 1), (mw - 1, mw - 1)), name=self._name(f"{conv.name}_pad"))(x)
        layer = keras.layers.Conv2D(
            s * s * filters, (mh, mw), padding="valid", activation=c["activation"], use_bias=c["use_bias"], name=conv.name,
            dtype=c.get("dtype"),
        )
        y = layer(x)
        weights = conv.get_weights()
        g, b = subpixel_weights(weights[0], weights[1] if c["use_bias"] else None, s)
        layer.set_weights([g, b] if c["use_bias"] else [g])
        if act is not None:
            y = type(act).from_config(act.get_config())(y)
        if s > 1:  # stride 1: the flipped-kernel convolution alone
            y = tf.nn.depth_to_space(y, s)
            # Keras names the op's layer from a process-wide counter (tf.nn.depth_to_space_3 in
            # the third form built): the artifact's node names, and its bytes, then depended on
            # what ran before in the process. A name of its own keeps them the same.
            y._keras_history.layer._name = self._name(f"{conv.name}_shuffle")
        (top, height), (left, width) = _crop(h, kh, s, mh, c["padding"]), _crop(w, kw, s, mw, c["padding"])
        full_h, full_w = (h + mh - 1) * s, (w + mw - 1) * s
        crop = ((top, full_h - top - height), (left, full_w - left - width))
        return keras.layers.Cropping2D(crop, name=self._name(f"{conv.name}_crop"))(y)


def _post_activation(layer, conv) -> bool:
    """``layer`` is an elementwise activation layer that can move before ``conv``'s shuffle."""
    if type(layer).__name__ not in POST_ACTIVATIONS or conv.get_config().get("activation") != "linear":
        return False
    name = layer.get_config().get("activation", "")
    return not (isinstance(name, str) and "softmax" in name)  # softmax is not elementwise


def has_conv_transposes(model) -> bool:
    return bool(_conv_transposes(model))


def _conv_transposes(model):
    from gencompress.model import iter_layers

    return [layer for layer in iter_layers(model) if type(layer).__name__ == "Conv2DTranspose"]


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
