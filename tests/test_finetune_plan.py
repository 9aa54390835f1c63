"""Fine-tuning at scale: steps and batch planned from the measured step cost, ``--time-budget``,
progress lines with loss, held-out PSNR and ETA, and the plan and devices in the report."""

import io
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import build_dcgan
from gencompress.calibration.sources import noise_set
from gencompress.cli import cli
from gencompress.compress.finetune import NoiseBatches, train_to_match
from gencompress.compress.finetune_plan import StepCost, plan_training, resolve_training
from gencompress.config import DISTILL_TRAINING, PRUNE_TRAINING, TrainingConfig, parse_duration, replace
from gencompress.errors import OptionError
from gencompress.progress import Progress

RANGE = (-1.0, 1.0)
FAST = ["--calibration-samples", "32", "--eval-samples", "8", "--latency-runs", "3"]


@pytest.fixture(scope="module")
def teacher(keras):
    return build_dcgan(keras)


def _held(model, n=32, seed=9):
    from gencompress.model import _tensor_info

    inputs = [_tensor_info(name, t.shape, t.dtype) for name, t in zip(model.input_names, model.inputs)]
    return noise_set(inputs, n, np.random.default_rng(seed), None), inputs


def _student(keras, teacher, scale=0.3):
    student = keras.models.clone_model(teacher)
    rng = np.random.default_rng(0)
    student.set_weights([v + rng.normal(0.0, scale * (v.std() + 1e-6), v.shape).astype(v.dtype) if v.ndim > 1 else v for v in teacher.get_weights()])
    return student


# --------------------------------------------------------------------------- the plan (pure)


@pytest.mark.parametrize(
    "config, seconds_per_sample, held, steps, batch, eval_every, held_used",
    [
        # 240 s * 0.9 / 10 ms = 21,600 samples: 337 steps at batch 64 (>= 300), in whole rounds of 50.
        (PRUNE_TRAINING, 0.01, 64, 350, 64, 50, 64),
        # Twice the cost (catgan's scale): 168 steps at 64 is under 300, so batch 32 and 337 steps.
        (PRUNE_TRAINING, 0.02, 64, 350, 32, 50, 64),
        # A second a sample: 216 samples, batch down to the minimum 8, 27 steps; evaluating every
        # 50 would leave no round, so every ceil(27/4) = 7, and the held-out set cut to 22 samples
        # (7 * 8 * 0.1 / 0.25) so that evaluations stay at a tenth of the training.
        (PRUNE_TRAINING, 1.0, 64, 28, 8, 7, 22),
        # A cheap model stops at max_steps (distillation: 3,000 at batch 32).
        (DISTILL_TRAINING, 0.001, 256, 3000, 32, 100, 256),
        # A time budget is the target instead, and lifts the max_steps cap: 600 * 0.9 / 0.01 / 64 = 843.
        (replace(PRUNE_TRAINING, time_budget="10m"), 0.01, 64, 850, 64, 50, 64),
    ],
)
def test_plan_from_the_measured_cost(config, seconds_per_sample, held, steps, batch, eval_every, held_used):
    training, plan = plan_training(config, StepCost(seconds_per_sample, 16, 2), held)
    assert (training.steps, training.batch_size, training.eval_every) == (steps, batch, eval_every)
    assert (plan["steps"], plan["batch_size"], plan["eval_every"], plan["held_out_samples"]) == (steps, batch, eval_every, held_used)
    assert plan["chosen"] == ["batch_size", "steps"] and plan["seconds_per_sample"] == seconds_per_sample
    target = config.time_budget or config.target_seconds
    assert plan["target_seconds"] == target and plan["time_budget_s"] == config.time_budget
    # The expected training time fits the target (a tenth is left for evaluations), up to the
    # rounding to whole evaluation rounds, unless max_steps capped it below.
    assert plan["expected_seconds"] == pytest.approx(steps * batch * seconds_per_sample, abs=0.1)
    assert plan["expected_seconds"] <= 0.9 * target * 1.05
    assert steps % eval_every == 0 and steps // eval_every >= 4
    # Evaluations (a forward pass, a quarter of a step a sample) cost at most a tenth of the training.
    assert held_used * 0.25 <= 0.1 * eval_every * batch + 1e-9


def test_given_steps_and_batch_are_kept_and_need_no_timing():
    training, plan = plan_training(replace(PRUNE_TRAINING, steps=77, batch_size=5), None, 64)
    assert (training.steps, training.batch_size) == (77, 5)  # not rounded: what the user asked
    assert plan["chosen"] == [] and plan["seconds_per_sample"] is None and plan["expected_seconds"] is None
    # Given only the batch: the steps are chosen for it.
    training, plan = plan_training(replace(PRUNE_TRAINING, batch_size=16), StepCost(0.01, 16, 2), 64)
    assert plan["chosen"] == ["steps"] and training.batch_size == 16 and training.steps == 1000  # 1,350 capped
    with pytest.raises(ValueError, match="measure the step cost first"):
        plan_training(PRUNE_TRAINING, None, 64)


