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
    stopped_by: str = "steps"
    seconds: float = 0.0
    plan: dict = field(default_factory=dict)
    devices: dict = field(default_factory=dict)
    xla: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "steps_run": self.steps_run,
            "stopped_early": self.stopped_early,
            "stopped_by": self.stopped_by,
            "seconds": round(self.seconds, 1),
            "seconds_per_step": round(self.seconds / self.steps_run, 4) if self.steps_run else None,
            "plan": dict(self.plan) or None,
            "devices": dict(self.devices) or None,
            "xla": self.xla,
            "notes": list(self.notes),
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


STOPPED_BY = ("steps", "early stopping", "time budget", "diverged")


def train_to_match(
    student,
    teacher,
    source,
    held: CalibrationSet,
    output_range: tuple[float, float],
    config: TrainingConfig = TrainingConfig(steps=1000, batch_size=64),
    callbacks=(),
    extra_loss: Callable | None = None,
    progress=True,
    strategy=None,
    checkpoint=None,
    plan: dict | None = None,
) -> FinetuneResult:
    """Train tf-keras ``student`` to reproduce frozen ``teacher`` on batches from ``source``.

    ``config`` has its steps and batch size decided (``finetune_plan.plan_training``; ``plan``
    is that plan's record, kept in the result, and its ``held_out_samples`` bounds the held-out
    set). ``source`` yields input dicts keyed by input name (``NoiseBatches``, ``ArrayBatches``);
    ``held`` is never trained on: the teacher's outputs on it are computed once and the student's
    PSNR over ``output_range`` is measured every ``config.eval_every`` steps. The teacher runs
    inside the compiled step, on the step's device. The best weights (from ``config.min_steps``
    on) are restored at the end; ``config.time_budget`` ends training when it is spent (the
    current weights are scored once more and the best kept). ``extra_loss(teacher_out,
    student_out)`` is added to the L2/L1 loss; regularization losses of the student are included
    by Keras. ``callbacks`` run before the loop's own (so a pruning callback has re-masked the
    weights by the time they are scored). ``progress``: a ``Progress`` (or ``True``: lines or a
    bar on stderr; ``False``: silent).

    ``checkpoint`` (optional) makes the loop resumable: an object with ``restore(model)``, called
    once after compiling (in the strategy's scope), returning the saved loop state (a dict as
    given to ``save``) or ``None``, and ``save(model, state)``, called after every evaluation.
    A restored run continues at the saved step on the same batches (the first ``step`` batches
    of ``source`` are skipped), with the saved best weights, patience counter and learning rate.
    """
    tf = import_tf()
    keras = import_keras()
    from gencompress.compress.finetune_plan import training_devices

    start = time.perf_counter()
    config._known("steps")
    if plan is not None and plan.get("held_out_samples") and plan["held_out_samples"] < len(held):
        held = held.take(plan["held_out_samples"])
    input_names = list(student.input_names)
    score = _Scorer(tf, student, teacher, held, input_names, output_range, strategy=strategy)
    result = FinetuneResult(plan=dict(plan or {}), devices=training_devices(strategy))
    frozen = _freeze_batchnorm(student, keras) if config.freeze_batchnorm else []
    progress = _as_progress(progress)
    try:
        result.initial_psnr_db = score()
        result.history.append({"step": 0, "loss": None, "psnr_db": result.initial_psnr_db})
        if config.steps == 0:
            result.final_psnr_db = result.initial_psnr_db
            return result
        dataset = _input_dataset(tf, source, input_names)
        resumed = _compile(tf, keras, student, teacher, input_names, config, extra_loss, strategy, checkpoint, result)
        if resumed is not None:
            dataset = _resume(tf, student, source, input_names, config, resumed, result) or dataset
            if result.steps_run >= config.rounds * config.eval_every or result.stopped_early:
                return result  # nothing left to train: the best weights are back
        total = config.rounds * config.eval_every
        with progress.phase("fine-tuning", total=total, unit="step", every_percent=5) as phase:
            phase.update(result.steps_run)
            tracker = _Tracker(keras, config, score, result, resumed=resumed, checkpoint=checkpoint)
            clock = _Clock(keras, config, result, phase, start, score, strategy)
            student.fit(
                dataset,
                steps_per_epoch=config.eval_every,
                epochs=config.rounds,
                initial_epoch=resumed["step"] // config.eval_every if resumed is not None else 0,
                verbose=0,
                callbacks=list(callbacks) + [clock, tracker],
            )
    finally:
        _uninstall_step(student)
        for layer in frozen:
            layer.trainable = True
        result.seconds = time.perf_counter() - start
    progress.log(_summary_line(result))
    return result


