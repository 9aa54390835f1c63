"""A run's shared state: the model, its calibration and held-out data, the float reference, the
artifacts built so far, and the work done once per run (exports, calibrations).

Every command flow is ``prepare`` → build artifacts (``add_artifact``) → grade → ``make_report``.
Artifacts are written into the run's scratch folder (``Session.workdir``) and measured there;
writing them to the user's folder is ``Result.save``'s job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gencompress.calibration import Calibration, CalibrationSet
from gencompress.config import RunConfig
from gencompress.progress import Progress
from gencompress.results import ArtifactResult, CalibrationInfo, DataInfo, Failure, Fidelity, GatesSection, Latency, ModelInfo, Report

_EXT = {"tflite": ".tflite", "onnx": ".onnx"}

# Sample counts left to gencompress (``None``) follow the model's output size: about this many
# output values go through calibration and evaluation, within these bounds. A 16×16 generator
# gets 200 calibration and 64 held-out samples; a 96→384 super-resolution model 32 and 16 (its
# 16 held-out images are 7 million output values; 200 calibration images took 5 minutes).
AUTO_CALIBRATION = (8_000_000, 32, 200)
AUTO_EVALUATION = (2_000_000, 16, 64)
# ``fast``: a quarter of those (at least 8 each) and fewer latency runs.
FAST_SHARE, FAST_MIN = 4, 8
LATENCY_RUNS, FAST_LATENCY_RUNS = 50, 10
# Seconds of latency measurement per artifact at most (warm-up included), and with ``fast``.
LATENCY_SECONDS, FAST_LATENCY_SECONDS = 5.0, 2.0
# Held-out samples whose outputs report.html shows, per artifact (kept in memory, not in report.json).
PREVIEW_SAMPLES = 8
# Held-out samples the float model runs on at once for the reference outputs.
PREDICT_BATCH = 16


def auto_sample_counts(model, fast: bool = False) -> tuple[int, int]:
    """Default (calibration, evaluation) sample counts for ``model`` (see ``AUTO_CALIBRATION``)."""
    values = sum(int(np.prod(t.shape[1:])) for t in model.outputs)
    counts = []
    for budget, low, high in (AUTO_CALIBRATION, AUTO_EVALUATION):
        n = min(high, max(low, -(-budget // values)))
        counts.append(max(FAST_MIN, n // FAST_SHARE) if fast else n)
    return counts[0], counts[1]


class RunCache:
    """Work done once per run and reused by every artifact and search attempt: float ONNX
    exports, TFLite calibrations and ONNX calibration ranges, per model (the original, a pruned
    model, a student), and the scratch folder. Holding each model keeps its ``id`` unique."""

    def __init__(self):
        self.onnx_exports: dict = {}
        self.tflite_calibrations: dict = {}
        self.transforms: dict = {}  # function-equal copies of the model made for quantizing
        self._dir = None

    @property
    def dir(self) -> Path:
        if self._dir is None:
            from gencompress.artifacts import ScratchFolder

            self._dir = ScratchFolder()  # locked while in use: a later run removes it if this one is killed
        return self._dir.path

    def close(self) -> None:
        if self._dir is not None:
            self._dir.close()
            self._dir = None


@dataclass
class Previews:
    """The float model's outputs and each artifact's (by file name) on the first few held-out
    samples: what report.html draws."""

    reference: list[np.ndarray]
    output_range: tuple[float, float]
    outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def keep(self, name: str, outputs: list[np.ndarray]) -> None:
        self.outputs[name] = [np.asarray(o[:PREVIEW_SAMPLES]) for o in outputs]


@dataclass
class Session:
    """A model with its data and float reference, ready to build and measure artifacts."""

    model: object
    config: RunConfig
    calibration_spec: Calibration
    calibration: CalibrationSet
    evaluation: CalibrationSet
    reference: list[np.ndarray]
    output_range: tuple[float, float]
    output_range_source: str
    artifacts: list[ArtifactResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    float_sizes: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: dict = field(default_factory=dict)  # name → path in the workdir: what Result.save writes
    previews: Previews | None = field(default=None, repr=False)  # shared with derived sessions
    gate_section: GatesSection | None = None
    progress: Progress = field(default_factory=Progress.silent, repr=False)
    cache: RunCache = field(default_factory=RunCache, repr=False)

    @property
    def workdir(self) -> Path:
        return self.cache.dir

    def artifact_name(self, fmt: str, precision: str, tag: str = "") -> str:
        """``<stem>[-tag].<precision>.<ext>``, e.g. ``dcgan-pruned.int8.tflite``."""
        tag = f"-{tag}" if tag else ""
        return f"{self.model.stem}{tag}.{precision}{_EXT[fmt]}"

    def add_file(self, name: str, data: bytes) -> Path:
        """A file of the run's output (artifact, saved model, picture), kept in the workdir."""
        from gencompress.limits import check_name

        check_name(name, self.workdir)
        path = self.workdir / name
        path.write_bytes(data)
        self.files[name] = path
        return path

    def derived(self, model) -> "Session":
        """The same run (held-out set, float reference, float sizes, caches) around a model
        derived from this one (pruned, a student): its artifacts are measured against the
        original float model and collected apart."""
        return dataclasses.replace(self, model=model, artifacts=[], failures=[])

    def latency(self, runner, sample) -> dict:
        """The run's one latency protocol (see ``report.latency.measure_latency``)."""
        from gencompress.report.latency import measure_latency

        budget = FAST_LATENCY_SECONDS if self.config.fast else LATENCY_SECONDS
        return measure_latency(runner, sample, runs=self.config.latency_runs, max_seconds=budget)

    def runner(self, path, fmt: str):
        from gencompress.converters.runners import make_runner

        return make_runner(path, fmt, self.model.input_names, [t.name for t in self.model.outputs], self.config.threads)


