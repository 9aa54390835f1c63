"""The fidelity search: the best quantized artifact that meets a PSNR target.

Search order:
1. full-int8 variants of the same size: saturation-aware ranges (sigmoid/tanh inputs clamped
   where the activation saturates), per-tensor dense weights, other calibration methods (ONNX),
   and the precision-restoring transforms of the float model the caller offers (cross-layer
   equalization, bias correction, clipping ranges chosen for the output error; the sub-pixel
   form of strided transposed convolutions, whose int8 runs fast kernels);
2. mixed precision: units (ops or nodes) kept in float one at a time, greedily by conditional
   gain: first the PSNR with all *but* each unit in int8 (every unit, the first layer and the
   model inputs' consumers included), then after each unit is restored the gain of the most
   promising remaining ones given what is already float. When no single unit helps (several
   tensors each destroy the output) the units go by their isolated harm ("only this unit
   int8"). A budget of screened variants bounds it on large models. When int8 passes only on
   a slow kernel (step 4's case), step 4 runs before step 3;
3. weight-only int8 (int8 storage, float compute), and if still nothing passes, int16
   activations and float16;
4. speed (TFLite): int8 ops the runtime's fast path does not take run reference kernels (int8
   PReLU); they are kept in float when that still passes and costs at most 25 % in size.
   (ONNX: heavy ops onnxruntime runs in float in an int8 graph, ConvTranspose above all, class an
   attempt ``slow`` the same way, so the sub-pixel form is tried; there is nothing to keep float.)

The pick (``choose``): with ``prefer="speed"`` (the default) the passing attempts of the fastest
compute class win (full int8, then mixed, then float compute, then slow kernels), the smallest
of them, among those within 2x the smallest passing int8 size; ``prefer="size"`` takes the smallest passing attempt whatever it computes in. Classes
are read from the graphs, never from timings, so the same call picks the same artifact.
Every attempt is built and measured (size, PSNR, latency) for real.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from gencompress.compress.quantization import Unit
from gencompress.errors import ConversionError
from gencompress.progress import Progress

# Latency noise on sub-millisecond models: "slower than float" means beyond this factor.
SLOWER_FACTOR = 1.10
# How much bigger than the smallest passing artifact a faster-than-float one may be to be preferred.
SPEED_SIZE_BUDGET = 1.25
# How much bigger than the smallest passing int8-storage artifact the speed pick may be: the
# sub-pixel form of a 3x3 stride-2 transposed convolution stores 16/9 of its weights (its int8
# runs 3x faster in onnxruntime on the codec decoder); a mixed pick that keeps a large Dense
# float is 3x bigger (the VAE decoder before its screen picked the right unit).
PICK_SIZE_BUDGET = 2.0
# Ranking units measures one variant per unit: on the first few held-out samples only (a 96→384
# super-resolution model has 33 TFLite units at half a second per sample in near-float variants).
SCREEN_SAMPLES, FAST_SCREEN_SAMPLES = 4, 2
# Mixed-precision steps before the search moves on to weight-only int8 and wider types.
MAX_MIXED_STEPS = 8
# Units the mixed-precision screen measures one by one at most. A GRU unrolled over 100 time
# steps is 1,500 TFLite units: the screen ran for 20 minutes; past this it is not tried.
MAX_SCREENED_UNITS = 300
# Screened variants the mixed-precision search may spend after its first ranking, and how many
# of the best-ranked remaining units it re-measures after each restored one.
RERANK_CANDIDATES = 4
# A unit whose "all but this one" variant gains less than this over the base is no help alone.
MIN_GAIN_DB = 0.3
# How much PSNR a mixed-precision base on a transformed model (sub-pixel transposed convolutions)
# may give up against the best same-size attempt and still be preferred (see ``mixed_base``).
TRANSFORMED_BASE_MARGIN_DB = 3.0
# Compute classes, fastest first (see ``compute_class``).
SPEED_CLASSES = ("int8", "mixed", "float", "dequant", "slow")
# A "mixed" attempt whose units kept float do at least this share of the model's multiply-
# accumulates computes in float in all but name: classed ``float``. A VAE decoder's mixed pick
# kept 14 units float in sub-pixel form: 169 % of the float file's size, 0.49x its speed in ONNX.
FLOAT_MACS_SHARE = 0.5
PREFER = ("speed", "size")


@dataclass
class Attempt:
    label: str
    precision: str
    data: bytes = field(repr=False)
    float_units: list = field(default_factory=list)
    size_bytes: int = 0
    psnr_db: float | None = None
    psnr_worst_db: float | None = None  # the worst held-out sample's own PSNR
    p50_ms: float = 0.0
    latency: dict | None = field(default=None, repr=False)  # the full measurement (p50, p90, runs)
    passed: bool = False
    slower_than_float: bool = False
    variant: object = field(default=None, repr=False)
    outputs: list = field(default=None, repr=False)  # on the whole held-out set
    compute: str = "int8"  # its class in SPEED_CLASSES
    float_macs_share: float = 0.0  # of the model's multiply-accumulates, the share its float units do

    def summary(self) -> dict:
        return {
            "label": self.label,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "psnr_db": self.psnr_db,
            "psnr_worst_db": self.psnr_worst_db,
            "latency_p50_ms": self.p50_ms,
            "passed": self.passed,
            "slower_than_float": self.slower_than_float,
            "float_layers": [u.label for u in self.float_units],
            "compute": self.compute,
            "float_macs_share": round(self.float_macs_share, 4),
        }


@dataclass(frozen=True)
class Variant:
    """Builds one way of quantizing with chosen units kept float (``variant(float_units)``).
    ``units`` / ``denied_by_type``: its own, when it quantizes a transformed copy of the model
    (the candidates' otherwise)."""

    build: Callable
    units: list | None = None
    denied_by_type: frozenset | None = None
    companions: dict | None = None
    macs: dict | None = None  # MACs by layer name of the model it quantizes

    def __call__(self, floats):
        return self.build(floats)


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
    slow_ops: Callable[[bytes], set[str]] | None = None
    companions: dict = field(default_factory=dict)
    macs: dict = field(default_factory=dict)  # MACs by Keras layer name (``report.macs``)
    float_size: int | None = None  # bytes of the float artifact: no quantized pick may be larger


class Measurer:
    """Measures candidate bytes of one format in its runtime against the float model's outputs.

    ``held``/``reference``: the held-out inputs and the float outputs on them; ``make_runner(path)``
    gives the runtime; ``latency(runner, sample)`` the one latency protocol of the run. An attempt
    passes when its PSNR reaches ``min_psnr`` and, given ``min_worst``, its worst sample's does."""

    def __init__(self, fmt, held, reference, output_range, make_runner, latency, float_p50, min_psnr, workdir: Path,
                 progress: Progress | None = None, screen_samples: int = SCREEN_SAMPLES, min_worst: float | None = None):
        self.fmt, self.held, self.reference, self.output_range = fmt, held, reference, output_range
        self.make_runner, self.latency, self.float_p50, self.min_psnr = make_runner, latency, float_p50, min_psnr
        self.min_worst = min_worst
        self.workdir, self.progress, self.screen_samples = Path(workdir), progress or Progress.silent(), screen_samples
        self.count = 0
        self.screen_indices: list[int] | None = None  # which held-out samples a screen runs on

    def screen_on_hardest(self, outputs) -> None:
        """Screen on the held-out samples ``outputs`` (an attempt's) gets most wrong: PSNR is an
        MSE over every sample, so those decide it. The first few mis-ranked units on the VAE
        decoder (a screen at 42 dB for an attempt that measured 26 dB)."""
        n = min(self.screen_samples, len(self.held))
        errors = sum(
            np.mean(np.square(np.asarray(o, np.float64) - np.asarray(r, np.float64)).reshape(len(r), -1), axis=1)
            for o, r in zip(outputs, self.reference)
        )
        self.screen_indices = sorted(int(i) for i in np.argsort(-errors, kind="stable")[:n])

    def __call__(self, label: str, precision: str, data: bytes, float_units=(), screen: bool = False) -> Attempt:
        """PSNR on the held-out set and latency; ``screen``: PSNR on the first few held-out
        samples only and no latency (ranking units)."""
        from gencompress.report.metrics import fidelity, per_sample

        self.count += 1
        path = self.workdir / f"candidate-{self.count}.{self.fmt}"
        path.write_bytes(data)
        held, reference = self.held, self.reference
        if screen:
            idx = self.screen_indices if self.screen_indices is not None else list(range(min(self.screen_samples, len(held))))
            held, reference = held.pick(idx), [r[idx] for r in reference]
        try:
            runner = self.make_runner(path)
            with self.progress.phase(f"{self.fmt} try {self.count}: {label}", total=len(held), unit="sample") as phase:
                outputs = runner.run_all(held, on_sample=phase.update)
                psnr = fidelity(reference, outputs, self.output_range, with_ssim=False)["psnr_db"]
                worst = per_sample(reference, outputs, self.output_range)["psnr_worst_db"]
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
            psnr_worst_db=worst,
            p50_ms=p50,
            latency=latency,
            passed=psnr is not None and psnr >= self.min_psnr and (self.min_worst is None or (worst or 0.0) >= self.min_worst),
            slower_than_float=p50 is not None and p50 > self.float_p50 * SLOWER_FACTOR,
            outputs=None if screen else outputs,
        )


