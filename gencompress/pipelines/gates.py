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
             speedups: dict | None = None) -> GatesSection | None:
    """Every limit on every deliverable; ``None`` when no limit applies to any format.
    ``speedups``: speed-ups by artifact name when latency was re-measured for the gates."""
    formats = list(dict.fromkeys(a.format for a in artifacts))
    limits = {fmt: gates.for_format(fmt, min_psnr) for fmt in formats}
    if not any(limits.values()):
        return None
    float_p50 = {a.format: a.latency_ms.p50 for a in reversed(artifacts) if a.precision == "float32" and a.variant is None}
    checks = []
    for a in deliverables(artifacts, graded):
        for gate in GATES:
            limit = limits[a.format].get(gate)
            if limit is None:
                continue
            value = measure(a, gate, float_p50.get(a.format))
            if gate == "min_speedup" and speedups and a.name in speedups:
                value = speedups[a.name]
            ok = value is not None and (value >= limit if gate in _LOWER_BOUND else value <= limit)
            checks.append(GateCheck(artifact=a.name, format=a.format, precision=a.precision, variant=a.variant, gate=gate,
                                    measured=value, limit=float(limit), passed=ok))
    timed = speedups is not None
    return GatesSection(limits=limits, checks=checks, failed=sum(not c.passed for c in checks),
                        latency_rounds=GATE_ROUNDS if timed else None, latency_round_runs=GATE_ROUND_RUNS if timed else None)


def judge(session, target: float, graded: Callable[[ArtifactResult], bool] = lambda a: True) -> None:
    """Grade the session's artifacts against the fidelity ``target`` (``grading.grade``) and
    check the run's gates on its deliverables; ``make_report`` puts the checks in the report."""
    grade(session.artifacts, target, graded)
    gates = session.config.gates
    speedups = retime(session, deliverables(session.artifacts, graded)) if gates.timed else None
    session.gate_section = evaluate(session.artifacts, gates, target, graded, speedups)


def retime(session, gated: list[ArtifactResult]) -> dict[str, float]:
    """Latency of ``gated`` and their float32 references again, in ``GATE_ROUNDS`` interleaved
    rounds: each artifact's ``latency_ms`` becomes the median of its rounds; returns the
    speed-ups over float (median of the rounds' ratios) by artifact name."""
    from gencompress.report.latency import measure_latency

    references = {a.format: a for a in session.artifacts if a.precision == "float32" and a.variant is None}
    timed = list({id(a): a for a in [references[a.format] for a in gated if a.format in references] + gated}.values())
    runners = [session.runner(a.path, a.format) for a in timed]
    sample = session.evaluation.sample(0)
    budget = GATE_SECONDS / (GATE_ROUNDS * len(timed))
    rounds = [[] for _ in timed]
    with session.progress.phase(f"latency for the gates: {GATE_ROUNDS} rounds over {len(timed)} artifacts", total=GATE_ROUNDS, unit="round") as phase:
        for _ in range(GATE_ROUNDS):
            for runner, kept in zip(runners, rounds):
                kept.append(measure_latency(runner, sample, warmup=2, runs=GATE_ROUND_RUNS, max_seconds=budget))
            phase.update()
    for a, kept in zip(timed, rounds):
        a.latency_ms = Latency(p50=_median(r["p50"] for r in kept), p90=_median(r["p90"] for r in kept), runs=sum(r["runs"] for r in kept))
    speedups = {}
    for a, kept in zip(timed, rounds):
        ref = references.get(a.format)
        if ref is not None and a is not ref:
            base = rounds[timed.index(ref)]
            speedups[a.name] = round(_median(b["p50"] / r["p50"] for b, r in zip(base, kept)), 4)
    return speedups


def _median(values) -> float:
    import statistics

    return round(float(statistics.median(list(values))), 4)
