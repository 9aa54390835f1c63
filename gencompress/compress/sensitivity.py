"""Per-unit int8 sensitivity (``analyze``): how much quantizing each op or node hurts the output.

For each unit: the PSNR with only it in int8 and with all but it in int8; for TFLite also the
quantization debugger's per-tensor RMSE / scale (0.29 is the error of ideal rounding; much more
means the range is a poor fit).
"""

from __future__ import annotations

from gencompress.compress.search import rank_units
from gencompress.tfenv import import_tf, native_output_captured

TRANSPOSE_CONV_NOTE = (
    "TFLite keeps TRANSPOSE_CONV ops float only all together (its quantizer ignores node deny-lists "
    "for them): for those rows 'all but' keeps every TRANSPOSE_CONV float and 'only' is not measurable"
)


def sensitivity(units, build, denied_by_type, measure, stats: dict | None = None) -> dict:
    """Units ranked most sensitive first. ``build(float_units) -> bytes`` makes a variant with
    those units float (``[]``: full int8); ``stats``: RMSE / scale by unit name."""
    stats = stats or {}
    full = measure("int8", "int8", build([]))
    notes = []
    if any(sum(u.op == op for u in units) > 1 for op in denied_by_type):
        notes.append(TRANSPOSE_CONV_NOTE)
    rows = []
    for r in rank_units(units, denied_by_type, lambda floats: (lambda: build(floats)), measure):
        u = r["unit"]
        row = {**u.to_dict(), "label": u.label, "only_quantized_psnr_db": r["only_quantized_psnr_db"], "all_but_psnr_db": r["all_but_psnr_db"]}
        if u.name in stats:
            row["rmse_over_scale"] = stats[u.name]
        rows.append(row)
    return {"int8_psnr_db": full.psnr_db, "units": rows, "notes": notes}


def debugger_stats(model, calibration, evaluation) -> dict:
    """RMSE / scale per quantized tensor from TFLite's QuantizationDebugger."""
    import csv
    import io

    from gencompress.converters.tflite import int8_converter, representative_dataset

    tf = import_tf()
    converter = int8_converter(model, calibration)
    try:
        with native_output_captured():
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=representative_dataset(model, evaluation.take(16))
            )
            debugger.run()
            buf = io.StringIO()
            debugger.layer_statistics_dump(buf)
    except Exception:  # the debugger is experimental; the analysis stands without its figures
        return {}
    stats = {}
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(row["scale"] or 0)
        if scale > 0:
            stats[row["tensor_name"]] = round(float(row["mean_squared_error"]) ** 0.5 / scale, 4)
    return stats
