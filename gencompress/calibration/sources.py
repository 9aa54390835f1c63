"""Where model inputs come from: noise latents, arrays from .npy/.npz, or a folder of images.

One ``CalibrationSet`` feeds everything that needs inputs: the TFLite representative dataset,
the onnxruntime calibration reader, fine-tuning and evaluation. Calibration and evaluation sets
are built together so that they never share a sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from gencompress.errors import CalibrationError
from gencompress.limits import refuse_special
from gencompress.memory import check_fits, shape_text

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class CalibrationSet:
    """Input arrays keyed by model input name, all with the same leading (sample) dimension."""

    arrays: dict[str, np.ndarray]
    source: str
    tail: int = 0  # how many of the last samples are tail latents (``with_tail_latents``)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` as a batch of one."""
        return {k: v[i : i + 1] for k, v in self.arrays.items()}

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self.sample(i)

    def take(self, n: int) -> "CalibrationSet":
        return CalibrationSet({k: v[:n] for k, v in self.arrays.items()}, self.source, max(0, self.tail - (len(self) - n)))

    def pick(self, indices) -> "CalibrationSet":
        tail = sum(1 for i in indices if i >= len(self) - self.tail)
        return CalibrationSet({k: v[list(indices)] for k, v in self.arrays.items()}, self.source, tail)

    def is_tail(self, i: int) -> bool:
        return i >= len(self) - self.tail

    def describe(self) -> dict:
        return {"source": self.source, "samples": len(self), **({"tail_samples": self.tail} if self.tail else {})}


def noise_set(inputs, n: int, rng: np.random.Generator, label_ranges: dict | None, input_range=(-1.0, 1.0)) -> CalibrationSet:
    """Standard-normal latents; image inputs (``is_image``) get random images with a natural
    1/f spectrum in ``input_range`` (``image_noise``); label inputs (integer, or any input that
    feeds an Embedding: ``label_ranges``) get valid random ids."""
    arrays = {}
    for t in inputs:
        shape = (n,) + tuple(t.shape[1:])
        if is_image(t) and t.name not in (label_ranges or {}):
            arrays[t.name] = image_noise(shape, rng, input_range, t.dtype)
        elif t.is_integer or t.name in (label_ranges or {}):
            high = (label_ranges or {}).get(t.name)
            if high is None:
                raise CalibrationError(
                    f"cannot tell the valid values of integer input '{t.name}' (it feeds no Embedding): "
                    "give --calibration data.npz"
                )
            arrays[t.name] = rng.integers(0, high, size=shape).astype(t.dtype)
        else:
            arrays[t.name] = rng.standard_normal(shape).astype(t.dtype)
    return CalibrationSet(arrays, "noise")


def is_image(t) -> bool:
    """A float NHWC input of 1 to 4 channels and at least 8×8: what an image-to-image network takes."""
    shape = tuple(t.shape)
    return not t.is_integer and len(shape) == 4 and None not in shape[1:] and min(shape[1:3]) >= 8 and shape[3] <= 4


# Natural images' amplitude spectrum falls as 1/f (power as 1/f²). White noise, all high
# frequencies, is no image: a deblurring U-Net (it sharpens) fed standard-normal "images" drew
# outputs that int8 moved by 13 dB, and 34 dB on smooth image-like inputs; a colourization
# network read 34.6 dB on white noise and 45.6 dB on 1/f noise. Channels share most of their
# field (colours are correlated) and each image spans the input range.
IMAGE_SPECTRUM_SLOPE, CHANNEL_OWN_SHARE = 1.0, 0.35