def _resume(tf, student, source, input_names, config, resumed, result):
    """Take a checkpoint's loop state: history, learning rate (with the plateau cuts so far) and,
    where nothing is left to train, the best weights; returns the input stream past its step."""
    _load_state(result, resumed)
    _set_learning_rate(student.optimizer, resumed["learning_rate"])
    if resumed["stopped_early"] or resumed["step"] >= config.rounds * config.eval_every:
        _restore_best(student, resumed.get("best_weights"), result)
    return _input_dataset(tf, _Skipped(source, resumed["step"]), input_names) if resumed["step"] else None


def _compile(tf, keras, student, teacher, input_names, config, extra_loss, strategy, checkpoint, result):
    """Compile ``student`` (in the strategy's scope) with the teacher inside its training step,
    XLA where asked and possible, and restore a checkpoint's state, if any."""
    xla = bool(config.xla)
    if xla:
        reason = _xla_unsupported(tf, student, teacher, input_names)
        if reason:
            result.notes.append(f"XLA asked for but not used: {reason}")
            xla = False
    result.xla = xla
    _install_step(student, teacher, input_names)
    with strategy.scope() if strategy is not None else _nullcontext():
        student.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate), loss=_loss_fn(tf, config.loss, extra_loss), jit_compile=xla,
        )
        return checkpoint.restore(student) if checkpoint is not None else None


def _install_step(student, teacher, input_names) -> None:
    """The teacher's forward pass inside ``student``'s compiled training step (not in the input
    pipeline: no eager call, no copy of its outputs through Python, and on the step's device)."""
    base = type(student).train_step

    def train_step(data):
        y = teacher(_ordered(data, input_names), training=False)
        y = tuple(y) if isinstance(y, (list, tuple)) else y
        return base(student, (data, y))

    student.train_step = train_step


def _uninstall_step(student) -> None:
    if "train_step" in vars(student):
        del student.train_step
    student.train_function = None  # it holds the teacher


def _xla_unsupported(tf, student, teacher, input_names) -> str | None:
    """Why XLA cannot compile a training step of ``student`` (``None``: it can); compiles to HLO
    without running anything."""
    specs = [tf.TensorSpec((2,) + tuple(t.shape[1:]), t.dtype) for t in student.inputs]

    @tf.function(jit_compile=True)
    def step(*x):
        x = x[0] if len(x) == 1 else list(x)
        y = teacher(x, training=False)
        with tf.GradientTape() as tape:
            out = student(x, training=True)
            loss = tf.add_n([tf.reduce_mean(tf.square(a - b)) for a, b in zip(_tensors(out), _tensors(y))])
        return tape.gradient(loss, student.trainable_variables)

    try:
        step.experimental_get_compiler_ir(*[tf.zeros(s.shape, s.dtype) for s in specs])(stage="hlo")
    except Exception as exc:  # noqa: BLE001 - any failure to lower means "not with XLA"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return first[:200]
    return None


class _Scorer:
    """Held-out PSNR of the student against the teacher's outputs (computed once), through one
    compiled forward function over fixed batches (no ``predict`` set-up per evaluation)."""

    def __init__(self, tf, student, teacher, held, input_names, output_range, batch: int = 64, strategy=None):
        self.inputs = [np.asarray(held.arrays[n]) for n in input_names]
        self.batch, self.range = batch, output_range
        if strategy is None:
            self.forward = tf.function(lambda *x: student(x[0] if len(x) == 1 else list(x), training=False))
        else:  # a distributed model is called in a replica context (tfmot's pruning wrappers assign in theirs)
            self.forward = lambda *x: student.predict(x[0] if len(x) == 1 else list(x), batch_size=batch, verbose=0)
        self.reference = _as_list(teacher.predict(_ordered(held.arrays, input_names), batch_size=batch, verbose=0))
        self.seconds = 0.0  # the last evaluation's

    def __call__(self) -> float:
        from gencompress.report.metrics import psnr_db

        start = time.perf_counter()
        total, count = 0.0, 0
        n = len(self.inputs[0])
        for i in range(0, n, self.batch):
            out = _tensors(self.forward(*[x[i : i + self.batch] for x in self.inputs]))
            for o, t in zip(out, self.reference):
                err = np.asarray(o, dtype=np.float64) - t[i : i + self.batch]
                total, count = total + float(np.sum(err * err)), count + err.size
        self.seconds = time.perf_counter() - start
        mse = total / max(count, 1)
        lo, hi = self.range
        return psnr_db(mse, hi - lo) if math.isfinite(mse) else float("nan")


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
                self.loss = (logs or {}).get("loss")

            def on_epoch_end(self, epoch, logs=None):
                self._evaluate(logs)
                if checkpoint is not None:
                    checkpoint.save(self.model, _loop_state(result, self, self.model.optimizer))

            def _evaluate(self, logs):
                step = self.steps  # short of the round's end when the time budget stopped it
                loss = float((logs or {}).get("loss", float("nan")))
                psnr = score()
                result.history.append({"step": step, "loss": loss, "psnr_db": psnr})
                result.steps_run = step
                if not (math.isfinite(loss) and not math.isnan(psnr)):
                    self.model.stop_training = True  # diverged: keep the best weights so far
                    result.stopped_early, result.stopped_by = True, "diverged"
                    return
                if step < config.min_steps:
                    return
                if result.best_psnr_db is None or psnr > result.best_psnr_db:
                    result.best_psnr_db, result.best_step = psnr, step
                    self.best_weights = self.model.get_weights()
                if psnr > self.reference + config.min_delta:
                    self.reference, self.wait = psnr, 0
                elif result.stopped_by != "time budget":
                    self.wait += 1
                    if self.wait >= config.patience and step < config.rounds * config.eval_every:
                        self.model.stop_training = True
                        result.stopped_early, result.stopped_by = True, "early stopping"
                    elif self.wait % 2 == 0 and config.plateau_lr_factor < 1.0:
                        _scale_learning_rate(self.model.optimizer, config.plateau_lr_factor)

            def on_train_end(self, logs=None):
                _restore_best(self.model, self.best_weights, result)

        return Tracker()


