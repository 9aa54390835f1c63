"""Load a trained generator into one handle, whatever format it was saved in.

Formats: Keras 2 ``.h5``, ``.keras`` written by tf-keras or by Keras 3 (bridged to tf-keras),
SavedModel directories saved by Keras or exported with ``model.export()`` /
``tf.saved_model.save`` (used through their ``serving_default`` signature).

Loading never runs code stored in the model unless ``trust_code`` is set: the saved config is
read and checked for ``Lambda`` and custom layers *before* the Keras loader sees it (the ``.h5``
loader unmarshals Lambda bytecode and has no safe mode of its own). The parts live in
``gencompress.loading``: the check, the layers gencompress provides itself, the ``.h5`` loader.
"""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gencompress.errors import GencompressError, ModelLoadError, UnsupportedModelError
from gencompress.limits import ARCHIVE_ERRORS, check_stem, read_document, read_zip_member, refuse_special, refuse_special_inside
from gencompress.loading.config_check import MODEL_CLASSES, check_config, tf_keras_layer
from gencompress.loading.h5 import check_archive_weights_used, load_h5
from gencompress.loading.h5 import first_line as _first_line
from gencompress.loading.names import traceable
from gencompress.printable import printable
from gencompress.tfenv import import_keras, import_tf

_BOUNDED_ACTIVATIONS = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}
# TF op layers (TFOpLambda) that end a model in a bounded activation.
_ACTIVATION_SYMBOLS = {f"{ns}{fn}": fn for ns in ("", "math.", "nn.") for fn in _BOUNDED_ACTIVATIONS}


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output: name, shape (``None`` for the batch) and numpy dtype name."""

    name: str
    shape: tuple
    dtype: str

    @property
    def is_integer(self) -> bool:
        return np.issubdtype(np.dtype(self.dtype), np.integer)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class LoadedModel:
    """A loaded generator. ``keras_model`` is a tf-keras model, or ``None`` for a plain SavedModel
    (then ``signature`` is its ``serving_default`` concrete function)."""

    path: str
    format: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    params: int
    keras_model: object = None
    signature: object = None
    output_activation: str | None = None
    label_ranges: dict = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return model_stem(self.path)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def known_output_range(self) -> tuple[float, float] | None:
        """The range fixed by the output activation (tanh, sigmoid), or ``None`` if unbounded."""
        return _BOUNDED_ACTIVATIONS.get(self.output_activation)

    def predict(self, feeds: dict[str, np.ndarray], batch_size: int = 16, on_batch=None) -> list[np.ndarray]:
        """Float reference outputs, one array per model output, for inputs keyed by input name.

        ``on_batch(n)`` is called after each batch of ``n`` samples (progress)."""
        tf = import_tf()
        n = len(next(iter(feeds.values())))
        chunks: list[list[np.ndarray]] = []
        for start in range(0, n, batch_size):
            part = [feeds[t.name][start : start + batch_size] for t in self.inputs]
            if self.keras_model is not None:
                result = self.keras_model(part if len(part) > 1 else part[0], training=False)
                result = result if isinstance(result, (list, tuple)) else [result]
            else:
                out = self.signature(**{t.name: tf.constant(a) for t, a in zip(self.inputs, part)})
                result = [out[t.name] for t in self.outputs]
            chunks.append([np.asarray(r) for r in result])
            if on_batch is not None:
                on_batch(len(part[0]))
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(self.outputs))]

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "params": self.params,
            "inputs": [{**t.to_dict(), "ids": self.label_ranges.get(t.name)} for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "output_activation": self.output_activation,
        }

    def layer_rows(self) -> list[dict]:
        """Per-layer name, class, params and output shape (empty for a plain SavedModel)."""
        if self.keras_model is None:
            return []
        rows = []
        for layer in iter_layers(self.keras_model):
            try:
                shape = layer.output_shape
            except (AttributeError, RuntimeError):
                shape = None
            rows.append(
                {
                    "name": layer.name,
                    "class": type(layer).__name__,
                    "params": int(layer.count_params()) if layer.built else 0,
                    "output_shape": _shape_str(shape),
                }
            )
        return rows


def model_stem(path: str | os.PathLike) -> str:
    """The name a model's artifacts and default output folder take: the file name without
    ``.h5``/``.hdf5``/``.keras``, or the SavedModel folder's name."""
    name = Path(str(path).rstrip("/")).name
    for suffix in (".h5", ".hdf5", ".keras"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_model(
    path: str | os.PathLike, trust_code: bool = False, custom_objects_file: str | None = None, input_shape=None
) -> LoadedModel:
    """Load a Keras ``.h5``/``.keras`` file or a SavedModel directory into a ``LoadedModel``.

    ``trust_code`` allows Lambda layers (their code runs at load time); ``custom_objects_file`` is a
    Python file defining custom layer classes, imported only when ``trust_code`` is set.
    ``input_shape`` fixes the unknown dimensions of a fully convolutional model's inputs: one
    shape without the batch (``(256, 256, 3)``) for a one-input model, or ``{name: shape}``.
    """
    model = _load_model_file(path, trust_code, custom_objects_file)
    if input_shape is not None:
        model = with_input_shapes(model, input_shape)
    _check_static_shapes(model)
    return model


def _load_model_file(path, trust_code: bool, custom_objects_file) -> LoadedModel:
    path = str(path)
    p = Path(path)
    try:
        if not p.exists():
            raise ModelLoadError(f"model not found: {printable(path)}")
    except OSError as exc:  # a name over the file system's limit
        raise ModelLoadError(f"cannot read model {printable(path)}: {exc.strerror}") from None
    refuse_special(p, "model", ModelLoadError)  # a FIFO would block the loader forever
    check_stem(model_stem(path), p.parent)
    custom_objects = _import_custom_objects(custom_objects_file, trust_code)
    if p.is_dir():
        refuse_special_inside(p, "SavedModel", ModelLoadError)
        return _load_saved_model_dir(p, trust_code, custom_objects)
    suffix = p.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        keras_model, fmt = load_h5(p, trust_code, custom_objects)
        return _from_keras(path, fmt, keras_model)
    if suffix == ".keras":
        from gencompress.bridge import is_keras3_file, load_keras3_file

        if is_keras3_file(path):
            return _from_keras(path, "keras3", load_keras3_file(path, trust_code=trust_code))
        config = _keras_zip_config(p)
        _check_layers_safe(config, trust_code, custom_objects)
        keras_model = _keras_load(p, custom_objects, trust_code, config)
        check_archive_weights_used(p, len(keras_model.variables))
        return _from_keras(path, "keras", keras_model)
    raise ModelLoadError(
        f"unsupported model file {path}: expected .h5, .keras or a SavedModel directory"
    )


def _import_custom_objects(custom_objects_file, trust_code) -> dict:
    if custom_objects_file is None:
        return {}
    if not trust_code:
        raise UnsupportedModelError(
            "--custom-objects runs Python code: pass --trust-code as well to allow it"
        )
    refuse_special(custom_objects_file, "custom objects file", ModelLoadError)
    spec = importlib.util.spec_from_file_location("gencompress_custom_objects", custom_objects_file)
    if spec is None or not Path(custom_objects_file).is_file():
        raise ModelLoadError(f"custom objects file not found: {custom_objects_file}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: report it in one line
        raise ModelLoadError(
            f"cannot import custom objects file {custom_objects_file}: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    # Every public name, not only classes: they are also the globals of trusted Lambda
    # functions, whose helpers (functions, modules such as tf) a file may be all about.
    return {k: v for k, v in vars(module).items() if not k.startswith("_")}


def _keras_zip_config(p: Path) -> dict:
    try:
        with zipfile.ZipFile(p) as z:
            return json.loads(read_zip_member(z, "config.json", f"cannot read {p}", ModelLoadError))
    except GencompressError:
        raise
    except (*ARCHIVE_ERRORS, KeyError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"cannot read {p} as a .keras archive: {_first_line(exc)}") from None


def _check_layers_safe(config: dict, trust_code: bool, custom_objects: dict) -> None:
    check_config(config, trust_code, custom_objects, tf_keras_layer)


def _keras_load(p: Path, custom_objects: dict, trust_code: bool, config: dict | None = None):
    from gencompress.loading import builtin_objects
    from gencompress.loading.checkpoint_layout import load_checkpoint_layout, uses_checkpoint_layout

    keras = import_keras()
    kwargs = {"compile": False, "custom_objects": {**builtin_objects(), **custom_objects}}
    if p.suffix == ".keras":
        kwargs["safe_mode"] = not trust_code
    try:
        if config is not None and uses_checkpoint_layout(p):  # written by tf.keras 2.13-2.15
            return load_checkpoint_layout(p, config, kwargs["custom_objects"])
        return keras.models.load_model(str(p), **kwargs)
    except (GencompressError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for a file it cannot load
        raise ModelLoadError(f"cannot load {p}: {_first_line(exc)}") from None


def _load_saved_model_dir(p: Path, trust_code: bool, custom_objects: dict) -> LoadedModel:
    if not (p / "saved_model.pb").exists() and not (p / "saved_model.pbtxt").exists():
        raise ModelLoadError(f"{p} is a directory but not a SavedModel (no saved_model.pb)")
    if (p / "keras_metadata.pb").exists():
        _check_saved_keras_metadata(p / "keras_metadata.pb", trust_code, custom_objects)
        return _from_keras(str(p), "savedmodel-keras", _keras_load(p, custom_objects, trust_code))
    tf = import_tf()
    try:
        loaded = tf.saved_model.load(str(p))
    except MemoryError:
        raise
    except Exception as exc:  # TF raises many kinds for a corrupt SavedModel
        raise ModelLoadError(f"cannot load SavedModel {p}: {_first_line(exc)}") from None
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise UnsupportedModelError(
            f"SavedModel {p} has no 'serving_default' signature "
            f"(it has: {', '.join(loaded.signatures) or 'none'})"
        )
    in_specs = signature.structured_input_signature[1]
    inputs = [_tensor_info(name, spec.shape, spec.dtype) for name, spec in sorted(in_specs.items())]
    outputs = [
        _tensor_info(name, spec.shape, spec.dtype)
        for name, spec in sorted(signature.structured_outputs.items())
    ]
    params = int(sum(np.prod(v.shape) for v in loaded.variables)) if hasattr(loaded, "variables") else 0
    model = LoadedModel(
        path=str(p), format="savedmodel", inputs=inputs, outputs=outputs, params=params,
        signature=signature,
    )
    model._saved_object = loaded  # keep the variables alive with the signature
    return model


def _check_saved_keras_metadata(meta_path: Path, trust_code: bool, custom_objects: dict) -> None:
    import_keras()  # TensorFlow's start-up, quietly, before tf_keras imports it
    from tf_keras.protobuf import saved_metadata_pb2

    meta = saved_metadata_pb2.SavedMetadata()
    try:
        meta.ParseFromString(read_document(meta_path, "Keras metadata", ModelLoadError))
    except GencompressError:
        raise
    except Exception as exc:  # protobuf's DecodeError
        raise ModelLoadError(f"cannot read {meta_path}: {_first_line(exc)}") from None
    layers = []
    for node in meta.nodes:
        try:
            info = json.loads(node.metadata)
        except ValueError:
            continue
        layers.append({"class_name": info.get("class_name"), "config": {"name": info.get("name")}})
    _check_layers_safe({"layers": layers}, trust_code, custom_objects)


def _from_keras(path: str, fmt: str, keras_model) -> LoadedModel:
    keras_model = traceable(keras_model)
    inputs = [
        _tensor_info(name, t.shape, t.dtype)
        for name, t in zip(keras_model.input_names, keras_model.inputs)
    ]
    outputs = [
        _tensor_info(name, t.shape, t.dtype)
        for name, t in zip(keras_model.output_names, keras_model.outputs)
    ]
    model = LoadedModel(
        path=path,
        format=fmt,
        inputs=inputs,
        outputs=outputs,
        params=int(keras_model.count_params()),
        keras_model=keras_model,
        output_activation=_output_activation(keras_model),
        label_ranges=_embedding_ranges(keras_model),
    )
    return model


def _tensor_info(name, shape, dtype) -> TensorInfo:
    dims = tuple(None if d is None else int(d) for d in list(shape))
    dtype = getattr(dtype, "as_numpy_dtype", dtype)
    return TensorInfo(name=name, shape=(None,) + dims[1:], dtype=np.dtype(dtype).name)


def _check_static_shapes(model: LoadedModel) -> None:
    for kind, tensors in (("input", model.inputs), ("output", model.outputs)):
        for t in tensors:
            dtype = np.dtype(t.dtype)
            if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
                raise UnsupportedModelError(
                    f"{kind} '{t.name}' holds {'strings' if t.dtype == 'object' else t.dtype}: "
                    "gencompress handles numeric inputs and outputs only (latents, labels, images)"
                )
    for t in model.inputs:
        if any(d is None for d in t.shape[1:]):
            raise UnsupportedModelError(
                f"input '{t.name}' has unknown dimensions {list(t.shape)}: "
                "gencompress needs fixed input shapes (all but the batch); give the size you deploy at with --input-shape, "
                f"e.g. --input-shape {','.join(str(d or 256) for d in t.shape[1:])}"
            )


def with_input_shapes(model: LoadedModel, input_shape) -> LoadedModel:
    """``model`` rebuilt on inputs of fixed shapes (``load_model``'s ``input_shape``): the same
    layers and weights, called on new inputs. Only unknown dimensions may be set; a Keras model
    is needed (a plain SavedModel's signature is fixed)."""
    from gencompress.errors import OptionError

    shapes = input_shape if isinstance(input_shape, dict) else {model.inputs[0].name: input_shape} if len(model.inputs) == 1 else None
    if shapes is None:
        raise OptionError(f"--input-shape: the model has {len(model.inputs)} inputs: give NAME:SHAPE for each")
    unknown = sorted(set(shapes) - {t.name for t in model.inputs})
    if unknown:
        raise OptionError(f"--input-shape: no input named {', '.join(unknown)} (inputs: {', '.join(t.name for t in model.inputs)})")
    for t in model.inputs:
        shape = tuple(int(d) for d in shapes.get(t.name, t.shape[1:]))
        if len(shape) != len(t.shape) - 1 or any(d < 1 for d in shape):
            raise OptionError(f"--input-shape: input '{t.name}' has shape {list(t.shape)}: give {len(t.shape) - 1} dimensions >= 1, not {list(shape)}")
        if any(known is not None and known != d for known, d in zip(t.shape[1:], shape)):
            raise OptionError(f"--input-shape: input '{t.name}' is {list(t.shape)}: only its unknown dimensions can be set, not {list(shape)}")
    if model.keras_model is None:
        raise UnsupportedModelError("--input-shape needs a Keras model: a plain SavedModel's signature fixes its shapes")
    keras = import_keras()
    km = model.keras_model
    fresh = [keras.Input(batch_shape=(None,) + tuple(int(d) for d in shapes.get(n, t.shape[1:])), dtype=t.dtype, name=n)
             for n, t in zip(km.input_names, km.inputs)]
    try:
        rebuilt = keras.models.clone_model(km, input_tensors=fresh if len(fresh) > 1 else fresh[0])
        rebuilt.set_weights(km.get_weights())
    except (ValueError, TypeError) as exc:
        raise UnsupportedModelError(f"cannot rebuild the model on --input-shape {shapes}: {_first_line(exc)}") from None
    return _from_keras(model.path, model.format, rebuilt)


def _output_activation(keras_model) -> str | None:
    """'tanh'/'sigmoid' when every output ends in that activation, else None."""
    names = {_final_activation(out) for out in keras_model.outputs}
    name = names.pop() if len(names) == 1 else None
    return name if name in _BOUNDED_ACTIVATIONS else None


def _final_activation(tensor) -> str | None:
    layer, _, index = tensor._keras_history
    # An output produced by a nested model (a Sequential generator body inside a functional
    # model) ends in that model's own output layer.
    while layer.__class__.__name__ in MODEL_CLASSES and getattr(layer, "outputs", None):
        layer, _, index = layer.outputs[index]._keras_history
    symbol = getattr(layer, "symbol", None)  # TFOpLambda: tf.math.tanh(x) as the last op
    if isinstance(symbol, str):
        return _ACTIVATION_SYMBOLS.get(symbol)
    return getattr(getattr(layer, "activation", None), "__name__", None)


def _embedding_ranges(keras_model) -> dict:
    """For label inputs, the number of valid ids (``input_dim``) of the Embedding they feed.
    A float input read by an Embedding is a label too: Keras 3's ``Input(shape=(1,))`` is
    float32 by default, and a conditional GAN saved so (label → Embedding) got standard-normal
    "labels" such as -1 from noise calibration, which the Embedding refused."""
    keras = import_keras()
    ranges = {}
    for name, tensor in zip(keras_model.input_names, keras_model.inputs):
        for layer in iter_layers(keras_model):
            if isinstance(layer, keras.layers.Embedding) and _consumes(layer, tensor):
                ranges[name] = int(layer.input_dim)
    return ranges


def _consumes(layer, tensor) -> bool:
    for node in layer._inbound_nodes:
        for t in node.keras_inputs if hasattr(node, "keras_inputs") else []:
            if t is tensor or t.ref() == tensor.ref():
                return True
    return False


def iter_layers(keras_model):
    """Every layer, nested models flattened into their own layers."""
    for layer in keras_model.layers:
        if hasattr(layer, "layers") and layer.__class__.__name__ in MODEL_CLASSES:
            yield from iter_layers(layer)
        else:
            yield layer


def iter_models(keras_model):
    """The model and every model nested in it."""
    yield keras_model
    for layer in keras_model.layers:
        if hasattr(layer, "layers") and layer.__class__.__name__ in MODEL_CLASSES:
            yield from iter_models(layer)


def _shape_str(shape) -> str:
    if shape is None:
        return "?"
    if isinstance(shape, list):
        return ", ".join(_shape_str(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"



def from_keras(keras_model, name: str | None = None) -> LoadedModel:
    """A ``LoadedModel`` of an in-memory Keras model: tf-keras as it is, Keras 3 bridged to an
    equivalent tf-keras model (verified output-equal to 1e-5). ``name`` names its artifacts
    (default: the model's name). The model is used, never modified."""
    from gencompress.errors import UnsupportedModelError

    keras = import_keras()
    name = name or getattr(keras_model, "name", None) or "model"
    if isinstance(keras_model, keras.Model):
        loaded = _from_keras(name, "keras-object", keras_model)
        _check_static_shapes(loaded)
        return loaded
    module = type(keras_model).__module__
    if module.startswith("keras"):
        from gencompress.bridge import keras3_to_tf_keras

        loaded = _from_keras(name, "keras3-object", keras3_to_tf_keras(keras_model))
        _check_static_shapes(loaded)
        return loaded
    raise UnsupportedModelError(f"not a Keras model: {type(keras_model).__name__}")


def flat_copy(keras_model):
    """``keras_model`` itself when no layer is a whole model, else a functional copy with every
    nested Sequential's layers inlined (same weights, same input names; each nested model's last
    layer takes the nested model's name, which is what the parent's graph and output names knew
    it by). Published generators often wrap a Sequential body in a functional model (catgan's
    Input -> Sequential); tfmot and the student builder need the layers at the top level.

    Only public Keras API: the parent's connectivity is read from ``get_config()``, each layer is
    rebuilt with ``from_config`` and given the original's weights, and the copy is checked to
    give the original's outputs on a seeded batch. Raises ``UnsupportedModelError`` otherwise.
    """
    if not any(type(layer).__name__ in MODEL_CLASSES for layer in keras_model.layers):
        return keras_model
    keras = import_keras()
    if isinstance(keras_model, keras.Sequential):
        raise UnsupportedModelError(f"'{keras_model.name}' nests models inside a Sequential: rebuild it flat")
    config = keras_model.get_config()
    tensors, copies = {}, {}
    for name, _, _ in config["input_layers"]:
        layer = keras_model.get_layer(name)
        tensors[(name, 0, 0)] = keras.Input(batch_shape=layer.output.shape, dtype=layer.output.dtype, name=name)
    for entry in config["layers"]:
        layer = keras_model.get_layer(entry["name"])
        if type(layer).__name__ == "InputLayer":
            continue
        # Keras numbers a nested model's calls from 1 (its node 0 is its own construction).
        offset = 1 if type(layer).__name__ in MODEL_CLASSES and getattr(layer, "inputs", None) else 0
        for node_index, node in enumerate(entry["inbound_nodes"], start=offset):
            args = [tensors[(n[0], n[1], n[2])] for n in node]
            kwargs = node[0][3] if len(node[0]) > 3 and isinstance(node[0][3], dict) else {}
            out = _inlined(keras, layer, args[0] if len(args) == 1 else args, kwargs, copies)
            for i, t in enumerate(out if isinstance(out, (list, tuple)) else [out]):
                tensors[(entry["name"], node_index, i)] = t
    outputs = [tensors[(n, i, j)] for n, i, j in config["output_layers"]]
    flat = keras.Model([tensors[(n, 0, 0)] for n, _, _ in config["input_layers"]], outputs if len(outputs) > 1 else outputs[0],
                       name=keras_model.name)
    _check_same_outputs(keras_model, flat)
    return flat


def _inlined(keras, layer, x, kwargs, copies, rename=None):
    """``layer`` applied to ``x`` in the flat copy: a copy of it with its weights (one copy per
    layer: shared layers stay shared), or a nested Sequential's layers one after the other."""
    if type(layer).__name__ in MODEL_CLASSES:
        if not isinstance(layer, keras.Sequential):
            raise UnsupportedModelError(f"layer '{layer.name}' is a nested functional model: rebuild the model flat")
        inner = [lyr for lyr in layer.layers if type(lyr).__name__ != "InputLayer"]
        for i, lyr in enumerate(inner):
            x = _inlined(keras, lyr, x, {}, copies, rename=layer.name if i == len(inner) - 1 else None)
        return x
    fresh = layer.name not in copies
    if fresh:
        layer_config = layer.get_config()
        if rename:
            layer_config["name"] = rename
        copies[layer.name] = type(layer).from_config(layer_config)
    y = copies[layer.name](x, **kwargs)
    if fresh:
        copies[layer.name].set_weights(layer.get_weights())
    return y


def _check_same_outputs(original, flat) -> None:
    """The flat copy computes what the original does (on a seeded batch of 2; labels 0)."""
    rng = np.random.default_rng(0)
    batch = [
        rng.standard_normal((2,) + tuple(t.shape[1:])).astype(t.dtype.name) if t.dtype.is_floating else np.zeros((2,) + tuple(t.shape[1:]), t.dtype.name)
        for t in original.inputs
    ]
    batch = batch[0] if len(batch) == 1 else batch
    a, b = original(batch, training=False), flat(batch, training=False)
    a, b = (a if isinstance(a, (list, tuple)) else [a]), (b if isinstance(b, (list, tuple)) else [b])
    for x, y in zip(a, b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape or not np.allclose(x, y, rtol=1e-4, atol=1e-5 * (1.0 + np.abs(x).max())):
            raise UnsupportedModelError(f"'{original.name}' nests models that could not be inlined faithfully: rebuild it flat")
