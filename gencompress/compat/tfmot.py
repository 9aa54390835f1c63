"""tensorflow-model-optimization internals (tfmot 0.8.1): modules gencompress subclasses or
reads, and the patches of its quantizer functions."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

from gencompress.compat import PatchNotCalled


def internals() -> SimpleNamespace:
    """tfmot's private modules our QAT schemes and pruning build on."""
    from tensorflow_model_optimization.python.core.keras import utils
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        prune_preserve_quantize_registry,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_layout_transform,
        default_8bit_quantize_registry,
        default_8bit_transforms,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import model_transformer
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    return SimpleNamespace(
        utils=utils,
        quant_ops=quant_ops,
        prune_preserve_registry=prune_preserve_quantize_registry,
        layout=default_8bit_quantize_layout_transform,
        default_registry=default_8bit_quantize_registry,
        transforms=default_8bit_transforms,
        model_transformer=model_transformer,
        prune_registry=prune_registry,
        PruneLowMagnitude=PruneLowMagnitude,
    )


def prunable_weight_names(registry, layer) -> list[str] | None:
    """The weights tfmot's pruning registry prunes in ``layer`` (its private lookups)."""
    if registry._is_rnn_layer(layer) or registry._is_mha_layer(layer):
        return None
    return list(registry._weight_names(layer))


def is_recurrent_or_attention(registry, layer) -> bool:
    return registry._is_rnn_layer(layer) or registry._is_mha_layer(layer)


@contextlib.contextmanager
def _patched(module, name: str, wrapper, what: str):
    """Replace ``module.name`` by ``wrapper(original, calls)`` while the block runs; raise
    ``PatchNotCalled`` if the block ran without tfmot calling it (``calls`` counts the calls)."""
    original = getattr(module, name)
    calls = [0]
    setattr(module, name, wrapper(original, calls))
    try:
        yield
    finally:
        setattr(module, name, original)
    if calls[0] == 0:
        raise PatchNotCalled(f"tfmot no longer calls {module.__name__}.{name}: {what} had no effect")


@contextlib.contextmanager
def ranges_follow_each_batch():
    """Make tfmot's moving-average range quantizers adopt each batch's range outright.

    ``MovingAverageQuantizer`` passes a fixed ``ema_decay=0.999`` to ``quant_ops.MovingAvgQuantize``
    (tfmot 0.8); with decay 0 its update ``var -= (var - batch_range) * (1 - decay)`` sets the
    range. Yields a dict collecting the (min, max) variables the calls touched.
    """
    seen: dict = {}

    def wrapper(original, calls):
        def patched(inputs, min_var, max_var, **kwargs):
            calls[0] += 1
            if kwargs.get("is_training", True):
                kwargs["ema_decay"] = 0.0
                seen[id(min_var)] = (min_var, max_var)
            return original(inputs, min_var, max_var, **kwargs)

        return patched

    with _patched(internals().quant_ops, "MovingAvgQuantize", wrapper, "calibrating activation ranges"):
        yield seen


@contextlib.contextmanager
def input_ranges_frozen():
    """Keep the model-input ranges (tfmot's ``AllValuesQuantizer``) as calibrated while training.

    That quantizer widens its range to every value it has ever seen: with fresh noise latents
    each batch, rare extreme values widen the input step for all (measured on dcgan_saturated:
    -0.5 dB held-out within 50 steps, whatever the learning rate). Activation ranges keep
    tfmot's moving averages. A model without an input quantizer never calls it: not checked.
    """

    def wrapper(original, calls):
        def patched(inputs, min_var, max_var, **kwargs):
            calls[0] += 1
            kwargs["is_training"] = False
            return original(inputs, min_var, max_var, **kwargs)

        return patched

    with _unchecked(internals().quant_ops, "AllValuesQuantize", wrapper):
        yield


@contextlib.contextmanager
def _unchecked(module, name, wrapper):
    original = getattr(module, name)
    setattr(module, name, wrapper(original, [0]))
    try:
        yield
    finally:
        setattr(module, name, original)
