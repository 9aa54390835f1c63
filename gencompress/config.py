"""What each command is asked to do: typed, validated once, every default in one place.

The CLI reads its option defaults from these dataclasses (``default_of``); the library takes
them as the second argument of every call (``gencompress.quantize(model, QuantizeConfig())``).
A value out of range raises ``OptionError`` when the config is made, before any work starts.
Sample counts and latency runs left ``None`` are decided per model (``pipelines.session``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gencompress.errors import OptionError

FORMATS = ("tflite", "onnx")
PRECISIONS = ("float32", "float16", "dynamic", "int8", "int16x8")
MODES = ("float16", "dynamic", "int8", "int16x8")  # what quantize writes beside the float32 reference
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
METHODS = ("ptq", "qat", "auto")
LOSSES = ("l2", "l1")
SCHEDULES = ("constant", "polynomial")
STRUCTURES = ("2:4", "channels")
IMPORTANCE = ("taylor", "l1")  # channel pruning: which channels matter (compress.channels.importance)
INITS = ("teacher", "random")  # distill --width: the student starts from the teacher's channels, or fresh
DISTRIBUTE = ("none", "mirrored", "multi-worker")
PREFER = ("speed", "size")
GATES = ("min_psnr", "min_psnr_worst", "min_ssim", "max_bytes", "max_size_ratio", "min_speedup", "max_latency_ms")
LATENCY_GATES = ("min_speedup", "max_latency_ms")
SIZE_GATES = ("max_bytes", "max_size_ratio")  # the same file in the browser: no browser form


def default_of(cls, name: str):
    """The default of field ``name`` of config class ``cls`` (for the CLI's options)."""
    f = cls.__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass(frozen=True)
class FormatGates:
    """Limits every gated artifact of one format must meet (``None``: no such gate).

    ``min_psnr`` / ``min_ssim`` against the float model; ``min_psnr_worst``: the PSNR of the
    worst held-out sample (the fidelity search then aims at it too); ``max_bytes``: file size;
    ``max_size_ratio``: size over the float32 artifact of the same format; ``min_speedup``: the
    float32 artifact's p50 latency over this one's; ``max_latency_ms``: p50 latency.
    """

    min_psnr: float | None = None
    min_psnr_worst: float | None = None
    min_ssim: float | None = None
    max_bytes: int | None = None
    max_size_ratio: float | None = None
    min_speedup: float | None = None
    max_latency_ms: float | None = None

    def __post_init__(self):
        for name in GATES:
            value = getattr(self, name, None)
            if value is None:
                continue
            option = "--" + name.replace("_", "-")
            if name == "max_bytes":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise OptionError(f"{option} must be a whole number of bytes >= 1, got {value}")
            elif isinstance(value, bool) or not (_finite(value) and value > 0):
                raise OptionError(f"{option} must be a positive number, got {value}")
            elif name == "min_ssim" and value > 1:
                raise OptionError(f"{option} must be at most 1 (SSIM of identical outputs), got {value}")

    def given(self) -> dict:
        """The gates set, by name."""
        return {n: getattr(self, n) for n in GATES if getattr(self, n, None) is not None}


@dataclass(frozen=True)
class BrowserGates(FormatGates):
    """Limits on the browser runtime's figures of every gated artifact (``--browser``): these for
    every format, ``tflite`` (LiteRT.js) / ``onnx`` (onnxruntime-web) for one. ``min_psnr`` and
    ``min_ssim`` against the float model; ``min_speedup``: the float32 artifact's single-threaded
    browser p50 over this one's; ``max_latency_ms``: its single-threaded browser p50. An artifact
    the browser runtime cannot load fails every browser gate. Size gates have no browser form
    (the file is the same)."""

    tflite: FormatGates = FormatGates()
    onnx: FormatGates = FormatGates()

    def __post_init__(self):
        super().__post_init__()
        for g in (self, self.tflite, self.onnx):
            for name in SIZE_GATES:
                if getattr(g, name) is not None:
                    raise OptionError(f"--{name.replace('_', '-')}: the file is the same in the browser; give it without browser:")

    def for_format(self, fmt: str) -> dict:
        return {**self.given(), **getattr(self, fmt).given()}

    @property
    def any(self) -> bool:
        return any(g.given() for g in (self, self.tflite, self.onnx))

    @property
    def timed(self) -> bool:
        return any(getattr(g, n) is not None for g in (self, self.tflite, self.onnx) for n in LATENCY_GATES)


@dataclass(frozen=True)
class Gates(FormatGates):
    """Gates a run's deliverable artifacts must pass (exit 3 otherwise): these for every format,
    ``tflite`` / ``onnx`` for one (a format's own limit wins). The PSNR floor for every format is
    the command's fidelity target (``min_psnr`` of its config), so ``Gates.min_psnr`` is unused
    there and rejected; per format it is a gate of its own."""

    tflite: FormatGates = FormatGates()
    onnx: FormatGates = FormatGates()
    browser: BrowserGates = BrowserGates()  # on the figures of --browser

    def __post_init__(self):
        if self.min_psnr is not None:
            raise OptionError("the PSNR gate for every format is the command's min_psnr (its fidelity target)")
        super().__post_init__()

    def for_format(self, fmt: str, min_psnr: float = 0.0) -> dict:
        """The limits an artifact of ``fmt`` is held to: the fidelity target, then these, then the format's."""
        limits = {"min_psnr": min_psnr} if min_psnr and min_psnr > 0 else {}
        return {**limits, **self.given(), **getattr(self, fmt).given()}

    @property
    def timed(self) -> bool:
        """A latency gate is set (latency then takes enough runs to be stable)."""
        return any(getattr(g, n) is not None for g in (self, self.tflite, self.onnx) for n in LATENCY_GATES)


@dataclass(frozen=True)
class RunConfig:
    """What every command that builds and measures artifacts shares.

    ``eval_samples``: held-out samples fidelity is measured on (``None``: from the output size,
    64 for small outputs); ``latency_runs``: timed batch-1 runs per artifact (``None``: 50, 10
    with ``fast``); ``fast``: a quick look with a quarter of the samples; ``seed`` seeds noise,
    shuffles, splits and training, so the same call gives the same artifacts byte for byte;
    ``gates``: limits the run's deliverable artifacts must meet (``pipelines.gates``);
    ``browser``: also load, run and time every artifact in its browser runtime in headless
    Chromium (``BrowserRun`` on each artifact; ``gencompress setup-browser`` installs them).
    """

    formats: tuple[str, ...] = FORMATS
    eval_samples: int | None = None
    seed: int = 0
    threads: int = 1
    latency_runs: int | None = None
    fast: bool = False
    gates: Gates = Gates()
    browser: bool = False

    def __post_init__(self):
        if self.gates.browser.any and not self.browser:
            raise OptionError("browser gates judge the figures of --browser: add --browser (browser = true)")
        if not self.formats:
            raise OptionError("no output format given")
        for f in self.formats:
            if f not in FORMATS:
                raise OptionError(f"unknown format '{f}' (choose from {', '.join(FORMATS)})")
        if self.eval_samples is not None and self.eval_samples < 1:
            raise OptionError("--eval-samples must be at least 1")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise OptionError(f"--seed must be a whole number >= 0, got {self.seed}")
        if self.threads < 1 or (self.latency_runs is not None and self.latency_runs < 1):
            raise OptionError("--threads and latency runs must be at least 1")


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value) -> float:
    """Seconds in ``value``: a number of seconds, or text such as ``90s``, ``10m``, ``1.5h``, ``1m30s``."""
    import re

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)([smh]?)", text)
        if not text or not parts or "".join(n + u for n, u in parts) != text or (len(parts) > 1 and not all(u for _, u in parts)):
            raise OptionError(f"--time-budget: give a duration such as 90s, 10m or 1h, not '{value}'")
        seconds = sum(float(n) * _DURATION_UNITS[u or "s"] for n, u in parts)
    if not (_finite(seconds) and seconds > 0):
        raise OptionError(f"--time-budget must be a positive duration, got '{value}'")
    return seconds


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is fine-tuned to reproduce its teacher (pruning, QAT, distillation).

    ``steps`` is the most steps run (rounded up to whole ``eval_every`` rounds) and
    ``batch_size`` the batch; ``None`` (the default) chooses both from the model's cost per
    sample, measured once at the start (``compress.finetune.plan_training``): the batch is
    ``max_batch_size`` unless that leaves fewer than ``min_rounds`` evaluations' worth of steps in
    ``target_seconds``, the steps fill ``target_seconds`` (or ``time_budget``), at most
    ``max_steps``. Early stopping ends sooner after ``patience`` evaluations without a
    ``min_delta`` dB gain, never before ``min_steps``. ``eval_every`` is raised where evaluating
    the held-out set would cost more than a tenth of the training (a function of batch and
    held-out size, not of timings). The learning rate is multiplied by ``plateau_lr_factor``
    every two evaluations without gain. ``time_budget`` (seconds, or text such as ``"10m"``):
    stop when it is spent, keeping the best weights. ``xla``: compile the step with XLA (off by
    default: slower or unsupported on CPU for the generators measured, see the README).
    ``distribute``: ``mirrored`` (every local GPU, or logical CPU device) or ``multi-worker``
    (the cluster in ``TF_CONFIG``).
    """

    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float = 1e-3
    loss: str = "l2"
    eval_every: int = 50
    patience: int = 4
    min_delta: float = 0.05
    min_steps: int = 0
    freeze_batchnorm: bool = True
    plateau_lr_factor: float = 0.5
    distribute: str = "none"
    max_steps: int = 1000
    max_batch_size: int = 64
    min_batch_size: int = 8
    target_seconds: float = 240.0
    time_budget: float | str | None = None
    xla: bool = False

    def __post_init__(self):
        if self.steps is not None and self.steps < 0:
            raise OptionError(f"--steps must be 0 or more, got {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise OptionError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (_finite(self.learning_rate) and self.learning_rate > 0):
            raise OptionError(f"--learning-rate must be a positive number, got {self.learning_rate}")
        if self.loss not in LOSSES:
            raise OptionError(f"unknown fine-tuning loss '{self.loss}' (choose from {', '.join(LOSSES)})")
        if self.eval_every < 1 or self.patience < 1:
            raise OptionError("--eval-every and --patience must be at least 1")
        if self.min_delta < 0 or self.min_steps < 0:
            raise OptionError("min_delta and min_steps must not be negative")
        if not (0.0 < self.plateau_lr_factor <= 1.0):
            raise OptionError(f"plateau_lr_factor must be in (0, 1], got {self.plateau_lr_factor}")
        if self.distribute not in DISTRIBUTE:
            raise OptionError(f"unknown --distribute '{self.distribute}' (choose from {', '.join(DISTRIBUTE)})")
        if self.max_steps < 1 or not (1 <= self.min_batch_size <= self.max_batch_size):
            raise OptionError("max_steps must be at least 1 and 1 <= min_batch_size <= max_batch_size")
        if not (_finite(self.target_seconds) and self.target_seconds > 0):
            raise OptionError(f"target_seconds must be positive, got {self.target_seconds}")
        if self.time_budget is not None:
            object.__setattr__(self, "time_budget", parse_duration(self.time_budget))

    @property
    def resolved(self) -> bool:
        """Steps and batch size are known (given, or chosen by ``plan_training``)."""
        return self.steps is not None and self.batch_size is not None

    @property
    def rounds(self) -> int:
        return math.ceil(self._known("steps") / self.eval_every)

    def _known(self, name: str) -> int:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"TrainingConfig.{name} is chosen from the measured cost: call plan_training first")
        return value


# Quantization-aware training, measured on the samples (Adam, ranges calibrated first): 1e-4 and
# even 3e-5 lose held-out PSNR in the first hundred steps (each step moves every weight by about
# the learning rate, a sizeable fraction of an int8 step); 1e-5 gains steadily. Its gains are
# slow and the held-out PSNR noisy (dcgan_saturated: +0.35 dB by step 350, where patience 4
# stopped, +0.73 dB by step 1,700): wait 10 evaluations.
# Steps and batch sizes are chosen from each model's measured cost (``None``), at most the
# ``max_*`` below, the constants these defaults had when they were tuned on the 16x16 samples.
QAT_TRAINING = TrainingConfig(max_steps=1000, max_batch_size=32, learning_rate=1e-5, patience=10)
# ``quantize``'s automatic QAT rescue (``method="auto"``, the default) trains for about this long:
# its steps are planned from the model's multiply-accumulates (not timed, so the same command
# writes the same bytes), with a time budget of RESCUE_CEILING times it as a ceiling on slower
# machines. A model that would get fewer than RESCUE_MIN_STEPS steps is not rescued (said in one
# line): give ``--method qat --time-budget``.
AUTO_QAT_SECONDS, RESCUE_CEILING, RESCUE_MIN_STEPS = 180.0, 2.0, 50
PRUNE_TRAINING = TrainingConfig(max_steps=1000, max_batch_size=64, learning_rate=1e-3)
DISTILL_TRAINING = TrainingConfig(max_steps=3000, max_batch_size=32, learning_rate=2e-3, eval_every=100, patience=5, target_seconds=360.0)


@dataclass(frozen=True)
class _QuantizeStep(RunConfig):
    """The post-training quantize step: shared by quantize and by prune/distill ``then``.

    ``min_psnr``: the fidelity target in dB against the float model (0 turns the guard off);
    ``int8_io``: TFLite integer inputs and outputs; ``calibration_method``: ONNX static
    calibration (the search tries the others when the target is missed); ``prefer``: among the
    artifacts that meet the target, ``speed`` takes those that compute fastest (full int8, then
    mixed precision, then float compute), ``size`` the smallest; ``browser_guard``: the search
    also classes an int8 attempt ``slow`` when it runs in int8 an op its browser runtime runs
    slower than float (``converters.browser_ops``), so the speed pick suits the browser.
    """

    min_psnr: float = 30.0
    int8_io: bool = False
    calibration_method: str = "minmax"
    prefer: str = "speed"
    browser_guard: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.prefer not in PREFER:
            raise OptionError(f"unknown --prefer '{self.prefer}' (choose from {', '.join(PREFER)})")
        if not (_finite(self.min_psnr) and self.min_psnr >= 0):
            raise OptionError(f"--min-psnr must be a number of dB >= 0 (0 turns the guard off), got {self.min_psnr}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise OptionError(
                f"unknown calibration method '{self.calibration_method}' (choose from {', '.join(CALIBRATION_METHODS)})"
            )


def _check_then(then, allowed) -> None:
    bad = [p for p in then if p not in allowed]
    if bad:
        raise OptionError(f"--then: unknown {', '.join(bad)} (choose from {', '.join(allowed)})")


@dataclass(frozen=True)
class QuantizeConfig(_QuantizeStep):
    """``quantize``: float32 references and each of ``modes`` per format; ``method="qat"`` also
    fine-tunes a quantization-aware copy (``qat``: its training settings); ``method="auto"``
    (the default) does so only when no post-training int8 artifact meets the target at full
    speed, for about ``AUTO_QAT_SECONDS`` unless ``qat`` says otherwise; ``"ptq"``: never."""

    modes: tuple[str, ...] = ("int8",)
    method: str = "auto"
    qat: TrainingConfig = QAT_TRAINING

    def __post_init__(self):
        super().__post_init__()
        if not self.modes:
            raise OptionError("no precision given")
        for p in self.modes:
            if p not in PRECISIONS:
                raise OptionError(f"unknown precision '{p}' (choose from {', '.join(PRECISIONS)})")
        if self.method not in METHODS:
            raise OptionError(f"unknown method '{self.method}' (choose from {', '.join(METHODS)})")
        if self.int8_io and not {"int8", "int16x8"} & set(self.modes):
            raise OptionError("--int8-io applies to int8 and int16x8 artifacts: add --mode int8 (or int16x8)")


@dataclass(frozen=True)
class ExportConfig(RunConfig):
    """``export``: float32 .tflite and .onnx, measured against the Keras model; ``min_psnr``:
    the PSNR they must reach (0: not graded)."""

    min_psnr: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not (_finite(self.min_psnr) and self.min_psnr >= 0):
            raise OptionError(f"--min-psnr must be a number of dB >= 0 (0 turns the guard off), got {self.min_psnr}")


@dataclass(frozen=True)
class AnalyzeConfig(RunConfig):
    """``analyze``: per-unit int8 sensitivity, per format."""

    calibration_method: str = "minmax"

    def __post_init__(self):
        super().__post_init__()
        if self.calibration_method not in CALIBRATION_METHODS:
            raise OptionError(
                f"unknown calibration method '{self.calibration_method}' (choose from {', '.join(CALIBRATION_METHODS)})"
            )
        if self.browser:
            raise OptionError("analyze writes no artifacts: --browser does not apply")


@dataclass(frozen=True)
class PruneConfig(_QuantizeStep):
    """``prune``: magnitude pruning with data-free fine-tuning, then ``then`` quantization.

    ``schedule``: ``constant`` prunes to ``sparsity`` at ``begin_step`` and re-picks the
    smallest weights every ``frequency`` steps; ``polynomial`` raises sparsity from
    ``initial_sparsity`` to ``sparsity`` between ``begin_step`` and ``end_step`` (default: half
    the fine-tuning steps), then fine-tunes at the final mask. ``structure="2:4"``: at least 2
    zeros in every 4 consecutive weights along the kernel's input-channel axis (sparsity 0.5
    only). ``layers``: names to prune (default: every Dense/Conv/ConvTranspose kernel tfmot can
    prune); ``skip_first`` / ``skip_last`` leave the first / last of them dense. ``then``:
    precisions of ``MODES`` and ``qat`` (pruning-preserving quantization-aware training).

    ``structure="channels"`` removes whole channels instead (``compress.channels``): the size
    target is ``target_macs`` or ``target_params`` (a fraction of the original's kept), else
    ``sparsity`` (the fraction of prunable channels removed); ``search`` looks for the smallest
    model whose float PSNR meets ``min_psnr`` instead. ``importance``: ``taylor`` (the channel's
    first-order effect on the outputs) or ``l1`` (its weights' norm). The schedule and layer
    options are tfmot's and do not apply.
    """

    sparsity: float = 0.5
    schedule: str = "polynomial"
    begin_step: int = 0
    end_step: int | None = None
    frequency: int | None = None
    initial_sparsity: float = 0.0
    structure: str | None = None
    layers: tuple[str, ...] | None = None
    skip_first: bool = False
    skip_last: bool = False
    training: TrainingConfig = PRUNE_TRAINING
    then: tuple[str, ...] = ()
    target_macs: float | None = None
    target_params: float | None = None
    search: bool = False
    importance: str = "taylor"

    def __post_init__(self):
        super().__post_init__()
        if not (0.0 < self.sparsity < 1.0):
            raise OptionError(f"--sparsity must be between 0 and 1 (exclusive), got {self.sparsity}")
        self._check_channel_options()
        if self.schedule not in SCHEDULES:
            raise OptionError(f"unknown schedule '{self.schedule}' (choose from {', '.join(SCHEDULES)})")
        if self.structure is not None:
            if self.structure not in STRUCTURES:
                raise OptionError(f"unknown structure '{self.structure}' (choose from {', '.join(STRUCTURES)})")
            if self.structure == "2:4" and not math.isclose(self.sparsity, 0.5):
                raise OptionError(f"--structure 2:4 means 50% sparsity: use --sparsity 0.5, not {self.sparsity}")
        if self.begin_step < 0:
            raise OptionError(f"--begin-step must be 0 or more, got {self.begin_step}")
        if self.end_step is not None and self.end_step <= self.begin_step:
            raise OptionError(f"--end-step ({self.end_step}) must come after --begin-step ({self.begin_step})")
        if self.frequency is not None and self.frequency < 1:
            raise OptionError(f"pruning frequency must be at least 1, got {self.frequency}")
        if not (0.0 <= self.initial_sparsity < self.sparsity):
            raise OptionError(f"initial sparsity must be in [0, {self.sparsity}), got {self.initial_sparsity}")
        if self.layers is not None and not self.layers:
            raise OptionError("--layers needs at least one layer name")
        if self.training.steps is not None and self.training.steps < 1:
            raise OptionError("pruning happens during fine-tuning: --steps must be at least 1")
        _check_then(self.then, MODES + ("qat",))

    def _check_channel_options(self) -> None:
        if self.importance not in IMPORTANCE:
            raise OptionError(f"unknown --importance '{self.importance}' (choose from {', '.join(IMPORTANCE)})")
        targets = [n for n in ("target_macs", "target_params") if getattr(self, n) is not None] + (["search"] if self.search else [])
        if self.structure != "channels":
            if targets:
                raise OptionError(f"--{targets[0].replace('_', '-')} applies to --structure channels")
            return
        tfmot_only = [o for o, unset in (("--layers", self.layers is None), ("--skip-first", not self.skip_first), ("--skip-last", not self.skip_last),
                                            ("--begin-step", self.begin_step == 0), ("--end-step", self.end_step is None)) if not unset]
        if tfmot_only:
            raise OptionError(f"{', '.join(tfmot_only)} appl{'y' if len(tfmot_only) > 1 else 'ies'} to weight pruning, not --structure channels")
        if len(targets) > 1:
            raise OptionError("give one size target for --structure channels: --sparsity, --target-macs, --target-params, or --min-psnr alone")
        for name in ("target_macs", "target_params"):
            value = getattr(self, name)
            if value is not None and not (_finite(value) and 0.0 < value < 1.0):
                raise OptionError(f"--{name.replace('_', '-')} is the fraction of the original's kept, between 0 and 1 (exclusive), got {value}")
        if self.search and not self.min_psnr > 0:
            raise OptionError("--structure channels without a size target looks for the smallest model meeting --min-psnr: give --min-psnr above 0")

    def channel_target(self) -> tuple[str, float]:
        """``structure="channels"``: what the size is chosen by, ``(kind, value)``: ``macs`` or
        ``params`` (fraction kept), ``channels`` (fraction of prunable channels kept) or
        ``psnr`` (``search``: the smallest model meeting ``min_psnr``)."""
        if self.search:
            return "psnr", self.min_psnr
        if self.target_macs is not None:
            return "macs", self.target_macs
        if self.target_params is not None:
            return "params", self.target_params
        return "channels", 1.0 - self.sparsity

    def effective_schedule(self) -> dict:
        """The schedule actually run over the fine-tuning steps, in fine-tuning steps.

        tfmot counts its pruning step from 1 and only updates masks on its frequency grid, so
        ``begin`` is at least 1 and ``end`` is moved down onto the grid (else the final sparsity
        would never be applied). ``target_at`` is the step from which the target sparsity holds.
        """
        steps = self.training._known("steps")
        begin = max(1, self.begin_step)
        if steps < begin:
            raise OptionError(f"--begin-step {self.begin_step} is past the last fine-tuning step ({steps}): raise --steps")
        if self.structure == "2:4":
            return {"kind": "2:4 (mask fixed at step 1)", "begin_step": 1, "end_step": 1, "frequency": 1, "target_at": 1}
        if self.schedule == "constant":
            frequency = self.frequency or max(1, min(100, steps // 20))
            return {"kind": "constant", "begin_step": begin, "end_step": None, "frequency": frequency, "target_at": begin}
        end = self.end_step if self.end_step is not None else begin + max(1, (steps - begin) // 2)
        if end > steps:
            raise OptionError(f"--end-step {end} is past the last fine-tuning step ({steps}): raise --steps or lower --end-step")
        if end <= begin:
            raise OptionError(f"the polynomial schedule needs --end-step after --begin-step ({begin}); raise --steps")
        frequency = min(self.frequency or max(1, (end - begin) // 20), end - begin)
        end = begin + frequency * ((end - begin) // frequency)
        return {
            "kind": "polynomial",
            "initial_sparsity": self.initial_sparsity,
            "begin_step": begin,
            "end_step": end,
            "frequency": frequency,
            "target_at": end,
        }


@dataclass(frozen=True)
class DistillConfig(_QuantizeStep):
    """``distill``: a smaller student trained to reproduce the model (the teacher).

    ``width``: hidden units/filters multiplier (``None`` when a student architecture is given);
    ``init``: a derived student starts from the teacher's most important channels
    (``teacher``: kept by channel pruning's importance and re-fit) or from fresh seeded weights
    (``random``); ``depth``: fraction of the droppable blocks kept; ``feature_weight``: weight of the
    intermediate feature-matching loss (0: off); ``checkpoint_dir``: save after every
    evaluation and resume from it. ``min_psnr`` grades the student's artifacts against the
    teacher; ``then``: precisions of ``MODES`` and ``qat``.
    """

    min_psnr: float = 25.0
    width: float | None = 0.5
    depth: float = 1.0
    feature_weight: float = 0.0
    training: TrainingConfig = DISTILL_TRAINING
    then: tuple[str, ...] = ()
    checkpoint_dir: str | None = None
    init: str = "teacher"

    def __post_init__(self):
        super().__post_init__()
        if self.init not in INITS:
            raise OptionError(f"unknown --init '{self.init}' (choose from {', '.join(INITS)})")
        if self.width is not None and not (_finite(self.width) and 0.0 < self.width <= 1.0):
            raise OptionError(f"--width must be in (0, 1], got {self.width}")
        if not (0.0 <= self.depth <= 1.0):
            raise OptionError(f"--depth must be in [0, 1] (the fraction of droppable blocks kept), got {self.depth}")
        if not (_finite(self.feature_weight) and self.feature_weight >= 0.0):
            raise OptionError(f"--feature-loss must be a weight >= 0, got {self.feature_weight}")
        if self.training.steps is not None and self.training.steps < 1:
            raise OptionError("distillation trains the student: --steps must be at least 1")
        _check_then(self.then, MODES + ("qat",))


def replace(config, **changes):
    """A copy of ``config`` with ``changes`` (validated again)."""
    return dataclasses.replace(config, **changes)


__all__ = [
    "RunConfig", "TrainingConfig", "Gates", "FormatGates", "BrowserGates", "QuantizeConfig", "ExportConfig", "AnalyzeConfig", "PruneConfig",
    "DistillConfig", "QAT_TRAINING", "PRUNE_TRAINING", "DISTILL_TRAINING", "default_of", "parse_duration",
]
