"""Typed results: what a run measured, as the library returns it and ``report.json`` holds it.

pydantic models, because one definition gives the typed objects, their validation, the JSON they
are written as and the JSON Schema shipped for ``report.json`` (``report/schema.json``, checked
against these models by the tests). Field names are the report's keys.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.2"  # 1.1: files, gates, recipe, runtime (onnxruntime graph), search compute classes and rule; 1.2: per-sample PSNR (worst, 5th percentile, median) and tail samples of the held-out set, browser runs (--browser) and their gate checks


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- artifacts


class Fidelity(_Model):
    """An artifact's outputs against the float model's on the held-out set.

    ``psnr_db`` over the output range (capped at 200 dB for identical outputs; ``None`` when
    the artifact produced NaN/Inf); ``ssim``: mean SSIM for image outputs (``None`` otherwise,
    or not measured); ``psnr_worst_db`` / ``psnr_p5_db`` / ``psnr_median_db``: the worst,
    5th-percentile and median of the samples' own PSNRs, ``worst_sample`` the worst one's index."""

    psnr_db: Optional[float]
    mse: Optional[float]
    max_abs_error: float
    ssim: Optional[float] = None
    # schema 1.2: the per-sample PSNR distribution (each held-out sample's own PSNR)
    psnr_worst_db: Optional[float] = None
    psnr_p5_db: Optional[float] = None
    psnr_median_db: Optional[float] = None
    worst_sample: Optional[int] = None


class Latency(_Model):
    """Batch-1 latency in milliseconds after warm-up: median, 90th percentile, timed runs."""

    p50: float
    p90: float
    runs: int


class SearchAttempt(_Model):
    """One artifact the fidelity search built and measured."""

    label: str
    precision: str
    size_bytes: int
    psnr_db: Optional[float]
    psnr_worst_db: Optional[float] = None
    latency_p50_ms: float
    passed: bool
    slower_than_float: bool
    float_layers: list[str] = Field(default_factory=list)
    compute: str = "int8"  # int8, mixed, float (float compute) or slow (reference kernels)
    float_macs_share: float = 0.0  # of the model's multiply-accumulates, the share the float layers do


class HarmfulUnit(_Model):
    """A unit (op or node) ranked by the PSNR with only it in int8 (and, in analyze, all but it)."""

    label: str
    only_quantized_psnr_db: Optional[float]
    all_but_psnr_db: Optional[float] = None


class SearchRecord(_Model):
    """How the fidelity search chose an artifact: every attempt and the ranking of units."""

    target_psnr_db: Optional[float]
    target_psnr_worst_db: Optional[float] = None  # --min-psnr-worst: the worst sample's target too
    chosen: str
    rule: str = ""  # which selection rule picked it (speed or size)
    compute: str = "int8"  # how the pick computes: int8, mixed, float or slow
    float_layers: list[str] = Field(default_factory=list)
    size_cost_bytes: int
    latency_cost_ms: float
    attempts: list[SearchAttempt]
    most_harmful_units: list[HarmfulUnit] = Field(default_factory=list)
    failed_attempts: list[str] = Field(default_factory=list)  # not built, or the runtime failed to run them (never picked)


class RuntimeNode(_Model):
    """A compute node onnxruntime runs in float: its (optimized-graph) name, op type, the Keras
    layers in its name, and its median time per run when profiled."""

    name: str
    op: str
    layers: list[str] = Field(default_factory=list)
    ms: Optional[float] = None


class OpTime(_Model):
    """Median time per run of one op type (all its nodes together) in onnxruntime's profiler."""

    op: str
    nodes: int
    ms: float


class RuntimeBreakdown(_Model):
    """Where one batch-1 run's time goes in onnxruntime.

    ``call_ms``: ``session.run`` as Python sees it (median over ``runs``, no profiler);
    ``floor_ms``: the same for a one-node graph on the same inputs, what any call costs.
    From onnxruntime's profiler (which adds a little to every node, so shares matter more than
    sums): ``kernels_ms`` for all ``nodes`` together, of it ``compute_ms`` in nodes that do
    arithmetic (int8 kernels and float compute), ``quantize_ms`` in Quantize/Dequantize (of it
    ``weight_dequantize_ms`` dequantizing constant int8 weights, which onnxruntime does on every
    call for the nodes it runs in float), the rest in data movement; ``by_op`` per op type.
    ``explanation``: which dominates, in a line."""

    runs: int
    call_ms: float
    floor_ms: float
    nodes: int
    kernels_ms: float
    compute_ms: float
    quantize_ms: float
    weight_dequantize_ms: float
    by_op: list[OpTime]
    explanation: str


