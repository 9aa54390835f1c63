"""The library calls behind the CLI: build artifacts for a loaded model, measure them, report.

Each command (export, quantize, ...) is ``prepare`` → ``build artifacts`` → ``evaluate`` →
``report``; the CLI only parses options and renders.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gencompress.artifacts import write_bytes_atomic
from gencompress.calibration import CalibrationSet, build_sets
from gencompress.converters import FORMATS, PRECISIONS
from gencompress.errors import ConversionError, OptionError

_EXT = {"tflite": ".tflite", "onnx": ".onnx"}


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes a run, validated once. Unknown keys are rejected by the dataclass."""

    precisions: tuple[str, ...] = ("int8",)
    formats: tuple[str, ...] = FORMATS
    calibration: str = "noise"
    calibration_samples: int = 200
    eval_samples: int = 64
    seed: int = 0
    input_range: tuple[float, float] = (-1.0, 1.0)
    calibration_method: str = "minmax"
    int8_io: bool = False
    threads: int = 1
    latency_runs: int = 50
    min_psnr: float = 0.0

    def __post_init__(self):
        from gencompress.converters.onnx import CALIBRATION_METHODS

        for p in self.precisions:
            if p not in PRECISIONS:
                raise OptionError(f"unknown precision '{p}' (choose from {', '.join(PRECISIONS)})")
        for f in self.formats:
            if f not in FORMATS:
                raise OptionError(f"unknown format '{f}' (choose from {', '.join(FORMATS)})")
        if not self.formats:
            raise OptionError("no output format given")
        if self.calibration_samples < 1 or self.eval_samples < 1:
            raise OptionError("--calibration-samples and --eval-samples must be at least 1")
        if not (np.isfinite(self.min_psnr) and self.min_psnr >= 0):
            raise OptionError(f"--min-psnr must be a number of dB >= 0 (0 turns the guard off), got {self.min_psnr}")
        if self.threads < 1 or self.latency_runs < 1:
            raise OptionError("--threads and latency runs must be at least 1")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise OptionError(
                f"unknown calibration method '{self.calibration_method}' (choose from {', '.join(CALIBRATION_METHODS)})"
            )
        lo, hi = self.input_range
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise OptionError(f"--input-range needs two finite numbers LOW < HIGH, got {lo}, {hi}")


@dataclass
class Session:
    """A model with its data and float reference, ready to build and measure artifacts."""

    model: object
    options: RunOptions
    output_dir: Path
    calibration: CalibrationSet
    evaluation: CalibrationSet
    reference: list[np.ndarray]
    output_range: tuple[float, float]
    output_range_source: str
    artifacts: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    float_sizes: dict = field(default_factory=dict)
    onnx_exports: dict = field(default_factory=dict, repr=False)

    def artifact_path(self, fmt: str, precision: str, tag: str = "") -> Path:
        """``<stem>[-tag].<precision>.<ext>``, e.g. ``dcgan-pruned.int8.tflite``."""
        tag = f"-{tag}" if tag else ""
        return self.output_dir / f"{self.model.stem}{tag}.{precision}{_EXT[fmt]}"


def prepare(model, options: RunOptions, output_dir: str | Path) -> Session:
    """Build calibration and held-out sets and the float reference outputs on the held-out set."""
    from gencompress.report.metrics import measured_output_range

    calib, held = build_sets(
        model.inputs,
        options.calibration,
        options.calibration_samples,
        options.eval_samples,
        options.seed,
        options.input_range,
        model.label_ranges,
    )
    reference = model.predict(held.arrays)
    known = model.known_output_range()
    if known is not None:
        output_range, source = known, model.output_activation
    else:
        output_range, source = measured_output_range(reference), "measured on the evaluation set"
    return Session(model, options, Path(output_dir), calib, held, reference, output_range, source)


def build_artifact(session: Session, fmt: str, precision: str, model=None) -> bytes:
    """The bytes of one artifact: ``fmt`` in (tflite, onnx), ``precision`` in PRECISIONS.

    ``model`` converts a derived model (pruned, fine-tuned, a student) instead of the session's;
    it is still measured against the session's original float model.
    """
    from gencompress.converters.onnx import quantize_onnx
    from gencompress.converters.tflite import convert_tflite

    opts = session.options
    model = model if model is not None else session.model
    if fmt == "tflite":
        return convert_tflite(model, precision, session.calibration, int8_io=opts.int8_io)
    float_bytes = float_onnx(session, model)
    if precision == "float32":
        return float_bytes
    return quantize_onnx(float_bytes, precision, session.calibration, opts.calibration_method)


