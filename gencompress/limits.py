"""Limits on what a run reads and the names it makes: every input file is someone else's data.

- **Special files** (FIFOs, sockets, devices) are refused before they are opened: opening a FIFO
  waits for a writer forever, and a device such as ``/dev/zero`` never ends.
- **Documents are read up to a size**: a JSON or TOML document (a ``.keras`` archive's
  ``config.json`` and ``metadata.json``, an ``.h5`` file's model config, a recipe, a report) is
  refused past ``MAX_DOCUMENT_BYTES`` without reading the rest. An archive entry's size is the one
  its zip directory declares, checked before anything is inflated (``zipfile`` never inflates an
  entry past its declared size, so the check bounds the read).
- **Names are checked where they are made**: a file system refuses one name over ``NAME_MAX``
  bytes (``File name too long``); the names a run writes add up to ``STEM_MARGIN`` bytes to the
  model's file name, so a model name longer than ``max_stem_bytes`` is refused before loading.

Memory is the other limit of the machine: ``gencompress.memory``.
"""

from __future__ import annotations

import lzma
import os
import stat
import zipfile
import zlib
from pathlib import Path

from gencompress.errors import InputError

# The largest JSON/TOML document read whole: configs of real generators are kilobytes to a few
# megabytes (a 1,000-layer model's config.json is about 1 MiB).
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
# One file or folder name, in bytes, on Linux file systems (ext4, xfs, btrfs, tmpfs): the fallback
# when the file system cannot be asked (``os.pathconf``).
NAME_MAX = 255
# The most the run adds to a model's stem in a name it writes: "-pruned" + "-pruned-qat" +
# ".int16x8" + ".tflite", or the temporary name a saved model is written through
# (".<stem>-student.keras.XXXXXXXX.keras").
STEM_MARGIN = 48
# What ``zipfile`` raises on a damaged or unusual archive: a bad directory, a corrupt compressed
# stream, a truncated entry, a compression method or an encryption it cannot read.
ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, RuntimeError, OSError)


def _kind(mode: int) -> str | None:
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return None


def special_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is not a regular file or folder (a FIFO, a socket, a device),
    following symbolic links; ``None`` otherwise (or when it does not exist)."""
    try:
        return _kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


def refuse_special(path: str | os.PathLike, what: str, error=InputError) -> None:
    """Raise ``error`` (one line) when ``path`` is a FIFO, socket or device: before it is opened."""
    kind = special_file(path)
    if kind is not None:
        raise error(f"{what} {path} is {kind}, not a file: gencompress reads regular files only")


def refuse_special_inside(folder: str | os.PathLike, what: str, error=InputError) -> None:
    """``refuse_special`` for every entry under ``folder`` (a SavedModel): TensorFlow opens them."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            kind = special_file(path)
            if kind is not None:
                raise error(f"{what} {folder}: {path.relative_to(folder)} is {kind}, not a file")


def read_document(path: str | os.PathLike, what: str, error=InputError, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of a document (recipe, report) of at most ``limit`` bytes; special files refused."""
    refuse_special(path, what, error)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{what} {path} is over {_mib(limit)}: gencompress reads documents up to that size")
    return data


def read_zip_member(archive, name: str, what: str, error=InputError, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """Entry ``name`` of an open ``zipfile.ZipFile``, refused when its declared size is over
    ``limit`` (before anything is inflated). ``KeyError`` when there is no such entry."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise error(f"{what}: {name} inflates to {_mib(info.file_size)}, over the {_mib(limit)} gencompress reads")
    with archive.open(info) as f:
        return f.read(limit + 1)


def name_max(folder: str | os.PathLike) -> int:
    """The longest name (bytes) the file system of ``folder`` (or its nearest existing parent) takes."""
    for p in [Path(folder), *Path(folder).parents]:
        try:
            if p.is_dir():
                return int(os.pathconf(p, "PC_NAME_MAX"))
        except (OSError, ValueError):
            continue
    return NAME_MAX


def check_name(name: str, folder: str | os.PathLike, what: str = "file name", reserve: int = 0) -> None:
    """Refuse a name the file system of ``folder`` would refuse as too long, before writing it;
    ``reserve``: bytes a temporary name made from it adds."""
    limit = name_max(folder) - reserve
    size = len(os.fsencode(name))
    if size > limit:
        raise InputError(f"{what} {_short(name)} is {size} bytes: over the file system's {limit}-byte limit for one name")


def check_path_names(path: str | os.PathLike, what: str) -> None:
    """Every part of ``path`` (an output folder to create) within the file system's name limit."""
    path = Path(path)
    parts = [p for p in path.parts if p != os.sep]
    for part in parts:
        check_name(part, path, f"{what} name" if len(parts) == 1 else f"{what} {_short(str(path))}: the part")


def max_stem_bytes(folder: str | os.PathLike = ".") -> int:
    """The longest model stem whose artifact names (and their temporary names) all fit in a name."""
    return name_max(folder) - STEM_MARGIN


def check_stem(stem: str, folder: str | os.PathLike = ".") -> None:
    """Refuse a model whose file name would make artifact names longer than a file system takes."""
    limit = max_stem_bytes(folder)
    size = len(os.fsencode(stem))
    if size > limit:
        raise InputError(
            f"model name {_short(stem)} is {size} bytes: the artifacts named after it would pass the file system's "
            f"{name_max(folder)}-byte limit for one name; give the model a name of at most {limit} bytes"
        )


def _short(name: str, keep: int = 40) -> str:
    """A long name as its start and end, enough to recognise it in one line."""
    from gencompress.printable import printable

    name = printable(name)
    return f"'{name}'" if len(name) <= 2 * keep else f"'{name[:keep]}…{name[-keep // 2:]}'"


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:,.0f} MiB" if n >= 1024 * 1024 else f"{n:,} bytes"
