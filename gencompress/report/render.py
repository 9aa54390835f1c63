"""The report as text: report.md and the terminal's table and summary lines.

Everything renders from the report as ``report.json`` holds it (``Report.model_dump()``).
"""

from __future__ import annotations

from pathlib import Path

from gencompress.printable import printable
from gencompress.report import channel_sections, sections
from gencompress.report.macs import macs_text


def _rows(report: dict) -> list[list[str]]:
    rows = []
    for a in report["artifacts"]:
        fid = a.get("fidelity") or {}
        ratio = a.get("size_vs_float")
        rows.append(
            [
                printable(Path(a["path"]).name),
                a["precision"],
                _kib(a["size_bytes"]),
                _kib(a["gzip_bytes"]),
                "-" if ratio is None else f"{100 * ratio:.0f}%",
                f"{a['latency_ms']['p50']:.3f}",
                _psnr(fid.get("psnr_db")),
                _psnr(fid.get("psnr_worst_db")),
                "-" if fid.get("ssim") is None else f"{fid['ssim']:.4f}",
                {True: "yes", False: "NO", None: "-"}[a.get("passed")],
            ]
        )
    return rows


HEADER = ["artifact", "precision", "size", "gzip", "vs float", "p50 ms", "PSNR dB", "worst dB", "SSIM", "passed"]


def terminal_table(report: dict) -> str:
    rows = [HEADER] + _rows(report)  # cells escaped (a model file named with a newline stays one row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


BROWSER_HEADER = ["artifact", "runtime", "loads", "PSNR dB", "vs native dB", "p50 ms", "native p50 ms", "p50 ms, threads"]


def _browser_rows(report: dict) -> list[list[str]]:
    rows = []
    for a in report["artifacts"]:
        run = a.get("browser")
        if not run:
            continue
        fid = run.get("fidelity") or {}
        lat, threaded = run.get("latency_ms"), run.get("threads_latency_ms")
        rows.append([
            Path(a["path"]).name,
            f"{run['runtime']} {run['version']}",
            "yes" if run["loaded"] and not run.get("error") else ("NO" if not run["loaded"] else "runs fail"),
            _psnr(fid.get("psnr_db")) if fid else "-",
            _opt(run.get("native_psnr_db")),
            "-" if not lat else f"{lat['p50']:.3f}",
            f"{a['latency_ms']['p50']:.3f}",
            "-" if not threaded else f"{threaded['p50']:.3f} ({run['threads']})",
        ])
    return rows


def browser_table(report: dict, markdown: bool = False) -> str:
    """The artifacts in their browser runtimes (``--browser``) beside the native figures; empty
    when the run did not measure them."""
    rows = _browser_rows(report)
    if not rows:
        return ""
    run = next(a["browser"] for a in report["artifacts"] if a.get("browser"))
    title = (f"in the browser ({run['browser']}, WebAssembly; p50 single-threaded and with threads where the page allows; "
             "PSNR against the float model, 'vs native': against the native runtime's outputs)")
    errors = [f"{Path(a['path']).name}: {a['browser']['error']}" for a in report["artifacts"] if a.get("browser") and a["browser"].get("error")]
    if markdown:
        lines = ["## In the browser", "", title[0].upper() + title[1:] + ".", "", "| " + " | ".join(BROWSER_HEADER) + " |",
                 "|" + "---|" * len(BROWSER_HEADER)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows] + [f"- {e}" for e in errors])
    table = [BROWSER_HEADER] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(BROWSER_HEADER))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([title] + lines + [f"not in the browser: {e}" for e in errors])


def markdown(report: dict) -> str:
    m = report["model"]
    ev = report["evaluation"]
    lo, hi = m["output_range"]
    lines = [
        f"# gencompress {report['command']} report",
        "",
        f"- model: `{m['path']}` ({m['format']}, {m['params']:,} parameters" + (f", {macs_text(m['macs'])} MACs" if m.get("macs") else "") + ")",
        "- inputs: " + ", ".join(f"`{t['name']}` {t['shape']} {t['dtype']}" for t in m["inputs"]),
        "- outputs: " + ", ".join(f"`{t['name']}` {t['shape']} {t['dtype']}" for t in m["outputs"]),
        f"- output range: [{lo:g}, {hi:g}] ({m['output_range_source']})",
        f"- evaluation: {ev['samples']} held-out samples from {ev['source']}, seed {ev['seed']}"
        + (f" ({ev['tail_samples']} of them tail latents)" if ev.get("tail_samples") else ""),
    ]
    if report.get("calibration"):
        c = report["calibration"]
        lines.append(f"- calibration: {c['samples']} samples from {c['source']}, method {c['method']}")
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(report)]
    if report.get("sensitivity"):
        lines += ["", sensitivity_table(report, markdown=True)]
    if browser_table(report):
        lines += ["", browser_table(report, markdown=True)]
    notes = [f"- {n}" for n in report.get("notes", [])]
    notes += [f"- `{Path(a['path']).name}`: {n}" for a in report["artifacts"] for n in a.get("notes", [])]
    notes += [f"- {f['format']} {f['precision']} FAILED: {f['error']}" for f in report.get("failures", [])]
    notes = [printable(n) for n in notes]
    if notes:
        lines += ["", "## Notes", ""] + notes
    lines += [
        "",
        "PSNR and SSIM are against the float Keras model on the held-out set, over the output range "
        "(capped at 200 dB; NaN: the artifact produced NaN/Inf); worst: the lowest PSNR of a single held-out sample. Latency: batch 1 after warm-up, LiteRT (XNNPACK) for .tflite, "
        f"onnxruntime CPU for .onnx, {report['settings']['threads']} thread(s).",
        "",
    ]
    if report.get("pruning"):
        lines.append(sections.pruning_markdown(report["pruning"]))
    if report.get("channel_pruning"):
        lines.append(channel_sections.channel_markdown(report["channel_pruning"]))
    if report.get("qat"):
        lines.append(sections.qat_markdown(report["qat"]))
    if report.get("distillation"):
        lines.append(sections.distillation_markdown(report["distillation"]))
    return "\n".join(lines).rstrip("\n") + "\n"


