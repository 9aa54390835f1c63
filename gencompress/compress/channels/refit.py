"""Least-squares re-fit of a layer that reads pruned channels, on the teacher's activations.

A Dense or convolution layer's linear output is ``patches @ K + b``: for each output position,
the input values under the kernel (a convolution's im2col rows; for a transposed convolution,
the inputs each kernel tap draws from). With some input channels gone, the weights that best
reproduce the teacher's output from what is left solve the normal equations of those rows:
``(AᵀA + λI) w = Aᵀy``, one small system shared by every output channel (Gram matrices of at
most a few thousand columns, summed over sampled positions in float64).

``PatchLayout`` reads a layer's patches at sampled positions (numpy gathers, checked once
against the layer itself: a layout it gets wrong is not used); ``Normal`` accumulates and
solves the equations.
"""

from __future__ import annotations

import numpy as np

from gencompress.tfenv import import_tf

REFITTABLE = ("Dense", "Conv1D", "Conv2D", "Conv1DTranspose", "Conv2DTranspose")
RIDGE = 3e-3  # λ as a share of the mean diagonal of AᵀA: keeps near-collinear inputs solvable
CHUNK_ROWS = 2048  # rows gathered at a time (a 7×7×128 kernel: 2048 × 6272 float32 = 51 MB)


