"""The model with a channel mask on every exit of every prunable group.

Removing a channel from a group is the same as zeroing it wherever it leaves the group (the
inputs of the Dense/Conv layers and Concatenates that read it): producers, BatchNorms and
activations inside the group may go on computing it, nothing uses it. So one *probe* model
answers every question the pruner asks without building a model per question: its extra inputs
are one mask per group (batch × channels, ones for the teacher), multiplied into each exit.

- zero some mask entries: the outputs of the model with those channels removed;
- differentiate the outputs by the masks: each channel's first-order effect on them, per sample
  (the Taylor importance);
- set the weights of a layer that reads pruned channels: the model after a re-fit.

Built by editing the model's config (public Keras API: ``get_config``/``from_config``): a mask
input per group, a ``Reshape`` (and an ``UpSampling1D`` where an exit reads a flat tensor tied to
the group) to broadcast it, a ``Multiply`` before each exit.
"""

from __future__ import annotations

import copy

import numpy as np

from gencompress.compress.channels.graph import ChannelGraph, Group, graph_nodes
from gencompress.errors import UnsupportedModelError
from gencompress.tfenv import import_keras, import_tf

MASK_PREFIX = "gc_mask"


def functional_config(keras_model) -> dict:
    """``keras_model``'s config as a functional model's (a Sequential is read as one)."""
    keras = import_keras()
    if isinstance(keras_model, keras.Sequential):
        keras_model = keras.Model(keras_model.inputs, keras_model.outputs, name=keras_model.name)
    return copy.deepcopy(keras_model.get_config())


def custom_objects(keras_model) -> dict:
    """Every layer class of ``keras_model`` by name: rebuilding from a config needs no registry."""
    return {type(layer).__name__: type(layer) for layer in keras_model.layers}


def build_functional(keras_model, config: dict):
    """A functional model from ``config`` (layers of ``keras_model``'s classes), or
    ``UnsupportedModelError`` naming why Keras refused it."""
    keras = import_keras()
    for entry in config["layers"]:
        entry.pop("build_config", None)  # the original's input shapes: each layer builds on its first call instead
    try:
        return keras.Model.from_config(config, custom_objects=custom_objects(keras_model))
    except (ValueError, TypeError, KeyError) as exc:
        raise UnsupportedModelError(f"cannot rebuild this architecture with fewer channels: {str(exc).splitlines()[0][:300]}") from None


def copy_weights(source, target, skip=()) -> None:
    """``source``'s weights into ``target``'s layers of the same names."""
    names = {layer.name for layer in target.layers}
    for layer in source.layers:
        if layer.weights and layer.name in names and layer.name not in skip:
            target.get_layer(layer.name).set_weights(layer.get_weights())


