"""Activation ranges chosen for the quantization error, not for the extremes.

Min/max calibration spends a tensor's 256 int8 levels on its rarest values: a ReLU output whose
calibration maximum is 14.5 but whose 99.9th percentile is 3.2 leaves most values a quarter of
the levels. Per tensor, the range ``[a, b]`` minimizing the expected squared error of int8
rounding plus clipping over the calibration values is searched on a histogram (lower end kept at
0 for non-negative tensors). Measured on ten development generators (TFLite int8, min/max →
these ranges): +0.1 to +2.3 dB on nine, −2.9 dB on one VAE-GAN decoder whose rare large values
matter (its LeakyReLU before a saturating output): a variant the fidelity search measures, not a
default.
"""

from __future__ import annotations

import numpy as np

_BINS = 2048
_LOW_STEPS, _HIGH_STEPS = 21, 96


def best_range(values: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """``[a, b]`` within ``[lo, hi]`` (containing 0) minimizing int8 rounding + clipping error."""
    if not hi > lo or values.size == 0:
        return lo, hi
    hist, edges = np.histogram(values, bins=_BINS, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    best = (np.inf, lo, hi)
    for fa in np.linspace(0.0, 1.0, _LOW_STEPS) if lo < 0 else [1.0]:
        for fb in np.linspace(0.05, 1.0, _HIGH_STEPS) if hi > 0 else [1.0]:
            a, b = min(lo * fa, 0.0), max(hi * fb, 0.0)
            if b - a <= 0:
                continue
            step = (b - a) / 255.0
            inside = (centers >= a) & (centers <= b)
            err = float(np.sum(hist * (centers - np.clip(centers, a, b)) ** 2) + np.sum(hist[inside]) * step * step / 12.0)
            if err < best[0]:
                best = (err, a, b)
    return best[1], best[2]


def mse_ranges(tensors, ops, kept: dict, pass_through: dict) -> int:
    """Set each kept tensor's recorded min/max (a read flatbuffer's ``tensors``) to ``best_range``,
    then give every data-movement op's output its input's range (``pass_through``: op name →
    which inputs carry data), so no requantization appears between them. ``ops``: ``(type,
    inputs, outputs)`` in order. Returns how many ranges changed."""
    changed = 0
    for i, parts in kept.items():
        q = tensors[i].quantization
        lo, hi = float(q.min[0]), float(q.max[0])
        a, b = best_range(np.concatenate(parts), lo, hi)
        if (a, b) != (lo, hi):
            q.min, q.max = [np.float32(a)], [np.float32(b)]
            changed += 1
    for op, inputs, outputs in ops:
        if pass_through.get(op) != "first" or len(outputs) != 1 or not inputs:
            continue
        src, dst = tensors[inputs[0]].quantization, tensors[outputs[0]].quantization
        if src is not None and dst is not None and src.min is not None and dst.min is not None and len(src.min) == len(dst.min) == 1:
            dst.min, dst.max = list(src.min), list(src.max)
    return changed
