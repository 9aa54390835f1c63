"""Resumable training: weights, projections, optimizer state and the loop's own state saved after
every evaluation, so an interrupted run ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from gencompress.errors import OptionError
from gencompress.tfenv import import_tf


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
        self.plan = None  # the run's fine-tuning plan, kept in run.json so a resumed run plans alike
        self._manager = None

    def _checkpoint_manager(self, model):
        tf = import_tf()
        if self._manager is None:
            ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
            self._manager = tf.train.CheckpointManager(ckpt, str(self.directory), max_to_keep=self.keep)
        return self._manager

    def saved_plan(self) -> dict | None:
        """The plan (steps, batch size...) of the run this directory holds, if it is this run's."""
        meta_path = self.directory / "run.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        return meta.get("plan") if meta.get("signature") == self.signature else None

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
            write_bytes_atomic(self.directory / "run.json", json.dumps({"signature": self.signature, "plan": self.plan}).encode())
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
