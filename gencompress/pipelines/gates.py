"""Gates: the limits a run's deliverable artifacts must meet, checked after grading.

The deliverables are the artifacts a command is graded on (its ``graded`` selector) less the
original model's float32 reference when the run made anything else: a size-ratio or speed-up
gate on the reference itself would only measure the reference against itself. ``export`` makes
nothing else, so its float32 artifacts are gated.
"""

from __future__ import annotations

from typing import Callable

from gencompress.config import GATES, Gates
from gencompress.pipelines.grading import grade
from gencompress.results import ArtifactResult, GateCheck, GatesSection, Latency

# Gates whose measured value must reach the limit (the others must stay under it).
_LOWER_BOUND = {"min_psnr", "min_psnr_worst", "min_ssim", "min_speedup"}
# A latency gate re-measures the gated artifacts and their float32 references in turn, this many
# rounds of this many timed runs, and judges the median of the rounds (the speed-up: the median
# of each round's ratio), within about this many seconds. On this shared 2-core machine one
# window of N runs moved by up to 40 % from rerun to rerun whatever N (load lasts longer than a
# window); 15 interleaved rounds of 20 kept reruns within 9 % (a speed-up within 7 %)
# (benchmarks/latency_stability.py, README "Gates").
GATE_ROUNDS, GATE_ROUND_RUNS, GATE_SECONDS = 15, 20, 60.0


def deliverables(artifacts: list[ArtifactResult], graded: Callable[[ArtifactResult], bool]) -> list[ArtifactResult]:
    """The graded artifacts (else, when nothing is graded, those of a derived model: ``prune``
    without ``then``), less the original's float32 reference unless that is all there is."""
    picked = [a for a in artifacts if graded(a)] or [a for a in artifacts if a.variant is not None] or list(artifacts)
    derived = [a for a in picked if a.variant is not None or a.precision != "float32"]
    return derived or picked


def measure(a: ArtifactResult, gate: str, float_p50: float | None) -> float | None:
    """The value ``gate`` judges on artifact ``a`` (``None``: not measured)."""
    if gate == "min_psnr":
        return a.fidelity.psnr_db
    if gate == "min_psnr_worst":
        return a.fidelity.psnr_worst_db
    if gate == "min_ssim":
        return a.fidelity.ssim
    if gate == "max_bytes":
        return float(a.size_bytes)
    if gate == "max_size_ratio":
        return a.size_vs_float
    if gate == "min_speedup":
        return round(float_p50 / a.latency_ms.p50, 4) if float_p50 and a.latency_ms.p50 > 0 else None
    if gate == "max_latency_ms":
        return a.latency_ms.p50
    raise ValueError(gate)


def evaluate(artifacts: list[ArtifactResult], gates: Gates, min_psnr: float, graded=lambda a: True,
             speedups: dict | None = None, browser_speedups: dict | None = None) -> GatesSection | None:
    """Every limit on every deliverable; ``None`` when no limit applies to any format.
    ``speedups`` (``browser_speedups``): speed-ups by artifact name when latency (in the
    browser) was re-measured for the gates."""
    formats = list(dict.fromkeys(a.format for a in artifacts))
    limits = {fmt: gates.for_format(fmt, min_psnr) for fmt in formats}
    browser = {fmt: gates.browser.for_format(fmt) for fmt in formats} if gates.browser.any else {}
    if not any(limits.values()) and not any(browser.values()):
        return None
    float_p50 = {a.format: a.latency_ms.p50 for a in reversed(artifacts) if a.precision == "float32" and a.variant is None}
    float_browser = {a.format: a.browser.latency_ms.p50 for a in reversed(artifacts)
                     if a.precision == "float32" and a.variant is None and a.browser and a.browser.latency_ms}
    checks = []
    for a in deliverables(artifacts, graded):
        for gate in GATES:
            limit = limits[a.format].get(gate)
            if limit is not None:
                value = measure(a, gate, float_p50.get(a.format))
                if gate == "min_speedup" and speedups and a.name in speedups:
                    value = speedups[a.name]
                checks.append(_check(a, gate, value, limit))
            limit = browser.get(a.format, {}).get(gate)
            if limit is not None:
                value = measure_browser(a, gate, float_browser.get(a.format))
                if gate == "min_speedup" and browser_speedups and a.name in browser_speedups and value is not None:
                    value = browser_speedups[a.name]
                checks.append(_check(a, gate, value, limit, runtime="browser"))
    all_limits = {**limits, **{f"browser-{fmt}": given for fmt, given in browser.items() if given}}
    timed = speedups is not None
    return GatesSection(limits=all_limits, checks=checks, failed=sum(not c.passed for c in checks),
                        latency_rounds=GATE_ROUNDS if timed or browser_speedups else None,
                        latency_round_runs=GATE_ROUND_RUNS if timed or browser_speedups else None)


