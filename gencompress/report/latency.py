"""Batch-1 latency of an artifact in its runtime, after warm-up."""

from __future__ import annotations

import time

import numpy as np

# At least this many timed runs, whatever the time budget says.
MIN_RUNS = 5


def measure_latency(
    runner, sample: dict, warmup: int = 10, runs: int = 50, max_seconds: float = 5.0, on_run=None
) -> dict:
    """p50/p90 milliseconds of ``runner.invoke()`` on one batch-1 ``sample``.

    Warm-up and timed runs each stop at their count or their share of ``max_seconds`` (a fifth
    for warm-up, the rest for timing; at least one warm-up and ``MIN_RUNS`` timed runs), so a
    model that takes half a second per image costs seconds here, not minutes. ``on_run(1)`` is
    called after each timed run (progress). A runner with ``timed_runs`` (a browser runtime)
    runs the same protocol itself and hands back its times: timing it from here would measure
    the round trip to the page.
    """
    if hasattr(runner, "timed_runs"):
        times = runner.timed_runs(sample, warmup, runs, max_seconds, MIN_RUNS)
        if on_run is not None:
            on_run(len(times))
        return _summary(times)
    runner.set_inputs(sample)
    start = time.perf_counter()
    for i in range(warmup):
        runner.invoke()
        if time.perf_counter() - start > max_seconds / 5:
            break
    times = []
    start = time.perf_counter()
    for i in range(runs):
        t0 = time.perf_counter()
        runner.invoke()
        times.append((time.perf_counter() - t0) * 1000.0)
        if on_run is not None:
            on_run(1)
        if i + 1 >= MIN_RUNS and time.perf_counter() - start > max_seconds * 4 / 5:
            break
    return _summary(times)


def _summary(times: list[float]) -> dict:
    return {
        "p50": round(float(np.percentile(times, 50)), 4),
        "p90": round(float(np.percentile(times, 90)), 4),
        "runs": len(times),
    }


def measure_pair(first, second, sample: dict, rounds: int = 5, runs: int = 10) -> dict:
    """Two runners timed against each other on one batch-1 ``sample``: ``rounds`` rounds, each
    ``runs`` invocations of ``first`` then of ``second`` (both warmed once first).

    Returns each one's p50 wall-clock milliseconds (median of the rounds' medians), the wall-clock
    speed-up of ``second`` over ``first`` (median of the rounds' ratios) and the CPU-time speed-up
    (the ratio of their total process CPU time). With one runtime thread, CPU time is the work a
    run does: on a shared machine it does not count the time other processes held the core, which
    swings wall-clock ratios by tens of percent from one measurement to the next.
    """
    wall = ([], [])
    cpu = [0.0, 0.0]
    for runner in (first, second):
        runner.set_inputs(sample)
        runner.invoke()
    for _ in range(rounds):
        for i, runner in enumerate((first, second)):
            runner.set_inputs(sample)
            times = []
            for _ in range(runs):
                c0, t0 = time.process_time(), time.perf_counter()
                runner.invoke()
                times.append((time.perf_counter() - t0) * 1000.0)
                cpu[i] += time.process_time() - c0
            wall[i].append(float(np.median(times)))
    ratios = [a / b for a, b in zip(*wall) if b > 0]
    return {
        "first_p50_ms": round(float(np.median(wall[0])), 4),
        "second_p50_ms": round(float(np.median(wall[1])), 4),
        "speedup": round(float(np.median(ratios)), 3) if ratios else None,
        "cpu_speedup": round(cpu[0] / cpu[1], 3) if cpu[1] > 0 else None,
    }
