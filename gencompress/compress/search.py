"""The fidelity search: the smallest quantized artifact that meets a PSNR target.

Search order:
1. int8 variants of the same size: saturation-aware ranges (sigmoid/tanh inputs clamped where
   the activation saturates), per-tensor dense weights (TFLite: per-channel scales and int64
   zero points cost 12 bytes per output channel), other calibration methods (ONNX);
2. mixed precision: keep the most harmful units in float, one more at a time, ranked by the PSNR
   the model reaches when only that unit is quantized (measured on a few held-out samples);
3. weight-only int8 (int8 storage, float compute: often smaller than a mixed model), and if
   still nothing passes, int16 activations and float16;
4. speed (TFLite): int8 ops that XNNPACK does not take run LiteRT's reference kernels (int8
   PReLU: the super-resolution sample's int8 model was slower than float because of it); they
   are kept in float when that still passes and costs at most 25 % in size. Read from the
   delegated graph, not from timings, so the pick is deterministic.

Every attempt is built and measured (size, PSNR, latency) for real. What can be built comes from
the caller as ``Candidates`` (the quantize pipeline wires the converters and caches); how an
attempt is measured, from a ``Measurer``. Timings only ever inform, never choose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from gencompress.compress.quantization import Unit
from gencompress.errors import ConversionError
from gencompress.progress import Progress

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
    latency: dict | None = field(default=None, repr=False)  # the full measurement (p50, p90, runs)
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


@dataclass
class Candidates:
    """What the search can build for one format.

    ``same_size(settled)`` yields ``(label, variant)`` pairs, ``variant(float_units) -> bytes``,
    the first being plain int8; ``settled()`` tells whether something already passed (ONNX skips
    other calibration methods then). ``float_units(data)``: the units a built model really keeps
    float (TFLite), ``denied_by_type``: op types a quantizer keeps float only all together,
    ``undelegated_ops(data)``: op types the runtime's fast path does not take (TFLite speed step).
    """

    fmt: str
    units: list[Unit]
    same_size: Callable[[Callable[[], bool]], Iterator[tuple[str, Callable]]]
    weight_only: Callable[[], bytes]
    wider: list[tuple[str, str, Callable[[], bytes]]]
    float_units: Callable[[bytes], list[Unit]] | None = None
    denied_by_type: frozenset = frozenset()
    undelegated_ops: Callable[[bytes], set[str]] | None = None


class Measurer:
    """Measures candidate bytes of one format in its runtime against the float model's outputs.

    ``held``/``reference``: the held-out inputs and the float outputs on them; ``make_runner(path)``
    gives the runtime; ``latency(runner, sample)`` the one latency protocol of the run."""

    def __init__(self, fmt, held, reference, output_range, make_runner, latency, float_p50, min_psnr, workdir: Path,
                 progress: Progress | None = None, screen_samples: int = SCREEN_SAMPLES):
        self.fmt, self.held, self.reference, self.output_range = fmt, held, reference, output_range
        self.make_runner, self.latency, self.float_p50, self.min_psnr = make_runner, latency, float_p50, min_psnr
        self.workdir, self.progress, self.screen_samples = Path(workdir), progress or Progress.silent(), screen_samples
        self.count = 0

    def __call__(self, label: str, precision: str, data: bytes, float_units=(), screen: bool = False) -> Attempt:
        """PSNR on the held-out set and latency; ``screen``: PSNR on the first few held-out
        samples only and no latency (ranking units)."""
        from gencompress.report.metrics import fidelity

        self.count += 1
        path = self.workdir / f"candidate-{self.count}.{self.fmt}"
        path.write_bytes(data)
        held, reference = self.held, self.reference
        if screen:
            held, reference = held.take(self.screen_samples), [r[: self.screen_samples] for r in reference]
        try:
            runner = self.make_runner(path)
            with self.progress.phase(f"{self.fmt} try {self.count}: {label}", total=len(held), unit="sample") as phase:
                outputs = runner.run_all(held, on_sample=phase.update)
                psnr = fidelity(reference, outputs, self.output_range, with_ssim=False)["psnr_db"]
                latency = None if screen else self.latency(runner, held.sample(0))
                phase.describe(f"{psnr} dB" + ("" if screen else f", {len(data):,} bytes, p50 {latency['p50']:.3f} ms"))
        finally:
            path.unlink()
        p50 = None if latency is None else latency["p50"]
        return Attempt(
            label=label,
            precision=precision,
            data=data,
            float_units=list(float_units),
            size_bytes=len(data),
            psnr_db=psnr,
            p50_ms=p50,
            latency=latency,
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


class _Search:
    """One run of the search over ``candidates``: the attempts so far and how to add one."""

    def __init__(self, candidates: Candidates, measure: Measurer, log):
        self.c, self.measure, self.log = candidates, measure, log
        self.attempts: list[Attempt] = []

    def settled(self) -> bool:
        # Later stages add size: once something passes, the smallest pass is among these.
        return any(a.passed for a in self.attempts)

    def attempt(self, label, precision, build, float_units=(), variant=None) -> Attempt | None:
        """Build and measure one candidate. ``variant(floats)`` rebuilds it with units kept float."""
        try:
            a = self.measure(label, precision, build(), float_units)
        except ConversionError as exc:
            self.log(f"  {self.c.fmt} {label}: failed ({exc})")
            return None
        a.variant = variant
        if self.c.float_units is not None and precision == "mixed":
            a.float_units = self.c.float_units(a.data)  # what really stayed float
        # Outputs are kept for what can still be picked (passing ones, the best failing one), so
        # the pick is not run again; on 400×600 images each attempt's are tens of megabytes.
        best = max((b for b in self.attempts if not b.passed and b.outputs is not None), key=lambda b: b.psnr_db or -1.0, default=None)
        if not a.passed and best is not None:
            (a if (a.psnr_db or -1.0) <= (best.psnr_db or -1.0) else best).outputs = None
        self.attempts.append(a)
        return a

    def try_variant(self, label, variant, floats=()) -> Attempt | None:
        floats = list(floats)
        for op in {u.op for u in floats} & self.c.denied_by_type:  # kept float only all together
            floats = list(dict.fromkeys(floats + [u for u in self.c.units if u.op == op]))
        return self.attempt(label, "mixed" if floats else "int8", lambda: variant(floats), floats, variant)

    def mixed(self) -> list[dict]:
        """Step 2: rank units, then keep the most harmful float, one more at a time."""
        c = self.c
        base = max((a for a in self.attempts if a.variant), key=lambda a: a.psnr_db or 0.0)
        ranking = rank_units(c.units, c.denied_by_type, lambda floats: (lambda: base.variant(floats)), self.measure, all_but=False, screen=True)
        floats: list[Unit] = []
        for row in ranking[: min(MAX_MIXED_STEPS, max(1, len(c.units) - 1))]:
            floats.append(row["unit"])
            a = self.try_variant(f"{base.label}; float " + ", ".join(u.label for u in floats), base.variant, floats)
            if a is not None:
                floats = list(a.float_units) if c.float_units is not None else floats
                if a.passed:
                    break
        return ranking

    def faster(self, chosen: Attempt) -> Attempt:
        """Step 4: keep float the op types the runtime's fast path does not take, when that passes."""
        c = self.c
        if c.undelegated_ops is None or not chosen.passed or chosen.variant is None:
            return chosen
        slow = c.undelegated_ops(chosen.data) & {u.op for u in c.units}
        if not slow:
            return chosen
        floats = list(dict.fromkeys(chosen.float_units + [u for u in c.units if u.op in slow]))
        label = f"{chosen.label}; {', '.join(sorted(slow))} in float (no XNNPACK int8 kernel)"
        a = self.try_variant(label, chosen.variant, floats)
        if a is not None and a.passed and a.size_bytes <= chosen.size_bytes * SPEED_SIZE_BUDGET:
            if not (c.undelegated_ops(a.data) & slow):
                return a
        return chosen


