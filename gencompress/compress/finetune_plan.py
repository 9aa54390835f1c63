"""How long and how wide to fine-tune a given model: its step cost, measured once, and the plan.

The constants the fine-tuning defaults once had (1,000 steps at batch 64) were tuned on 16×16
samples; a 64×64 generator costs a hundred times more per sample. So the loop's batch size and
step count come from the model's cost per sample: ``measure_step_cost`` times a few compiled
training steps (teacher forward, student forward and backward, Adam) once at the start, and
``plan_training`` (a pure function of that cost, so testable without timing) picks the batch and
steps that fill the target time. Given ``--steps`` and ``--batch-size`` the plan takes them and
no timing enters the run: the same command then gives the same artifacts byte for byte.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np

from gencompress.config import TrainingConfig
from gencompress.tfenv import import_keras, import_tf

# A held-out evaluation is a student forward pass, about a quarter of a training step per sample
# (teacher forward + student forward + backward at twice the forward): with these, evaluations
# cost at most EVAL_SHARE of the training whatever the batch (by counts, not by timings).
FORWARD_SHARE = 0.25
EVAL_SHARE = 0.1
MIN_ROUNDS = 4  # evaluations a run needs for early stopping and the best weights to mean anything
MIN_HELD = 8
WANT_STEPS = 300  # below this many steps in the target time, halve the batch (down to min_batch_size)


@dataclass(frozen=True)
class StepCost:
    """Seconds per sample of one compiled training step, measured at ``probe_batch``."""

    seconds_per_sample: float
    probe_batch: int
    probe_steps: int
    compile_seconds: float = 0.0


def plan_training(config: TrainingConfig, cost: StepCost | None, held_samples: int) -> tuple[TrainingConfig, dict]:
    """``config`` with steps, batch size and evaluation interval decided, and the plan's record.

    Pure: the same config, cost and held-out size give the same plan. Given steps and batch size
    are kept; what is ``None`` is chosen from ``cost`` so that training fills the target time
    (``time_budget`` when given, else ``target_seconds``). The evaluation interval is raised, and
    failing that the held-out set cut, so that evaluations cost at most a tenth of the training.
    """
    target = config.time_budget if config.time_budget is not None else config.target_seconds
    chosen = []
    batch, steps = config.batch_size, config.steps
    samples = None
    if not config.resolved:
        if cost is None:
            raise ValueError("steps or batch size left to choose: measure the step cost first")
        samples = target * (1.0 - EVAL_SHARE) / max(cost.seconds_per_sample, 1e-9)
    if batch is None:
        batch = config.max_batch_size
        want = min(WANT_STEPS, config.max_steps)
        while batch > config.min_batch_size and samples / batch < want:
            batch //= 2
        batch = max(batch, config.min_batch_size)
        chosen.append("batch_size")
    eval_every = max(config.eval_every, math.ceil(held_samples * FORWARD_SHARE / (EVAL_SHARE * batch)))
    if steps is None:
        cap = config.max_steps if config.time_budget is None else max(config.max_steps, 100_000)
        steps = int(min(cap, max(1, samples // batch)))
        chosen.append("steps")
    if "steps" in chosen:
        if steps < MIN_ROUNDS * eval_every:  # too few steps for the interval: evaluate on fewer samples instead
            eval_every = max(1, math.ceil(steps / MIN_ROUNDS))
        steps = max(eval_every, eval_every * round(steps / eval_every))  # whole evaluation rounds
    held = held_samples
    if eval_every * batch * EVAL_SHARE < held * FORWARD_SHARE:
        held = max(min(MIN_HELD, held_samples), int(eval_every * batch * EVAL_SHARE / FORWARD_SHARE))
    resolved = dataclasses.replace(config, steps=steps, batch_size=batch, eval_every=eval_every)
    record = {
        "chosen": chosen,
        "steps": steps,
        "batch_size": batch,
        "eval_every": eval_every,
        "held_out_samples": held,
        "target_seconds": None if "steps" not in chosen else round(target, 1),
        "time_budget_s": config.time_budget,
        "seconds_per_sample": None if cost is None else round(cost.seconds_per_sample, 5),
        "probe_batch": None if cost is None else cost.probe_batch,
        "expected_seconds": None if cost is None else round(steps * batch * cost.seconds_per_sample, 1),
    }
    return resolved, record


def measure_step_cost(model, teacher, inputs: dict, probe_batch: int, steps: int = 2) -> StepCost:
    """Time ``steps`` compiled training steps of tf-keras ``model`` against ``teacher`` on the
    first ``probe_batch`` samples of ``inputs``, after one untimed step that traces the function.

    ``model`` ends exactly as it started (every weight restored, a throwaway optimizer): the
    measurement leaves no trace in the run. Call it on a model outside any ``tf.distribute``
    scope (a plain copy of the one trained under a strategy).
    """
    tf = import_tf()
    keras = import_keras()
    names = list(model.input_names)
    x = [tf.constant(np.asarray(inputs[n][:probe_batch])) for n in names]
    x = x[0] if len(x) == 1 else x
    saved = model.get_weights()
    optimizer = keras.optimizers.Adam(1e-9)

    @tf.function
    def step(x):
        y = teacher(x, training=False)
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            out, y = (out if isinstance(out, (list, tuple)) else [out]), (y if isinstance(y, (list, tuple)) else [y])
            loss = tf.add_n([tf.reduce_mean(tf.square(a - b)) for a, b in zip(out, y)])
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    try:
        start = time.perf_counter()
        step(x).numpy()
        compiled = time.perf_counter() - start
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step(x).numpy()
            times.append(time.perf_counter() - start)
    finally:
        model.set_weights(saved)
    batch = int(np.shape(x[0] if isinstance(x, list) else x)[0])
    return StepCost(float(np.median(times)) / batch, batch, steps, compiled)


def training_devices(strategy=None) -> dict:
    """Where the loop runs: the strategy's devices, else the first GPU TensorFlow sees, else the CPU."""
    tf = import_tf()
    gpus = tf.config.list_logical_devices("GPU")
    if strategy is not None:
        devices = list(getattr(strategy.extended, "worker_devices", ()))
    else:
        devices = [gpus[0].name] if gpus else ["/device:CPU:0"]
    kind = "GPU" if any("GPU" in d.upper() for d in devices) else "CPU"
    names = []
    if kind == "GPU":
        for d in tf.config.list_physical_devices("GPU"):
            try:
                names.append(tf.config.experimental.get_device_details(d).get("device_name", d.name))
            except (ValueError, RuntimeError):
                names.append(d.name)
    return {"kind": kind, "devices": devices, "gpus_seen": len(gpus), "gpu_names": names}


