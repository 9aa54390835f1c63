"""The report sections of prune, QAT and distill: markdown for report.md and terminal lines.

Each reads the section as ``report.json`` holds it (``Report.model_dump()``), so a saved report
renders the same way.
"""

from __future__ import annotations

from pathlib import Path

from gencompress.printable import printable


def pruning_markdown(p: dict) -> str:
    sched = p["schedule"]
    ft = p["finetune"]
    first = next((h for h in ft["history"] if h["step"] >= sched["target_at"] and h["step"] > 0), None)
    lines = [
        "",
        "## Pruning",
        "",
        f"- requested sparsity {p['requested_sparsity']:.0%}, measured {p['measured_sparsity']:.2%} "
        f"({p['zero_weights']:,} of {p['pruned_weights']:,} pruned weights are zero; "
        f"{p['model_sparsity']:.2%} of all {p['model_params']:,} parameters)",
        f"- schedule: {sched['kind']}, from step {sched['begin_step']}"
        + (f" to {sched['end_step']}" if sched.get("end_step") else "")
        + f", masks updated every {sched['frequency']} step(s); structure: {p['structure'] or 'unstructured'}",
        f"- fine-tuning against the original model: {ft['steps_run']} steps in {ft['seconds']} s; validation PSNR "
        + (f"{_db(first['psnr_db'])} dB when the target sparsity was first reached (step {first['step']}), " if first else "")
        + f"best {_db(ft['best_psnr_db'])} dB at step {ft['best_step']}"
        + (" (stopped early)" if ft["stopped_early"] else ""),
        f"- pruned model: `{p['pruned_model']}`",
        "",
        "| layer | class | weight | shape | sparsity |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['class']} | {r['weight']} | {r['shape']} | {r['sparsity']:.2%} |" for r in p["layers"]]
    if p["left_dense"]:
        lines += ["", "Left dense:", ""]
        lines += [f"- {d['name']} ({d['class']}, {d['params']:,} parameters): {d['reason']}" for d in p["left_dense"]]
    if p["gzip"]:
        lines += ["", "| format | precision | gzip original | gzip pruned | gzip ratio | file size ratio |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {g['format']} | {g['precision']}{_variants(g)} | {_int(g['original_gzip_bytes'])} | {g['pruned_gzip_bytes']:,} | "
            f"{_pct(g['gzip_ratio'])} | {_pct(g['size_ratio'])} |"
            for g in p["gzip"]
        ]
    if p["artifact_sparsity"]:
        lines.append("")
    for s in p["artifact_sparsity"]:
        kept = "zeros kept" if s["zeros_kept"] else "ZEROS LOST"
        sparsity = "?" if s["sparsity"] is None else f"{s['sparsity']:.2%}"
        lines.append(f"- `{s['artifact']}`: pruned weights {sparsity} zero in the file ({kept})")
    lines += ["", p["runtime_note"], ""]
    return "\n".join(lines)


def pruning_summary(report: dict) -> str:
    """The terminal lines after the artifact table: sparsity, gzip ratios, notes, the saved model."""
    p = report["pruning"]
    lines = [
        f"sparsity: {p['measured_sparsity']:.2%} of {p['pruned_weights']:,} pruned weights (requested "
        f"{p['requested_sparsity']:.0%}; {len({r['name'] for r in p['layers']})} layers pruned, {len(p['left_dense'])} left dense)"
    ]
    lines += [
        f"gzip {g['format']} {g['precision']}: {g['pruned_gzip_bytes']:,} bytes, {100 * g['gzip_ratio']:.1f}% of the unpruned model's"
        for g in p["gzip"]
        if g["gzip_ratio"] is not None
    ]
    lines += [f"note: {Path(a['path']).name}: {n}" for a in report["artifacts"] for n in a.get("notes", [])]
    lines.append(f"pruned model: {p['pruned_model']}")
    return terminal_lines(lines)


