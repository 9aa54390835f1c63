"""Default `gencompress quantize` on every published generator in ../shared/real_generators (both batches).

    python benchmarks/real_generators.py [--only FILE ...] [--half development|held-out] [--samples] [--fast] [--out DIR]

One row per model: its half of the corpus split (tests/real_generators.py), load time, per format
the shipped artifact (its precision, compute class and the search's pick or QAT), PSNR and
worst-sample PSNR against float, size vs float and speed-up over float (p50 of the float
artifact / p50 of the shipped one, same run, 1 thread), and the command's wall time. Each model
runs as its own `gencompress quantize` process, one at a time, so timings compare within a row.
Writes the table and every model's report under --out, and counts per half the model x format
pairs that meet issue 19's targets: fast and faithful (PSNR >= 30 dB, >= 1.2x float speed,
<= 35 % of its size), no shipped quantized artifact larger than its float file, none slower
than float where a passing faster attempt exists, worst sample >= 25 dB wherever the mean
meets 30 dB (or a note naming why), and under 10 minutes a model. `--samples` adds the shipped
sample models (counted apart).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from real_generators import REAL, corpus, load_args, load_kwargs  # noqa: E402

SAMPLES = REPO / "sample_models"
SAMPLE_FILES = ["dcgan_digits.h5", "dcgan_saturated.h5", "cvae_decoder.h5", "sr_photos.h5"]
HALVES = ("development", "held-out", "samples")

HEADER = (
    "| model | half | load s | TFLite shipped | PSNR dB | worst dB | size vs float | speed-up | ONNX shipped | PSNR dB | worst dB | "
    "size vs float | speed-up | wall time | exit |"
)
TARGETS = {"psnr_db": 30.0, "speed_up": 1.2, "size_vs_float": 0.35, "worst_db": 25.0, "minutes": 10.0}
SLOWER = 1.10  # "slower than float": beyond this factor (latency noise on sub-millisecond models)


def _load_seconds(entry, folder: Path) -> float:
    kwargs = load_kwargs(entry, folder)
    code = (
        "import json, sys, time; from gencompress.model import load_model; t = time.perf_counter(); "
        "load_model(sys.argv[1], **json.loads(sys.argv[2])); print(time.perf_counter() - t)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(entry["path"]), json.dumps(kwargs)], capture_output=True, text=True)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return float("nan")


def shipped(report: dict, fmt: str):
    """(float32 reference, the shipped quantized artifact or None) of one format."""
    arts = [a for a in report["artifacts"] if a["format"] == fmt]
    ref = next(a for a in arts if a["precision"] == "float32" and not a.get("variant"))
    graded = [a for a in arts if a is not ref and a["precision"] != "float32" and a.get("passed") is not None]
    quantized = graded or [a for a in arts if a is not ref and a["precision"] != "float32"]
    return ref, (quantized[0] if quantized else None)


def judge(report: dict, fmt: str) -> dict:
    """Issue 19's checks on one format's shipped artifact."""
    ref, q = shipped(report, fmt)
    if q is None or q["fidelity"]["psnr_db"] is None:
        return {"fast_faithful": False, "larger": False, "slower_with_faster_passing": False, "worst_ok": True}
    speed = ref["latency_ms"]["p50"] / q["latency_ms"]["p50"]
    psnr, worst = q["fidelity"]["psnr_db"], q["fidelity"].get("psnr_worst_db")
    ok = psnr >= TARGETS["psnr_db"] and speed >= TARGETS["speed_up"] and q["size_vs_float"] <= TARGETS["size_vs_float"]
    attempts = (q.get("fallback") or {}).get("attempts", [])
    faster_passing = any(t["passed"] and t["latency_p50_ms"] and t["latency_p50_ms"] * SLOWER < ref["latency_ms"]["p50"] for t in attempts)
    slower = q["latency_ms"]["p50"] > ref["latency_ms"]["p50"] * SLOWER
    named = any("worst held-out sample" in n for n in q.get("notes", []))
    return {
        "fast_faithful": ok,
        "larger": q["size_bytes"] > ref["size_bytes"],
        "slower_with_faster_passing": slower and faster_passing,
        "worst_ok": psnr < TARGETS["psnr_db"] or worst is None or worst >= TARGETS["worst_db"] or named,
    }


def _cells(report: dict, fmt: str) -> list[str]:
    ref, q = shipped(report, fmt)
    if q is None:
        return ["failed", "", "", "", ""]
    pick = "QAT" if q.get("variant") == "qat" else (q.get("fallback") or {}).get("chosen", q["precision"])
    compute = q.get("compute") or (q.get("fallback") or {}).get("compute", "")
    psnr, worst = q["fidelity"]["psnr_db"], q["fidelity"].get("psnr_worst_db")
    speed = ref["latency_ms"]["p50"] / q["latency_ms"]["p50"]
    return [f"{q['precision']} ({compute}): {pick}", "NaN" if psnr is None else f"{psnr:.1f}", "-" if worst is None else f"{worst:.1f}",
            f"{100 * q['size_vs_float']:.0f} %", f"{speed:.2f}×"]


def _entries(args) -> list[dict]:
    entries = [e for e in corpus() if not args.half or e["half"] == args.half]
    if args.samples:
        entries = [{"file": n, "path": SAMPLES / n, "custom_layers": [], "half": "samples"} for n in SAMPLE_FILES] + entries
    return [e for e in entries if not args.only or e["file"] in args.only]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model files to run (default: all)")
    parser.add_argument("--fast", action="store_true", help="pass --fast to quantize")
    parser.add_argument("--samples", action="store_true", help="also the shipped sample models")
    parser.add_argument("--half", choices=["development", "held-out"], help="only one half of the corpus split")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--extra", nargs="*", default=[], help="more quantize options, e.g. --extra=--method=ptq")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "real_generators"))
    args = parser.parse_args()
    if not REAL.is_dir():
        sys.exit(f"real generators not present at {REAL}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    print(rows[0], flush=True)
    counts = {h: {"models": 0, "pairs": 0, "fast_faithful": 0, "larger": 0, "slower_with_faster_passing": 0, "worst_ok": 0,
                  "over_time": 0, "failed": 0} for h in HALVES}
    for entry in _entries(args):
        folder = out / Path(entry["file"]).stem
        folder.mkdir(exist_ok=True)
        half = counts[entry["half"]]
        half["models"] += 1
        half["pairs"] += 2
        load = _load_seconds(entry, folder)
        command = [sys.executable, "-m", "gencompress", "quantize", str(entry["path"]), "-o", str(folder)]
        command += load_args(entry, folder) + (["--fast"] if args.fast else []) + [x for e in args.extra for x in e.split("=", 1)]
        start = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired as exc:  # what it printed so far says where the time went
            partial = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            (folder / "stderr.log").write_text(partial)
            half["failed"] += 1
            half["over_time"] += 1
            rows.append(f"| {entry['file']} | {entry['half']} | {load:.1f} | timed out after {args.timeout} s |")
            print(rows[-1], flush=True)
            continue
        wall = time.perf_counter() - start
        (folder / "stderr.log").write_text(result.stderr)
        half["over_time"] += wall > TARGETS["minutes"] * 60
        if result.returncode not in (0, 3):
            half["failed"] += 1
            last = (result.stderr.strip().splitlines() or ["?"])[-1][:140].replace("|", "/")
            rows.append(f"| {entry['file']} | {entry['half']} | {load:.1f} | failed (exit {result.returncode}): {last} |")
        else:
            report = json.loads((folder / "report.json").read_text())
            for fmt in ("tflite", "onnx"):
                for key, value in judge(report, fmt).items():
                    half[key] += value
            cells = _cells(report, "tflite") + _cells(report, "onnx")
            rows.append(f"| {entry['file']} | {entry['half']} | {load:.1f} | " + " | ".join(cells) + f" | {wall / 60:.1f} min | {result.returncode} |")
        print(rows[-1], flush=True)
    rows.append("")
    for name, c in counts.items():
        if not c["models"]:
            continue
        rows.append(
            f"- {name}: {c['fast_faithful']} of {c['pairs']} model × format pairs fast and faithful (>= 30 dB, >= 1.2x float speed, "
            f"<= 35 % of its size); {c['larger']} shipped larger than float; {c['slower_with_faster_passing']} slower than float "
            f"with a faster passing attempt; worst sample >= 25 dB (or named) on {c['worst_ok']} of {c['pairs']}; "
            f"{c['failed']} of {c['models']} models failed; {c['over_time']} over 10 minutes"
        )
    print("\n".join(rows[-4:]))
    (out / "table.md").write_text("\n".join(rows) + "\n")
    (out / "counts.json").write_text(json.dumps(counts, indent=1))
    print(f"\nwritten: {out / 'table.md'}")


if __name__ == "__main__":
    main()
