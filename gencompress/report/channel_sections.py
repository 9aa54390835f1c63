"""The ``channel_pruning`` section (``prune --structure channels``) as report.md markdown and as
the terminal's lines, read from the section as ``report.json`` holds it."""

from __future__ import annotations

from pathlib import Path

from gencompress.report.macs import macs_text
from gencompress.report.sections import _db, _pct, _ssim
from gencompress.report.sections import _size as _kib

TARGET_WORDS = {
    "macs": "MACs kept {:.0%} of the original's",
    "params": "parameters kept {:.0%} of the original's",
    "channels": "{:.0%} of the prunable channels kept",
    "psnr": "the smallest model meeting {:g} dB",
}


def target_text(target: dict) -> str:
    return TARGET_WORDS[target["kind"]].format(target["value"])


def size_lines(c: dict) -> list[str]:
    return [
        f"parameters: {c['original_params']:,} -> {c['pruned_params']:,} ({_pct(c['params_ratio'])})",
        f"MACs: {macs_text(c['original_macs'])} -> {macs_text(c['pruned_macs'])} ({_pct(c['macs_ratio'])})",
    ]


def stage_line(c: dict) -> str:
    ft = c["finetune"]
    return (
        f"held-out PSNR against the original: {_db(c['psnr_removed_db'])} dB with the channels cut, {_db(c['psnr_refit_db'])} dB "
        f"re-fitted ({len(c['refit_layers'])} layers, least squares on the original's activations)"
        + (", BatchNorm statistics re-estimated" if c["batchnorm"] == "re-estimated" else "")
        + f", {_db(c['final_psnr_db'])} dB after {ft['steps_run']} fine-tuning steps in {ft['seconds']} s"
        + (" (no step beat the re-fit: kept)" if c["kept_start"] else "")
    )


def channel_summary(report: dict) -> str:
    """Terminal lines after the artifact table."""
    c = report["channel_pruning"]
    lines = [f"channels: {target_text(c['target'])}{'' if c['met_target'] else ' (NOT reached)'}; {c['importance']} importance"]
    lines += size_lines(c) + [stage_line(c)]
    lines.append("kept: " + ", ".join(f"{'+'.join(g['layers']) or '?'} {g['kept']}/{g['channels']}" for g in c["groups"]))
    for r in c["comparison"]:
        lines.append(
            f"{r['format']} {r['precision']}: {_kib(r['original_size_bytes'])} -> {_kib(r['pruned_size_bytes'])} ({_pct(r['size_ratio'])}), "
            f"p50 {r['original_p50_ms']:.3f} -> {r['pruned_p50_ms']:.3f} ms, {_speedup(r['speedup'])} faster in CPU time "
            f"({_speedup(r.get('wall_speedup'))} wall clock), PSNR {_db(r['pruned_psnr_db'])} dB"
        )
    for a in c.get("search") or []:
        lines.append(_attempt(a))
    lines += [f"note: {n}" for n in c["notes"] + c["finetune"].get("notes", [])]
    lines += [f"note: {Path(a['path']).name}: {n}" for a in report["artifacts"] for n in a.get("notes", [])]
    lines.append(f"pruned model: {c['pruned_model']}")
    return "\n".join(lines)


def channel_markdown(c: dict) -> str:
    lines = ["", "## Channel pruning", "", f"- target: {target_text(c['target'])}{'' if c['met_target'] else ' (**not reached**)'}; "
             f"importance: {c['importance']}"]
    lines += [f"- {line}" for line in size_lines(c) + [stage_line(c)]]
    lines.append(f"- pruned model: `{c['pruned_model']}` (a plain Keras model with fewer filters)")
    lines += ["", "| group (layers) | channels kept | PSNR with only this group pruned, by channels kept |", "|---|---|---|"]
    for g in c["groups"]:
        curve = ", ".join(f"{s['kept']}: {s['psnr_db']:.1f}" for s in g["sensitivity"])
        lines.append(f"| {', '.join(g['layers'])} | {g['kept']} / {g['channels']} | {curve} |")
    if c["layers"]:
        lines += ["", "| layer | class | filters/units |", "|---|---|---|"]
        lines += [f"| {r['name']} | {r['class']} | {r['before']} → {r['after']} |" for r in c["layers"]]
    if c["comparison"]:
        lines += ["", "| format | precision | size original → pruned | p50 ms original → pruned | speed-up (CPU time) | speed-up (wall) | PSNR dB | SSIM |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [
            f"| {r['format']} | {r['precision']} | {r['original_size_bytes']:,} → {r['pruned_size_bytes']:,} ({_pct(r['size_ratio'])}) | "
            f"{r['original_p50_ms']:.3f} → {r['pruned_p50_ms']:.3f} | {_speedup(r['speedup'])} | {_speedup(r.get('wall_speedup'))} | "
            f"{_db(r['pruned_psnr_db'])} | {_ssim(r['pruned_ssim'])} |"
            for r in c["comparison"]
        ]
        lines += ["", "The original and pruned artifacts timed against each other in interleaved rounds (one runtime thread); the speed-up "
                  "is their CPU time per run, which other processes' load does not change, the wall-clock ratio beside it."]
    if c.get("search"):
        lines += ["", "Sizes tried:", ""] + [f"- {_attempt(a)}" for a in c["search"]]
    lines += [""] + [f"- note: {n}" for n in c["notes"] + c["finetune"].get("notes", [])] + [""]
    return "\n".join(lines)


def _attempt(a: dict) -> str:
    how = f"fine-tuned {a.get('steps', 0)} steps" if a["fine_tuned"] else "re-fitted only"
    return (
        f"tried {_pct(a['macs_fraction'])} of the MACs ({a['params']:,} parameters): {_db(a['psnr_refit_db'])} dB re-fitted, "
        f"{_db(a['psnr_db'])} dB {how}, {'passed' if a['passed'] else 'missed'}{' <- picked' if a.get('picked') else ''}"
    )


def _speedup(x) -> str:
    return "-" if x is None else f"{x:.2f}x"
