"""The safety check every saved Keras config passes before a Keras loader sees the file.

The ``.h5`` loaders unmarshal Lambda bytecode while they deserialize and have no safe mode, so
the config is read as JSON and checked first. What loads by default is what runs no Python code
from the file: Keras' own layers and TF op layers, which only name a TensorFlow function.
"""

from __future__ import annotations

from gencompress.errors import UnsupportedModelError

MODEL_CLASSES = {"Sequential", "Functional", "Model"}  # layers that are whole models
TF_SYMBOL_LAYERS = {"TFOpLambda", "SlicingOpLambda"}  # TF >= 2.4: `function` is a tf.* API path

# Keys under which a layer's config holds whole layers: wrappers (TimeDistributed,
# Bidirectional) and RNNs. Anything else nested in a config (initializers, DTypePolicy, ...) is an
# argument of the layer's own class, not a layer.
_NESTED_LAYER_KEYS = ("layer", "backward_layer", "cell")
_NESTED_LAYER_LISTS = ("layers", "cells")


def iter_layer_configs(node):
    """Yield ``(name, class_name, config)`` for every layer of a saved model config.

    Visits only real layer entries: the root, the ``layers`` of models (nested ones included; a
    Keras 2.1 Sequential's config is a bare list of them) and the layers that wrappers and RNNs
    hold. Walking every nested ``class_name`` instead mistook Keras 3's ``DTypePolicy`` objects
    for custom layers.
    """
    if isinstance(node, (list, tuple)):
        for item in node:
            yield from iter_layer_configs(item)
        return
    if not isinstance(node, dict):
        return
    cls = node.get("class_name")
    if not isinstance(cls, str):
        if isinstance(node.get("layers"), list):  # a bare model config: {"name": ..., "layers": [...]}
            yield from iter_layer_configs(node["layers"])
        return
    cfg = node.get("config")
    name = node.get("name") or (cfg.get("name") if isinstance(cfg, dict) else None) or "?"
    yield str(name), cls, cfg if isinstance(cfg, dict) else {}
    if isinstance(cfg, list):  # Keras 2.1 Sequential
        yield from iter_layer_configs(cfg)
    elif isinstance(cfg, dict):
        for key in _NESTED_LAYER_KEYS:
            if isinstance(cfg.get(key), dict):
                yield from iter_layer_configs(cfg[key])
        for key in _NESTED_LAYER_LISTS:
            if isinstance(cfg.get(key), list):
                yield from iter_layer_configs(cfg[key])


def check_config(config, trust_code: bool, custom_objects: dict, is_known_layer, custom_hint=None) -> None:
    """Raise ``UnsupportedModelError`` (one line, naming the layer) for the first layer that would
    run code from the file.

    ``is_known_layer(class_name)`` tells the Keras that will load the file's own layer classes;
    ``custom_hint`` replaces the advice given for a custom class.
    """
    for name, cls, cfg in iter_layer_configs(config):
        if cls in MODEL_CLASSES or isinstance(custom_objects.get(cls), type):
            continue
        if cls == "Lambda":
            if not trust_code:
                raise UnsupportedModelError(
                    f"layer '{name}' (Lambda) runs Python code stored in the model file; "
                    "pass --trust-code to allow it"
                )
            continue
        if cls in TF_SYMBOL_LAYERS:  # a reference into TensorFlow's API, not Python code
            continue
        if is_known_layer(cls):
            continue
        hint = custom_hint or (
            "define it in the --custom-objects file"
            if trust_code
            else "pass --trust-code --custom-objects FILE.py defining it"
        )
        raise UnsupportedModelError(f"layer '{name}' has custom class {cls}: {hint}")


def tf_keras_layer(cls: str) -> bool:
    """Whether tf-keras has a layer class of this name."""
    from gencompress.tfenv import import_keras

    keras = import_keras()
    found = getattr(keras.layers, cls, None)
    return isinstance(found, type) and issubclass(found, keras.layers.Layer)


def keras3_layer(cls: str) -> bool:
    """Whether Keras 3 has a layer class of this name."""
    import keras

    found = getattr(keras.layers, cls, None)
    return isinstance(found, type) and issubclass(found, keras.layers.Layer)
