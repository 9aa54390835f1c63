"""Sensitivity analysis, and the search for the smallest quantized artifact that meets a PSNR target.

Search order:
1. int8 variants of the same size: saturation-aware ranges (sigmoid/tanh inputs clamped where
   the activation saturates), per-tensor dense weights (TFLite: per-channel scales and int64
   zero points cost 12 bytes per output channel), other calibration methods (ONNX);
2. mixed precision: keep the most harmful units in float, one more at a time, ranked by the PSNR
   the model reaches when everything *but* that unit is quantized;
3. weight-only int8 (int8 storage, float compute: often smaller than a mixed model), and if
   still nothing passes, int16 activations and float16;
4. speed (TFLite): int8 ops that XNNPACK does not take run LiteRT's reference kernels (int8
   PReLU: the super-resolution sample's int8 model was slower than float because of it); they
   are kept in float when that still passes and costs at most 25 % in size. Read from the
   delegated graph, not from timings, so the pick is deterministic.

Every attempt is built and measured (size, PSNR, latency) for real. The pick is the smallest
passing attempt (or the step-4 variant); when it measures slower than the float artifact, the
report and the terminal say so (timings only ever inform, never choose).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gencompress.compress.quantization import (
    TFLITE_OPS_DENIED_BY_TYPE,
    Unit,
    keras_layer_names,
    onnx_saturation_overrides,
    onnx_units,
    onnx_weight_only,
    tflite_float_ops,
    tflite_undelegated_ops,
    tflite_weight_only,
)
from gencompress.errors import ConversionError

# Latency noise on sub-millisecond models: "slower than float" means beyond this factor.
SLOWER_FACTOR = 1.10
# How much bigger than the smallest passing artifact a faster-than-float one may be to be preferred.
SPEED_SIZE_BUDGET = 1.25
# Ranking units measures one variant per unit: on the first few held-out samples only (a 96→384
# super-resolution model has 33 TFLite units at half a second per sample in near-float variants).
SCREEN_SAMPLES, FAST_SCREEN_SAMPLES = 4, 2
# Mixed-precision steps before the search moves on to weight-only int8 and wider types.
MAX_MIXED_STEPS = 8


@dataclass
class Attempt:
    label: str
    precision: str
    data: bytes = field(repr=False)
    float_units: list = field(default_factory=list)
    size_bytes: int = 0
    psnr_db: float | None = None
    p50_ms: float = 0.0
    passed: bool = False
    slower_than_float: bool = False
    variant: object = field(default=None, repr=False)
    outputs: list = field(default=None, repr=False)  # on the whole held-out set

    def summary(self) -> dict:
        return {
            "label": self.label,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "psnr_db": self.psnr_db,
            "latency_p50_ms": self.p50_ms,
            "passed": self.passed,
            "slower_than_float": self.slower_than_float,
            "float_layers": [u.label for u in self.float_units],
        }


class Measurer:
    """Builds nothing; measures candidate bytes of one format in its runtime against the float model."""

    def __init__(self, session, fmt: str, min_psnr: float, float_p50: float):
        self.session, self.fmt, self.min_psnr, self.float_p50 = session, fmt, min_psnr, float_p50
        self._tmp = session.cache.dir
        self.count = 0

    def __call__(self, label: str, precision: str, data: bytes, float_units=(), screen: bool = False) -> Attempt:
        """Build nothing, measure ``data``: PSNR on the held-out set and p50 latency. ``screen``:
        PSNR on the first ``SCREEN_SAMPLES`` held-out samples only, no latency (ranking units)."""
        from gencompress.report.latency import measure_latency
        from gencompress.report.metrics import fidelity
        from gencompress.workflow import make_runner

        s = self.session
        self.count += 1
        path = self._tmp / f"candidate-{self.count}.{self.fmt}"
        path.write_bytes(data)
        held, reference = s.evaluation, s.reference
        if screen:
            n = FAST_SCREEN_SAMPLES if s.options.fast else SCREEN_SAMPLES
            held, reference = held.take(n), [r[:n] for r in reference]
        try:
            runner = make_runner(s, path, self.fmt)
            with s.progress.phase(f"{self.fmt} try {self.count}: {label}", total=len(held), unit="sample") as phase:
                outputs = runner.run_all(held, on_sample=phase.update)
                psnr = fidelity(reference, outputs, s.output_range, with_ssim=False)["psnr_db"]
                p50 = None if screen else measure_latency(runner, held.sample(0), warmup=5, runs=30, max_seconds=1.0)["p50"]
                phase.describe(f"{psnr} dB" + ("" if screen else f", {len(data):,} bytes, p50 {p50:.3f} ms"))
        finally:
            path.unlink()
        return Attempt(
            label=label,
            precision=precision,
            data=data,
            float_units=list(float_units),
            size_bytes=len(data),
            psnr_db=psnr,
            p50_ms=p50,
            passed=psnr is not None and psnr >= self.min_psnr,
            slower_than_float=p50 is not None and p50 > self.float_p50 * SLOWER_FACTOR,
            outputs=None if screen else outputs,
        )


def choose(attempts: list[Attempt]) -> Attempt:
    """The smallest passing attempt (the best PSNR among those within 1 % of it), else the best PSNR."""
    passing = [a for a in attempts if a.passed]
    if passing:
        smallest = min(a.size_bytes for a in passing)
        near = [a for a in passing if a.size_bytes <= smallest * 1.01]
        return max(near, key=lambda a: (a.psnr_db, -a.size_bytes))
    return max(attempts, key=lambda a: -1.0 if a.psnr_db is None else a.psnr_db)


def search(session, fmt: str, min_psnr: float, float_p50: float, log=lambda msg: None):
    """Find the smallest artifact of ``fmt`` meeting ``min_psnr``. Returns (chosen, attempts, ranking)."""
    measure = Measurer(session, fmt, min_psnr, float_p50)
    attempts: list[Attempt] = []
    ranking: list[dict] = []
    layer_names = keras_layer_names(session.model)

    def settled() -> bool:
        # Later stages add size: once something passes, the smallest pass is among these.
        return any(a.passed for a in attempts)

    def attempt(label, precision, build, float_units=(), variant=None):
        """Build and measure one candidate. ``variant(floats)`` rebuilds it with units kept float."""
        try:
            a = measure(label, precision, build(), float_units)
        except ConversionError as exc:
            log(f"  {fmt} {label}: failed ({exc})")
            return None
        a.variant = variant
        if fmt == "tflite" and precision == "mixed":
            a.float_units = tflite_float_ops(a.data, layer_names)  # what really stayed float
        # Outputs are kept for what can still be picked (passing ones, the best failing one), so
        # the pick is not run again; on 400×600 images each attempt's are tens of megabytes.
        best = max((b for b in attempts if not b.passed and b.outputs is not None), key=lambda b: b.psnr_db or -1.0, default=None)
        if not a.passed and best is not None:
            (a if (a.psnr_db or -1.0) <= (best.psnr_db or -1.0) else best).outputs = None
        attempts.append(a)
        return a

    def try_variant(label, variant, floats=()):
        floats = list(floats)
        if fmt == "tflite":  # the TFLite quantizer keeps these float only all together
            for op in {u.op for u in floats} & TFLITE_OPS_DENIED_BY_TYPE:
                floats = list(dict.fromkeys(floats + [u for u in units if u.op == op]))
        return attempt(label, "mixed" if floats else "int8", lambda: variant(floats), floats, variant)

    # 1. int8 variants of the same size
    if fmt == "tflite":
        from gencompress.converters.tflite import convert_tflite
        from gencompress.workflow import tflite_calibrated

        mixed = tflite_calibrated(session)
        units = mixed.units
        int8_io = session.options.int8_io
        for sat in [False, True] if mixed.clamped else [False]:
            for dense in (False, True):
                label = "int8" + (", saturation-aware ranges" if sat else "") + (", per-tensor dense weights" if dense else "")
                variant = lambda floats, s=sat, d=dense: mixed.build(floats, dense_per_tensor=d, saturation_aware=s, int8_io=int8_io)  # noqa: E731
                try_variant(label, variant)
    else:
        from gencompress.converters.onnx import quantize_onnx
        from gencompress.workflow import float_onnx, quantize_onnx_calibrated

        float_bytes = float_onnx(session)
        units = onnx_units(float_bytes, layer_names)
        overrides = onnx_saturation_overrides(float_bytes)
        first = session.options.calibration_method

        def onnx_variant(method, ranges):
            def build(floats):
                return quantize_onnx_calibrated(session, "int8", method, [u.name for u in floats], ranges)

            return build

        try_variant("int8", onnx_variant(first, None))
        for method in [first] + [m for m in ("percentile", "entropy") if m != first]:
            if (settled() and method != first) or (method == first and not overrides):
                continue
            label = "int8" + ("" if method == first else f", {method} calibration") + (", saturation-aware ranges" if overrides else "")
            try_variant(label, onnx_variant(method, overrides or None))

    # 2. mixed precision, from the best same-size variant
    if not settled() and units:
        base = max((a for a in attempts if a.variant), key=lambda a: a.psnr_db or 0.0)
        ranking = rank_units(units, fmt, lambda floats: (lambda: base.variant(floats)), measure, all_but=False, screen=True)
        floats: list[Unit] = []
        for row in ranking[: min(MAX_MIXED_STEPS, max(1, len(units) - 1))]:
            floats.append(row["unit"])
            a = try_variant(f"{base.label}; float " + ", ".join(u.label for u in floats), base.variant, floats)
            if a is not None:
                floats = list(a.float_units) if fmt == "tflite" else floats
                if a.passed:
                    break

    # 3. weight-only int8 (can be smaller than any mixed variant), then wider types
    if ranking:
        if fmt == "tflite":
            # the session's float32 artifact of this model is already written: no second conversion
            float_tflite = Path(
                next(a["path"] for a in session.artifacts if a["format"] == "tflite" and a["precision"] == "float32")
            ).read_bytes()
            attempt("weight-only int8", "int8-weights", lambda: tflite_weight_only(float_tflite))
        else:
            attempt("weight-only int8", "int8-weights", lambda: onnx_weight_only(float_bytes))
    if not settled():
        if fmt == "tflite":
            attempt("int16 activations", "int16x8", lambda: convert_tflite(session.model, "int16x8", session.calibration))
            attempt("float16", "float16", lambda: convert_tflite(session.model, "float16"))
        else:
            attempt("int16 activations", "int16x8", lambda: quantize_onnx_calibrated(session, "int16x8", first))
            attempt("float16", "float16", lambda: quantize_onnx(float_bytes, "float16"))
    if not attempts:
        raise ConversionError(f"no {fmt} quantization could be built")
    chosen = choose(attempts)

    # 4. speed: int8 ops XNNPACK does not take run reference kernels, often slower than float
    #    (LiteRT's int8 PReLU). Decided from the graph, not from timings, so the same command
    #    always picks the same artifact.
    if fmt == "tflite" and chosen.passed and chosen.variant is not None:
        slow = tflite_undelegated_ops(chosen.data) & {u.op for u in units}
        if slow:
            floats = list(dict.fromkeys(chosen.float_units + [u for u in units if u.op in slow]))
            label = f"{chosen.label}; {', '.join(sorted(slow))} in float (no XNNPACK int8 kernel)"
            a = try_variant(label, chosen.variant, floats)
            if a is not None and a.passed and a.size_bytes <= chosen.size_bytes * SPEED_SIZE_BUDGET:
                if not (tflite_undelegated_ops(a.data) & slow):
                    chosen = a
    return chosen, attempts, ranking


def rank_units(units, fmt, build_mixed, measure, all_but: bool = True, screen: bool = False) -> list[dict]:
    """Units most harmful first: lowest PSNR when *only* that unit is int8, then (``all_but``)
    highest PSNR when all *but* it are int8. ``screen`` measures on a few held-out samples.

    When several tensors each destroy the output on their own, every "all but one" variant is
    equally broken and ranks nothing; "only this one" still tells them apart. The fidelity search
    ranks by "only this one" alone (one variant per unit); ``analyze`` measures both.
    """
    rows = []
    for u in units:
        others = [v for v in units if v is not u]
        tc_clash = fmt == "tflite" and u.op in TFLITE_OPS_DENIED_BY_TYPE and any(v.op == u.op for v in others)
        rows.append(
            {
                "unit": u,
                "only_quantized_psnr_db": None if tc_clash else _psnr(measure, f"only {u.label} int8", u, build_mixed(others), screen),
                "all_but_psnr_db": _psnr(measure, f"all but {u.label} int8", u, build_mixed([u]), screen) if all_but else None,
            }
        )
    return sorted(rows, key=lambda r: (_or(r["only_quantized_psnr_db"], 1e9), -_or(r["all_but_psnr_db"], 0.0)))


def _psnr(measure, label, unit, build, screen):
    try:
        return measure(label, "mixed", build(), [unit], screen=screen).psnr_db
    except ConversionError:
        return None


def _or(x, default):
    return default if x is None else x


def sensitivity(session, fmt: str) -> dict:
    """Per unit: PSNR with only that unit quantized, and with all but that unit quantized.

    For TFLite also the quantization debugger's per-tensor RMSE / scale (0.29 is the error of
    ideal rounding; much more means the range is a poor fit).
    """
    measure = Measurer(session, fmt, min_psnr=0.0, float_p50=float("inf"))
    notes = []
    if fmt == "tflite":
        from gencompress.workflow import tflite_calibrated

        mixed = tflite_calibrated(session)
        units = mixed.units
        full = measure("int8", "int8", mixed.build())

        def build(floats):
            return mixed.build(floats)

        stats = _debugger_stats(session)
        n_denied_by_type = {op: sum(u.op == op for u in units) for op in TFLITE_OPS_DENIED_BY_TYPE}
        if any(n > 1 for n in n_denied_by_type.values()):
            notes.append(
                "TFLite keeps TRANSPOSE_CONV ops float only all together (its quantizer ignores node deny-lists "
                "for them): for those rows 'all but' keeps every TRANSPOSE_CONV float and 'only' is not measurable"
            )
    else:
        from gencompress.workflow import float_onnx, quantize_onnx_calibrated

        float_bytes = float_onnx(session)
        units = onnx_units(float_bytes, keras_layer_names(session.model))
        method = session.options.calibration_method
        full = measure("int8", "int8", quantize_onnx_calibrated(session, "int8", method))

        def build(floats):
            return quantize_onnx_calibrated(session, "int8", method, [u.name for u in floats])

        stats = {}
    rows = []
    for r in rank_units(units, fmt, lambda floats: (lambda: build(floats)), measure):
        u = r["unit"]
        row = {**u.to_dict(), "label": u.label, "only_quantized_psnr_db": r["only_quantized_psnr_db"], "all_but_psnr_db": r["all_but_psnr_db"]}
        if u.name in stats:
            row["rmse_over_scale"] = stats[u.name]
        rows.append(row)
    return {"int8_psnr_db": full.psnr_db, "units": rows, "notes": notes}


def _debugger_stats(session) -> dict:
    """RMSE / scale per quantized tensor from TFLite's QuantizationDebugger."""
    import csv
    import io

    from gencompress.converters.tflite import int8_converter, representative_dataset
    from gencompress.tfenv import import_tf, native_output_captured

    tf = import_tf()
    converter = int8_converter(session.model, session.calibration)
    try:
        with native_output_captured():
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=representative_dataset(session.model, session.evaluation.take(16))
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
