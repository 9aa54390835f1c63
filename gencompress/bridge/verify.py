"""Checking a bridged model against its Keras 3 original on seeded random inputs."""

from __future__ import annotations

import numpy as np

from typing import TYPE_CHECKING, Any

from gencompress.bridge.common import one_line, log

from gencompress.errors import GencompressError, UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    pass


# Integer inputs that feed none of the layers below get values in [0, 2).
_INDEX_LAYERS = {"Embedding": "input_dim", "CategoryEncoding": "num_tokens"}


_DEFAULT_INT_HIGH = 2


# Unknown (None) non-batch dimensions are set to this in the verification inputs.
_FREE_DIM = 16


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
    import tensorflow as tf

    return [np.asarray(x) for x in tf.nest.flatten(out)]


def _max_abs_error_on(k3_model, tfk_model, inputs) -> float:

    try:
        y3 = _flat_numpy(k3_model(inputs, training=False))
        y2 = _flat_numpy(tfk_model(inputs, training=False))
    except GencompressError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(f"cannot run the bridged model on verification inputs: {one_line(exc)}") from exc
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
