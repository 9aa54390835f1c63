"""Bridge Keras 3 models to tf-keras (Keras 2).

tf-keras cannot read ``.keras`` files written by Keras 3, and
tensorflow-model-optimization only accepts tf-keras models.  This module loads a
Keras 3 model (with Keras 3 itself, in safe mode unless the user trusts the
file), rebuilds the same Sequential or functional graph layer by layer with
``tf_keras.layers``, copies the weights and checks on seeded random inputs that
both models give the same outputs.

Config translation is generic: every Keras 3 layer config is mapped onto the
``__init__`` signature of the tf-keras class of the same name.  Nested
serialized objects (initializers, regularizers, constraints, dtype policies,
wrapped layers) are rebuilt with their tf-keras counterparts.  Keys that
tf-keras does not know are dropped only when their value cannot change what the
layer computes (``None`` or ``False``, i.e. a Keras 3 feature switched off; the
Keras 3 default; a training-only seed); anything else is refused with an
``UnsupportedModelError`` naming the layer.  The final output comparison is the
safety net for everything else.

Importing this module is cheap: TensorFlow, Keras 3 and tf-keras are imported
inside the functions that need them.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import zipfile
from typing import TYPE_CHECKING, Any

from gencompress.errors import GencompressError, ModelLoadError, UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    import keras
    import tf_keras

__all__ = ["load_keras3_file", "keras3_to_tf_keras", "is_keras3_file", "max_abs_error", "TOLERANCE"]

log = logging.getLogger(__name__)

#: Largest absolute output difference accepted between the Keras 3 model and its bridge.
TOLERANCE = 1e-5

# Built-in Keras 3 layers that wrap arbitrary Python code or foreign runtimes.
_CODE_LAYERS = frozenset({"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer"})

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

# Integer inputs that feed none of the layers below get values in [0, 2).
_INDEX_LAYERS = {"Embedding": "input_dim", "CategoryEncoding": "num_tokens"}
_DEFAULT_INT_HIGH = 2
# Unknown (None) non-batch dimensions are set to this in the verification inputs.
_FREE_DIM = 16


# --------------------------------------------------------------------------- file level


def is_keras3_file(path: str) -> bool:
    """True for a ``.keras`` zip whose ``metadata.json`` says ``keras_version`` 3.x.

    tf-keras writes its own version (2.x) there; ``.h5`` files, directories,
    missing or unreadable files give False.  Never raises.
    """
    try:
        version = _read_metadata(os.fspath(path)).get("keras_version")
    except Exception:  # noqa: BLE001 - a predicate: anything unreadable is "not Keras 3"
        return False
    return isinstance(version, str) and version.split(".")[0] == "3"


def load_keras3_file(path: str, trust_code: bool = False) -> "tf_keras.Model":
    """Load a ``.keras`` file written by Keras 3 and return an equivalent tf-keras model (verified).

    The file's ``config.json`` is checked before anything is deserialized:
    ``Lambda`` layers, custom classes and custom/lambda functions are refused
    with ``UnsupportedModelError`` (unless ``trust_code``; even then they cannot
    be bridged, so they are still refused, with a different message).  Keras 3
    loads the file with ``safe_mode=not trust_code`` and ``compile=False``.

    Raises ``ModelLoadError`` for missing, corrupt or non-Keras-3 files and
    ``UnsupportedModelError`` for models that cannot be bridged.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"cannot load {path}: no such file")
    if not os.path.isfile(path):
        raise ModelLoadError(f"cannot load {path}: not a file")
    try:
        meta = _read_metadata(path)
        config = _read_json_member(path, "config.json")
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any read failure is a corrupt file
        raise ModelLoadError(f"cannot load {path}: {_one_line(exc)}") from exc
    version = meta.get("keras_version")
    if not (isinstance(version, str) and version.split(".")[0] == "3"):
        raise ModelLoadError(
            f"cannot load {path}: it was written by Keras {version or '(unknown version)'}, "
            "not Keras 3; load it with tf-keras instead"
        )
    _check_code(config, trust_code)

    keras, _tf_keras = _import_backends()
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=not trust_code)
    except GencompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; report one line
        msg = _one_line(exc)
        if "safe_mode" in msg:
            raise UnsupportedModelError(
                f"{path}: Keras refused to deserialize Python code from the file in safe mode "
                f"({msg[:200]}); pass --trust-code to allow it"
            ) from exc
        raise ModelLoadError(f"Keras 3 could not load {path}: {msg}") from exc
    from gencompress.loading.h5 import check_archive_weights_used

    check_archive_weights_used(path, len(model.variables))
    return keras3_to_tf_keras(model)


