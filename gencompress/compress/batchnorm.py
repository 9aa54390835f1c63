"""BatchNorm folding: BN merged into the Dense/Conv/ConvTranspose before it, output-equal in float.

Every int8 form is built from the folded model (post-training variants, the sub-pixel form, QAT):
a BatchNorm left apart is two more int8 ops (MUL, ADD), each rounding its output again, and the
converters do not fold it everywhere: onnxruntime's quantizer leaves a BatchNormalization node
after an activation, and tfmot folds BatchNorm only after Conv2D and DepthwiseConv2D. After Dense
tfmot fake-quantizes the Dense kernel *before* the BatchNorm scale, so the converter, which folds
the BatchNorm into the kernel, finds weights off the int8 grid and leaves the whole
FULLY_CONNECTED in float; after Conv2DTranspose it refuses the model.
"""

from __future__ import annotations

import numpy as np

from gencompress.model import MODEL_CLASSES, iter_layers
from gencompress.tfenv import import_keras


# Output-channel axis of the kernel of each layer a BatchNorm can be folded into.
# Conv*Transpose kernels are (..., out, in); DepthwiseConv2D's (h, w, in, multiplier) is handled
# apart (its output channel c is input channel c // multiplier).
_FOLD_AXIS = {
    "Dense": -1,
    "Conv1D": -1,
    "Conv2D": -1,
    "Conv3D": -1,
    "Conv1DTranspose": -2,
    "Conv2DTranspose": -2,
    "Conv3DTranspose": -2,
    "DepthwiseConv2D": "depthwise",
}


# Largest float difference accepted between a model and its BatchNorm-folded copy, relative to
# the output range: folding reorders a multiply-add, nothing more. Float32 rounding grows with
# depth: a 16→256 super-resolution network of 30 BatchNorms differed by 2.4e-4 folded (1e-5
# refused it and its QAT rescue, exit 4); a fold that is wrong differs by tenths.
FOLD_TOLERANCE = 1e-3


def fold_batchnorm(keras_model):
    """Fold each BatchNormalization into the Dense/Conv/ConvTranspose layer feeding it.

    Returns ``(new_model, rows)``: a new tf-keras model (the input is not modified) without the
    folded BatchNorm layers, and one row per BatchNorm: ``{"batchnorm", "into", "folded",
    "reason"}``. A BatchNorm is folded when its input comes straight from one of those layers,
    with a linear activation, used once and read by nothing else, and it normalizes that layer's
    channel axis; the layer's kernel is scaled by ``gamma / sqrt(var + eps)`` per output channel
    and its bias becomes ``(bias - mean) * scale + beta`` (a bias is added if it had none).
    """
    keras = import_keras()
    config = keras_model.get_config()
    is_sequential = isinstance(keras_model, keras.Sequential)
    layers = {layer.name: layer for layer in keras_model.layers}
    entries = config["layers"]
    plan, rows = [], []
    for i, entry in enumerate(entries):
        if entry["class_name"] not in ("BatchNormalization", "SyncBatchNormalization"):
            continue
        name = entry["config"]["name"]
        if is_sequential:
            prev = entries[i - 1]["config"]["name"] if i > 0 and entries[i - 1]["class_name"] != "InputLayer" else None
            reason = _fold_refusal(layers.get(prev), layers[name], consumers=1, uses=1) if prev else "no layer before it"
        else:
            prev, reason = _functional_predecessor(config, entry)
            if reason is None:
                reason = _fold_refusal(
                    layers[prev], layers[name], consumers=_count_refs(config, prev), uses=len(_by_name(config, prev)["inbound_nodes"])
                )
        if reason is None:
            plan.append((name, prev))
        rows.append({"batchnorm": name, "into": prev if reason is None else None, "folded": reason is None, "reason": reason})
    # Nested models keep their BatchNorm layers (tfmot refuses nested models anyway).
    for layer in keras_model.layers:
        if type(layer).__name__ in MODEL_CLASSES:
            for inner in iter_layers(layer):
                if type(inner).__name__ in ("BatchNormalization", "SyncBatchNormalization"):
                    rows.append({"batchnorm": inner.name, "into": None, "folded": False, "reason": f"inside nested model '{layer.name}'"})
    if not plan:
        clone = keras.models.clone_model(keras_model)
        clone.set_weights(keras_model.get_weights())
        return clone, rows

    removed = {bn for bn, _ in plan}
    into = {prev: bn for bn, prev in plan}
    if is_sequential:
        config["layers"] = [e for e in entries if e["config"]["name"] not in removed]
    else:
        redirect = {bn: _by_name(config, bn)["inbound_nodes"][0][0][:3] for bn in removed}
        config["layers"] = [e for e in entries if e["config"]["name"] not in removed]
        for e in config["layers"]:
            e["inbound_nodes"] = _redirect(e["inbound_nodes"], redirect)
        config["output_layers"] = _redirect(config["output_layers"], redirect)
    for e in config["layers"]:
        if e["config"]["name"] in into:
            e["config"]["use_bias"] = True
    custom = {type(layer).__name__: type(layer) for layer in iter_layers(keras_model)}
    with keras.utils.custom_object_scope(custom):
        folded = (keras.Sequential if is_sequential else keras.Model).from_config(config)
    for layer in folded.layers:
        if layer.name in into:
            layer.set_weights(_folded_weights(layers[layer.name], layers[into[layer.name]]))
        else:
            layer.set_weights(layers[layer.name].get_weights())
    return folded, rows


