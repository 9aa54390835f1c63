"""Which channels of a Keras graph must change together: the one planner behind width students
and channel pruning (Torch-Pruning's dependency graph, for Keras).

Channel counts are tracked as *groups* of tensors whose last axis must stay the same (a layer's
input and output through BatchNorm, activations, upsampling, depthwise convolutions; the inputs
of an ``Add``/``Multiply``; every call of a shared layer). Some groups are tied to others: a
Dense feeding ``Reshape(..., C)`` produces ``positions × C`` values (the flat group follows the
channels), ``Flatten`` and depth-to-space likewise, and a channel ``Concatenate`` holds its inputs
side by side. Groups touching a model input or output, or a layer this does not understand, keep
their channels.

``ChannelGraph.solve(width)`` sizes every group for a ``--width`` student; ``prunable()`` names
the groups whose channels can be chosen one by one, and ``kept(selection)`` turns a choice of
channels in those groups into the kept indices of every tensor (what slicing the weights needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gencompress.errors import UnsupportedModelError
from gencompress.model import MODEL_CLASSES
from gencompress.tfenv import import_tf

# Layers whose output channels are a hyper-parameter (scaled by --width, pruned), and which one.
WIDTH_PARAM = {
    "Dense": "units",
    "Conv1D": "filters",
    "Conv2D": "filters",
    "Conv3D": "filters",
    "Conv1DTranspose": "filters",
    "Conv2DTranspose": "filters",
    "Conv3DTranspose": "filters",
    "SeparableConv1D": "filters",
    "SeparableConv2D": "filters",
    "Embedding": "output_dim",
}


# Layers that keep the channel count of their (single) input: their weights, if any, are
# sized from the input when the student is built.
CHANNEL_PRESERVING = {
    "BatchNormalization", "LayerNormalization", "UnitNormalization", "Activation", "ReLU", "LeakyReLU",
    "ELU", "PReLU", "Softmax", "ThresholdedReLU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "UpSampling1D", "UpSampling2D", "UpSampling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "Masking", "DepthwiseConv1D", "DepthwiseConv2D", "Identity",
}


ELEMENTWISE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
# TF ops seen as TFOpLambda layers that move channels to space (sub-pixel upsampling).
DEPTH_TO_SPACE = {"nn.depth_to_space", "compat.v1.depth_to_space", "compat.v1.nn.depth_to_space"}


@dataclass
class Node:
    """One call of a layer: its inputs and outputs (KerasTensors)."""

    layer: object
    cls: str
    inputs: list
    outputs: list
    index: int = 0  # which call of the layer


def graph_nodes(model) -> list[Node]:
    """Every call of a layer inside ``model``, in the model's (topological) order."""
    tf = import_tf()
    keep = getattr(model, "_network_nodes", None)
    nodes = []
    for layer in model.layers:
        cls = type(layer).__name__
        if cls in MODEL_CLASSES or hasattr(layer, "layers") and cls not in ("InputLayer",):
            raise UnsupportedModelError(
                f"layer '{layer.name}' is a nested model: the channel planner cannot look inside it "
                "(rebuild the model flat, or give a --student architecture)"
            )
        for i, node in enumerate(layer._inbound_nodes):
            if keep is not None and f"{layer.name}_ib-{i}" not in keep:
                continue
            nodes.append(Node(layer, cls, list(node.keras_inputs), tf.nest.flatten(node.outputs), i))
    return nodes


def tensor_key(tensor) -> tuple:
    layer, node_index, tensor_index = tensor._keras_history
    return (layer.name, node_index, tensor_index)


def tensor_dims(tensor) -> tuple:
    return tuple(tensor.shape)[1:]


def channels_last(layer, rank: int) -> bool:
    cfg = layer.get_config()
    if cfg.get("data_format", "channels_last") != "channels_last":
        return False
    if "axis" in cfg and type(layer).__name__ in ("BatchNormalization", "LayerNormalization", "UnitNormalization", "Softmax"):
        axis = cfg["axis"]
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        return len(axes) == 1 and axes[0] in (-1, rank - 1)
    return True


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, k):
        self.parent.setdefault(k, k)
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, *keys):
        roots = [self.find(k) for k in keys]
        for r in roots[1:]:
            self.parent[r] = roots[0]