def compute_class(precision: str, float_units, slow_ops: set, float_share: float = 0.0) -> str:
    """How an attempt computes, from its graph: ``int8`` (every unit int8 on the fast path),
    ``mixed`` (some units float, all on the fast path, doing under ``FLOAT_MACS_SHARE`` of the
    work), ``float`` (float compute: float16, or units kept float doing most of the work),
    ``dequant`` (weight-only int8: float compute after turning the int8 weights into float on
    every call, slower than float: 0.86x on a six-block DCGAN in LiteRT, where its float16 file
    ran 1.8x) or ``slow`` (ops on reference kernels: int16 activations, an int8 op the fast path
    does not take)."""
    if precision == "int16x8" or slow_ops:
        return "slow"
    if precision == "int8-weights":
        return "dequant"
    if precision == "float16" or float_share >= FLOAT_MACS_SHARE:
        return "float"
    return "mixed" if float_units else "int8"


def float_macs_share(float_units, macs: dict) -> float:
    """The share of the model's multiply-accumulates done by the layers of ``float_units``."""
    total = sum(macs.values())
    layers = {layer for u in float_units for layer in u.layers}
    return sum(macs.get(layer, 0) for layer in layers) / total if total else 0.0


def choose(attempts: list[Attempt], prefer: str = "speed", max_size: int | None = None) -> tuple[Attempt, str]:
    """The pick and the rule that picked it (see the module docstring). No attempt larger than
    ``max_size`` (the float artifact's bytes) is picked while a smaller one exists."""
    fitting = [a for a in attempts if max_size is None or a.size_bytes <= max_size]
    oversize = "" if len(fitting) == len(attempts) else f"; larger than the float artifact ({max_size:,} bytes): never picked"
    attempts = fitting or attempts
    passing = [a for a in attempts if a.passed]
    if not passing:
        best = max(attempts, key=lambda a: -1.0 if a.psnr_db is None else a.psnr_db)
        return best, "nothing met the target: the best PSNR" + oversize
    rule = "size: the smallest passing artifact"
    if prefer == "speed":
        # speed within a size budget: a class whose artifacts all weigh more than 1.25x the
        # smallest passing one (a big Dense kept float) is not what int8 was asked for
        int8_storage = [a for a in passing if a.precision in ("int8", "mixed", "int8-weights")] or passing
        budget = min(a.size_bytes for a in int8_storage) * PICK_SIZE_BUDGET  # (float16 beats int8 on toy models)
        fastest = min(SPEED_CLASSES.index(a.compute) for a in passing if a.size_bytes <= budget)
        passing = [a for a in passing if SPEED_CLASSES.index(a.compute) == fastest and a.size_bytes <= budget]
        rule = (f"speed: the smallest passing artifact of the fastest compute class ({SPEED_CLASSES[fastest]}) "
                f"within {PICK_SIZE_BUDGET:g}x the smallest passing int8 size")
    smallest = min(a.size_bytes for a in passing)
    near = [a for a in passing if a.size_bytes <= smallest * 1.01]
    return max(near, key=lambda a: (a.psnr_db, -a.size_bytes)), rule + oversize