class _Clock:
    """Keras callback: progress after every step, and the stop when the time budget is spent.

    It stops when the budget left would not cover another step and one more evaluation (the
    median of the last few steps, the last evaluation), so the run ends inside the budget with
    its last weights scored. The first step is no estimate: it traces the step function (seconds
    on a small model that then steps in milliseconds) and would end a short budget at once.
    Under a multi-worker strategy every worker stops at the same step (the decision is reduced).
    """

    def __new__(cls, keras, config, result, phase, start, score, strategy=None):
        budget = config.time_budget
        total = config.rounds * config.eval_every

        class Clock(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.step, self.last = result.steps_run, time.perf_counter()
                self.durations, self.traced = [], False  # the first step of a fit traces the function
                if budget is not None:
                    phase.deadline = start + budget

            def on_train_batch_end(self, batch, logs=None):
                now = time.perf_counter()
                if self.traced:
                    self.durations = self.durations[-4:] + [now - self.last]
                self.traced = True
                self.last = now
                self.step += 1
                h = result.history[-1]
                phase.describe(
                    f"loss {_fmt((logs or {}).get('loss'))}, held-out PSNR {_db(h['psnr_db'])} dB at step {h['step']}"
                    f" (best {_db(result.best_psnr_db)})"
                )
                phase.update(1)
                if budget is None or self.step >= total:
                    return
                spent = now - start
                next_step = float(np.median(self.durations)) if self.durations else 0.0
                if _any_worker(strategy, spent + next_step + score.seconds >= budget):
                    self.model.stop_training = True
                    result.stopped_early, result.stopped_by = True, "time budget"

            def on_epoch_begin(self, epoch, logs=None):
                self.last = time.perf_counter()  # an evaluation is not a step

        return Clock()


def _any_worker(strategy, flag: bool) -> bool:
    """``flag`` as every worker agrees on it (any of them): only a multi-worker run reduces it."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is None or not getattr(resolver, "task_type", None):
        return bool(flag)
    tf = import_tf()
    value = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(float(flag))), axis=None)  # no MAX in tf.distribute
    return bool(float(value) > 0)


def _summary_line(result: "FinetuneResult") -> str:
    last = result.history[-1]
    plan = result.plan or {}
    batch = f" at batch {plan['batch_size']}" if plan.get("batch_size") else ""
    return (
        f"fine-tune: {result.steps_run} steps{batch} in {result.seconds:.1f} s, loss {_fmt(last['loss'])}, held-out PSNR "
        f"{_db(result.initial_psnr_db)} -> best {_db(result.best_psnr_db)} dB at step {result.best_step}{_ending(result)}"
    )


def _ending(result: "FinetuneResult") -> str:
    if result.stopped_by == "time budget":
        budget = (result.plan or {}).get("time_budget_s")
        return f" (stopped by the {_seconds(budget)} time budget; best weights kept)"
    if result.stopped_by == "early stopping":
        return " (stopped early)"
    if result.stopped_by == "diverged":
        return " (diverged: best weights kept)"
    return ""


def _as_progress(progress):
    from gencompress.progress import Progress

    if isinstance(progress, Progress):
        return progress
    return Progress(sys.stderr) if progress else Progress.silent()


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


def _input_dataset(tf, source, input_names):
    """A tf.data stream of input dicts from ``source`` (numpy: seeded, cheap next to a step)."""
    first = next(iter(source))
    spec = {n: tf.TensorSpec((None,) + first[n].shape[1:], first[n].dtype) for n in input_names}

    def generate():
        for batch in source:
            yield {n: batch[n] for n in input_names}

    return tf.data.Dataset.from_generator(generate, output_signature=spec).prefetch(2)


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


def _tensors(y) -> list:
    return list(y) if isinstance(y, (list, tuple)) else [y]


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


def _seconds(x) -> str:
    if x is None:
        return "-"
    return f"{x:g} s" if x < 60 or x % 60 else f"{x / 60:g} min"
