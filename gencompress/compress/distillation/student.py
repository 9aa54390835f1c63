"""Students made from the teacher: narrower (``width``) and shallower (``depth``), or checked
when the user brings one."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gencompress.config import DistillConfig
from gencompress.errors import OptionError, UnsupportedModelError
from gencompress.model import MODEL_CLASSES
from gencompress.tfenv import import_keras, import_tf


# Layers whose output channels are a hyper-parameter (scaled by --width), and which one.
_WIDTH_PARAM = {
    "Dense": "units",
    "Conv1D": "filters",
    "Conv2D": "filters",
    "Conv3D": "filters",
    "Conv1DTranspose": "filters",
    "Conv2DTranspose": "filters",
    "Conv3DTranspose": "filters",
    "SeparableConv1D": "filters",
    "SeparableConv2D": "filters",
}


# Layers that keep the channel count of their (single) input: their weights, if any, are
# sized from the input when the student is built.
_CHANNEL_PRESERVING = {
    "BatchNormalization", "LayerNormalization", "UnitNormalization", "Activation", "ReLU", "LeakyReLU",
    "ELU", "PReLU", "Softmax", "ThresholdedReLU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "UpSampling1D", "UpSampling2D", "UpSampling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "Masking", "DepthwiseConv1D", "DepthwiseConv2D", "Identity",
}


_ELEMENTWISE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}


@dataclass
class StudentPlan:
    """How a derived student differs from its teacher: resized layers and dropped blocks."""

    width: float | None
    depth: float
    resized: list[dict] = field(default_factory=list)
    dropped_blocks: list[list[str]] = field(default_factory=list)
    droppable_blocks: int = 0


@dataclass
class _Node:
    layer: object
    cls: str
    inputs: list  # KerasTensors
    outputs: list


def graph_nodes(model) -> list[_Node]:
    """Every call of a layer inside ``model``, in the model's (topological) order."""
    tf = import_tf()
    keep = getattr(model, "_network_nodes", None)
    nodes = []
    for layer in model.layers:
        cls = type(layer).__name__
        if cls in MODEL_CLASSES or hasattr(layer, "layers") and cls not in ("InputLayer",):
            raise UnsupportedModelError(
                f"layer '{layer.name}' is a nested model: --width/--depth cannot look inside it "
                "(rebuild the teacher flat, or give a --student architecture)"
            )
        for i, node in enumerate(layer._inbound_nodes):
            if keep is not None and f"{layer.name}_ib-{i}" not in keep:
                continue
            nodes.append(_Node(layer, cls, list(node.keras_inputs), tf.nest.flatten(node.outputs)))
    return nodes


def tensor_key(tensor) -> tuple:
    layer, node_index, tensor_index = tensor._keras_history
    return (layer.name, node_index, tensor_index)


def tensor_dims(tensor) -> tuple:
    return tuple(tensor.shape)[1:]


def _channels_last(layer, rank: int) -> bool:
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


def _width_plan(model, width: float) -> tuple[dict, list[dict]]:
    """Per-layer config changes that scale ``model``'s hidden channels by ``width``.

    Channel counts are tracked as groups that must stay equal (a layer's input and output
    through BatchNorm/activations/upsampling, the inputs of an Add, every call of a shared
    layer). A group is scaled if one of its producers is a Dense/Conv layer, and kept when it
    touches a model input or output or a layer this does not understand. A Dense feeding a
    Reshape produces the Reshape's element count: the Reshape's channels are scaled and the
    Dense's units follow; Flatten and channel Concatenate sizes follow their inputs.
    Returns ``({layer name: {config key: value}}, rows describing each change)``.
    """
    problem = _WidthProblem(model)
    return problem.changes(model, problem.solve(width))


class _WidthProblem:
    """The channel-size constraints of a model's graph, and their solution for a width."""

    def __init__(self, model):
        self.uf = _UnionFind()
        self.size, self.fixed, self.proposers = {}, set(), set()
        self.setters = []  # (layer name, config key, group key, how to write the value)
        self.ties = []  # (a, b, factor): size(a) = factor * size(b)
        self.sums = []  # (out, [ins]): out is the concatenation of ins
        for t in model.inputs + model.outputs:
            self.fixed.add(tensor_key(t))
        for node in graph_nodes(model):
            self._add(node)

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
        if cls in _WIDTH_PARAM and single and _channels_last(layer, rank) and layer.get_config().get("groups", 1) == 1:
            uf.union(("output of", layer.name), outs[0])
            self.proposers.add(outs[0])
            self.setters.append((layer.name, _WIDTH_PARAM[cls], outs[0], int))
        elif cls in _CHANNEL_PRESERVING and single and _channels_last(layer, rank) and layer.get_config().get("depth_multiplier", 1) == 1:
            uf.union(ins[0], outs[0])
        elif cls in _ELEMENTWISE and len(outs) == 1 and len({tensor_dims(t)[-1] for t in node.inputs + node.outputs}) == 1:
            uf.union(*ins, outs[0])
        elif cls == "Concatenate" and len(outs) == 1:
            axis = layer.get_config()["axis"]
            if axis in (-1, rank - 1):
                self.sums.append((outs[0], ins))
            else:
                uf.union(*ins, outs[0])
        elif cls == "Flatten" and single and _channels_last(layer, rank):
            in_dims = tensor_dims(node.inputs[0])
            if len(in_dims) == 1:
                uf.union(ins[0], outs[0])
            else:
                self.ties.append((outs[0], ins[0], int(np.prod(in_dims[:-1]))))
        elif cls == "Reshape" and single:
            self._add_reshape(layer, node, ins, outs)
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