class _Search:
    """One run of the search over ``candidates``: the attempts so far and how to add one."""

    def __init__(self, candidates: Candidates, measure: Measurer, log, prefer: str = "speed"):
        self.c, self.measure, self.log, self.prefer = candidates, measure, log, prefer
        self.attempts: list[Attempt] = []
        self.failed: list[str] = []  # attempts not built, or that the runtime failed to run
        self.mixed_skipped = False  # too many units to screen (``MAX_SCREENED_UNITS``)

    def settled(self) -> bool:
        """Nothing later can win: later stages add size, or give up speed. With ``prefer="speed"``
        only a passing full-int8 attempt settles it (a passing slower one may still be beaten)."""
        if self.prefer == "speed":
            return any(a.passed and a.compute == "int8" for a in self.attempts)
        return any(a.passed for a in self.attempts)

    def attempt(self, label, precision, build, float_units=(), variant=None) -> Attempt | None:
        """Build and measure one candidate. ``variant(floats)`` rebuilds it with units kept float."""
        try:
            a = self.measure(label, precision, build(), float_units)
        except ConversionError as exc:  # not built, or the runtime failed to run it
            self.log(f"  {self.c.fmt} {label}: failed ({exc})")
            self.failed.append(f"{label}: {exc}")
            return None
        a.variant = variant
        if self.c.float_units is not None and precision == "mixed":
            a.float_units = self.c.float_units(a.data)  # what really stayed float
        slow = self.c.slow_ops(a.data) if self.c.slow_ops is not None and precision in ("int8", "mixed") else set()
        slow = slow - {u.op for u in a.float_units}  # what the search kept float on purpose
        own_macs = variant.macs if isinstance(variant, Variant) and variant.macs is not None else self.c.macs
        a.float_macs_share = float_macs_share(a.float_units, own_macs) if precision == "mixed" else 0.0
        a.compute = compute_class(precision, a.float_units, slow, a.float_macs_share)
        # Outputs are kept for what can still be picked (passing ones, the best failing one), so
        # the pick is not run again; on 400×600 images each attempt's are tens of megabytes.
        best = max((b for b in self.attempts if not b.passed and b.outputs is not None), key=lambda b: b.psnr_db or -1.0, default=None)
        if not a.passed and best is not None:
            (a if (a.psnr_db or -1.0) <= (best.psnr_db or -1.0) else best).outputs = None
        self.attempts.append(a)
        return a

    def units_of(self, variant):
        """A variant's units, op types denied only all together, and companions (its own when it
        quantizes a transformed model, the candidates' otherwise)."""
        own = isinstance(variant, Variant) and variant.units is not None
        if not own:
            return self.c.units, self.c.denied_by_type, self.c.companions
        return variant.units, variant.denied_by_type or frozenset(), variant.companions or {}

    def expand(self, floats, variant) -> list:
        """``floats`` with what must go float with them: the activations writing their inputs and
        every op of a type the quantizer keeps float only all together."""
        units, denied, companions = self.units_of(variant)
        floats = list(floats)
        floats += [c for u in floats for c in companions.get(u, [])]
        for op in {u.op for u in floats} & denied:
            floats += [u for u in units if u.op == op]
        return list(dict.fromkeys(floats))

    def try_variant(self, label, variant, floats=()) -> Attempt | None:
        floats = self.expand(floats, variant)
        return self.attempt(label, "mixed" if floats else "int8", lambda: variant(floats), floats, variant)

    def mixed(self) -> list[dict]:
        """Step 2: keep units float one at a time, greedily by their gain given what is float."""
        base = self.mixed_base()
        units, denied, _ = self.units_of(base.variant)
        if len(units) > MAX_SCREENED_UNITS:
            self.log(f"mixed precision not tried: {len(units)} units, more than the {MAX_SCREENED_UNITS} the screen measures one by one")
            self.mixed_skipped = True
            return []
        outputs = base.outputs if base.outputs is not None else self.measure(base.label, base.precision, base.data).outputs
        self.measure.screen_on_hardest(outputs)
        build = lambda floats: (lambda: base.variant(self.expand(floats, base.variant)))  # noqa: E731
        base_psnr = self._screen("base", build([]))
        rows = rank_units(units, denied, build, self.measure, all_but=True, only=False, screen=True)
        gain = {r["unit"]: _or(r["all_but_psnr_db"], -1e9) - _or(base_psnr, 0.0) for r in rows}
        if max(gain.values(), default=0.0) < MIN_GAIN_DB:  # several tensors each fatal: isolated harm
            raw = lambda floats: (lambda: base.variant(floats))  # noqa: E731  (only this one int8: nothing added)
            only = rank_units(units, denied, raw, self.measure, all_but=False, screen=True)
            for r in only:
                next(x for x in rows if x["unit"] is r["unit"])["only_quantized_psnr_db"] = r["only_quantized_psnr_db"]
            gain = {r["unit"]: -_or(r["only_quantized_psnr_db"], 1e9) for r in only}
        floats: list[Unit] = []
        for _ in range(min(MAX_MIXED_STEPS, max(1, len(units) - 1))):
            remaining = [u for u in units if u not in floats]
            if not remaining:
                break
            unit = max(remaining, key=lambda u: (gain[u], -remaining.index(u)))
            floats = self.expand(floats + [unit], base.variant)
            if all(u in floats for u in units):  # all float is the float model, not a mixed one
                break
            named = [u for u in floats if u in units]  # data movement kept float with them goes unnamed
            a = self.try_variant(f"{base.label}; float " + ", ".join(u.label for u in named), base.variant, floats)
            if a is None:
                continue
            if a.passed:
                break
            self._rerank(gain, [u for u in units if u not in floats], floats, build, a.psnr_db)
        rows.sort(key=lambda r: -gain.get(r["unit"], -1e9))
        return rows

    def mixed_base(self) -> Attempt:
        """The same-size attempt mixed precision starts from: the best PSNR, unless one that
        quantizes a transformed model (the sub-pixel form of transposed convolutions) is within
        ``TRANSFORMED_BASE_MARGIN_DB`` of it: there every unit can be kept float alone (TFLite
        keeps ``TRANSPOSE_CONV`` float only all together) and the int8 ones run fast kernels
        (neither runtime has a fast int8 transposed convolution). Read from the graphs, not timed."""
        built = [a for a in self.attempts if a.variant]
        best = max(built, key=lambda a: a.psnr_db or 0.0)
        transformed = [a for a in built if isinstance(a.variant, Variant) and a.variant.units is not None]
        alternative = max(transformed, key=lambda a: a.psnr_db or 0.0, default=None)
        if alternative is not None and (alternative.psnr_db or 0.0) >= (best.psnr_db or 0.0) - TRANSFORMED_BASE_MARGIN_DB:
            return alternative
        return best

    def _rerank(self, gain: dict, remaining: list, floats: list, build, current_psnr) -> None:
        """Re-measure the most promising remaining units given what is already float."""
        for u in sorted(remaining, key=lambda u: -gain[u])[:RERANK_CANDIDATES]:
            psnr = self._screen(f"float {u.label} too", build(floats + [u]))
            gain[u] = _or(psnr, -1e9) - _or(current_psnr, 0.0)

    def _screen(self, label, build):
        try:
            return self.measure(label, "mixed", build(), screen=True).psnr_db
        except ConversionError:
            return None

    def faster(self, chosen: Attempt) -> Attempt:
        """Step 4: keep float the op types the runtime's fast path does not take, when that passes."""
        c = self.c
        if c.fmt != "tflite" or c.slow_ops is None or not chosen.passed or chosen.variant is None:
            return chosen  # onnxruntime runs an op it has no int8 kernel for in float already
        units, _, _ = self.units_of(chosen.variant)
        slow = c.slow_ops(chosen.data) & {u.op for u in units}
        if not slow:
            return chosen
        kept = [u for u in units if u in chosen.float_units or u.label in {f.label for f in chosen.float_units}]
        floats = list(dict.fromkeys(kept + [u for u in units if u.op in slow]))
        label = f"{chosen.label}; {', '.join(sorted(slow))} in float (no XNNPACK int8 kernel)"
        a = self.try_variant(label, chosen.variant, floats)
        fits = c.float_size is None or a is None or a.size_bytes <= c.float_size
        if a is not None and a.passed and fits and a.size_bytes <= chosen.size_bytes * SPEED_SIZE_BUDGET:
            if not (c.slow_ops(a.data) & slow):
                return a
        return chosen


