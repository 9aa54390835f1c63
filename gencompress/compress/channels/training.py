"""Fine-tuning a channel-pruned model against its teacher with the shared loop
(``compress.finetune.train_to_match``), its steps and batch planned from the pruned model's own
measured cost (``finetune_plan.resolve_training``) or a time budget."""

from __future__ import annotations

import dataclasses

from gencompress.compress.distribute import scope
from gencompress.compress.distillation.training import plain_copy


# Where fine-tuning starts decides how large its steps may be. A re-fit close to the teacher is a
# least-squares optimum that Adam's first steps at the usual rate throw away (catgan at half the
# MACs, re-fitted to 35.5 dB: 22.0 dB after 38 steps at 1e-3); one far from it needs them (fmnist
# at half the MACs, re-fitted to 18.8 dB, 1,162 steps at batch 64: 1e-3 31.0 dB, 3e-4 26.7, 1e-4
# 23.5). Measured in between: rauzan from 28.4 dB, 600 steps at batch 32: 1e-3 28.7, 3e-4 32.4,
# 1e-4 32.7, 3e-5 31.6; catgan from 35.1 dB, 120 steps at 16: 3e-4 33.7, 1e-4 36.0, 3e-5 36.3.
# So the configured rate holds up to ROUGH_DB and shrinks log-linearly to CALM_SHARE of it at CALM_DB.
ROUGH_DB, CALM_DB, CALM_SHARE = 20.0, 30.0, 0.1
# Fewer planned steps than this do not move a re-fitted model (dlss_sr: 6 steps at batch 8 took
# 217 s for +0.08 dB): the time goes to the rest of the run instead.
MIN_STEPS = 20
# The planned steps fill the target time up to this many (pruning's 1,000 stopped the small
# generators early and still rising: fmnist +0.6 dB in its last 166 of 1,000 steps, in 68 s of
# its 240).
MAX_STEPS = 4000


def start_learning_rate(learning_rate: float, start_db: float | None) -> float:
    """The learning rate to fine-tune at from a start ``start_db`` dB from the teacher."""
    if start_db is None:
        return learning_rate
    t = min(1.0, max(0.0, (start_db - ROUGH_DB) / (CALM_DB - ROUGH_DB)))
    return float(f"{learning_rate * CALM_SHARE ** t:.3g}")


def finetune_pruned(model, teacher, sources, output_range, training, *, start_db=None, progress=None, strategy=None):
    """Train ``model`` (a pruned tf-keras model) to reproduce ``teacher``. ``sources(batch)``
    gives ``(training stream, validation set)``; the learning rate is ``training``'s scaled by
    ``start_db`` (``start_learning_rate``). Returns ``(the trained model, FinetuneResult,
    kept_start)``: when no evaluation beat the start (the re-fit is already a least-squares
    optimum; a first Adam step can only lose from there), the starting weights are kept."""
    from gencompress.compress.finetune import train_to_match
    from gencompress.compress.finetune_plan import PROBE_BATCH, resolve_training

    training = dataclasses.replace(training, learning_rate=start_learning_rate(training.learning_rate, start_db),
                                   max_steps=max(training.max_steps, MAX_STEPS))

    probe_source, val = sources(training.batch_size or PROBE_BATCH)
    cost_model = None if training.resolved else plain_copy(model)  # the probe leaves it unchanged
    training, plan = resolve_training(training, cost_model, teacher, _at_least(probe_source, PROBE_BATCH), len(val), strategy, progress)
    if "steps" in plan["chosen"] and training.steps < MIN_STEPS:
        return model, _skipped(training, plan, start_db), False
    source, val = sources(training.batch_size)
    if strategy is not None:
        with scope(strategy):
            model = plain_copy(model)
    start = model.get_weights()
    result = train_to_match(model, teacher, source, val, output_range, training, progress=progress or False, strategy=strategy, plan=plan)
    kept_start = result.best_psnr_db is None or (result.initial_psnr_db is not None and result.best_psnr_db <= result.initial_psnr_db)
    if kept_start:
        model.set_weights(start)
        result.final_psnr_db = result.initial_psnr_db
        result.notes.append("no evaluation beat the re-fitted start: its weights are kept")
    result.config = dataclasses.asdict(training)
    return (plain_copy(model) if strategy is not None else model), result, kept_start


def _skipped(training, plan: dict, start_db):
    """The record of a fine-tuning not run: too few steps fit in the time to move a re-fit."""
    from gencompress.compress.finetune import FinetuneResult

    result = FinetuneResult(plan=dict(plan), initial_psnr_db=start_db, final_psnr_db=start_db)
    result.history.append({"step": 0, "loss": None, "psnr_db": start_db})
    result.notes.append(
        f"not fine-tuned: {training.steps} steps fit in the planned {plan.get('target_seconds') or plan.get('time_budget_s')} s at this "
        f"model's cost ({plan.get('seconds_per_sample')} s a sample), fewer than {MIN_STEPS}; the re-fit is kept (give --steps to train anyway)"
    )
    result.config = dataclasses.asdict(training)
    return result


def _at_least(source, n: int) -> dict:
    """The first batch of ``source``, grown to ``n`` samples (the step-cost probe's batch)."""
    import numpy as np

    batches = iter(source)
    first = next(batches)
    while len(next(iter(first.values()))) < n:
        more = next(batches)
        first = {k: np.concatenate([v, more[k]]) for k, v in first.items()}
    return first
