"""Cross-layer equalization: per-channel ranges moved between a layer's output and the next
layer's weights, exact in float, so that per-tensor int8 activations lose less.

Both converters quantize weights per output channel but activations per tensor: one channel
whose activations span ten times the others' takes the whole int8 range of its tensor, and the
other channels are left a few levels (a VAE-GAN decoder whose BatchNorm scaled one channel by
ten: 25 dB in int8 whatever else was kept float). A layer ``L1`` whose output channel ``c`` is
divided by ``s_c``, followed by an activation that commutes with a positive scale (ReLU,
LeakyReLU, PReLU, linear) and ops that keep channels apart (padding, cropping, upsampling,
pooling), and a layer ``L2`` whose weights for input channel ``c`` are multiplied by ``s_c``,
compute the same function. As in data-free quantization (Nagel et al., 2019), ``s_c =
sqrt(a_c / w_c)`` with ``a_c`` the channel's activation range on the calibration set and ``w_c``
the range of ``L2``'s weights for that channel: both become ``sqrt(a_c · w_c)``, the
activation ranges closer together and the weights no further apart than that.
"""

from __future__ import annotations

import numpy as np

from gencompress.tfenv import import_keras

# Output channels of these layers can be scaled (kernel's last axis, or ConvTranspose's third).
_SCALE_OUT = {"Dense": -1, "Conv1D": -1, "Conv2D": -1, "Conv1DTranspose": -2, "Conv2DTranspose": -2}
# Input channels of these layers can take the scale (kernel axis of the input channels).
_SCALE_IN = {"Dense": -2, "Conv1D": -2, "Conv2D": -2, "Conv1DTranspose": -1, "Conv2DTranspose": -1}
# Layers between them that commute with a positive per-channel scale and keep channels apart.
_CHANNELWISE = {"ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D",
                "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "Dropout", "SpatialDropout2D"}
_HOMOGENEOUS_ACTIVATIONS = {"linear", "relu", "leaky_relu"}
# Scales are kept within this factor of 1: a dead channel (range 0) or a vanishing weight would
# otherwise push the other side's range to the limits of float32.
MAX_SCALE = 1e3


def _positively_homogeneous(layer) -> bool:
    """``f(s·x) = s·f(x)`` for every ``s > 0``: the activation lets a channel scale through."""
    cls = type(layer).__name__
    config = layer.get_config()
    if cls == "ReLU":
        return config.get("max_value") is None and not config.get("threshold")
    if cls in ("LeakyReLU", "PReLU"):
        return True
    if cls == "Activation":
        return config.get("activation") in _HOMOGENEOUS_ACTIVATIONS
    return cls in _CHANNELWISE


def _activation_ok(layer) -> bool:
    activation = layer.get_config().get("activation", "linear")
    return activation in _HOMOGENEOUS_ACTIVATIONS


def pairs(keras_model) -> list[tuple]:
    """``(L1, tensor, L2)`` for each chain ``L1 → [activation, channel-wise ops] → L2`` in a flat
    functional model, each link the only consumer of the one before; ``tensor``: the output of
    the chain's last layer before ``L2`` (what int8 quantizes)."""
    from gencompress.compress.subpixel import _graph

    _, nodes, outputs = _graph(keras_model)
    consumers: dict = {}
    for node in nodes:
        for key in node[1]:
            consumers.setdefault(key, []).append(node)
    calls: dict = {}
    for node in nodes:
        calls[node[0].name] = calls.get(node[0].name, 0) + 1
    found = []
    for layer, _, _, outs in nodes:
        if type(layer).__name__ not in _SCALE_OUT or calls[layer.name] > 1 or not _activation_ok(layer):
            continue
        key, last = outs[0], layer
        while True:
            after = consumers.get(key, [])
            if len(after) != 1 or key in outputs or calls[after[0][0].name] > 1:
                break
            nxt = after[0][0]
            if type(nxt).__name__ in _SCALE_IN:
                if _channels(layer) == _in_channels(nxt):
                    found.append((layer, last, nxt))
                break
            if not _positively_homogeneous(nxt):
                break
            key, last = after[0][3][0], nxt
    return found


def _channels(layer) -> int:
    return int(layer.get_weights()[0].shape[_SCALE_OUT[type(layer).__name__]])


def _in_channels(layer) -> int:
    return int(layer.get_weights()[0].shape[_SCALE_IN[type(layer).__name__]])


def equalize(keras_model, calibration_arrays: dict, samples: int = 64):
    """A copy of flat tf-keras ``keras_model`` with every chain of ``pairs`` equalized. Returns
    ``(model, rows)``: one row per pair ``{"from", "to", "spread_before", "spread_after"}``
    (largest over median channel range of the quantized tensor), or ``(None, [])`` when there is
    no pair."""
    keras = import_keras()
    found = pairs(keras_model)
    if not found:
        return None, []
    probe = keras.Model(keras_model.inputs, [last.output for _, last, _ in found])
    x = [np.asarray(calibration_arrays[n][:samples]) for n in keras_model.input_names]
    ys = probe.predict(x if len(x) > 1 else x[0], batch_size=16, verbose=0)
    ys = ys if isinstance(ys, list) else [ys]
    new = keras.models.clone_model(keras_model)
    new.set_weights(keras_model.get_weights())
    keep_names = list(keras_model.output_names)
    rows = []
    for (l1, _, l2), y in zip(found, ys):
        a = np.max(np.abs(y.reshape(-1, y.shape[-1])), axis=0).astype(np.float64)
        w2 = new.get_layer(l2.name).get_weights()
        axis = _SCALE_IN[type(l2).__name__] % w2[0].ndim
        w = np.max(np.abs(np.moveaxis(w2[0], axis, -1).reshape(-1, w2[0].shape[axis])), axis=0).astype(np.float64)
        s = np.where((a > 0) & (w > 0), np.sqrt(a / np.maximum(w, 1e-30)), 1.0)
        s = np.clip(s / np.exp(np.mean(np.log(s))), 1 / MAX_SCALE, MAX_SCALE)  # geometric mean 1: ranges stay put on average
        _scale_out(new.get_layer(l1.name), 1.0 / s)
        shape = [1] * w2[0].ndim
        shape[axis] = -1
        w2[0] = (w2[0] * s.reshape(shape)).astype(w2[0].dtype)
        new.get_layer(l2.name).set_weights(w2)
        spread = lambda r: float(np.max(r) / max(np.median(r), 1e-30))  # noqa: E731
        rows.append({"from": l1.name, "to": l2.name, "spread_before": round(spread(a), 2), "spread_after": round(spread(a / s), 2)})
    if len(new.output_names) == len(keep_names):
        new.output_names = keep_names
    return new, rows


def _scale_out(layer, factor: np.ndarray) -> None:
    weights = layer.get_weights()
    axis = _SCALE_OUT[type(layer).__name__] % weights[0].ndim
    shape = [1] * weights[0].ndim
    shape[axis] = -1
    weights[0] = (weights[0] * factor.reshape(shape)).astype(weights[0].dtype)
    if len(weights) > 1 and getattr(layer, "use_bias", False):
        weights[1] = (weights[1] * factor).astype(weights[1].dtype)
    layer.set_weights(weights)
