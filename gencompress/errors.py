"""Error kinds. The CLI turns each into one line on stderr and an exit code.

Anything that is not a ``GencompressError`` is a bug and keeps its traceback.
"""

EXIT_BAD_INPUT = 2
EXIT_FIDELITY = 3
EXIT_CONVERSION = 4


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