def image_noise(shape, rng: np.random.Generator, input_range=(-1.0, 1.0), dtype="float32") -> np.ndarray:
    """``shape`` (N, H, W, C) random images with a 1/f amplitude spectrum, each scaled to ``input_range``."""
    n, h, w, c = shape
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0 / max(h, w)
    amplitude = f ** -IMAGE_SPECTRUM_SLOPE

    def field(k):
        spectrum = rng.standard_normal((k, h, w // 2 + 1)) + 1j * rng.standard_normal((k, h, w // 2 + 1))
        return np.fft.irfft2(spectrum * amplitude, s=(h, w)).astype(np.float32)

    lo, hi = (float(v) for v in input_range)
    out = np.empty(shape, dtype)
    for i in range(n):  # one image at a time: a batch of 400x600 fields in float64 would take gigabytes
        x = field(1)[0][..., None] + (CHANNEL_OWN_SHARE * field(c).transpose(1, 2, 0) if c > 1 else 0.0)
        span = float(x.max() - x.min()) or 1.0
        out[i] = lo + (hi - lo) * (x - x.min()) / span
    return out


# One held-out noise sample in TAIL_SHARE (at least 2) is a tail latent: its direction drawn as
# usual, its norm set to a quantile of the norms of standard-normal vectors of its size, spread
# over TAIL_QUANTILES. The draws a user meets one time in 50 to 1,000 are where int8 breaks first:
# on a cGAN with 16-d latents one of norm 5.2 (a 1-in-50 draw) drew a different digit at 21.8 dB
# while the mean over 64 latents read 36 dB.
TAIL_SHARE, TAIL_QUANTILES = 16, (0.98, 0.999)


def with_tail_latents(held: CalibrationSet, inputs, labels=()) -> CalibrationSet:
    """``held`` (noise) with its last samples' latent inputs (not integer, not ``labels``) moved
    to tail norms (``TAIL_SHARE``)."""
    from statistics import NormalDist

    n = len(held)
    k = min(n - 1, max(2, n // TAIL_SHARE)) if n > 2 else 0
    if k <= 0:
        return held
    arrays = dict(held.arrays)
    for t in inputs:
        if t.is_integer or t.name in labels or is_image(t):  # images are not latents
            continue
        x = arrays[t.name].astype(np.float64)
        d = int(np.prod(x.shape[1:]))
        for j, q in enumerate(np.linspace(TAIL_QUANTILES[0], TAIL_QUANTILES[1], k)):
            i = n - k + j
            norm = np.linalg.norm(x[i])
            if norm > 0:
                x[i] *= _chi_quantile(float(q), d, NormalDist().inv_cdf(float(q))) / norm
        arrays[t.name] = x.astype(held.arrays[t.name].dtype)
    return CalibrationSet(arrays, held.source, k)


def _chi_quantile(q: float, d: int, z: float) -> float:
    """The ``q`` quantile of the norm of a standard-normal vector of ``d`` values (Wilson–Hilferty)."""
    a = 2.0 / (9.0 * d)
    return float(np.sqrt(d * max(0.0, 1.0 - a + z * np.sqrt(a)) ** 3))


def check_noise_fits(inputs, calibration_samples: int, eval_samples: int) -> None:
    """Refuse, before drawing anything, noise sets that would not fit in memory: each input's
    samples at its dtype, plus the float64 draw of the larger set (``standard_normal``)."""
    n = calibration_samples + eval_samples
    for t in inputs:
        values = int(np.prod(t.shape[1:], dtype=object))
        needed = n * values * np.dtype(t.dtype).itemsize + max(calibration_samples, eval_samples) * values * 8
        check_fits(
            needed, f"input '{t.name}' ({shape_text(t.shape[1:])}, {values * np.dtype(t.dtype).itemsize / 2**30:,.2f} GiB a sample) "
            f"for {calibration_samples} calibration and {eval_samples} held-out samples",
            "give fewer with --calibration-samples and --eval-samples" if n > 2 else "this model's input is too large for this machine",
        )


def array_file_arrays(inputs, path: Path) -> dict[str, np.ndarray]:
    from gencompress.calibration.array_files import load_arrays

    loaded = load_arrays(path)
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            names = ", ".join(t.name for t in inputs)
            raise CalibrationError(
                f"{path} holds one array but the model has {len(inputs)} inputs ({names}): use a .npz keyed by input name"
            )
        raw = {inputs[0].name: loaded}
    else:
        raw = loaded
    return checked_arrays(inputs, raw, str(path))


def checked_arrays(inputs, raw: dict, where: str) -> dict[str, np.ndarray]:
    """``raw`` arrays keyed by input name, checked against the model's inputs (shape, dtype,
    finite values) and cast to each input's dtype."""
    missing = [t.name for t in inputs if t.name not in raw]
    if missing:
        raise CalibrationError(f"{where} has no array for input(s) {', '.join(missing)} (it has: {', '.join(raw) or 'none'})")
    return {t.name: _checked(t, np.asarray(raw[t.name]), where) for t in inputs}


def image_folder_arrays(inputs, folder: Path, input_range) -> dict[str, np.ndarray]:
    image_inputs = [t for t in inputs if len(t.shape) == 4 and t.shape[-1] in (1, 3)]
    if len(inputs) != 1 or not image_inputs:
        raise CalibrationError(
            "an image folder can only calibrate a model with one image input (N, H, W, 1 or 3)"
        )
    t = image_inputs[0]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"no PNG/JPEG images in {folder}")
    _, h, w, c = t.shape
    check_fits(len(files) * h * w * c * 4 * 2, f"{len(files)} images at the input's {shape_text((h, w, c))}",
               "use a folder with fewer images")
    lo, hi = input_range
    images = [_read_image(f, h, w, c) * (hi - lo) + lo for f in files]
    return {t.name: _checked(t, np.stack(images), str(folder))}


def _read_image(f: Path, h: int, w: int, c: int) -> np.ndarray:
    """One image as float32 in [0, 1], resized to ``h`` × ``w``. PIL refuses an image of over
    ``Image.MAX_IMAGE_PIXELS`` pixels (89 million) before decoding it: a few hundred bytes of PNG
    can declare 20000×20000 pixels (a decompression bomb)."""
    import warnings

    from PIL import Image

    refuse_special(f, "image", CalibrationError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                pixels = np.asarray(im, dtype=np.float32) / 255.0
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CalibrationError(f"image {f} is too large to decode safely: {str(exc).split(',')[0]} (PIL's limit against decompression bombs)") from None
    except Exception as exc:  # noqa: BLE001 - PIL's decoders raise OSError, ValueError, SyntaxError, struct.error... on a bad file
        raise CalibrationError(f"cannot read image {f}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    return pixels.reshape(h, w, c)


def _checked(t, array: np.ndarray, where: str) -> np.ndarray:
    expected = tuple(t.shape[1:])
    if array.ndim == len(expected):  # a single sample without the batch axis
        array = array[None]
    if tuple(array.shape[1:]) != expected:
        raise CalibrationError(
            f"{where}: input '{t.name}' needs samples of shape {list(expected)}, got {list(array.shape[1:])}"
        )
    if len(array) == 0:
        raise CalibrationError(f"{where}: no samples for input '{t.name}'")
    if t.is_integer:
        if not np.issubdtype(array.dtype, np.integer):
            raise CalibrationError(f"{where}: input '{t.name}' is {t.dtype}, got {array.dtype} values")
    elif not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise CalibrationError(f"{where}: input '{t.name}' needs numbers, got dtype {array.dtype}")
    elif not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise CalibrationError(f"{where}: input '{t.name}' has {bad} NaN/Inf values")
    return array.astype(t.dtype)


def split(data: dict, source: str, calibration_samples: int, eval_samples: int, seed: int):
    """Shuffle finite data with ``seed`` and split it into disjoint calibration/evaluation sets."""
    lengths = {len(v) for v in data.values()}
    if len(lengths) != 1:
        raise CalibrationError(f"{source}: inputs have different numbers of samples {sorted(lengths)}")
    n = lengths.pop()
    if n < 2:
        raise CalibrationError(f"{source}: need at least 2 samples (one to calibrate, one held out), got {n}")
    order = np.random.default_rng([seed, 2]).permutation(n)
    if n >= calibration_samples + eval_samples:
        n_eval, n_calib = eval_samples, calibration_samples
    else:  # too few: keep the requested proportion, at least one held-out sample
        n_eval = max(1, round(n * eval_samples / (calibration_samples + eval_samples)))
        n_calib = n - n_eval
    held = order[:n_eval]
    calib = order[n_eval : n_eval + n_calib]
    return (
        CalibrationSet({k: v[calib] for k, v in data.items()}, source),
        CalibrationSet({k: v[held] for k, v in data.items()}, source),
    )