def prepare(model, config: RunConfig, calibration: Calibration | None = None, progress: Progress | None = None) -> Session:
    """Decide the sample counts, build the calibration and held-out sets, and the float reference
    outputs on the held-out set."""
    from gencompress.report.metrics import measured_output_range

    progress = progress or Progress.current()
    if config.browser:  # before any work: what --browser lacks, in one line
        from gencompress.converters.browser_setup import check

        check()
    calibration = calibration or Calibration.noise()
    n_calib, n_eval = auto_sample_counts(model, config.fast)
    used_calib = calibration.samples or n_calib
    resolved = dataclasses.replace(
        config,
        eval_samples=config.eval_samples or n_eval,
        latency_runs=config.latency_runs or (FAST_LATENCY_RUNS if config.fast else LATENCY_RUNS),
    )
    calib, held = calibration.sets(model.inputs, model.label_ranges, used_calib, resolved.eval_samples, config.seed)
    label = f"reference outputs of the float model on {len(held)} held-out samples"
    _check_batch_fits(model, min(PREDICT_BATCH, len(held)))
    with progress.phase(label, total=len(held), unit="sample") as phase:
        reference = model.predict(held.arrays, batch_size=PREDICT_BATCH, on_batch=phase.update)
    known = model.known_output_range()
    if known is not None:
        output_range, source = known, model.output_activation
    else:
        output_range, source = measured_output_range(reference), "measured on the evaluation set"
    session = Session(model, resolved, calibration.with_samples(used_calib), calib, held, reference, output_range, source, progress=progress)
    session.previews = Previews([r[:PREVIEW_SAMPLES] for r in reference], tuple(float(x) for x in output_range))
    session.notes = _count_notes(config, calibration, session, used_calib)
    return session


def _check_batch_fits(model, batch: int) -> None:
    """Refuse a model whose batch of inputs, largest layer output and outputs would not fit in
    memory, before TensorFlow allocates them (it aborts the process when an allocation fails)."""
    from gencompress.memory import check_fits, shape_text

    def size(shape) -> int:
        return int(np.prod([d for d in shape[1:] if d is not None], dtype=object)) * 4

    inputs = sum(size(t.shape) for t in model.inputs)
    largest = max([size(t.shape) for t in model.outputs] + [size(s) for s in _layer_shapes(model)])
    biggest = max(model.inputs, key=lambda t: size(t.shape))
    check_fits(batch * (2 * inputs + 2 * largest), f"running a batch of {batch} through the model (input '{biggest.name}' {shape_text(biggest.shape[1:])})",
               "this model's tensors are too large for this machine")


def _layer_shapes(model) -> list:
    """Every layer's output shape (a plain SavedModel has none to read)."""
    from gencompress.model import iter_layers

    if model.keras_model is None:
        return []
    shapes = []
    for layer in iter_layers(model.keras_model):
        try:
            shape = layer.output_shape
        except (AttributeError, RuntimeError):
            continue
        shapes += [s for s in (shape if isinstance(shape, list) else [shape]) if isinstance(s, tuple)]
    return shapes


