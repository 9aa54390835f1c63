"""Knowledge distillation: train a smaller student generator to reproduce the teacher.

The student is the teacher's own architecture made narrower (``width``: hidden Dense units and
convolution filters scaled, input and output shapes kept) and optionally shallower (``depth``:
shape-preserving blocks dropped), with fresh seeded weights; or an architecture the user brings.
It is trained data-free with the fine-tuning loop of ``finetune.train_to_match`` (the teacher's
outputs on noise latents, or on the user's inputs, are the targets), optionally with
intermediate feature matching through learned 1×1 projections as in GAN Compression (Li et al.,
2020). Training can run under a ``tf.distribute`` strategy (all local devices, or many workers
configured by ``TF_CONFIG``) and can be checkpointed and resumed.

``distill`` is the ``gencompress distill`` command as a library call: the teacher's float
artifacts as the reference, the student trained, saved and exported, everything measured
against the teacher, the report written with the two side by side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gencompress.model import MODEL_CLASSES
from gencompress.artifacts import derived_model_path, save_keras_atomic
from gencompress.errors import OptionError, UnsupportedModelError
from gencompress.tfenv import import_keras, import_tf

DISTRIBUTE = ("none", "mirrored", "multi-worker")

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


@dataclass(frozen=True)
class DistillConfig:
    """How the student is made and trained beyond the fine-tuning loop's own settings.

    ``width``: multiplier for hidden units/filters (``None`` with a user-supplied student).
    ``depth``: fraction of the droppable blocks to keep (1 keeps all). ``feature_weight``: weight
    of the intermediate feature-matching loss (0: pixel loss only).
    """

    width: float | None = 0.5
    depth: float = 1.0
    feature_weight: float = 0.0

    def __post_init__(self):
        if self.width is not None and not (0.0 < self.width <= 1.0 and math.isfinite(self.width)):
            raise OptionError(f"--width must be in (0, 1], got {self.width}")
        if not (0.0 <= self.depth <= 1.0):
            raise OptionError(f"--depth must be in [0, 1] (the fraction of droppable blocks kept), got {self.depth}")
        if not (self.feature_weight >= 0.0 and math.isfinite(self.feature_weight)):
            raise OptionError(f"--feature-loss must be a weight >= 0, got {self.feature_weight}")


@dataclass
class StudentPlan:
    """How a derived student differs from its teacher: resized layers and dropped blocks."""

    width: float | None
    depth: float
    resized: list[dict] = field(default_factory=list)
    dropped_blocks: list[list[str]] = field(default_factory=list)
    droppable_blocks: int = 0


# --------------------------------------------------------------------------- distribution


def make_strategy(kind: str | None, cpu_devices: int | None = None):
    """The ``tf.distribute`` strategy for ``kind`` (none, mirrored, multi-worker), or ``None``.

    ``mirrored``: every local GPU, else every logical CPU device. ``multi-worker``: the cluster in
    ``TF_CONFIG``. ``cpu_devices`` splits the CPU into that many logical devices (to try the
    mirrored path on a machine without GPUs); like ``multi-worker`` it must be asked for before
    TensorFlow has started its runtime, so call this first in a program.
    """
    kind = kind or "none"
    if kind not in DISTRIBUTE:
        raise OptionError(f"unknown --distribute '{kind}' (choose from {', '.join(DISTRIBUTE)})")
    tf = import_tf()
    if cpu_devices is not None:
        if cpu_devices < 1:
            raise OptionError(f"--cpu-devices must be at least 1, got {cpu_devices}")
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)])
        except RuntimeError:
            if len(tf.config.list_logical_devices("CPU")) != cpu_devices:
                raise OptionError("--cpu-devices must be set before TensorFlow starts its runtime (too late in this process)") from None
    if kind == "none":
        return None
    if kind == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [d.name for d in tf.config.list_logical_devices("CPU")]
        with _quiet():
            return tf.distribute.MirroredStrategy(devices)
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise OptionError("--distribute multi-worker reads the cluster from the TF_CONFIG environment variable, which is not set")
    try:
        cluster = json.loads(raw)
        cluster["cluster"]["worker"], cluster["task"]["index"]
    except (ValueError, KeyError, TypeError):
        raise OptionError('TF_CONFIG must be JSON like {"cluster": {"worker": ["host1:port", ...]}, "task": {"type": "worker", "index": 0}}') from None
    try:
        with _quiet():
            return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:
        raise OptionError(f"cannot start MultiWorkerMirroredStrategy: {str(exc).splitlines()[0]}") from None


def strategy_info(strategy) -> dict | None:
    if strategy is None:
        return None
    extended = strategy.extended
    info = {
        "strategy": {"CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy"}.get(type(strategy).__name__, type(strategy).__name__),
        "replicas": int(strategy.num_replicas_in_sync),
        "devices": list(getattr(extended, "worker_devices", ())),
    }
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and getattr(resolver, "task_type", None):
        info.update(task_type=resolver.task_type, task_id=int(resolver.task_id or 0), chief=_is_chief(strategy))
    return info


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and not resolver.task_id and "chief" not in resolver.cluster_spec().as_dict())


class _quiet:
    """Strategies log their devices through absl at INFO; a CLI run shows the progress line instead."""

    def __enter__(self):
        import logging

        self._logger = logging.getLogger("tensorflow")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return False


class _NullScope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _scope(strategy):
    return strategy.scope() if strategy is not None else _NullScope()


# --------------------------------------------------------------------------- the graph


@dataclass
class _Node:
    layer: object
    cls: str
    inputs: list  # KerasTensors
    outputs: list


def _nodes(model) -> list[_Node]:
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


def _key(tensor) -> tuple:
    layer, node_index, tensor_index = tensor._keras_history
    return (layer.name, node_index, tensor_index)


def _dims(tensor) -> tuple:
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


# --------------------------------------------------------------------------- width


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
    uf = _UnionFind()
    size, fixed, proposers = {}, set(), set()
    setters = []  # (layer name, config key, group key, how to write the value)
    ties = []  # (a, b, factor): size(a) = factor * size(b)
    sums = []  # (out, [ins]): out is the concatenation of ins
    for t in model.inputs + model.outputs:
        fixed.add(_key(t))
    for node in _nodes(model):
        layer, cls = node.layer, node.cls
        for t in node.inputs + node.outputs:
            size[_key(t)] = _dims(t)[-1] if _dims(t) else 1
        ins, outs = [_key(t) for t in node.inputs], [_key(t) for t in node.outputs]
        rank = len(node.inputs[0].shape) if node.inputs else 0
        if cls == "InputLayer":
            continue
        if layer.weights or len(layer._inbound_nodes) > 1:  # weights are sized by the first call
            for j, k in enumerate(ins):
                uf.union(("input of", layer.name, j), k)
        single = len(ins) == 1 and len(outs) == 1
        if cls in _WIDTH_PARAM and single and _channels_last(layer, rank) and layer.get_config().get("groups", 1) == 1:
            uf.union(("output of", layer.name), outs[0])
            proposers.add(outs[0])
            setters.append((layer.name, _WIDTH_PARAM[cls], outs[0], int))
        elif cls in _CHANNEL_PRESERVING and single and _channels_last(layer, rank) and layer.get_config().get("depth_multiplier", 1) == 1:
            uf.union(ins[0], outs[0])
        elif cls in _ELEMENTWISE and len(outs) == 1 and len({_dims(t)[-1] for t in node.inputs + node.outputs}) == 1:
            uf.union(*ins, outs[0])
        elif cls == "Concatenate" and len(outs) == 1:
            axis = layer.get_config()["axis"]
            if axis in (-1, rank - 1):
                sums.append((outs[0], ins))
            else:
                uf.union(*ins, outs[0])
        elif cls == "Flatten" and single and _channels_last(layer, rank):
            in_dims = _dims(node.inputs[0])
            if len(in_dims) == 1:
                uf.union(ins[0], outs[0])
            else:
                ties.append((outs[0], ins[0], int(np.prod(in_dims[:-1]))))
        elif cls == "Reshape" and single:
            in_dims, out_dims = _dims(node.inputs[0]), _dims(node.outputs[0])
            if len(in_dims) == 1 and len(out_dims) >= 2:
                # Dense(N) -> Reshape(..., C): C is the hidden width, N follows.
                ties.append((ins[0], outs[0], int(np.prod(out_dims[:-1]))))
                proposers.add(outs[0])
                setters.append((layer.name, "target_shape", outs[0], lambda n, d=out_dims: list(d[:-1]) + [n]))
            elif in_dims[-1] == out_dims[-1] and len(in_dims) > 1 and len(out_dims) > 1:
                uf.union(ins[0], outs[0])
                setters.append((layer.name, "target_shape", outs[0], lambda n, d=out_dims: list(d[:-1]) + [n]))
            else:
                fixed.update(ins + outs)
        else:  # not understood: leave its inputs and outputs as they are
            fixed.update(ins + outs)

    def scaled_size(root) -> int:
        return max(1, int(math.floor(size_of[root] * width + 0.5)))

    size_of = {}
    for k, n in size.items():
        size_of.setdefault(uf.find(k), n)
    fixed_roots = {uf.find(k) for k in fixed}
    while True:
        changed = True
        while changed:  # a fixed size on one side of a tie or a concatenation fixes the other
            changed = False
            for a, b, _ in ties:
                ra, rb = uf.find(a), uf.find(b)
                if (ra in fixed_roots) != (rb in fixed_roots):
                    fixed_roots.update((ra, rb))
                    changed = True
            for out, ins in sums:
                if uf.find(out) in fixed_roots and not all(uf.find(k) in fixed_roots for k in ins):
                    fixed_roots.update(uf.find(k) for k in ins)
                    changed = True
        new, conflict = {}, None

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
        if conflict is None:
            break
        fixed_roots.add(conflict)  # sizes that cannot agree stay as they are; solve again

    changes, rows = {}, []
    by_name = {layer.name: layer for layer in model.layers}
    for name, key, group, write in setters:
        root = uf.find(group)
        before, after = size_of[root], new[root]
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


# --------------------------------------------------------------------------- depth


def _droppable_blocks(model) -> list[dict]:
    """Blocks whose removal keeps every shape: a Dense/Conv layer whose output has its input's
    shape, with the BatchNorm/activation/dropout layers after it; or a residual ``Add`` of a
    tensor and a chain of layers computed from it. Each: ``layers`` (names), ``input`` (the
    tensor the block's consumers read instead) and ``output``."""
    nodes = _nodes(model)
    if any(len(n.layer._inbound_nodes) > 1 for n in nodes if n.cls != "InputLayer"):
        return []  # shared layers: rewiring would change the other calls too
    consumers = {}
    for n in nodes:
        for t in n.inputs:
            consumers.setdefault(_key(t), []).append(n)
    producer = {_key(t): n for n in nodes for t in n.outputs}
    model_outputs = {_key(t) for t in model.outputs}

    def only_consumer(t) -> _Node | None:
        c = consumers.get(_key(t), [])
        return c[0] if len(c) == 1 and _key(t) not in model_outputs else None

    def plain(n) -> bool:
        return len(n.inputs) == 1 and len(n.outputs) == 1

    blocks, used = [], set()
    for n in nodes:
        if n.cls in _ELEMENTWISE and n.cls in ("Add",) and len(n.inputs) == 2 and _key(n.outputs[0]) not in model_outputs:
            for skip, branch in ((n.inputs[0], n.inputs[1]), (n.inputs[1], n.inputs[0])):
                chain, t = [], branch
                while _key(t) in producer and _key(t) != _key(skip) and len(chain) < 32:
                    p = producer[_key(t)]
                    if not plain(p) or p.cls == "InputLayer" or only_consumer(t) is None:
                        break
                    chain.insert(0, p)
                    t = p.inputs[0]
                if chain and _key(t) == _key(skip) and any(p.layer.weights for p in chain):
                    names = [p.layer.name for p in chain] + [n.layer.name]
                    if not used & set(names):
                        blocks.append({"layers": names, "input": skip, "output": n.outputs[0]})
                        used.update(names)
                    break
    for n in nodes:
        if n.cls not in _WIDTH_PARAM or not plain(n) or n.layer.name in used:
            continue
        if _dims(n.inputs[0]) != _dims(n.outputs[0]):
            continue
        chain, t = [n], n.outputs[0]
        while True:
            nxt = only_consumer(t)
            if nxt is None or nxt.cls not in _CHANNEL_PRESERVING or not plain(nxt) or _dims(nxt.outputs[0]) != _dims(t):
                break
            chain.append(nxt)
            t = nxt.outputs[0]
        if any(_key(c.outputs[0]) in model_outputs for c in chain) or used & {c.layer.name for c in chain}:
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
    rewire = {_key(b["output"]): _key(b["input"]) for b in blocks}
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


# --------------------------------------------------------------------------- a user's student


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


# --------------------------------------------------------------------------- feature matching


@dataclass(frozen=True)
class FeaturePair:
    """A teacher and a student tensor at the same spatial size, matched during training."""

    teacher_layer: str
    student_layer: str
    spatial: tuple
    teacher_channels: int
    student_channels: int

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "spatial": list(self.spatial)}