def search(candidates: Candidates, measure: Measurer, log=lambda msg: None):
    """Find the smallest artifact meeting ``measure.min_psnr``. Returns (chosen, attempts, ranking)."""
    s = _Search(candidates, measure, log)
    for label, variant in candidates.same_size(s.settled):  # 1. same-size int8 variants
        s.try_variant(label, variant)
    ranking: list[dict] = []
    if not s.settled() and candidates.units and any(a.variant for a in s.attempts):
        ranking = s.mixed()  # 2.
    if ranking:  # 3. weight-only int8 (can be smaller than any mixed variant), then wider types
        s.attempt("weight-only int8", "int8-weights", candidates.weight_only)
    if not s.settled():
        for label, precision, build in candidates.wider:
            s.attempt(label, precision, build)
    if not s.attempts:
        raise ConversionError(f"no {candidates.fmt} quantization could be built")
    return s.faster(choose(s.attempts)), s.attempts, ranking


def rank_units(units, denied_by_type, build_mixed, measure, all_but: bool = True, screen: bool = False) -> list[dict]:
    """Units most harmful first: lowest PSNR when *only* that unit is int8, then (``all_but``)
    highest PSNR when all *but* it are int8. ``screen`` measures on a few held-out samples.

    When several tensors each destroy the output on their own, every "all but one" variant is
    equally broken and ranks nothing; "only this one" still tells them apart. The fidelity search
    ranks by "only this one" alone (one variant per unit); ``analyze`` measures both. A unit of
    a type kept float only all together has no "only this one" when it has siblings.
    """
    rows = []
    for u in units:
        others = [v for v in units if v is not u]
        clash = u.op in denied_by_type and any(v.op == u.op for v in others)
        rows.append(
            {
                "unit": u,
                "only_quantized_psnr_db": None if clash else _psnr(measure, f"only {u.label} int8", u, build_mixed(others), screen),
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
