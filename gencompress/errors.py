"""Error kinds. The CLI turns each into one line on stderr and an exit code.

Anything that is not a ``GencompressError`` is a bug and keeps its traceback.
"""

import errno

EXIT_BAD_INPUT = 2
EXIT_FIDELITY = 3
EXIT_CONVERSION = 4
EXIT_OUTPUT = 5
# Stopped by a signal: 128 + its number, as a shell reports it (see ``gencompress.interrupts``).
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

# Errors of the machine, not of the model or the options: the disk, the folder's permissions.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")


class GencompressError(Exception):
    """Base of every error the user can act on."""

    exit_code = 1


class InputError(GencompressError):
    """Bad input: a missing or corrupt file, a wrong option value."""

    exit_code = EXIT_BAD_INPUT


class ModelLoadError(InputError):
    """The model file cannot be read as a model."""


class UnsupportedModelError(InputError):
    """The model loads but uses something gencompress cannot handle (or was not trusted to run)."""


class CalibrationError(InputError):
    """Calibration or evaluation data is missing, empty, or of the wrong shape, dtype or values."""


class OptionError(InputError):
    """An option or recipe value is out of range or inconsistent."""


class ConversionError(GencompressError):
    """A converter or runtime failed on a model that loaded fine."""

    exit_code = EXIT_CONVERSION


class FidelityError(GencompressError):
    """No artifact met the requested fidelity target."""

    exit_code = EXIT_FIDELITY


class OutputError(GencompressError):
    """The output cannot be written: the folder cannot be created or written, or the disk is full."""

    exit_code = EXIT_OUTPUT


class ResourceError(GencompressError):
    """The machine cannot hold the run: not enough memory or address space (exit 5, like a full disk)."""

    exit_code = EXIT_OUTPUT


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a full disk or quota. Converters turn
    the ``OSError`` into their own error kinds, keeping at most its text."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def out_of_memory(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a failed allocation: Python's
    ``MemoryError`` (numpy's too) or TensorFlow's ``ResourceExhaustedError`` ("OOM when
    allocating tensor"), named here so that this module does not import TensorFlow."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError":
            return True
        exc = exc.__cause__ or exc.__context__
    return False