def terminal_summary(report: dict) -> str:
    """The lines after the artifact table: the run's notes, then the command's section summary
    (or each artifact's notes); names in them escaped (``sections.terminal_lines``)."""
    notes = [f"note: {n}" for n in report.get("notes", [])]
    if report.get("pruning"):
        section = sections.pruning_summary(report)
    elif report.get("channel_pruning"):
        section = channel_sections.channel_summary(report)
    elif report.get("distillation"):
        section = sections.distillation_summary(report)
    elif report.get("qat"):
        section = sections.qat_summary(report)
    else:
        return sections.terminal_lines(notes + [f"note: {Path(a['path']).name}: {n}" for a in report["artifacts"] for n in a.get("notes", [])])
    return "\n".join([sections.terminal_lines(notes), section]) if notes else section


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _psnr(x) -> str:
    return "NaN" if x is None else f"{x:.2f}"


SENSITIVITY_HEADER = ["format", "unit (layer, op)", "only this int8", "all but this int8", "RMSE/scale"]


def sensitivity_table(report: dict, markdown: bool = False) -> str:
    """Units ranked most sensitive first: PSNR (dB) with only that unit quantized, and with all but it."""
    rows = []
    for fmt, sens in report["sensitivity"].items():
        for u in sens["units"]:
            rows.append(
                [
                    fmt,
                    printable(u["label"]),
                    _opt(u["only_quantized_psnr_db"]),
                    _opt(u["all_but_psnr_db"]),
                    _opt(u.get("rmse_over_scale"), "{:.3f}"),
                ]
            )
        rows.append([fmt, "(everything int8)", _opt(sens["int8_psnr_db"]), "", ""])
    notes = [printable(n) for sens in report["sensitivity"].values() for n in sens.get("notes", [])]
    if markdown:
        out = ["## Sensitivity", "", "| " + " | ".join(SENSITIVITY_HEADER) + " |", "|" + "---|" * len(SENSITIVITY_HEADER)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out + [""] + [f"- {n}" for n in notes])
    table = [SENSITIVITY_HEADER] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(SENSITIVITY_HEADER))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"note: {n}" for n in notes])


def _opt(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


# --------------------------------------------------------------------------- gates

GATE_WORDS = {
    "min_psnr": ("PSNR", "dB", "at least"),
    "min_psnr_worst": ("worst-sample PSNR", "dB", "at least"),
    "min_ssim": ("SSIM", "", "at least"),
    "max_bytes": ("size", "bytes", "at most"),
    "max_size_ratio": ("size vs float", "", "at most"),
    "min_speedup": ("speed-up over float", "x", "at least"),
    "max_latency_ms": ("p50 latency", "ms", "at most"),
}


def gate_value(x, gate: str) -> str:
    if x is None:
        return "not measured"
    return f"{int(x):,}" if gate == "max_bytes" else f"{x:.4g}"


def gate_line(check: dict) -> str:
    """``dcgan.int8.onnx: size 88,371 bytes, limit at most 80,000 (--max-bytes)``."""
    what, unit, bound = GATE_WORDS[check["gate"]]
    sep = "" if unit == "x" else " "
    measured = gate_value(check["measured"], check["gate"]) + (f"{sep}{unit}" if unit and check["measured"] is not None else "")
    option = gate_option(check)
    where = " in the browser" if check.get("runtime") == "browser" else ""
    return f"{check['artifact']}: {what}{where} {measured}, limit {bound} {gate_value(check['limit'], check['gate'])} ({option})"


def gate_option(check: dict) -> str:
    """The option that set a gate: ``--min-speedup`` (``--min-speedup browser:`` in the browser)."""
    option = "--" + check["gate"].replace("_", "-")
    return option + (" browser:" if check.get("runtime") == "browser" else "")


def gate_failures_table(report: dict) -> str:
    """The failed gates as a terminal table: artifact, gate, measured value, limit."""
    section = report.get("gates") or {}
    failed = [c for c in section.get("checks", []) if not c["passed"]]
    if not failed:
        return ""
    rows = [["artifact", "gate", "measured", "limit"]] + [
        [printable(c["artifact"]), gate_option(c), gate_value(c["measured"], c["gate"]),
         f"{GATE_WORDS[c['gate']][2]} {gate_value(c['limit'], c['gate'])}"]
        for c in failed
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"gates failed ({len(failed)}):\n" + "\n".join(lines)
