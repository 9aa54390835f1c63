"""What onnxruntime runs for an int8 ONNX export of each real generator, and where its time goes.

    python benchmarks/onnx_runtime_graph.py [--only FILE ...] [--runs 50] [--seconds 6]

Per model: the float export; plain int8 as ``quantize_onnx`` writes it (int8 activations, no
nodes excluded); the same with uint8 activations (``Int8Layout``); and int8 with the op types
onnxruntime left in float excluded from quantization (float weights, no Q/DQ around them). Each
read back as onnxruntime optimizes it
(``ort_graph.runtime_graph``: int8 kernels, float compute nodes, Q/DQ left) and profiled at batch
1 on 1 thread (``ort_graph.profile``). Noise calibration (32 samples, seed 0); PSNR of each int8
export against the float export on 8 other noise samples. Timings compare within a model's rows
only (one run, the same process); the graph columns are deterministic.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from real_generators import REAL, manifest  # noqa: E402

DEFAULT = ("fmnist_cgan_generator.h5", "janfab_vaegan_k3_generator.keras", "catgan_dcgan_generator.h5")


def _psnr(ref: np.ndarray, out: np.ndarray) -> float:
    peak = float(ref.max() - ref.min()) or 1.0
    mse = float(np.mean((ref.astype(np.float64) - out) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def _outputs(data: bytes, samples) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return [session.run(None, s)[0] for s in samples]


def _variants(model, calib):
    import onnx

    from gencompress.converters.onnx import Int8Layout, export_onnx_float, quantize_onnx
    from gencompress.converters.ort_graph import float_compute_nodes

    float_bytes = export_onnx_float(model)
    plain = quantize_onnx(float_bytes, "int8", calib, layout=Int8Layout(activations="int8"))
    variants = {
        "float": float_bytes,
        "int8": plain,
        "int8, uint8 act.": quantize_onnx(float_bytes, "int8", calib),  # the default since it measured faster
    }
    left = float_compute_nodes(plain)
    excluded = [n.name for n in onnx.load_from_string(float_bytes).graph.node if n.op_type in left]
    if excluded:
        variants[f"int8, {'/'.join(sorted(left))} excluded"] = quantize_onnx(float_bytes, "int8", calib, nodes_to_exclude=excluded)
    return variants


def measure(path: Path, runs: int, seconds: float) -> list[str]:
    from gencompress.calibration.sources import noise_set
    from gencompress.compress.quantization import keras_layer_names
    from gencompress.converters.ort_graph import profile, runtime_graph
    from gencompress.model import load_model

    model = load_model(str(path))
    calib = noise_set(model.inputs, 32, np.random.default_rng([0, 1]), model.label_ranges)
    check = noise_set(model.inputs, 8, np.random.default_rng([0, 2]), model.label_ranges)
    checks = list(check.samples())
    variants = _variants(model, calib)
    reference = _outputs(variants["float"], checks)
    names = keras_layer_names(model)
    rows, float_call = [], None
    for label, data in variants.items():
        graph = runtime_graph(data, names)
        breakdown, node_ms = profile(data, calib.sample(0), runs, seconds)
        float_call = float_call or breakdown.call_ms
        psnr = "" if label == "float" else f"{np.mean([_psnr(r, o) for r, o in zip(reference, _outputs(data, checks))]):.1f}"
        kernels = ", ".join(f"{op} ×{n}" for op, n in graph.int8_kernels.items()) or "none"
        floats: dict[str, list[float]] = {}
        for n in graph.float_nodes:
            floats.setdefault(n.op, []).append(node_ms.get(n.name, 0.0))
        float_cell = ", ".join(f"{op} ×{len(v)} ({100 * sum(v) / breakdown.kernels_ms:.0f} %)" for op, v in floats.items()) or "none"
        share = lambda ms: f"{100 * ms / breakdown.kernels_ms:.0f} %"  # noqa: E731
        rows.append(
            f"| {path.name} | {label} | {psnr} | {breakdown.call_ms:.3f} | {float_call / breakdown.call_ms:.2f}× | "
            f"{breakdown.floor_ms:.3f} | {kernels} | {float_cell} | {graph.quantize_nodes}/{graph.dequantize_nodes} | "
            f"{share(breakdown.quantize_ms)} ({share(breakdown.weight_dequantize_ms)}) | {share(breakdown.kernels_ms - breakdown.compute_ms - breakdown.quantize_ms)} | "
            f"{breakdown.explanation.split(':')[0]} |"
        )
        top = ", ".join(f"{r.op} {100 * r.ms / breakdown.kernels_ms:.0f} %" for r in breakdown.by_op[:6])
        print(f"  {path.name} {label}: by op: {top}", file=sys.stderr, flush=True)
    return rows


HEADER = (
    "| model | export | PSNR dB vs float | call p50 ms | speed-up | floor ms | int8 kernels | float compute nodes (share of node time) "
    "| Q/DQ nodes | Q/DQ share (weights' DQ) | data-movement share | profile says |\n|" + "---|" * 12
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(DEFAULT))
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    known = {e["file"] for e in manifest()}
    print(HEADER, flush=True)
    for name in args.only:
        if name not in known:
            sys.exit(f"onnx_runtime_graph: error: {name} is not in {REAL / 'MANIFEST.json'}")
        for row in measure(REAL / name, args.runs, args.seconds):
            print(row, flush=True)


if __name__ == "__main__":
    main()
