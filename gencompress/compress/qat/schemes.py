"""How each layer is quantized in the QAT model: annotation, our tfmot configs, layout fixes.

Layers tfmot's 8-bit registry supports get its config; PReLU gets ours (int8 alpha and output);
a layer ending in tanh/sigmoid also gets its output fake-quantized at LiteRT's fixed int8 output
scale and its logit range bounded where the output saturates (``SaturatingOutputConfig``);
layers tfmot cannot quantize stay float and are listed. tfmot's Concatenate transform reorders
the inputs of a Concatenate fed by a model input, and its ReLU transform drops the kernel
quantization of the Dense/Conv2D before a ReLU layer: both are replaced (``_scheme``).
"""

from __future__ import annotations

from gencompress.compat.tfmot import internals
from gencompress.compress.saturation import SATURATION
from gencompress.errors import UnsupportedModelError
from gencompress.model import MODEL_CLASSES
from gencompress.tfenv import import_keras, import_tf


_CODE_LAYERS = ("TFOpLambda", "SlicingOpLambda", "Lambda", "TensorFlowOpLayer")


# Activations tfmot's QuantizeAwareActivation knows (others raise at quantize_apply time).
_TFMOT_ACTIVATIONS = {"linear", "relu", "swish", "gelu", "softmax", "sigmoid", "tanh", "relu6"}


_CONFIGS: dict = {}


def _quantize_configs() -> dict:
    """Our QuantizeConfig classes, defined on first use (tfmot imports TensorFlow)."""
    if _CONFIGS:
        return _CONFIGS
    import tensorflow_model_optimization as tfmot

    qk = tfmot.quantization.keras
    saturation_aware = _saturation_aware_quantizer(qk)
    _CONFIGS.update(
        {
            "PReLUQuantizeConfig": _prelu_config(qk),
            "SaturatingOutputConfig": _saturating_output_config(qk, saturation_aware),
            "SaturationAwareQuantizer": saturation_aware,
        }
    )
    _CONFIGS.update(_prune_preserving_configs(tfmot))
    return _CONFIGS


def _prelu_config(qk):
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

    return PReLUQuantizeConfig


def _saturation_aware_quantizer(qk):
    MovingAverage = qk.quantizers.MovingAverageQuantizer

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
            utils = internals().utils
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

    return SaturationAwareQuantizer


def _saturating_output_config(qk, SaturationAwareQuantizer):
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

    return SaturatingOutputConfig


# The int8 range LiteRT's TANH and LOGISTIC kernels write, and the logits beyond which those
# outputs stop changing (see ``compress.saturation``).
SATURATING_OUTPUT_RANGES = {activation: s.output for activation, s in SATURATION.items()}
SATURATION_BOUNDS = {activation: s.train for activation, s in SATURATION.items()}




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

    GeneratorLayout = _generator_layout(internals())

    class Default(tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme):
        def get_layout_transformer(self):
            return GeneratorLayout()

    class PrunePreserving(tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme):
        def get_layout_transformer(self):
            return GeneratorLayout()

    _SCHEMES.update({False: Default(), True: PrunePreserving()})
    return _SCHEMES[prune_preserving]


def _relu_transforms(transforms):
    """tfmot transforms for a ReLU after Add, and after a Dense/Conv (kernel kept quantized)."""
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

    return ReLUAfterAddQuantize, ReLUActivationAfterAddQuantize, ReLUAfterWeightsQuantize, ReLUActivationAfterWeightsQuantize


def _generator_layout(tfmot_internals):
    layout, transforms, model_transformer = tfmot_internals.layout, tfmot_internals.transforms, tfmot_internals.model_transformer
    ReLUAfterAddQuantize, ReLUActivationAfterAddQuantize, ReLUAfterWeightsQuantize, ReLUActivationAfterWeightsQuantize = _relu_transforms(transforms)

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

    return GeneratorLayout


def _prune_preserving_configs(tfmot) -> dict:
    """A Conv2DTranspose config for tfmot's pruning-preserving scheme, which has none.

    Same per-tensor symmetric int8 weights as tfmot's default for Conv2DTranspose, with the
    kernel multiplied by its sparsity mask (fixed when the layer is built) before quantizing.
    """
    ppr, d8 = internals().prune_preserve_registry, internals().default_registry

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
        ppr = internals().prune_preserve_registry

        return ppr.Default8bitPrunePreserveQuantizeRegistry()
    d8 = internals().default_registry

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
