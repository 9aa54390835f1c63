"""Quantization-aware training (tfmot) for generators, exported to int8 TFLite and QDQ ONNX.

The QAT model is built from a *copy* of the float model; each step fixes something tfmot 0.8.1
(with TF 2.21's converter) gets wrong or leaves out for generators:

1. **BatchNorm folding** (``fold_batchnorm``). tfmot folds BatchNorm only after Conv2D and
   DepthwiseConv2D. After Dense it fake-quantizes the Dense kernel *before* the BatchNorm scale,
   so the converter, which folds the BatchNorm into the kernel, finds weights off the int8 grid
   and leaves the whole FULLY_CONNECTED in float; after Conv2DTranspose it refuses the model
   (BatchNormalization is not in its registry). We fold BN into the preceding
   Dense/Conv/ConvTranspose kernel and bias first, output-equal in float.
2. **Annotation** (``annotate``): layers tfmot's 8-bit registry supports get its config; PReLU
   gets ours (int8 alpha and output); a layer ending in tanh/sigmoid also gets its output
   fake-quantized at LiteRT's fixed int8 output scale and its logit range bounded where the
   output saturates (``SaturatingOutputConfig``); layers tfmot cannot quantize (custom layers,
   TFOpLambda, Embedding, a BatchNorm that could not be folded, activations it has no rule for)
   stay float and are listed.
3. **Layout** (``_scheme``): tfmot's Concatenate transform reorders the inputs of a
   Concatenate fed by a model input, and its ReLU transform drops the kernel quantization of
   the Dense/Conv2D before a ReLU layer; both are replaced.
4. **Range calibration** (``calibrate_ranges``): tfmot starts every activation range at ±6 and
   moves it by an EMA with decay 0.999 (after 1,000 steps a range is still 37 % its initial
   value). We set the ranges to the min/max seen on the calibration set first, as post-training
   calibration does. Model-input ranges then stay fixed while fine-tuning.
5. **Fine-tuning** against the original float model (``finetune.train_to_match``): the teacher's
   outputs are the targets, held-out PSNR drives early stopping.

Exports (``convert_qat_tflite``, ``export_qat_onnx``) keep the learnt ranges: the TFLite
converter reads them from the fake-quant ops; tf2onnx turns each activation fake-quant into a
QuantizeLinear/DequantizeLinear pair with the same scale and zero point, and the weights (TF has
folded their fake-quants into constants on the int8 grid) are stored as int8 behind a
DequantizeLinear. Both are measured against the QAT Keras model (``agreement``).

``qat_after_pruning`` is the ``prune … --then qat`` path: the same steps with tfmot's
pruning-preserving scheme, so that zero weights stay zero through fine-tuning and in the int8
files.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gencompress.model import MODEL_CLASSES, iter_layers
from gencompress.errors import ConversionError, OptionError, UnsupportedModelError
from gencompress.tfenv import import_keras, import_tf, native_output_captured

# Output-channel axis of the kernel of each layer a BatchNorm can be folded into.
# Conv*Transpose kernels are (..., out, in); DepthwiseConv2D's (h, w, in, multiplier) is handled
# apart (its output channel c is input channel c // multiplier).
_FOLD_AXIS = {
    "Dense": -1,
    "Conv1D": -1,
    "Conv2D": -1,
    "Conv3D": -1,
    "Conv1DTranspose": -2,
    "Conv2DTranspose": -2,
    "Conv3DTranspose": -2,
    "DepthwiseConv2D": "depthwise",
}
_CODE_LAYERS = ("TFOpLambda", "SlicingOpLambda", "Lambda", "TensorFlowOpLayer")
# Activations tfmot's QuantizeAwareActivation knows (others raise at quantize_apply time).
_TFMOT_ACTIVATIONS = {"linear", "relu", "swish", "gelu", "softmax", "sigmoid", "tanh", "relu6"}
# Largest float difference accepted between a model and its BatchNorm-folded copy, relative to
# the output range: folding reorders a multiply-add, nothing more.
FOLD_TOLERANCE = 1e-5
# A QAT export agrees with the QAT Keras model when its PSNR against it reaches this.
AGREEMENT_DB = 40.0


# --------------------------------------------------------------------------- BatchNorm folding


def fold_batchnorm(keras_model):
    """Fold each BatchNormalization into the Dense/Conv/ConvTranspose layer feeding it.

    Returns ``(new_model, rows)``: a new tf-keras model (the input is not modified) without the
    folded BatchNorm layers, and one row per BatchNorm: ``{"batchnorm", "into", "folded",
    "reason"}``. A BatchNorm is folded when its input comes straight from one of those layers,
    with a linear activation, used once and read by nothing else, and it normalizes that layer's
    channel axis; the layer's kernel is scaled by ``gamma / sqrt(var + eps)`` per output channel
    and its bias becomes ``(bias - mean) * scale + beta`` (a bias is added if it had none).
    """
    keras = import_keras()
    config = keras_model.get_config()
    is_sequential = isinstance(keras_model, keras.Sequential)
    layers = {layer.name: layer for layer in keras_model.layers}
    entries = config["layers"]
    plan, rows = [], []
    for i, entry in enumerate(entries):
        if entry["class_name"] not in ("BatchNormalization", "SyncBatchNormalization"):
            continue
        name = entry["config"]["name"]
        if is_sequential:
            prev = entries[i - 1]["config"]["name"] if i > 0 and entries[i - 1]["class_name"] != "InputLayer" else None
            reason = _fold_refusal(layers.get(prev), layers[name], consumers=1, uses=1) if prev else "no layer before it"
        else:
            prev, reason = _functional_predecessor(config, entry)
            if reason is None:
                reason = _fold_refusal(
                    layers[prev], layers[name], consumers=_count_refs(config, prev), uses=len(_by_name(config, prev)["inbound_nodes"])
                )
        if reason is None:
            plan.append((name, prev))
        rows.append({"batchnorm": name, "into": prev if reason is None else None, "folded": reason is None, "reason": reason})
    # Nested models keep their BatchNorm layers (tfmot refuses nested models anyway).
    for layer in keras_model.layers:
        if type(layer).__name__ in MODEL_CLASSES:
            for inner in iter_layers(layer):
                if type(inner).__name__ in ("BatchNormalization", "SyncBatchNormalization"):
                    rows.append({"batchnorm": inner.name, "into": None, "folded": False, "reason": f"inside nested model '{layer.name}'"})
    if not plan:
        clone = keras.models.clone_model(keras_model)
        clone.set_weights(keras_model.get_weights())
        return clone, rows

    removed = {bn for bn, _ in plan}
    into = {prev: bn for bn, prev in plan}
    if is_sequential:
        config["layers"] = [e for e in entries if e["config"]["name"] not in removed]
    else:
        redirect = {bn: _by_name(config, bn)["inbound_nodes"][0][0][:3] for bn in removed}
        config["layers"] = [e for e in entries if e["config"]["name"] not in removed]
        for e in config["layers"]:
            e["inbound_nodes"] = _redirect(e["inbound_nodes"], redirect)
        config["output_layers"] = _redirect(config["output_layers"], redirect)
    for e in config["layers"]:
        if e["config"]["name"] in into:
            e["config"]["use_bias"] = True
    custom = {type(layer).__name__: type(layer) for layer in iter_layers(keras_model)}
    with keras.utils.custom_object_scope(custom):
        folded = (keras.Sequential if is_sequential else keras.Model).from_config(config)
    for layer in folded.layers:
        if layer.name in into:
            layer.set_weights(_folded_weights(layers[layer.name], layers[into[layer.name]]))
        else:
            layer.set_weights(layers[layer.name].get_weights())
    return folded, rows


def _fold_refusal(prev, bn, consumers: int, uses: int) -> str | None:
    """Why BatchNorm ``bn`` cannot be folded into layer ``prev`` (``None``: it can)."""
    cls = type(prev).__name__
    if cls not in _FOLD_AXIS:
        return f"follows a {cls} layer (folding needs Dense, Conv or ConvTranspose before it)"
    activation = getattr(getattr(prev, "activation", None), "__name__", "linear")
    if activation != "linear":
        return f"'{prev.name}' applies {activation} before the BatchNorm"
    if uses != 1:
        return f"'{prev.name}' is called more than once (shared weights)"
    if consumers != 1:
        return f"the output of '{prev.name}' is also read by other layers"
    if getattr(bn, "renorm", False) or getattr(bn, "virtual_batch_size", None):
        return "batch renormalization / virtual batches cannot be folded"
    rank = len(prev.output_shape)
    axes = [a % rank for a in (bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis])]
    channels_first = getattr(prev, "data_format", "channels_last") == "channels_first"
    channel_axis = 1 if channels_first else rank - 1
    if axes != [channel_axis]:
        return f"normalizes axis {axes}, not the channel axis ({channel_axis}) of '{prev.name}'"
    return None


def _folded_weights(prev, bn) -> list[np.ndarray]:
    weights = prev.get_weights()
    kernel = weights[0].astype(np.float64)
    bias = weights[1].astype(np.float64) if prev.use_bias else 0.0
    mean = bn.moving_mean.numpy().astype(np.float64)
    var = bn.moving_variance.numpy().astype(np.float64)
    gamma = bn.gamma.numpy().astype(np.float64) if bn.gamma is not None else np.ones_like(mean)
    beta = bn.beta.numpy().astype(np.float64) if bn.beta is not None else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.epsilon)
    axis = _FOLD_AXIS[type(prev).__name__]
    if axis == "depthwise":
        kernel = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        shape = [1] * kernel.ndim
        shape[axis] = -1
        kernel = kernel * scale.reshape(shape)
    new_bias = (bias - mean) * scale + beta
    return [kernel.astype(np.float32), new_bias.astype(np.float32)] + [w for w in weights[2 if prev.use_bias else 1 :]]


def _by_name(config, name):
    return next(e for e in config["layers"] if e["config"]["name"] == name)


def _functional_predecessor(config, entry) -> tuple[str | None, str | None]:
    nodes = entry["inbound_nodes"]
    if len(nodes) != 1:
        return None, "the BatchNorm layer is called more than once"
    refs = nodes[0]
    if len(refs) != 1 or not isinstance(refs[0], list) or len(refs[0]) < 3 or refs[0][1] != 0 or refs[0][2] != 0:
        return None, "its input is not the single output of one layer"
    return refs[0][0], None


def _count_refs(config, name) -> int:
    count = 0

    def walk(x):
        nonlocal count
        if isinstance(x, list):
            if len(x) >= 3 and x[0] == name and isinstance(x[1], int) and isinstance(x[2], int):
                count += 1
                return
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    for e in config["layers"]:
        walk(e["inbound_nodes"])
    walk(config["output_layers"])
    return count


def _redirect(x, redirect: dict):
    """Replace every ``[layer, node, tensor, ...]`` reference to a removed layer by its input's."""
    if isinstance(x, list):
        if len(x) >= 3 and isinstance(x[0], str) and x[0] in redirect and isinstance(x[1], int) and isinstance(x[2], int):
            return list(redirect[x[0]]) + x[3:]
        return [_redirect(v, redirect) for v in x]
    if isinstance(x, dict):
        return {k: _redirect(v, redirect) for k, v in x.items()}
    return x


