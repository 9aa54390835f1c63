"""``.keras`` archives written by tf.keras 2.13 to 2.15, whose weights file tf-keras 2.21 cannot read.

Those versions stored each layer's weights under ``_layer_checkpoint_dependencies/<name>/vars/<i>``
where ``<name>`` is the layer's *generic* name (``conv2d``, ``conv2d_1``, ... per class, in the
order the layers were made), not the name in the config (``Conv1``). tf-keras 2.21 looks each
layer up by its config name, finds nothing and stops ("Layer 'Conv1' expected 2 variables, but
received 0 variables during loading"): a published document-cleaning autoencoder would not load.
The model is built from its (already checked) config and each layer gets the weights stored
under its generic name; every array's shape is checked against the layer's.
"""

from __future__ import annotations

import re
import zipfile

from gencompress.errors import ModelLoadError

GROUP = "_layer_checkpoint_dependencies"


def uses_checkpoint_layout(path) -> bool:
    """The archive's weights file is in the tf.keras 2.13-2.15 layout."""
    import h5py

    try:
        with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as entry, h5py.File(entry, "r") as f:
            return GROUP in f and "layers" not in f
    except (KeyError, OSError, zipfile.BadZipFile):
        return False


def _snake(name: str) -> str:
    """Keras' generic layer name of a class (``Conv2D`` -> ``conv2d``, ``UpSampling2D`` -> ``up_sampling2d``)."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def load_checkpoint_layout(path, config: dict, custom_objects: dict):
    """The model of ``config`` with the weights of the archive at ``path`` (see the module)."""
    import h5py

    from gencompress.tfenv import import_keras

    keras = import_keras()
    with keras.utils.custom_object_scope(custom_objects):
        model = keras.models.model_from_config(config)
    seen: dict = {}
    with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as entry, h5py.File(entry, "r") as f:
        stored = f[GROUP]
        for layer in model.layers:
            base = _snake(type(layer).__name__)
            k = seen.get(base, 0)
            seen[base] = k + 1
            if not layer.weights:
                continue
            key = base if k == 0 else f"{base}_{k}"
            group = stored.get(f"{key}/vars")
            arrays = [group[str(i)][()] for i in range(len(group))] if group is not None else []
            shapes = [tuple(w.shape) for w in layer.weights]
            if [tuple(a.shape) for a in arrays] != shapes:
                raise ModelLoadError(
                    f"cannot load {path}: its tf.keras 2.13-2.15 weights file has no arrays of shapes {shapes} under "
                    f"'{key}' for layer '{layer.name}'"
                )
            layer.set_weights(arrays)
    return model