def _count_notes(given: RunConfig, calibration: Calibration, session: Session, asked_calib: int) -> list[str]:
    """What the run decided about sample counts, said in the report and on the terminal."""
    used = session.config
    n_calib, n_eval = len(session.calibration), len(session.evaluation)
    notes = []
    if given.fast:
        notes.append(
            f"--fast: {n_calib} calibration samples, {n_eval} held-out samples, {used.latency_runs} latency runs: "
            "a quick look; PSNR and latency are less precise than a full run"
        )
    elif calibration.kind == "noise":
        full = (AUTO_CALIBRATION[2], AUTO_EVALUATION[2])
        reduced = [
            f"{used_n} {what} (not {full_n})"
            for what, given_n, used_n, full_n in (
                ("calibration samples", calibration.samples, n_calib, full[0]),
                ("held-out samples", given.eval_samples, n_eval, full[1]),
            )
            if given_n is None and used_n < full_n
        ]
        if reduced:
            values = sum(int(np.prod(t.shape[1:])) for t in session.model.outputs)
            notes.append(
                f"{' and '.join(reduced)}: each output holds {values:,} values "
                "(set --calibration-samples / --eval-samples to choose)"
            )
    if n_calib < asked_calib or n_eval < used.eval_samples:
        notes.append(
            f"{calibration.source} holds {n_calib + n_eval} samples: {n_calib} calibrate and {n_eval} are held out "
            f"(not {asked_calib} and {used.eval_samples}); fidelity figures on so few are rough"
        )
    return notes


# --------------------------------------------------------------------------- artifacts


def add_artifact(session: Session, fmt: str, precision: str, data: bytes, tag: str = "", notes=(), measured=None) -> ArtifactResult:
    """Keep ``data`` as an artifact of the run, measure it and append it to the session.
    ``measured``: ``(outputs, latency)`` on the held-out set when a search attempt already has them."""
    name = session.artifact_name(fmt, precision, tag)
    path = session.add_file(name, data)
    result = evaluate_artifact(session, path, fmt, precision, measured)
    result.variant = tag or None
    result.notes = list(notes) + ([] if precision == "float32" else worst_sample_notes(session, result.fidelity))
    if fmt == "onnx" and precision != "float32":
        result.runtime = onnx_runtime(session, path, result)
        result.notes += runtime_notes(result.runtime)
    session.artifacts.append(result)
    return result


# A held-out sample this far under the mean PSNR, or under WORST_FLOOR_DB while the mean meets
# MEAN_FLOOR_DB, is named in the artifact's notes: the mean hides the samples a user sees broken.
WORST_GAP_DB, WORST_FLOOR_DB, MEAN_FLOOR_DB = 10.0, 25.0, 30.0


def worst_sample_notes(session: Session, fidelity) -> list[str]:
    """One line naming the worst held-out sample when it is far under the mean (see above):
    which one, whether it is a tail latent, and its inputs' norms."""
    mean, worst, i = fidelity.psnr_db, fidelity.psnr_worst_db, fidelity.worst_sample
    if mean is None or worst is None or i is None:
        return []
    if not (worst < mean - WORST_GAP_DB or (mean >= MEAN_FLOOR_DB and worst < WORST_FLOOR_DB)):
        return []
    held = session.evaluation
    norms = ", ".join(
        f"{t.name} norm {float(np.linalg.norm(held.arrays[t.name][i])):.1f}" for t in session.model.inputs
        if not t.is_integer and t.name not in session.model.label_ranges
    )
    kind = "a tail latent drawn 1 in 50 to 1 in 1,000" if held.is_tail(i) else "an ordinary draw"
    return [
        f"worst held-out sample #{i} at {worst} dB against {mean} dB over all ({kind}; {norms}): "
        "the mean PSNR hides it; --min-psnr-worst makes the search aim at it"
    ]


# A quantized ONNX artifact less than this much faster than its float one gets onnxruntime's
# profile in the report: where its time goes, and what each node left in float costs.
PROFILE_BELOW_SPEEDUP = 1.3


def onnx_runtime(session: Session, path: Path, result: ArtifactResult):
    """What onnxruntime runs for a quantized ONNX artifact (``ort_graph.runtime_graph``),
    profiled when it is not clearly faster than the float artifact."""
    from gencompress.compress.quantization import keras_layer_names
    from gencompress.converters.ort_graph import profile, runtime_graph, with_costs

    graph = runtime_graph(path, keras_layer_names(session.model))
    reference = artifact(session, "onnx", variant=result.variant) or artifact(session, "onnx")
    if reference is not None and result.latency_ms.p50 * PROFILE_BELOW_SPEEDUP > reference.latency_ms.p50:
        budget = FAST_LATENCY_SECONDS if session.config.fast else LATENCY_SECONDS
        with session.progress.phase(f"{path.name}: onnxruntime profile"):
            breakdown, node_ms = profile(path, session.evaluation.sample(0), session.config.latency_runs, budget, session.config.threads)
        graph = with_costs(graph, breakdown, node_ms)
    return graph


