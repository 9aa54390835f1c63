"""Every artifact of the shipped samples and the published generators in its browser runtime.

    python benchmarks/browser.py [--only FILE ...] [--batch2] [--no-samples] [--timeout S] [--out DIR]
    python benchmarks/browser.py --ops            # the single-op table behind browser_ops

Runs `gencompress quantize MODEL --browser --fast --latency-runs 50` on each model (one process
each, one at a time) and writes one row per artifact: whether it loads in its browser runtime
(onnxruntime-web for .onnx, LiteRT.js for .tflite, headless Chromium), PSNR against the float
model natively and in the browser, the browser outputs against the native runtime's, and the
p50 latency natively, in the browser single-threaded and with threads. Counts issue 22's
targets: every float32 artifact loads and matches its native runtime to >= 80 dB; every int8 /
mixed artifact loads and its browser PSNR is within 0.5 dB of the native one, or the report
names the op that differs. Latencies compare within a row only (a shared 2-core machine).

`--ops` builds one-op Keras models (Dense, Conv2D, Conv2DTranspose, ...), converts each to
float32 and int8 .tflite and .onnx, and times all four natively and in the browser: which int8
ops a browser runtime runs slower than float (``converters/browser_ops.py``).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from real_generators import REAL, corpus, load_args  # noqa: E402

SAMPLES = REPO / "sample_models"
SAMPLE_FILES = ["dcgan_digits.h5", "dcgan_saturated.h5", "cvae_decoder.h5", "sr_photos.h5"]
HEADER = ("| model | artifact | loads | PSNR dB native | PSNR dB browser | browser vs native dB | p50 ms native | "
          "p50 ms browser | p50 ms browser, threads | target |")
FLOAT_DB, SLACK_DB = 80.0, 0.5


def target(a: dict) -> tuple[bool, str]:
    """(met, why) for one artifact against issue 22's targets."""
    run = a.get("browser") or {}
    if not run.get("loaded") or run.get("error"):
        return False, f"does not load: {run.get('error')}"
    if a["precision"] == "float32":
        ok = (run.get("native_psnr_db") or 0) >= FLOAT_DB
        return ok, "yes" if ok else f"{run.get('native_psnr_db')} dB vs native"
    native, browser = a["fidelity"]["psnr_db"], (run.get("fidelity") or {}).get("psnr_db")
    if native is not None and browser is not None and abs(native - browser) <= SLACK_DB:
        return True, "yes"
    return bool(run.get("differing_op")), f"differs; op: {run.get('differing_op') or 'not named'}"


def rows_of(model: str, report: dict) -> list[tuple[str, bool]]:
    rows = []
    for a in report["artifacts"]:
        run = a.get("browser") or {}
        ok, why = target(a)
        lat, threaded = run.get("latency_ms"), run.get("threads_latency_ms")
        cells = [
            model, Path(a["path"]).name, "yes" if run.get("loaded") and not run.get("error") else "NO",
            _num(a["fidelity"]["psnr_db"]), _num((run.get("fidelity") or {}).get("psnr_db")), _num(run.get("native_psnr_db"), "{:.1f}"),
            f"{a['latency_ms']['p50']:.3f}", "-" if not lat else f"{lat['p50']:.3f}",
            "-" if not threaded else f"{threaded['p50']:.3f} ({run['threads']})", why,
        ]
        rows.append(("| " + " | ".join(cells) + " |", ok))
    return rows


