"""What in a Keras 3 config would run code: Lambda layers, custom classes, custom functions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gencompress.errors import UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    pass


# Built-in Keras 3 layers that wrap arbitrary Python code or foreign runtimes.
_CODE_LAYERS = frozenset({"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer"})


def _is_activation_key(key: Any) -> bool:
    return isinstance(key, str) and (key == "activation" or key.endswith("_activation") or key == "function")


def check_code(config: dict, trust_code: bool) -> None:
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
