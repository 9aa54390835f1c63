"""Data-free fine-tuning: train a compressed student to reproduce the original model's outputs.

A generator has no labels and its users often have no training data at hand, but the original
float model is the perfect teacher: feed both models the same inputs (fresh noise latents, or
the user's own inputs) and train the student to output what the teacher outputs. Pruning uses
this loop to recover quality; quantization-aware training and distillation reuse it.

The loop is ``model.fit`` on a stream of ``(inputs, teacher outputs)`` batches, cut into
"epochs" of ``eval_every`` steps: at each epoch end the student is scored on a held-out set
(PSNR against the teacher's outputs, computed once), the best weights are kept, and training
stops when the PSNR has not improved for ``patience`` evaluations. Keras callbacks work as in any
``fit`` call (tfmot's ``UpdatePruningStep`` included), and a ``tf.distribute`` strategy can be
given: the caller builds the student (and its variables) in ``strategy.scope()``; the optimizer
is created and the model compiled here, in the same scope.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from gencompress.calibration.sources import CalibrationSet, noise_set
from gencompress.config import TrainingConfig
from gencompress.errors import OptionError
from gencompress.tfenv import import_keras, import_tf

@dataclass
class FinetuneResult:
    """What the loop did. ``history``: one entry per evaluation (step 0 is the start)."""

    history: list[dict] = field(default_factory=list)
    best_psnr_db: float | None = None
    best_step: int | None = None
    initial_psnr_db: float | None = None
    final_psnr_db: float | None = None
    steps_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    def summary(self) -> dict:
        return {
            "steps_run": self.steps_run,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 1),
            "initial_psnr_db": _r(self.initial_psnr_db),
            "best_psnr_db": _r(self.best_psnr_db),
            "best_step": self.best_step,
            "history": [{"step": h["step"], "loss": h["loss"], "psnr_db": _r(h["psnr_db"])} for h in self.history],
        }


# --------------------------------------------------------------------------- input streams


class NoiseBatches:
    """Fresh seeded noise batches forever: standard-normal floats, valid ids for label inputs."""

    def __init__(self, inputs, batch_size: int, seed: int = 0, label_ranges: dict | None = None):
        self.inputs, self.batch_size, self.seed, self.label_ranges = list(inputs), batch_size, seed, label_ranges

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng([self.seed, 3])  # streams 0/1 are the calibration/eval sets
        while True:
            yield noise_set(self.inputs, self.batch_size, rng, self.label_ranges).arrays


class ArrayBatches:
    """Shuffled cycles over finite input arrays (a ``CalibrationSet``), ``batch_size`` at a time."""

    def __init__(self, data: CalibrationSet, batch_size: int, seed: int = 0):
        if len(data) < 1:
            raise OptionError("no samples to fine-tune on")
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng([self.seed, 4])
        n = len(self.data)
        order = np.empty(0, dtype=np.int64)
        while True:
            while len(order) < self.batch_size:
                order = np.concatenate([order, rng.permutation(n)])
            take, order = order[: self.batch_size], order[self.batch_size :]
            yield {k: v[take] for k, v in self.data.arrays.items()}


def training_sources(model, calibration: CalibrationSet, batch_size: int, seed: int, eval_samples: int):
    """The training stream and a validation set for ``model`` (a ``LoadedModel``).

    Noise: fresh latents every step, validation from its own seeded stream. Finite data (the
    calibration split of the user's ``--data``): the last tenth is kept for validation, the rest
    is trained on. The report's evaluation set is never used here, so its figures stay unbiased.
    """
    if calibration.source == "noise":
        rng = np.random.default_rng([seed, 5])
        val = noise_set(model.inputs, eval_samples, rng, model.label_ranges)
        return NoiseBatches(model.inputs, batch_size, seed, model.label_ranges), val
    n = len(calibration)
    n_val = max(1, n // 10) if n > 1 else 0
    train = CalibrationSet({k: v[: n - n_val] for k, v in calibration.arrays.items()}, calibration.source)
    val = CalibrationSet({k: v[n - n_val :] for k, v in calibration.arrays.items()}, calibration.source) if n_val else calibration
    return ArrayBatches(train, batch_size, seed), val


# --------------------------------------------------------------------------- the loop


def train_to_match(
    student,
    teacher,
    source,
    held: CalibrationSet,
    output_range: tuple[float, float],
    config: TrainingConfig = TrainingConfig(),
    callbacks=(),
    extra_loss: Callable | None = None,
    progress: bool = True,
    strategy=None,
    checkpoint=None,
) -> FinetuneResult:
    """Train tf-keras ``student`` to reproduce frozen ``teacher`` on batches from ``source``.

    ``source`` yields input dicts keyed by input name (``NoiseBatches``, ``ArrayBatches``);
    ``held`` is never trained on: the teacher's outputs on it are computed once and the student's
    PSNR over ``output_range`` is measured every ``config.eval_every`` steps. The best weights
    (from ``config.min_steps`` on) are restored at the end. ``extra_loss(teacher_out, student_out)``
    is added to the L2/L1 loss; regularization losses of the student are included by Keras.
    ``callbacks`` run before the loop's own (so a pruning callback has re-masked the weights by
    the time they are scored).

    ``checkpoint`` (optional) makes the loop resumable: an object with ``restore(model)``, called
    once after compiling (in the strategy's scope), returning the saved loop state (a dict as
    given to ``save``) or ``None``, and ``save(model, state)``, called after every evaluation.
    A restored run continues at the saved step on the same batches (the first ``step`` batches
    of ``source`` are skipped), with the saved best weights, patience counter and learning rate.
    """
    tf = import_tf()
    keras = import_keras()
    from gencompress.report.metrics import psnr_db

    input_names = list(student.input_names)
    single_output = len(student.outputs) == 1
    held_inputs = _ordered(held.arrays, input_names)
    teacher_held = _as_list(teacher.predict(held_inputs, batch_size=64, verbose=0))
    lo, hi = output_range

    def score() -> float:
        out = _as_list(student.predict(held_inputs, batch_size=64, verbose=0))
        mse = float(np.mean(np.concatenate([((o - t).astype(np.float64) ** 2).ravel() for o, t in zip(out, teacher_held)])))
        return psnr_db(mse, hi - lo) if math.isfinite(mse) else float("nan")

    result = FinetuneResult()
    frozen = _freeze_batchnorm(student, keras) if config.freeze_batchnorm else []
    start = time.perf_counter()
    try:
        result.initial_psnr_db = score()
        result.history.append({"step": 0, "loss": None, "psnr_db": result.initial_psnr_db})
        if config.steps == 0:
            result.final_psnr_db = result.initial_psnr_db
            return result
        dataset = _teacher_dataset(tf, teacher, source, input_names, student, single_output)
        resumed = _compile(tf, keras, student, config, extra_loss, strategy, checkpoint)
        if resumed is not None:
            _load_state(result, resumed)
            _set_learning_rate(student.optimizer, resumed["learning_rate"])  # with the plateau cuts so far
            if resumed["step"]:
                dataset = _teacher_dataset(tf, teacher, _Skipped(source, resumed["step"]), input_names, student, single_output)
            if resumed["stopped_early"] or resumed["step"] >= config.rounds * config.eval_every:
                _restore_best(student, resumed.get("best_weights"), result)  # nothing left to train
                return result
        tracker = _Tracker(keras, config, score, result, resumed=resumed, checkpoint=checkpoint)
        bar = _ProgressLine(keras, config, result, enabled=progress)
        student.fit(
            dataset,
            steps_per_epoch=config.eval_every,
            epochs=config.rounds,
            initial_epoch=resumed["step"] // config.eval_every if resumed is not None else 0,
            verbose=0,
            callbacks=list(callbacks) + [tracker, bar],
        )
    finally:
        for layer in frozen:
            layer.trainable = True
        result.seconds = time.perf_counter() - start
    return result


def _compile(tf, keras, student, config, extra_loss, strategy, checkpoint):
    """Compile ``student`` (in the strategy's scope) and restore a checkpoint's state, if any."""
    with strategy.scope() if strategy is not None else _nullcontext():
        student.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=_loss_fn(tf, config.loss, extra_loss))
        return checkpoint.restore(student) if checkpoint is not None else None


class _Tracker:
    """Keras callback (built lazily so that importing this module does not import Keras)."""

    def __new__(cls, keras, config, score, result, resumed=None, checkpoint=None):
        class Tracker(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.best_weights = None
                self.reference = -math.inf  # best PSNR that reset the patience counter
                self.wait = 0
                self.steps = 0
                if resumed is not None:
                    self.best_weights = resumed.get("best_weights")
                    self.reference, self.wait, self.steps = resumed["reference"], resumed["wait"], resumed["step"]

            def on_train_batch_end(self, batch, logs=None):
                self.steps += 1

            def on_epoch_end(self, epoch, logs=None):
                self._evaluate(epoch, logs)
                if checkpoint is not None:
                    checkpoint.save(self.model, _loop_state(result, self, self.model.optimizer))

            def _evaluate(self, epoch, logs):
                step = (epoch + 1) * config.eval_every
                loss = float((logs or {}).get("loss", float("nan")))
                psnr = score()
                result.history.append({"step": step, "loss": loss, "psnr_db": psnr})
                result.steps_run = step
                if not (math.isfinite(loss) and not math.isnan(psnr)):
                    self.model.stop_training = True  # diverged: keep the best weights so far
                    result.stopped_early = True
                    return
                if step < config.min_steps:
                    return
                if result.best_psnr_db is None or psnr > result.best_psnr_db:
                    result.best_psnr_db, result.best_step = psnr, step
                    self.best_weights = self.model.get_weights()
                if psnr > self.reference + config.min_delta:
                    self.reference, self.wait = psnr, 0
                else:
                    self.wait += 1
                    if self.wait >= config.patience and step < config.rounds * config.eval_every:
                        self.model.stop_training = True
                        result.stopped_early = True
                    elif self.wait % 2 == 0 and config.plateau_lr_factor < 1.0:
                        _scale_learning_rate(self.model.optimizer, config.plateau_lr_factor)

            def on_train_end(self, logs=None):
                _restore_best(self.model, self.best_weights, result)

        return Tracker()


def _restore_best(model, best_weights, result) -> None:
    if best_weights is not None:
        model.set_weights(best_weights)
        result.final_psnr_db = result.best_psnr_db
    else:
        result.final_psnr_db = result.history[-1]["psnr_db"]


def _loop_state(result: FinetuneResult, tracker, optimizer) -> dict:
    """Everything a resumed loop needs besides the model's and optimizer's variables."""
    return {
        "step": result.steps_run,
        "history": [dict(h) for h in result.history],
        "initial_psnr_db": result.initial_psnr_db,
        "best_psnr_db": result.best_psnr_db,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "reference": tracker.reference,
        "wait": tracker.wait,
        "learning_rate": float(optimizer.learning_rate.numpy() if hasattr(optimizer.learning_rate, "numpy") else optimizer.learning_rate),
        "best_weights": tracker.best_weights,
    }


def _load_state(result: FinetuneResult, state: dict) -> None:
    result.history = [dict(h) for h in state["history"]]
    result.initial_psnr_db, result.best_psnr_db = state["initial_psnr_db"], state["best_psnr_db"]
    result.best_step, result.stopped_early, result.steps_run = state["best_step"], state["stopped_early"], state["step"]


class _Skipped:
    """``source`` without its first ``n`` batches: where an interrupted run had got to."""

    def __init__(self, source, n: int):
        self.source, self.n = source, n

    def __iter__(self):
        it = iter(self.source)
        for _ in range(self.n):
            next(it)
        return it


class _ProgressLine:
    """One updating stderr line (step, loss, held-out PSNR) on a terminal; a summary line always."""

    def __new__(cls, keras, config, result, enabled=True, stream=None):
        stream = stream or sys.stderr
        live = enabled and hasattr(stream, "isatty") and stream.isatty()
        total = config.rounds * config.eval_every

        class ProgressLine(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.step, self.last = result.steps_run, 0.0  # not 0 when resumed from a checkpoint

            def on_train_batch_end(self, batch, logs=None):
                self.step += 1
                now = time.perf_counter()
                if live and (now - self.last > 0.2 or self.step == total):
                    self.last = now
                    loss = (logs or {}).get("loss")
                    h = result.history[-1]
                    line = (
                        f"fine-tune  step {self.step}/{total}  loss {_fmt(loss)}  "
                        f"held-out PSNR {_db(h['psnr_db'])} (step {h['step']}, best {_db(result.best_psnr_db)})"
                    )
                    stream.write("\r" + line.ljust(100))
                    stream.flush()

            def on_train_end(self, logs=None):
                if not enabled:
                    return
                if live:
                    stream.write("\r" + " " * 100 + "\r")
                last = result.history[-1]
                stream.write(
                    f"fine-tune: {result.steps_run} steps in {time.perf_counter() - self._t0:.1f} s, "
                    f"loss {_fmt(last['loss'])}, held-out PSNR {_db(result.initial_psnr_db)} -> "
                    f"best {_db(result.best_psnr_db)} dB at step {result.best_step}"
                    f"{' (stopped early)' if result.stopped_early else ''}\n"
                )
                stream.flush()

            def set_model(self, model):
                super().set_model(model)
                self._t0 = time.perf_counter()

        return ProgressLine()


def _scale_learning_rate(optimizer, factor: float) -> None:
    lr = optimizer.learning_rate
    if hasattr(lr, "assign"):
        lr.assign(lr * factor)
    else:
        optimizer.learning_rate = float(lr) * factor


def _set_learning_rate(optimizer, value: float) -> None:
    lr = optimizer.learning_rate
    if hasattr(lr, "assign"):
        lr.assign(value)
    else:
        optimizer.learning_rate = value


def _teacher_dataset(tf, teacher, source, input_names, student, single_output):
    """A tf.data stream of (inputs, teacher outputs); the teacher runs eagerly in the generator."""
    first = next(iter(source))
    x_spec = {n: tf.TensorSpec((None,) + first[n].shape[1:], first[n].dtype) for n in input_names}
    y_specs = [tf.TensorSpec((None,) + tuple(t.shape[1:]), tf.float32) for t in student.outputs]
    y_spec = y_specs[0] if single_output else tuple(y_specs)

    def generate():
        for batch in source:
            x = {n: batch[n] for n in input_names}
            y = teacher(_ordered(x, input_names), training=False)
            y = [np.asarray(v, dtype=np.float32) for v in _as_list(y)]
            yield x, (y[0] if single_output else tuple(y))

    return tf.data.Dataset.from_generator(generate, output_signature=(x_spec, y_spec)).prefetch(2)


def _loss_fn(tf, kind: str, extra_loss):
    def loss(y_true, y_pred):
        err = y_pred - y_true
        value = tf.reduce_mean(tf.square(err)) if kind == "l2" else tf.reduce_mean(tf.abs(err))
        if extra_loss is not None:
            value = value + extra_loss(y_true, y_pred)
        return value

    return loss


def _freeze_batchnorm(model, keras) -> list:
    """Put BatchNorm layers in inference mode (tf-keras: ``trainable=False``) for the fit.

    The teacher normalizes with its moving statistics; a student normalizing with batch statistics
    would be trained on a different function than the one it is scored and exported with.
    """
    frozen = []
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            layer.trainable = False
            frozen.append(layer)
    return frozen


def _all_layers(model):
    for layer in model.layers:
        yield layer
        inner = getattr(layer, "layer", None)  # wrappers (pruning, quantization)
        if inner is not None:
            yield inner
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _ordered(arrays: dict, names: list[str]):
    values = [arrays[n] for n in names]
    return values[0] if len(values) == 1 else values


def _as_list(y) -> list[np.ndarray]:
    return [np.asarray(v) for v in (y if isinstance(y, (list, tuple)) else [y])]


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _r(x, digits=3):
    return None if x is None else round(float(x), digits)


def _fmt(x) -> str:
    return "-" if x is None else f"{float(x):.3g}"


def _db(x) -> str:
    return "-" if x is None else f"{float(x):.2f}"