@dataclass
class Group:
    """Channels that are kept or removed together: ``root`` names the group, ``channels`` its
    size, ``producers`` the layers whose filters/units make it (and the layers tied to it)."""

    root: tuple
    channels: int
    producers: list[str] = field(default_factory=list)


class ChannelGraph:
    """The channel-size constraints of a model's graph: sized for a width, or chosen channel by
    channel for pruning."""

    def __init__(self, model):
        self.model = model
        self.uf = _UnionFind()
        self.size, self.fixed, self.proposers = {}, set(), set()
        self.setters = []  # (layer name, config key, group key, how to write the value)
        self.ties = []  # (a, b, factor): a holds `factor` positions of b's channels (index pos*C_b + c)
        self.sums = []  # (out, [ins]): out is the concatenation of ins
        self.internal = set()  # (layer name, call, input index): edges inside one group
        for t in model.inputs + model.outputs:
            self.fixed.add(tensor_key(t))
        self.nodes = graph_nodes(model)
        for node in self.nodes:
            self._add(node)

    # ------------------------------------------------------------------ building the constraints

    def _add(self, node) -> None:
        uf, layer, cls = self.uf, node.layer, node.cls
        for t in node.inputs + node.outputs:
            self.size[tensor_key(t)] = tensor_dims(t)[-1] if tensor_dims(t) else 1
        ins, outs = [tensor_key(t) for t in node.inputs], [tensor_key(t) for t in node.outputs]
        rank = len(node.inputs[0].shape) if node.inputs else 0
        if cls == "InputLayer":
            return
        if layer.weights or len(layer._inbound_nodes) > 1:  # weights are sized by the first call
            for j, k in enumerate(ins):
                uf.union(("input of", layer.name, j), k)
        single = len(ins) == 1 and len(outs) == 1
        inside = [(layer.name, node.index, j) for j in range(len(ins))]
        if cls in WIDTH_PARAM and single and channels_last(layer, rank) and layer.get_config().get("groups", 1) == 1:
            uf.union(("output of", layer.name), outs[0])
            self.proposers.add(outs[0])
            self.setters.append((layer.name, WIDTH_PARAM[cls], outs[0], int))
        elif cls in CHANNEL_PRESERVING and single and channels_last(layer, rank) and layer.get_config().get("depth_multiplier", 1) == 1:
            uf.union(ins[0], outs[0])
            self.internal.update(inside)
        elif cls in ELEMENTWISE and len(outs) == 1 and len({tensor_dims(t)[-1] for t in node.inputs + node.outputs}) == 1:
            uf.union(*ins, outs[0])
            self.internal.update(inside)
        elif cls == "Concatenate" and len(outs) == 1:
            axis = layer.get_config()["axis"]
            if axis in (-1, rank - 1):
                self.sums.append((outs[0], ins))
            else:
                uf.union(*ins, outs[0])
                self.internal.update(inside)
        elif cls == "Flatten" and single and channels_last(layer, rank):
            in_dims = tensor_dims(node.inputs[0])
            if len(in_dims) == 1:
                uf.union(ins[0], outs[0])
            else:
                self.ties.append((outs[0], ins[0], int(np.prod(in_dims[:-1]))))
            self.internal.update(inside)
        elif cls == "Reshape" and single:
            self._add_reshape(layer, node, ins, outs)
        elif cls == "TFOpLambda" and single and getattr(layer, "symbol", None) in DEPTH_TO_SPACE:
            self._add_depth_to_space(node, ins, outs)
        else:  # not understood: leave its inputs and outputs as they are
            self.fixed.update(ins + outs)

    def _add_reshape(self, layer, node, ins, outs) -> None:
        in_dims, out_dims = tensor_dims(node.inputs[0]), tensor_dims(node.outputs[0])
        if len(in_dims) == 1 and len(out_dims) >= 2:
            # Dense(N) -> Reshape(..., C): C is the hidden width, N follows.
            self.ties.append((ins[0], outs[0], int(np.prod(out_dims[:-1]))))
            self.proposers.add(outs[0])
            self.setters.append((layer.name, "target_shape", outs[0], lambda n, d=out_dims: list(d[:-1]) + [n]))
        elif in_dims[-1] == out_dims[-1] and len(in_dims) > 1 and len(out_dims) > 1:
            self.uf.union(ins[0], outs[0])
            self.setters.append((layer.name, "target_shape", outs[0], lambda n, d=out_dims: list(d[:-1]) + [n]))
        else:
            self.fixed.update(ins + outs)
            return
        self.internal.add((layer.name, node.index, 0))

    def _add_depth_to_space(self, node, ins, outs) -> None:
        in_dims, out_dims = tensor_dims(node.inputs[0]), tensor_dims(node.outputs[0])
        block = out_dims[0] // in_dims[0] if len(in_dims) == 3 and in_dims[0] else 0
        if block < 2 or in_dims[-1] != out_dims[-1] * block * block:
            self.fixed.update(ins + outs)
            return
        # input channel (dy * b + dx) * C + c becomes output channel c: C is the hidden width.
        self.ties.append((ins[0], outs[0], block * block))
        self.proposers.add(outs[0])
        self.internal.add((node.layer.name, node.index, 0))

    # ------------------------------------------------------------------ width students

    def solve(self, width: float) -> dict:
        """The new size of every group: scaled, fixed, or following its ties and sums."""
        uf = self.uf
        self.size_of = size_of = {}
        for k, n in self.size.items():
            size_of.setdefault(uf.find(k), n)
        fixed_roots = {uf.find(k) for k in self.fixed}
        while True:
            self._propagate_fixed(fixed_roots)
            new, conflict = self._resolve_all(width, fixed_roots)
            if conflict is None:
                return new
            fixed_roots.add(conflict)  # sizes that cannot agree stay as they are; solve again

    def _propagate_fixed(self, fixed_roots: set) -> None:
        uf = self.uf
        changed = True
        while changed:  # a fixed size on one side of a tie or a concatenation fixes the other
            changed = False
            for a, b, _ in self.ties:
                ra, rb = uf.find(a), uf.find(b)
                if (ra in fixed_roots) != (rb in fixed_roots):
                    fixed_roots.update((ra, rb))
                    changed = True
            for out, ins in self.sums:
                if uf.find(out) in fixed_roots and not all(uf.find(k) in fixed_roots for k in ins):
                    fixed_roots.update(uf.find(k) for k in ins)
                    changed = True

    def _resolve_all(self, width: float, fixed_roots: set):
        uf, size_of, ties, sums, proposers = self.uf, self.size_of, self.ties, self.sums, self.proposers
        new, conflict = {}, None

        def scaled_size(root) -> int:
            return max(1, int(math.floor(size_of[root] * width + 0.5)))

        def resolve(root, seen=()):
            nonlocal conflict
            if root in new:
                return new[root]
            if root in seen:  # sizes defined in a circle: keep them
                conflict = root
                return size_of[root]
            if root in fixed_roots:
                new[root] = size_of[root]
                return new[root]
            candidates = [f * resolve(uf.find(b), seen + (root,)) for a, b, f in ties if uf.find(a) == root]
            candidates += [sum(resolve(uf.find(k), seen + (root,)) for k in ins) for out, ins in sums if uf.find(out) == root]
            if not candidates:
                candidates = [scaled_size(root)] if any(uf.find(p) == root for p in proposers) else [size_of[root]]
            if len(set(candidates)) > 1:
                conflict = root
            new[root] = candidates[0]
            return new[root]

        for root in size_of:
            resolve(root)
        return new, conflict

    def changes(self, model, new: dict) -> tuple[dict, list[dict]]:
        """``({layer name: {config key: value}}, rows)`` that give every group its ``new`` size."""
        changes, rows = {}, []
        by_name = {layer.name: layer for layer in model.layers}
        for name, key, group, write in self.setters:
            root = self.uf.find(group)
            before, after = self.size_of[root], new[root]
            if before == after:
                continue
            changes.setdefault(name, {})[key] = write(after)
            if key != "target_shape":
                rows.append({"name": name, "class": type(by_name[name]).__name__, "teacher": before, "student": after})
        return changes, rows

    # ------------------------------------------------------------------ channel by channel

    def prunable(self) -> list[Group]:
        """The groups whose channels can be chosen one by one, in the model's order: made by a
        Dense/Conv/ConvTranspose/Embedding (or the Reshape after a Dense), not tied to an input
        or output, not defined by another group (a tie or a concatenation)."""
        self._settle()
        groups = {}
        for name, _, group, _ in self.setters:
            root = self.source(self.uf.find(group))[0]
            if root in self.free:
                groups.setdefault(root, Group(root, self.size_of[root])).producers.append(name)
        for root in self.free:  # a depth-to-space output has no setter of its own
            groups.setdefault(root, Group(root, self.size_of[root]))
        order = {tensor_key(t): i for i, n in enumerate(self.nodes) for t in n.outputs}
        first = {}
        for k in self.size:
            r = self.uf.find(k)
            if r in groups:
                first[r] = min(first.get(r, math.inf), order.get(k, math.inf))
        return sorted(groups.values(), key=lambda g: first.get(g.root, math.inf))

    def _settle(self) -> None:
        """Each group's status for pruning: fixed, free, or derived (``self.derived[root]``:
        ``("tie", source root, factor)`` or ``("sum", [input roots])``)."""
        if hasattr(self, "free"):
            return
        uf = self.uf
        self.size_of = {}
        for k, n in self.size.items():
            self.size_of.setdefault(uf.find(k), n)
        fixed = {uf.find(k) for k in self.fixed}
        derived: dict = {}
        for a, b, f in self.ties:
            derived.setdefault(uf.find(a), []).append(("tie", uf.find(b), f))
        for out, ins in self.sums:
            derived.setdefault(uf.find(out), []).append(("sum", [uf.find(k) for k in ins]))
        # a group defined two ways could only agree by chance: keep it (and what defines it)
        fixed.update(r for r, ways in derived.items() if len(ways) > 1)
        fixed.update(self._cycles({r: ways[0] for r, ways in derived.items()}))
        self._propagate_fixed(fixed)
        self.fixed_roots = fixed
        self.derived = {r: ways[0] for r, ways in derived.items() if r not in fixed}
        proposers = {uf.find(p) for p in self.proposers}
        self.free = {r for r in proposers if r not in fixed and r not in self.derived}

    @staticmethod
    def _cycles(derived: dict) -> set:
        found = set()
        for start in derived:
            seen, todo = set(), [start]
            while todo:
                r = todo.pop()
                way = derived.get(r)
                if way is None:
                    continue
                for src in ([way[1]] if way[0] == "tie" else way[1]):
                    if src == start:
                        found.add(start)
                    elif src not in seen:
                        seen.add(src)
                        todo.append(src)
        return found

    def kept(self, selection: dict) -> dict:
        """Kept channel indices (sorted arrays) of every group root, from ``selection``
        (``{free root: indices}``; a free root left out keeps everything). Roots that keep all
        their channels map to ``None``."""
        self._settle()
        out: dict = {}

        def of(root):
            if root in out:
                return out[root]
            way = self.derived.get(root)
            if root in selection:
                out[root] = np.sort(np.asarray(selection[root], dtype=np.int64))
            elif way is None:
                out[root] = None
            elif way[0] == "tie":
                src = of(way[1])
                c = self.size_of[way[1]]
                out[root] = None if src is None else (np.arange(way[2])[:, None] * c + src[None, :]).reshape(-1)
            else:
                parts, offset, changed = [], 0, False
                for r in way[1]:
                    idx = of(r)
                    changed |= idx is not None
                    parts.append(offset + (np.arange(self.size_of[r]) if idx is None else idx))
                    offset += self.size_of[r]
                out[root] = np.concatenate(parts) if changed else None
            return out[root]

        for root in self.size_of:
            of(root)
        return out

    def source(self, root) -> tuple:
        """``(root it follows through ties, positions)``: a flat or depth-to-space group
        holds ``positions`` copies of its source's channels (itself and 1 when not tied)."""
        factor = 1
        while root in self.derived and self.derived[root][0] == "tie":
            factor *= self.derived[root][2]
            root = self.derived[root][1]
        return root, factor

    def tensor_kept(self, kept: dict, tensor) -> np.ndarray | None:
        """The kept channel indices of ``tensor`` (``None``: all of them)."""
        return kept.get(self.uf.find(tensor_key(tensor)))

    def exits(self) -> list[tuple]:
        """Edges where a free group's channels leave it: ``(layer name, call, input index, free
        root, factor)``, ``factor`` > 1 where the edge reads a flat tensor tied to the group
        (``factor`` positions of its channels). Zeroing a channel on every exit is removing it."""
        self._settle()
        found = []
        for node in self.nodes:
            for j, t in enumerate(node.inputs):
                if (node.layer.name, node.index, j) in self.internal:
                    continue
                root, factor = self.source(self.uf.find(tensor_key(t)))
                if root in self.free:
                    found.append((node.layer.name, node.index, j, root, factor))
        return found