class RuntimeGraph(_Model):
    """What onnxruntime runs for an ONNX artifact on the CPU after its graph optimizations (the
    same session options as the latency measurement): nodes fused into int8 kernels, compute
    nodes left in float, and the Quantize/Dequantize nodes that remain. Read from the optimized
    graph, so the same artifact always gives the same summary; ``breakdown`` (timings) only when
    profiled."""

    onnxruntime: str
    optimization_level: str
    int8_kernels: dict[str, int]
    float_nodes: list[RuntimeNode]
    quantize_nodes: int
    dequantize_nodes: int
    breakdown: Optional[RuntimeBreakdown] = None


class BrowserRun(_Model):
    """An artifact in its browser runtime in headless Chromium (``--browser``): onnxruntime-web
    for ``.onnx``, LiteRT.js for ``.tflite``, on the same held-out inputs as the native runtime.

    ``loaded``: the runtime took it (``error``: its one-line error otherwise, or of a run that
    failed); ``fidelity``: against the float Keras model, like the artifact's own;
    ``native_psnr_db``: its outputs against the native runtime's on the same file (200: equal);
    ``latency_ms``: single-threaded WebAssembly (``build`` names the runtime's file: SIMD,
    relaxed SIMD), measured in the page with the run's latency protocol; ``threads_latency_ms``
    with ``threads`` threads, when the page is cross-origin isolated (``threads_error`` if that
    build failed); ``differing_op``: when the browser's PSNR is over 0.5 dB off the native one (or,
    for float32, under 80 dB against the native outputs), the first op whose output differs between the two runtimes."""

    runtime: str
    version: str
    browser: str
    loaded: bool
    error: Optional[str] = None
    build: Optional[str] = None
    fidelity: Optional[Fidelity] = None
    native_psnr_db: Optional[float] = None
    latency_ms: Optional[Latency] = None
    threads: Optional[int] = None
    threads_build: Optional[str] = None
    threads_latency_ms: Optional[Latency] = None
    threads_error: Optional[str] = None
    differing_op: Optional[str] = None
    notes: list[str] = Field(default_factory=list)


class ArtifactResult(_Model):
    """One written artifact: its file, size, latency and fidelity against the float model.

    ``precision``: float32, float16, dynamic, int8, int16x8, mixed (some units float) or
    int8-weights (int8 storage, float compute). ``passed``: against the fidelity target
    (``None`` when not graded). ``variant``: ``pruned``, ``student``, ``qat`` … for artifacts
    of a derived model. ``fallback``: the search that chose it; ``smallest_int8_search``: the
    search that picked the smallest int8 when no quantization could reach the target."""

    path: str
    format: str
    precision: str
    size_bytes: int
    gzip_bytes: int
    size_vs_float: Optional[float]
    latency_ms: Latency
    fidelity: Fidelity
    passed: Optional[bool] = None
    variant: Optional[str] = None
    notes: list[str] = Field(default_factory=list)
    fallback: Optional[SearchRecord] = None
    smallest_int8_search: Optional[SearchRecord] = None
    runtime: Optional[RuntimeGraph] = None  # quantized ONNX artifacts: what onnxruntime runs
    compute: Optional[str] = None  # how a quantized artifact computes: int8, mixed, float or slow (read from its graph)
    browser: Optional[BrowserRun] = None  # --browser: the same file in its browser runtime

    @property
    def name(self) -> str:
        return self.path.replace("\\", "/").rsplit("/", 1)[-1]


class Failure(_Model):
    """A precision a converter could not build (the others are still written)."""

    format: str
    precision: str
    error: str
    variant: Optional[str] = None


# --------------------------------------------------------------------------- the model and the data


class TensorSpec(_Model):
    name: str
    shape: list[Optional[int]]
    dtype: str
    ids: Optional[int] = None  # an integer input that feeds an Embedding: how many ids are valid (a label)


class ModelInfo(_Model):
    path: str
    format: str
    params: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    output_activation: Optional[str]
    output_range: list[float]
    output_range_source: str
    macs: Optional[int] = None  # multiply-accumulates of one batch-1 forward pass (report.macs)


class DataInfo(_Model):
    """Where the held-out evaluation samples came from, and how many (``tail_samples``: of them,
    noise latents drawn at tail norms, the last ones)."""

    source: str
    samples: int
    seed: int
    tail_samples: Optional[int] = None


class CalibrationInfo(DataInfo):
    """Where the calibration samples came from, how many, and the ONNX calibration method."""

    method: Optional[str] = None


# --------------------------------------------------------------------------- report sections


class SensitivityUnit(_Model):
    label: str
    name: str
    op: str
    layers: list[str]
    only_quantized_psnr_db: Optional[float]
    all_but_psnr_db: Optional[float]
    rmse_over_scale: Optional[float] = None