def derive_student(keras_model, config: DistillConfig, seed: int = 0) -> tuple[object, StudentPlan]:
    """A fresh, seeded student: ``keras_model``'s architecture with ``config.depth`` of its
    droppable blocks kept and hidden channels scaled by ``config.width``; same inputs, outputs
    and layer names. Raises ``UnsupportedModelError`` if the architecture cannot be scaled.

    Build it inside ``strategy.scope()`` to train it under a ``tf.distribute`` strategy.
    """
    keras = import_keras()
    width = 1.0 if config.width is None else config.width
    plan = StudentPlan(width=config.width, depth=config.depth)
    base = keras_model
    blocks = _droppable_blocks(keras_model)
    plan.droppable_blocks = len(blocks)
    if config.depth < 1.0:
        if not blocks:
            raise UnsupportedModelError(
                "--depth: this architecture has no block that can be dropped (a Dense/Conv layer whose "
                "output has its input's shape, with its BatchNorm/activation, or a residual Add around such layers)"
            )
        drop = _pick_dropped(len(blocks), config.depth)
        plan.dropped_blocks = [blocks[i]["layers"] for i in drop]
        base = _build(keras, _without_blocks(keras_model, [blocks[i] for i in drop]), type(keras_model), seed)
    changes, rows = _width_plan(base, width)
    plan.resized = rows
    if width < 1.0 and not rows:
        raise UnsupportedModelError("--width: no hidden layer of this architecture can be narrowed (give a --student architecture)")
    config_dict = base.get_config()
    for layer_cfg in config_dict["layers"]:
        cfg = layer_cfg["config"]
        if "trainable" in cfg:
            cfg["trainable"] = True  # a fresh student trains every layer
        cfg.update(changes.get(cfg.get("name"), {}))
    student = _build(keras, config_dict, type(keras_model), seed)
    _check_same_interface(keras_model, student, "the derived student")
    return student, plan


def _build(keras, config_dict, cls, seed):
    keras.utils.set_random_seed(seed)  # fresh initializers draw from the seeded global generator
    builder = keras.Sequential if cls.__name__ == "Sequential" else keras.Model
    try:
        return builder.from_config(config_dict)
    except (ValueError, TypeError, KeyError) as exc:
        raise UnsupportedModelError(f"cannot build a student from this architecture: {str(exc).splitlines()[0][:300]}") from None


def _check_same_interface(teacher, student, what) -> None:
    for kind, a, b in (("input", teacher.inputs, student.inputs), ("output", teacher.outputs, student.outputs)):
        if len(a) != len(b) or any(tuple(x.shape[1:]) != tuple(y.shape[1:]) for x, y in zip(a, b)):
            raise UnsupportedModelError(
                f"{what} has {kind} shapes {[list(t.shape) for t in b]}, the teacher {[list(t.shape) for t in a]}"
            )


