"""Which channels matter to the teacher's outputs.

``taylor`` (the default): removing channel c changes the outputs by about d outputs / d mask_c
(a first-order Taylor expansion in the channel's mask, ``probe.Probe``), so the teacher-matching
loss it causes is about E‖d f(x) / d m_c‖² (the Gauss-Newton diagonal of that loss in the masks).
One backward pass per batch gives d<f(x), r>/d m_c per sample for a random direction r, whose
square has that expectation: averaged over samples, it is each channel's predicted damage.
``l1``: the L1 norm of the weights that make the channel (Li et al., 2017), the classic that
ignores what the channel does downstream, kept to measure against.
"""

from __future__ import annotations

import numpy as np

from gencompress.compress.channels.graph import ChannelGraph, Group, tensor_key
from gencompress.compress.channels.slicing import weight_axes, weight_name
from gencompress.interrupts import check

IMPORTANCE = ("taylor", "l1")


def taylor_importance(probe, batches, samples: int, seed: int = 0) -> dict:
    """{group root: predicted loss of removing each channel}, from ``samples`` samples of
    ``batches`` (input dicts); output-space directions drawn from a seeded normal."""
    rng = np.random.default_rng([seed, 11])
    totals = [np.zeros(g.channels) for g in probe.groups]
    seen = 0
    shapes = None
    for batch in batches:
        check()  # a stop signal between batches
        n = min(len(next(iter(batch.values()))), samples - seen)
        feeds = {k: v[:n] for k, v in batch.items()}
        if shapes is None:
            shapes = [o.shape[1:] for o in probe.outputs({k: v[:1] for k, v in feeds.items()})]
        directions = [rng.standard_normal((n,) + s).astype(np.float32) for s in shapes]
        for i, grad in enumerate(probe.mask_gradients(feeds, directions)):
            totals[i] += np.sum(np.square(grad.astype(np.float64)), axis=0)
        seen += n
        if seen >= samples:
            break
    return {g.root: t / max(seen, 1) for g, t in zip(probe.groups, totals)}


def l1_importance(keras_model, graph: ChannelGraph, groups: list[Group]) -> dict:
    """{group root: L1 norm of the weights producing each channel} (Dense units tied to a
    Reshape's channels summed over positions)."""
    graph.kept({})
    out = {g.root: np.zeros(g.channels) for g in groups}
    done = set()
    for node in graph.nodes:
        if node.cls == "InputLayer" or node.layer.name in done or len(node.outputs) != 1:
            continue
        root, factor = graph.source(graph.uf.find(tensor_key(node.outputs[0])))
        if root not in out or not node.layer.weights or graph.uf.find(tensor_key(node.inputs[0])) == graph.uf.find(tensor_key(node.outputs[0])):
            continue
        done.add(node.layer.name)
        channels = node.inputs[0].shape[-1]
        for w in node.layer.weights:
            v = np.abs(np.asarray(w.numpy(), np.float64))
            for axis, (side, _) in weight_axes(node.layer, weight_name(w), v.shape, channels).items():
                if side == "out":
                    per_unit = np.moveaxis(v, axis, -1).reshape(-1, v.shape[axis]).sum(axis=0)
                    out[root] += per_unit.reshape(factor, -1).sum(axis=0)
    return out


def ranking(scores: np.ndarray) -> np.ndarray:
    """Channel indices, most important first (ties: the lower index first, deterministic)."""
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores)))


def top(scores: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` most important channels, sorted by index."""
    return np.sort(ranking(scores)[: max(1, int(n))])