# --------------------------------------------------------------------------- model level


def keras3_to_tf_keras(model: "keras.Model", *, atol: float = TOLERANCE) -> "tf_keras.Model":
    """Rebuild a Keras 3 Sequential or functional model as tf-keras, copy weights, verify.

    Layer names, input names, output names and the graph topology (including
    multiple inputs/outputs, list-input merge layers, shared layers and nested
    Sequential/functional models) are kept.  The bridge is verified on seeded
    random inputs: the largest absolute output difference must be <= ``atol``
    (default 1e-5), otherwise ``UnsupportedModelError`` is raised, naming the
    first layer whose output differs when that can be told.
    """
    keras, tf_keras = _import_backends()
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(f"expected a Keras 3 model, got {type(model).__name__}")
    tfk_model = _convert_model(model, keras, tf_keras)
    _copy_weights(model, tfk_model, keras)
    inputs = _random_inputs(model, seed=0)
    err = _max_abs_error_on(model, tfk_model, inputs)
    log.info("bridged Keras 3 model %r to tf-keras: max abs output error %.3g", model.name, err)
    if not err <= atol:
        where = _locate_mismatch(model, tfk_model, inputs, atol, keras, tf_keras)
        raise UnsupportedModelError(
            f"the tf-keras rebuild of model '{model.name}' does not match Keras 3 "
            f"(max abs output error {err:.3g} > {atol:g})" + (f"; first differing layer: {where}" if where else "")
        )
    return tfk_model


def max_abs_error(keras3_model: "keras.Model", tf_keras_model: "tf_keras.Model", seed: int = 0) -> float:
    """Largest absolute output difference between the two models on seeded random inputs.

    Float inputs are standard normal; integer inputs are random integers in the
    range the consuming ``Embedding`` accepts (else [0, 2)).  NaN counts as inf.
    """
    _import_backends()
    return _max_abs_error_on(keras3_model, tf_keras_model, _random_inputs(keras3_model, seed))


# --------------------------------------------------------------------------- helpers: files


def _read_json_member(path: str, member: str) -> dict:
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"cannot load {path}: not a .keras archive (not a zip file)")
    with zipfile.ZipFile(path) as zf:
        try:
            raw = zf.read(member)
        except KeyError:
            raise ModelLoadError(f"cannot load {path}: the archive has no {member}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ModelLoadError(f"cannot load {path}: {member} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"cannot load {path}: {member} is not a JSON object")
    return data


def _read_metadata(path: str) -> dict:
    return _read_json_member(path, "metadata.json")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_activation_key(key: Any) -> bool:
    return isinstance(key, str) and (key == "activation" or key.endswith("_activation") or key == "function")


def _check_code(config: dict, trust_code: bool) -> None:
    """Refuse configs that carry Python code (Lambda, custom classes/functions) before loading."""
    found = _find_code(config)
    if found is None:
        return
    name, what = found
    if not trust_code:
        raise UnsupportedModelError(f"layer '{name}' ({what}) runs Python code from the file; pass --trust-code to allow it")
    raise UnsupportedModelError(
        f"layer '{name}' ({what}) is custom Python code and cannot be bridged to tf-keras; "
        "only built-in Keras layers can be loaded from Keras 3 files"
    )


