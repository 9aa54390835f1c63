"""How many timed runs make a p50 stable on this machine (what a latency gate needs).

    python benchmarks/latency_stability.py [--repeats 15] [--counts 5,10,20,50,100,200,400] [MODEL ...]

For each model: export float32 and int8 TFLite and ONNX artifacts once (``gencompress.quantize``
with the guard off, few samples), then, interleaving run counts so that machine load hits each
count alike, measure the p50 of N timed runs (the run's one latency protocol, with a budget large
enough never to cut N) ``--repeats`` times per N. One table per model: for each artifact and N,
the spread of the repeated p50s as a share of their median: the interquartile range (how far a
typical rerun moves) and max-min (the worst rerun seen). A gate is stable at the smallest N whose
worst spread stays under the gate's tolerance.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _artifacts(model_path: str, workdir: Path):
    import gencompress as gc
    from gencompress.config import QuantizeConfig

    model = gc.load_model(model_path)
    config = QuantizeConfig(min_psnr=0.0, eval_samples=8, latency_runs=5)
    result = gc.quantize(model, config, gc.Calibration.noise(32))
    out = result.save(workdir / model.stem)
    return model, [(a.format, a.precision, out / a.name) for a in result.report.artifacts]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=[str(REPO / "sample_models" / "dcgan_digits.h5")])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--counts", default="5,10,20,50,100,200,400")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]

    import tempfile

    import numpy as np

    from gencompress.converters.runners import make_runner
    from gencompress.report.latency import measure_latency

    with tempfile.TemporaryDirectory() as tmp:
        for path in args.models:
            model, artifacts = _artifacts(path, Path(tmp))
            sample = {t.name: np.random.default_rng(0).standard_normal((1,) + tuple(t.shape[1:])).astype(t.dtype) for t in model.inputs}
            print(f"\n## {Path(path).name}\n")
            print("| artifact | runs | median p50 ms | IQR / median | (max-min) / median | seconds per p50 |")
            print("|---|---|---|---|---|---|")
            for fmt, precision, file in artifacts:
                runner = make_runner(file, fmt, model.input_names, [t.name for t in model.outputs])
                p50s = {n: [] for n in counts}
                seconds = {n: 0.0 for n in counts}
                for _ in range(args.repeats):
                    for n in counts:  # interleaved: load changes hit every count alike
                        t0 = time.perf_counter()
                        p50s[n].append(measure_latency(runner, sample, runs=n, max_seconds=1e9)["p50"])
                        seconds[n] += time.perf_counter() - t0
                for n in counts:
                    values = sorted(p50s[n])
                    med = statistics.median(values)
                    q1, q3 = np.percentile(values, [25, 75])
                    print(
                        f"| {file.name} | {n} | {med:.4f} | {100 * (q3 - q1) / med:.1f} % | "
                        f"{100 * (values[-1] - values[0]) / med:.1f} % | {seconds[n] / args.repeats:.3f} |"
                    )
                sys.stdout.flush()


if __name__ == "__main__":
    main()