def _fold_refusal(prev, bn, consumers: int, uses: int) -> str | None:
    """Why BatchNorm ``bn`` cannot be folded into layer ``prev`` (``None``: it can)."""
    cls = type(prev).__name__
    if cls not in _FOLD_AXIS:
        return f"follows a {cls} layer (folding needs Dense, Conv or ConvTranspose before it)"
    activation = getattr(getattr(prev, "activation", None), "__name__", "linear")
    if activation != "linear":
        return f"'{prev.name}' applies {activation} before the BatchNorm"
    if uses != 1:
        return f"'{prev.name}' is called more than once (shared weights)"
    if consumers != 1:
        return f"the output of '{prev.name}' is also read by other layers"
    if getattr(bn, "renorm", False) or getattr(bn, "virtual_batch_size", None):
        return "batch renormalization / virtual batches cannot be folded"
    rank = len(prev.output_shape)
    axes = [a % rank for a in (bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis])]
    channels_first = getattr(prev, "data_format", "channels_last") == "channels_first"
    channel_axis = 1 if channels_first else rank - 1
    if axes != [channel_axis]:
        return f"normalizes axis {axes}, not the channel axis ({channel_axis}) of '{prev.name}'"
    return None


def _folded_weights(prev, bn) -> list[np.ndarray]:
    weights = prev.get_weights()
    kernel = weights[0].astype(np.float64)
    bias = weights[1].astype(np.float64) if prev.use_bias else 0.0
    mean = bn.moving_mean.numpy().astype(np.float64)
    var = bn.moving_variance.numpy().astype(np.float64)
    gamma = bn.gamma.numpy().astype(np.float64) if bn.gamma is not None else np.ones_like(mean)
    beta = bn.beta.numpy().astype(np.float64) if bn.beta is not None else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.epsilon)
    axis = _FOLD_AXIS[type(prev).__name__]
    if axis == "depthwise":
        kernel = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        shape = [1] * kernel.ndim
        shape[axis] = -1
        kernel = kernel * scale.reshape(shape)
    new_bias = (bias - mean) * scale + beta
    return [kernel.astype(np.float32), new_bias.astype(np.float32)] + [w for w in weights[2 if prev.use_bias else 1 :]]


def _by_name(config, name):
    return next(e for e in config["layers"] if e["config"]["name"] == name)


def _functional_predecessor(config, entry) -> tuple[str | None, str | None]:
    nodes = entry["inbound_nodes"]
    if len(nodes) != 1:
        return None, "the BatchNorm layer is called more than once"
    refs = nodes[0]
    if len(refs) != 1 or not isinstance(refs[0], list) or len(refs[0]) < 3 or refs[0][1] != 0 or refs[0][2] != 0:
        return None, "its input is not the single output of one layer"
    return refs[0][0], None


def _count_refs(config, name) -> int:
    count = 0

    def walk(x):
        nonlocal count
        if isinstance(x, list):
            if len(x) >= 3 and x[0] == name and isinstance(x[1], int) and isinstance(x[2], int):
                count += 1
                return
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    for e in config["layers"]:
        walk(e["inbound_nodes"])
    walk(config["output_layers"])
    return count


def _redirect(x, redirect: dict):
    """Replace every ``[layer, node, tensor, ...]`` reference to a removed layer by its input's."""
    if isinstance(x, list):
        if len(x) >= 3 and isinstance(x[0], str) and x[0] in redirect and isinstance(x[1], int) and isinstance(x[2], int):
            return list(redirect[x[0]]) + x[3:]
        return [_redirect(v, redirect) for v in x]
    if isinstance(x, dict):
        return {k: _redirect(v, redirect) for k, v in x.items()}
    return x
