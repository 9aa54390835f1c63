"""Channel pruning of a Keras generator against its teacher, up to (not including) fine-tuning.

``ChannelPruner(teacher, ...)`` measures once what every later choice needs: which channels
matter (``importance``), what the layers that read them compute in the teacher
(``reconstruct.Reconstruction``), and how much each group alone can lose
(``allocation.Sensitivity``). ``prune(counts)`` then removes the least important channels of
each group, re-fits what reads them, re-estimates the BatchNorm statistics where that helps,
and builds the plain Keras model (``slicing``); ``counts_for(kind, value)`` decides the counts
for a global target. The input model is never modified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from gencompress.compress.channels.allocation import Sensitivity, allocate, ladder_counts
from gencompress.compress.channels.cost import ChannelCost
from gencompress.compress.channels.graph import ChannelGraph
from gencompress.compress.channels.importance import l1_importance, taylor_importance, top
from gencompress.compress.channels.probe import Probe, copy_weights
from gencompress.compress.channels.reconstruct import TAP_FLOATS, Reconstruction, batches_of, batchnorm_after, reestimate_batchnorm
from gencompress.compress.channels.slicing import sliced_model
from gencompress.errors import UnsupportedModelError
from gencompress.progress import Progress
from gencompress.report.metrics import psnr_db

# How many samples each measurement takes: a budget of MACs (the model's cost, not a timing,
# so the same command gives the same model), within bounds. catgan (0.57 G MACs): 350 re-fit,
# 87 importance and 64 sensitivity samples; dlss_sr (15.5 G): 12, 8 and 4.
REFIT_MACS, IMPORTANCE_MACS, SENSITIVITY_MACS = 2e11, 5e10, 2.5e10
REFIT_SAMPLES, IMPORTANCE_SAMPLES, SENSITIVITY_SAMPLES = (8, 1024), (8, 256), (4, 64)


def _samples(budget: float, macs: int, bounds: tuple[int, int]) -> int:
    return int(np.clip(budget / max(macs, 1), *bounds))


@dataclass
class Candidate:
    """One pruned model: the channels kept per group, its cost, and its PSNR against the
    teacher on the held-out samples at each stage before fine-tuning."""

    model: object
    counts: dict
    macs: int
    params: int
    psnr_removed_db: float | None = None  # the channels cut, nothing re-fitted
    psnr_refit_db: float | None = None
    psnr_db: float | None = None  # what it starts fine-tuning at
    batchnorm: str = "kept"  # or "re-estimated"
    refit_layers: list[str] = field(default_factory=list)
    seconds: float = 0.0


class ChannelPruner:
    """Measures ``teacher`` (a flat tf-keras model) once; prunes it to any channel counts."""

    def __init__(self, teacher, source, held, output_range, importance: str = "taylor", seed: int = 0, progress=None,
                 sensitivity: bool = True):
        from gencompress.report.macs import count_macs

        keras_model = _functional(teacher)
        self.teacher, self.output_range, self.seed = keras_model, output_range, seed
        self.progress = progress or Progress.silent()
        self.graph = ChannelGraph(keras_model)
        self.groups = self.graph.prunable()
        if not self.groups:
            raise UnsupportedModelError(
                "--structure channels: no channel group of this model can be pruned (every hidden channel is tied to an input "
                "or output, or read by a layer gencompress does not understand)"
            )
        self.cost = ChannelCost(self.graph, self.groups)
        self.macs = count_macs(keras_model).total
        self.probe = Probe(keras_model, self.graph, self.groups)
        self.importance_kind = importance
        self.timings: dict = {}
        n_sens = _samples(SENSITIVITY_MACS, self.macs, SENSITIVITY_SAMPLES)
        self.held = {k: v[:n_sens] for k, v in held.arrays.items()}
        self.reference = self.probe.outputs(self.held)
        self._measure_importance(source)
        self._gather(source)
        self.sensitivity = self._measure_sensitivity() if sensitivity else {}

    def _measure_importance(self, source) -> None:
        start = time.perf_counter()
        n = _samples(IMPORTANCE_MACS, self.macs, IMPORTANCE_SAMPLES)
        with self.progress.phase(f"channels: {self.importance_kind} importance on {n} samples"):
            if self.importance_kind == "l1":
                self.importance = l1_importance(self.teacher, self.graph, self.groups)
            else:
                self.importance = taylor_importance(self.probe, iter(source), n, self.seed)
        self.timings["importance_s"] = round(time.perf_counter() - start, 1)

    def _gather(self, source) -> None:
        start = time.perf_counter()
        n = _samples(REFIT_MACS, self.macs, REFIT_SAMPLES)
        per_sample = sum(int(np.prod(node.inputs[0].shape[1:])) for node in self.graph.nodes if node.cls != "InputLayer" and node.inputs)
        self.batches = batches_of(iter(source), n, TAP_FLOATS, per_sample)
        with self.progress.phase(f"channels: the teacher's activations on {n} samples"):
            self.reconstruction = Reconstruction(self.teacher, self.graph, self.batches, self.seed)
        self.timings["teacher_activations_s"] = round(time.perf_counter() - start, 1)

    def _measure_sensitivity(self) -> dict:
        """Each group alone at each ladder count: the layers reading it re-fitted from the
        teacher's Gram matrices, the output MSE against the teacher."""
        start = time.perf_counter()
        found = {}
        total = sum(len(ladder_counts(g.channels)) for g in self.groups)
        with self.progress.phase("channels: sensitivity of each group", total=total, unit="trial") as phase:
            for g in self.groups:
                curve = Sensitivity(g.channels)
                for n in ladder_counts(g.channels):
                    selection = {g.root: top(self.importance[g.root], n)}
                    curve.kept.append(n)
                    curve.mse.append(self._mse_alone(selection))
                    phase.update(1)
                found[g.root] = curve
        self.timings["sensitivity_s"] = round(time.perf_counter() - start, 1)
        return found

    def _mse_alone(self, selection: dict) -> float:
        kept = self.graph.kept(selection)
        rec = self.reconstruction
        saved = {}
        for name in rec.downstream(set(selection)):
            kin = self.graph.tensor_kept(kept, rec.nodes[name].inputs[0])
            if name in rec.layers and kin is not None:
                layer = self.probe.model.get_layer(name)
                saved[name] = layer.get_weights()
                layer.set_weights(rec.alone(name, kin))
        try:
            return _mse(self.probe.outputs(self.held, selection), self.reference)
        finally:
            for name, w in saved.items():
                self.probe.model.get_layer(name).set_weights(w)

    # ------------------------------------------------------------------ choosing and pruning

    def counts_for(self, kind: str, value: float) -> tuple[dict, bool]:
        """Channels per group for a global target: ``kind`` ``macs``/``params`` (a fraction of
        the original's kept) or ``channels`` (the fraction of prunable channels kept)."""
        return allocate(self.groups, self.sensitivity, self.cost, value, kind)

    def selection(self, counts: dict) -> dict:
        return {g.root: top(self.importance[g.root], counts[g.root]) for g in self.groups if counts.get(g.root, g.channels) < g.channels}

    def prune(self, counts: dict) -> Candidate:
        """The model keeping ``counts`` channels per group: cut, re-fitted, BatchNorm
        statistics re-estimated where that measured better, sliced."""
        start = time.perf_counter()
        selection = self.selection(counts)
        kept = self.graph.kept(selection)
        copy_weights(self.teacher, self.probe.model)  # start from the teacher's weights every time
        cand = Candidate(None, dict(counts), self.cost.macs(counts), self.cost.params(counts))
        cand.psnr_removed_db = self._psnr(self.probe.outputs(self.held, selection))
        def judge(name: str, options: list) -> int:  # the fit that generalizes: measured on the held-out samples
            layer, errors = self.probe.model.get_layer(name), []
            for weights in options:
                layer.set_weights(weights)
                errors.append(_mse(self.probe.outputs(self.held, selection), self.reference))
            return int(np.argmin(errors))

        with self.progress.phase("channels: re-fitting the layers that read pruned channels") as phase:
            cand.refit_layers = self.reconstruction.refit(self.probe, selection, kept, on_layer=phase.describe, judge=judge)
        refit_out = self.probe.outputs(self.held, selection)
        cand.psnr_refit_db = cand.psnr_db = self._psnr(refit_out)
        norms = batchnorm_after(self.graph, set(selection))
        if norms:
            before = {n: self.probe.model.get_layer(n).get_weights() for n in norms}
            reestimate_batchnorm(self.probe, norms, selection, self.batches)
            psnr = self._psnr(self.probe.outputs(self.held, selection))
            if psnr > cand.psnr_refit_db:
                cand.psnr_db, cand.batchnorm = psnr, "re-estimated"
            else:
                for n, w in before.items():
                    self.probe.model.get_layer(n).set_weights(w)
        cand.model = sliced_model(self.teacher, self.graph, selection, weights_from=self.probe.model)
        cand.seconds = round(time.perf_counter() - start, 1)
        return cand

    def _psnr(self, outputs) -> float:
        lo, hi = self.output_range
        return round(psnr_db(_mse(outputs, self.reference), hi - lo), 3)

    def group_rows(self, counts: dict) -> list[dict]:
        """Per group: the layers that make it, channels before and after, its sensitivity."""
        rows = []
        for g in self.groups:
            curve = self.sensitivity.get(g.root, Sensitivity(g.channels))
            lo, hi = self.output_range
            rows.append({
                "layers": list(g.producers),
                "channels": g.channels,
                "kept": int(counts.get(g.root, g.channels)),
                "sensitivity": [
                    {"kept": int(n), "psnr_db": round(psnr_db(m, hi - lo), 2)} for n, m in zip(curve.kept, curve.mse)
                ],
            })
        return rows


def _functional(keras_model):
    """A Sequential read as a functional model (the planner and the probe edit functional configs)."""
    from gencompress.tfenv import import_keras

    keras = import_keras()
    if isinstance(keras_model, keras.Sequential):
        return keras.Model(keras_model.inputs, keras_model.outputs, name=keras_model.name)
    return keras_model


def _mse(outputs, reference) -> float:
    total, count = 0.0, 0
    for o, r in zip(outputs, reference):
        err = np.asarray(o, np.float64) - np.asarray(r, np.float64)
        total, count = total + float(np.sum(err * err)), count + err.size
    return total / max(count, 1)
