"""Batch-1 latency of an artifact in its runtime, after warm-up."""

from __future__ import annotations

import time

import numpy as np


def measure_latency(runner, sample: dict, warmup: int = 10, runs: int = 50, max_seconds: float = 5.0) -> dict:
    """p50/p90 milliseconds of ``runner.invoke()`` on one batch-1 ``sample``.

    Stops early after ``max_seconds`` (at least 5 timed runs) so a slow artifact cannot stall a run.
    """
    runner.set_inputs(sample)
    for _ in range(warmup):
        runner.invoke()
    times = []
    start = time.perf_counter()
    for i in range(runs):
        t0 = time.perf_counter()
        runner.invoke()
        times.append((time.perf_counter() - t0) * 1000.0)
        if i >= 4 and time.perf_counter() - start > max_seconds:
            break
    return {
        "p50": round(float(np.percentile(times, 50)), 4),
        "p90": round(float(np.percentile(times, 90)), 4),
        "runs": len(times),
    }
