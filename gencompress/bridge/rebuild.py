"""The same Sequential or functional graph rebuilt layer by layer in tf-keras, weights copied."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gencompress.bridge.code_check import _CODE_LAYERS
from gencompress.bridge.common import one_line
from gencompress.bridge.translate import _make_tfk_layer, _short_name, _translate_dtype

from gencompress.errors import GencompressError, UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    pass


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
    _call_layers(order, pending, tfk_layers, outputs)

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
        raise UnsupportedModelError(f"cannot build the tf-keras model '{model.name}': {one_line(exc)}") from exc


def _call_layers(order: list[str], pending: dict, tfk_layers: dict, outputs: dict) -> None:
    """Call each tf-keras layer on its inbound nodes' tensors, in as many passes as the
    graph's order needs; ``outputs[name]`` gets each call's flat output tensors."""
    import tensorflow as tf

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
                        f"layer '{name}' ({type(layer).__name__}) fails in tf-keras: {one_line(exc)}"
                    ) from exc
                outputs[name].append(tf.nest.flatten(out))
                queue.pop(0)
                progressed = True
        if not progressed:
            stuck = [n for n in order if pending[n]]
            raise UnsupportedModelError(f"cannot rebuild the graph: unresolved inputs for layer(s) {', '.join(stuck)}")


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
        raise UnsupportedModelError(f"layer '{layer.name}' ({cls}): cannot read its config: {one_line(exc)}") from exc
    return _make_tfk_layer(cls, config, type(layer), tf_keras, name=layer.name)


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
