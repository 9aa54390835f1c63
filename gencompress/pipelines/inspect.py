"""``gencompress inspect``: what a model is, and which of its ops will not run in int8."""

from __future__ import annotations

import numpy as np

from gencompress.calibration.sources import noise_set

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


def render_inspection(model, leftovers) -> str:
    lines = [
        f"model: {model.path} ({model.format})",
        f"parameters: {model.params:,}",
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
    return "\n".join(lines)