# --------------------------------------------------------------------------- tfmot configs


_CONFIGS: dict = {}


def _quantize_configs() -> dict:
    """Our QuantizeConfig classes, defined on first use (tfmot imports TensorFlow)."""
    if _CONFIGS:
        return _CONFIGS
    import tensorflow_model_optimization as tfmot

    qk = tfmot.quantization.keras
    Last = qk.quantizers.LastValueQuantizer
    MovingAverage = qk.quantizers.MovingAverageQuantizer

    class PReLUQuantizeConfig(qk.QuantizeConfig):
        """int8 alpha (per tensor, asymmetric) and int8 output, as LiteRT's int8 PRELU kernel."""

        def get_weights_and_quantizers(self, layer):
            return [(layer.alpha, Last(num_bits=8, per_axis=False, symmetric=False, narrow_range=False))]

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            layer.alpha = quantize_weights[0]

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [MovingAverage(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    class SaturationAwareQuantizer(MovingAverage):
        """tfmot's activation quantizer, its range limited to [-bound, bound].

        A saturated generator's logits span hundreds (dcgan_saturated: [-496, 149]): an int8
        range over all of it leaves a step of 2.5 where the sigmoid still moves. Beyond the
        bound the int8 output no longer changes, so clipping the range there loses nothing. The
        fake-quant clamps to its range anyway: clipping its input only stops the range from
        growing past the bound (same outputs, same straight-through gradients).
        """

        def __init__(self, bound: float, num_bits=8, per_axis=False, symmetric=False, narrow_range=False):
            super().__init__(num_bits=num_bits, per_axis=per_axis, symmetric=symmetric, narrow_range=narrow_range)
            self.bound = float(bound)

        def __call__(self, inputs, training, weights, **kwargs):
            from tensorflow_model_optimization.python.core.keras import utils

            tf = import_tf()
            # Clip only while training (where the range is measured): exported graphs get no clip.
            return utils.smart_cond(
                training,
                lambda: super(SaturationAwareQuantizer, self).__call__(
                    tf.clip_by_value(inputs, -self.bound, self.bound), True, weights, **kwargs
                ),
                lambda: super(SaturationAwareQuantizer, self).__call__(inputs, False, weights, **kwargs),
            )

        def get_config(self):
            return {**super().get_config(), "bound": self.bound}

    class SaturatingOutputConfig(qk.QuantizeConfig):
        """The layer's usual config for a layer ending in tanh or sigmoid, with two changes.

        - Its output is fake-quantized at LiteRT's fixed int8 scale: tfmot quantizes the *input*
          of tanh and sigmoid but not their output, which LiteRT's int8 TANH / LOGISTIC kernels
          write with scale 1/128, zero point 0 (tanh) and 1/256, zero point -128 (sigmoid).
          Without this the QAT model never sees that rounding; with it the exports compute what
          was trained.
        - The range of its input (the logits) stops where the output saturates
          (``SaturationAwareQuantizer``), as the post-training saturation-aware ranges do.
        """

        def __init__(self, activation: str, prune_preserving: bool = False):
            self.activation, self.prune_preserving = activation, prune_preserving
            self._base = None

        def base(self, layer):
            if self._base is None:
                self._base = _base_config(layer, self.prune_preserving)
            return self._base

        def get_weights_and_quantizers(self, layer):
            return self.base(layer).get_weights_and_quantizers(layer)

        def get_activations_and_quantizers(self, layer):
            bound = SATURATION_BOUNDS[self.activation]
            return [(a, SaturationAwareQuantizer(bound)) for a, _ in self.base(layer).get_activations_and_quantizers(layer)]

        def set_quantize_weights(self, layer, quantize_weights):
            self.base(layer).set_quantize_weights(layer, quantize_weights)

        def set_quantize_activations(self, layer, quantize_activations):
            self.base(layer).set_quantize_activations(layer, quantize_activations)

        def get_output_quantizers(self, layer):
            lo, hi = SATURATING_OUTPUT_RANGES[self.activation]
            return [qk.quantizers.FixedQuantizer(num_bits=8, init_min=lo, init_max=hi, narrow_range=False)]

        def get_config(self):
            return {"activation": self.activation, "prune_preserving": self.prune_preserving}

    _CONFIGS.update(
        {
            "PReLUQuantizeConfig": PReLUQuantizeConfig,
            "SaturatingOutputConfig": SaturatingOutputConfig,
            "SaturationAwareQuantizer": SaturationAwareQuantizer,
        }
    )
    _CONFIGS.update(_prune_preserving_configs(tfmot))
    return _CONFIGS


# The int8 range LiteRT's TANH and LOGISTIC kernels write (scale 1/128 and 1/256, 256 steps).
SATURATING_OUTPUT_RANGES = {"tanh": (-1.0, 127.0 / 128.0), "sigmoid": (0.0, 255.0 / 256.0)}
# Logits beyond which those int8 outputs stop changing: tanh(3.5) and sigmoid(7) are within
# a quarter step (1/512, 1/1024) of their rails.
SATURATION_BOUNDS = {"tanh": 3.5, "sigmoid": 7.0}


def _base_config(layer, prune_preserving: bool):
    """The config a layer gets without our output handling: ours for PReLU and (pruning-preserving)
    Conv2DTranspose, else the scheme registry's."""
    cls = type(layer).__name__
    configs = _quantize_configs()
    if cls == "PReLU":
        return configs["PReLUQuantizeConfig"]()
    if prune_preserving and cls == "Conv2DTranspose":
        return configs["PrunePreserveConvTransposeQuantizeConfig"]()
    return _registry(prune_preserving).get_quantize_config(layer)


_SCHEMES: dict = {}


def _scheme(prune_preserving: bool):
    """tfmot's 8-bit scheme (or its pruning-preserving variant) with two layout transforms fixed.

    1. Concatenate: tfmot's ``ConcatTransform`` (quantize only after a Concatenate) rebuilds
       the concatenation with its inputs in the wrong order when the first one is a model input:
       a conditional generator's ``Concatenate([z, label_embedding])`` silently became
       ``[label_embedding, z]`` (tfmot 0.8.1; the tiny conditional test model: 30 dB instead of
       57 dB). Without it, each input of a Concatenate keeps its own output range and the
       concatenation gets one more: the TFLite converter does the same (CONCATENATION
       requantizes its inputs to its output's scale).
    2. Dense/Conv2D followed by a ReLU layer: ``LayerReLUQuantize`` gives the Dense/Conv2D
       ``NoOpQuantizeConfig``, dropping its kernel quantization with the output fake-quant it
       means to drop (cvae_decoder: float Dense kernel in the QAT model and the ONNX file). We
       drop only the output fake-quant.
    """
    if _SCHEMES:
        return _SCHEMES[prune_preserving]
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_layout_transform as layout,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_transforms as transforms,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import model_transformer

    LayerPattern = transforms.transforms.LayerPattern

    class ReLUAfterAddQuantize(transforms.LayerReLUQuantize):
        def pattern(self):
            return LayerPattern("ReLU", inputs=[LayerPattern("Add")])

    class ReLUActivationAfterAddQuantize(transforms.LayerReluActivationQuantize):
        def pattern(self):
            return LayerPattern("Activation", config={"activation": "relu"}, inputs=[LayerPattern("Add")])

    class ReLUAfterWeightsQuantize(transforms.transforms.Transform):
        """Dense/Conv → ReLU: no fake-quant between them (the converter fuses the ReLU), kernel
        still quantized: the Conv2D+BatchNorm+ReLU transforms' way (a NoOp activation)."""

        def pattern(self):
            return LayerPattern("ReLU", inputs=[LayerPattern("Conv2D|DepthwiseConv2D|Dense", config={"activation": "linear"})])

        def replacement(self, match_layer):
            node = match_layer.input_layers[0]
            if node.metadata.get("quantize_config") is None:
                node.layer["config"]["activation"] = transforms.quantize_utils.serialize_activation(
                    transforms.quantize_aware_activation.NoOpActivation(), use_legacy_format=True
                )
            return match_layer

        def custom_objects(self):
            return {"NoOpActivation": transforms.quantize_aware_activation.NoOpActivation}

    class ReLUActivationAfterWeightsQuantize(ReLUAfterWeightsQuantize):
        def pattern(self):
            return LayerPattern(
                "Activation", config={"activation": "relu"},
                inputs=[LayerPattern("Conv2D|DepthwiseConv2D|Dense", config={"activation": "linear"})],
            )

    class GeneratorLayout(layout.Default8BitQuantizeLayoutTransform):
        def apply(self, model, layer_quantize_map):
            # Default8BitQuantizeLayoutTransform.apply's list (tfmot 0.8.1) minus ConcatTransform*,
            # with LayerReLUQuantize split: for Dense/Conv it sets NoOpQuantizeConfig, which drops
            # the *kernel* quantization too (the QAT model then trains float weights that the
            # converter quantizes afterwards, and tf2onnx exports them float).
            steps = [
                transforms.InputLayerQuantize(),
                transforms.SeparableConv1DQuantize(),
                transforms.SeparableConvQuantize(),
                transforms.Conv2DReshapeBatchNormReLUQuantize(),
                transforms.Conv2DReshapeBatchNormActivationQuantize(),
                transforms.Conv2DBatchNormReLUQuantize(),
                transforms.Conv2DBatchNormActivationQuantize(),
                transforms.Conv2DReshapeBatchNormQuantize(),
                transforms.Conv2DBatchNormQuantize(),
                transforms.DenseBatchNormQuantize(),
                transforms.DenseBatchNormReLUQuantize(),
                transforms.DenseBatchNormActivationQuantize(),
                ReLUAfterAddQuantize(),
                ReLUActivationAfterAddQuantize(),
                ReLUAfterWeightsQuantize(),
                ReLUActivationAfterWeightsQuantize(),
            ]
            return model_transformer.ModelTransformer(model, steps, set(layer_quantize_map.keys()), layer_quantize_map).transform()

    class Default(tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme):
        def get_layout_transformer(self):
            return GeneratorLayout()

    class PrunePreserving(tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme):
        def get_layout_transformer(self):
            return GeneratorLayout()

    _SCHEMES.update({False: Default(), True: PrunePreserving()})
    return _SCHEMES[prune_preserving]


def _prune_preserving_configs(tfmot) -> dict:
    """A Conv2DTranspose config for tfmot's pruning-preserving scheme, which has none.

    Same per-tensor symmetric int8 weights as tfmot's default for Conv2DTranspose, with the
    kernel multiplied by its sparsity mask (fixed when the layer is built) before quantizing.
    """
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        prune_preserve_quantize_registry as ppr,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as d8,
    )

    class SparseConvTransposeWeightsQuantizer(ppr.PrunePreserveDefaultWeightsQuantizer):
        def __init__(self):
            super().__init__(num_bits=8, per_axis=False, symmetric=True, narrow_range=True)

        def get_config(self):
            return {}

        @classmethod
        def from_config(cls, config):
            return cls()

    class PrunePreserveConvTransposeQuantizeConfig(d8.Default8BitConvTransposeQuantizeConfig):
        def __init__(self, weight_attrs=("kernel",), activation_attrs=("activation",), quantize_output=False):
            super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
            self.weight_quantizer = SparseConvTransposeWeightsQuantizer()

        def get_config(self):
            return {"weight_attrs": self.weight_attrs, "activation_attrs": self.activation_attrs, "quantize_output": self.quantize_output}

    return {
        "SparseConvTransposeWeightsQuantizer": SparseConvTransposeWeightsQuantizer,
        "PrunePreserveConvTransposeQuantizeConfig": PrunePreserveConvTransposeQuantizeConfig,
    }


def annotate(keras_model, prune_preserving: bool = False):
    """Annotate the layers tfmot can quantize; returns ``(annotated model, quantized, left_float)``.

    ``left_float`` rows: ``{"name", "class", "params", "reason"}``. Those layers compute in float
    in the QAT model and in its exports.
    """
    import tensorflow_model_optimization as tfmot

    keras = import_keras()
    qk = tfmot.quantization.keras
    configs = _quantize_configs()
    registry = _registry(prune_preserving)
    quantized, left = [], []
    for layer in keras_model.layers:
        if type(layer).__name__ in MODEL_CLASSES:
            raise UnsupportedModelError(
                f"layer '{layer.name}' is a nested model: quantization-aware training (tfmot) needs a flat model"
            )

    def choose(layer):
        cls = type(layer).__name__
        if isinstance(layer, keras.layers.InputLayer):
            return None, None
        activation = getattr(getattr(layer, "activation", None), "__name__", None)
        if cls != "PReLU" and not (prune_preserving and cls == "Conv2DTranspose"):
            reason = _unsupported_reason(layer, registry, keras)
            if reason is not None:
                return None, reason
        if activation in SATURATING_OUTPUT_RANGES:
            return configs["SaturatingOutputConfig"](activation, prune_preserving), None
        if cls == "PReLU" or (prune_preserving and cls == "Conv2DTranspose"):
            return _base_config(layer, prune_preserving), None
        return "default", None

    def clone(layer):
        config, reason = choose(layer)
        if reason is not None:
            left.append({"name": layer.name, "class": type(layer).__name__, "params": int(layer.count_params()), "reason": reason})
            return layer.__class__.from_config(layer.get_config())
        fresh = layer.__class__.from_config(layer.get_config())
        if config is None:
            return fresh
        quantized.append(layer.name)
        return qk.quantize_annotate_layer(fresh, quantize_config=None if config == "default" else config)

    with qk.quantize_scope(configs):
        annotated = keras.models.clone_model(keras_model, clone_function=clone)
    # clone_model builds fresh layers: copy the weights layer by layer (wrappers hold the originals).
    by_name = {layer.name: layer for layer in keras_model.layers}
    for layer in annotated.layers:
        inner = getattr(layer, "layer", layer)
        source = by_name.get(inner.name)
        if source is not None and source.weights:
            inner.set_weights(source.get_weights())
    return annotated, quantized, left


def _registry(prune_preserving: bool):
    if prune_preserving:
        from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
            prune_preserve_quantize_registry as ppr,
        )

        return ppr.Default8bitPrunePreserveQuantizeRegistry()
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as d8,
    )

    return d8.Default8BitQuantizeRegistry()


