"""What a choice of channel counts costs: MACs (``report.macs``) and parameters (the weights'
sliced shapes), computed without building the model."""

from __future__ import annotations

import numpy as np

from gencompress.compress.channels.graph import ChannelGraph, Group, tensor_key
from gencompress.compress.channels.slicing import weight_axes, weight_name
from gencompress.report.macs import layer_macs


class ChannelCost:
    """MACs and parameters of ``graph``'s model with ``counts`` ({free root: channels kept})."""

    def __init__(self, graph: ChannelGraph, groups: list[Group]):
        self.graph, self.groups = graph, groups
        graph.kept({})  # settle the groups
        self.nodes = []
        for node in graph.nodes:
            if node.cls == "InputLayer" or not node.inputs or not node.outputs:
                continue
            t_in, t_out = node.inputs[0], node.outputs[0]
            self.nodes.append((node.layer, tuple(t_in.shape[1:]), tuple(t_out.shape[1:]), graph.uf.find(tensor_key(t_in)), graph.uf.find(tensor_key(t_out))))
        self.weights = []  # (weight size, [(root, original channels, share)] the size scales with)
        counted = set()
        for layer, in_shape, _, r_in, r_out in self.nodes:
            if layer.name in counted:
                continue
            counted.add(layer.name)
            for w in layer.weights:
                shape = tuple(w.shape)
                axes = weight_axes(layer, weight_name(w), shape, in_shape[-1] if in_shape else None)
                roots = [(r_in if side == "in" else r_out) for side, _ in axes.values()]
                self.weights.append((int(np.prod(shape, dtype=np.int64)), roots))

    def sizes(self, counts: dict) -> dict:
        """Channels of every group root for ``counts`` (derived groups follow their sources)."""
        g = self.graph
        out = {}

        def of(root):
            if root not in out:
                way = g.derived.get(root)
                if root in counts:
                    out[root] = int(counts[root])
                elif way is None:
                    out[root] = g.size_of[root]
                elif way[0] == "tie":
                    out[root] = way[2] * of(way[1])
                else:
                    out[root] = sum(of(r) for r in way[1])
            return out[root]

        for root in g.size_of:
            of(root)
        return out

    def macs(self, counts: dict) -> int:
        sizes = self.sizes(counts)
        total = 0
        for layer, in_shape, out_shape, r_in, r_out in self.nodes:
            m = layer_macs(layer, in_shape, out_shape, sizes[r_in] if in_shape else None, sizes[r_out] if out_shape else None)
            total += m or 0
        return int(total)

    def params(self, counts: dict) -> int:
        sizes, before = self.sizes(counts), self.graph.size_of
        total = 0.0
        for size, roots in self.weights:
            share = 1.0
            for r in roots:
                share *= sizes[r] / before[r]
            total += size * share
        return int(round(total))

    def channels(self, counts: dict) -> int:
        """Channels kept over the prunable groups."""
        return int(sum(counts.get(g.root, g.channels) for g in self.groups))