def _droppable_blocks(model) -> list[dict]:
    """Blocks whose removal keeps every shape: a Dense/Conv layer whose output has its input's
    shape, with the BatchNorm/activation/dropout layers after it; or a residual ``Add`` of a
    tensor and a chain of layers computed from it. Each: ``layers`` (names), ``input`` (the
    tensor the block's consumers read instead) and ``output``."""
    nodes = graph_nodes(model)
    if any(len(n.layer._inbound_nodes) > 1 for n in nodes if n.cls != "InputLayer"):
        return []  # shared layers: rewiring would change the other calls too
    consumers = {}
    for n in nodes:
        for t in n.inputs:
            consumers.setdefault(tensor_key(t), []).append(n)
    producer = {tensor_key(t): n for n in nodes for t in n.outputs}
    model_outputs = {tensor_key(t) for t in model.outputs}

    def only_consumer(t) -> _Node | None:
        c = consumers.get(tensor_key(t), [])
        return c[0] if len(c) == 1 and tensor_key(t) not in model_outputs else None

    def plain(n) -> bool:
        return len(n.inputs) == 1 and len(n.outputs) == 1

    blocks, used = [], set()
    for n in nodes:
        if n.cls in _ELEMENTWISE and n.cls in ("Add",) and len(n.inputs) == 2 and tensor_key(n.outputs[0]) not in model_outputs:
            for skip, branch in ((n.inputs[0], n.inputs[1]), (n.inputs[1], n.inputs[0])):
                chain, t = [], branch
                while tensor_key(t) in producer and tensor_key(t) != tensor_key(skip) and len(chain) < 32:
                    p = producer[tensor_key(t)]
                    if not plain(p) or p.cls == "InputLayer" or only_consumer(t) is None:
                        break
                    chain.insert(0, p)
                    t = p.inputs[0]
                if chain and tensor_key(t) == tensor_key(skip) and any(p.layer.weights for p in chain):
                    names = [p.layer.name for p in chain] + [n.layer.name]
                    if not used & set(names):
                        blocks.append({"layers": names, "input": skip, "output": n.outputs[0]})
                        used.update(names)
                    break
    for n in nodes:
        if n.cls not in _WIDTH_PARAM or not plain(n) or n.layer.name in used:
            continue
        if tensor_dims(n.inputs[0]) != tensor_dims(n.outputs[0]):
            continue
        chain, t = [n], n.outputs[0]
        while True:
            nxt = only_consumer(t)
            if nxt is None or nxt.cls not in _CHANNEL_PRESERVING or not plain(nxt) or tensor_dims(nxt.outputs[0]) != tensor_dims(t):
                break
            chain.append(nxt)
            t = nxt.outputs[0]
        if any(tensor_key(c.outputs[0]) in model_outputs for c in chain) or used & {c.layer.name for c in chain}:
            continue
        names = [c.layer.name for c in chain]
        blocks.append({"layers": names, "input": n.inputs[0], "output": chain[-1].outputs[0]})
        used.update(names)
    order = {layer.name: i for i, layer in enumerate(model.layers)}
    return sorted(blocks, key=lambda b: order[b["layers"][0]])


def _pick_dropped(n: int, depth: float) -> list[int]:
    """Indices of the blocks to drop, spread evenly over the network."""
    keep = int(math.floor(n * depth + 1e-9))
    d = n - keep
    return sorted({min(n - 1, int((j + 0.5) * n / d)) for j in range(d)}) if d else []


def _without_blocks(model, blocks) -> dict:
    """``model``'s config with ``blocks`` removed and their consumers reading the block's input."""
    config = model.get_config()
    drop = {name for b in blocks for name in b["layers"]}
    rewire = {tensor_key(b["output"]): tensor_key(b["input"]) for b in blocks}
    for out in rewire:  # consecutive dropped blocks: follow the chain to a kept tensor
        while rewire[out] in rewire:
            rewire[out] = rewire[rewire[out]]
    layers = [lc for lc in config["layers"] if lc["config"].get("name", lc.get("name")) not in drop]
    for lc in layers:
        for node in lc.get("inbound_nodes", []):
            for entry in node if isinstance(node, list) else []:
                if isinstance(entry, list) and len(entry) >= 3 and tuple(entry[:3]) in rewire:
                    entry[:3] = list(rewire[tuple(entry[:3])])
    config["layers"] = layers
    return config


def check_student(teacher, student) -> None:
    """``OptionError`` naming the first difference between the two models' inputs and outputs.

    Inputs must match by name, shape and dtype (the data is keyed by input name); outputs by
    count and shape (and name when there are several, which is how they are paired).
    """
    if student.keras_model is None:
        raise OptionError(f"--student {student.path} is a plain SavedModel: the student must be a Keras model to train")
    t_in = {t.name: t for t in teacher.inputs}
    s_in = {t.name: t for t in student.inputs}
    for name in t_in.keys() | s_in.keys():
        a, b = t_in.get(name), s_in.get(name)
        if a is None or b is None:
            raise OptionError(
                f"--student inputs {_names(student.inputs)} do not match the teacher's {_names(teacher.inputs)}"
            )
        if a.shape != b.shape or a.dtype != b.dtype:
            raise OptionError(f"--student input '{name}' is {list(b.shape)} {b.dtype}, the teacher's is {list(a.shape)} {a.dtype}")
    if len(teacher.outputs) != len(student.outputs):
        raise OptionError(f"--student has {len(student.outputs)} output(s), the teacher {len(teacher.outputs)}")
    for a, b in zip(teacher.outputs, student.outputs):
        if len(teacher.outputs) > 1 and a.name != b.name:
            raise OptionError(f"--student outputs {_names(student.outputs)} do not match the teacher's {_names(teacher.outputs)}")
        if a.shape != b.shape:
            raise OptionError(f"--student output '{b.name}' is {list(b.shape)}, the teacher's '{a.name}' is {list(a.shape)}")


def _names(tensors) -> str:
    return ", ".join(f"'{t.name}' {list(t.shape)}" for t in tensors)