def float_onnx(session: Session, model=None) -> bytes:
    """The float ONNX graph of ``model`` (default: the session's), exported once per model."""
    from gencompress.converters.onnx import export_onnx_float

    model = model if model is not None else session.model
    cache = session.onnx_exports
    if id(model) not in cache:
        cache[id(model)] = (model, export_onnx_float(model))  # holding the model keeps its id unique
    return cache[id(model)][1]


def add_artifact(session: Session, fmt: str, precision: str, data: bytes, tag: str = "", notes=()) -> dict:
    """Write ``data`` atomically as an artifact, measure it and append it to the session."""
    path = write_bytes_atomic(session.artifact_path(fmt, precision, tag), data)
    result = evaluate_artifact(session, path, fmt, precision)
    if tag:
        result["variant"] = tag
    result["notes"] = list(notes)
    session.artifacts.append(result)
    return result


def evaluate_artifact(session: Session, path: Path, fmt: str, precision: str) -> dict:
    """Size, gzip size, latency and fidelity of one artifact file against the float model."""
    from gencompress.converters.onnx import OnnxRunner
    from gencompress.converters.tflite import TFLiteRunner
    from gencompress.report.latency import measure_latency
    from gencompress.report.metrics import fidelity, sizes

    model = session.model
    runner_cls = TFLiteRunner if fmt == "tflite" else OnnxRunner
    runner = runner_cls(
        str(path), model.input_names, [t.name for t in model.outputs], threads=session.options.threads
    )
    outputs = runner.run_all(session.evaluation)
    size = sizes(path)
    if precision == "float32":  # the first float32 artifact of a format (the original) is the size reference
        session.float_sizes.setdefault(fmt, size["size_bytes"])
    float_size = session.float_sizes.get(fmt)
    return {
        "path": str(path),
        "format": fmt,
        "precision": precision,
        **size,
        "size_vs_float": None if not float_size else round(size["size_bytes"] / float_size, 4),
        "latency_ms": measure_latency(runner, session.evaluation.sample(0), runs=session.options.latency_runs),
        "fidelity": fidelity(session.reference, outputs, session.output_range),
        "passed": None,
    }


def add_guarded_int8(session: Session, fmt: str, log=lambda msg: None) -> dict:
    """The smallest int8-or-better artifact meeting ``--min-psnr``, with the search in the report."""
    from gencompress.compress.fallback import search

    opts = session.options
    float_p50 = next(
        a["latency_ms"]["p50"] for a in session.artifacts if a["format"] == fmt and a["precision"] == "float32"
    )
    chosen, attempts, ranking = search(session, fmt, opts.min_psnr, float_p50, log)
    notes = []
    if chosen.label != "int8":
        notes.append(f"chosen by the fidelity search: {chosen.label}")
    if chosen.slower_than_float:
        notes.append(
            f"slower than float ({chosen.p50_ms:.3f} vs {float_p50:.3f} ms p50): it is the smallest "
            f"artifact that met {opts.min_psnr:g} dB"
        )
    result = add_artifact(session, fmt, chosen.precision, chosen.data, notes=notes)
    plain = next(a for a in attempts if a.label == "int8") if attempts[0].label == "int8" else attempts[0]
    result["fallback"] = {
        "target_psnr_db": opts.min_psnr,
        "chosen": chosen.label,
        "float_layers": [u.label for u in chosen.float_units],
        "size_cost_bytes": chosen.size_bytes - plain.size_bytes,
        "latency_cost_ms": round(chosen.p50_ms - plain.p50_ms, 4),
        "attempts": [a.summary() for a in attempts],
        "most_harmful_units": [
            {
                "label": r["unit"].label,
                "only_quantized_psnr_db": r["only_quantized_psnr_db"],
                "all_but_psnr_db": r["all_but_psnr_db"],
            }
            for r in ranking
        ],
    }
    return result


def _grade(session: Session) -> None:
    target = session.options.min_psnr
    for a in session.artifacts:
        psnr = a["fidelity"]["psnr_db"]
        a["passed"] = None if target <= 0 else bool(psnr is not None and psnr >= target)


