"""gencompress as a library: every call takes the model first and a config second and returns a
``Result``; writing files is the separate ``Result.save``.

    import gencompress as gc

    model = gc.load_model("generator.h5")               # or gc.from_keras(keras_model)
    calib = gc.Calibration.noise(200, seed=0)           # .arrays_of({"z": z}), .images("photos/", range=(-1, 1))
    result = gc.quantize(model, gc.QuantizeConfig(min_psnr=35), calibration=calib)
    result.artifacts["tflite"].fidelity.psnr_db
    result.save("out/")

Errors are the typed ones of ``gencompress.errors``. Progress is silent unless a ``Progress`` is
given (the CLI gives one that draws bars on a terminal and prints a line per phase in logs).
"""

from __future__ import annotations

from gencompress.calibration import Calibration
from gencompress.config import AnalyzeConfig, DistillConfig, ExportConfig, PruneConfig, QuantizeConfig, replace
from gencompress.model import LoadedModel, from_keras
from gencompress.model import load_model as _load_model
from gencompress.pipelines.result import Result
from gencompress.progress import Progress


def load_model(path, trust_code: bool = False, custom_objects: str | None = None, input_shape=None) -> LoadedModel:
    """Load a ``.h5``, ``.keras`` or SavedModel. Code stored in the model (Lambda layers) runs
    only with ``trust_code``; ``custom_objects``: a Python file defining custom layer classes
    and Lambda helpers (needs ``trust_code``); ``input_shape``: the shape (without the batch) to
    fix a fully convolutional model's unknown input dimensions at, or ``{input name: shape}``."""
    return _load_model(path, trust_code=trust_code, custom_objects_file=custom_objects, input_shape=input_shape)


def quantize(model: LoadedModel, config: QuantizeConfig | None = None, calibration: Calibration | None = None,
             progress: Progress | None = None, strategy=None, *, time_budget: float | str | None = None) -> Result:
    """Post-training quantization (and, with ``method="qat"``, quantization-aware training).
    ``time_budget`` (seconds, or ``"10m"``): QAT's fine-tuning stops when it is spent, best weights kept."""
    from gencompress.pipelines.quantize import quantize as run

    config = config or QuantizeConfig()
    if time_budget is not None:
        config = replace(config, qat=replace(config.qat, time_budget=time_budget))
    if config.method == "qat":
        strategy = strategy or _strategy(config.qat)
    return run(model, config, calibration, progress, strategy)


def export(model: LoadedModel, config: ExportConfig | None = None, calibration: Calibration | None = None,
           progress: Progress | None = None) -> Result:
    """Float32 ``.tflite`` and ``.onnx``, measured against the Keras model."""
    from gencompress.pipelines.quantize import export as run

    return run(model, config or ExportConfig(), calibration, progress)


def analyze(model: LoadedModel, config: AnalyzeConfig | None = None, calibration: Calibration | None = None,
            progress: Progress | None = None) -> Result:
    """Per-unit int8 sensitivity, ranked most sensitive first (``result.report.sensitivity``)."""
    from gencompress.pipelines.quantize import analyze as run

    return run(model, config or AnalyzeConfig(), calibration, progress)


def prune(model: LoadedModel, config: PruneConfig | None = None, calibration: Calibration | None = None,
          progress: Progress | None = None, strategy=None, *, time_budget: float | str | None = None) -> Result:
    """Magnitude pruning with data-free fine-tuning; ``result.model`` is the pruned Keras model.
    Steps and batch size left ``None`` in ``config.training`` are chosen from the model's measured
    cost; ``time_budget`` (seconds, or ``"10m"``) ends the fine-tuning, best weights kept."""
    from gencompress.pipelines.prune import prune as run

    config = config or PruneConfig()
    if time_budget is not None:
        config = replace(config, training=replace(config.training, time_budget=time_budget))
    return run(model, config, calibration, progress, strategy or _strategy(config.training))


def distill(model: LoadedModel, config: DistillConfig | None = None, calibration: Calibration | None = None, *,
            student: LoadedModel | None = None, progress: Progress | None = None, strategy=None,
            time_budget: float | str | None = None) -> Result:
    """A smaller student trained to reproduce ``model``; ``result.model`` is the student.
    ``time_budget`` (seconds, or ``"10m"``) ends its training, best weights kept."""
    from gencompress.pipelines.distill import distill as run

    config = config or DistillConfig()
    if time_budget is not None:
        config = replace(config, training=replace(config.training, time_budget=time_budget))
    return run(model, config, calibration, student=student, progress=progress, strategy=strategy or _strategy(config.training))


def _strategy(training):
    """The ``tf.distribute`` strategy ``training.distribute`` names, made now. Multi-worker and
    logical CPU devices must be set up before TensorFlow starts: make those with
    ``compress.distribute.make_strategy`` before loading the model, and pass them in."""
    if training.distribute == "none":
        return None
    from gencompress.compress.distribute import make_strategy

    return make_strategy(training.distribute)

__all__ = ["load_model", "from_keras", "quantize", "export", "analyze", "prune", "distill", "Calibration", "Result", "Progress"]


def demo(folder, out=None, artifact: str | None = None):
    """Write a static web page (``out``, default ``folder/demo``) that draws samples from an
    artifact of ``folder`` (a saved run) in the browser; returns the demo's folder."""
    from gencompress.pipelines.demo import build_demo

    return build_demo(folder, out, artifact)


def setup_browser(log=print):
    """Install the browser runtimes ``browser=True`` and ``demo`` use (``npm ci`` of the pinned
    lockfile); returns the folder they are in."""
    from gencompress.converters.browser_setup import install

    return install(log)