def _find_code(obj: Any, layer: tuple[str, str] | None = None, key: Any = None) -> tuple[str, str] | None:
    """First (layer name, description) in a serialized Keras 3 config that carries Python code."""
    if isinstance(obj, list):
        for item in obj:
            hit = _find_code(item, layer, key)
            if hit:
                return hit
        return None
    if not isinstance(obj, dict):
        return None
    cls = obj.get("class_name")
    if isinstance(cls, str) and "config" in obj:
        cfg = obj["config"]
        has_module = "module" in obj
        module = obj.get("module")
        custom = has_module and not (isinstance(module, str) and module.startswith("keras"))
        here = layer
        if isinstance(cfg, dict) and isinstance(cfg.get("name"), str) and (custom or _is_layer_module(module, cls)):
            here = (cfg["name"], cls)  # this object is a layer (or model): name it in messages
        if cls == "__lambda__":
            return _describe(layer, key, "a Python lambda")
        if custom:
            if cls == "function" or module == "builtins":
                fn = cfg if isinstance(cfg, str) else obj.get("registered_name")
                return _describe(layer, key, f"custom function '{fn}'")
            if here is not layer:  # a custom layer (or model) class
                return here
            if layer is None:  # the root object: a subclassed model
                return (str(obj.get("name") or (cfg.get("name") if isinstance(cfg, dict) else None) or "?"), cls)
            return _describe(layer, key, f"custom {cls}")
        if cls in _CODE_LAYERS and _is_layer_module(module, cls):
            return here
        for k, v in obj.items():  # nested layers, wrapped layers, initializers, ...
            # compile_config (losses, metrics, optimizer) is never deserialized: we load with compile=False.
            if k not in ("class_name", "module", "registered_name", "inbound_nodes", "compile_config"):
                hit = _find_code(v, here, k)
                if hit:
                    return hit
        return None
    if _is_activation_key(key) and "class_name" not in obj and isinstance(obj.get("value"), (list, tuple)):
        return _describe(layer, key, "a Python lambda")  # Keras 2 style func_dump
    for k, v in obj.items():
        hit = _find_code(v, layer, k)
        if hit:
            return hit
    return None


def _is_layer_module(module: Any, cls: str) -> bool:
    if cls in ("Functional", "Sequential", "Model"):
        return True
    return isinstance(module, str) and module.startswith(("keras.layers", "keras.src.layers"))


def _describe(layer: tuple[str, str] | None, key: Any, what: str) -> tuple[str, str]:
    name, cls = layer or ("?", "?")
    return name, f"{cls} with {what} as '{key}'" if isinstance(key, str) else f"{cls} with {what}"


# --------------------------------------------------------------------------- helpers: backends


def _import_backends():
    # TensorFlow first, through gencompress's quiet, deterministic set-up (tf-keras as tf.keras,
    # oneDNN off); Keras 3 would otherwise import it with the defaults.
    from gencompress.tfenv import import_tf

    import_tf()
    try:
        import keras
        import tf_keras
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise UnsupportedModelError(f"Keras 3 models need both keras (3.x) and tf-keras installed: {exc}") from exc
    if not str(getattr(keras, "__version__", "")).startswith("3."):
        raise UnsupportedModelError(
            f"`import keras` gives Keras {getattr(keras, '__version__', '?')}, not Keras 3; "
            "install keras>=3 to load Keras 3 models"
        )
    return keras, tf_keras


# --------------------------------------------------------------------------- helpers: rebuild


def _convert_model(model, keras, tf_keras):
    cls = type(model).__name__
    if isinstance(model, keras.Sequential):
        return _convert_sequential(model, keras, tf_keras)
    if cls == "Functional" or (hasattr(model, "operations") and type(model).__module__.startswith("keras.")):
        return _convert_functional(model, keras, tf_keras)
    raise UnsupportedModelError(
        f"model '{model.name}' ({cls}) is a subclassed model; only Sequential and functional models can be bridged"
    )


def _input_from_config(name: str, cfg: dict, tf_keras):
    ctx = (name, "InputLayer")
    if cfg.get("optional"):
        raise UnsupportedModelError(f"input '{name}' is optional, which tf-keras does not support")
    batch_shape = cfg.get("batch_shape")
    if batch_shape is None:
        raise UnsupportedModelError(f"input '{name}' has no batch_shape in its config")
    return dict(
        batch_shape=tuple(batch_shape),
        dtype=_translate_dtype(cfg.get("dtype"), ctx),
        name=name,
        sparse=bool(cfg.get("sparse", False)),
        ragged=bool(cfg.get("ragged", False)),
    )


