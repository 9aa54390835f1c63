"""Pictures of what models draw, for reports: teacher and student outputs side by side, and the
rows of report.html's grids (float model, artifact, error heatmap)."""

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


# --------------------------------------------------------------------------- report.html grids

# A tile's longest side, in pixels: small outputs are enlarged (nearest neighbour, whole
# factors, so pixels stay sharp), large ones shrunk, so a row of 8 fits a page and the report
# of a 384×384 model stays a few hundred KB.
TILE_MIN, TILE_MAX = 48, 128
# The error heatmap is brightest at this share of the output range: one scale for every
# artifact of a run, so heatmaps compare (int8 at 40 dB has an RMS error of 1 % of the range).
ERROR_SCALE = 0.05


def is_image(batch: np.ndarray) -> bool:
    """NHWC with an image's channels (grey, RGB, RGBA): drawn as pictures, else as line plots."""
    return batch.ndim == 4 and batch.shape[-1] in (1, 3, 4) and min(batch.shape[1:3]) >= 2


def _tiles(images: np.ndarray) -> list:
    """``images``: N×H×W×C uint8 → PIL tiles sized for a report row."""
    from PIL import Image

    tiles = []
    for img in images:
        tile = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img[..., :3])
        h, w = img.shape[:2]
        if max(h, w) < TILE_MIN:
            k = -(-TILE_MIN // max(h, w))
            tile = tile.resize((w * k, h * k), Image.NEAREST)
        elif max(h, w) > TILE_MAX:
            k = TILE_MAX / max(h, w)
            tile = tile.resize((max(1, round(w * k)), max(1, round(h * k))), Image.LANCZOS)
        tiles.append(tile)
    return tiles


def row_png(images: np.ndarray, pad: int = 2) -> bytes:
    """One PNG row of uint8 images (N×H×W×C), on white."""
    from PIL import Image

    tiles = _tiles(images)
    w, h = tiles[0].size
    mode = "L" if all(t.mode == "L" for t in tiles) else "RGB"
    canvas = Image.new(mode, (len(tiles) * (w + pad) + pad, h + 2 * pad), 255 if mode == "L" else (255, 255, 255))
    for i, tile in enumerate(tiles):
        canvas.paste(tile.convert(mode), (pad + i * (w + pad), pad))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def to_uint8(batch: np.ndarray, output_range) -> np.ndarray:
    lo, hi = output_range
    return np.round(np.clip((batch.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)


def error_uint8(reference: np.ndarray, test: np.ndarray, output_range) -> np.ndarray:
    """|test - reference| (largest over channels) as a heatmap (magma), full at ``ERROR_SCALE``."""
    from matplotlib import colormaps

    lo, hi = output_range
    err = np.abs(test.astype(np.float64) - reference.astype(np.float64)).max(axis=-1) / (hi - lo)
    err = np.nan_to_num(err, nan=1.0, posinf=1.0)
    rgba = colormaps["magma"](np.clip(err / ERROR_SCALE, 0.0, 1.0))
    return np.round(rgba[..., :3] * 255).astype(np.uint8)
