"""The one grader: which artifacts are held to the fidelity target, and what a miss says."""

from __future__ import annotations

from typing import Callable

from gencompress.results import ArtifactResult, Report


def grade(artifacts: list[ArtifactResult], target: float, graded: Callable[[ArtifactResult], bool] = lambda a: True) -> None:
    """``passed`` for the artifacts ``graded`` selects: PSNR >= ``target`` (``None`` when the
    target is 0, the guard off); the others are references, not graded (``None``)."""
    for a in artifacts:
        if target <= 0 or not graded(a):
            a.passed = None
        else:
            psnr = a.fidelity.psnr_db
            a.passed = bool(psnr is not None and psnr >= target)


def fidelity_failures(report: Report) -> list[str]:
    """One sentence per artifact that missed the target: best PSNR and the layers responsible."""
    target = report.settings.get("min_psnr", 0)
    lines = []
    for a in report.artifacts:
        if a.passed is not False:
            continue
        fb = a.fallback
        culprits = [u.label for u in fb.most_harmful_units[:3]] if fb else []
        lines.append(
            f"{a.format} {a.precision}{' ' + a.variant if a.variant else ''} reached {a.fidelity.psnr_db} dB, "
            f"below --min-psnr {target:g}"
            + (f" (best of {len(fb.attempts)} tries; most sensitive: {', '.join(culprits)})" if fb else "")
        )
    return lines
