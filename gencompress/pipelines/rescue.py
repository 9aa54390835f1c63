"""``quantize --method auto`` (the default): quantization-aware training as the rescue when
post-training int8 misses the target at full speed.

Post-training methods lower the error each layer adds; when it is spread over every layer (a
DCGAN with BatchNorm after each of four transposed convolutions: 26-28 dB in every variant, no
single unit to keep float) only training moves it: QAT reached 39-41 dB on that model. The rescue
runs on the fast form (BatchNorm folded, transposed convolutions in sub-pixel form: both runtimes
run it in int8 kernels), for about ``AUTO_QAT_SECONDS``, its steps planned from the model's
multiply-accumulates so that the same command writes the same bytes, and it is graded by the speed
rule the search uses: per format the QAT artifact ships when it meets the target at int8 speed,
else the post-training pick does, and when neither does the run says so in one line.
"""

from __future__ import annotations

import dataclasses

from gencompress.config import AUTO_QAT_SECONDS, RESCUE_CEILING, RESCUE_MIN_STEPS, TrainingConfig
from gencompress.errors import GencompressError
from gencompress.pipelines.forms import int8_source, layer_macs, transformed
from gencompress.pipelines.session import Session

FAST_COMPUTE = ("int8", "mixed")
# Seconds per multiply-accumulate of one sample through a QAT training step (teacher forward,
# fake-quantized forward and backward, Adam), measured on this project's 2-core machine; and a
# fixed cost per sample (the loop, the fake-quant ops of a tiny model). A plan, not a timing:
# it only decides how many steps the rescue takes. See the README's QAT rescue table.
QAT_SECONDS_PER_MAC = 4e-10
QAT_SECONDS_PER_SAMPLE = 4e-4


def int8_slot(a) -> bool:
    """A post-training artifact of the int8 mode (whatever precision its search settled on)."""
    return not a.variant and a.precision != "float32" and (a.fallback is not None or a.precision in ("int8", "mixed"))


def compute_of(a) -> str:
    """How an artifact computes (its search's class, or the class read from a QAT artifact's graph)."""
    if a.compute is not None:
        return a.compute
    return a.fallback.compute if a.fallback is not None else "int8"


def fast_pass(a, target: float) -> bool:
    psnr = a.fidelity.psnr_db
    return a.precision in ("int8", "mixed") and psnr is not None and psnr >= target and compute_of(a) in FAST_COMPUTE


def auto_reason(session: Session, check_qat) -> str | None:
    """Why QAT runs (no post-training int8 artifact of some format meets the target at full
    speed), or ``None`` when it does not need to or cannot (logged). ``check_qat()`` raises when
    the model cannot be trained quantization-aware."""
    target = session.config.min_psnr
    ptq = [a for a in session.artifacts if int8_slot(a)]
    missing = sorted({a.format for a in ptq} - {a.format for a in ptq if fast_pass(a, target)})
    if not missing:
        session.progress.log("auto: post-training int8 meets the target at full speed: no QAT")
        return None
    try:
        check_qat()
    except GencompressError as exc:
        session.notes.append(f"--method auto: no quantization-aware training ({exc})")
        return None
    reason = f"no post-training {', '.join(missing)} artifact meets {target:g} dB at int8 speed"
    session.progress.log(f"auto: quantization-aware training: {reason}")
    return reason


def fast_form(session: Session):
    """What QAT trains: the sub-pixel form (BatchNorm folded) when the model has transposed
    convolutions, else the BatchNorm-folded model."""
    return transformed(session, "subpixel") or int8_source(session)


def rescue_training(session: Session, training: TrainingConfig, model) -> TrainingConfig | None:
    """The rescue's training config: ``training`` as given when the user chose its steps, batch
    or time budget; else planned from ``model``'s MACs for ``AUTO_QAT_SECONDS`` (deterministic),
    with ``RESCUE_CEILING`` times that as its time budget. ``None`` (with a note) when fewer than
    ``RESCUE_MIN_STEPS`` steps would fit."""
    from gencompress.compress.finetune_plan import StepCost, plan_training
    from gencompress.pipelines.qat import VALIDATION_SAMPLES

    if training.steps is not None or training.batch_size is not None or training.time_budget is not None:
        return training
    macs = sum(layer_macs(model).values())
    cost = StepCost(seconds_per_sample=macs * QAT_SECONDS_PER_MAC + QAT_SECONDS_PER_SAMPLE, probe_batch=0, probe_steps=0)
    planned, _ = plan_training(dataclasses.replace(training, target_seconds=AUTO_QAT_SECONDS), cost, VALIDATION_SAMPLES)
    if planned.steps < RESCUE_MIN_STEPS:
        session.notes.append(
            f"--method auto: no quantization-aware training: {planned.steps} steps of batch {planned.batch_size} would fit in "
            f"{AUTO_QAT_SECONDS / 60:g} minutes ({macs / 1e6:,.0f} M MACs a sample); give --method qat --time-budget 20m to train longer"
        )
        return None
    return dataclasses.replace(planned, time_budget=AUTO_QAT_SECONDS * RESCUE_CEILING)


def shipped_selector(artifacts, target: float, auto: str | None):
    """Which quantized artifacts are the deliverable: with ``--method qat`` the QAT ones; with
    ``auto``, per format, QAT when it meets the target at int8 speed and the post-training pick
    does not, else the post-training one."""
    if not auto:
        return lambda a: a.variant == "qat"
    ptq_fast = {a.format for a in artifacts if int8_slot(a) and fast_pass(a, target)}
    qat_wins = {a.format for a in artifacts if a.variant == "qat" and fast_pass(a, target)} - ptq_fast
    shipped = lambda a: (int8_slot(a) or a.variant == "qat") and (a.format in qat_wins) == (a.variant == "qat")  # noqa: E731
    for a in artifacts:
        if int8_slot(a) or a.variant == "qat":
            a.notes = a.notes + [f"--method auto: {'shipped' if shipped(a) else 'reference'} ({auto})"]
    return shipped


def speed_notes(artifacts, target: float, shipped) -> list[str]:
    """One line per format whose shipped quantized artifact does not meet the target at int8
    speed: what it is, and the best full-int8 PSNR the run reached (search and QAT)."""
    notes = []
    for fmt in dict.fromkeys(a.format for a in artifacts):
        ship = next((a for a in artifacts if a.format == fmt and shipped(a) and a.precision != "float32"), None)
        if ship is None or fast_pass(ship, target):
            continue
        tries = [t.psnr_db for a in artifacts if a.format == fmt and a.fallback for t in a.fallback.attempts
                 if t.compute == "int8" and t.psnr_db is not None]
        qat = [a.fidelity.psnr_db for a in artifacts if a.format == fmt and a.variant == "qat" and a.fidelity.psnr_db is not None]
        best = ", ".join(part for part in (
            f"best full int8 {max(tries):.1f} dB" if tries else "", f"QAT int8 {max(qat):.1f} dB" if qat else "") if part)
        what = {"float": "computes in float", "dequant": "computes in float from int8 weights", "slow": "runs reference kernels"}.get(
            compute_of(ship), f"is {compute_of(ship)}")
        met = "meets" if ship.fidelity.psnr_db is not None and ship.fidelity.psnr_db >= target else "misses"
        notes.append(f"{fmt}: nothing met {target:g} dB at int8 speed ({best or 'no full-int8 attempt'}); "
                     f"shipped {ship.name}, which {met} it and {what}")
    return notes
