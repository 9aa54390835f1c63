"""Default `gencompress quantize` on every published generator in ../shared/real_generators (both batches).

    python benchmarks/real_generators.py [--only FILE ...] [--half development|held-out] [--samples] [--fast] [--out DIR]

One table: load time, per format the chosen precision, PSNR against float, size vs float and
speed-up over float (p50 of the float artifact / p50 of the chosen one, same run, 1 thread), and
the command's wall time. Each model runs as its own `gencompress quantize` process, one at a time,
so timings compare within a row; rerun on a quiet machine before comparing rows across runs.
Writes the table and every model's report under --out, and counts the model x format pairs that
meet issue 12's targets: PSNR >= 30 dB, p50 at least 1.2x faster than float, size <= 35 % of
float (and how many of them also reach 35 dB). `--samples` adds the shipped sample models.
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

HEADER = (
    "| model | load s | TFLite pick | PSNR dB | size vs float | speed-up | ONNX pick | PSNR dB | size vs float | "
    "speed-up | wall time | exit |"
)


def _load_seconds(entry, folder: Path) -> float:
    code = (
        "import sys, time; from gencompress.model import load_model; t = time.perf_counter(); "
        "load_model(sys.argv[1], trust_code=len(sys.argv) > 2, custom_objects_file=sys.argv[2] if len(sys.argv) > 2 else None); "
        "print(time.perf_counter() - t)"
    )
    extra = load_args(entry, folder)
    args = [str(entry["path"])] + ([extra[2]] if extra else [])
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    return float(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else float("nan")


TARGETS = {"psnr_db": 30.0, "speed_up": 1.2, "size_vs_float": 0.35}
ALSO_DB = 35.0


def meets(report: dict, fmt: str) -> tuple[bool, bool]:
    """(all three targets met, and 35 dB too) for one format's chosen artifact."""
    arts = [a for a in report["artifacts"] if a["format"] == fmt]
    ref = next(a for a in arts if a["precision"] == "float32")
    q = next((a for a in arts if a["precision"] != "float32"), None)
    if q is None or q["fidelity"]["psnr_db"] is None:
        return False, False
    speed = ref["latency_ms"]["p50"] / q["latency_ms"]["p50"]
    ok = q["fidelity"]["psnr_db"] >= TARGETS["psnr_db"] and speed >= TARGETS["speed_up"] and q["size_vs_float"] <= TARGETS["size_vs_float"]
    return ok, ok and q["fidelity"]["psnr_db"] >= ALSO_DB


def _cells(report: dict, fmt: str) -> list[str]:
    arts = [a for a in report["artifacts"] if a["format"] == fmt]
    ref = next(a for a in arts if a["precision"] == "float32")
    q = next((a for a in arts if a["precision"] != "float32"), None)
    if q is None:
        return ["failed", "", "", ""]
    pick = q.get("fallback", {}).get("chosen", q["precision"])
    psnr = q["fidelity"]["psnr_db"]
    speed = ref["latency_ms"]["p50"] / q["latency_ms"]["p50"]
    return [f"{q['precision']}: {pick}", "NaN" if psnr is None else f"{psnr:.1f}", f"{100 * q['size_vs_float']:.0f} %", f"{speed:.2f}×"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model files to run (default: all)")
    parser.add_argument("--fast", action="store_true", help="pass --fast to quantize")
    parser.add_argument("--samples", action="store_true", help="also the shipped sample models")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--half", choices=["development", "held-out"], help="only one half of the corpus split")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "real_generators"))
    args = parser.parse_args()
    if not REAL.is_dir():
        sys.exit(f"real generators not present at {REAL}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    print(rows[0], flush=True)
    counts = {"pairs": 0, "meet": 0, "meet_35": 0}
    entries = [e for e in corpus() if not args.half or e["half"] == args.half]
    if args.samples:
        entries = [{"file": n, "path": SAMPLES / n, "custom_layers": []} for n in SAMPLE_FILES] + entries
    for entry in entries:
        if args.only and entry["file"] not in args.only:
            continue
        folder = out / Path(entry["file"]).stem
        folder.mkdir(exist_ok=True)
        load = _load_seconds(entry, folder)
        command = [sys.executable, "-m", "gencompress", "quantize", str(entry["path"]), "-o", str(folder)]
        command += load_args(entry, folder) + (["--fast"] if args.fast else [])
        start = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append(f"| {entry['file']} | {load:.1f} | timed out after {args.timeout} s |")
            print(rows[-1], flush=True)
            continue
        wall = time.perf_counter() - start
        (folder / "stderr.log").write_text(result.stderr)
        if result.returncode not in (0, 3):
            rows.append(f"| {entry['file']} | {load:.1f} | failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1][:120]} |")
        else:
            report = json.loads((folder / "report.json").read_text())
            cells = _cells(report, "tflite") + _cells(report, "onnx")
            for fmt in ("tflite", "onnx"):
                ok, ok35 = meets(report, fmt)
                counts["pairs"] += 1
                counts["meet"] += ok
                counts["meet_35"] += ok35
            rows.append(f"| {entry['file']} | {load:.1f} | " + " | ".join(cells) + f" | {wall / 60:.1f} min | {result.returncode} |")
        print(rows[-1], flush=True)
    rows.append(
        f"\n{counts['meet']} of {counts['pairs']} model x format pairs meet PSNR >= 30 dB, >= 1.2x faster than float "
        f"and <= 35 % of its size; {counts['meet_35']} of them also reach 35 dB."
    )
    print(rows[-1])
    (out / "table.md").write_text("\n".join(rows) + "\n")
    print(f"\nwritten: {out / 'table.md'}")


if __name__ == "__main__":
    main()