@pytest.mark.parametrize(
    "text, seconds", [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1m30s", 90.0), ("1.5h", 5400.0), (" 2 m ", 120.0), (45, 45.0)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert TrainingConfig(time_budget=text).time_budget == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "1m30", "m", "0s", "-5", "1e3"])
def test_bad_durations(text):
    with pytest.raises(OptionError, match="--time-budget"):
        parse_duration(text)


def test_bad_time_budget_one_line_exit_2(dcgan_h5, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["distill", str(dcgan_h5), "-o", str(out), "--time-budget", "soon", *FAST])
    assert result.exit_code == 2, result.output
    assert "--time-budget: give a duration such as 90s, 10m or 1h, not 'soon'" in result.stderr
    assert len([ln for ln in result.stderr.splitlines() if "rror" in ln]) == 1, result.stderr
    assert not out.exists() or not list(out.iterdir())
    result = CliRunner().invoke(cli, ["quantize", str(dcgan_h5), "-o", str(out), "--time-budget", "1m", "--method", "ptq", *FAST])
    assert result.exit_code == 2 and "--time-budget only applies to --method qat or auto" in result.stderr


# --------------------------------------------------------------------------- the loop


def test_measured_cost_plans_a_cheap_model_at_full_batch(keras, teacher):
    held, inputs = _held(teacher)
    student = _student(keras, teacher)
    before = student.get_weights()
    training, plan = resolve_training(replace(PRUNE_TRAINING, target_seconds=20.0), student, teacher, held.arrays, 64)
    assert all(np.array_equal(a, b) for a, b in zip(before, student.get_weights()))  # the probe leaves it as it was
    # A 16x16 model costs well under a millisecond a sample: the full batch, and steps that fill
    # 18 s of the 20 s target (capped at 1,000).
    assert plan["chosen"] == ["batch_size", "steps"] and plan["probe_batch"] == 16
    assert 0 < plan["seconds_per_sample"] < 0.05 and training.batch_size == 64
    assert training.steps == plan["steps"] <= 1000 and training.steps % training.eval_every == 0
    assert plan["expected_seconds"] <= 18.0 * 1.05


def test_time_budget_stops_the_loop_and_keeps_the_best(keras, teacher):
    held, inputs = _held(teacher)
    student = _student(keras, teacher)
    stream = io.StringIO()
    # The budget covers the set-up too (scoring the start, tracing the step: seconds on a loaded
    # machine), so it is a few times that here.
    config = TrainingConfig(steps=100_000, batch_size=8, eval_every=20, time_budget="15s", min_delta=0.0, patience=100_000)
    plan = {"time_budget_s": 15.0, "batch_size": 8}
    result = train_to_match(student, teacher, NoiseBatches(inputs, 8, seed=1), held, RANGE, config, progress=Progress(stream), plan=plan)
    assert result.stopped_by == "time budget" and result.stopped_early
    assert 20 <= result.steps_run < 100_000
    # It stops when the budget left would not cover another step and one more evaluation: inside
    # the budget, bar the final scoring and Keras' fit returning: after a stop in the middle of a
    # round that took 8 s on this model on the loaded 2-core machine (after an early stop at a
    # round's end, 0.02 s); known, left in the measured seconds.
    assert result.seconds < 15.0 * 1.25 + 12.0, result.seconds
    # The last (possibly partial) round was scored, and the best weights are the ones kept.
    assert result.history[-1]["step"] == result.steps_run
    assert result.final_psnr_db == result.best_psnr_db == max(h["psnr_db"] for h in result.history[1:])
    assert result.best_psnr_db > result.initial_psnr_db
    summary = result.summary()
    assert summary["stopped_by"] == "time budget" and summary["plan"] == plan
    assert summary["devices"]["kind"] == "CPU" and summary["devices"]["devices"] == ["/device:CPU:0"]
    assert summary["seconds_per_step"] == pytest.approx(result.seconds / result.steps_run, abs=1e-4)
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith(f"fine-tune: {result.steps_run} steps at batch 8 in ") and last.endswith(
        "(stopped by the 15 s time budget; best weights kept)"
    ), last


def test_progress_lines_every_5_percent_when_not_a_terminal(keras, teacher):
    held, inputs = _held(teacher)
    stream = io.StringIO()
    config = TrainingConfig(steps=100, batch_size=8, eval_every=20)
    result = train_to_match(_student(keras, teacher), teacher, NoiseBatches(inputs, 8, seed=1), held, RANGE, config, progress=Progress(stream))
    lines = [ln for ln in stream.getvalue().splitlines() if re.match(r"fine-tuning: \d+/100 ", ln)]
    # One line every 5 % (steps 5, 10, ..., 95), each with the step, elapsed, ETA, the last loss
    # and the latest held-out PSNR with the step it was measured at and the best so far.
    assert [int(ln.split(": ")[1].split("/")[0]) for ln in lines] == list(range(5, 100, 5)), lines
    duration = r"(?:[\d.]+ s|\d+ min \d+ s)"  # 12.3 s, 1 min 05 s
    pattern = rf"fine-tuning: (\d+)/100 \(\d+ %\), {duration}, ETA {duration}, loss [\d.e-]+, held-out PSNR ([\d.]+) dB at step (\d+) \(best ([\d.-]+)\)"
    for line in lines:
        m = re.fullmatch(pattern, line)
        assert m, line
        step, at = int(m.group(1)), int(m.group(3))
        assert at == 20 * (step // 20) or (step % 20 == 0 and at == step - 20)  # the latest evaluation before it
    assert "\r" not in stream.getvalue() and result.steps_run == 100


# --------------------------------------------------------------------------- the commands


def test_distill_command_time_budget_in_terminal_and_report(dcgan_h5, tmp_path):
    result = CliRunner().invoke(
        cli, ["distill", str(dcgan_h5), "-o", str(tmp_path), "--width", "0.5", "--steps", "100000", "--batch-size", "8", "--eval-every", "20",
              "--patience", "100000", "--time-budget", "15s", *FAST]
    )
    assert result.exit_code in (0, 3), result.output  # 3: the student misses --min-psnr, artifacts kept
    report = json.loads((tmp_path / "report.json").read_text())
    ft = report["distillation"]["finetune"]
    assert ft["stopped_by"] == "time budget" and 20 <= ft["steps_run"] < 100_000 and ft["seconds"] < 15.0 * 1.25 + 12.0
    assert ft["plan"]["chosen"] == [] and ft["plan"]["time_budget_s"] == 15.0 and ft["plan"]["batch_size"] == 8
    assert ft["devices"] == {"kind": "CPU", "devices": ["/device:CPU:0"], "gpus_seen": 0, "gpu_names": []}
    assert ft["best_psnr_db"] == max(h["psnr_db"] for h in ft["history"][1:])
    assert "(stopped by the 15 s time budget; best weights kept)" in result.stderr


def test_prune_command_plans_from_the_cost(dcgan_h5, tmp_path):
    result = CliRunner().invoke(
        cli, ["prune", str(dcgan_h5), "-o", str(tmp_path), "--sparsity", "0.5", "--schedule", "constant", "--time-budget", "20s", *FAST]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    ft = report["pruning"]["finetune"]
    plan = ft["plan"]
    assert plan["chosen"] == ["batch_size", "steps"] and plan["target_seconds"] == 20.0 and plan["time_budget_s"] == 20.0
    assert plan["batch_size"] == 64 and plan["seconds_per_sample"] > 0  # cheap: the full batch
    assert plan["expected_seconds"] <= 20.0 * 0.9 * 1.05 and ft["seconds"] < 20.0 * 1.25 + 3.0
    assert ft["stopped_by"] in ("steps", "early stopping", "time budget") and ft["steps_run"] <= plan["steps"]
    assert ft["devices"]["kind"] == "CPU"
    # A constant schedule prunes to the target from the first step: the sparsity is the request.
    assert abs(report["pruning"]["measured_sparsity"] - 0.5) <= 0.01
    assert "fine-tuning: measuring the step cost" in result.stderr and "ms a sample at batch" in result.stderr


def test_budget_before_the_pruning_target_is_said(teacher):
    from gencompress.compress.pruning import prune_model
    from gencompress.config import PruneConfig

    # A polynomial schedule over 100,000 steps reaches 0.5 near step 50,000: a 12 s budget ends it
    # far sooner, and the result says so rather than passing a lower sparsity off as the request.
    config = PruneConfig(sparsity=0.5, training=TrainingConfig(steps=100_000, batch_size=8, eval_every=20, time_budget=12))
    _, info = prune_model(teacher, config)
    assert info.finetune["stopped_by"] == "time budget" and info.finetune["steps_run"] < 50_000
    assert info.measured_sparsity < 0.4
    target_at = config.effective_schedule()["target_at"]  # 49,981: on the mask-update grid
    assert target_at > 49_000
    assert any(f"before the schedule reaches the target sparsity at step {target_at}" in n for n in info.finetune["notes"]), info.finetune["notes"]
