"""TFLite: conversion at each precision, and a LiteRT runner for measuring the result."""

from __future__ import annotations

import os
import re

import numpy as np

from gencompress.compat.tflite import calibrate_only, read_flatbuffer, write_flatbuffer
from gencompress.errors import ConversionError
from gencompress.tfenv import import_keras, import_tf, native_output_captured


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
        raise ConversionError(f"TFLite {precision} conversion failed: {error_summary(exc)}") from exc


def int8_converter(model, calibration):
    """A TFLite converter for ``model`` set up to quantize, calibrated on ``calibration``.

    Callers choose the op sets (or calibrate only, or hand it to the quantization debugger).
    """
    tf = import_tf()
    converter = _converter(tf, model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(model, calibration)
    return converter


# Values kept per tensor over the whole calibration set when asked (``calibrate(keep=...)``): a
# strided subsample of each sample's, for ranges chosen from the values (``compress.ranges``).
KEEP_VALUES = 32768


def calibrate(model, calibration, progress=None, keep: dict | None = None) -> bytes:
    """``model`` as a float TFLite flatbuffer with each activation's min/max over ``calibration``
    recorded in it: the input of ``mlir_quantize`` for every int8 variant of a run.

    TFLite's calibrator is used for the structure only (one sample); the ranges come from running
    that model ourselves with every tensor kept. Two reasons, both measured: the calibrator logs
    an op's inputs *after* the op ran, and LiteRT computes ADD in place, so the input of a
    residual ADD is recorded with the ADD's output range (a tiny Conv→Add(x, conv) block: true
    range ±2.0, recorded −2.6…4.5; every residual block of a super-resolution net is hit); and it
    runs one thread with extra logging (3.4 s per sample on a 96→384 SRGAN against 1.5 s here).
    Falls back to the calibrator's own ranges for a model this cannot observe whole.
    """
    from gencompress.progress import Progress

    progress = progress or Progress.silent()
    converter = int8_converter(model, calibration.take(1))
    calibrate_only(converter)  # the float model with min/max per tensor
    n = len(calibration)
    with progress.phase(f"tflite: calibrating on {n} samples", total=n, unit="sample") as phase:
        try:
            with native_output_captured():
                structure = bytes(converter.convert())
        except Exception as exc:  # the converter raises many kinds
            raise ConversionError(f"TFLite calibration failed: {error_summary(exc)}") from exc
        ranges = _observed_ranges(structure, model, calibration, phase.update, keep)
        if ranges is None:  # let the calibrator do it all
            if keep is not None:
                keep.clear()  # its tensors are not the ones observed
            converter = int8_converter(model, calibration)
            calibrate_only(converter)
            with native_output_captured():
                return bytes(converter.convert())
    return _with_ranges(structure, ranges)


def _observed_ranges(calibrated: bytes, model, calibration, on_sample, keep: dict | None = None) -> dict | None:
    """Min/max of every annotated float tensor of ``calibrated`` over the calibration samples,
    by tensor index; ``None`` when one of them cannot be read (then the calibrator decides).
    ``keep``: filled with a subsample of each tensor's values (``KEEP_VALUES`` in all)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    flat = read_flatbuffer(calibrated)
    if len(flat.subgraphs) != 1:
        return None
    wanted = [
        i for i, t in enumerate(flat.subgraphs[0].tensors)
        if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min) == 1
    ]
    with native_output_captured():
        interpreter = Interpreter(
            model_content=calibrated,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            experimental_preserve_all_tensors=True,  # no tensor shares memory with another
            num_threads=os.cpu_count() or 1,
        )
        interpreter.allocate_tensors()
    inputs = interpreter.get_signature_runner().get_input_details()
    feeds = [(inputs[signature_key(t.name)]["index"], t.name) for t in model.inputs]
    lo = dict.fromkeys(wanted, np.inf)
    hi = dict.fromkeys(wanted, -np.inf)
    for sample in calibration.samples():
        for index, name in feeds:
            interpreter.set_tensor(index, sample[name])
        interpreter.invoke()
        for i in wanted:
            try:
                v = interpreter.get_tensor(i)
            except ValueError:  # a tensor the interpreter does not keep
                return None
            if v.size:
                lo[i] = min(lo[i], float(v.min()))
                hi[i] = max(hi[i], float(v.max()))
                if keep is not None:  # random positions: a stride would alias with the channels
                    flat = v.ravel()
                    take = max(1, KEEP_VALUES // max(1, len(calibration)))
                    picks = np.random.default_rng([i, len(keep.get(i, []))]).integers(0, flat.size, min(take, flat.size))
                    keep.setdefault(i, []).append(flat[picks].astype(np.float32))
        on_sample(1)
    if any(not np.isfinite(lo[i]) or not np.isfinite(hi[i]) for i in wanted):
        return None
    return {i: (lo[i], hi[i]) for i in wanted}


def _with_ranges(calibrated: bytes, ranges: dict) -> bytes:
    flat = read_flatbuffer(calibrated)
    tensors = flat.subgraphs[0].tensors
    for i, (lo, hi) in ranges.items():
        tensors[i].quantization.min = [np.float32(lo)]
        tensors[i].quantization.max = [np.float32(hi)]
    return write_flatbuffer(flat)


# Recurrent layers run as a while loop over a TensorList: with an unknown batch the converter
# refuses the list ("'tf.TensorListReserve' op requires element_shape to be static": a
# GRU/Conv1DTranspose audio generator, exit 4), and with a batch of one its int8 calibration
# crashes the process (a segmentation fault in the converter). Unrolled over their known time
# steps (the same function, no loop) they convert in every precision.
RECURRENT = frozenset({"GRU", "LSTM", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"})


def unrolled(keras_model):
    """``keras_model`` with its recurrent layers unrolled (``unroll=True``), or itself when it has
    none; a model whose time steps are unknown cannot be unrolled and is returned as it is."""
    from gencompress.model import iter_layers

    if not any(type(layer).__name__ in RECURRENT for layer in iter_layers(keras_model)):
        return keras_model
    keras = import_keras()

    def clone(layer):
        config = layer.get_config()
        if type(layer).__name__ in RECURRENT:
            config["unroll"] = True
        return type(layer).from_config(config)

    try:
        copy = keras.models.clone_model(keras_model, clone_function=clone)
    except (ValueError, TypeError):  # unknown time steps: nothing to unroll over
        return keras_model
    copy.set_weights(keras_model.get_weights())
    return copy


def _converter(tf, model):
    if model.keras_model is None:
        return tf.lite.TFLiteConverter.from_concrete_functions([model.signature], model._saved_object)
    keras_model = unrolled(model.keras_model)
    if keras_model is not model.keras_model:
        serve, module = serving_function(tf, keras_model)
        return tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module)
    if _keys_are_names(model):
        return tf.lite.TFLiteConverter.from_keras_model(model.keras_model)
    # from_keras_model names the signature's inputs after the Keras inputs; a name that is not a
    # valid signature key ("Noise Input") makes it write a model with no signature at all, which
    # no signature runner can call. Serve the model under sanitized keys instead.
    serve, module = serving_function(tf, model.keras_model)
    return tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module)


def serving_function(tf, keras_model):
    """A ``tf.function`` taking a dict keyed by ``signature_key`` of each Keras input and returning
    the outputs keyed likewise, and a ``tf.Module`` holding the model's variables for it."""
    names = list(keras_model.input_names)
    specs = {
        signature_key(n): tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=signature_key(n))
        for n, t in zip(names, keras_model.inputs)
    }

    @tf.function(input_signature=[specs])
    def serve(inputs):
        args = [inputs[signature_key(n)] for n in names]
        out = keras_model(args if len(args) > 1 else args[0], training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        return {signature_key(n): o for n, o in zip(keras_model.output_names, out)}

    module = tf.Module()
    module.weights = list(keras_model.variables)
    module.serve = serve
    return serve, module


# What TensorFlow accepts as a signature input/output key.
_VALID_KEY = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")


def signature_key(name: str) -> str:
    """``name`` as a valid signature key: characters TensorFlow refuses become ``_``."""
    if _VALID_KEY.match(name):
        return name
    key = re.sub(r"[^A-Za-z0-9_.\-/]", "_", name)
    return key if _VALID_KEY.match(key) else "x" + key


def _keys_are_names(model) -> bool:
    names = list(model.keras_model.input_names) + list(model.keras_model.output_names)
    return all(signature_key(n) == n for n in names)


def representative_dataset(model, calibration):
    """The calibration samples as the converter wants them: lists for a Keras model converted
    directly, dicts keyed by signature input names otherwise."""
    names = [t.name for t in model.inputs]

    def dataset():
        for sample in calibration.samples():
            if model.keras_model is not None and _keys_are_names(model):
                yield [sample[n] for n in names]
            else:
                yield {signature_key(n): sample[n] for n in names}

    return dataset


def error_summary(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if "error:" in ln.lower()]
    text = lines[0] if lines else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:400]
