"""Building the QAT model of a float model and setting its ranges from calibration data."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gencompress.compat.tfmot import ranges_follow_each_batch
from gencompress.compress.batchnorm import FOLD_TOLERANCE, fold_batchnorm
from gencompress.compress.qat.schemes import _quantize_configs, _scheme, annotate
from gencompress.errors import ConversionError, UnsupportedModelError
from gencompress.model import flat_copy, iter_layers
from gencompress.tfenv import import_keras, native_output_captured


@dataclass
class QatModel:
    """A QAT tf-keras model and how it was built (the rows go into the report)."""

    model: object
    scheme: str
    batchnorm: list[dict] = field(default_factory=list)
    quantized: list[str] = field(default_factory=list)
    left_float: list[dict] = field(default_factory=list)
    fold_max_abs_error: float | None = None
    calibration_samples: int = 0


def build_qat_model(keras_model, calibration=None, prune_preserving: bool = False) -> QatModel:
    """Fold BatchNorm, annotate, apply tfmot (default or pruning-preserving 8-bit scheme) and,
    given a ``CalibrationSet``, set the activation ranges from it. ``keras_model`` is untouched.

    The QAT model's outputs are renamed back to the original output names, so its exports have
    the same input and output names as the float model's.
    """
    import tensorflow_model_optimization as tfmot

    keras = import_keras()
    keras_model = flat_copy(keras_model)  # nested Sequentials inlined: same outputs, same names
    if not isinstance(keras_model, keras.Sequential) and not getattr(keras_model, "_is_graph_network", False):
        raise UnsupportedModelError("quantization-aware training needs a Sequential or functional Keras model")
    folded, bn_rows = fold_batchnorm(keras_model)
    fold_error = None
    if calibration is not None:
        fold_error = _max_abs_error(keras_model, folded, calibration)
        scale = max(1.0, _output_scale(keras_model, calibration))
        if not fold_error <= FOLD_TOLERANCE * scale:
            raise ConversionError(f"folding BatchNorm changed the float outputs by {fold_error:.3g}: not folding-equivalent")
    annotated, quantized, left = annotate(folded, prune_preserving)
    if not quantized:
        raise UnsupportedModelError(
            "no layer of this model can be quantized by tfmot: " + "; ".join(f"{d['name']}: {d['reason']}" for d in left)
        )
    qk = tfmot.quantization.keras
    scheme = _scheme(prune_preserving)
    try:
        # tfmot rebuilds the model from its config: the model's own layer classes must resolve.
        custom = {type(layer).__name__: type(layer) for layer in iter_layers(keras_model)}
        with qk.quantize_scope({**custom, **_quantize_configs()}), native_output_captured():
            qat = qk.quantize_apply(annotated, scheme)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConversionError(f"tfmot could not build the QAT model: {str(exc).strip().splitlines()[0][:300]}") from exc
    qat = _with_output_names(qat, list(keras_model.output_names), keras)
    info = QatModel(
        qat,
        "tfmot 8-bit, pruning-preserving" if prune_preserving else "tfmot default 8-bit",
        bn_rows,
        quantized,
        left,
        fold_error,
    )
    if calibration is not None:
        calibrate_ranges(qat, calibration)
        info.calibration_samples = len(calibration)
    return info


def _with_output_names(qat, names: list[str], keras):
    """tfmot renames each wrapped layer ``quant_<name>``; give the outputs their names back."""
    if list(qat.output_names) == names:
        return qat
    outputs = [
        t if current == n else keras.layers.Activation("linear", name=n)(t)
        for n, current, t in zip(names, qat.output_names, qat.outputs)
    ]
    return keras.Model(qat.inputs, outputs if len(outputs) > 1 else outputs[0], name=qat.name)


def _max_abs_error(a, b, data, n: int = 32) -> float:
    x = _ordered(data.take(n).arrays, list(a.input_names))
    ya, yb = _as_list(a(x, training=False)), _as_list(b(x, training=False))
    return float(max(np.max(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64))) for p, q in zip(ya, yb)))


def _output_scale(model, data, n: int = 32) -> float:
    x = _ordered(data.take(n).arrays, list(model.input_names))
    return float(max(np.max(np.abs(np.asarray(y))) for y in _as_list(model(x, training=False))))


def calibrate_ranges(qat_model, calibration, batch_size: int = 64, passes: int = 2) -> None:
    """Set every activation range of a tfmot QAT model to the min/max over ``calibration``.

    Forward passes in training mode (BatchNorm layers frozen, nothing else trains) with the
    EMA switched off; the range variables end at the min / max over all batches. Two passes: in
    the second, each range sees its inputs quantized with the calibrated upstream ranges.
    Input quantizers (tfmot's ``AllValuesQuantizer``) keep the min/max of all they see anyway.
    """
    keras = import_keras()
    names = list(qat_model.input_names)
    frozen = [layer for layer in all_layers(qat_model) if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    for layer in frozen:
        layer.trainable = False
    try:
        for _ in range(passes):
            lows: dict = {}
            highs: dict = {}
            with ranges_follow_each_batch() as seen:
                for start in range(0, len(calibration), batch_size):
                    batch = {k: v[start : start + batch_size] for k, v in calibration.arrays.items()}
                    qat_model(_ordered(batch, names), training=True)
                    for key, (lo, hi) in seen.items():
                        lows[key] = np.minimum(lows.get(key, np.inf), lo.numpy())
                        highs[key] = np.maximum(highs.get(key, -np.inf), hi.numpy())
            for key, (lo, hi) in seen.items():
                lo.assign(lows[key])
                hi.assign(highs[key])
    finally:
        for layer in frozen:
            layer.trainable = True
    settle_weight_ranges(qat_model)


def settle_weight_ranges(qat_model) -> None:
    """Set each weight quantizer's range from the weights as they are now.

    tfmot sets a weight range in the training step's forward pass, before the optimizer moves
    the weights: after training the stored range is one step stale. This is what the next
    forward pass would set; with it the largest weight sits exactly on the int8 grid's end.
    """
    for layer in qat_model.layers:
        for weight, quantizer, quantizer_vars in getattr(layer, "_weight_vars", []):
            quantizer(weight, True, quantizer_vars)


def check_flat(keras_model) -> None:
    """tfmot needs every layer at the top level: nested Sequentials are inlined (``flat_copy``),
    anything else nested is refused here, before any work."""
    try:
        flat_copy(keras_model)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{exc} (quantization-aware training (tfmot) needs a flat model)") from None


def all_layers(model):
    for layer in model.layers:
        yield layer
        inner = getattr(layer, "layer", None)
        if inner is not None:
            yield inner


def _ordered(arrays: dict, names: list[str]):
    values = [arrays[n] for n in names]
    return values[0] if len(values) == 1 else values


def _as_list(y) -> list:
    return list(y) if isinstance(y, (list, tuple)) else [y]
