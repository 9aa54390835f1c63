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
from gencompress.results import ArtifactResult, GateCheck, GatesSection

# Gates whose measured value must reach the limit (the others must stay under it).
_LOWER_BOUND = {"min_psnr", "min_ssim", "min_speedup"}


def deliverables(artifacts: list[ArtifactResult], graded: Callable[[ArtifactResult], bool]) -> list[ArtifactResult]:
    picked = [a for a in artifacts if graded(a)]
    derived = [a for a in picked if a.variant is not None or a.precision != "float32"]
    return derived or picked


def measure(a: ArtifactResult, gate: str, float_p50: float | None) -> float | None:
    """The value ``gate`` judges on artifact ``a`` (``None``: not measured)."""
    if gate == "min_psnr":
        return a.fidelity.psnr_db
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
             latency_runs: int | None = None) -> GatesSection | None:
    """Every limit on every deliverable; ``None`` when no limit applies to any format."""
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
            ok = value is not None and (value >= limit if gate in _LOWER_BOUND else value <= limit)
            checks.append(GateCheck(artifact=a.name, format=a.format, precision=a.precision, variant=a.variant, gate=gate,
                                    measured=value, limit=float(limit), passed=ok))
    return GatesSection(limits=limits, checks=checks, failed=sum(not c.passed for c in checks),
                        latency_runs=latency_runs if gates.timed else None)


def judge(session, target: float, graded: Callable[[ArtifactResult], bool] = lambda a: True) -> None:
    """Grade the session's artifacts against the fidelity ``target`` (``grading.grade``) and
    check the run's gates on its deliverables; ``make_report`` puts the checks in the report."""
    grade(session.artifacts, target, graded)
    session.gate_section = evaluate(session.artifacts, session.config.gates, target, graded, session.config.latency_runs)