def fidelity_failures(report: dict) -> list[str]:
    """One sentence per artifact that missed ``--min-psnr``: best PSNR and the layers responsible."""
    lines = []
    for a in report["artifacts"]:
        if a.get("passed") is not False:
            continue
        fb = a.get("fallback", {})
        culprits = [u["label"] for u in fb.get("most_harmful_units", [])[:3]]
        lines.append(
            f"{a['format']} {a['precision']} reached {a['fidelity']['psnr_db']} dB, below --min-psnr "
            f"{report['settings']['min_psnr']:g}"
            + (f" (best of {len(fb['attempts'])} tries; most sensitive: {', '.join(culprits)})" if fb else "")
        )
    return lines


# A fidelity "target" every artifact meets: the guard then simply picks the smallest int8 variant.
_NO_FLOOR_DB = 1e-6


def build_artifacts(session: Session, precisions, log=lambda msg: None, hint: str = "") -> None:
    """Write and measure each precision per format (float32 first: it is the reference).

    int8 goes through the fidelity guard. When the session's own float model already misses
    ``--min-psnr`` (a pruned model or a student, measured against the original), no quantization
    can reach it: the smallest int8 variant is kept, graded as failing, with a note (``hint``
    says what to do instead). A precision a converter cannot build is recorded in
    ``session.failures`` and the others still go on.
    """
    opts = session.options
    for fmt in opts.formats:
        for precision in precisions:
            try:
                if precision == "int8" and opts.min_psnr > 0:
                    _add_int8(session, fmt, log, hint)
                else:
                    add_artifact(session, fmt, precision, build_artifact(session, fmt, precision))
            except ConversionError as exc:
                if precision == "float32":
                    raise  # no reference: nothing else can be measured
                # One precision a converter cannot do (say, no 16x8 kernel for PReLU) must not
                # cost the user the others: record it, go on, and fail the run at the end.
                session.failures.append({"format": fmt, "precision": precision, "error": str(exc)})


def _add_int8(session: Session, fmt: str, log, hint: str) -> dict:
    import dataclasses

    opts = session.options
    float_psnr = next(
        (a["fidelity"]["psnr_db"] for a in session.artifacts if a["format"] == fmt and a["precision"] == "float32"),
        None,
    )
    if float_psnr is None or float_psnr >= opts.min_psnr:
        return add_guarded_int8(session, fmt, log)
    floorless = dataclasses.replace(session, options=dataclasses.replace(opts, min_psnr=_NO_FLOOR_DB))
    result = add_guarded_int8(floorless, fmt, log)
    # Not a fidelity search: keep its record apart, and drop the notes about the floor.
    result["smallest_int8_search"] = {**result.pop("fallback"), "target_psnr_db": None}
    result["notes"] = [n for n in result["notes"] if f"{_NO_FLOOR_DB:g} dB" not in n]
    result["notes"].append(
        f"the float model is at {float_psnr} dB, below --min-psnr {opts.min_psnr:g}: no quantization can "
        f"reach it, so the smallest int8 variant was kept{f' ({hint})' if hint else ''}"
    )
    return result


def run(model, options: RunOptions, output_dir: str | Path, command: str, log=lambda msg: None) -> dict:
    """Build, write and measure the float32 reference and each requested precision, per format.

    Returns the report (also written as report.json / report.md into ``output_dir``).
    """
    from gencompress.report.render import write_report

    session = prepare(model, options, output_dir)
    build_artifacts(session, ["float32"] + [p for p in options.precisions if p != "float32"], log)
    _grade(session)
    report = make_report(session, command)
    write_report(report, output_dir)
    return report


def make_report(session: Session, command: str) -> dict:
    opts = session.options
    report = {
        "command": command,
        "model": {
            **session.model.to_dict(),
            "output_range": [float(x) for x in session.output_range],
            "output_range_source": session.output_range_source,
        },
        "evaluation": {**session.evaluation.describe(), "seed": opts.seed},
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()},
        "artifacts": session.artifacts,
        "failures": session.failures,
    }
    if any(a["precision"] in ("int8", "int16x8") for a in session.artifacts):
        report["calibration"] = {**session.calibration.describe(), "method": opts.calibration_method, "seed": opts.seed}
    return report


def analyze(model, options: RunOptions, output_dir: str | Path) -> dict:
    """Per-layer int8 sensitivity for each format, written as a report with a ``sensitivity`` key."""
    from gencompress.compress.fallback import sensitivity
    from gencompress.report.render import write_report

    session = prepare(model, options, output_dir)
    report = make_report(session, "analyze")
    report["sensitivity"] = {fmt: sensitivity(session, fmt) for fmt in options.formats}
    write_report(report, output_dir)
    return report