def _convert_sequential(model, keras, tf_keras):
    cfg = model.get_config()
    layer_cfgs = cfg.get("layers", [])
    tfk_model = tf_keras.Sequential(name=model.name)
    if layer_cfgs and layer_cfgs[0].get("class_name") == "InputLayer":
        icfg = layer_cfgs[0]["config"]
        spec = _input_from_config(icfg.get("name", "input_layer"), icfg, tf_keras)
        spec["batch_input_shape"] = spec.pop("batch_shape")
        tfk_model.add(tf_keras.layers.InputLayer(**spec))
    else:
        try:
            inputs = model.inputs
        except Exception:  # noqa: BLE001
            inputs = None
        if not inputs:
            raise UnsupportedModelError(f"Sequential model '{model.name}' is not built (it has no input shape)")
        t = inputs[0]
        tfk_model.add(tf_keras.layers.InputLayer(batch_input_shape=tuple(t.shape), dtype=str(t.dtype)))
    for layer in model.layers:
        tfk_model.add(_convert_layer(layer, keras, tf_keras))
    return tfk_model


class _NotReady(Exception):
    pass


def _is_history(x: Any) -> bool:
    return (
        isinstance(x, (list, tuple))
        and len(x) == 3
        and isinstance(x[0], str)
        and isinstance(x[1], int)
        and isinstance(x[2], int)
    )