def _check(a: ArtifactResult, gate: str, value, limit, runtime=None) -> GateCheck:
    ok = value is not None and (value >= limit if gate in _LOWER_BOUND else value <= limit)
    return GateCheck(artifact=a.name, format=a.format, precision=a.precision, variant=a.variant, gate=gate,
                     measured=value, limit=float(limit), passed=ok, runtime=runtime)


def measure_browser(a: ArtifactResult, gate: str, float_p50: float | None) -> float | None:
    """The value ``gate`` judges on ``a``'s browser run (``None``: not loaded or not measured)."""
    run = a.browser
    if run is None or not run.loaded:
        return None
    if gate in ("min_psnr", "min_ssim"):
        return None if run.fidelity is None else (run.fidelity.psnr_db if gate == "min_psnr" else run.fidelity.ssim)
    p50 = run.latency_ms.p50 if run.latency_ms else None
    if gate == "max_latency_ms":
        return p50
    if gate == "min_speedup":
        return round(float_p50 / p50, 4) if float_p50 and p50 else None
    raise ValueError(gate)


def judge(session, target: float, graded: Callable[[ArtifactResult], bool] = lambda a: True) -> None:
    """Grade the session's artifacts against the fidelity ``target`` (``grading.grade``), measure
    them in their browser runtimes with ``--browser`` (``pipelines.browser``) and check the run's
    gates on its deliverables; ``make_report`` puts the checks in the report."""
    grade(session.artifacts, target, graded)
    gates = session.config.gates
    browser_speedups = None
    if session.config.browser:
        from gencompress.pipelines.browser import measure_in_browser

        gated = deliverables(session.artifacts, graded) if gates.browser.timed else []
        browser_speedups = measure_in_browser(session, gated)
    speedups = retime(session, deliverables(session.artifacts, graded)) if gates.timed else None
    session.gate_section = evaluate(session.artifacts, gates, target, graded, speedups, browser_speedups)


def retime(session, gated: list[ArtifactResult]) -> dict[str, float]:
    """Latency of ``gated`` and their float32 references again, in ``GATE_ROUNDS`` interleaved
    rounds: each artifact's ``latency_ms`` becomes the median of its rounds; returns the
    speed-ups over float (median of the rounds' ratios) by artifact name."""
    references = {a.format: a for a in session.artifacts if a.precision == "float32" and a.variant is None}
    timed = list({id(a): a for a in [references[a.format] for a in gated if a.format in references] + gated}.values())
    rounds = interleaved([session.runner(a.path, a.format) for a in timed], session.evaluation.sample(0), session.progress,
                         f"latency for the gates: {GATE_ROUNDS} rounds over {len(timed)} artifacts")
    for a, kept in zip(timed, rounds):
        a.latency_ms = round_latency(kept)
    return round_speedups(timed, rounds, references)


def interleaved(runners: list, sample: dict, progress, label: str) -> list[list[dict]]:
    """``GATE_ROUNDS`` rounds in which each runner in turn times ``GATE_ROUND_RUNS`` runs
    (``measure_latency``; within ``GATE_SECONDS`` in all): per runner, its rounds."""
    from gencompress.report.latency import measure_latency

    budget = GATE_SECONDS / (GATE_ROUNDS * max(1, len(runners)))
    rounds = [[] for _ in runners]
    with progress.phase(label, total=GATE_ROUNDS, unit="round") as phase:
        for _ in range(GATE_ROUNDS):
            for runner, kept in zip(runners, rounds):
                kept.append(measure_latency(runner, sample, warmup=2, runs=GATE_ROUND_RUNS, max_seconds=budget))
            phase.update()
    return rounds


def round_latency(kept: list[dict]) -> Latency:
    """One artifact's latency from its rounds: the medians of their p50s and p90s."""
    return Latency(p50=_median(r["p50"] for r in kept), p90=_median(r["p90"] for r in kept), runs=sum(r["runs"] for r in kept))


def round_speedups(timed: list[ArtifactResult], rounds: list[list[dict]], references: dict) -> dict[str, float]:
    """Per artifact name, the median over the rounds of its format's float32 p50 over its own."""
    speedups = {}
    for a, kept in zip(timed, rounds):
        ref = references.get(a.format)
        if ref is not None and a is not ref and ref in timed:
            base = rounds[timed.index(ref)]
            speedups[a.name] = round(_median(b["p50"] / r["p50"] for b, r in zip(base, kept)), 4)
    return speedups


def _median(values) -> float:
    import statistics

    return round(float(statistics.median(list(values))), 4)