class PatchLayout:
    """How ``layer`` (first call: ``in_shape`` → ``out_shape``, no batch axis) reads its inputs:
    its output at a position is ``patch @ kernel_matrix + bias``, columns ordered (tap, channel)."""

    def __init__(self, layer, in_shape: tuple, out_shape: tuple):
        cfg = layer.get_config()
        self.layer, self.cls = layer, type(layer).__name__
        self.channels, self.outputs = int(in_shape[-1]), int(out_shape[-1])
        self.has_bias = bool(cfg.get("use_bias", True))
        self.dense = self.cls == "Dense"
        if self.dense:
            self.positions = int(np.prod(in_shape[:-1], dtype=np.int64)) if len(in_shape) > 1 else 1
            self.taps = 1
            return
        one_d = self.cls.startswith("Conv1D")
        as2d = (lambda v: (1,) + tuple(v)) if one_d else tuple
        self.in_hw, self.out_hw = as2d(in_shape[:-1]), as2d(out_shape[:-1])
        self.kernel_hw = as2d(_pair(cfg["kernel_size"], 1 if one_d else 2))
        self.strides = as2d(_pair(cfg.get("strides", 1), 1 if one_d else 2))
        self.dilation = as2d(_pair(cfg.get("dilation_rate", 1), 1 if one_d else 2))
        self.transposed = "Transpose" in self.cls
        self.padding = cfg.get("padding", "valid")
        self.positions = int(np.prod(self.out_hw))
        self.taps = int(np.prod(self.kernel_hw))
        self.supported = cfg.get("groups", 1) == 1 and not (self.transposed and max(self.dilation) > 1)

    def columns(self, kept: np.ndarray | None) -> np.ndarray:
        """Patch columns of the kept input channels (all taps)."""
        c = np.arange(self.channels) if kept is None else np.asarray(kept)
        return (np.arange(self.taps)[:, None] * self.channels + c[None, :]).reshape(-1)

    def kernel_matrix(self, kernel: np.ndarray) -> np.ndarray:
        """The kernel as ``(taps × channels, outputs)``, rows in the patches' column order."""
        if self.dense:
            return kernel
        k = kernel.reshape(self.kernel_hw + kernel.shape[-2:])
        if self.transposed:  # [..., out, in] -> [..., in, out]
            k = np.swapaxes(k, -1, -2)
        return k.reshape(-1, self.outputs)

    def kernel_from_matrix(self, matrix: np.ndarray, shape: tuple) -> np.ndarray:
        if self.dense:
            return matrix.reshape(shape)
        k = matrix.reshape(self.kernel_hw + (self.channels, self.outputs))
        if self.transposed:
            k = np.swapaxes(k, -1, -2)
        return k.reshape(shape)

    def sample_positions(self, n: int, rows: int, rng) -> tuple[np.ndarray, np.ndarray]:
        """(sample, flat position) pairs: every position where there are few, else an even
        random draw of ``rows`` over the ``n`` samples."""
        total = n * self.positions
        flat = np.arange(total) if total <= rows else np.sort(rng.choice(total, rows, replace=False))
        return flat // self.positions, flat % self.positions

    def patches(self, x: np.ndarray, where: tuple, kept: np.ndarray | None = None) -> np.ndarray:
        """``(rows, taps × kept channels)`` patches of input batch ``x`` at ``where``."""
        s, pos = where
        ch = slice(None) if kept is None else np.asarray(kept)
        if self.dense:
            return x.reshape(len(x), self.positions, self.channels)[s, pos][:, ch]
        x4 = x.reshape((len(x),) + self.in_hw + (self.channels,))
        x4 = np.pad(x4[..., ch], ((0, 0), (0, 1), (0, 1), (0, 0)))  # index H, W: a zero
        oy, ox = pos // self.out_hw[1], pos % self.out_hw[1]
        iy = self._index(oy, 0)
        ix = self._index(ox, 1)
        p = x4[s[:, None, None], iy[:, :, None], ix[:, None, :]]
        return p.reshape(len(s), -1)

    def _index(self, o: np.ndarray, axis: int) -> np.ndarray:
        """Input index each tap reads for output positions ``o`` along ``axis`` (the size of
        the axis where it reads nothing: the zero pad)."""
        k, s, d = self.kernel_hw[axis], self.strides[axis], self.dilation[axis]
        n_in, n_out = self.in_hw[axis], self.out_hw[axis]
        t = np.arange(k)[None, :]
        if self.transposed:
            pad = max((n_in - 1) * s + k - n_out, 0) // 2 if self.padding == "same" else 0
            num = o[:, None] + pad - t
            idx = np.where(num % s == 0, num // s, -1)
        else:
            if self.padding == "same":
                pad = max((n_out - 1) * s + (k - 1) * d + 1 - n_in, 0) // 2
            elif self.padding == "causal":
                pad = (k - 1) * d
            else:
                pad = 0
            idx = o[:, None] * s + t * d - pad
        return np.where((idx >= 0) & (idx < n_in), idx, n_in)

    def check(self, x: np.ndarray, rng) -> bool:
        """The layout reproduces ``layer(x)`` (its activation applied) at sampled positions."""
        if not self.dense and not self.supported:
            return False
        tf = import_tf()
        y = np.asarray(self.layer(tf.constant(x)))
        where = self.sample_positions(len(x), 256, rng)
        weights = self.layer.get_weights()
        lin = self.patches(x, where) @ self.kernel_matrix(weights[0]) + (weights[1] if self.has_bias else 0.0)
        y_hat = np.asarray(self.layer.activation(tf.constant(lin.astype(np.float32))))
        y_at = y.reshape(len(x), self.positions, self.outputs)[where[0], where[1]]
        return bool(np.allclose(y_hat, y_at, rtol=1e-3, atol=1e-4 * (1.0 + float(np.abs(y_at).max()))))

    def linear(self, patches: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
        """The layer's output before its activation, from its patches."""
        out = patches @ self.kernel_matrix(weights[0])
        return out + weights[1] if self.has_bias else out


class Normal:
    """The normal equations ``[A 1]ᵀ[A 1] w = [A 1]ᵀ y`` of one layer, summed over chunks."""

    def __init__(self, columns: int, has_bias: bool, outputs: int | None = None):
        k = columns + int(has_bias)
        self.has_bias = has_bias
        self.gram = np.zeros((k, k))
        self.rhs = None if outputs is None else np.zeros((k, outputs))
        self.rows = 0

    def add(self, patches: np.ndarray, targets: np.ndarray | None = None) -> None:
        # float32 products of at most CHUNK_ROWS rows, summed in float64: 4x faster than
        # float64 products on these CPUs, and the ridge keeps the solve well away from their error
        for i in range(0, len(patches), CHUNK_ROWS):
            a = patches[i : i + CHUNK_ROWS].astype(np.float32)
            if self.has_bias:
                a = np.concatenate([a, np.ones((len(a), 1), np.float32)], axis=1)
            self.gram += a.T @ a
            if targets is not None:
                self.rhs += a.T @ targets[i : i + CHUNK_ROWS].astype(np.float32)
        self.rows += len(patches)

    def solve(self, rhs: np.ndarray | None = None, columns: np.ndarray | None = None) -> np.ndarray:
        """Ridge solution over ``columns`` (all: ``None``) and the bias: ``(columns [+ 1], outputs)``."""
        rhs = self.rhs if rhs is None else rhs
        k = self.gram.shape[0] - int(self.has_bias)
        idx = np.arange(k) if columns is None else np.asarray(columns)
        if self.has_bias:
            idx = np.concatenate([idx, [k]])
        g = self.gram[np.ix_(idx, idx)].copy()
        n_w = len(idx) - int(self.has_bias)
        diag = np.arange(n_w)
        scale = float(np.mean(g[diag, diag])) if n_w else 0.0
        g[diag, diag] += RIDGE * scale + 1e-12
        return _solve_spd(g, rhs[idx])


class WeightedNormal:
    """The normal equations of a layer whose outputs go through a saturating activation
    (tanh, sigmoid): each row and output channel weighted by the activation's slope at the
    teacher's value squared, so that the fit spends itself where the outputs can see it, not
    on logits deep in saturation (fmnist_cgan's last layer: logits from -229 to 509, under a
    sigmoid). One system per output channel (such layers have a handful)."""

    def __init__(self, columns: int, has_bias: bool, outputs: int):
        k = columns + int(has_bias)
        self.has_bias, self.outputs = has_bias, outputs
        self.grams = [np.zeros((k, k)) for _ in range(outputs)]
        self.rhs = np.zeros((k, outputs))
        self.rows = 0

    def add(self, patches: np.ndarray, targets: np.ndarray | None, weights: np.ndarray) -> None:
        for i in range(0, len(patches), CHUNK_ROWS):
            a = patches[i : i + CHUNK_ROWS].astype(np.float32)
            if self.has_bias:
                a = np.concatenate([a, np.ones((len(a), 1), np.float32)], axis=1)
            for o in range(self.outputs):
                root = np.sqrt(weights[i : i + CHUNK_ROWS, o : o + 1]).astype(np.float32)
                aw = a * root
                self.grams[o] += aw.T @ aw
                if targets is not None:
                    self.rhs[:, o] += aw.T @ (root[:, 0] * targets[i : i + CHUNK_ROWS, o].astype(np.float32))
        self.rows += len(patches)

    def solve(self, rhs: np.ndarray | None = None, columns: np.ndarray | None = None) -> np.ndarray:
        """As ``Normal.solve``, one weighted system per output channel; ``rhs`` (given for a
        re-fit from the teacher's own outputs) is ``(columns [+ 1], outputs)`` as well."""
        rhs = self.rhs if rhs is None else rhs
        parts = []
        for o in range(self.outputs):
            one = Normal(0, self.has_bias)
            one.gram = self.grams[o]
            parts.append(one.solve(rhs[:, o : o + 1], columns))
        return np.concatenate(parts, axis=1)

    def teacher_rhs(self, wb: np.ndarray) -> np.ndarray:
        """The right-hand sides when the targets are the teacher's own outputs: ``G_o @ wb[:, o]``."""
        return np.stack([g @ wb[:, o] for o, g in enumerate(self.grams)], axis=1)


GAUSS_NEWTON_STEPS = 3
MIN_SLOPE = 0.05  # where the student sits deep in saturation, a step is taken as if the slope were this


def activate(activation: str, z: np.ndarray) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(z)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def slope(activation: str, z: np.ndarray) -> np.ndarray:
    """The activation's derivative (sigmoid's times 4: 1 at 0, as tanh's; the scale is common to
    every row and does not change a weighted fit)."""
    if activation == "tanh":
        return 1.0 - np.tanh(z) ** 2
    s = activate(activation, z)
    return 4.0 * s * (1.0 - s)


def fit_through(activation: str, patches: np.ndarray, targets: np.ndarray, has_bias: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(the plain linear fit, the Gauss-Newton fit)``, each ``(columns [+ 1], outputs)``: least
    squares of ``activation(patches @ w + b)`` against ``activation(targets)`` (the teacher's
    pre-activation outputs), by Gauss-Newton from the plain fit, each step weighted by the
    activation's slope squared at the current outputs; of the steps, the one closest after the
    activation on these rows. Which generalizes better is the caller's to measure: on
    rauzan_cgan the plain fit did (27.7 against 24.9 dB held-out), on janfab Gauss-Newton (20.1
    against 17.9, where the plain fit was below the bare cut's 18.9)."""
    cols, outputs = patches.shape[1], targets.shape[1]
    want = activate(activation, targets.astype(np.float64))
    plain = Normal(cols, has_bias, outputs)
    plain.add(patches, targets)
    found = [plain.solve()]
    z_target, weights = targets, np.maximum(slope(activation, targets.astype(np.float64)), 1e-3) ** 2
    for _ in range(GAUSS_NEWTON_STEPS):
        step = WeightedNormal(cols, has_bias, outputs)
        step.add(patches, z_target, weights.astype(np.float32))
        found.append(step.solve())
        z = _linear(patches, found[-1], has_bias)
        s = slope(activation, z)
        z_target = (z + (want - activate(activation, z)) / np.maximum(s, MIN_SLOPE)).astype(np.float32)
        weights = np.maximum(s, 1e-3) ** 2
    errors = [float(np.mean((activate(activation, _linear(patches, w, has_bias)) - want) ** 2)) for w in found[1:]]
    return found[0], found[1 + int(np.argmin(errors))]


def _linear(patches: np.ndarray, solution: np.ndarray, has_bias: bool) -> np.ndarray:
    cols = patches.shape[1]
    out = patches.astype(np.float64) @ solution[:cols]
    return out + solution[cols] if has_bias else out


def _solve_spd(g: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``g⁻¹ rhs`` for a symmetric positive definite ``g``: TensorFlow's Cholesky (float64, all
    cores: twice numpy's LU here), least squares where it is not positive definite."""
    tf = import_tf()
    try:
        chol = tf.linalg.cholesky(tf.constant(g))
        x = tf.linalg.cholesky_solve(chol, tf.constant(rhs, tf.float64)).numpy()
        if np.all(np.isfinite(x)):
            return x
    except tf.errors.InvalidArgumentError:
        pass
    return np.linalg.lstsq(g, rhs, rcond=None)[0]


def refit_weights(layout: PatchLayout, original: list[np.ndarray], solution: np.ndarray, kept: np.ndarray | None) -> list[np.ndarray]:
    """The layer's full-size weights from a solution over ``kept`` input channels (the removed
    channels' rows zero: they read zeros in the probe, and are cut from the physical model)."""
    rows = layout.columns(kept)
    matrix = np.zeros((layout.taps * layout.channels, layout.outputs))
    matrix[rows] = solution[: len(rows)]
    weights = [layout.kernel_from_matrix(matrix, original[0].shape).astype(original[0].dtype)]
    if layout.has_bias:
        weights.append(solution[len(rows)].astype(original[1].dtype))
    return weights + [w for w in original[len(weights):]]


def _pair(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