def _convert_functional(model, keras, tf_keras):
    import tensorflow as tf

    cfg = model.get_config()
    ops = {op.name: op for op in model.operations}
    outputs: dict[str, list[list[Any]]] = {}  # layer name -> per node: flat output tensors
    tfk_layers: dict[str, Any] = {}
    pending: dict[str, list[dict]] = {}
    order: list[str] = []
    for lcfg in cfg["layers"]:
        name = lcfg["name"]
        if lcfg["class_name"] == "InputLayer" and not lcfg.get("inbound_nodes"):
            outputs[name] = [[tf_keras.Input(**_input_from_config(name, lcfg["config"], tf_keras))]]
            continue
        op = ops.get(name)
        if op is None:
            raise UnsupportedModelError(f"layer '{name}' ({lcfg['class_name']}) is in the config but not in the model")
        tfk_layers[name] = _convert_layer(op, keras, tf_keras)
        outputs[name] = []
        pending[name] = list(lcfg.get("inbound_nodes", []))
        order.append(name)

    def resolve(obj):
        if isinstance(obj, dict):
            cls = obj.get("class_name")
            if cls == "__keras_tensor__":
                lname, node, index = obj["config"]["keras_history"]
                nodes = outputs.get(lname)
                if nodes is None:
                    raise UnsupportedModelError(f"the model config refers to unknown layer '{lname}'")
                if node >= len(nodes):
                    raise _NotReady
                return nodes[node][index]
            if cls == "__tuple__":
                return tuple(resolve(v) for v in obj["config"]["value"])
            return {k: resolve(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [resolve(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(resolve(v) for v in obj)
        return obj

    while any(pending.values()):
        progressed = False
        for name in order:
            queue = pending[name]
            while queue:
                node = queue[0]
                try:
                    args = resolve(node.get("args", []))
                    kwargs = resolve(node.get("kwargs", {}))
                except _NotReady:
                    break
                layer = tfk_layers[name]
                try:
                    out = layer(*args, **kwargs)
                except GencompressError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise UnsupportedModelError(
                        f"layer '{name}' ({type(layer).__name__}) fails in tf-keras: {_one_line(exc)}"
                    ) from exc
                outputs[name].append(tf.nest.flatten(out))
                queue.pop(0)
                progressed = True
        if not progressed:
            stuck = [n for n in order if pending[n]]
            raise UnsupportedModelError(f"cannot rebuild the graph: unresolved inputs for layer(s) {', '.join(stuck)}")

    def pick(spec):
        if _is_history(spec):
            lname, node, index = spec
            return outputs[lname][node][index]
        if isinstance(spec, dict):
            return {k: pick(v) for k, v in spec.items()}
        if isinstance(spec, (list, tuple)):
            return [pick(v) for v in spec]
        raise UnsupportedModelError(f"cannot read the model's inputs/outputs from its config: {spec!r}")

    try:
        return tf_keras.Model(inputs=pick(cfg["input_layers"]), outputs=pick(cfg["output_layers"]), name=model.name)
    except GencompressError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(f"cannot build the tf-keras model '{model.name}': {_one_line(exc)}") from exc


def _convert_layer(layer, keras, tf_keras):
    cls = type(layer).__name__
    if isinstance(layer, keras.Model):
        return _convert_model(layer, keras, tf_keras)
    module = type(layer).__module__
    if not isinstance(layer, keras.layers.Layer):
        raise UnsupportedModelError(
            f"layer '{layer.name}' ({cls}) is a keras.ops operation, not a layer; it cannot be bridged to tf-keras"
        )
    if not module.startswith("keras."):
        raise UnsupportedModelError(
            f"layer '{layer.name}' ({cls}) is a custom layer class ({module}); it cannot be bridged to tf-keras"
        )
    if cls in _CODE_LAYERS:
        raise UnsupportedModelError(f"layer '{layer.name}' ({cls}) runs Python code and cannot be bridged to tf-keras")
    try:
        config = layer.get_config()
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(f"layer '{layer.name}' ({cls}): cannot read its config: {_one_line(exc)}") from exc
    return _make_tfk_layer(cls, config, type(layer), tf_keras, name=layer.name)


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
        raise UnsupportedModelError(f"layer '{name}' ({cls}): tf-keras rejects its config: {_one_line(exc)}") from exc


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
        raise UnsupportedModelError(f"{what}: tf-keras rejects '{key}' ({cls}): {_one_line(exc)}") from exc


# --------------------------------------------------------------------------- helpers: weights


def _short_name(name: str) -> str:
    return name.split(":")[0].rsplit("/", 1)[-1]


def _copy_weights(k3_layer, tfk_layer, keras) -> None:
    if isinstance(k3_layer, keras.Model):
        for sub in k3_layer.layers:
            try:
                target = tfk_layer.get_layer(sub.name)
            except ValueError:
                raise UnsupportedModelError(f"layer '{sub.name}' is missing from the tf-keras rebuild") from None
            _copy_weights(sub, target, keras)
        return
    name, cls = k3_layer.name, type(k3_layer).__name__
    src = k3_layer.weights
    dst = tfk_layer.weights
    if len(src) != len(dst):
        raise UnsupportedModelError(
            f"layer '{name}' ({cls}) has {len(src)} weights in Keras 3 but {len(dst)} in tf-keras "
            f"({[w.name for w in src]} vs {[w.name for w in dst]})"
        )
    if not src:
        return
    src_names = [_short_name(w.name) for w in src]
    dst_names = [_short_name(w.name) for w in dst]
    if len(set(src_names)) == len(src_names) and sorted(src_names) == sorted(dst_names):
        order = [dst_names.index(n) for n in src_names]
    else:
        order = list(range(len(src)))
    values = k3_layer.get_weights()
    new_values: list[Any] = [None] * len(dst)
    for i, j in enumerate(order):
        if tuple(values[i].shape) != tuple(dst[j].shape):
            raise UnsupportedModelError(
                f"layer '{name}' ({cls}): weight '{src_names[i]}' has shape {tuple(values[i].shape)} in Keras 3 "
                f"but {tuple(dst[j].shape)} in tf-keras"
            )
        new_values[j] = values[i]
    tfk_layer.set_weights(new_values)


# --------------------------------------------------------------------------- helpers: verification


def _input_specs(model) -> list[tuple[str, tuple, str]]:
    """(input layer name, shape, dtype name) for each model input, in ``model.inputs`` order."""
    return [(_tensor_layer_name(t), tuple(t.shape), str(getattr(t.dtype, "name", t.dtype))) for t in model.inputs]


def _int_highs(model) -> dict[str, int]:
    """Exclusive upper bound for integer inputs, from the index layers that consume them."""
    highs: dict[str, int] = {}
    try:
        cfg = model.get_config()
    except Exception:  # noqa: BLE001
        return highs
    layers = cfg.get("layers", [])
    if type(model).__name__ == "Sequential":
        if len(layers) >= 2 and layers[0].get("class_name") == "InputLayer":
            first = layers[1]
            attr = _INDEX_LAYERS.get(first.get("class_name"))
            if attr and isinstance(first.get("config", {}).get(attr), int):
                highs[layers[0]["config"].get("name", "")] = first["config"][attr]
        return highs
    for lcfg in layers:
        attr = _INDEX_LAYERS.get(lcfg.get("class_name"))
        if not attr:
            continue
        size = lcfg.get("config", {}).get(attr)
        if not isinstance(size, int):
            continue
        for src in _history_names(lcfg.get("inbound_nodes", [])):
            highs[src] = min(highs.get(src, size), size)
    return highs


def _history_names(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]["keras_history"][0]]
        return [n for v in obj.values() for n in _history_names(v)]
    if isinstance(obj, (list, tuple)):
        return [n for v in obj for n in _history_names(v)]
    return []


def _random_inputs(model, seed: int = 0, batch: int = 2):
    import numpy as np

    rng = np.random.default_rng(seed)
    highs = _int_highs(model)
    arrays = []
    for name, shape, dtype in _input_specs(model):
        dims = [batch if i == 0 and d is None else (_FREE_DIM if d is None else int(d)) for i, d in enumerate(shape)]
        if dtype.startswith("int") or dtype.startswith("uint"):
            arrays.append(rng.integers(0, highs.get(name, _DEFAULT_INT_HIGH), size=dims).astype(dtype))
        elif dtype == "bool":
            arrays.append(rng.random(dims) < 0.5)
        elif "float" in dtype:
            arrays.append(rng.standard_normal(dims).astype(dtype))
        else:
            raise UnsupportedModelError(f"input '{name}' has dtype {dtype}; cannot generate verification data")
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        by_name = dict(zip([s[0] for s in _input_specs(model)], arrays))
        return {k: by_name[_tensor_layer_name(v)] for k, v in struct.items()}
    if isinstance(struct, (list, tuple)) or len(arrays) > 1:
        return arrays
    return arrays[0]


def _tensor_layer_name(t) -> str:
    """Name of the layer that produced a Keras 3 symbolic tensor (for inputs: the input name)."""
    hist = getattr(t, "_keras_history", None)
    op = getattr(hist, "operation", None) if hist is not None else None
    return getattr(op, "name", None) or t.name


def _flat_numpy(out) -> list:
    import numpy as np
    import tensorflow as tf

    return [np.asarray(x) for x in tf.nest.flatten(out)]


def _max_abs_error_on(k3_model, tfk_model, inputs) -> float:
    import numpy as np

    try:
        y3 = _flat_numpy(k3_model(inputs, training=False))
        y2 = _flat_numpy(tfk_model(inputs, training=False))
    except GencompressError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(f"cannot run the bridged model on verification inputs: {_one_line(exc)}") from exc
    if len(y3) != len(y2):
        raise UnsupportedModelError(f"the tf-keras rebuild has {len(y2)} outputs, Keras 3 has {len(y3)}")
    err = 0.0
    for a, b in zip(y3, y2):
        if a.shape != b.shape:
            raise UnsupportedModelError(f"output shape differs: Keras 3 {a.shape}, tf-keras {b.shape}")
        if a.size:
            d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            err = max(err, d if d == d else float("inf"))
    return err


def _locate_mismatch(k3_model, tfk_model, inputs, atol, keras, tf_keras) -> str | None:
    """Name of the first layer (in config order) whose output differs, or None if it cannot be told."""
    import numpy as np

    try:
        candidates = []
        for layer in k3_model.layers:
            if isinstance(layer, keras.layers.InputLayer) or len(getattr(layer, "_inbound_nodes", [])) != 1:
                continue
            try:
                candidates.append((layer, tfk_model.get_layer(layer.name)))
            except ValueError:
                continue
        if not candidates:
            return None
        k3_in = getattr(k3_model, "_inputs_struct", None)
        if k3_in is None:
            k3_in = k3_model.inputs if len(k3_model.inputs) > 1 else k3_model.inputs[0]
        tfk_in = tfk_model.inputs if isinstance(k3_in, (list, tuple)) else tfk_model.input
        k3_probe = keras.Model(k3_in, [l.output for l, _ in candidates])
        tfk_probe = tf_keras.Model(tfk_in, [t.output for _, t in candidates])
        y3 = k3_probe(inputs, training=False)
        y2 = tfk_probe(inputs, training=False)
        if len(candidates) == 1:
            y3, y2 = [y3], [y2]
        for (layer, _), a, b in zip(candidates, y3, y2):
            fa, fb = _flat_numpy(a), _flat_numpy(b)
            for xa, xb in zip(fa, fb):
                if xa.shape != xb.shape or not float(np.max(np.abs(xa - xb), initial=0.0)) <= atol:
                    return f"'{layer.name}' ({type(layer).__name__})"
    except Exception as exc:  # noqa: BLE001 - diagnosis is best effort
        log.debug("could not locate the mismatching layer: %s", exc)
    return None