def feature_pairs(teacher, student) -> list[FeaturePair]:
    """Intermediate layers to match: for each spatial size (H×W, or length) that both models
    have, the last tensor at that size in each (inputs and outputs excluded). A width student's
    pairs are its teacher's layers of the same names."""

    def last_by_size(model):
        ends = {_key(t) for t in model.inputs + model.outputs}
        found = {}
        for n in _nodes(model):
            if n.cls == "InputLayer" or len(n.outputs) != 1 or _key(n.outputs[0]) in ends:
                continue
            dims = _dims(n.outputs[0])
            if len(dims) >= 2 and None not in dims:
                found.pop(dims[:-1], None)  # re-insert: the order is that of the last tensor
                found[dims[:-1]] = (n.layer.name, n.outputs[0])
        return found

    t, s = last_by_size(teacher), last_by_size(student)
    return [
        FeaturePair(t[k][0], s[k][0], k, int(_dims(t[k][1])[-1]), int(_dims(s[k][1])[-1]))
        for k in t
        if k in s
    ]


def training_model(student, teacher, pairs: list[FeaturePair], weight: float):
    """``student`` with the feature-matching loss attached, for training only.

    A frozen copy of the teacher computes the target features in inference mode; each
    student feature goes through a learned 1×1 projection to the teacher's channel count and
    ``weight`` × the mean of the projections' MSEs is added as a model loss. The returned model
    shares the student's layers (training it trains the student), has the student's inputs and
    outputs, and owns the projections; the student itself never contains them.
    Build it in the strategy's scope, like the student.
    """
    keras = import_keras()
    frozen = keras.models.clone_model(teacher)
    frozen.set_weights(teacher.get_weights())
    frozen.trainable = False
    targets = keras.Model(frozen.inputs, [_output_of(frozen, p.teacher_layer) for p in pairs], name="distill_teacher_features")
    inputs = student.inputs
    teacher_features = targets(inputs if len(inputs) > 1 else inputs[0], training=False)
    teacher_features = teacher_features if isinstance(teacher_features, list) else [teacher_features]
    # Dense on the channel axis is a 1x1 convolution (any spatial rank).
    projected = [
        keras.layers.Dense(p.teacher_channels, name=f"distill_proj_{i}")(_output_of(student, p.student_layer))
        for i, p in enumerate(pairs)
    ]
    # The loss is added by a layer on the output path (it passes the outputs through): no tf ops
    # on Keras tensors, whose auto-named TFOpLambda layers would shift other models' layer names.
    outputs = _feature_matching_layer(keras)(weight, len(student.outputs), name="distill_feature_matching")(
        list(student.outputs) + projected + teacher_features
    )
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=f"{student.name}_distill")


