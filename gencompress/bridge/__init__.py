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

import json
import os
import zipfile
from typing import TYPE_CHECKING

from gencompress.bridge.code_check import check_code
from gencompress.bridge.common import one_line, log
from gencompress.bridge.rebuild import _convert_model, _copy_weights
from gencompress.bridge.verify import _locate_mismatch, _max_abs_error_on, _random_inputs
from gencompress.errors import GencompressError, ModelLoadError, UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    import keras
    import tf_keras


__all__ = ["load_keras3_file", "keras3_to_tf_keras", "is_keras3_file", "max_abs_error", "TOLERANCE"]




#: Largest absolute output difference accepted between the Keras 3 model and its bridge.
TOLERANCE = 1e-5


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
        raise ModelLoadError(f"cannot load {path}: {one_line(exc)}") from exc
    version = meta.get("keras_version")
    if not (isinstance(version, str) and version.split(".")[0] == "3"):
        raise ModelLoadError(
            f"cannot load {path}: it was written by Keras {version or '(unknown version)'}, "
            "not Keras 3; load it with tf-keras instead"
        )
    check_code(config, trust_code)

    keras, _tf_keras = import_backends()
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=not trust_code)
    except (GencompressError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; report one line
        msg = one_line(exc)
        if "safe_mode" in msg:
            raise UnsupportedModelError(
                f"{path}: Keras refused to deserialize Python code from the file in safe mode "
                f"({msg[:200]}); pass --trust-code to allow it"
            ) from exc
        raise ModelLoadError(f"Keras 3 could not load {path}: {msg}") from exc
    from gencompress.loading.h5 import check_archive_weights_used

    check_archive_weights_used(path, len(model.variables))
    return keras3_to_tf_keras(model)


def keras3_to_tf_keras(model: "keras.Model", *, atol: float = TOLERANCE) -> "tf_keras.Model":
    """Rebuild a Keras 3 Sequential or functional model as tf-keras, copy weights, verify.

    Layer names, input names, output names and the graph topology (including
    multiple inputs/outputs, list-input merge layers, shared layers and nested
    Sequential/functional models) are kept.  The bridge is verified on seeded
    random inputs: the largest absolute output difference must be <= ``atol``
    (default 1e-5), otherwise ``UnsupportedModelError`` is raised, naming the
    first layer whose output differs when that can be told.
    """
    keras, tf_keras = import_backends()
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
    import_backends()
    return _max_abs_error_on(keras3_model, tf_keras_model, _random_inputs(keras3_model, seed))


def _read_json_member(path: str, member: str) -> dict:
    from gencompress.limits import ARCHIVE_ERRORS, read_zip_member

    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"cannot load {path}: not a .keras archive (not a zip file)")
    try:
        with zipfile.ZipFile(path) as zf:
            raw = read_zip_member(zf, member, f"cannot load {path}", ModelLoadError)
    except KeyError:
        raise ModelLoadError(f"cannot load {path}: the archive has no {member}") from None
    except ARCHIVE_ERRORS as exc:
        raise ModelLoadError(f"cannot load {path}: {one_line(exc)}") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(f"cannot load {path}: {member} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"cannot load {path}: {member} is not a JSON object")
    return data


def _read_metadata(path: str) -> dict:
    return _read_json_member(path, "metadata.json")


def import_backends():
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
