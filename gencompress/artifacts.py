"""Writing artifacts atomically: a temp file beside the target, then a rename."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    On any error the temporary file is removed, so a failed run leaves no half-written artifact.
    ``suffix`` ends the temporary name: writers that pick a format from the suffix (Keras
    ``model.save``: ``.h5`` or ``.keras``) need the target's own.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)
    return Path(target)


def derived_model_path(model, output_dir, tag: str) -> Path:
    """Where a model derived from ``model`` goes: ``<stem>-<tag>.h5`` for an ``.h5`` input,
    ``<stem>-<tag>.keras`` otherwise (a SavedModel or Keras 3 input comes back as tf-keras)."""
    suffix = ".h5" if model.format == "h5" else ".keras"
    return Path(output_dir) / f"{model.stem}-{tag}{suffix}"


def save_keras_atomic(keras_model, path: Path) -> Path:
    """Save a tf-keras model (format from the suffix) via a temp file and a rename."""
    import warnings

    with atomic_path(path, suffix=path.suffix) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf-keras calls .h5 "legacy": it is what the user gave us
        keras_model.save(tmp)  # not compiled: no optimizer state goes in
    return Path(path)
