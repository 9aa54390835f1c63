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
    parser.add_argument("--rounds", help="instead: the gate's protocol, medians of R interleaved rounds, for each R of this list")
    parser.add_argument("--round-runs", type=int, default=20)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.rounds:
        return rounds_table(args)

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


def rounds_table(args) -> None:
    """The gate protocol: every gated artifact and its float32 reference measured in turn, R
    rounds of ``--round-runs`` runs each; the value is the median of an artifact's round p50s.
    Spread of that value (and of the speed-up int8 over float) over ``--repeats`` repeats."""
    import tempfile

    import numpy as np

    from gencompress.converters.runners import make_runner
    from gencompress.report.latency import measure_latency

    rounds = [int(r) for r in args.rounds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.models:
            model, artifacts = _artifacts(path, Path(tmp))
            sample = {t.name: np.random.default_rng(0).standard_normal((1,) + tuple(t.shape[1:])).astype(t.dtype) for t in model.inputs}
            runners = {(f, p): make_runner(file, f, model.input_names, [t.name for t in model.outputs]) for f, p, file in artifacts}
            print(f"\n## {Path(path).name}: medians of R rounds of {args.round_runs} runs, interleaved\n")
            print("| R | artifact or ratio | median | (max-min) / median | seconds per gate |")
            print("|---|---|---|---|---|")
            for r in rounds:
                values = {k: [] for k in runners}
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    p50s = {k: [] for k in runners}
                    for _ in range(r):
                        for k, runner in runners.items():
                            p50s[k].append(measure_latency(runner, sample, warmup=2, runs=args.round_runs, max_seconds=1e9)["p50"])
                    for k in runners:
                        values[k].append(statistics.median(p50s[k]))
                seconds = (time.perf_counter() - t0) / args.repeats
                rows = {f"{f} {p}": v for (f, p), v in values.items()}
                for fmt in dict.fromkeys(f for f, _ in runners):
                    if (fmt, "int8") in values:
                        rows[f"speed-up {fmt} int8"] = [a / b for a, b in zip(values[(fmt, "float32")], values[(fmt, "int8")])]
                for name, v in rows.items():
                    med = statistics.median(v)
                    print(f"| {r} | {name} | {med:.4f} | {100 * (max(v) - min(v)) / med:.1f} % | {seconds:.2f} |")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
