"""gencompress: make a trained Keras generator small and fast, measured against the float model.

The public API (see ``gencompress.api``): ``load_model``, ``from_keras``, ``Calibration``,
``quantize``, ``export``, ``analyze``, ``prune``, ``distill``, their configs (``QuantizeConfig``,
``ExportConfig``, ``AnalyzeConfig``, ``PruneConfig``, ``DistillConfig``, ``TrainingConfig``), the
typed results (``Result``, ``Report``, ``ArtifactResult``, ``Fidelity``, ``Latency``, …), the
errors and ``Progress``. Importing the package is cheap: TensorFlow loads on first use.
"""

from importlib import import_module

from gencompress.tfenv import prepare_environment

# Before anything can import TensorFlow: tf-keras for tfmot, oneDNN off for repeatable results.
prepare_environment()

_WHERE = {
    "gencompress.api": ("load_model", "from_keras", "quantize", "export", "analyze", "prune", "distill", "demo", "setup_browser"),
    "gencompress.calibration": ("Calibration",),
    "gencompress.config": (
        "QuantizeConfig", "ExportConfig", "AnalyzeConfig", "PruneConfig", "DistillConfig", "TrainingConfig", "RunConfig",
        "Gates", "FormatGates", "BrowserGates",
    ),
    "gencompress.results": (
        "Report", "ArtifactResult", "Fidelity", "Latency", "SearchAttempt", "SearchRecord", "Failure",
        "PruningSection", "QatSection", "DistillationSection", "Sensitivity", "GatesSection", "GateCheck", "BrowserRun",
    ),
    "gencompress.pipelines.result": ("Result",),
    "gencompress.errors": (
        "GencompressError", "InputError", "ModelLoadError", "UnsupportedModelError", "CalibrationError", "OptionError",
        "ConversionError", "FidelityError",
    ),
    "gencompress.progress": ("Progress",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'gencompress' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__():
    return __all__
