"""Runtimes for measuring artifacts: LiteRT (XNNPACK) for .tflite, onnxruntime (CPU) for .onnx.

Both take inputs keyed by the model's input names and return float outputs, so every caller
measures either format the same way. ``make_runner`` is the one way to get one.
"""

from __future__ import annotations

import numpy as np

from gencompress.converters.tflite import error_summary, signature_key
from gencompress.errors import ConversionError
from gencompress.tfenv import native_output_captured


def make_runner(path, fmt: str, input_names: list[str], output_names: list[str], threads: int = 1):
    """The runner for an artifact of ``fmt`` (``tflite`` or ``onnx``) at ``path``."""
    cls = TFLiteRunner if fmt == "tflite" else OnnxRunner
    return cls(str(path), list(input_names), list(output_names), threads=threads)


class TFLiteRunner:
    """Runs a ``.tflite`` file in the LiteRT interpreter (XNNPACK delegate), one sample at a time.

    Inputs are keyed by the model's input names; integer-quantized I/O is (de)quantized here so
    callers always see the model's float values.
    """

    def __init__(self, path: str, input_names: list[str], output_names: list[str], threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        try:
            with native_output_captured():  # "Created TensorFlow Lite XNNPACK delegate"
                self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()
            runner = self.interpreter.get_signature_runner()
        except (ValueError, RuntimeError) as exc:
            raise ConversionError(f"LiteRT cannot load {path}: {error_summary(exc)}") from exc
        in_details = runner.get_input_details()
        out_details = runner.get_output_details()
        self.inputs = [(n, in_details[_match(n, in_details, i)]) for i, n in enumerate(input_names)]
        self.outputs = [out_details[_match(n, out_details, i)] for i, n in enumerate(output_names)]

    def set_inputs(self, sample: dict[str, np.ndarray]) -> None:
        for name, d in self.inputs:
            self.interpreter.set_tensor(d["index"], _quantize(sample[name], d))

    def invoke(self) -> None:
        self.interpreter.invoke()

    def run(self, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.set_inputs(sample)
        try:
            self.interpreter.invoke()
        except RuntimeError as exc:  # a kernel's check failed on these inputs
            raise ConversionError(f"LiteRT failed to run it: {error_summary(exc)}") from exc
        return [_dequantize(self.interpreter.get_tensor(d["index"]), d) for d in self.outputs]

    def run_all(self, data, on_sample=None) -> list[np.ndarray]:
        """Outputs for every sample of a ``CalibrationSet``, stacked along the batch axis.
        ``on_sample(1)`` is called after each (progress)."""
        results = []
        for s in data.samples():
            results.append(self.run(s))
            if on_sample is not None:
                on_sample(1)
        return [np.concatenate([r[i] for r in results]) for i in range(len(self.outputs))]


def _match(name: str, details: dict, position: int) -> str:
    if signature_key(name) in details:
        return signature_key(name)
    keys = sorted(details)  # converter names them output_0, output_1, ... in model order
    return keys[position]


def _quantize(x: np.ndarray, d: dict) -> np.ndarray:
    dtype = d["dtype"]
    scale, zero = d["quantization"]
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _dequantize(y: np.ndarray, d: dict) -> np.ndarray:
    scale, zero = d["quantization"]
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


ONNX_PROVIDERS = ["CPUExecutionProvider"]


def onnx_session_options(threads: int = 1):
    """The onnxruntime session options every ONNX artifact is measured (and inspected) with."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # deprecation chatter from the global logger
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


class OnnxRunner:
    """Runs an ``.onnx`` file in onnxruntime on the CPU, inputs keyed by the model's input names."""

    def __init__(self, path: str, input_names: list[str], output_names: list[str], threads: int = 1):
        import onnxruntime as ort

        options = onnx_session_options(threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=ONNX_PROVIDERS)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConversionError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:400]}") from exc
        self.input_names = input_names
        self._feed = None

    def set_inputs(self, sample: dict[str, np.ndarray]) -> None:
        self._feed = {n: sample[n] for n in self.input_names}

    def invoke(self) -> None:
        self.session.run(None, self._feed)

    def run(self, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            outputs = self.session.run(None, {n: sample[n] for n in self.input_names})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConversionError(f"onnxruntime failed to run it: {str(exc).splitlines()[0][:400]}") from exc
        return [np.asarray(o, dtype=np.float32) for o in outputs]

    def run_all(self, data, on_sample=None, batch: int = 8) -> list[np.ndarray]:
        """Outputs for every sample of a ``CalibrationSet`` in batches of ``batch``;
        ``on_sample(n)`` is called after each batch (progress)."""
        return run_in_batches(self.run, data, batch, on_sample)


def run_in_batches(run, data, batch: int, on_sample=None) -> list[np.ndarray]:
    """``run`` (a runner's batch call) over every sample of a ``CalibrationSet``, ``batch`` at a
    time, the outputs stacked along the batch axis; ``on_sample(n)`` after each call."""
    n = len(data)
    parts = []
    for start in range(0, n, batch):
        parts.append(run({k: v[start : start + batch] for k, v in data.arrays.items()}))
        if on_sample is not None:
            on_sample(min(batch, n - start))
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
