"""Channel pruning on published generators (issue 20): `prune --structure channels --target-macs 0.5
--then int8` on seven of them, and `distill --width 0.5` (from the teacher) on three.

    python benchmarks/structured_pruning.py [--only FILE ...] [--skip-distill] [--skip-prune] [--extra ARG ...] [--out DIR] [--retime]

Each command runs as its own process with the defaults, one at a time. The prune table: MACs and
parameters kept, PSNR/SSIM of the pruned float and int8 models against the original, file sizes
against the original's of the same format and precision, and the speed-ups of the pruned float
and int8 artifacts over the original's (`channel_pruning.comparison`: original and pruned timed
against each other in interleaved rounds in one process, the ratio of their CPU time per run:
the load of a shared machine swings wall-clock ratios; `--retime` times a finished run's pairs
again), and the wall time. The
distill table: the student's PSNR against the teacher (from its teacher-initialised start), its
parameters and MACs, and the planned time. Targets (issue 20): <= 50 % MACs, >= 30 dB (35 dB
stretch), float >= 1.6x and int8 >= 1.5x faster than the original's, under 10 minutes; distill
>= 5 dB above the random-init figures (catgan 18.4, fmnist_cgan 26.3, dlss_sr 23.4 dB).
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

PRUNE = [
    "catgan_dcgan_generator.h5", "rauzan_cgan_generator.h5", "fmnist_cgan_generator.h5", "janfab_vaegan_k3_generator.keras",
    "dlss_sr_generator.h5", "colourization_mse.h5", "cnncodec_k3_decoder_small.keras",
]
DISTILL = {"catgan_dcgan_generator.h5": 18.4, "fmnist_cgan_generator.h5": 26.3, "dlss_sr_generator.h5": 23.4}

PRUNE_HEADER = (
    "| model | MACs kept | params kept | PSNR float | SSIM float | PSNR int8 | size float (TFLite/ONNX) | size int8 | "
    "speed-up float TFLite / ONNX | speed-up int8 TFLite / ONNX | re-fit → fine-tuned dB | wall time | exit |"
)
DISTILL_HEADER = "| model | student params | student MACs | start dB (re-fit) | PSNR vs teacher | random init (issue) | gain | wall time | exit |"


def _run(command: list[str], folder: Path, timeout: int) -> tuple[int | None, float]:
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start
    (folder / "stderr.log").write_text(result.stderr)
    (folder / "stdout.log").write_text(result.stdout)
    return result.returncode, time.perf_counter() - start


def _finished(folder: Path) -> tuple[int | None, float]:
    run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {"exit": None, "wall_s": 0.0}
    return run["exit"], run["wall_s"]


def _rows(c: dict) -> dict:
    return {(r["format"], r["precision"]): r for r in c["comparison"]}


def _art(report: dict, variant, fmt: str, slot: str) -> dict | None:
    for a in report["artifacts"]:
        search = a.get("fallback") or a.get("smallest_int8_search")
        kind = "int8" if search else a["precision"]
        if a.get("variant") == variant and a["format"] == fmt and kind == slot:
            return a
    return None


def prune_row(name: str, report: dict, wall: float, code: int) -> str:
    c = report["channel_pruning"]
    rows = _rows(c)
    f_t, f_o = _art(report, "pruned", "tflite", "float32"), _art(report, "pruned", "onnx", "float32")
    q_t = _art(report, "pruned", "tflite", "int8")

    def pair(key, prec):
        vals = [rows.get((fmt, prec), {}).get(key) for fmt in ("tflite", "onnx")]
        return " / ".join("-" if v is None else (f"{v:.2f}×" if key == "speedup" else f"{100 * v:.0f} %") for v in vals)

    psnr = lambda a: "-" if a is None or a["fidelity"]["psnr_db"] is None else f"{a['fidelity']['psnr_db']:.1f}"  # noqa: E731
    ssim = "-" if f_t is None or f_t["fidelity"]["ssim"] is None else f"{f_t['fidelity']['ssim']:.3f}"
    ft = c["finetune"]
    return (
        f"| {name} | {100 * c['macs_ratio']:.1f} % | {100 * c['params_ratio']:.1f} % | {psnr(f_t)} | {ssim} | {psnr(q_t)} | "
        f"{pair('size_ratio', 'float32')} | {pair('size_ratio', 'int8')} | {pair('speedup', 'float32')} | {pair('speedup', 'int8')} | "
        f"{c['psnr_refit_db']:.1f} → {c['final_psnr_db']:.1f} ({ft['steps_run']} steps) | {wall / 60:.1f} min | {code} |"
        + ("" if f_o else " (no ONNX float)")
    )


def distill_row(name: str, report: dict, wall: float, code: int) -> str:
    d = report["distillation"]
    init = d.get("init") or {}
    final = d["final_psnr_db"]
    base = DISTILL[name]
    return (
        f"| {name} | {d['student_params']:,} ({100 * d['params_ratio']:.0f} %) | {100 * d['student_macs'] / d['teacher_macs']:.0f} % | "
        f"{init.get('psnr_start_db', '-')} | {final:.1f} | {base} | {final - base:+.1f} dB | {wall / 60:.1f} min | {code} |"
    )


def retime(folder: Path) -> None:
    """Time each original/pruned artifact pair of a finished run again (``measure_pair``, as the
    pipeline does) and write the figures into its report.json's ``channel_pruning.comparison``."""
    from gencompress.converters.runners import make_runner
    from gencompress.pipelines.prune_channels import PAIR_SECONDS, ROUNDS
    from gencompress.report.latency import measure_pair

    import numpy as np

    path = folder / "report.json"
    report = json.loads(path.read_text())
    inputs = [t["name"] for t in report["model"]["inputs"]]
    outputs = [t["name"] for t in report["model"]["outputs"]]
    rng = np.random.default_rng(0)
    sample = {t["name"]: (rng.standard_normal([1] + t["shape"][1:]) if "float" in t["dtype"] else np.zeros([1] + t["shape"][1:])).astype(t["dtype"])
              for t in report["model"]["inputs"]}
    for row in report["channel_pruning"]["comparison"]:
        runs = int(min(10, max(2, PAIR_SECONDS / (2 * ROUNDS * max(row["original_p50_ms"], row["pruned_p50_ms"], 1e-3) / 1000.0))))
        runners = [make_runner(folder / row[k], row["format"], inputs, outputs, 1) for k in ("original", "pruned")]
        timed = measure_pair(*runners, sample, ROUNDS, runs)
        row.update(original_p50_ms=timed["first_p50_ms"], pruned_p50_ms=timed["second_p50_ms"], speedup=timed["cpu_speedup"],
                   wall_speedup=timed["speedup"], timing=f"re-timed: {ROUNDS} interleaved rounds of {runs} runs; speedup: CPU time")
    path.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model files to run (default: the issue's)")
    parser.add_argument("--skip-prune", action="store_true")
    parser.add_argument("--skip-distill", action="store_true")
    parser.add_argument("--extra", nargs="*", default=[], help="more arguments for every command (e.g. --importance l1)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per command")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "structured_pruning"))
    parser.add_argument("--retime", action="store_true", help="only time the written artifacts of a finished run again and redo the table")
    args = parser.parse_args()
    if not REAL.is_dir():
        sys.exit(f"real generators not present at {REAL}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = {e["file"]: e for e in corpus()}
    tables = []
    jobs = [] if args.skip_prune else [("prune", n) for n in PRUNE]
    jobs += [] if args.skip_distill else [("distill", n) for n in DISTILL]
    for command, name in jobs:
        if args.only and name not in args.only:
            continue
        entry = entries[name]
        folder = out / command / Path(name).stem
        folder.mkdir(parents=True, exist_ok=True)
        how = ["--structure", "channels", "--target-macs", "0.5", "--then", "int8"] if command == "prune" else ["--width", "0.5"]
        cmd = [sys.executable, "-m", "gencompress", command, str(entry["path"]), "-o", str(folder), *how, *load_args(entry, folder), *args.extra]
        if args.retime:  # the run as it was, its pairs timed again
            code, wall = _finished(folder)
            if code in (0, 3) and command == "prune":
                retime(folder)
        else:
            code, wall = _run(cmd, folder, args.timeout)
            (folder / "run.json").write_text(json.dumps({"exit": code, "wall_s": wall}))
        header = PRUNE_HEADER if command == "prune" else DISTILL_HEADER
        if not tables or tables[-1][0] != header:
            tables.append((header, []))
            print("\n" + header + "\n|" + "---|" * (header.count("|") - 1), flush=True)
        if code is None:
            row = f"| {name} | timed out after {args.timeout} s |"
        elif code not in (0, 3):
            row = f"| {name} | failed (exit {code}): {(folder / 'stderr.log').read_text().strip().splitlines()[-1][:160]} |"
        else:
            report = json.loads((folder / "report.json").read_text())
            row = (prune_row if command == "prune" else distill_row)(name, report, wall, code)
        tables[-1][1].append(row)
        print(row, flush=True)
    text = "\n\n".join(h + "\n|" + "---|" * (h.count("|") - 1) + "\n" + "\n".join(r) for h, r in tables)
    (out / "table.md").write_text(text + "\n")
    print(f"\nwritten: {out / 'table.md'}")


if __name__ == "__main__":
    main()
