"""The physical pruned model: the same architecture with fewer filters/units, its weights the
kept slices of the original's (or of a re-fitted probe's).

Which axis of which weight follows which channels, per layer class (tf-keras layouts): Dense
``kernel [in, out]``; convolutions ``kernel [..., in, out]``; transposed convolutions
``kernel [..., out, in]``; separable convolutions ``depthwise_kernel [..., in, m]`` and
``pointwise_kernel [..., in·m, out]``; depthwise ``depthwise_kernel [..., C, 1]``; ``Embedding``
``embeddings [ids, out]``; biases follow the output; BatchNorm, LayerNorm and PReLU weights
follow their channel axis (the last one).
"""

from __future__ import annotations

import numpy as np

from gencompress.compress.channels.graph import ChannelGraph
from gencompress.compress.channels.probe import build_functional, functional_config
from gencompress.errors import UnsupportedModelError

_TRANSPOSED = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
_SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}
_DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}


def weight_axes(layer, weight_name: str, shape: tuple, channels: int) -> dict:
    """``{axis: ("in" | "out", repeat)}`` for one weight of ``layer``: the axes that follow its
    input or output channels (``repeat``: each channel spans that many consecutive entries);
    ``channels`` is the layer's input channel count (for channel-preserving layers)."""
    cls = type(layer).__name__
    rank = len(shape)
    if weight_name == "bias":
        return {0: ("in", 1)} if cls in _DEPTHWISE else {0: ("out", 1)}
    if cls == "Dense" and weight_name == "kernel":
        return {0: ("in", 1), 1: ("out", 1)}
    if cls in _TRANSPOSED and weight_name == "kernel":
        return {rank - 2: ("out", 1), rank - 1: ("in", 1)}
    if weight_name == "kernel":  # convolutions
        return {rank - 2: ("in", 1), rank - 1: ("out", 1)}
    if weight_name == "depthwise_kernel":
        return {rank - 2: ("in", 1)}
    if weight_name == "pointwise_kernel":
        return {rank - 2: ("in", layer.get_config().get("depth_multiplier", 1)), rank - 1: ("out", 1)}
    if cls == "Embedding":
        return {1: ("out", 1)}
    if rank and shape[-1] == channels:  # BatchNorm, LayerNorm, PReLU: the channel axis
        return {rank - 1: ("in", 1)}
    return {}


def weight_name(weight) -> str:
    return weight.name.split("/")[-1].split(":")[0]


def repeat_indices(kept: np.ndarray, repeat: int) -> np.ndarray:
    return (kept[:, None] * repeat + np.arange(repeat)[None, :]).reshape(-1) if repeat > 1 else kept


def slice_weights(layer, values: list[np.ndarray], kin: np.ndarray | None, kout: np.ndarray | None, channels: int) -> list[np.ndarray]:
    """``values`` (``layer``'s weights, in order) cut to the kept input and output channels."""
    out = []
    for w, v in zip(layer.weights, values):
        for axis, (side, repeat) in weight_axes(layer, weight_name(w), v.shape, channels).items():
            kept = kin if side == "in" else kout
            if kept is not None:
                v = np.take(v, repeat_indices(kept, repeat), axis=axis)
        out.append(v)
    return out


def layer_io(graph: ChannelGraph, kept: dict) -> dict:
    """Per layer name: ``(input kept, output kept, input channels)`` of its first call."""
    io = {}
    for node in graph.nodes:
        if node.layer.name in io or node.cls == "InputLayer":
            continue
        kin = graph.tensor_kept(kept, node.inputs[0]) if len(node.inputs) == 1 else None
        kout = graph.tensor_kept(kept, node.outputs[0]) if len(node.outputs) == 1 else None
        channels = node.inputs[0].shape[-1] if node.inputs else None
        io[node.layer.name] = (kin, kout, channels)
    return io


def sliced_model(keras_model, graph: ChannelGraph, selection: dict, weights_from=None):
    """A plain functional model: ``keras_model`` (the model ``graph`` was built on) with only
    the channels ``selection`` keeps ({free root: kept indices}), weights sliced from
    ``weights_from`` (a model with the same layer names and shapes, e.g. a re-fitted probe;
    default ``keras_model``)."""
    kept = graph.kept(selection)
    new = {root: (graph.size_of[root] if idx is None else len(idx)) for root, idx in kept.items()}
    changes, _ = graph.changes(keras_model, new)
    config = functional_config(keras_model)
    for entry in config["layers"]:
        entry["config"].update(changes.get(entry["config"].get("name", entry.get("name")), {}))
    pruned = build_functional(keras_model, config)
    source = weights_from if weights_from is not None else keras_model
    io = layer_io(graph, kept)
    for layer in pruned.layers:
        if not layer.weights:
            continue
        original = keras_model.get_layer(layer.name)
        kin, kout, channels = io.get(layer.name, (None, None, None))
        values = slice_weights(original, source.get_layer(layer.name).get_weights(), kin, kout, channels)
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            raise UnsupportedModelError(
                f"layer '{layer.name}' ({type(layer).__name__}): its weights cannot be cut to the kept channels "
                f"({[v.shape for v in values]} for {[tuple(w.shape) for w in layer.weights]})"
            )
        layer.set_weights(values)
    return pruned
