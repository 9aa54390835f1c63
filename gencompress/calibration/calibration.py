"""``Calibration``: where a run's inputs come from, as the library and the CLI name it.

One object describes the source (noise, in-memory arrays, a ``.npy``/``.npz`` file, a folder of
images) and how many samples calibrate; ``sets`` turns it into the calibration set and the
disjoint held-out evaluation set for a model. The same sets feed the TFLite representative
dataset, the onnxruntime calibration reader, fine-tuning and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gencompress.calibration.sources import (
    array_file_arrays,
    check_noise_fits,
    checked_arrays,
    image_folder_arrays,
    noise_set,
    split,
    with_tail_latents,
)
from gencompress.errors import CalibrationError
from gencompress.limits import refuse_special
from gencompress.printable import printable


@dataclass(frozen=True)
class Calibration:
    """A source of model inputs. Make one with ``noise``, ``arrays``, ``file``, ``images`` or
    ``from_spec`` (the CLI's ``--calibration`` value).

    ``samples``: how many calibrate (``None``: decided from the model's output size, 200 for
    small outputs); ``seed``: seeds the noise and the calibration/evaluation split (``None``:
    the run's seed)."""

    kind: str = "noise"
    path: str | None = None
    arrays: dict | None = field(default=None, compare=False, repr=False)
    samples: int | None = None
    seed: int | None = None
    input_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self):
        if self.samples is not None and self.samples < 1:
            raise CalibrationError("--calibration-samples must be at least 1")
        lo, hi = self.input_range
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise CalibrationError(f"--input-range needs two finite numbers LOW < HIGH, got {lo}, {hi}")

    @classmethod
    def noise(cls, samples: int | None = None, seed: int | None = None) -> "Calibration":
        """Standard-normal float inputs; integer (label) inputs get valid ids from their Embedding."""
        return cls("noise", samples=samples, seed=seed)

    @classmethod
    def arrays_of(cls, arrays: dict, samples: int | None = None, seed: int | None = None) -> "Calibration":
        """In-memory arrays keyed by input name, all with the same number of samples."""
        return cls("arrays", arrays=dict(arrays), samples=samples, seed=seed)

    @classmethod
    def file(cls, path, samples: int | None = None, seed: int | None = None) -> "Calibration":
        """A ``.npy`` file (one input) or ``.npz`` (arrays keyed by input name)."""
        return cls("file", path=str(path), samples=samples, seed=seed)

    @classmethod
    def images(cls, folder, range: tuple[float, float] = (-1.0, 1.0), samples: int | None = None, seed: int | None = None) -> "Calibration":  # noqa: A002
        """A folder of PNG/JPEG images, resized to the input and scaled to ``range``."""
        return cls("images", path=str(folder), samples=samples, seed=seed, input_range=tuple(range))

    @classmethod
    def from_spec(cls, spec: str | None, samples: int | None = None, input_range=(-1.0, 1.0)) -> "Calibration":
        """``noise``, a ``.npy``/``.npz`` path or an image folder, as ``--calibration`` takes it."""
        if spec in (None, "noise"):
            return cls("noise", samples=samples, input_range=tuple(input_range))
        path = Path(spec)
        try:
            exists = path.exists()
        except OSError as exc:  # a name over the file system's limit
            raise CalibrationError(f"calibration source {printable(spec)}: {exc.strerror}") from None
        refuse_special(path, "calibration source", CalibrationError)
        if not exists:
            raise CalibrationError(f"calibration source not found: {spec} (use 'noise', a .npy/.npz file or an image folder)")
        if path.is_dir():
            return cls("images", path=str(path), samples=samples, input_range=tuple(input_range))
        if path.suffix.lower() in (".npy", ".npz"):
            return cls("file", path=str(path), samples=samples, input_range=tuple(input_range))
        raise CalibrationError(f"calibration source {spec} is not a .npy/.npz file or an image folder")

    @property
    def source(self) -> str:
        """How reports name it: ``noise``, ``arrays`` or the path."""
        return self.path if self.path is not None else self.kind

    def with_samples(self, samples: int) -> "Calibration":
        import dataclasses

        return dataclasses.replace(self, samples=samples)

    def sets(self, inputs, label_ranges, calibration_samples: int, eval_samples: int, seed: int):
        """The calibration set and the disjoint held-out evaluation set for a model's ``inputs``
        (``TensorInfo`` list; ``label_ranges``: valid ids of integer inputs).

        Noise draws two independent seeded streams; finite data is shuffled with the seed and
        split (too little data keeps the requested proportion, at least one held-out sample)."""
        seed = seed if self.seed is None else self.seed
        if calibration_samples < 1 or eval_samples < 1:
            raise CalibrationError("calibration and evaluation need at least one sample each")
        if self.kind == "noise":
            check_noise_fits(inputs, calibration_samples, eval_samples)
            # both end with tail latents: held out, they are where int8 breaks first; calibrated
            # on, the int8 ranges cover them (min/max over ordinary draws clipped a 99.9th
            # percentile latent's input to the first layer: 17 dB on that sample)
            calib = noise_set(inputs, calibration_samples, np.random.default_rng([seed, 0]), label_ranges, self.input_range)
            held = noise_set(inputs, eval_samples, np.random.default_rng([seed, 1]), label_ranges, self.input_range)
            labels = set(label_ranges or {})
            return with_tail_latents(calib, inputs, labels), with_tail_latents(held, inputs, labels)
        if self.kind == "arrays":
            data = checked_arrays(inputs, self.arrays, "arrays")
        elif self.kind == "file":
            data = array_file_arrays(inputs, Path(self.path))
        else:
            data = image_folder_arrays(inputs, Path(self.path), self.input_range)
        return split(data, self.source, calibration_samples, eval_samples, seed)


def build_sets(inputs, spec: str, calibration_samples: int, eval_samples: int, seed: int, input_range=(-1.0, 1.0), label_ranges=None):
    """Calibration and held-out sets from a ``--calibration`` spec (see ``Calibration.sets``)."""
    calibration = Calibration.from_spec(spec, input_range=input_range)
    return calibration.sets(inputs, label_ranges, calibration_samples, eval_samples, seed)