_FEATURE_MATCHING = None


def _feature_matching_layer(keras):
    """The Keras layer class (built once, lazily: no Keras import at module import)."""
    global _FEATURE_MATCHING
    if _FEATURE_MATCHING is None:
        tf = import_tf()

        class FeatureMatching(keras.layers.Layer):
            """Identity on the first ``n_outputs`` tensors; adds ``weight`` × the mean MSE between
            the projected student features and the (constant) teacher features as a loss."""

            def __init__(self, weight, n_outputs, **kwargs):
                super().__init__(**kwargs)
                self.weight, self.n_outputs = float(weight), int(n_outputs)

            def call(self, tensors):
                outputs, rest = tensors[: self.n_outputs], tensors[self.n_outputs :]
                half = len(rest) // 2
                terms = [
                    tf.reduce_mean(tf.square(p - tf.stop_gradient(t))) for p, t in zip(rest[:half], rest[half:])
                ]
                self.add_loss(self.weight * tf.add_n(terms) / len(terms))
                return list(outputs)

        _FEATURE_MATCHING = FeatureMatching
    return _FEATURE_MATCHING


def _output_of(model, layer_name):
    layer = model.get_layer(layer_name)
    return layer.get_output_at(len(layer._inbound_nodes) - 1) if len(layer._inbound_nodes) > 1 else layer.output


