"""Re-fitting what channel removal broke, before any gradient step.

The teacher's side is gathered once (``Reconstruction``): for every Dense/convolution layer at
or after a prunable group's exits, the patches of its inputs at sampled positions (their Gram
matrix, for re-fits of one group at a time) and the teacher's linear outputs there (the
targets). Then:

- ``alone(layer, kept)``: the layer re-fitted for one pruned group, from the teacher's Gram
  matrix alone (its inputs are the teacher's, minus the removed channels): what the sensitivity
  measurement needs, in milliseconds per layer;
- ``refit(probe, selection)``: every layer downstream of the removed channels re-fitted in
  order, each on the inputs the already re-fitted layers before it give (as the pruned model
  computes them), against the teacher's outputs at the same positions: errors do not pile up;
- ``reestimate_batchnorm``: BatchNorm statistics measured again on the pruned model's inputs.
"""

from __future__ import annotations

import numpy as np

from gencompress.compress.channels.graph import ChannelGraph, tensor_key
from gencompress.compress.channels.refit import REFITTABLE, Normal, PatchLayout, WeightedNormal, fit_through, refit_weights, slope
from gencompress.interrupts import check
from gencompress.tfenv import import_keras, import_tf

ROWS_PER_COLUMN = 8  # sampled positions per unknown of a layer's equations (rauzan at 47 % MACs: 2x 24.4 dB, 4x 26.8, 8x 28.4 before fine-tuning)
MIN_ROWS, MAX_ROWS = 4096, 65536
TAP_FLOATS = 5e7  # input values of the tapped layers held at once (a batch is cut to fit)
SATURATING = {"tanh", "sigmoid"}
WEIGHTED_OUTPUTS = 16  # a layer with more outputs than this is fitted unweighted (one system per output)
THIN_ROWS = 16384


