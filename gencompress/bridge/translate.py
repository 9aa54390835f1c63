"""Keras 3 layer configs mapped onto the tf-keras class of the same name."""

from __future__ import annotations

import inspect

from typing import TYPE_CHECKING, Any

from gencompress.bridge.code_check import _is_activation_key
from gencompress.bridge.common import one_line, log

from gencompress.errors import GencompressError, UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    pass


# Keras 3 argument names that tf-keras spells differently, per layer class.
_RENAMES: dict[str, dict[str, str]] = {
    # keras.layers.LeakyReLU(negative_slope=0.3) == tf_keras.layers.LeakyReLU(alpha=0.3)
    "LeakyReLU": {"negative_slope": "alpha"},
}


# Keys dropped whatever their value.  ``seed`` only affects training-time
# randomness; ``zero_output_for_mask`` is set by Keras 3 on the layers inside
# Bidirectional, and tf-keras' Bidirectional sets it on its copies itself.
_DROP_ALWAYS = frozenset({"seed", "zero_output_for_mask"})


# Keyword arguments that tf-keras' base Layer accepts through **kwargs.
_TFK_LAYER_KWARGS = frozenset(
    {
        "trainable",
        "name",
        "dtype",
        "dynamic",
        "input_dim",
        "input_shape",
        "batch_input_shape",
        "batch_size",
        "weights",
        "activity_regularizer",
        "autocast",
        "implementation",
    }
)


# Activation names Keras 3 serializes that tf-keras resolves to a *different* function.
_ACTIVATION_MISMATCH = {
    "hard_sigmoid": "Keras 3 computes relu6(x + 3) / 6, tf-keras clip(0.2 * x + 0.5, 0, 1)",
}


# Where nested serialized objects live in tf-keras, by Keras 3 module.
_OBJECT_MODULES = {
    "keras.initializers": "initializers",
    "keras.regularizers": "regularizers",
    "keras.constraints": "constraints",
}


