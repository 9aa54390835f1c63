"""report.html: the run as one self-contained page: what the artifacts draw beside the float model.

Rendered from the report (as ``report.json`` holds it) and the previews a run keeps in memory
(``pipelines.session.Previews``: the float model's and each artifact's outputs on the first
held-out samples). Pictures are PNGs (PIL) and charts SVGs (matplotlib), embedded as ``data:``
URIs; the page's Content-Security-Policy allows nothing else, so it opens offline and loads
nothing from the network. The page is a jinja2 template (``templates/report.html.j2``): jinja2
is the well-kept standard for HTML templates in Python and escapes every value it inserts.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from gencompress.report import charts, samples
from gencompress.report.channel_sections import stage_line, target_text
from gencompress.report.macs import macs_text

TEMPLATES = Path(__file__).with_name("templates")
ROWS = ("float model", "artifact", "|error|")


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png(data: bytes) -> str:
    return data_uri(data, "image/png")


def _svg(data: bytes | None) -> str | None:
    return None if data is None else data_uri(data, "image/svg+xml")


def render_html(report: dict, previews=None) -> str:
    """The page for ``report`` (``Report.model_dump(mode="json")``); ``previews`` draws the
    output grids (``None``: the page says they were not kept)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["kib"] = _kib
    env.filters["num"] = _num
    env.filters["macs"] = macs_text
    context = {
        "report": report,
        "title": f"gencompress {report['command']}: {Path(report['model']['path']).name}",
        "settings": _settings(report["settings"]),
        "artifacts": [_artifact(i, a, report, previews) for i, a in enumerate(report["artifacts"])],
        "gates": _gates(report.get("gates")),
        "browser": _browser(report),
        "sensitivity": _sensitivity(report.get("sensitivity")),
        "training": _training_charts(report),
        "previews_kept": previews is not None,
        "error_scale": samples.ERROR_SCALE,
        "recipe": json.dumps(report["recipe"]["document"], indent=2) if report.get("recipe") else None,
        "channels": _channels(report.get("channel_pruning")),
    }
    return env.get_template("report.html.j2").render(**context)


def _channels(c: dict | None) -> dict | None:
    """The channel-pruning section's sentences (the figures come from the section itself)."""
    if not c:
        return None
    return {"c": c, "target": target_text(c["target"]), "stages": stage_line(c)}


def _settings(settings: dict) -> list[tuple[str, str]]:
    rows = []
    for key, value in settings.items():
        if isinstance(value, dict):
            value = json.dumps(_pruned(value), separators=(", ", ": "))
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        rows.append((key, "-" if value is None else str(value)))
    return rows


def _pruned(value):
    """Nested settings without their unset (``None``) and empty entries, for one line."""
    if isinstance(value, dict):
        kept = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, {}, [])}
    return value


def _artifact(index: int, a: dict, report: dict, previews) -> dict:
    name = Path(a["path"]).name
    search = a.get("fallback") or a.get("smallest_int8_search")
    return {
        "index": index,
        "name": name,
        "a": a,
        "outputs": _grids(index, name, report, previews),
        "search": _search(a, search, report) if search else None,
    }


def _grids(index: int, name: str, report: dict, previews) -> list[dict] | None:
    """Per model output: rows of PNGs (images) or a line chart (anything else)."""
    if previews is None or name not in previews.outputs:
        return None
    figures = []
    names = [t["name"] for t in report["model"]["outputs"]]
    for o, (ref, out) in enumerate(zip(previews.reference, previews.outputs[name])):
        fig = {"id": f"grid-{index}-{o}", "output": names[o] if o < len(names) else str(o), "samples": len(ref)}
        if samples.is_image(ref):
            rng = previews.output_range
            fig["rows"] = [
                (ROWS[0], _png(samples.row_png(samples.to_uint8(ref, rng)))),
                (ROWS[1], _png(samples.row_png(samples.to_uint8(out, rng)))),
                (ROWS[2], _png(samples.row_png(samples.error_uint8(ref, out, rng)))),
            ]
            err = np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64))
            fig["max_error"] = float(np.nanmax(err)) if err.size else 0.0
        else:
            fig["chart"] = _svg(charts.signal_chart(np.asarray(ref), np.asarray(out)))
        figures.append(fig)
    return figures


def _search(a: dict, search: dict, report: dict) -> dict:
    attempts = search["attempts"]
    chosen = next((i for i, t in enumerate(attempts) if t["label"] == search["chosen"] and t["size_bytes"] == a["size_bytes"]), None)
    if chosen is None:
        chosen = next((i for i, t in enumerate(attempts) if t["label"] == search["chosen"]), None)
    float_size = next(
        (f["size_bytes"] for f in report["artifacts"] if f["format"] == a["format"] and f["precision"] == "float32" and not f.get("variant")),
        None,
    )
    return {
        "record": search,
        "chosen": chosen,
        "chart": _svg(charts.search_chart(attempts, chosen, search.get("target_psnr_db"), float_size)),
    }


def _gates(section: dict | None) -> dict | None:
    if not section:
        return None
    from gencompress.report.render import GATE_WORDS, gate_option, gate_value

    def row(c):
        what, unit, bound = GATE_WORDS[c["gate"]]
        return {**c, "what": what, "bound": bound, "unit": unit, "shown": gate_value(c["measured"], c["gate"]),
                "limit_shown": gate_value(c["limit"], c["gate"]), "option": gate_option(c)}

    limits = [
        (fmt, [(GATE_WORDS[g][0], GATE_WORDS[g][2], gate_value(v, g), GATE_WORDS[g][1]) for g, v in given.items()])
        for fmt, given in section["limits"].items()
    ]
    checks = [row(c) for c in section["checks"]]
    return {"limits": limits, "checks": checks, "failed": [c for c in checks if not c["passed"]], "latency_rounds": section.get("latency_rounds"),
            "latency_round_runs": section.get("latency_round_runs")}


def _browser(report: dict) -> dict | None:
    """The artifacts' browser runs (``--browser``) beside their native p50, or ``None``."""
    rows = [{"name": Path(a["path"]).name, "run": a["browser"], "native_p50": a["latency_ms"]["p50"]}
            for a in report["artifacts"] if a.get("browser")]
    return {"browser": rows[0]["run"]["browser"], "rows": rows} if rows else None


def _sensitivity(sensitivity: dict | None) -> list[dict]:
    if not sensitivity:
        return []
    return [
        {"format": fmt, "sens": sens, "chart": _svg(charts.sensitivity_chart(sens["units"], sens["int8_psnr_db"])) if sens["units"] else None}
        for fmt, sens in sensitivity.items()
    ]


def _training_charts(report: dict) -> dict:
    """Fine-tuning curves of pruning, distillation and QAT, where the run had them."""
    found = {"pruning": None, "distillation": None, "qat": None}
    pruning, distillation, qat = report.get("pruning") or report.get("channel_pruning"), report.get("distillation"), report.get("qat")
    if pruning:
        found["pruning"] = _svg(charts.history_chart(pruning["finetune"]["history"], "pruning: fine-tuning against the original"))
    if distillation:
        found["distillation"] = _svg(charts.history_chart(distillation["finetune"]["history"], "distillation: the student against the teacher"))
        qat = qat or distillation.get("qat")
    if qat and isinstance(qat.get("finetune"), dict) and qat["finetune"].get("history"):
        found["qat"] = _svg(charts.history_chart(qat["finetune"]["history"], "quantization-aware training"))
    return found


def _kib(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _num(x, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)