class Reconstruction:
    """The teacher's activations the re-fits need, on ``batches`` (input dicts, the same each
    time they are used: the re-fit inputs)."""

    def __init__(self, teacher, graph: ChannelGraph, batches: list[dict], seed: int = 0):
        self.teacher, self.graph, self.batches = teacher, graph, batches
        self.rng = np.random.default_rng([seed, 13])
        self.nodes = {n.layer.name: n for n in graph.nodes if n.index == 0}
        self.layers = {}  # name -> PatchLayout of the layers that can be re-fitted
        self.unsupported = []
        for name in self.downstream(graph.free):
            node = self.nodes[name]
            layout = PatchLayout(node.layer, tuple(node.inputs[0].shape[1:]), tuple(node.outputs[0].shape[1:]))
            x = self._teacher_inputs([name], batches[0])[0][:4]
            if layout.check(x, self.rng):
                self.layers[name] = layout
            else:
                self.unsupported.append(name)
        self._gather()

    def downstream(self, roots) -> list[str]:
        """Re-fittable layers (in the model's order) that read channels of ``roots`` or values
        computed from them."""
        exits = {(layer, call) for layer, call, _, root, _ in self.graph.exits() if root in roots}
        changed, found = set(), []
        for n in self.graph.nodes:
            hit = (n.layer.name, n.index) in exits or any(tensor_key(t) in changed for t in n.inputs)
            if not hit:
                continue
            changed.update(tensor_key(t) for t in n.outputs)
            if n.cls in REFITTABLE and n.index == 0 and len(n.inputs) == 1 and len(n.layer._inbound_nodes) == 1:
                found.append(n.layer.name)
        return found

    def _teacher_inputs(self, names, feeds) -> list[np.ndarray]:
        keras = import_keras()
        model = keras.Model(self.teacher.inputs, [self.teacher.get_layer(n).get_input_at(0) for n in names])
        xs = [feeds[k] for k in self.teacher.input_names]
        out = model(xs if len(xs) > 1 else xs[0], training=False)
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    def saturation(self, name: str) -> str | None:
        """``tanh``/``sigmoid`` when ``name``'s output goes through one (its own activation, or an
        ``Activation`` layer right after it) and it has few output channels: its re-fit is then
        weighted by the activation's slope (``refit.WeightedNormal``)."""
        node = self.nodes[name]
        if self.layers[name].outputs > WEIGHTED_OUTPUTS:
            return None
        own = node.layer.get_config().get("activation")
        if own in SATURATING:
            return own
        readers = [n for n in self.graph.nodes if any(tensor_key(t) == tensor_key(node.outputs[0]) for t in n.inputs)]
        if own == "linear" and len(readers) == 1 and readers[0].cls == "Activation":
            after = readers[0].layer.get_config().get("activation")
            return after if after in SATURATING else None
        return None

    def _normal(self, name: str, columns: int):
        lay = self.layers[name]
        if name in self.slopes:
            return WeightedNormal(columns, lay.has_bias, lay.outputs)
        return Normal(columns, lay.has_bias, lay.outputs)

    def _gather(self) -> None:
        """Per layer: sampled positions, the Gram matrix of its full patches, the targets (and
        their slope weights under a saturating activation)."""
        names = list(self.layers)
        n = sum(len(next(iter(b.values()))) for b in self.batches)
        self.where, self.targets, self.row_weights = ({k: [] for k in names} for _ in range(3))
        self.slopes = {k: a for k in names if (a := self.saturation(k)) is not None}
        # Gauss-Newton keeps its rows in memory: at most THIN_ROWS of them
        self.thin = {k: max(1, -(-self._rows(k) // THIN_ROWS)) for k in self.slopes}
        self.weights = {k: self.teacher.get_layer(k).get_weights() for k in names}
        self.normal = {k: self._normal(k, self.layers[k].taps * self.layers[k].channels) for k in names}
        if not names:
            return
        for batch in self.batches:
            check()  # a stop signal between batches (a batch of a large model takes seconds)
            xs = self._teacher_inputs(names, batch)
            for k, x in zip(names, xs):
                lay = self.layers[k]
                where = lay.sample_positions(len(x), max(1, -(-self._rows(k) * len(x) // n)), self.rng)
                p = lay.patches(x, where)
                y = lay.linear(p, self.weights[k]).astype(np.float32)
                self.where[k].append(where)
                self.targets[k].append(y)
                if k in self.slopes:
                    self.row_weights[k].append(_slope_squared(self.slopes[k], y))
                    self.normal[k].add(p, None, self.row_weights[k][-1])
                else:
                    self.normal[k].add(p)

    def _rows(self, name: str) -> int:
        lay = self.layers[name]
        return int(np.clip(ROWS_PER_COLUMN * (lay.taps * lay.channels + 1), MIN_ROWS, MAX_ROWS))

    def alone(self, name: str, kept: np.ndarray | None) -> list[np.ndarray]:
        """``name``'s weights re-fitted to the teacher's outputs from the kept input channels
        of the teacher's own inputs (the teacher's Gram matrix, no forward pass)."""
        lay, w = self.layers[name], self.weights[name]
        wb = lay.kernel_matrix(w[0])
        if lay.has_bias:
            wb = np.concatenate([wb, w[1][None, :]], axis=0)
        normal = self.normal[name]
        rhs = normal.teacher_rhs(wb) if name in self.slopes else normal.gram @ wb
        solution = normal.solve(rhs, lay.columns(kept))
        return refit_weights(lay, w, solution, kept)

    def refit(self, probe, selection: dict, kept: dict, on_layer=None, judge=None) -> list[str]:
        """Re-fit, in order, every layer downstream of the channels ``selection`` removes, on
        the probe's own (masked, already re-fitted) inputs; the probe's weights change. Under a
        tanh/sigmoid the plain and the Gauss-Newton fit are both made and ``judge`` (``[weights
        of the layer] -> index``, measuring on samples of its own) picks one; without a judge,
        Gauss-Newton. Returns the layers re-fitted (``name (gauss-newton)`` where that won)."""
        roots = {r for r, idx in selection.items() if len(idx) < self._channels(r)}
        done = []
        for name in self.downstream(roots):
            if name not in self.layers:
                continue
            lay = self.layers[name]
            kin = self.graph.tensor_kept(kept, self.nodes[name].inputs[0])
            normal = Normal(len(lay.columns(kin)), lay.has_bias, lay.outputs)
            taps = probe.taps([name])
            kept_rows = []  # under a saturating activation: the rows, for Gauss-Newton
            for batch, where, y in zip(self.batches, self.where[name], self.targets[name]):
                check()
                xs = [batch[k] for k in probe.input_names] + probe.masks(selection, len(next(iter(batch.values()))))
                p = lay.patches(np.asarray(taps(xs, training=False)), where, kin)
                if name in self.slopes:
                    kept_rows.append((p[::self.thin[name]], y[::self.thin[name]]))
                else:
                    normal.add(p, y)
            layer = probe.model.get_layer(name)
            if name in self.slopes:
                fits = fit_through(self.slopes[name], np.concatenate([p for p, _ in kept_rows]), np.concatenate([y for _, y in kept_rows]),
                                   lay.has_bias)
                options = [refit_weights(lay, layer.get_weights(), f, kin) for f in fits]
                pick = judge(name, options) if judge is not None else 1
                layer.set_weights(options[pick])
                done.append(name + (" (gauss-newton)" if pick == 1 else ""))
            else:
                layer.set_weights(refit_weights(lay, layer.get_weights(), normal.solve(), kin))
                done.append(name)
            if on_layer is not None:
                on_layer(name)
        return done

    def _channels(self, root) -> int:
        return self.graph.size_of[root]


def _slope_squared(activation: str, y: np.ndarray) -> np.ndarray:
    """The squared slope of ``activation`` at pre-activation values ``y`` (with a floor: a row
    deep in saturation still counts a little)."""
    return (np.maximum(slope(activation, y.astype(np.float64)), 1e-3) ** 2).astype(np.float32)


def batchnorm_after(graph: ChannelGraph, roots) -> list[str]:
    """BatchNorm layers whose inputs are computed from channels of ``roots``."""
    exits = {(layer, call) for layer, call, _, root, _ in graph.exits() if root in roots}
    changed, found = set(), []
    for n in graph.nodes:
        if (n.layer.name, n.index) in exits or any(tensor_key(t) in changed for t in n.inputs):
            changed.update(tensor_key(t) for t in n.outputs)
            if n.cls == "BatchNormalization" and n.index == 0 and (n.layer.name, n.index) not in exits:
                found.append(n.layer.name)
    return found


def reestimate_batchnorm(probe, names: list[str], selection: dict, batches: list[dict]) -> None:
    """Moving mean and variance of each BatchNorm in ``names`` measured on the probe's inputs
    to it (with ``selection`` removed), in order: each sees the ones before it re-estimated."""
    tf = import_tf()
    for name in names:
        taps = probe.taps([name])
        total, square, count = 0.0, 0.0, 0
        for batch in batches:
            xs = [batch[k] for k in probe.input_names] + probe.masks(selection, len(next(iter(batch.values()))))
            x = np.asarray(taps(xs, training=False), np.float64)
            flat = x.reshape(-1, x.shape[-1])
            total, square, count = total + flat.sum(0), square + (flat * flat).sum(0), count + len(flat)
        layer = probe.model.get_layer(name)
        mean = total / count
        var = np.maximum(square / count - mean * mean, 0.0)
        layer.moving_mean.assign(tf.constant(mean, layer.moving_mean.dtype))
        layer.moving_variance.assign(tf.constant(var, layer.moving_variance.dtype))


def batches_of(source, samples: int, batch_floats: float, per_sample_floats: int) -> list[dict]:
    """``samples`` samples of ``source`` (an iterable of input dicts) re-cut into batches small
    enough that the tapped activations stay under ``batch_floats`` values."""
    size = int(max(1, min(64, batch_floats // max(per_sample_floats, 1))))
    pool, have = [], 0
    for batch in source:
        pool.append(batch)
        have += len(next(iter(batch.values())))
        if have >= samples:
            break
    merged = {k: np.concatenate([b[k] for b in pool])[:samples] for k in pool[0]}
    return [{k: v[i : i + size] for k, v in merged.items()} for i in range(0, samples, size)]
