"""``gencompress inspect``: what a model is, and which of its ops will not run in int8."""

from __future__ import annotations

import numpy as np

from gencompress.calibration.sources import noise_set
from gencompress.printable import printable

_NOT_COMPUTE = {"QUANTIZE", "DEQUANTIZE"}


def float_ops_in_int8(model, samples: int = 16, seed: int = 0) -> list[dict] | None:
    """Ops that stay float when the model is converted to int8 with float fallback allowed.

    A trial conversion (TFLite, int8 ops preferred, float builtins allowed) on a few noise samples:
    any compute op whose output is still float32 has no int8 kernel for this model. Returns
    ``None`` when the model's integer inputs have no known range (no noise can be made).
    """
    from gencompress.errors import CalibrationError
    from gencompress.tfenv import import_tf

    tf = import_tf()
    try:
        calib = noise_set(model.inputs, samples, np.random.default_rng([seed, 0]), model.label_ranges)
    except CalibrationError:
        return None
    from gencompress.converters.tflite import int8_converter

    converter = int8_converter(model, calib)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    from ai_edge_litert.interpreter import Interpreter

    from gencompress.compat.tflite import ops_details
    from gencompress.compress.quantization import tflite_undelegated_ops
    from gencompress.tfenv import native_output_captured

    with native_output_captured():
        data = bytes(converter.convert())
        interpreter = Interpreter(model_content=data)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    leftovers = []
    for op in ops_details(interpreter):
        if op["op_name"] in _NOT_COMPUTE:
            continue
        outs = [tensors[i] for i in op["outputs"] if i >= 0]
        if outs and all(t["dtype"] == np.float32 for t in outs):
            leftovers.append({"op": op["op_name"], "tensor": outs[0]["name"], "why": "no int8 kernel"})
    for op in sorted(tflite_undelegated_ops(data) - {x["op"] for x in leftovers}):
        leftovers.append({"op": op, "tensor": "", "why": "int8 kernel not accelerated by XNNPACK (slower than float)"})
    return leftovers


def onnx_float_nodes_in_int8(model, samples: int = 16, seed: int = 0, profile_seconds: float = 1.5) -> dict | None:
    """What onnxruntime runs in float once the model's ONNX graph is quantized to int8.

    A trial export and int8 quantization (the layout ``quantize`` writes) on a few noise samples,
    read back as onnxruntime optimizes it (``ort_graph.runtime_graph``: deterministic), then the
    float and int8 graphs profiled at batch 1 for up to ``profile_seconds`` each (timings: they
    inform). Returns ``{"graph": RuntimeGraph with its breakdown, "float_call_ms": float}``, or
    ``None`` when the model's integer inputs have no known range or the export fails.
    """
    from gencompress.compress.quantization import keras_layer_names
    from gencompress.converters.onnx import export_onnx_float, quantize_onnx
    from gencompress.converters.ort_graph import profile, runtime_graph, with_costs
    from gencompress.errors import CalibrationError, ConversionError

    try:
        calib = noise_set(model.inputs, samples, np.random.default_rng([seed, 1]), model.label_ranges)
        float_bytes = export_onnx_float(model)
        int8 = quantize_onnx(float_bytes, "int8", calib)
    except (CalibrationError, ConversionError):
        return None
    graph = runtime_graph(int8, keras_layer_names(model))
    float_breakdown, _ = profile(float_bytes, calib.sample(0), runs=20, max_seconds=profile_seconds)
    breakdown, node_ms = profile(int8, calib.sample(0), runs=20, max_seconds=profile_seconds)
    return {"graph": with_costs(graph, breakdown, node_ms), "float_call_ms": float_breakdown.call_ms}


def _render_onnx(check) -> list[str]:
    if check is None:
        return ["onnx int8: not checked"]
    graph, breakdown = check["graph"], check["graph"].breakdown
    where = f"onnxruntime {graph.onnxruntime} (CPU)"
    kernels = ", ".join(f"{op} ×{n}" for op, n in graph.int8_kernels.items()) or "none"
    lines = [f"onnx int8: int8 kernels in {where}: {kernels}; Quantize/Dequantize left: {graph.quantize_nodes}/{graph.dequantize_nodes}"]
    if graph.float_nodes:
        lines.append(f"onnx int8: these nodes run in float in {where}:")
        lines += [
            f"  {n.op}: {n.name}" + (f" ({', '.join(n.layers)})" if n.layers else "") + (f" {n.ms:.3f} ms" if n.ms is not None else "")
            for n in graph.float_nodes
        ]
    else:
        lines.append(f"onnx int8: every compute node runs as an int8 kernel in {where}")
    top = ", ".join(f"{r.op} {100 * r.ms / max(breakdown.kernels_ms, 1e-9):.0f} %" for r in breakdown.by_op[:5])
    lines.append(
        f"onnx int8 profile (batch 1, 1 thread): {breakdown.call_ms:.3f} ms per call, float {check['float_call_ms']:.3f} ms; "
        f"node time by op: {top}"
    )
    lines.append(f"  {breakdown.explanation}")
    return lines


def _macs_lines(model) -> list[str]:
    """MACs of one batch-1 forward pass, and the layers doing most of them."""
    if model.keras_model is None:
        return ["MACs: not counted (a plain SavedModel has no Keras layers)"]
    from gencompress.report.macs import count_macs, macs_text

    counted = count_macs(model.keras_model)
    top = sorted(counted.layers, key=lambda r: -r["macs"])[:3]
    share = ", ".join(f"{r['name']} {100 * r['macs'] / counted.total:.0f} %" for r in top) if counted.total else ""
    lines = [f"MACs: {macs_text(counted.total)} ({counted.total:,}) per sample" + (f"; most in {share}" if share else "")]
    if counted.uncounted:
        lines.append(f"MACs not counted in: {', '.join(counted.uncounted)}")
    return lines


def render_inspection(model, leftovers, onnx_check=None) -> str:
    lines = [
        f"model: {model.path} ({model.format})",
        f"parameters: {model.params:,}",
    ]
    lines += _macs_lines(model)
    lines += [
        "inputs:",
    ]
    lines += [f"  {t.name}: {list(t.shape)} {t.dtype}" for t in model.inputs]
    lines.append("outputs:")
    lines += [f"  {t.name}: {list(t.shape)} {t.dtype}" for t in model.outputs]
    rng = model.known_output_range()
    lines.append(
        f"output range: {list(rng)} ({model.output_activation})" if rng else "output range: unbounded (measured at evaluation)"
    )
    rows = model.layer_rows()
    if rows:
        lines.append("layers:")
        w = max(len(r["name"]) for r in rows)
        c = max(len(r["class"]) for r in rows)
        for r in rows:
            lines.append(f"  {r['name']:<{w}}  {r['class']:<{c}}  {r['params']:>9,}  {r['output_shape']}")
    if leftovers is None:
        lines.append("int8: not checked")
    elif leftovers:
        lines.append("int8: these ops will not run as fast int8:")
        lines += [f"  {x['op']}: {x['why']}" + (f" ({x['tensor']})" if x["tensor"] else "") for x in leftovers]
    else:
        lines.append("int8: every op maps to an int8 kernel")
    if onnx_check is not None or leftovers is not None:
        lines += _render_onnx(onnx_check)
    return "\n".join(printable(line) for line in lines)  # a name with a newline stays on its line
