"""Model names TensorFlow refuses to trace.

Keras lets a model be named anything ("my model", a name with a newline), but TensorFlow opens a
name scope named after the model when it traces it, and refuses any name outside
``[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*``: the TFLite converter and tf2onnx then fail with "is not a
valid root scope name". Layer names are checked by Keras as the model is built, so a file whose
layers have such names does not load at all (one line, exit 2).
"""

from __future__ import annotations

import re

from gencompress.tfenv import import_keras

_VALID_SCOPE = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.\\/>-]")


def traceable_name(name: str) -> str:
    """``name`` with every character TensorFlow refuses in a scope name replaced by ``_``."""
    if _VALID_SCOPE.match(name):
        return name
    safe = _INVALID_CHARS.sub("_", name)
    return safe if _VALID_SCOPE.match(safe) else f"model{safe}"


def traceable(keras_model):
    """``keras_model`` itself, or when TensorFlow would refuse its name, a functional model over
    the same layers (same weights, same input and output names) under a name it takes. The
    given model is not changed."""
    name = keras_model.name
    safe = traceable_name(name)
    if safe == name or not getattr(keras_model, "inputs", None):
        return keras_model
    keras = import_keras()
    outputs = keras_model.outputs
    return keras.Model(keras_model.inputs, outputs if len(outputs) > 1 else outputs[0], name=safe)