class Sensitivity(_Model):
    """``analyze``, per format: full-int8 PSNR and units ranked most sensitive first."""

    int8_psnr_db: Optional[float]
    units: list[SensitivityUnit]
    notes: list[str] = Field(default_factory=list)


class FinetunePlan(_Model):
    """How long and how wide the loop trained, and why: ``chosen`` names what was picked from the
    step cost measured at the start (the rest was given). Repeat a run exactly with
    ``--steps <steps> --batch-size <batch_size>`` (a time budget may still end it sooner)."""

    chosen: list[Literal["steps", "batch_size"]]
    steps: int
    batch_size: int
    eval_every: int
    held_out_samples: int
    target_seconds: Optional[float] = None  # the training time the chosen steps aim for
    time_budget_s: Optional[float] = None
    seconds_per_sample: Optional[float] = None  # a training step's measured cost per sample
    probe_batch: Optional[int] = None
    expected_seconds: Optional[float] = None


class TrainingDevices(_Model):
    """Where the loop ran: TensorFlow places the step on the first GPU it sees, else the CPU;
    under ``--distribute`` on the strategy's devices."""

    kind: Literal["CPU", "GPU"]
    devices: list[str]
    gpus_seen: int
    gpu_names: list[str] = Field(default_factory=list)


class FinetuneSummary(_Model):
    """What a fine-tuning loop did: one history entry per held-out evaluation (step 0: start).

    ``stopped_by``: ``steps`` (all planned steps ran), ``early stopping`` (held-out PSNR stalled),
    ``time budget`` (``--time-budget`` was spent; the best weights so far were kept) or
    ``diverged``. ``seconds_per_step``: the loop's wall time (evaluations included) per step."""

    steps_run: int
    stopped_early: bool
    stopped_by: Literal["steps", "early stopping", "time budget", "diverged"] = "steps"
    seconds: float
    seconds_per_step: Optional[float] = None
    initial_psnr_db: Optional[float]
    best_psnr_db: Optional[float]
    best_step: Optional[int]
    history: list[dict[str, Any]]
    plan: Optional[FinetunePlan] = None
    devices: Optional[TrainingDevices] = None
    xla: bool = False
    notes: list[str] = Field(default_factory=list)
    config: Optional[dict[str, Any]] = None  # the training settings (pruning records them)


class QatFinetune(FinetuneSummary):
    """QAT's fine-tuning: ``kept_calibrated_start`` when no step beat the calibrated start."""

    kept_calibrated_start: bool
    final_psnr_db: Optional[float]


class PruningSection(_Model):
    """``prune``: requested and measured sparsity, per layer, gzip sizes, zeros in the files."""

    requested_sparsity: float
    schedule: dict[str, Any]
    structure: Optional[str]
    measured_sparsity: float
    pruned_weights: int
    zero_weights: int
    layers: list[dict[str, Any]]
    left_dense: list[dict[str, Any]]
    finetune: FinetuneSummary
    pruned_model: str
    model_params: int
    model_sparsity: Optional[float]
    gzip: list[dict[str, Any]]
    artifact_sparsity: list[dict[str, Any]]
    runtime_note: str
    distribute: Optional[dict[str, Any]] = None  # the tf.distribute strategy fine-tuning ran under


class ChannelPruningSection(_Model):
    """``prune --structure channels``: whole channels removed (a smaller plain Keras model).

    ``target``: what the size was chosen by (``kind`` macs, params, channels or psnr, and
    ``value``), ``met_target`` whether the allocation reached it; ``groups``: each group of
    coupled channels (the ``layers`` that make it, ``channels``, ``kept``, its measured
    ``sensitivity``: PSNR with only it pruned); ``layers``: filters/units per layer before and
    after; ``psnr_removed_db`` / ``psnr_refit_db`` / ``psnr_start_db``: held-out PSNR against
    the original with the channels cut, after the least-squares re-fit, and where fine-tuning
    started (after ``batchnorm`` statistics were re-estimated, where that measured better);
    ``kept_start``: fine-tuning did not beat the start, which was kept; ``comparison``: per
    format and precision, the original's and the pruned model's size, p50 latency and speed-up;
    ``search``: the models ``--min-psnr`` tried (``kind`` psnr)."""

    target: dict[str, Any]
    met_target: bool
    importance: str
    original_params: int
    pruned_params: int
    params_ratio: float
    original_macs: int
    pruned_macs: int
    macs_ratio: float
    groups: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    psnr_removed_db: Optional[float]
    psnr_refit_db: Optional[float]
    psnr_start_db: Optional[float]
    batchnorm: str
    refit_layers: list[str]
    not_refit: list[str] = Field(default_factory=list)
    finetune: FinetuneSummary
    kept_start: bool = False
    final_psnr_db: Optional[float] = None
    comparison: list[dict[str, Any]] = Field(default_factory=list)
    search: Optional[list[dict[str, Any]]] = None
    timings: dict[str, float] = Field(default_factory=dict)
    pruned_model: str
    notes: list[str] = Field(default_factory=list)


