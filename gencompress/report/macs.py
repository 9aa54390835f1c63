"""Multiply-accumulates of one batch-1 forward pass of a Keras model, counted from its layers.

A MAC is one multiplication added to a sum: what Dense, convolution, transposed convolution,
depthwise and recurrent layers spend their time on. Elementwise layers (BatchNorm, activations,
additions, upsampling) are not counted: they are a small share of a generator's work and
converters fold many of them. ``layer_macs`` takes the channel counts as arguments so that the
channel pruner can price a model it has not built yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_CONV = {"Conv1D": 1, "Conv2D": 2, "Conv3D": 3}
_TRANSPOSED = {"Conv1DTranspose": 1, "Conv2DTranspose": 2, "Conv3DTranspose": 3}
_DEPTHWISE = {"DepthwiseConv1D": 1, "DepthwiseConv2D": 2}
_SEPARABLE = {"SeparableConv1D": 1, "SeparableConv2D": 2}
_RECURRENT = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}
# Layers that do no multiply-accumulates worth counting (lookups, reshapes, elementwise).
_FREE = {
    "InputLayer", "Embedding", "Reshape", "Flatten", "Concatenate", "Add", "Subtract", "Multiply", "Average",
    "Maximum", "Minimum", "BatchNormalization", "LayerNormalization", "UnitNormalization", "Activation", "ReLU",
    "LeakyReLU", "ELU", "PReLU", "Softmax", "Dropout", "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "TFOpLambda", "SlicingOpLambda", "Lambda", "RepeatVector", "Permute", "GaussianNoise", "SpatialDropout2D",
}


@dataclass
class MacsCount:
    """A model's MACs: ``total``, per layer call (``layers``: name, class, MACs) and the classes
    that do arithmetic this does not count (``uncounted``)."""

    total: int
    layers: list[dict] = field(default_factory=list)
    uncounted: list[str] = field(default_factory=list)


def layer_macs(layer, in_shape, out_shape, in_channels: int | None = None, out_channels: int | None = None) -> int | None:
    """MACs of one call of ``layer`` at batch 1 (shapes without the batch axis), with the input
    and output channel counts replaced by ``in_channels``/``out_channels`` when given; 0 for
    layers that do none worth counting, ``None`` for a class this does not know."""
    cls = type(layer).__name__
    if cls in _FREE:
        return 0
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    cin = in_shape[-1] if in_channels is None else in_channels
    cout = out_shape[-1] if out_channels is None else out_channels
    cfg = layer.get_config()
    if cls == "Dense":
        return int(np.prod(in_shape[:-1], dtype=np.int64)) * cin * cout
    if cls in _CONV:
        return _positions(out_shape) * _kernel(cfg) * (cin // cfg.get("groups", 1)) * cout
    if cls in _TRANSPOSED:  # every input position scatters the kernel into every output channel
        return _positions(in_shape) * _kernel(cfg) * cin * cout
    if cls in _DEPTHWISE:
        return _positions(out_shape) * _kernel(cfg) * cin * cfg.get("depth_multiplier", 1)
    if cls in _SEPARABLE:
        mult = cfg.get("depth_multiplier", 1)
        return _positions(out_shape) * (_kernel(cfg) * cin * mult + cin * mult * cout)
    if cls in _RECURRENT or cls in ("Bidirectional",):
        cell = cfg.get("layer", {}).get("config", cfg) if cls == "Bidirectional" else cfg
        inner = cfg.get("layer", {}).get("class_name", cls) if cls == "Bidirectional" else cls
        units = int(cell.get("units", cout))
        steps = int(in_shape[0]) if len(in_shape) > 1 and in_shape[0] else 1
        macs = steps * _RECURRENT.get(inner, 1) * (cin + units) * units
        return macs * (2 if cls == "Bidirectional" else 1)
    return None


def _positions(shape) -> int:
    return int(np.prod([d or 1 for d in shape[:-1]], dtype=np.int64))


def _kernel(cfg) -> int:
    size = cfg.get("kernel_size", 1)
    return int(np.prod(size if isinstance(size, (list, tuple)) else [size]))


def count_macs(keras_model) -> MacsCount:
    """The MACs of one batch-1 forward pass of tf-keras ``keras_model`` (nested models
    included, every call of a shared layer counted)."""
    from gencompress.model import iter_layers

    rows, uncounted, total = [], set(), 0
    for layer in iter_layers(keras_model):
        for node in layer._inbound_nodes:
            ins, outs = _shapes(node.input_shapes), _shapes(node.output_shapes)
            if not ins or not outs:
                continue
            macs = layer_macs(layer, ins[0][1:], outs[0][1:])
            if macs is None:
                uncounted.add(type(layer).__name__)
                continue
            if macs:
                rows.append({"name": layer.name, "class": type(layer).__name__, "macs": int(macs)})
                total += int(macs)
    return MacsCount(total, rows, sorted(uncounted))


def _shapes(shapes) -> list[tuple]:
    """A node's input or output shapes as a list of tuples (Keras gives one shape or a list)."""
    if shapes is None:
        return []
    if isinstance(shapes, dict):
        shapes = list(shapes.values())
    if isinstance(shapes, (list, tuple)) and shapes and isinstance(shapes[0], (list, tuple)) or (
        isinstance(shapes, list) and shapes and hasattr(shapes[0], "as_list")
    ):
        return [tuple(getattr(s, "as_list", lambda s=s: s)()) for s in shapes]
    return [tuple(getattr(shapes, "as_list", lambda: shapes)())]


def macs_text(n: int | None) -> str:
    """``1.23 G``, ``45.6 M``, ``789 K`` MACs."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(int(n))
