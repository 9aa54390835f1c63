"""Students made from the teacher: narrower (``width``) and shallower (``depth``), or checked
when the user brings one."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gencompress.compress.channels.graph import (
    CHANNEL_PRESERVING,
    ELEMENTWISE,
    WIDTH_PARAM,
    ChannelGraph,
    Node,
    graph_nodes,
    tensor_dims,
    tensor_key,
)
from gencompress.config import DistillConfig
from gencompress.errors import OptionError, UnsupportedModelError
from gencompress.tfenv import import_keras

__all__ = ["StudentPlan", "derive_student", "check_student", "graph_nodes", "tensor_dims", "tensor_key"]


@dataclass
class StudentPlan:
    """How a derived student differs from its teacher: resized layers and dropped blocks."""

    width: float | None
    depth: float
    resized: list[dict] = field(default_factory=list)
    dropped_blocks: list[list[str]] = field(default_factory=list)
    droppable_blocks: int = 0
    sizes: dict = field(default_factory=dict)  # group root -> new channel count (what --init teacher keeps)


def _width_plan(model, width: float) -> tuple[dict, list[dict], dict]:
    """Per-layer config changes that scale ``model``'s hidden channels by ``width``
    (``ChannelGraph``: the planner channel pruning uses too). A group is scaled if one of its
    producers is a Dense/Conv/Embedding layer, and kept when it touches a model input or output
    or a layer this does not understand. A Dense feeding a Reshape produces the Reshape's element
    count: the Reshape's channels are scaled and the Dense's units follow; Flatten and channel
    Concatenate sizes follow their inputs. Returns ``({layer name: {config key: value}}, rows
    describing each change, {group root: new size})``.
    """
    graph = ChannelGraph(model)
    new = graph.solve(width)
    changes, rows = graph.changes(model, new)
    return changes, rows, new


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
    changes, rows, plan.sizes = _width_plan(base, width)
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

    def only_consumer(t) -> Node | None:
        c = consumers.get(tensor_key(t), [])
        return c[0] if len(c) == 1 and tensor_key(t) not in model_outputs else None

    def plain(n) -> bool:
        return len(n.inputs) == 1 and len(n.outputs) == 1

    blocks, used = [], set()
    for n in nodes:
        if n.cls in ELEMENTWISE and n.cls in ("Add",) and len(n.inputs) == 2 and tensor_key(n.outputs[0]) not in model_outputs:
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
        if n.cls not in WIDTH_PARAM or not plain(n) or n.layer.name in used:
            continue
        if tensor_dims(n.inputs[0]) != tensor_dims(n.outputs[0]):
            continue
        chain, t = [n], n.outputs[0]
        while True:
            nxt = only_consumer(t)
            if nxt is None or nxt.cls not in CHANNEL_PRESERVING or not plain(nxt) or tensor_dims(nxt.outputs[0]) != tensor_dims(t):
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
