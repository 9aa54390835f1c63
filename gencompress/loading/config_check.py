"""The safety check every saved Keras config passes before a Keras loader sees the file.

The ``.h5`` loaders unmarshal Lambda bytecode while they deserialize and have no safe mode, so
the config is read as JSON and checked first. What loads by default is what runs no Python code
from the file: Keras' own layers, layers gencompress provides itself (``community_layers``) and
TF op layers, which only *name* a TensorFlow function or op. Those names are checked too: a
TF op layer could otherwise write files or call back into Python.
"""

from __future__ import annotations

import re

from gencompress.errors import UnsupportedModelError

MODEL_CLASSES = {"Sequential", "Functional", "Model"}  # layers that are whole models
TF_SYMBOL_LAYERS = {"TFOpLambda", "SlicingOpLambda"}  # TF >= 2.4: `function` is a tf.* API path
TF_OP_LAYER = "TensorFlowOpLayer"  # TF 2.0-2.3: `node_def` names a registered op

# Keys under which a layer's config holds whole layers: wrappers (TimeDistributed,
# Bidirectional) and RNNs. Anything else nested in a config (initializers, DTypePolicy, ...) is an
# argument of the layer's own class, not a layer.
_NESTED_LAYER_KEYS = ("layer", "backward_layer", "cell")
_NESTED_LAYER_LISTS = ("layers", "cells")

# tensorflow.python.ops modules whose functions act outside the computed tensor.
_SIDE_EFFECT_MODULES = {
    "io_ops": "does file I/O",
    "gen_io_ops": "does file I/O",
    "logging_ops": "prints",
    "gen_logging_ops": "prints",
    "script_ops": "calls back into Python",
    "gen_script_ops": "calls back into Python",
    "summary_ops_v2": "writes summaries",
    "gen_summary_ops": "writes summaries",
    "state_ops": "changes variables",
    "gen_state_ops": "changes variables",
    "variables": "creates variables",
    "variable_scope": "creates variables",
    "resource_variable_ops": "changes variables",
    "gen_resource_variable_ops": "changes variables",
    "lookup_ops": "reads lookup tables from files",
    "gen_lookup_ops": "reads lookup tables from files",
    "data_flow_ops": "uses queues and shared state",
    "gen_data_flow_ops": "uses queues and shared state",
    "session_ops": "uses session state",
    "gen_dataset_ops": "reads data sets",
    "gen_experimental_dataset_ops": "reads data sets",
}

# Op (or function) names with side effects, whatever module defines them.
_SIDE_EFFECT_NAMES = [
    (re.compile(r"file|gfile|matching_?files|immutable_?const|proto|reader|writer", re.I), "does file I/O"),
    (re.compile(r"py_?func|numpy_?function|py_?function", re.I), "calls back into Python"),
    (re.compile(r"print", re.I), "prints"),
    (re.compile(r"summary", re.I), "writes summaries"),
    (re.compile(r"save|restore|checkpoint", re.I), "saves or restores checkpoints"),
    (re.compile(r"queue|dataset|iterator|table|variable", re.I), "uses shared state"),
]