class QatExport(_Model):
    """One QAT artifact against the QAT Keras model it was converted from."""

    format: str
    artifact: str
    psnr_db: Optional[float]
    agreement_psnr_db: Optional[float]
    agrees: bool
    notes: list[str] = Field(default_factory=list)
    float_ops: Optional[list[str]] = None
    qdq_pairs: Optional[int] = None
    int8_weights: Optional[int] = None


class QatSection(_Model):
    """Quantization-aware training: BatchNorm folding, what was quantized, the fine-tuning, the
    exports and post-training beside QAT."""

    scheme: str
    variant: str
    batchnorm: list[dict[str, Any]]
    fold_max_abs_error: Optional[float]
    quantized_layers: list[str]
    left_float: list[dict[str, Any]]
    range_calibration: dict[str, Any]
    finetune: QatFinetune
    qat_keras_psnr_db: Optional[float]
    agreement_target_db: float
    exports: list[QatExport]
    comparison: Optional[list[dict[str, Any]]] = None
    sparsity: Optional[list[dict[str, Any]]] = None
    distribute: Optional[dict[str, Any]] = None  # the tf.distribute strategy fine-tuning ran under  # prune --then qat: zeros of each pruned kernel kept in int8


class DistillationSection(_Model):
    """``distill``: teacher and student side by side, how the student was made and trained."""

    student_model: str
    student_source: str
    teacher_params: int
    student_params: int
    params_ratio: Optional[float]
    width: Optional[float]
    depth: float
    resized_layers: list[dict[str, Any]]
    dropped_blocks: list[list[str]]
    droppable_blocks: Optional[int]
    loss: str
    feature_loss: Optional[dict[str, Any]]
    finetune: FinetuneSummary
    final_psnr_db: Optional[float]
    batch_size: int
    learning_rate: float
    distribute: Optional[dict[str, Any]]
    checkpoint: Optional[dict[str, Any]]
    side_by_side: list[dict[str, Any]]
    samples: Optional[str]
    qat: Optional[QatSection] = None
    init: Optional[dict[str, Any]] = None  # --init teacher: the channels kept and the PSNR before training
    teacher_macs: Optional[int] = None
    student_macs: Optional[int] = None


# --------------------------------------------------------------------------- gates and recipes


class GateCheck(_Model):
    """One gate on one artifact: the measured value against the limit (``None``: not measured,
    a NaN output's PSNR; it fails)."""

    artifact: str
    format: str
    precision: str
    variant: Optional[str] = None
    gate: str
    measured: Optional[float]
    limit: float
    passed: bool
    runtime: Optional[Literal["browser"]] = None  # a gate on the browser runtime's figures (--browser)


class GatesSection(_Model):
    """The gates a run's deliverable artifacts were held to (per format, the fidelity target
    included as ``min_psnr``), every check made, and how many failed (any: exit 3)."""

    limits: dict[str, dict[str, float]]
    checks: list[GateCheck] = Field(default_factory=list)
    failed: int = 0
    # with a latency gate: latency re-measured in this many interleaved rounds of this many runs
    latency_rounds: Optional[int] = None
    latency_round_runs: Optional[int] = None

    @property
    def failures(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]


class RecipeRecord(_Model):
    """The recipe a run was (or can be replayed as): ``gencompress run`` takes this
    ``report.json`` or the recipe written out. ``step``: this run's place in its steps;
    ``source``: the recipe file, when one was run."""

    document: dict[str, Any]
    step: int = 0
    source: Optional[str] = None


# --------------------------------------------------------------------------- the report


class Report(_Model):
    """Everything one run measured: ``report.json``."""

    schema_version: str = SCHEMA_VERSION
    versions: dict[str, Optional[str]] = Field(default_factory=dict)
    command: str
    model: ModelInfo
    evaluation: DataInfo
    calibration: Optional[CalibrationInfo] = None
    settings: dict[str, Any]
    artifacts: list[ArtifactResult] = Field(default_factory=list)
    failures: list[Failure] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    sensitivity: Optional[dict[str, Sensitivity]] = None
    pruning: Optional[PruningSection] = None
    channel_pruning: Optional[ChannelPruningSection] = None
    qat: Optional[QatSection] = None
    distillation: Optional[DistillationSection] = None
    gates: Optional[GatesSection] = None
    recipe: Optional[RecipeRecord] = None
    # The names of the files the run wrote into its folder (this report included): a later run
    # into the same folder removes those it does not write again, so the folder holds one run.
    files: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=False) + "\n"


def json_schema() -> dict:
    """The JSON Schema of ``report.json``."""
    schema = Report.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gencompress report"
    return schema