def _accepted_kwargs(cls) -> set[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        names |= _TFK_LAYER_KWARGS
    return names


def _k3_default(k3_cls, key: str) -> Any:
    if k3_cls is None:
        return inspect.Parameter.empty
    try:
        param = inspect.signature(k3_cls.__init__).parameters.get(key)
    except (TypeError, ValueError):
        return inspect.Parameter.empty
    return inspect.Parameter.empty if param is None else param.default


def _harmless_drop(key: str, value: Any, k3_cls) -> bool:
    # None / False mean "Keras 3 feature switched off" (quantization_config, rms_scaling, renorm, ...).
    if value is None or value is False or key in _DROP_ALWAYS:
        return True
    if key == "data_format" and value == "channels_last":
        return True  # tf-keras' default data format
    default = _k3_default(k3_cls, key)
    try:
        return default is not inspect.Parameter.empty and bool(value == default)
    except Exception:  # noqa: BLE001 - exotic values that do not compare
        return False


def _make_tfk_layer(cls: str, config: dict, k3_cls, tf_keras, name: str | None = None):
    name = name or str(config.get("name", "?"))
    ctx = (name, cls)
    tfk_cls = getattr(tf_keras.layers, cls, None)
    if tfk_cls is None or not (isinstance(tfk_cls, type) and issubclass(tfk_cls, tf_keras.layers.Layer)):
        raise UnsupportedModelError(f"layer '{name}' ({cls}) has no tf-keras equivalent; it cannot be bridged")
    config = dict(config)
    for old, new in _RENAMES.get(cls, {}).items():
        if old in config:
            config[new] = config.pop(old)
    accepted = _accepted_kwargs(tfk_cls)
    kwargs: dict[str, Any] = {}
    for key, value in config.items():
        if key == "seed" and not (value is None or isinstance(value, int)):
            continue  # a serialized Keras 3 SeedGenerator: training-time randomness only
        if key not in accepted:
            if _harmless_drop(key, value, k3_cls):
                log.debug("layer %r (%s): dropping Keras 3 option %s=%r", name, cls, key, value)
                continue
            raise UnsupportedModelError(f"layer '{name}' ({cls}): option {key}={value!r} has no tf-keras equivalent")
        kwargs[key] = _translate_value(key, value, ctx, tf_keras)
    try:
        return tfk_cls(**kwargs)
    except GencompressError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(f"layer '{name}' ({cls}): tf-keras rejects its config: {one_line(exc)}") from exc


def _translate_dtype(value: Any, ctx: tuple[str, str]) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        cls = value.get("class_name")
        cfg = value.get("config") or {}
        if cls in ("DTypePolicy", "FloatDTypePolicy", "Policy") and isinstance(cfg, dict) and "name" in cfg:
            return cfg["name"]
        raise UnsupportedModelError(
            f"layer '{ctx[0]}' ({ctx[1]}) uses dtype policy {cls} {cfg}; quantized Keras 3 layers cannot be bridged"
        )
    name = getattr(value, "name", None)  # a live DTypePolicy object
    if isinstance(name, str) and not getattr(value, "quantization_mode", None):
        return name
    raise UnsupportedModelError(f"layer '{ctx[0]}' ({ctx[1]}) has an unsupported dtype {value!r}")


def _translate_activation(value: str, ctx: tuple[str, str], tf_keras) -> str:
    if value in _ACTIVATION_MISMATCH:
        raise UnsupportedModelError(
            f"layer '{ctx[0]}' ({ctx[1]}): activation '{value}' differs between Keras 3 and tf-keras "
            f"({_ACTIVATION_MISMATCH[value]})"
        )
    try:
        tf_keras.activations.get(value)
    except Exception:  # noqa: BLE001
        raise UnsupportedModelError(
            f"layer '{ctx[0]}' ({ctx[1]}): activation '{value}' does not exist in tf-keras"
        ) from None
    return value


def _translate_value(key: Any, value: Any, ctx: tuple[str, str], tf_keras) -> Any:
    if key == "dtype":
        return _translate_dtype(value, ctx)
    if isinstance(value, dict):
        if "class_name" in value and "config" in value:
            return _translate_object(key, value, ctx, tf_keras)
        if _is_activation_key(key):
            raise UnsupportedModelError(f"layer '{ctx[0]}' ({ctx[1]}): '{key}' is Python code; it cannot be bridged")
        return {k: _translate_value(k, v, ctx, tf_keras) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_translate_value(None, v, ctx, tf_keras) for v in value)
    if _is_activation_key(key) and isinstance(value, str):
        return _translate_activation(value, ctx, tf_keras)
    if _is_activation_key(key) and callable(value):
        raise UnsupportedModelError(f"layer '{ctx[0]}' ({ctx[1]}): '{key}' is a Python function; it cannot be bridged")
    return value


def _translate_object(key: Any, obj: dict, ctx: tuple[str, str], tf_keras) -> Any:
    cls = obj["class_name"]
    cfg = obj["config"]
    module = obj.get("module") or ""
    what = f"layer '{ctx[0]}' ({ctx[1]})"
    if cls == "__tuple__":
        return tuple(_translate_value(None, v, ctx, tf_keras) for v in cfg["value"])
    if cls == "__lambda__" or module == "builtins" or not module.startswith("keras"):
        raise UnsupportedModelError(f"{what}: '{key}' is custom Python code ({cls}); it cannot be bridged")
    if cls in ("DTypePolicy", "FloatDTypePolicy"):
        return _translate_dtype(obj, ctx)
    if module.startswith("keras.activations") or _is_activation_key(key):
        act = cfg if isinstance(cfg, str) else cls
        return _translate_activation(act, ctx, tf_keras)
    if module.startswith("keras.layers") or module.startswith("keras.src.layers"):
        import keras

        # A wrapped layer, e.g. the LSTM inside Bidirectional.
        return _make_tfk_layer(cls, cfg, getattr(keras.layers, cls, None), tf_keras)
    namespace = _OBJECT_MODULES.get(module)
    if namespace is None and isinstance(key, str):
        for suffix in ("initializer", "regularizer", "constraint"):
            if key.endswith(suffix):
                namespace = suffix + "s"
    if namespace is None:
        raise UnsupportedModelError(f"{what}: cannot translate '{key}' ({module}.{cls}) to tf-keras")
    tfk_cls = getattr(getattr(tf_keras, namespace), cls, None)
    if not isinstance(tfk_cls, type):
        raise UnsupportedModelError(f"{what}: '{key}' uses {cls}, which tf-keras {namespace} lack")
    accepted = _accepted_kwargs(tfk_cls)
    kwargs = {}
    for k, v in (cfg or {}).items():
        # Initializers, regularizers and constraints do not change inference, so
        # Keras-3-only options (e.g. GlorotUniform input_axes/output_axes) are dropped.
        if k not in accepted or (k == "seed" and not (v is None or isinstance(v, int))):
            continue
        kwargs[k] = _translate_value(k, v, ctx, tf_keras)
    try:
        return tfk_cls(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(f"{what}: tf-keras rejects '{key}' ({cls}): {one_line(exc)}") from exc


def _short_name(name: str) -> str:
    return name.split(":")[0].rsplit("/", 1)[-1]
