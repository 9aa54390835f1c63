"""Reading calibration arrays from ``.npy`` and ``.npz`` files: headers first, data second.

Each array's header (its shape and dtype) is read and checked before its data: a dtype of Python
objects is refused without unpickling anything (``.npz`` members too, which ``np.load`` only
refuses when the member is read, with a traceback), a header that declares more bytes than the
file holds is a truncated file, and the declared size must fit in memory (a few hundred bytes of
``.npz`` can declare a terabyte-sized array, which ``np.load`` would allocate before reading).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from gencompress.errors import CalibrationError, GencompressError
from gencompress.limits import refuse_special
from gencompress.memory import check_fits, gib, shape_text

_NPY_MAGIC = b"\x93NUMPY"


def load_arrays(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """The array of a ``.npy`` file, or the arrays of a ``.npz`` keyed by name; every header
    checked before its data is read."""
    refuse_special(path, "calibration file", CalibrationError)
    try:
        with open(path, "rb") as f:
            start = f.read(len(_NPY_MAGIC))
            f.seek(0)
            if start == _NPY_MAGIC:
                shape, dtype = _header(f, path.name)
                _check(shape, dtype, os.fstat(f.fileno()).st_size - f.tell(), f"{path}")
                f.seek(0)
                return np.load(f, allow_pickle=False)
        with zipfile.ZipFile(path) as archive:
            return {_member_name(info): _member(archive, info, path) for info in archive.infolist() if info.filename.endswith(".npy")}
    except (GencompressError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile and numpy's header parser (tokenize) raise many kinds for a damaged file
        raise CalibrationError(f"cannot read {path}: {_first_line(exc)}") from None


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    where = f"{path} ({info.filename})"
    with archive.open(info) as f:
        shape, dtype = _header(f, where)
        _check(shape, dtype, info.file_size - f.tell(), where)
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _header(f, where: str) -> tuple[tuple, np.dtype]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    if dtype.hasobject:
        raise CalibrationError(
            f"{where} holds Python objects (dtype {dtype}): loading them would unpickle code from the file; "
            "gencompress reads numeric arrays only"
        )
    return tuple(shape), dtype


def _check(shape: tuple, dtype: np.dtype, held: int, where: str) -> None:
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > held:
        raise CalibrationError(f"{where} is truncated: its header declares {shape_text(shape)} {dtype} ({gib(declared)}), the file holds {gib(max(held, 0))}")
    check_fits(declared, f"{where}: an array of {shape_text(shape)} {dtype}")


def _member_name(info: zipfile.ZipInfo) -> str:
    return info.filename[: -len(".npy")]


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
