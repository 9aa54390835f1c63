"""Fine-tuning a channel-pruned model against its teacher with the shared loop
(``compress.finetune.train_to_match``), its steps and batch planned from the pruned model's own
measured cost (``finetune_plan.resolve_training``) or a time budget."""

from __future__ import annotations

import dataclasses

from gencompress.compress.distribute import scope
from gencompress.compress.distillation.training import plain_copy


def finetune_pruned(model, teacher, sources, output_range, training, *, progress=None, strategy=None):
    """Train ``model`` (a pruned tf-keras model) to reproduce ``teacher``. ``sources(batch)``
    gives ``(training stream, validation set)``. Returns ``(the trained model, FinetuneResult,
    kept_start)``: when no evaluation beat the start (the re-fit is already a least-squares
    optimum; a first Adam step can only lose from there), the starting weights are kept."""
    from gencompress.compress.finetune import train_to_match
    from gencompress.compress.finetune_plan import PROBE_BATCH, resolve_training

    probe_source, val = sources(training.batch_size or PROBE_BATCH)
    cost_model = None if training.resolved else plain_copy(model)  # the probe leaves it unchanged
    training, plan = resolve_training(training, cost_model, teacher, _at_least(probe_source, PROBE_BATCH), len(val), strategy, progress)
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


def _at_least(source, n: int) -> dict:
    """The first batch of ``source``, grown to ``n`` samples (the step-cost probe's batch)."""
    import numpy as np

    batches = iter(source)
    first = next(batches)
    while len(next(iter(first.values()))) < n:
        more = next(batches)
        first = {k: np.concatenate([v, more[k]]) for k, v in first.items()}
    return first
