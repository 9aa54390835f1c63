"""Writing a run's files: whole or not at all, with the user's umask.

A run builds its artifacts in a scratch folder; ``save_files`` then writes them into a staging
folder inside the output folder and renames each into place, so the output folder never holds
half a file, and a failure before the renames leaves it as it was. Temporary files get the mode
an ordinary ``open()`` would give (``mkstemp`` creates 0600 files, and a rename keeps the mode).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

STAGING_PREFIX = ".gencompress-staging-"


def file_mode() -> int:
    """The mode a new file gets from the process's umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    On any error the temporary file is removed, so a failed write leaves no half-written file.
    ``suffix`` ends the temporary name: writers that pick a format from the suffix (Keras
    ``model.save``: ``.h5`` or ``.keras``) need the target's own.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)
    return Path(target)


def save_files(files: dict[str, str | os.PathLike | bytes], out: str | os.PathLike) -> dict[str, Path]:
    """Write ``files`` (name → source path or bytes) into folder ``out``, all together.

    Everything is first written into a staging folder inside ``out`` (same filesystem, so the
    renames are atomic), then each file is renamed into place. A failure while staging (a full
    disk) leaves ``out`` untouched; the staging folder is removed whatever happens. Returns the
    final path of each file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    mode = file_mode()
    try:
        for name, source in files.items():
            staged = staging / name
            if isinstance(source, (bytes, bytearray)):
                staged.write_bytes(source)
            else:
                shutil.copyfile(source, staged)
            os.chmod(staged, mode)
        placed = {}
        for name in files:
            os.replace(staging / name, out / name)
            placed[name] = out / name
        return placed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_keras(keras_model, path: str | os.PathLike) -> Path:
    """Save a tf-keras model (format from the suffix: ``.h5`` or ``.keras``), not compiled."""
    import warnings

    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf-keras calls .h5 "legacy": it is what the user gave us
        keras_model.save(tmp)  # not compiled: no optimizer state goes in
    return path


def derived_model_name(model, tag: str) -> str:
    """The file name of a model derived from ``model``: ``<stem>-<tag>.h5`` for an ``.h5`` input,
    ``<stem>-<tag>.keras`` otherwise (a SavedModel or Keras 3 input comes back as tf-keras)."""
    suffix = ".h5" if model.format == "h5" else ".keras"
    return f"{model.stem}-{tag}{suffix}"