class Probe:
    """``keras_model`` with mask inputs for ``groups`` (of ``graph``, built on the same model).

    ``model`` takes the original inputs then one mask per group (``mask_names``, batch ×
    channels); ``outputs(feeds, masks)`` runs it; ``taps(names)`` reads the inputs of layers.
    """

    def __init__(self, keras_model, graph: ChannelGraph, groups: list[Group]):
        keras = import_keras()
        self.source, self.graph, self.groups = keras_model, graph, groups
        self.index = {g.root: i for i, g in enumerate(groups)}
        self.mask_names = [f"{MASK_PREFIX}_{i}" for i in range(len(groups))]
        config = functional_config(keras_model)
        self._add_masks(config)
        self.model = build_functional(keras_model, config)
        copy_weights(keras_model, self.model)
        self.input_names = list(keras_model.input_names)
        self._forward = None
        self._keras = keras

    def _add_masks(self, config: dict) -> None:
        layers = {entry["name"]: entry for entry in config["layers"]}
        order = _node_ordinals(self.source)
        shapes = {(n.layer.name, n.index): [tuple(t.shape) for t in n.inputs] for n in graph_nodes(self.source)}
        added, broadcast = [], {}
        for i, name in enumerate(self.mask_names):
            c = self.groups[i].channels
            added.append(_layer("InputLayer", name, {"batch_input_shape": [None, c], "dtype": "float32", "sparse": False, "ragged": False}, []))
        for k, (layer, call, j, root, factor) in enumerate(self.graph.exits()):
            if root not in self.index:
                continue
            gi = self.index[root]
            rank = len(shapes[(layer, call)][j])
            key = (gi, factor, rank)
            if key not in broadcast:
                broadcast[key] = self._broadcast(added, gi, factor, rank)
            node = layers[layer]["inbound_nodes"][order[(layer, call)]]
            entry = node[j]
            mul = f"{MASK_PREFIX}_mul_{k}"
            added.append(_layer("Multiply", mul, {}, [[list(entry[:3]) + [{}], [broadcast[key], 0, 0, {}]]]))
            node[j] = [mul, 0, 0] + list(entry[3:])
        config["layers"] = added[: len(self.mask_names)] + config["layers"] + added[len(self.mask_names):]
        config["input_layers"] = list(config["input_layers"]) + [[n, 0, 0] for n in self.mask_names]

    def _broadcast(self, added: list, gi: int, factor: int, rank: int) -> str:
        """Layers that turn mask ``gi`` (batch × C) into a tensor that multiplies an exit of
        ``rank`` reading ``factor`` positions of the group's channels (index pos × C + c)."""
        c, name, src = self.groups[gi].channels, f"{MASK_PREFIX}_{gi}_x{factor}_r{rank}", self.mask_names[gi]
        if factor > 1:
            added.append(_layer("Reshape", name + "_row", {"target_shape": [1, c]}, [[[src, 0, 0, {}]]]))
            added.append(_layer("UpSampling1D", name + "_tile", {"size": factor}, [[[name + "_row", 0, 0, {}]]]))
            src = name + "_tile"
        added.append(_layer("Reshape", name, {"target_shape": [1] * (rank - 2) + [factor * c]}, [[[src, 0, 0, {}]]]))
        return name

    # ------------------------------------------------------------------ running it

    def masks(self, selection: dict | None, batch: int) -> list[np.ndarray]:
        """Mask inputs for ``batch`` samples: ones, zeros where ``selection`` ({root: kept
        indices}) leaves a channel out."""
        out = []
        for g in self.groups:
            m = np.ones((batch, g.channels), np.float32)
            if selection is not None and g.root in selection:
                keep = np.zeros(g.channels, bool)
                keep[np.asarray(selection[g.root], dtype=np.int64)] = True
                m[:, ~keep] = 0.0
            out.append(m)
        return out

    def outputs(self, feeds: dict, selection: dict | None = None, batch: int = 16) -> list[np.ndarray]:
        """The probe's outputs on ``feeds`` (arrays by input name) with ``selection`` removed."""
        tf = import_tf()
        if self._forward is None:
            self._forward = tf.function(lambda xs: self.model(xs, training=False))
        n = len(next(iter(feeds.values())))
        chunks = []
        for s in range(0, n, batch):
            xs = [feeds[k][s : s + batch] for k in self.input_names]
            xs += self.masks(selection, len(xs[0]))
            y = self._forward([tf.constant(x) for x in xs])
            chunks.append([np.asarray(v) for v in (y if isinstance(y, (list, tuple)) else [y])])
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]

    def taps(self, layer_names: list[str]):
        """A model from the probe's inputs to the (masked) inputs of ``layer_names``'s first calls."""
        outs = [self.model.get_layer(n).get_input_at(0) for n in layer_names]
        return self._keras.Model(self.model.inputs, outs)

    def mask_gradients(self, feeds: dict, directions: list[np.ndarray]) -> list[np.ndarray]:
        """Per sample and channel, d<outputs, directions>/d mask at all-ones masks: each
        channel's first-order effect on the outputs projected on ``directions``."""
        tf = import_tf()
        xs = [tf.constant(feeds[k]) for k in self.input_names]
        masks = [tf.constant(m) for m in self.masks(None, int(xs[0].shape[0]))]
        with tf.GradientTape() as tape:
            tape.watch(masks)
            y = self.model(xs + masks, training=False)
            y = y if isinstance(y, (list, tuple)) else [y]
            total = tf.add_n([tf.reduce_sum(a * tf.constant(d)) for a, d in zip(y, directions)])
        return [np.asarray(g) for g in tape.gradient(total, masks)]


def _layer(cls: str, name: str, config: dict, inbound: list) -> dict:
    common = {"name": name, "dtype": "float32"} if cls == "InputLayer" else {"name": name, "trainable": False, "dtype": "float32"}
    return {"module": "keras.layers", "class_name": cls, "config": {**common, **config}, "registered_name": None, "name": name,
            "inbound_nodes": inbound}


def _node_ordinals(keras_model) -> dict:
    """(layer name, call index) -> the call's place in the layer's config ``inbound_nodes``
    (a config lists only the calls inside the model, renumbered in order)."""
    seen: dict = {}
    out = {}
    for n in graph_nodes(keras_model):
        if n.cls == "InputLayer":
            continue
        out[(n.layer.name, n.index)] = seen.get(n.layer.name, 0)
        seen[n.layer.name] = out[(n.layer.name, n.index)] + 1
    return out
