"""Default `gencompress quantize` on every published generator in ../shared/real_generators.

    python benchmarks/real_generators.py [--only FILE ...] [--fast] [--out benchmarks/results]

One table: load time, per format the chosen precision, PSNR against float, size vs float and
speed-up over float (p50 of the float artifact / p50 of the chosen one, same run, 1 thread), and
the command's wall time. Each model runs as its own `gencompress quantize` process, one at a time,
so timings compare within a row; rerun on a quiet machine before comparing rows across runs.
Writes the table and every model's report under --out.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from real_generators import REAL, load_args, manifest  # noqa: E402

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
    args = [str(REAL / entry["file"])] + ([extra[2]] if extra else [])
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    return float(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else float("nan")


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
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "real_generators"))
    args = parser.parse_args()
    if not REAL.is_dir():
        sys.exit(f"real generators not present at {REAL}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    print(rows[0], flush=True)
    for entry in manifest():
        if args.only and entry["file"] not in args.only:
            continue
        folder = out / Path(entry["file"]).stem
        folder.mkdir(exist_ok=True)
        load = _load_seconds(entry, folder)
        command = [sys.executable, "-m", "gencompress", "quantize", str(REAL / entry["file"]), "-o", str(folder)]
        command += load_args(entry, folder) + (["--fast"] if args.fast else [])
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        (folder / "stderr.log").write_text(result.stderr)
        if result.returncode not in (0, 3):
            rows.append(f"| {entry['file']} | {load:.1f} | failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1][:120]} |")
        else:
            report = json.loads((folder / "report.json").read_text())
            cells = _cells(report, "tflite") + _cells(report, "onnx")
            rows.append(f"| {entry['file']} | {load:.1f} | " + " | ".join(cells) + f" | {wall / 60:.1f} min | {result.returncode} |")
        print(rows[-1], flush=True)
    (out / "table.md").write_text("\n".join(rows) + "\n")
    print(f"\nwritten: {out / 'table.md'}")


if __name__ == "__main__":
    main()
