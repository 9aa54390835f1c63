"""Pictures of what models draw, for reports: teacher and student outputs side by side."""

from __future__ import annotations

import io
import math

import numpy as np


def side_by_side_png(first: np.ndarray, second: np.ndarray, output_range) -> bytes | None:
    """A PNG of two models' outputs on the same inputs (NHWC, 1 or 3 channels): rows of the
    first's samples, each followed by the second's row. ``None`` for outputs that are not images."""
    from PIL import Image

    t, s = first, second
    if t.ndim != 4 or t.shape[-1] not in (1, 3):
        return None
    lo, hi = output_range
    cols = min(8, len(t))
    pairs = math.ceil(len(t) / cols)
    h, w, c = t.shape[1:]
    scale = max(1, 64 // max(h, w))
    pad = 2
    canvas = np.full((pairs * (2 * (h * scale + pad) + 2 * pad) + pad, cols * (w * scale + pad) + pad, c), 255, np.uint8)
    for i in range(len(t)):
        r, col = divmod(i, cols)
        for j, batch in enumerate((t, s)):
            img = np.clip((batch[i] - lo) / (hi - lo), 0.0, 1.0)
            img = np.kron(img, np.ones((scale, scale, 1)))
            y0 = pad + r * (2 * (h * scale + pad) + 2 * pad) + j * (h * scale + pad)
            x0 = pad + col * (w * scale + pad)
            canvas[y0 : y0 + h * scale, x0 : x0 + w * scale] = np.round(img * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
