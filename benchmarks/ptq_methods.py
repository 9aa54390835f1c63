"""What each post-training method buys on the development generators (README, "What each
post-training method bought").

    python benchmarks/ptq_methods.py [--only FILE ...] [--out benchmarks/results/ptq_methods.md]

Per model, TFLite full int8 (float I/O) of the BatchNorm-folded model with `--fast` sample counts,
plain and with each method alone: GPTQ-style rounding of the weights on the converter's own
per-channel grid (implemented here: measured and left out of gencompress), bias correction of
the rounding's mean shift (here too), ranges for the least error (`compress.ranges`) and
cross-layer equalization (`compress.equalize`). PSNR against the float model on the held-out set
(dB), and the gain of each method over plain int8 in the same run. Weight-only int8 is listed to
show where the error is (weights or activations).
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from real_generators import corpus, load_kwargs  # noqa: E402

KINDS = ("Dense", "Conv2D", "Conv2DTranspose")


def _layer_inputs(km, layers, feeds, n=64):
    from gencompress.tfenv import import_keras

    keras = import_keras()
    probe = keras.Model(km.inputs, [layer.input for layer in layers])
    x = [feeds[name][:n] for name in km.input_names]
    out = probe.predict(x if len(x) > 1 else x[0], batch_size=16, verbose=0)
    return out if isinstance(out, list) else [out]


def _patches(layer, x, rng, cap=40000):
    """The vectors each output value is a dot product of with the layer's weights, kernel order."""
    from gencompress.tfenv import import_tf

    tf = import_tf()
    kind, c = type(layer).__name__, layer.get_config()
    if kind == "Dense":
        p = x.reshape(-1, x.shape[-1])
    elif kind == "Conv2D":
        (kh, kw), s, d = c["kernel_size"], c["strides"], c.get("dilation_rate", (1, 1))
        p = tf.image.extract_patches(x, [1, kh, kw, 1], [1, s[0], s[1], 1], [1, d[0], d[1], 1], c["padding"].upper()).numpy()
        p = p.reshape(-1, kh * kw * x.shape[-1])
    else:  # Conv2DTranspose: a convolution of the zero-dilated input with the flipped kernel
        (kh, kw), s = c["kernel_size"], c["strides"][0]
        n, h, w, ch = x.shape
        dil = np.zeros((n, h * s, w * s, ch), x.dtype)
        dil[:, ::s, ::s] = x
        p = tf.image.extract_patches(dil, [1, kh, kw, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME").numpy()
        p = p.reshape(-1, kh, kw, ch)[:, ::-1, ::-1, :].reshape(-1, kh * kw * ch)
    if len(p) > cap:
        p = p[rng.choice(len(p), cap, replace=False)]
    return p.astype(np.float64)


def _rows(layer, k):
    if type(layer).__name__ == "Conv2DTranspose":  # (kh, kw, f, c)
        kh, kw, f, c = k.shape
        return k.transpose(2, 0, 1, 3).reshape(f, -1), lambda r: r.reshape(f, kh, kw, c).transpose(1, 2, 0, 3)
    shape = k.shape
    return k.reshape(-1, shape[-1]).T, lambda r: r.T.reshape(shape)


def _gptq(w, h, scale, block=128, damp=0.01):
    w = w.copy()
    d = w.shape[1]
    dead = np.diag(h) == 0
    h = h.copy()
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = np.argsort(-np.diag(h))
    w, h = w[:, perm], h[perm][:, perm]
    h[np.diag_indices(d)] += damp * np.mean(np.diag(h))
    inv = np.linalg.inv(np.linalg.cholesky(h))
    u = np.linalg.cholesky(inv.T @ inv).T
    q = np.zeros_like(w)
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        w1, err = w[:, i1:i2].copy(), np.zeros((w.shape[0], i2 - i1))
        for i in range(i2 - i1):
            col = w1[:, i]
            q[:, i1 + i] = np.clip(np.round(col / scale), -127, 127) * scale
            e = (col - q[:, i1 + i]) / u[i1 + i, i1 + i]
            w1[:, i:] -= np.outer(e, u[i1 + i, i1 + i:i2])
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return q[:, np.argsort(perm)]


def rounded(km, feeds, method: str):
    """A copy of ``km`` with its kernels on the int8 grid: ``gptq``, or ``nearest`` with the
    rounding's mean output shift subtracted from the bias (``bias``)."""
    from gencompress.tfenv import import_keras

    keras = import_keras()
    new = keras.models.clone_model(km)
    new.set_weights(km.get_weights())
    layers = [layer for layer in new.layers if type(layer).__name__ in KINDS and layer.get_weights()]
    rng = np.random.default_rng(0)
    for layer, x in zip(layers, _layer_inputs(km, [km.get_layer(layer.name) for layer in layers], feeds)):
        w = layer.get_weights()
        rows, back = _rows(layer, w[0].astype(np.float64))
        absmax = np.max(np.abs(rows), axis=1)
        scale = np.where(absmax > 0, absmax / 127.0, 1.0)
        p = _patches(layer, x, rng)
        if method == "gptq" and p.shape[1] <= 8192:
            q = _gptq(rows, p.T @ p / len(p), scale)
            for r in np.where(np.max(np.abs(np.round(q / scale[:, None])), axis=1) < 127)[0]:  # keep the grid's scale
                j = np.argmax(np.abs(rows[r]))
                q[r, j] = np.sign(rows[r, j]) * 127 * scale[r]
        else:
            q = np.clip(np.round(rows / scale[:, None]), -127, 127) * scale[:, None]
        if method == "bias" and len(w) > 1:
            w[1] = (w[1] - (q - rows) @ p.mean(axis=0)).astype(w[1].dtype)
        w[0] = back(q).astype(w[0].dtype)
        layer.set_weights(w)
    return new


def measure(session, data: bytes, workdir: Path) -> float:
    from gencompress.report.metrics import fidelity

    path = workdir / "m.tflite"
    path.write_bytes(data)
    outputs = session.runner(path, "tflite").run_all(session.evaluation)
    return fidelity(session.reference, outputs, session.output_range, with_ssim=False)["psnr_db"]


def run_model(entry, workdir: Path) -> dict:
    from gencompress.compress.batchnorm import fold_batchnorm
    from gencompress.compress.equalize import equalize
    from gencompress.compress.quantization import TFLiteMixed, tflite_weight_only
    from gencompress.config import QuantizeConfig
    from gencompress.converters.tflite import convert_tflite
    from gencompress.model import flat_copy, load_model
    from gencompress.pipelines.session import prepare

    model = load_model(entry["path"], **load_kwargs(entry, workdir))
    session = prepare(model, QuantizeConfig(fast=True))
    folded, _ = fold_batchnorm(flat_copy(model.keras_model))
    form = lambda km: dataclasses.replace(model, keras_model=km)  # noqa: E731
    base = TFLiteMixed(form(folded), session.calibration)
    row = {"weight-only": measure(session, tflite_weight_only(convert_tflite(model, "float32")), workdir)}
    row["plain"] = measure(session, base.build(), workdir)
    row["ranges"] = measure(session, base.build(mse=True), workdir) if base.mse_calibrated() else row["plain"]
    for method in ("gptq", "bias"):
        row[method] = measure(session, TFLiteMixed(form(rounded(folded, session.calibration.arrays, method)), session.calibration).build(), workdir)
    equalized, _ = equalize(folded, session.calibration.arrays)
    row["equalization"] = measure(session, TFLiteMixed(form(equalized), session.calibration).build(), workdir) if equalized is not None else row["plain"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ptq_methods.md"))
    args = parser.parse_args()
    workdir = Path(args.out).parent / "ptq_methods_work"
    workdir.mkdir(parents=True, exist_ok=True)
    header = "| model | weight-only int8 | plain int8 | GPTQ rounding | bias correction | ranges for the least error | equalization |"
    lines = [header, "|" + "---|" * 7]
    print(header, flush=True)
    for entry in corpus():
        if entry["half"] != "development" or (args.only and entry["file"] not in args.only):
            continue
        try:
            r = run_model(entry, workdir)
        except Exception as exc:  # noqa: BLE001 - a model the methods cannot run on: say so, go on
            lines.append(f"| {entry['file']} | {type(exc).__name__}: {str(exc).splitlines()[0][:100]} |")
        else:
            delta = lambda k: f"{r[k] - r['plain']:+.2f}"  # noqa: E731
            lines.append(f"| {entry['file']} | {r['weight-only']:.2f} | {r['plain']:.2f} | {delta('gptq')} | {delta('bias')} | "
                         f"{delta('ranges')} | {delta('equalization')} |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
