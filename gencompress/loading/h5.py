"""Load a Keras ``.h5`` model file, whichever Keras wrote it.

tf-keras files are built from their checked config with ``model_from_config`` (with
``--trust-code``, the functions of Lambda layers already made by ``old_lambdas``) and get their
weights from the file's ``model_weights`` group: loading the file with ``load_model`` would
deserialize the config as stored, Lambda bytecode included. The input file is only ever opened
for reading.

Files written by Keras 3 (root attribute ``keras_version`` 3.x) use Keras 3 config objects
(``DTypePolicy``, ``batch_shape``) that tf-keras cannot read: after the same safety check they are
loaded with Keras 3's own legacy ``.h5`` loader and bridged to tf-keras, like ``.keras`` files
written by Keras 3.
"""

from __future__ import annotations

from pathlib import Path

from gencompress.errors import GencompressError, ModelLoadError
from gencompress.limits import MAX_DOCUMENT_BYTES
from gencompress.tfenv import import_keras


def read_h5_config(p: Path) -> tuple[dict, str]:
    """The model config of an ``.h5`` file and the Keras version that wrote it ("" if unsaid)."""
    import h5py

    try:
        with h5py.File(p, "r") as f:
            if "model_config" in f.attrs and f.attrs.get_id("model_config").get_storage_size() > MAX_DOCUMENT_BYTES:
                raise ModelLoadError(f"cannot load {p}: its model config is over {MAX_DOCUMENT_BYTES // 2**20} MiB, the most gencompress reads")
            raw = f.attrs.get("model_config")
            version = f.attrs.get("keras_version", "")
    except (GencompressError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, RuntimeError, KeyError... for a damaged file
        raise ModelLoadError(f"cannot read {p} as HDF5: {first_line(exc)}") from None
    if raw is None:
        raise ModelLoadError(f"{p} holds no model config (weights-only .h5 files are not models)")
    version = version.decode() if isinstance(version, bytes) else str(version)
    try:
        import_keras()  # TensorFlow first, quietly
        from gencompress.compat.tf_keras import json_utils

        config = json_utils().decode(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise ModelLoadError(f"{p}: model config is not valid JSON: {first_line(exc)}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{p}: model config is not a JSON object")
    return config, version


def load_h5(p: Path, trust_code: bool, user_objects: dict):
    """A tf-keras model from an ``.h5`` file and the format name ("h5" or "h5-keras3")."""
    config, version = read_h5_config(p)
    if version.startswith("3"):
        return _load_keras3_h5(p, config, trust_code), "h5-keras3"
    from gencompress.loading import builtin_objects
    from gencompress.loading.config_check import check_config, tf_keras_layer

    normalize_old_config(config)
    check_config(config, trust_code, user_objects, tf_keras_layer)
    if trust_code:
        from gencompress.loading.old_lambdas import build_lambda_functions

        build_lambda_functions(config, user_objects)
    keras = import_keras()
    from gencompress.compat.tf_keras import safe_mode_scope

    try:
        # Lambdas reach this point only with trust_code (the check refused them otherwise).
        with safe_mode_scope(not trust_code):
            model = keras.models.model_from_config(config, custom_objects={**builtin_objects(), **user_objects})
    except (GencompressError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for a config it cannot build
        raise ModelLoadError(f"cannot load {p}: {first_line(exc)}") from None
    _load_weights(p, model)
    return model, "h5"


def normalize_old_config(node, name=None) -> None:
    """Give Keras 2.1's bare-list Sequential configs the ``{"name", "layers"}`` shape, in place.

    tf-keras reads the bare list too, but then names the model afresh ("sequential_3"); the
    nested model's name is what its functional parent's graph and outputs are known by.
    """
    if isinstance(node, list):
        for item in node:
            normalize_old_config(item)
        return
    if not isinstance(node, dict):
        return
    cfg = node.get("config")
    if node.get("class_name") == "Sequential" and isinstance(cfg, list):
        node["config"] = cfg = {"name": node.get("name") or name or "sequential", "layers": cfg}
    if isinstance(cfg, dict):
        for key in ("layers", "layer", "backward_layer"):
            if isinstance(cfg.get(key), (list, dict)):
                normalize_old_config(cfg[key])


def _load_weights(p: Path, model) -> None:
    import h5py
    from gencompress.compat.tf_keras import load_weights_from_hdf5_group

    try:
        with h5py.File(p, "r") as f:
            if "model_weights" not in f:
                raise ModelLoadError(f"cannot load {p}: it holds a model config but no model_weights group")
            load_weights_from_hdf5_group(f["model_weights"], model)
    except (GencompressError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - h5py and tf-keras raise many kinds for bad weights
        raise ModelLoadError(f"cannot load {p}: {first_line(exc)}") from None


def _load_keras3_h5(p: Path, config: dict, trust_code: bool):
    from gencompress.bridge import check_code, import_backends, one_line, keras3_to_tf_keras
    from gencompress.loading.config_check import check_config, keras3_layer

    check_config(
        config, trust_code, {}, keras3_layer,
        custom_hint="gencompress loads Keras 3 files by rebuilding them with built-in tf-keras layers only",
    )  # fmt: skip
    check_code(config, trust_code)  # Keras 3 serialized functions and lambdas anywhere in it
    keras, _ = import_backends()
    try:
        model = keras.saving.load_model(str(p), compile=False, safe_mode=not trust_code)
    except (GencompressError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; report one line
        raise ModelLoadError(f"Keras 3 could not load {p}: {one_line(exc)}") from None
    return keras3_to_tf_keras(model)


def first_line(exc: BaseException) -> str:
    """The error in one line. tf-keras' call errors put the cause on the line after
    "Exception encountered when calling layer ...": that line is kept too."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if text.startswith("Exception encountered when calling") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return text[:400]



def check_archive_weights_used(p, n_variables: int) -> None:
    """Keras' ``.keras`` loaders (tf-keras and Keras 3) silently drop stored weights that no layer
    of the config asks for: more stored arrays than the model has means config and weights
    belong to different models."""
    stored = _archive_weight_count(p)
    if stored is not None and stored > n_variables:
        raise ModelLoadError(
            f"cannot load {p}: its weights file holds {stored} arrays but its config builds a model "
            f"with {n_variables}; weights and config do not match"
        )


def _archive_weight_count(p) -> int | None:
    import zipfile

    import h5py

    from gencompress.limits import ARCHIVE_ERRORS

    # Read through the archive (h5py seeks in the entry), never whole: the entry may be gigabytes.
    try:
        with zipfile.ZipFile(p) as z, z.open("model.weights.h5") as entry, h5py.File(entry, "r") as f:
            if "layers" not in f:
                return None
            count = 0

            def visit(_, obj):
                nonlocal count
                count += isinstance(obj, h5py.Dataset)

            f["layers"].visititems(visit)
            return count
    except (*ARCHIVE_ERRORS, KeyError, ValueError):
        return None