def qat_markdown(section: dict) -> str:
    ft = section["finetune"]
    folded = [r for r in section["batchnorm"] if r["folded"]]
    kept = [r for r in section["batchnorm"] if not r["folded"]]
    lines = [
        "",
        "## Quantization-aware training",
        "",
        f"- scheme: {section['scheme']}; {len(section['quantized_layers'])} layers quantized; activation ranges: "
        f"{section['range_calibration']['method']} ({section['range_calibration']['samples']} samples)",
        f"- fine-tuning against the float model: {ft['steps_run']} steps in {ft['seconds']} s, held-out PSNR "
        f"{_db(ft['initial_psnr_db'])} dB at the start, best {_db(ft['best_psnr_db'])} dB at step {ft['best_step']}"
        + (" (stopped early)" if ft["stopped_early"] else "")
        + (" - no step beat the calibrated start, which is kept" if ft.get("kept_calibrated_start") else ""),
        f"- QAT Keras model vs the float model: {_db(section['qat_keras_psnr_db'])} dB",
        "- BatchNorm folded: " + (", ".join(f"{r['batchnorm']} into {r['into']}" for r in folded) or "none")
        + (f" (float outputs changed by at most {section['fold_max_abs_error']:.2g})" if folded and section["fold_max_abs_error"] is not None else ""),
    ]
    lines += [f"- BatchNorm not folded: {r['batchnorm']} ({r['reason']})" for r in kept]
    if section["left_float"]:
        lines += ["- left float (tfmot cannot quantize them):"]
        lines += [f"  - {d['name']} ({d['class']}, {d['params']:,} parameters): {d['reason']}" for d in section["left_float"]]
    for e in section["exports"]:
        extra = f"; ops computing in float: {', '.join(e['float_ops'])}" if e.get("float_ops") else ""
        lines.append(
            f"- `{e['artifact']}` vs the QAT Keras model: {_db(e['agreement_psnr_db'])} dB "
            f"({'agrees' if e['agrees'] else 'DIFFERS'}, target {section['agreement_target_db']:g} dB){extra}"
        )
    if section.get("comparison"):
        lines += [
            "",
            "| format | post-training | size | PSNR dB | best PTQ int8 at QAT's size | QAT int8 | size | PSNR dB | QAT - PTQ int8 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in section["comparison"]:
            best = r["ptq_int8_best"] or {}
            lines.append(
                f"| {r['format']} | {r['ptq_chosen'] or r['ptq_precision'] or '-'} | {_size(r['ptq_size_bytes'])} | {_db(r['ptq_psnr_db'])} | "
                f"{best.get('label', '-')}: {_db(best.get('psnr_db'))} dB, {_size(best.get('size_bytes'))} | {r['qat_artifact']} | {_size(r['qat_size_bytes'])} | "
                f"{_db(r['qat_psnr_db'])} | {_signed(r['qat_minus_ptq_int8_db'])} |"
            )
    return "\n".join(lines) + "\n"


def qat_summary(report: dict) -> str:
    """The terminal lines after the artifact table."""
    s = report["qat"]
    ft = s["finetune"]
    lines = [
        f"QAT: {ft['steps_run']} fine-tuning steps in {ft['seconds']} s, held-out PSNR {_db(ft['initial_psnr_db'])} -> "
        f"{_db(ft['final_psnr_db'])} dB{' (stopped early)' if ft['stopped_early'] else ''}"
        f"{' (no step beat the calibrated start: kept)' if ft['kept_calibrated_start'] else ''}; "
        f"{sum(r['folded'] for r in s['batchnorm'])} BatchNorm folded, {len(s['left_float'])} layers left float"
    ]
    lines += [f"left float: {d['name']} ({d['class']}): {d['reason']}" for d in s["left_float"]]
    for e in s["exports"]:
        lines.append(f"{e['artifact']} vs QAT Keras model: {_db(e['agreement_psnr_db'])} dB ({'agrees' if e['agrees'] else 'DIFFERS'})")
    for r in s.get("comparison", []):
        best = r["ptq_int8_best"] or {}
        lines.append(
            f"{r['format']}: post-training int8 {_db(best.get('psnr_db'))} dB ({best.get('label', '-')}, {_size(best.get('size_bytes'))}), "
            f"QAT int8 {_db(r['qat_psnr_db'])} dB ({_size(r['qat_size_bytes'])}): {_signed(r['qat_minus_ptq_int8_db'])} dB"
        )
    lines += [f"note: {Path(a['path']).name}: {n}" for a in report["artifacts"] for n in a.get("notes", [])]
    return terminal_lines(lines)


def distillation_markdown(d: dict) -> str:
    ft = d["finetune"]
    source = f"width {d['width']:g}" if d["student_source"] == "derived" else f"`{d['student_source']}`"
    lines = [
        "",
        "## Distillation",
        "",
        f"- student: {source}" + (f", depth {d['depth']:g}" if d["depth"] < 1 else "") + f" → `{d['student_model']}`",
        f"- parameters: teacher {d['teacher_params']:,}, student {d['student_params']:,} ({_pct(d['params_ratio'])})",
    ]
    if d["resized_layers"]:
        lines.append("- resized: " + ", ".join(f"{r['name']} {r['teacher']}→{r['student']}" for r in d["resized_layers"]))
    if d.get("init"):
        lines.append(f"- initialised: {init_text(d['init'])}")
    if d.get("student_macs"):
        lines.append(f"- MACs: teacher {d['teacher_macs']:,}, student {d['student_macs']:,} ({_pct(d['student_macs'] / d['teacher_macs'])})")
    if d["dropped_blocks"]:
        lines.append("- dropped blocks: " + "; ".join(" + ".join(b) for b in d["dropped_blocks"]))
    fl = d["feature_loss"]
    lines.append(
        f"- loss: {d['loss']} on the outputs"
        + (f" + {fl['weight']:g} × feature matching ({', '.join(p['teacher_layer'] + '↔' + p['student_layer'] for p in fl['pairs'])})" if fl else "")
    )
    lines.append(
        f"- training: {ft['steps_run']} steps in {ft['seconds']} s (batch {d['batch_size']}), held-out PSNR against the teacher "
        f"{_db(ft['initial_psnr_db'])} → best {_db(ft['best_psnr_db'])} dB at step {ft['best_step']}"
        + (" (stopped early)" if ft["stopped_early"] else "")
    )
    if d["distribute"]:
        lines.append(f"- distributed: {d['distribute']['strategy']}, {d['distribute']['replicas']} replicas")
    if d["checkpoint"]:
        resumed = d["checkpoint"]["resumed_from_step"]
        lines.append(f"- checkpoints: `{d['checkpoint']['dir']}`" + (f" (resumed at step {resumed})" if resumed is not None else ""))
    if d["samples"]:
        lines.append(f"- samples: `{Path(d['samples']).name}` (rows: teacher, then student, same inputs)")
    lines += [
        "",
        "| format | student precision | size teacher → student | p50 ms teacher → student | PSNR vs teacher | SSIM |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["side_by_side"]:
        lines.append(
            f"| {r['format']} | {r['precision']}{' (' + r['chosen'] + ')' if r['chosen'] not in (None, r['precision']) else ''} | "
            f"{r['teacher_size_bytes']:,} → {r['student_size_bytes']:,} ({_pct(r['size_ratio'])}) | "
            f"{r['teacher_p50_ms']:.3f} → {r['student_p50_ms']:.3f} ({_pct(r['latency_ratio'])}) | "
            f"{_db(r['psnr_db'])} | {_ssim(r['ssim'])} |"
        )
    lines += ["", "Sizes and latencies of the student's artifacts are compared with the teacher's float32 artifact of the same format.", ""]
    return "\n".join(lines)


def distillation_summary(report: dict) -> str:
    """Terminal lines after the artifact table."""
    d = report["distillation"]
    ft = d["finetune"]
    lines = [
        f"student: {d['student_params']:,} parameters, {_pct(d['params_ratio'])} of the teacher's {d['teacher_params']:,}"
        + (f"; {_pct(d['student_macs'] / d['teacher_macs'])} of its MACs" if d.get("student_macs") and d.get("teacher_macs") else ""),
        f"training: {ft['steps_run']} steps in {ft['seconds']} s, held-out PSNR against the teacher {_db(ft['initial_psnr_db'])} -> "
        f"best {_db(ft['best_psnr_db'])} dB" + (" (stopped early)" if ft["stopped_early"] else ""),
    ]
    if d.get("init"):
        lines.insert(1, f"initialised: {init_text(d['init'])}")
    lines += [
        f"{r['format']} {r['precision']}: size {_pct(r['size_ratio'])}, p50 {_pct(r['latency_ratio'])} of the teacher's float32; "
        f"PSNR {_db(r['psnr_db'])} dB vs the teacher"
        for r in d["side_by_side"]
    ]
    lines += [f"note: {Path(a['path']).name}: {n}" for a in report["artifacts"] for n in a.get("notes", [])]
    if d["samples"]:
        lines.append(f"samples: {d['samples']}")
    lines.append(f"student model: {d['student_model']}")
    return terminal_lines(lines)


def init_text(init: dict) -> str:
    """How a derived student's weights started (``--init``)."""
    if init["kind"] != "teacher":
        return f"fresh seeded weights ({init['reason']})" if init["kind"] == "random" else init["reason"]
    return (
        f"from the teacher's most important channels ({init['importance']} importance): {_db(init['psnr_removed_db'])} dB cut, "
        f"{_db(init['psnr_refit_db'])} dB re-fitted, training starts at {_db(init['psnr_start_db'])} dB"
    )


def _db(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _signed(x) -> str:
    return "-" if x is None else f"{x:+.2f}"


def _size(n) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"


def _int(x) -> str:
    return "-" if x is None else f"{x:,}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ssim(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _variants(g) -> str:
    a, b = g.get("original_variant"), g.get("pruned_variant")
    if not (a or b):
        return ""
    return f" ({a})" if a == b else f" (original: {a or '-'}; pruned: {b or '-'})"


def terminal_lines(lines) -> str:
    """Lines for the terminal, each one line as printed: control characters in names escaped."""
    return "\n".join(printable(line) for line in lines)
