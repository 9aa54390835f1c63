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
