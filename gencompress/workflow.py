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
from gencompress.progress import Progress

_EXT = {"tflite": ".tflite", "onnx": ".onnx"}


# Sample counts left to gencompress (``None``) follow the model's output size: about this many
# output values go through calibration and evaluation, within these bounds. A 16×16 generator
# gets 200 calibration and 64 held-out samples; a 96→384 super-resolution model 32 and 16 (its
# 16 held-out images are 7 million output values; 200 calibration images took 5 minutes).
AUTO_CALIBRATION = (8_000_000, 32, 200)
AUTO_EVALUATION = (2_000_000, 16, 64)
# ``--fast``: a quarter of those (at least 8 each) and fewer latency runs.
FAST_SHARE, FAST_MIN, FAST_LATENCY_RUNS = 4, 8, 10
# Seconds of latency measurement per artifact at most (warm-up included), and with --fast.
LATENCY_SECONDS, FAST_LATENCY_SECONDS = 5.0, 2.0


def auto_sample_counts(model, fast: bool = False) -> tuple[int, int]:
    """Default (calibration, evaluation) sample counts for ``model`` (see ``AUTO_CALIBRATION``)."""
    values = sum(int(np.prod(t.shape[1:])) for t in model.outputs)
    counts = []
    for budget, low, high in (AUTO_CALIBRATION, AUTO_EVALUATION):
        n = min(high, max(low, -(-budget // values)))
        counts.append(max(FAST_MIN, n // FAST_SHARE) if fast else n)
    return counts[0], counts[1]


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes a run, validated once. Unknown keys are rejected by the dataclass."""

    precisions: tuple[str, ...] = ("int8",)
    formats: tuple[str, ...] = FORMATS
    calibration: str = "noise"
    calibration_samples: int | None = None  # None: from the model's size (auto_sample_counts)
    eval_samples: int | None = None
    seed: int = 0
    input_range: tuple[float, float] = (-1.0, 1.0)
    calibration_method: str = "minmax"
    int8_io: bool = False
    threads: int = 1
    latency_runs: int | None = None  # None: 50 (10 with fast)
    min_psnr: float = 0.0
    fast: bool = False

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
        if any(n is not None and n < 1 for n in (self.calibration_samples, self.eval_samples)):
            raise OptionError("--calibration-samples and --eval-samples must be at least 1")
        if not (np.isfinite(self.min_psnr) and self.min_psnr >= 0):
            raise OptionError(f"--min-psnr must be a number of dB >= 0 (0 turns the guard off), got {self.min_psnr}")
        if self.threads < 1 or (self.latency_runs is not None and self.latency_runs < 1):
            raise OptionError("--threads and latency runs must be at least 1")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise OptionError(
                f"unknown calibration method '{self.calibration_method}' (choose from {', '.join(CALIBRATION_METHODS)})"
            )
        lo, hi = self.input_range
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise OptionError(f"--input-range needs two finite numbers LOW < HIGH, got {lo}, {hi}")


class RunCache:
    """Work done once per run and reused by every artifact and search attempt: float ONNX
    exports, TFLite calibrations and ONNX calibration ranges, per model (the original, a
    pruned model, a student). Holding each model keeps its ``id`` unique for the run."""

    def __init__(self):
        self.onnx_exports: dict = {}
        self.tflite_calibrations: dict = {}
        self._dir = None

    @property
    def dir(self) -> Path:
        """A temporary folder for the run's scratch files, removed by ``close``."""
        import tempfile

        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="gencompress-run-")
        return Path(self._dir.name)

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


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
    notes: list[str] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress.silent, repr=False)
    cache: RunCache = field(default_factory=RunCache, repr=False)

    def artifact_path(self, fmt: str, precision: str, tag: str = "") -> Path:
        """``<stem>[-tag].<precision>.<ext>``, e.g. ``dcgan-pruned.int8.tflite``."""
        tag = f"-{tag}" if tag else ""
        return self.output_dir / f"{self.model.stem}{tag}.{precision}{_EXT[fmt]}"


def prepare(model, options: RunOptions, output_dir: str | Path, progress: Progress | None = None) -> Session:
    """Build calibration and held-out sets and the float reference outputs on the held-out set."""
    from gencompress.report.metrics import measured_output_range

    progress = progress or Progress.current()
    given = options
    options = resolved_counts(options, model)
    calib, held = build_sets(
        model.inputs,
        options.calibration,
        options.calibration_samples,
        options.eval_samples,
        options.seed,
        options.input_range,
        model.label_ranges,
    )
    with progress.phase(f"reference outputs of the float model on {len(held)} held-out samples", total=len(held), unit="sample") as phase:
        reference = model.predict(held.arrays, on_batch=phase.update)
    known = model.known_output_range()
    if known is not None:
        output_range, source = known, model.output_activation
    else:
        output_range, source = measured_output_range(reference), "measured on the evaluation set"
    session = Session(model, options, Path(output_dir), calib, held, reference, output_range, source, progress=progress)
    session.notes = run_notes(given, options, model)
    return session


def resolved_counts(options: RunOptions, model) -> RunOptions:
    """``options`` with every sample count and latency run count decided (see ``auto_sample_counts``)."""
    import dataclasses

    calibration, evaluation = auto_sample_counts(model, options.fast)
    return dataclasses.replace(
        options,
        calibration_samples=options.calibration_samples or calibration,
        eval_samples=options.eval_samples or evaluation,
        latency_runs=options.latency_runs or (FAST_LATENCY_RUNS if options.fast else 50),
    )


def build_artifact(session: Session, fmt: str, precision: str, model=None) -> bytes:
    """The bytes of one artifact: ``fmt`` in (tflite, onnx), ``precision`` in PRECISIONS.

    ``model`` converts a derived model (pruned, fine-tuned, a student) instead of the session's;
    it is still measured against the session's original float model.
    """
    from gencompress.converters.onnx import quantize_onnx
    from gencompress.converters.tflite import convert_tflite

    opts = session.options
    model = model if model is not None else session.model
    if fmt == "tflite" and precision == "int8":
        return tflite_calibrated(session, model).build(int8_io=opts.int8_io)
    if fmt == "onnx":
        float_bytes = float_onnx(session, model)
        if precision == "float32":
            return float_bytes
        if precision in ("int8", "int16x8"):
            return quantize_onnx_calibrated(session, precision, opts.calibration_method, model=model)
    with session.progress.phase(f"{fmt} {precision}: converting"):
        if fmt == "tflite":
            return convert_tflite(model, precision, session.calibration, int8_io=opts.int8_io)
        return quantize_onnx(float_bytes, precision)


def float_onnx(session: Session, model=None) -> bytes:
    """The float ONNX graph of ``model`` (default: the session's), exported once per model."""
    from gencompress.converters.onnx import export_onnx_float

    model = model if model is not None else session.model
    cache = session.cache.onnx_exports
    if id(model) not in cache:
        with session.progress.phase("onnx: exporting the float graph (tf2onnx)"):
            cache[id(model)] = (model, export_onnx_float(model))
    return cache[id(model)][1]


def tflite_calibrated(session: Session, model=None):
    """``model`` (default: the session's) calibrated for TFLite once per run (``TFLiteMixed``)."""
    from gencompress.compress.quantization import TFLiteMixed

    model = model if model is not None else session.model
    cache = session.cache.tflite_calibrations
    if id(model) not in cache:
        cache[id(model)] = (model, TFLiteMixed(model, session.calibration, session.progress))
    return cache[id(model)][1]


def quantize_onnx_calibrated(
    session: Session, precision: str, method: str, nodes_to_exclude=(), range_overrides=None, model=None
) -> bytes:
    """Static ONNX quantization of ``model``'s float graph (default: the session's model),
    calibrated once per model and method: onnxruntime writes the ranges to a cache file on the
    first call and reads them on every later one (variants, mixed precision, int16x8)."""
    from gencompress.converters.onnx import quantize_onnx

    model = model if model is not None else session.model
    float_bytes = float_onnx(session, model)
    index = list(session.cache.onnx_exports).index(id(model))  # the model's place names its cache
    cache = session.cache.dir / f"onnx-calibration-{index}-{method}.json"

    def build(on_sample=None):
        return quantize_onnx(
            float_bytes, precision, session.calibration, method, list(nodes_to_exclude) or None,
            range_overrides, calibration_cache=cache, on_sample=on_sample,
        )

    if cache.exists():
        return build()
    n = len(session.calibration)
    with session.progress.phase(f"onnx: calibrating ({method}) on {n} samples", total=n, unit="sample") as phase:
        return build(phase.update)


def add_artifact(session: Session, fmt: str, precision: str, data: bytes, tag: str = "", notes=(), outputs=None) -> dict:
    """Write ``data`` atomically as an artifact, measure it and append it to the session.
    ``outputs``: its outputs on the held-out set when already computed (a search attempt's)."""
    path = write_bytes_atomic(session.artifact_path(fmt, precision, tag), data)
    result = evaluate_artifact(session, path, fmt, precision, outputs)
    if tag:
        result["variant"] = tag
    result["notes"] = list(notes)
    session.artifacts.append(result)
    return result


def evaluate_artifact(session: Session, path: Path, fmt: str, precision: str, outputs=None) -> dict:
    """Size, gzip size, latency and fidelity of one artifact file against the float model
    (``outputs``: the artifact's held-out outputs, when a search attempt already ran them)."""
    from gencompress.report.latency import measure_latency
    from gencompress.report.metrics import fidelity, sizes

    runner = make_runner(session, path, fmt)
    with session.progress.phase(f"{path.name}: evaluating on {len(session.evaluation)} held-out samples", total=len(session.evaluation), unit="sample") as phase:
        if outputs is None:
            outputs = runner.run_all(session.evaluation, on_sample=phase.update)
        quality = fidelity(session.reference, outputs, session.output_range)
        phase.describe(f"PSNR {quality['psnr_db']} dB")
    size = sizes(path)
    if precision == "float32":  # the first float32 artifact of a format (the original) is the size reference
        session.float_sizes.setdefault(fmt, size["size_bytes"])
    float_size = session.float_sizes.get(fmt)
    runs = session.options.latency_runs
    budget = FAST_LATENCY_SECONDS if session.options.fast else LATENCY_SECONDS
    with session.progress.phase(f"{path.name}: latency", total=runs, unit="run") as phase:
        latency = measure_latency(runner, session.evaluation.sample(0), runs=runs, max_seconds=budget, on_run=phase.update)
        phase.describe(f"p50 {latency['p50']:.3f} ms over {latency['runs']} runs")
    return {
        "path": str(path),
        "format": fmt,
        "precision": precision,
        **size,
        "size_vs_float": None if not float_size else round(size["size_bytes"] / float_size, 4),
        "latency_ms": latency,
        "fidelity": quality,
        "passed": None,
    }


def make_runner(session: Session, path: Path, fmt: str):
    """The runtime for an artifact of ``fmt``: LiteRT for .tflite, onnxruntime for .onnx."""
    from gencompress.converters.onnx import OnnxRunner
    from gencompress.converters.tflite import TFLiteRunner

    model = session.model
    runner_cls = TFLiteRunner if fmt == "tflite" else OnnxRunner
    return runner_cls(str(path), model.input_names, [t.name for t in model.outputs], threads=session.options.threads)


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
    result = add_artifact(session, fmt, chosen.precision, chosen.data, notes=notes, outputs=chosen.outputs)
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


def build_artifacts(session: Session, precisions, log=None, hint: str = "") -> None:
    """Write and measure each precision per format (float32 first: it is the reference).

    int8 goes through the fidelity guard. When the session's own float model already misses
    ``--min-psnr`` (a pruned model or a student, measured against the original), no quantization
    can reach it: the smallest int8 variant is kept, graded as failing, with a note (``hint``
    says what to do instead). A precision a converter cannot build is recorded in
    ``session.failures`` and the others still go on.
    """
    opts = session.options
    log = log or session.progress.log
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


def run(model, options: RunOptions, output_dir: str | Path, command: str, progress: Progress | None = None) -> dict:
    """Build, write and measure the float32 reference and each requested precision, per format.

    Returns the report (also written as report.json / report.md into ``output_dir``).
    """
    from gencompress.report.render import write_report

    session = prepare(model, options, output_dir, progress)
    try:
        build_artifacts(session, ["float32"] + [p for p in options.precisions if p != "float32"])
    finally:
        session.cache.close()
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
        "notes": session.notes,
    }
    if any(a["precision"] in ("int8", "int16x8") for a in session.artifacts):
        report["calibration"] = {**session.calibration.describe(), "method": opts.calibration_method, "seed": opts.seed}
    return report


def run_notes(given: RunOptions, used: RunOptions, model) -> list[str]:
    """What the run decided about sample counts, said in the report and on the terminal."""
    counts = (
        f"{used.calibration_samples} calibration samples, {used.eval_samples} held-out samples, "
        f"{used.latency_runs} latency runs"
    )
    if given.fast:
        return [f"--fast: {counts}: a quick look; PSNR and latency are less precise than a full run"]
    full = (AUTO_CALIBRATION[2], AUTO_EVALUATION[2])
    reduced = [
        f"{used_n} {what} (not {full_n})"
        for what, given_n, used_n, full_n in (
            ("calibration samples", given.calibration_samples, used.calibration_samples, full[0]),
            ("held-out samples", given.eval_samples, used.eval_samples, full[1]),
        )
        if given_n is None and used_n < full_n
    ]
    if not reduced:
        return []
    values = sum(int(np.prod(t.shape[1:])) for t in model.outputs)
    return [f"{' and '.join(reduced)}: each output holds {values:,} values (set --calibration-samples / --eval-samples to choose)"]


def analyze(model, options: RunOptions, output_dir: str | Path, progress: Progress | None = None) -> dict:
    """Per-layer int8 sensitivity for each format, written as a report with a ``sensitivity`` key."""
    from gencompress.compress.fallback import sensitivity
    from gencompress.report.render import write_report

    session = prepare(model, options, output_dir, progress)
    report = make_report(session, "analyze")
    try:
        report["sensitivity"] = {fmt: sensitivity(session, fmt) for fmt in options.formats}
    finally:
        session.cache.close()
    write_report(report, output_dir)
    return report