# --------------------------------------------------------------------------- checkpoints


class TrainingCheckpoint:
    """Resumable training for ``train_to_match``, saved into ``directory`` after every evaluation.

    The training model's weights and the optimizer's variables (Adam moments, step count) go into
    a ``tf.train.Checkpoint`` (``ckpt-<step>``, the last ``keep`` kept); the loop's state (history,
    patience counter, learning rate) into ``loop-<step>.json`` and its best weights so far into
    ``best-<step>.npz``, written before the checkpoint that names them. (Plain files, not
    checkpoint variables: under a multi-worker strategy every variable created during ``fit`` is
    a mirrored one, and string tensors cannot be broadcast.)

    ``signature`` describes the run (architecture, loss, batch size, seed...): a directory that
    holds a checkpoint of a different run is refused rather than loaded into the wrong model.
    """

    def __init__(self, directory, signature: dict, keep: int = 2):
        self.directory = Path(directory)
        self.signature = hashlib.sha256(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.keep = keep
        self.resumed_from = None
        self._manager = None

    def _checkpoint_manager(self, model):
        tf = import_tf()
        if self._manager is None:
            ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
            self._manager = tf.train.CheckpointManager(ckpt, str(self.directory), max_to_keep=self.keep)
        return self._manager

    def restore(self, model) -> dict | None:
        tf = import_tf()
        latest = tf.train.latest_checkpoint(str(self.directory))
        if latest is None:
            return None
        meta_path = self.directory / "run.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if meta.get("signature") != self.signature:
            raise OptionError(
                f"--checkpoint-dir {self.directory} holds a checkpoint of a different run (other model, student or "
                "training settings): give an empty directory, or the same options as the run that wrote it"
            )
        step = int(latest.rsplit("-", 1)[-1])
        model.optimizer.build(model.trainable_variables)  # slots exist before their values load
        self._checkpoint_manager(model).checkpoint.restore(latest).assert_existing_objects_matched()
        state = json.loads((self.directory / f"loop-{step}.json").read_text())
        best = self.directory / f"best-{step}.npz"
        if best.exists():
            with np.load(best) as f:
                state["best_weights"] = [f[f"w{i}"] for i in range(len(f.files))]
        else:
            state["best_weights"] = None
        self.resumed_from = step
        return state

    def save(self, model, state: dict) -> None:
        import io

        from gencompress.artifacts import write_bytes_atomic

        step = state["step"]
        manager = self._checkpoint_manager(model)
        if not (self.directory / "run.json").exists():
            write_bytes_atomic(self.directory / "run.json", json.dumps({"signature": self.signature}).encode())
        plain = {k: v for k, v in state.items() if k != "best_weights"}
        write_bytes_atomic(self.directory / f"loop-{step}.json", json.dumps(plain).encode())
        if state.get("best_weights") is not None:
            buf = io.BytesIO()
            np.savez(buf, **{f"w{i}": w for i, w in enumerate(state["best_weights"])})
            write_bytes_atomic(self.directory / f"best-{step}.npz", buf.getvalue())
        manager.save(checkpoint_number=step)
        kept = {int(c.rsplit("-", 1)[-1]) for c in manager.checkpoints}
        for old in list(self.directory.glob("loop-*.json")) + list(self.directory.glob("best-*.npz")):
            if int(old.stem.split("-")[1]) not in kept:
                old.unlink(missing_ok=True)


# --------------------------------------------------------------------------- training


def train_student(
    student,
    teacher,
    source,
    held,
    output_range,
    finetune,
    *,
    feature_weight: float = 0.0,
    strategy=None,
    checkpoint: TrainingCheckpoint | None = None,
    progress: bool = True,
    callbacks=(),
):
    """Train tf-keras ``student`` (built in ``strategy.scope()`` when a strategy is given) to
    reproduce frozen ``teacher`` with ``finetune.train_to_match``. Returns
    ``(FinetuneResult, feature pairs)``; ``student`` ends with the best held-out weights."""
    from gencompress.compress.finetune import train_to_match

    pairs = feature_pairs(teacher, student) if feature_weight > 0 else []
    if feature_weight > 0 and not pairs:
        raise UnsupportedModelError("--feature-loss: teacher and student share no intermediate spatial size to match")
    model = student
    if pairs:
        with _scope(strategy):
            model = training_model(student, teacher, pairs, feature_weight)
    result = train_to_match(
        model, teacher, source, held, output_range, finetune,
        callbacks=callbacks, progress=progress, strategy=strategy, checkpoint=checkpoint,
    )
    return result, pairs


def plain_copy(keras_model):
    """The same model with ordinary variables: no distribution-strategy variables, no layers
    shared with a training wrapper. What is saved and converted."""
    keras = import_keras()
    copy = keras.models.clone_model(keras_model)
    copy.set_weights(keras_model.get_weights())
    return copy


# --------------------------------------------------------------------------- the command


def distill(
    teacher,
    options,
    config: DistillConfig,
    finetune,
    output_dir,
    *,
    then=(),
    student=None,
    strategy=None,
    checkpoint_dir=None,
    command: str = "distill",
    progress: bool = True,
    callbacks=(),
    log=lambda msg: None,
) -> dict:
    """The ``gencompress distill`` command: train a student of ``teacher`` (a ``LoadedModel``) and
    export and measure both.

    The student is derived from the teacher by ``config.width``/``config.depth``, or is
    ``student`` (a ``LoadedModel`` of an architecture with the teacher's inputs and outputs,
    trained from its current weights). Writes the teacher's float32 artifacts (the reference),
    ``<stem>-student.h5|.keras``, the student's float32 and ``then`` artifacts (int8 through the
    fidelity guard when ``options.min_psnr`` > 0; ``qat``: quantization-aware training of the
    student against the teacher, ``<stem>-student-qat.int8.*``), ``samples.png`` for image outputs and the
    report with a ``distillation`` section. Every PSNR is against the teacher on the held-out set;
    the student's artifacts are graded against ``options.min_psnr``.
    """
    from gencompress.compress.finetune import training_sources
    from gencompress.report.render import write_report
    from gencompress.workflow import add_artifact, build_artifact, build_artifacts, make_report, prepare

    if teacher.keras_model is None:
        raise UnsupportedModelError(
            f"{teacher.path} is a plain SavedModel (no Keras layers): distillation needs a Keras teacher (.h5, .keras or a Keras SavedModel)"
        )
    if student is not None and (config.width is not None or config.depth < 1.0):
        raise OptionError("--student is the student's architecture: give it or --width/--depth, not both")
    if student is None and config.width is None:
        raise OptionError("give a --width for the student, or a --student architecture")
    if finetune.steps < 1:
        raise OptionError("distillation trains the student: --steps must be at least 1")
    from gencompress.converters import PRECISIONS

    unknown = [p for p in then if p not in PRECISIONS and p != "qat"]
    if unknown:
        raise OptionError(f"--then: unknown {', '.join(unknown)} (choose from {', '.join(PRECISIONS)}, qat)")
    import_tf()
    output_dir = Path(output_dir)
    if not _is_chief(strategy):  # every worker trains; each writes its own files
        task = strategy.cluster_resolver.task_id
        output_dir = output_dir / f"worker-{task}"
        checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"worker-{task}"

    # The student first: architecture errors before anything is written.
    with _scope(strategy):
        if student is None:
            student_keras, plan = derive_student(teacher.keras_model, config, seed=options.seed)
        else:
            check_student(teacher, student)
            student_keras, plan = plain_copy(student.keras_model), None
    if config.feature_weight > 0 and not feature_pairs(teacher.keras_model, student_keras):
        raise UnsupportedModelError("--feature-loss: teacher and student share no intermediate spatial size to match")

    session = prepare(teacher, options, output_dir)
    for fmt in options.formats:
        add_artifact(session, fmt, "float32", build_artifact(session, fmt, "float32"))

    finetune = dataclasses.replace(finetune, seed=options.seed)
    source, val = training_sources(teacher, session.calibration, finetune.batch_size, options.seed, session.options.eval_samples)
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = TrainingCheckpoint(checkpoint_dir, _run_signature(teacher, student_keras, config, finetune, session.options))
    result, pairs = train_student(
        student_keras, teacher.keras_model, source, val, session.output_range, finetune,
        feature_weight=config.feature_weight, strategy=strategy, checkpoint=checkpoint,
        progress=progress, callbacks=callbacks,
    )
    trained = plain_copy(student_keras)
    path = save_keras_atomic(trained, derived_model_path(teacher, output_dir, "student"))
    base = student if student is not None else teacher
    student_loaded = dataclasses.replace(
        base, keras_model=trained, path=str(path), format="h5" if path.suffix == ".h5" else "keras",
        params=int(trained.count_params()),
    )
    # The same session (held-out set, the teacher's outputs as reference, its float sizes)
    # around the student: artifacts <stem>-student.<precision>.<ext>, PSNR against the teacher.
    derived = dataclasses.replace(session, model=student_loaded, artifacts=[], failures=[])
    build_artifacts(derived, ["float32"] + [p for p in then if p not in ("float32", "qat")], log, "train longer or widen the student")
    qat = None
    if "qat" in then:
        qat = _student_qat(derived, trained, teacher.keras_model, finetune, progress, log)
    for a in derived.artifacts:
        a["variant"] = "student-qat" if a.get("variant") == "qat" else "student"
        if options.min_psnr > 0:
            psnr = a["fidelity"]["psnr_db"]
            a["passed"] = bool(psnr is not None and psnr >= options.min_psnr)
    session.artifacts.extend(derived.artifacts)
    session.failures.extend({**f, "variant": "student"} for f in derived.failures)
    samples = write_samples(teacher, student_loaded, session.evaluation, session.output_range, output_dir / "samples.png")

    report = make_report(session, command)
    report["distillation"] = distillation_section(
        teacher, student_loaded, plan, config, finetune, result, pairs, session.artifacts, strategy, checkpoint, samples,
        student_source=None if student is None else student.path,
    )
    if qat is not None:
        report["distillation"]["qat"] = qat
    write_report(report, output_dir, [distillation_markdown(report["distillation"])])
    return report


def _student_qat(derived, trained, teacher_keras, finetune, progress, log) -> dict:
    """``--then qat``: quantization-aware training of the trained student (``compress.qat``),
    fine-tuned against the *teacher*, written as ``<stem>-student-qat.int8.*``."""
    from gencompress.compress.finetune import FinetuneConfig
    from gencompress.compress.qat import DEFAULT_LEARNING_RATE, DEFAULT_STEPS, add_qat_artifacts

    qat_finetune = FinetuneConfig(
        steps=DEFAULT_STEPS, learning_rate=DEFAULT_LEARNING_RATE, batch_size=finetune.batch_size,
        eval_every=finetune.eval_every, patience=finetune.patience, seed=finetune.seed,
    )
    return add_qat_artifacts(derived, trained, qat_finetune, teacher=teacher_keras, tag="qat", progress=progress, log=log)


def _run_signature(teacher, student_keras, config, finetune, options) -> dict:
    return {
        "teacher": [teacher.path, teacher.params],
        "student": student_keras.to_json(),
        "feature_weight": config.feature_weight,
        "finetune": {k: v for k, v in dataclasses.asdict(finetune).items() if k not in ("steps", "patience", "min_steps")},
        "data": [options.calibration, options.calibration_samples, options.eval_samples, options.seed],
    }


# --------------------------------------------------------------------------- samples and report


def write_samples(teacher, student, evaluation, output_range, path: Path, n: int = 16) -> str | None:
    """A PNG of the teacher's and the student's first output on the same ``n`` held-out inputs:
    rows of teacher samples, each followed by the student's row. ``None`` for non-image outputs."""
    import io

    from PIL import Image

    from gencompress.artifacts import write_bytes_atomic

    feeds = {k: v[:n] for k, v in evaluation.arrays.items()}
    t, s = teacher.predict(feeds)[0], student.predict(feeds)[0]
    if t.ndim != 4 or t.shape[-1] not in (1, 3):
        return None
    lo, hi = output_range
    cols = min(8, len(t))
    pairs = math.ceil(len(t) / cols)
    h, w, c = t.shape[1:]
    scale = max(1, 64 // max(h, w))
    pad = 2
    canvas = np.full((pairs * (2 * (h * scale + pad) + 2 * pad) + pad, cols * (w * scale + pad) + pad, c), 255, np.uint8)
    for i in range(len(t)):
        r, col = divmod(i, cols)
        for j, batch in enumerate((t, s)):
            img = np.clip((batch[i] - lo) / (hi - lo), 0.0, 1.0)
            img = np.kron(img, np.ones((scale, scale, 1)))
            y0 = pad + r * (2 * (h * scale + pad) + 2 * pad) + j * (h * scale + pad)
            x0 = pad + col * (w * scale + pad)
            canvas[y0 : y0 + h * scale, x0 : x0 + w * scale] = np.round(img * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(buf, format="PNG", optimize=True)
    write_bytes_atomic(path, buf.getvalue())
    return str(path)


def distillation_section(
    teacher, student, plan, config, finetune, result, pairs, artifacts, strategy, checkpoint, samples, student_source=None
) -> dict:
    teachers = {(a["format"], a["precision"]): a for a in artifacts if not a.get("variant")}
    rows = []
    for a in artifacts:
        if a.get("variant") not in ("student", "student-qat"):
            continue
        base = teachers.get((a["format"], "float32"))
        rows.append(
            {
                "format": a["format"],
                "precision": a["precision"] + (" (qat)" if a["variant"] == "student-qat" else ""),
                "teacher_size_bytes": base["size_bytes"],
                "student_size_bytes": a["size_bytes"],
                "size_ratio": round(a["size_bytes"] / base["size_bytes"], 4),
                "teacher_p50_ms": base["latency_ms"]["p50"],
                "student_p50_ms": a["latency_ms"]["p50"],
                "latency_ratio": round(a["latency_ms"]["p50"] / base["latency_ms"]["p50"], 4) if base["latency_ms"]["p50"] else None,
                "psnr_db": a["fidelity"]["psnr_db"],
                "ssim": a["fidelity"]["ssim"],
                "chosen": a.get("fallback", {}).get("chosen"),
            }
        )
    return {
        "student_model": student.path,
        "student_source": student_source or "derived",
        "teacher_params": int(teacher.params),
        "student_params": int(student.params),
        "params_ratio": round(student.params / teacher.params, 4) if teacher.params else None,
        "width": config.width,
        "depth": config.depth,
        "resized_layers": plan.resized if plan else [],
        "dropped_blocks": plan.dropped_blocks if plan else [],
        "droppable_blocks": plan.droppable_blocks if plan else None,
        "loss": finetune.loss,
        "feature_loss": {"weight": config.feature_weight, "pairs": [p.to_dict() for p in pairs]} if config.feature_weight > 0 else None,
        "finetune": result.summary(),
        "final_psnr_db": None if result.final_psnr_db is None else round(float(result.final_psnr_db), 3),
        "batch_size": finetune.batch_size,
        "learning_rate": finetune.learning_rate,
        "distribute": strategy_info(strategy),
        "checkpoint": None if checkpoint is None else {"dir": str(checkpoint.directory), "resumed_from_step": checkpoint.resumed_from},
        "side_by_side": rows,
        "samples": samples,
    }


def distillation_markdown(d: dict) -> str:
    ft = d["finetune"]
    source = f"width {d['width']:g}" if d["student_source"] == "derived" else f"`{d['student_source']}`"
    lines = [
        "",
        "## Distillation",
        "",
        f"- student: {source}" + (f", depth {d['depth']:g}" if d["depth"] < 1 else "") + f" → `{d['student_model']}`",
        f"- parameters: teacher {d['teacher_params']:,}, student {d['student_params']:,} ({_pct(d['params_ratio'])})",
    ]
    if d["resized_layers"]:
        lines.append("- resized: " + ", ".join(f"{r['name']} {r['teacher']}→{r['student']}" for r in d["resized_layers"]))
    if d["dropped_blocks"]:
        lines.append("- dropped blocks: " + "; ".join(" + ".join(b) for b in d["dropped_blocks"]))
    fl = d["feature_loss"]
    lines.append(
        f"- loss: {d['loss']} on the outputs"
        + (f" + {fl['weight']:g} × feature matching ({', '.join(p['teacher_layer'] + '↔' + p['student_layer'] for p in fl['pairs'])})" if fl else "")
    )
    lines.append(
        f"- training: {ft['steps_run']} steps in {ft['seconds']} s (batch {d['batch_size']}), held-out PSNR against the teacher "
        f"{_db(ft['initial_psnr_db'])} → best {_db(ft['best_psnr_db'])} dB at step {ft['best_step']}"
        + (" (stopped early)" if ft["stopped_early"] else "")
    )
    if d["distribute"]:
        lines.append(f"- distributed: {d['distribute']['strategy']}, {d['distribute']['replicas']} replicas")
    if d["checkpoint"]:
        resumed = d["checkpoint"]["resumed_from_step"]
        lines.append(f"- checkpoints: `{d['checkpoint']['dir']}`" + (f" (resumed at step {resumed})" if resumed is not None else ""))
    if d["samples"]:
        lines.append(f"- samples: `{Path(d['samples']).name}` (rows: teacher, then student, same inputs)")
    lines += [
        "",
        "| format | student precision | size teacher → student | p50 ms teacher → student | PSNR vs teacher | SSIM |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["side_by_side"]:
        lines.append(
            f"| {r['format']} | {r['precision']}{' (' + r['chosen'] + ')' if r['chosen'] not in (None, r['precision']) else ''} | "
            f"{r['teacher_size_bytes']:,} → {r['student_size_bytes']:,} ({_pct(r['size_ratio'])}) | "
            f"{r['teacher_p50_ms']:.3f} → {r['student_p50_ms']:.3f} ({_pct(r['latency_ratio'])}) | "
            f"{_db(r['psnr_db'])} | {_ssim(r['ssim'])} |"
        )
    lines += ["", "Sizes and latencies of the student's artifacts are compared with the teacher's float32 artifact of the same format.", ""]
    return "\n".join(lines)


def distillation_summary(report: dict) -> str:
    """Terminal lines after the artifact table."""
    d = report["distillation"]
    ft = d["finetune"]
    lines = [
        f"student: {d['student_params']:,} parameters, {_pct(d['params_ratio'])} of the teacher's {d['teacher_params']:,}",
        f"training: {ft['steps_run']} steps in {ft['seconds']} s, held-out PSNR against the teacher {_db(ft['initial_psnr_db'])} -> "
        f"best {_db(ft['best_psnr_db'])} dB" + (" (stopped early)" if ft["stopped_early"] else ""),
    ]
    lines += [
        f"{r['format']} {r['precision']}: size {_pct(r['size_ratio'])}, p50 {_pct(r['latency_ratio'])} of the teacher's float32; "
        f"PSNR {_db(r['psnr_db'])} dB vs the teacher"
        for r in d["side_by_side"]
    ]
    lines += [f"note: {Path(a['path']).name}: {n}" for a in report["artifacts"] for n in a.get("notes", [])]
    if d["samples"]:
        lines.append(f"samples: {d['samples']}")
    lines.append(f"student model: {d['student_model']}")
    return "\n".join(lines)


def _db(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ssim(x) -> str:
    return "-" if x is None else f"{x:.4f}"
