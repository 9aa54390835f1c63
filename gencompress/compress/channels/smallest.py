"""``--min-psnr`` with ``--structure channels``: the smallest pruned model that still meets the
target, within the fine-tuning budget, and what was tried on the way.

The sizes tried are fractions of the original's MACs (``LADDER``). First, without training
(a re-fit costs seconds): a bisection finds the smallest size whose re-fitted model already meets
the target. Then the next smaller sizes get a short fine-tuning each (a quarter of the budget),
as long as they pass. The smallest that passed is fine-tuned with what is left of the budget. If
none passes, the largest size tried is kept, trained, and the miss is said.
"""

from __future__ import annotations

import dataclasses
import time

LADDER = (0.75, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1)
TRIAL_SHARE = 0.25  # of the budget, per size tried with fine-tuning
TRIALS = 2


def smallest_meeting(pruner, target_db: float, training, train) -> tuple:
    """``(candidate, FinetuneResult, kept_start, attempts)``. ``train(model, training, start_db)``
    runs ``finetune_pruned`` (returns model, result, kept_start); ``training`` is the command's
    fine-tuning (its time budget, or its target seconds, is the search's budget)."""
    budget = training.time_budget or training.target_seconds
    start = time.perf_counter()
    rows, tried = {}, {}

    def attempt(i: int, trial_seconds: float | None) -> bool:
        if i not in tried:
            counts, _ = pruner.counts_for("macs", LADDER[i])
            cand = pruner.prune(counts)
            tried[i] = [cand, None, None]
            rows[i] = {"macs_fraction": LADDER[i], "macs": cand.macs, "params": cand.params, "psnr_refit_db": cand.psnr_db,
                       "fine_tuned": False, "psnr_db": cand.psnr_db, "seconds": cand.seconds, "passed": cand.psnr_db >= target_db}
        cand, row = tried[i][0], rows[i]
        if not row["passed"] and trial_seconds and not row["fine_tuned"]:
            cand.model, result, kept = train(cand.model, dataclasses.replace(training, time_budget=trial_seconds, steps=None), cand.psnr_db)
            tried[i][1:] = [result, kept]
            best = result.final_psnr_db
            row.update(fine_tuned=True, psnr_db=None if best is None else round(float(best), 3), steps=result.steps_run,
                       seconds=round(cand.seconds + result.seconds, 1), passed=best is not None and best >= target_db)
        return row["passed"]

    lo, hi = -1, len(LADDER)
    while hi - lo > 1:  # re-fits only: the smallest size that passes before any training
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if attempt(mid, None) else (lo, mid)
    for i in range(hi, min(hi + TRIALS, len(LADDER))):  # smaller sizes, each with a short fine-tuning
        if not attempt(i, TRIAL_SHARE * budget):
            break
        lo = i
    pick = lo if lo >= 0 else min(tried)
    cand, result, kept = tried[pick]
    left = budget - (time.perf_counter() - start)
    if result is None or left > 0.1 * budget:
        start_db = cand.psnr_db if result is None else result.final_psnr_db
        cand.model, result, kept = train(cand.model, dataclasses.replace(training, time_budget=max(left, 0.1 * budget), steps=None), start_db)
    attempts = [dict(rows[i], picked=i == pick) for i in rows]
    return cand, result, kept, attempts
