"""Default `gencompress quantize` on every sample model, checked against the fidelity-guard targets.

    python benchmarks/quantize_targets.py [--latency-runs 300] [--out benchmarks/results]

Targets (issue "Quantize without breaking the generator"), per sample and format:
  int8 PSNR >= 35 dB, size <= 30 % of float, TFLite p50 faster than float, ONNX not slower.
Timings vary with the machine: compare runs made on the same machine, one at a time.
Writes a markdown table (and the per-model reports) under --out.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gencompress.model import load_model  # noqa: E402
from gencompress.workflow import RunOptions, run  # noqa: E402

SAMPLES = ["dcgan_digits.h5", "dcgan_saturated.h5", "cvae_decoder.h5", "sr_photos.h5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=300)
    parser.add_argument("--min-psnr", type=float, default=30.0, help="the quantize default")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    rows = [
        "| sample | format | chosen | PSNR dB | size vs float | p50 ms (float → int8) | PSNR ≥ 35 | size ≤ 30 % | latency |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sample in SAMPLES:
        model = load_model(REPO / "sample_models" / sample)
        options = RunOptions(latency_runs=args.latency_runs, min_psnr=args.min_psnr)
        report = run(model, options, out / model.stem, "quantize")
        for fmt in ("tflite", "onnx"):
            arts = [a for a in report["artifacts"] if a["format"] == fmt]
            ref, q = arts[0], arts[1]
            psnr = q["fidelity"]["psnr_db"]
            f50, q50 = ref["latency_ms"]["p50"], q["latency_ms"]["p50"]
            fast = q50 < f50 if fmt == "tflite" else q50 <= f50 * 1.05
            chosen = q.get("fallback", {}).get("chosen", q["precision"])
            rows.append(
                f"| {sample} | {fmt} | {chosen} | {psnr:.2f} | {100 * q['size_vs_float']:.1f} % | "
                f"{f50:.4f} → {q50:.4f} | {'yes' if psnr >= 35 else 'NO'} | "
                f"{'yes' if q['size_vs_float'] <= 0.30 else 'NO'} | {'yes' if fast else 'NO'} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(rows) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantize_targets.md").write_text(table)
    print(f"\nwritten: {out / 'quantize_targets.md'}")


if __name__ == "__main__":
    main()