PROBE_BATCH = 16
QUICK_STEP_S = 0.25  # a batch-1 step faster than this is measured again at PROBE_BATCH (per-sample cost falls with the batch)


def resolve_training(config: TrainingConfig, cost_model, teacher, inputs: dict, held_samples: int, strategy=None,
                     progress=None) -> tuple[TrainingConfig, dict]:
    """``plan_training`` with the step cost measured on ``cost_model`` when something is left to
    choose. ``inputs``: at least ``PROBE_BATCH`` samples keyed by input name; ``cost_model``: the
    model to be trained, or a plain copy of it outside any strategy scope (it ends unchanged).
    The probe runs one sample first and the full probe batch only when that was quick, so an
    expensive model (a second a sample) is not held up by its own measurement."""
    if config.resolved:
        return plan_training(config, None, held_samples)
    from gencompress.progress import Progress

    progress = progress or Progress.silent()
    with progress.phase("fine-tuning: measuring the step cost") as phase:
        cost = measure_step_cost(cost_model, teacher, inputs, 1, steps=1)
        if cost.seconds_per_sample < QUICK_STEP_S and config.max_batch_size > 1:
            cost = measure_step_cost(cost_model, teacher, inputs, min(PROBE_BATCH, config.max_batch_size), steps=2)
        seconds = _agreed(strategy, cost.seconds_per_sample)
        cost = dataclasses.replace(cost, seconds_per_sample=seconds)
        phase.describe(f"{1000 * cost.seconds_per_sample:.1f} ms a sample at batch {cost.probe_batch}")
    return plan_training(config, cost, held_samples)


def _agreed(strategy, value: float) -> float:
    """Under a multi-worker strategy every worker must plan alike: the mean of the measured costs
    (tf.distribute reduces by SUM or MEAN only; any value every worker shares would do)."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is None or not getattr(resolver, "task_type", None):
        return value
    tf = import_tf()
    return float(strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(lambda: tf.constant(value, tf.float32)), axis=None))