def search(candidates: Candidates, measure: Measurer, log=lambda msg: None, prefer: str = "speed"):
    """The best artifact meeting ``measure.min_psnr`` (see the module docstring).
    Returns ``(chosen, attempts, ranking, rule, failed)``: ``failed`` names the attempts that
    could not be built or that the runtime failed to run (never picked)."""
    s = _Search(candidates, measure, log, prefer)
    for label, variant in candidates.same_size(s.settled):  # 1. same-size int8 variants
        s.try_variant(label, variant)
    ranking: list[dict] = []
    if not s.settled() and candidates.units and any(a.variant for a in s.attempts):
        ranking = s.mixed()  # 2.
    passed_fast = any(a.passed and a.compute in ("int8", "mixed") for a in s.attempts)
    slow = [a for a in s.attempts if a.passed and a.compute == "slow" and a.variant]
    if slow and not passed_fast:  # int8 passes but a reference kernel makes it slow: keep that op float
        passed_fast = s.faster(max(slow, key=lambda a: a.psnr_db or 0.0)).compute in ("int8", "mixed")
    if (ranking or s.mixed_skipped) and (prefer == "size" or not passed_fast):  # 3. weight-only int8, then wider types
        s.attempt("weight-only int8", "int8-weights", candidates.weight_only)
    if not s.settled():
        for label, precision, build in candidates.wider:
            s.attempt(label, precision, build)
    if not s.attempts:
        raise ConversionError(f"no {candidates.fmt} quantization could be built or run" + (f": {s.failed[0]}" if s.failed else ""))
    chosen, rule = choose(s.attempts, prefer, candidates.float_size)
    faster = s.faster(chosen)
    if faster is not chosen:
        chosen, rule = faster, rule + "; then its slow op types kept float"
    return chosen, s.attempts, ranking, rule, s.failed


def rank_units(units, denied_by_type, build_mixed, measure, all_but: bool = True, screen: bool = False, only: bool = True) -> list[dict]:
    """Units most harmful first: lowest PSNR when *only* that unit is int8, then highest PSNR
    when all *but* it are int8 (each measured when asked: ``only``, ``all_but``). ``screen``
    measures on a few held-out samples.

    When several tensors each destroy the output on their own, every "all but one" variant is
    equally broken and ranks nothing; "only this one" still tells them apart. A unit of a type
    kept float only all together has no "only this one" when it has siblings.
    """
    rows = []
    for u in units:
        others = [v for v in units if v is not u]
        clash = u.op in denied_by_type and any(v.op == u.op for v in others)
        rows.append(
            {
                "unit": u,
                "only_quantized_psnr_db": None if clash or not only else _psnr(measure, f"only {u.label} int8", u, build_mixed(others), screen),
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