def _num(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def entries(args) -> list[dict]:
    found = [] if args.no_samples else [{"file": n, "path": SAMPLES / n, "custom_layers": []} for n in SAMPLE_FILES]
    if REAL.is_dir():
        found += [e for e in corpus() if e["batch"] == 1 or args.batch2]
    return [e for e in found if not args.only or e["file"] in args.only]


def models(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    print("\n".join(lines), flush=True)
    met = total = 0
    for entry in entries(args):
        folder = out / Path(entry["file"]).stem
        folder.mkdir(exist_ok=True)
        command = [sys.executable, "-m", "gencompress", "quantize", str(entry["path"]), "-o", str(folder), "--browser", "--fast",
                   "--latency-runs", "50"] + load_args(entry, folder)
        start = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            lines.append(f"| {entry['file']} | timed out after {args.timeout} s |")
            print(lines[-1], flush=True)
            continue
        (folder / "stderr.log").write_text(result.stderr)
        if result.returncode not in (0, 3):
            lines.append(f"| {entry['file']} | failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1][:160]} |")
        else:
            for line, ok in rows_of(entry["file"], json.loads((folder / "report.json").read_text())):
                lines.append(line)
                met, total = met + ok, total + 1
        lines.append(f"| | ({time.perf_counter() - start:.0f} s) |")
        print("\n".join(lines[-4:]), flush=True)
    lines.append(f"\n{met} of {total} artifacts meet the browser targets (float32: loads, >= {FLOAT_DB:g} dB against the "
                 f"native runtime; int8/mixed: loads, PSNR within {SLACK_DB} dB of native or the differing op named).")
    print(lines[-1])
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print(f"written: {out / 'table.md'}")


OPS = ["dense", "conv", "depthwise", "transposed", "leaky_relu", "prelu", "batchnorm", "tanh", "bilinear", "add"]


def one_op(kind: str):
    """A Keras model of one layer (of ``kind``) on a 16x16x32 input (Dense: 128 -> 2048)."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    x = keras.Input((128,) if kind == "dense" else (16, 16, 32), name="z")
    layer = {
        "dense": lambda: keras.layers.Dense(2048),
        "conv": lambda: keras.layers.Conv2D(32, 3, padding="same"),
        "depthwise": lambda: keras.layers.DepthwiseConv2D(3, padding="same"),
        "transposed": lambda: keras.layers.Conv2DTranspose(16, 4, 2, padding="same"),
        "leaky_relu": lambda: keras.layers.LeakyReLU(0.2),
        "prelu": lambda: keras.layers.PReLU(shared_axes=[1, 2]),
        "batchnorm": lambda: keras.layers.BatchNormalization(),
        "tanh": lambda: keras.layers.Activation("tanh"),
        "bilinear": lambda: keras.layers.UpSampling2D(2, interpolation="bilinear"),
        "add": None,
    }[kind]
    y = keras.layers.Add()([x, keras.layers.ReLU()(x)]) if layer is None else layer()(x)
    return keras.Model(x, y, name=kind)


def ops(args) -> None:
    """One-op models, float32 and int8, natively and in the browser: p50 ms and float/int8."""
    import tempfile

    import gencompress as gc
    from gencompress.calibration import Calibration
    from gencompress.converters.browser import BrowserSession
    from gencompress.converters.onnx import export_onnx_float, quantize_onnx
    from gencompress.converters.runners import make_runner
    from gencompress.converters.tflite import convert_tflite
    from gencompress.report.latency import measure_latency

    work = Path(tempfile.mkdtemp())
    lines = ["| op | format | native float32 ms | native int8 ms | native float/int8 | browser float32 ms | browser int8 ms | browser float/int8 |",
             "|---|---|---|---|---|---|---|---|"]
    with BrowserSession() as browser:
        for kind in OPS:
            model = gc.from_keras(one_op(kind), name=kind)
            calib, held = Calibration.noise().sets(model.inputs, model.label_ranges, 64, 4, 0)
            sample = {"z": held.arrays["z"][:1]}
            float_onnx = export_onnx_float(model)
            built = {("tflite", "float32"): convert_tflite(model, "float32"), ("tflite", "int8"): convert_tflite(model, "int8", calib),
                     ("onnx", "float32"): float_onnx, ("onnx", "int8"): quantize_onnx(float_onnx, "int8", calib)}
            p50 = {}
            for (fmt, precision), data in built.items():
                path = work / f"{kind}.{precision}.{fmt}"
                path.write_bytes(data)
                names = [model.outputs[0].name]
                native = make_runner(path, fmt, ["z"], names)
                runner = browser.page(fmt).runner(path, ["z"], names, work)
                p50[fmt, precision] = [_median_p50(measure_latency, r, sample) for r in (native, runner)]
            for fmt in ("tflite", "onnx"):
                (nf, bf), (ni, bi) = p50[fmt, "float32"], p50[fmt, "int8"]
                lines.append(f"| {kind} | {fmt} | {nf:.4f} | {ni:.4f} | {nf / ni:.2f}x | {bf:.4f} | {bi:.4f} | {bf / bi:.2f}x |")
                print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ops.md").write_text("\n".join(lines) + "\n")


def _median_p50(measure_latency, runner, sample, repeats: int = 5) -> float:
    """The median of ``repeats`` p50s of 100 runs (the machine is shared: one window can be off)."""
    import statistics

    return statistics.median(measure_latency(runner, sample, runs=100, max_seconds=2.0)["p50"] for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model files to run (default: all)")
    parser.add_argument("--batch2", action="store_true", help="also the second batch of published generators")
    parser.add_argument("--no-samples", action="store_true", help="skip the shipped sample models")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--ops", action="store_true", help="the single-op table instead of the models")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "browser"))
    args = parser.parse_args()
    ops(args) if args.ops else models(args)


if __name__ == "__main__":
    main()