def runtime_notes(graph) -> list[str]:
    """One line naming the nodes onnxruntime runs in float (and their cost when profiled), one
    saying where the time goes."""
    notes = []
    if graph.float_nodes:
        by_op: dict[str, list] = {}
        for n in graph.float_nodes:
            by_op.setdefault(n.op, []).append(n)
        parts = []
        for op, nodes in by_op.items():
            layers = sorted({layer for n in nodes for layer in n.layers})
            cost = sum(n.ms for n in nodes if n.ms is not None)
            parts.append(f"{op}" + (f" ×{len(nodes)}" if len(nodes) > 1 else "") + (f" ({', '.join(layers)})" if layers else "")
                         + (f" {cost:.3f} ms" if any(n.ms is not None for n in nodes) else ""))
        notes.append(f"onnxruntime {graph.onnxruntime} runs these in float: " + "; ".join(parts))
    if graph.breakdown is not None:
        notes.append(f"onnxruntime profile: {graph.breakdown.explanation}")
    return notes


def evaluate_artifact(session: Session, path: Path, fmt: str, precision: str, measured=None) -> ArtifactResult:
    """Size, gzip size, latency and fidelity of one artifact file against the float model."""
    from gencompress.report.metrics import fidelity, sizes

    runner = session.runner(path, fmt)
    outputs, latency = measured if measured is not None else (None, None)
    n = len(session.evaluation)
    with session.progress.phase(f"{path.name}: evaluating on {n} held-out samples", total=n, unit="sample") as phase:
        if outputs is None:
            outputs = runner.run_all(session.evaluation, on_sample=phase.update)
        quality = fidelity(session.reference, outputs, session.output_range)
        if session.previews is not None:
            session.previews.keep(path.name, outputs)
        phase.describe(f"PSNR {quality['psnr_db']} dB")
    size = sizes(path)
    if precision == "float32":  # the first float32 artifact of a format (the original) is the size reference
        session.float_sizes.setdefault(fmt, size["size_bytes"])
    float_size = session.float_sizes.get(fmt)
    if latency is None:
        with session.progress.phase(f"{path.name}: latency", unit="run") as phase:
            latency = session.latency(runner, session.evaluation.sample(0))
            phase.describe(f"p50 {latency['p50']:.3f} ms over {latency['runs']} runs")
    return ArtifactResult(
        path=str(path),
        format=fmt,
        precision=precision,
        **size,
        size_vs_float=None if not float_size else round(size["size_bytes"] / float_size, 4),
        latency_ms=Latency(**latency),
        fidelity=Fidelity(**quality),
    )


def artifact(session: Session, fmt: str, precision: str = "float32", variant: str | None = None) -> ArtifactResult | None:
    return next((a for a in session.artifacts if a.format == fmt and a.precision == precision and a.variant == variant), None)


def record_failure(session: Session, fmt: str, precision: str, error, variant: str | None = None) -> None:
    """Keep a precision a converter could not build; a full disk or an interrupt stops the run
    instead (every later conversion would fail the same way, for no fault of the model)."""
    from gencompress.errors import OutputError, ResourceError, disk_full, out_of_memory
    from gencompress.interrupts import check

    check()
    if disk_full(error):
        raise OutputError(f"no space left for the run's scratch files in {session.workdir.parent}: {error}") from error
    if out_of_memory(error):
        raise ResourceError(f"out of memory converting {fmt} {precision}: {error}") from error
    session.failures.append(Failure(format=fmt, precision=precision, error=str(error), variant=variant))


# --------------------------------------------------------------------------- the report


def make_report(session: Session, command: str, settings: dict | None = None) -> Report:
    """The run as a typed report (``report.json``)."""
    from gencompress.report.versions import versions

    m = session.model
    config = session.config
    quantized = any(a.precision in ("int8", "int16x8", "mixed") or a.fallback is not None for a in session.artifacts)
    return Report(
        versions=versions(),
        command=command,
        model=ModelInfo(
            **m.to_dict(),
            output_range=[float(x) for x in session.output_range],
            output_range_source=session.output_range_source,
            macs=model_macs(m),
        ),
        evaluation=DataInfo(**session.evaluation.describe(), seed=config.seed),
        calibration=CalibrationInfo(**session.calibration.describe(), seed=config.seed, method=getattr(config, "calibration_method", None))
        if quantized else None,
        settings=settings if settings is not None else run_settings(session),
        artifacts=session.artifacts,
        failures=session.failures,
        notes=session.notes,
        gates=session.gate_section,
    )


def model_macs(model) -> int | None:
    """MACs of one batch-1 forward pass of a ``LoadedModel`` (``None`` for a plain SavedModel)."""
    from gencompress.report.macs import count_macs

    return None if model.keras_model is None else count_macs(model.keras_model).total


def run_settings(session: Session) -> dict:
    """The config as the report records it, with the calibration source and counts decided."""
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(session.config).items()}
    spec = session.calibration_spec
    settings.update(
        calibration=spec.source,
        calibration_samples=len(session.calibration),
        input_range=list(spec.input_range),
    )
    return settings
