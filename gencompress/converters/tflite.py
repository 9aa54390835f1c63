"""TFLite: conversion at each precision, and a LiteRT runner for measuring the result."""

from __future__ import annotations

import numpy as np

from gencompress.errors import ConversionError
from gencompress.tfenv import import_tf, native_output_captured


def convert_tflite(model, precision: str, calibration=None, int8_io: bool = False) -> bytes:
    """Convert a ``LoadedModel`` to a TFLite flatbuffer.

    ``precision``: float32, float16 (float16 weights), dynamic (int8 weights, activations
    quantized on the fly), int8 (full integer; float I/O unless ``int8_io``), int16x8 (int16
    activations, int8 weights). int8/int16x8 need a ``CalibrationSet``.
    """
    tf = import_tf()
    converter = _converter(tf, model)
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision in ("int8", "int16x8"):
        if calibration is None:
            raise ValueError(f"{precision} needs a calibration set")
        converter = int8_converter(model, calibration)
        if precision == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            io_type = tf.int8
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
            io_type = tf.int16
        if int8_io:
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
    elif precision != "float32":
        raise ValueError(f"unknown precision {precision}")
    try:
        with native_output_captured():
            return bytes(converter.convert())
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
        raise ConversionError(f"TFLite {precision} conversion failed: {_summary(exc)}") from exc


def int8_converter(model, calibration):
    """A TFLite converter for ``model`` set up to quantize, calibrated on ``calibration``.

    Callers choose the op sets (or calibrate only, or hand it to the quantization debugger).
    """
    tf = import_tf()
    converter = _converter(tf, model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(model, calibration)
    return converter


def _converter(tf, model):
    if model.keras_model is not None:
        return tf.lite.TFLiteConverter.from_keras_model(model.keras_model)
    return tf.lite.TFLiteConverter.from_concrete_functions([model.signature], model._saved_object)


def representative_dataset(model, calibration):
    """The calibration samples as the converter wants them: lists for Keras, dicts for a signature."""
    names = [t.name for t in model.inputs]

    def dataset():
        for sample in calibration.samples():
            if model.keras_model is not None:
                yield [sample[n] for n in names]
            else:
                yield {n: sample[n] for n in names}

    return dataset


def _summary(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if "error:" in ln.lower()]
    text = lines[0] if lines else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:400]


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
            raise ConversionError(f"LiteRT cannot load {path}: {_summary(exc)}") from exc
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
        self.interpreter.invoke()
        return [_dequantize(self.interpreter.get_tensor(d["index"]), d) for d in self.outputs]

    def run_all(self, data) -> list[np.ndarray]:
        """Outputs for every sample of a ``CalibrationSet``, stacked along the batch axis."""
        results = [self.run(s) for s in data.samples()]
        return [np.concatenate([r[i] for r in results]) for i in range(len(self.outputs))]


def _match(name: str, details: dict, position: int) -> str:
    if name in details:
        return name
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