def _unsupported_reason(layer, registry, keras) -> str | None:
    cls = type(layer).__name__
    default = _registry(False)
    if cls in _CODE_LAYERS:
        return f"{cls} (a TensorFlow op or Python code): tfmot has no quantize rule for it"
    if isinstance(layer, keras.layers.BatchNormalization):
        return "a BatchNormalization that could not be folded: tfmot does not quantize one on its own"
    if isinstance(layer, keras.layers.Embedding):
        return "Embedding: tfmot's 8-bit scheme does not quantize lookup tables"
    if not (registry.supports(layer) and default.supports(layer)):
        where = "" if type(layer).__module__.startswith(("tf_keras", "keras")) else " (custom layer)"
        return f"tfmot has no 8-bit quantize rule for {cls}{where}"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    if activation is not None and name not in _TFMOT_ACTIVATIONS:
        return f"activation '{name}' is not one tfmot can quantize"
    return None


# --------------------------------------------------------------------------- building the QAT model


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


@contextlib.contextmanager
def _ranges_follow_each_batch():
    """Make tfmot's moving-average range quantizers adopt each batch's range outright.

    ``MovingAverageQuantizer`` passes a fixed ``ema_decay=0.999`` to ``quant_ops.MovingAvgQuantize``
    (tfmot 0.8); with decay 0 its update ``var -= (var - batch_range) * (1 - decay)`` sets the
    range. Yields a dict collecting the (min, max) variables the calls touched.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    original = quant_ops.MovingAvgQuantize
    seen: dict = {}

    def patched(inputs, min_var, max_var, **kwargs):
        if kwargs.get("is_training", True):
            kwargs["ema_decay"] = 0.0
            seen[id(min_var)] = (min_var, max_var)
        return original(inputs, min_var, max_var, **kwargs)

    quant_ops.MovingAvgQuantize = patched
    try:
        yield seen
    finally:
        quant_ops.MovingAvgQuantize = original


@contextlib.contextmanager
def _input_ranges_frozen():
    """Keep the model-input ranges (tfmot's ``AllValuesQuantizer``) as calibrated while training.

    That quantizer widens its range to every value it has ever seen: with fresh noise latents
    each batch, rare extreme values widen the input step for all (measured on dcgan_saturated:
    -0.5 dB held-out within 50 steps, whatever the learning rate). Activation ranges keep
    tfmot's moving averages.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    original = quant_ops.AllValuesQuantize

    def patched(inputs, min_var, max_var, **kwargs):
        kwargs["is_training"] = False
        return original(inputs, min_var, max_var, **kwargs)

    quant_ops.AllValuesQuantize = patched
    try:
        yield
    finally:
        quant_ops.AllValuesQuantize = original


def calibrate_ranges(qat_model, calibration, batch_size: int = 64, passes: int = 2) -> None:
    """Set every activation range of a tfmot QAT model to the min/max over ``calibration``.

    Forward passes in training mode (BatchNorm layers frozen, nothing else trains) with the
    EMA switched off; the range variables end at the min / max over all batches. Two passes: in
    the second, each range sees its inputs quantized with the calibrated upstream ranges.
    Input quantizers (tfmot's ``AllValuesQuantizer``) keep the min/max of all they see anyway.
    """
    keras = import_keras()
    names = list(qat_model.input_names)
    frozen = [layer for layer in _all_layers(qat_model) if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    for layer in frozen:
        layer.trainable = False
    try:
        for _ in range(passes):
            lows: dict = {}
            highs: dict = {}
            with _ranges_follow_each_batch() as seen:
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


def _all_layers(model):
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


# --------------------------------------------------------------------------- exports


PRELU_NOTE = (
    "PRELU computes in float between int8 neighbours: the converter drops alpha's fake-quant when it "
    "fuses Keras' relu(x) - alpha * relu(-x) into PRELU, and LiteRT's CPU delegate (XNNPACK) has no int8 "
    "PRELU kernel anyway (int8 PRELU runs the reference kernel: sr_photos 0.56 ms p50 against 0.15 ms)"
)


def convert_qat_tflite(qat_model, int8_io: bool = False, calibration=None) -> bytes:
    """The QAT model as a TFLite flatbuffer: int8 wherever the fake-quant ops give ranges.

    Float inputs and outputs (a QUANTIZE / DEQUANTIZE at the ends, like the post-training int8
    artifacts) unless ``int8_io``. Without ``calibration`` every range comes from the QAT model
    and ops it computes in float stay float, PRELU included: Keras computes PReLU as
    ``relu(x) - alpha * relu(-x)`` and the converter, fusing that into PRELU, folds the
    negations around alpha's fake-quant and is left with a float alpha (TF 2.21). Given a
    ``CalibrationSet`` as representative data, the converter quantizes such tensors itself
    (int8 PRELU) and keeps every range the fake-quant ops carry (checked: same scales with and
    without). Not the default: XNNPACK has no int8 PRELU kernel (see ``PRELU_NOTE``).
    """
    import tempfile

    tf = import_tf()
    # Not from_keras_model: it saves the Keras model, which fails for tfmot's Conv2DTranspose
    # wrapper (the inner layer's saved call captures the quantized kernel of another graph), and
    # its silent fallback writes a model without a signature. A module holding only the variables
    # and one serving function saves cleanly; the signature keeps the model's input/output names.
    from gencompress.converters.tflite import serving_function

    serve, module = serving_function(tf, qat_model)
    with tempfile.TemporaryDirectory(prefix="gencompress-qat-") as tmp:
        with native_output_captured():
            tf.saved_model.save(module, tmp, signatures={"serving_default": serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if calibration is not None:
            converter.representative_dataset = _representative(calibration, qat_model.input_names)
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        try:
            with native_output_captured():
                return _short_tensor_names(bytes(converter.convert()))
        except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
            from gencompress.converters.tflite import _summary

            raise ConversionError(f"TFLite conversion of the QAT model failed: {_summary(exc)}") from exc


def _short_tensor_names(data: bytes) -> bytes:
    """Keep the first of the ``;``-joined names the converter gives a fused tensor.

    A QAT tensor is named after every op fused into it, fake-quant ops included
    (``model/quant_conv2/Conv2D;model/quant_conv2/LastValueQuant/FakeQuantWithMinMaxVarsPerChannel;…``):
    on sr_photos that was 2.6 KiB, 10 % of the file. The first name still holds the layer's.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else (tensor.name or "")
            tensor.name = name.split(";")[0]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _representative(calibration, names):
    from gencompress.converters.tflite import signature_key

    def dataset():
        for sample in calibration.samples():
            yield {signature_key(n): sample[n] for n in names}

    return dataset


def export_qat_onnx(qat_model, inputs) -> bytes:
    """The QAT model as a QDQ ONNX graph (opset 17) with int8 weights.

    tf2onnx maps every activation ``FakeQuantWithMinMaxVars`` (tfmot's ranges, frozen to
    constants) to QuantizeLinear → DequantizeLinear with TensorFlow's nudged scale and zero
    point. TensorFlow folds the weight fake-quants into constants already on the int8 grid;
    ``store_qat_weights_int8`` then keeps each as int8 + scale behind a DequantizeLinear.
    """
    tf = import_tf()
    import tf2onnx

    from gencompress.converters.onnx import OPSET, canonical_names

    spec = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in inputs]
    try:
        with native_output_captured():
            proto, _ = tf2onnx.convert.from_keras(qat_model, input_signature=spec, opset=OPSET)
    except Exception as exc:  # tf2onnx raises plain Exceptions
        raise ConversionError(f"ONNX export of the QAT model (tf2onnx) failed: {str(exc).splitlines()[0][:400]}") from exc
    proto = canonical_names(proto)
    store_qat_weights_int8(proto)
    return proto.SerializeToString()


# Weight input and its output-channel axis, per ONNX op (MatMul: B is (in, out)).
_ONNX_WEIGHTS = {"Conv": (1, 0), "ConvTranspose": (1, 1), "MatMul": (1, 1), "Gemm": (1, None), "PRelu": (1, None)}


def store_qat_weights_int8(proto) -> dict:
    """Store float weight initializers that lie on a symmetric int8 grid as int8 + DequantizeLinear.

    The grid is found from the values: per tensor (scale = max|w| / 127) or, failing that, per
    output channel; a weight on neither grid (a layer left float) stays float. Modifies
    ``proto`` in place; returns counts ``{"int8": n, "float": m}``.
    """
    from gencompress.compress.quantization import store_weights_int8

    def on_grid(node, w):
        axis = _ONNX_WEIGHTS[node.op_type][1]
        if node.op_type == "Gemm":
            axis = 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
        return _int8_grid(w, axis)

    return store_weights_int8(proto, {op: spec[0] for op, spec in _ONNX_WEIGHTS.items()}, on_grid)


def _int8_grid(w: np.ndarray, axis):
    """``(int8 values, scale, axis)`` if ``w`` is symmetric int8 per tensor or along ``axis``."""
    w64 = w.astype(np.float64)
    absmax = float(np.max(np.abs(w64)))
    if absmax == 0.0:
        return None
    scale = absmax / 127.0
    q = w64 / scale
    if np.max(np.abs(q - np.round(q))) < 1e-3:
        return np.round(q).astype(np.int8), np.array(scale, np.float32), None
    if axis is None:
        return None
    reduce = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    absmax_c = np.max(np.abs(w64), axis=reduce)
    scale_c = np.where(absmax_c > 0, absmax_c / 127.0, 1.0)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = w64 / scale_c.reshape(shape)
    if np.max(np.abs(q - np.round(q))) < 1e-3:
        return np.round(q).astype(np.int8), scale_c.astype(np.float32), axis % w.ndim
    return None


# --------------------------------------------------------------------------- fine-tuning and artifacts


DEFAULT_STEPS = 1000
# Early stopping: QAT gains are slow and the held-out PSNR noisy (dcgan_saturated: +0.35 dB by
# step 350, where patience 4 stopped, +0.73 dB by step 1,700): wait 10 evaluations (500 steps).
DEFAULT_PATIENCE = 10
# Noise validation set for early stopping (finite data: a tenth of it). The gains QAT fine-tuning
# finds are tenths of a dB; on 64 samples the held-out PSNR moves as much between sets.
VALIDATION_SAMPLES = 256
# Measured on the samples (Adam, ranges calibrated first): 1e-4 and even 3e-5 lose held-out PSNR
# in the first hundred steps (each step moves every weight by about the learning rate, a sizeable
# fraction of an int8 weight step); 1e-5 gains steadily.
DEFAULT_LEARNING_RATE = 1e-5


def qat_finetune_config(steps=None, batch_size=None, learning_rate=None, seed: int = 0):
    """The ``FinetuneConfig`` for QAT: our defaults for what is not given."""
    from gencompress.compress.finetune import FinetuneConfig

    return FinetuneConfig(
        steps=DEFAULT_STEPS if steps is None else steps,
        batch_size=32 if batch_size is None else batch_size,
        learning_rate=DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate,
        patience=DEFAULT_PATIENCE,
        seed=seed,
    )


def add_qat_artifacts(
    session,
    keras_model=None,
    finetune=None,
    *,
    teacher=None,
    prune_preserving: bool = False,
    tag: str = "qat",
    progress: bool = True,
    log=lambda msg: None,
) -> dict:
    """Build the QAT model of ``keras_model``, fine-tune it, write and measure its int8 artifacts.

    ``session`` (``workflow.prepare``) gives the calibration set (activation ranges, and the
    fine-tuning source: fresh noise, or the training split of the user's data), the held-out
    evaluation set and the float reference of the *original* model, against which everything is
    measured. ``keras_model`` defaults to the session's model; ``teacher`` (the fine-tuning
    target) to the session's original float model. Artifacts are
    ``<stem>-<tag>.int8.tflite|.onnx`` (one per ``session.options.formats``); a format that fails
    to convert is recorded in ``session.failures``. Returns the report's QAT section.
    """
    from gencompress.compress.finetune import train_to_match, training_sources
    from gencompress.workflow import add_artifact

    keras_model = keras_model if keras_model is not None else session.model.keras_model
    teacher = teacher if teacher is not None else session.model.keras_model
    if keras_model is None or teacher is None:
        raise UnsupportedModelError(
            f"{session.model.path} is a plain SavedModel (no Keras layers): quantization-aware training needs a "
            "Keras model (.h5, .keras or a Keras SavedModel)"
        )
    opts = session.options
    finetune = dataclasses.replace(finetune or qat_finetune_config(), seed=opts.seed)
    built = build_qat_model(keras_model, session.calibration, prune_preserving=prune_preserving)
    qat = built.model
    log(
        f"QAT: {len(built.quantized)} layers quantized, {sum(r['folded'] for r in built.batchnorm)} BatchNorm folded, "
        f"{len(built.left_float)} left float; ranges calibrated on {built.calibration_samples} samples"
    )
    source, val = training_sources(session.model, session.calibration, finetune.batch_size, opts.seed, VALIDATION_SAMPLES)
    start_weights = qat.get_weights()
    with _input_ranges_frozen():
        result = train_to_match(qat, teacher, source, val, session.output_range, finetune, progress=progress)
    restored = False
    if finetune.steps > 0 and (
        result.best_psnr_db is None or (result.initial_psnr_db is not None and result.best_psnr_db < result.initial_psnr_db)
    ):
        # Fine-tuning never beat the calibrated start (early stopping keeps the best *trained*
        # weights): keep the start.
        qat.set_weights(start_weights)
        restored = True
    settle_weight_ranges(qat)

    held = _ordered(session.evaluation.arrays, list(qat.input_names))
    qat_outputs = [np.asarray(y) for y in _as_list(qat.predict(held, batch_size=64, verbose=0))]
    from gencompress.report.metrics import fidelity

    section = {
        "scheme": built.scheme,
        "variant": tag,
        "batchnorm": built.batchnorm,
        "fold_max_abs_error": built.fold_max_abs_error,
        "quantized_layers": built.quantized,
        "left_float": built.left_float,
        "range_calibration": {
            "samples": built.calibration_samples,
            "method": "min/max over the calibration set; while fine-tuning, activation ranges follow tfmot's moving "
            "averages and model-input ranges stay fixed",
        },
        "finetune": {
            **result.summary(),
            "kept_calibrated_start": restored,
            "final_psnr_db": _round(result.initial_psnr_db if restored or result.best_psnr_db is None else result.best_psnr_db),
            "config": dataclasses.asdict(finetune),
        },
        "qat_keras_psnr_db": fidelity(session.reference, qat_outputs, session.output_range)["psnr_db"],
        "agreement_target_db": AGREEMENT_DB,
        "exports": [],
    }
    for fmt in opts.formats:
        try:
            if fmt == "tflite":
                data = convert_qat_tflite(qat, int8_io=opts.int8_io)
            else:
                data = export_qat_onnx(qat, session.model.inputs)
        except ConversionError as exc:
            session.failures.append({"format": fmt, "precision": "int8", "variant": tag, "error": str(exc)})
            log(f"  {fmt} QAT int8: failed ({exc})")
            continue
        artifact = add_artifact(session, fmt, "int8", data, tag=tag)
        section["exports"].append(_agreement(session, artifact, data, fmt, qat, qat_outputs))
        for note in section["exports"][-1]["notes"]:
            artifact["notes"].append(note)
    return section


def _agreement(session, artifact: dict, data: bytes, fmt: str, qat, qat_outputs) -> dict:
    from gencompress.converters.onnx import OnnxRunner
    from gencompress.converters.tflite import TFLiteRunner
    from gencompress.report.metrics import fidelity

    model = session.model
    cls = TFLiteRunner if fmt == "tflite" else OnnxRunner
    outputs = cls(artifact["path"], model.input_names, [t.name for t in model.outputs]).run_all(session.evaluation)
    agreement = fidelity(qat_outputs, outputs, session.output_range)["psnr_db"]
    row = {
        "format": fmt,
        "artifact": Path(artifact["path"]).name,
        "psnr_db": artifact["fidelity"]["psnr_db"],
        "agreement_psnr_db": agreement,
        "agrees": agreement is not None and agreement >= AGREEMENT_DB,
        "notes": [],
    }
    if fmt == "tflite":
        from gencompress.compress.quantization import tflite_float_ops

        floats = tflite_float_ops(data, [layer.name for layer in _all_layers(qat)])
        row["float_ops"] = [u.label for u in floats]
        if any(u.op == "PRELU" for u in floats):
            row["notes"].append(PRELU_NOTE)
    else:
        import onnx

        graph = onnx.load_from_string(data).graph
        row["qdq_pairs"] = sum(n.op_type == "QuantizeLinear" for n in graph.node)
        row["int8_weights"] = sum(i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2 for i in graph.initializer)
    if not row["agrees"]:
        row["notes"].append(
            f"differs from the QAT Keras model: {agreement} dB between them (target {AGREEMENT_DB:g} dB)"
        )
    return row


# --------------------------------------------------------------------------- the quantize --method qat command


def quantize_qat(
    model,
    options,
    finetune=None,
    output_dir="gencompress-out",
    data: str | None = None,
    command: str = "quantize",
    progress: bool = True,
    log=lambda msg: None,
) -> dict:
    """``gencompress quantize --method qat`` as a library call.

    Writes the float32 references and the post-training artifacts exactly as ``quantize`` does
    (int8 through the fidelity guard when ``options.min_psnr`` > 0), then the QAT int8 artifacts
    (``<stem>-qat.int8.tflite|.onnx``), and the report with a ``qat`` section: fine-tuning,
    folded BatchNorm, layers left float, agreement of each export with the QAT Keras model and
    post-training beside QAT. ``data`` (a ``.npy``/``.npz`` file or image folder) calibrates
    and is fine-tuned on (its held-out split is the evaluation set, never trained on). The QAT
    artifacts are graded against ``options.min_psnr``; the post-training ones are the reference.
    """
    from gencompress.report.render import write_report
    from gencompress.workflow import build_artifacts, make_report, prepare

    if data is not None:
        if options.calibration not in ("noise", data):
            raise OptionError("--data and --calibration name different inputs: give one of them")
        options = dataclasses.replace(options, calibration=str(data))
    if model.keras_model is None:
        raise UnsupportedModelError(
            f"{model.path} is a plain SavedModel (no Keras layers): quantization-aware training needs a Keras model "
            "(.h5, .keras or a Keras SavedModel)"
        )
    import_tf()
    _check_flat(model.keras_model)  # before anything is written
    session = prepare(model, options, output_dir)
    build_artifacts(session, ["float32"] + [p for p in session.options.precisions if p != "float32"], log)
    section = add_qat_artifacts(session, finetune=finetune, progress=progress, log=log)
    section["comparison"] = compare_ptq_qat(session.artifacts, "qat")
    _grade_qat(session, "qat")
    report = make_report(session, command)
    report["qat"] = section
    write_report(report, output_dir)
    path = Path(output_dir) / "report.md"
    from gencompress.artifacts import write_bytes_atomic

    write_bytes_atomic(path, (path.read_text().rstrip("\n") + "\n" + qat_markdown(section) + "\n").encode())
    return report


def _check_flat(keras_model) -> None:
    for layer in keras_model.layers:
        if type(layer).__name__ in MODEL_CLASSES:
            raise UnsupportedModelError(
                f"layer '{layer.name}' is a nested model: quantization-aware training (tfmot) needs a flat model"
            )


def grade_qat(session, tag: str = "qat") -> None:
    """Grade the QAT artifacts (variant ``tag``) against ``--min-psnr``; others are left as they are."""
    target = session.options.min_psnr
    for a in session.artifacts:
        if a.get("variant") == tag:
            psnr = a["fidelity"]["psnr_db"]
            a["passed"] = None if target <= 0 else bool(psnr is not None and psnr >= target)


def _grade_qat(session, tag: str) -> None:
    """quantize --method qat: float32 and QAT artifacts graded; the post-training ones are the reference."""
    target = session.options.min_psnr
    for a in session.artifacts:
        psnr = a["fidelity"]["psnr_db"]
        if target > 0 and a["precision"] == "float32" and not a.get("variant"):
            a["passed"] = bool(psnr is not None and psnr >= target)
        elif not a.get("variant"):
            a["passed"] = None
    grade_qat(session, tag)


SAME_SIZE = 1.05  # "the same size": within 5 % of the QAT artifact's bytes (or smaller)


def compare_ptq_qat(artifacts: list[dict], tag: str = "qat") -> list[dict]:
    """Per format: the post-training int8 artifact beside the QAT int8 artifact, with the best
    post-training int8 variant at the same size or smaller (``ptq_int8_best``: the fidelity
    guard's int8 attempts when it ran, else the plain int8 artifact)."""
    rows = []
    for qat in (a for a in artifacts if a.get("variant") == tag):
        fmt = qat["format"]
        ptq = [a for a in artifacts if a["format"] == fmt and not a.get("variant") and a["precision"] != "float32"]
        guarded = next((a for a in ptq if "fallback" in a), None)
        plain = next((a for a in ptq if a["precision"] == "int8"), None)
        ptq_main = guarded or plain
        if guarded is not None:
            tries = [
                {"label": t["label"], "size_bytes": t["size_bytes"], "psnr_db": t["psnr_db"]}
                for t in guarded["fallback"]["attempts"]
                if t["precision"] == "int8" and t["psnr_db"] is not None
            ]
        elif plain is not None:
            tries = [{"label": "int8", "size_bytes": plain["size_bytes"], "psnr_db": plain["fidelity"]["psnr_db"]}]
        else:
            tries = []
        same_size = [t for t in tries if t["size_bytes"] <= SAME_SIZE * qat["size_bytes"]]
        # Nothing as small: compare with the smallest post-training int8 variants there are.
        smallest = min((t["size_bytes"] for t in tries), default=None)
        pool = same_size or [t for t in tries if t["size_bytes"] == smallest]
        best = max(pool, key=lambda t: t["psnr_db"], default=None)
        row = {
            "format": fmt,
            "ptq_artifact": None if ptq_main is None else Path(ptq_main["path"]).name,
            "ptq_precision": None if ptq_main is None else ptq_main["precision"],
            "ptq_chosen": None if guarded is None else guarded["fallback"]["chosen"],
            "ptq_size_bytes": None if ptq_main is None else ptq_main["size_bytes"],
            "ptq_psnr_db": None if ptq_main is None else ptq_main["fidelity"]["psnr_db"],
            "ptq_int8_best": best,
            "qat_artifact": Path(qat["path"]).name,
            "qat_size_bytes": qat["size_bytes"],
            "qat_psnr_db": qat["fidelity"]["psnr_db"],
        }
        q, p = row["qat_psnr_db"], (best or {}).get("psnr_db")
        row["qat_minus_ptq_int8_db"] = None if q is None or p is None else round(q - p, 3)
        rows.append(row)
    return rows


def qat_markdown(section: dict) -> str:
    ft = section["finetune"]
    folded = [r for r in section["batchnorm"] if r["folded"]]
    kept = [r for r in section["batchnorm"] if not r["folded"]]
    lines = [
        "",
        "## Quantization-aware training",
        "",
        f"- scheme: {section['scheme']}; {len(section['quantized_layers'])} layers quantized; activation ranges: "
        f"{section['range_calibration']['method']} ({section['range_calibration']['samples']} samples)",
        f"- fine-tuning against the float model: {ft['steps_run']} steps in {ft['seconds']} s, held-out PSNR "
        f"{_db(ft['initial_psnr_db'])} dB at the start, best {_db(ft['best_psnr_db'])} dB at step {ft['best_step']}"
        + (" (stopped early)" if ft["stopped_early"] else "")
        + (" - no step beat the calibrated start, which is kept" if ft.get("kept_calibrated_start") else ""),
        f"- QAT Keras model vs the float model: {_db(section['qat_keras_psnr_db'])} dB",
        "- BatchNorm folded: " + (", ".join(f"{r['batchnorm']} into {r['into']}" for r in folded) or "none")
        + (f" (float outputs changed by at most {section['fold_max_abs_error']:.2g})" if folded and section["fold_max_abs_error"] is not None else ""),
    ]
    lines += [f"- BatchNorm not folded: {r['batchnorm']} ({r['reason']})" for r in kept]
    if section["left_float"]:
        lines += ["- left float (tfmot cannot quantize them):"]
        lines += [f"  - {d['name']} ({d['class']}, {d['params']:,} parameters): {d['reason']}" for d in section["left_float"]]
    for e in section["exports"]:
        extra = f"; ops computing in float: {', '.join(e['float_ops'])}" if e.get("float_ops") else ""
        lines.append(
            f"- `{e['artifact']}` vs the QAT Keras model: {_db(e['agreement_psnr_db'])} dB "
            f"({'agrees' if e['agrees'] else 'DIFFERS'}, target {section['agreement_target_db']:g} dB){extra}"
        )
    if section.get("comparison"):
        lines += [
            "",
            "| format | post-training | size | PSNR dB | best PTQ int8 at QAT's size | QAT int8 | size | PSNR dB | QAT - PTQ int8 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in section["comparison"]:
            best = r["ptq_int8_best"] or {}
            lines.append(
                f"| {r['format']} | {r['ptq_chosen'] or r['ptq_precision'] or '-'} | {_size(r['ptq_size_bytes'])} | {_db(r['ptq_psnr_db'])} | "
                f"{best.get('label', '-')}: {_db(best.get('psnr_db'))} dB, {_size(best.get('size_bytes'))} | {r['qat_artifact']} | {_size(r['qat_size_bytes'])} | "
                f"{_db(r['qat_psnr_db'])} | {_signed(r['qat_minus_ptq_int8_db'])} |"
            )
    return "\n".join(lines) + "\n"


def qat_summary(report: dict) -> str:
    """The terminal lines after the artifact table."""
    s = report["qat"]
    ft = s["finetune"]
    lines = [
        f"QAT: {ft['steps_run']} fine-tuning steps in {ft['seconds']} s, held-out PSNR {_db(ft['initial_psnr_db'])} -> "
        f"{_db(ft['final_psnr_db'])} dB{' (stopped early)' if ft['stopped_early'] else ''}"
        f"{' (no step beat the calibrated start: kept)' if ft['kept_calibrated_start'] else ''}; "
        f"{sum(r['folded'] for r in s['batchnorm'])} BatchNorm folded, {len(s['left_float'])} layers left float"
    ]
    lines += [f"left float: {d['name']} ({d['class']}): {d['reason']}" for d in s["left_float"]]
    for e in s["exports"]:
        lines.append(f"{e['artifact']} vs QAT Keras model: {_db(e['agreement_psnr_db'])} dB ({'agrees' if e['agrees'] else 'DIFFERS'})")
    for r in s.get("comparison", []):
        best = r["ptq_int8_best"] or {}
        lines.append(
            f"{r['format']}: post-training int8 {_db(best.get('psnr_db'))} dB ({best.get('label', '-')}, {_size(best.get('size_bytes'))}), "
            f"QAT int8 {_db(r['qat_psnr_db'])} dB ({_size(r['qat_size_bytes'])}): {_signed(r['qat_minus_ptq_int8_db'])} dB"
        )
    lines += [f"note: {Path(a['path']).name}: {n}" for a in report["artifacts"] for n in a.get("notes", [])]
    return "\n".join(lines)


# --------------------------------------------------------------------------- after pruning


def qat_after_pruning(pruned, session, finetune=None, *, tag: str = "pruned-qat", progress: bool = True, log=lambda msg: None) -> dict:
    """``prune … --then qat``: pruning-preserving QAT of an already pruned model.

    ``pruned`` is the pruned (stripped) ``LoadedModel``; ``session`` is the *original* model's
    (its float reference, calibration and held-out sets; the original is the fine-tuning
    teacher). tfmot's ``Default8BitPrunePreserveQuantizeScheme`` masks the zero weights of Dense
    and Conv2D kernels through fine-tuning (Conv2DTranspose through our config, as the scheme has
    none). Adds ``<stem>-<tag>.int8.tflite|.onnx`` to the session and returns the QAT section
    with ``sparsity``: zeros of each pruned kernel in the float model and in the int8 TFLite file.
    The caller grades them (``grade_qat(session, tag)``) and may append ``qat_markdown(section)``
    to report.md.
    """
    if pruned.keras_model is None:
        raise UnsupportedModelError("pruning-preserving QAT needs the pruned Keras model")
    section = add_qat_artifacts(
        session, pruned.keras_model, finetune, teacher=session.model.keras_model,
        prune_preserving=True, tag=tag, progress=progress, log=log,
    )
    tflite = next((a for a in session.artifacts if a.get("variant") == tag and a["format"] == "tflite"), None)
    section["sparsity"] = int8_kernel_sparsity(pruned.keras_model, tflite["path"] if tflite else None)
    return section


def int8_kernel_sparsity(float_model, tflite_path=None) -> list[dict]:
    """Per Dense/Conv/ConvTranspose kernel: zeros in the float model and in the int8 TFLite file.

    The TFLite tensor is the int8 constant of the same size named after the layer's tfmot
    wrapper (``.../quant_<layer>/...``). BatchNorm folding scales whole output channels, so a
    zero stays a zero; int8 symmetric quantization maps 0.0 to 0.
    """
    constants = []
    if tflite_path is not None:
        from ai_edge_litert.interpreter import Interpreter

        with native_output_captured():
            interpreter = Interpreter(model_path=str(tflite_path))
        for d in interpreter.get_tensor_details():
            if d["dtype"] != np.int8 or len(d["shape"]) < 2:
                continue
            try:
                constants.append((d["name"], interpreter.get_tensor(d["index"])))
            except ValueError:  # an activation: no data
                continue
    rows = []
    for layer in iter_layers(float_model):
        if type(layer).__name__ not in _FOLD_AXIS or type(layer).__name__ == "DepthwiseConv2D":
            continue
        kernel = layer.get_weights()[0]
        row = {"name": layer.name, "size": int(kernel.size), "float_zeros": int(np.count_nonzero(kernel == 0))}
        match = next(
            (v for n, v in constants if v.size == kernel.size and any(part.startswith(f"quant_{layer.name}/") or f"/quant_{layer.name}/" in part for part in n.split(";"))),
            None,
        )
        if match is not None:
            row["int8_zeros"] = int(np.count_nonzero(match == 0))
            row["zeros_kept"] = row["int8_zeros"] >= row["float_zeros"]
        rows.append(row)
    return rows


def _db(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _round(x, digits: int = 3):
    return None if x is None else round(float(x), digits)


def _signed(x) -> str:
    return "-" if x is None else f"{x:+.2f}"


def _size(n) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"