# Stateful ops that only draw random numbers or check values: a generator may sample noise.
_HARMLESS_STATEFUL = re.compile(
    r"^(Random\w*|TruncatedNormal|ParameterizedTruncatedNormal|Multinomial|Assert|CheckNumerics\w*)$"
)


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
    run code from the file, or that names a TensorFlow symbol or op outside what is allowed.

    ``is_known_layer(class_name)`` tells the Keras that will load the file's own layer classes;
    ``custom_hint`` replaces the advice given for a custom class.
    """
    from gencompress.loading.community_layers import community_match

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
        if cls in TF_SYMBOL_LAYERS:
            _check_tf_symbol(name, cls, cfg.get("function"))
            continue
        if cls == TF_OP_LAYER:
            _check_tf_op(name, cls, _node_def_op(name, cfg.get("node_def")))
            continue
        builtin, mismatch = community_match(cls, cfg)
        if builtin is not None or (mismatch is None and is_known_layer(cls)):
            continue
        hint = custom_hint or (
            "define it in the --custom-objects file"
            if trust_code
            else "pass --trust-code --custom-objects FILE.py defining it"
        )
        why = f" ({mismatch})" if mismatch else ""
        raise UnsupportedModelError(f"layer '{name}' has custom class {cls}{why}: {hint}")


def _check_tf_symbol(name: str, cls: str, symbol) -> None:
    from gencompress.tfenv import import_tf

    import_tf()  # before any tensorflow module: it sets TensorFlow's environment up
    from tensorflow.python.util import tf_decorator
    from tensorflow.python.util.tf_export import get_symbol_from_name

    function = get_symbol_from_name(symbol) if isinstance(symbol, str) and symbol else None
    if function is None or isinstance(function, type) or not callable(function):
        raise UnsupportedModelError(
            f"layer '{name}' ({cls}) names {symbol!r}, which is not a TensorFlow function; "
            "it cannot be loaded"
        )
    target = tf_decorator.unwrap(function)[1]
    module = str(getattr(target, "__module__", ""))
    if not module.startswith("tensorflow.python.ops."):
        why = "is not a tensor operation"
    else:
        why = _SIDE_EFFECT_MODULES.get(module.rsplit(".", 1)[-1]) or _side_effect_of_name(symbol)
        if why is None and symbol.split(".")[-2:-1] == ["raw_ops"]:
            why = _side_effect_of_op(symbol.rsplit(".", 1)[-1])
    if why:
        raise UnsupportedModelError(
            f"layer '{name}' ({cls}) calls tf.{symbol}, which {why}; "
            "gencompress does not load layers with side effects"
        )


def _node_def_op(name: str, node_def) -> str:
    if isinstance(node_def, dict):
        op = node_def.get("op")
    else:  # serialized NodeDef bytes, as TF 1.x Keras wrote it
        from gencompress.tfenv import import_tf

        tf = import_tf()
        try:
            raw = node_def.encode("latin-1") if isinstance(node_def, str) else bytes(node_def)
            op = tf.compat.v1.NodeDef.FromString(raw).op
        except Exception:  # noqa: BLE001 - any parse failure: not a node we can name
            op = None
    if not isinstance(op, str) or not op:
        raise UnsupportedModelError(f"layer '{name}' ({TF_OP_LAYER}) has no readable node_def op")
    return op


def _check_tf_op(name: str, cls: str, op: str) -> None:
    why = _side_effect_of_op(op)
    if why == "unknown":
        raise UnsupportedModelError(
            f"layer '{name}' ({cls}) runs TF op '{op}', which this TensorFlow does not have"
        )
    if why:
        raise UnsupportedModelError(
            f"layer '{name}' ({cls}) runs TF op '{op}', which {why}; "
            "gencompress does not load layers with side effects"
        )


def _side_effect_of_op(op: str) -> str | None:
    """Why running ``op`` does more than compute its outputs; ``"unknown"`` for no such op."""
    from gencompress.tfenv import import_tf

    import_tf()
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(op)
    if op_def is None:
        return "unknown"
    if any("func" in attr.type for attr in op_def.attr):
        return "calls graph functions the model file does not hold"
    why = _side_effect_of_name(op)
    if why is None and op_def.is_stateful and not _HARMLESS_STATEFUL.match(op):
        why = "keeps state between runs"
    return why


def _side_effect_of_name(name: str) -> str | None:
    for pattern, why in _SIDE_EFFECT_NAMES:
        if pattern.search(name):
            return why
    return None


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


def tf_op_layer_class():
    """tf-keras' own ``TensorFlowOpLayer``: still in tf-keras 2.21, but no longer registered for
    deserialization, so configs written by TF 2.0-2.3 fail with "Unknown layer" unless it is
    passed by name. It recreates the saved op from its NodeDef on the layer's inputs and constants.
    """
    from gencompress.compat.tf_keras import tensorflow_op_layer

    return tensorflow_op_layer()
