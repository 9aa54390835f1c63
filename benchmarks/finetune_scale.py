"""Fine-tuning at real scale: where a step's time goes, and prune / QAT / distill end to end.

    python benchmarks/finetune_scale.py profile [--only FILE ...] [--steps 12]
    python benchmarks/finetune_scale.py commands [--only FILE ...] [--time-budget 2m] [--commands prune,qat,distill]

``profile``: per generator and per fine-tuning (prune, QAT, distill), at the batch the loop
would choose: data generation per batch, the teacher's forward pass, the student's forward and
backward pass with Adam (a bare compiled step less the teacher), one pruning mask update, one
held-out evaluation, the same step with XLA (or why XLA cannot compile it), and the loop's own
time per step over ``--steps`` steps against the bare step: its overhead, with and without the
evaluations (amortized over the planned interval). ``commands``: each command as a user runs it
(its own process, defaults unless ``--time-budget``), with wall time, steps, batch, time per
step and the PSNR reached, from its report. Everything goes into one markdown table per mode
under --out; compare numbers within one run only (the machine is shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from real_generators import REAL  # noqa: E402

MODELS = ["catgan_dcgan_generator.h5", "fmnist_cgan_generator.h5", "dlss_sr_generator.h5"]
KINDS = ("prune", "qat", "distill")


def _median_seconds(fn, runs: int = 3) -> float:
    import numpy as np

    fn()  # trace / warm
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _students(kind: str, loaded, session_like):
    """The model each fine-tuning trains, built as its pipeline builds it."""
    from gencompress.config import DistillConfig, PruneConfig, TrainingConfig
    from gencompress.tfenv import import_keras

    keras = import_keras()
    teacher = loaded.keras_model
    if kind == "prune":
        from gencompress.compress import pruning

        tfmot = pruning._tfmot()
        config = PruneConfig(training=TrainingConfig(steps=1000, batch_size=8))
        student = keras.models.clone_model(teacher)
        student.set_weights(teacher.get_weights())
        chosen, _ = pruning.select_layers(teacher, config)
        wrapped = pruning._wrap(keras, tfmot, student, set(chosen), config, config.effective_schedule())
        for layer in wrapped.submodules:
            if hasattr(layer, "pruning_step"):
                layer.pruning_step.assign(0)  # what tfmot's UpdatePruningStep does at the start of fit
        return wrapped
    if kind == "qat":
        from gencompress.compress.qat import build_qat_model

        return build_qat_model(teacher, session_like).model
    from gencompress.compress.distillation import derive_student
    from gencompress.model import flat_copy

    return derive_student(flat_copy(teacher), DistillConfig(), seed=0)[0]  # as the pipeline: nested bodies inlined


def _bare_step(tf, keras, student, teacher, x, xla: bool):
    optimizer = keras.optimizers.Adam(1e-9)

    @tf.function(jit_compile=xla)
    def step(x):
        y = teacher(x, training=False)
        with tf.GradientTape() as tape:
            out = student(x, training=True)
            out, y = (out if isinstance(out, list) else [out]), (y if isinstance(y, list) else [y])
            loss = tf.add_n([tf.reduce_mean(tf.square(a - b)) for a, b in zip(out, y)])
        optimizer.apply_gradients(zip(tape.gradient(loss, student.trainable_variables), student.trainable_variables))
        return loss

    return lambda: step(x).numpy()


def profile_one(file: str, kind: str, steps: int) -> dict:
    """One row of the profile (run in its own process: graphs and memory do not pile up)."""
    import numpy as np

    from gencompress.calibration.sources import noise_set
    from gencompress.compress import finetune
    from gencompress.compress.finetune_plan import PROBE_BATCH, measure_step_cost, plan_training
    from gencompress.config import DISTILL_TRAINING, PRUNE_TRAINING, QAT_TRAINING
    from gencompress.model import load_model
    from gencompress.report.metrics import measured_output_range
    from gencompress.tfenv import import_keras, import_tf

    tf, keras = import_tf(), import_keras()
    loaded = load_model(REAL / file)
    teacher = loaded.keras_model
    rng = np.random.default_rng(0)
    calib = noise_set(loaded.inputs, 64, rng, loaded.label_ranges)
    student = _students(kind, loaded, calib)
    defaults = {"prune": PRUNE_TRAINING, "qat": QAT_TRAINING, "distill": DISTILL_TRAINING}[kind]
    held_n = 256 if kind == "qat" else 64 if finetune_out_values(loaded) < 64 * 64 * 3 + 1 else 32
    probe_inputs = noise_set(loaded.inputs, PROBE_BATCH, rng, loaded.label_ranges).arrays
    cost = measure_step_cost(student, teacher, probe_inputs, 1, steps=1)
    if cost.seconds_per_sample < 0.25:
        cost = measure_step_cost(student, teacher, probe_inputs, PROBE_BATCH, steps=2)
    training, plan = plan_training(defaults, cost, held_n)
    batch = training.batch_size
    names = list(teacher.input_names)
    batch_arrays = noise_set(loaded.inputs, batch, rng, loaded.label_ranges).arrays
    x = [tf.constant(batch_arrays[n]) for n in names]
    x = x[0] if len(x) == 1 else x
    row = {"model": file, "kind": kind, "batch": batch, "plan_steps": training.steps, "eval_every": training.eval_every,
           "held": plan["held_out_samples"], "ms_per_sample_probe": 1000 * cost.seconds_per_sample}
    source = finetune.NoiseBatches(loaded.inputs, batch, 0, loaded.label_ranges)
    it = iter(source)
    row["data_s"] = _median_seconds(lambda: next(it), 5)
    forward = tf.function(lambda x: teacher(x, training=False))
    row["teacher_s"] = _median_seconds(lambda: np.asarray(_first(forward(x))))
    saved = student.get_weights()
    row["bare_s"] = _median_seconds(_bare_step(tf, keras, student, teacher, x, False))
    row["student_s"] = row["bare_s"] - row["teacher_s"]
    reason = finetune._xla_unsupported(tf, student, teacher, names)
    row["xla_s"] = None if reason else _median_seconds(_bare_step(tf, keras, student, teacher, x, True))
    row["xla_note"] = reason and reason[:80]
    student.set_weights(saved)
    row["mask_update_s"], row["mask_every"] = None, None
    if kind == "prune":
        from gencompress.config import PruneConfig

        row["mask_update_s"] = _mask_update(tf, student)
        row["mask_every"] = PruneConfig(training=training).effective_schedule()["frequency"]
    held = noise_set(loaded.inputs, plan["held_out_samples"], np.random.default_rng(5), loaded.label_ranges)
    reference = teacher.predict([held.arrays[n] for n in names] if len(names) > 1 else held.arrays[names[0]], verbose=0)
    output_range = measured_output_range(reference if isinstance(reference, list) else [reference])
    scorer = finetune._Scorer(tf, student, teacher, held, names, output_range)
    row["eval_s"] = _median_seconds(scorer, 2)
    row.update(_loop(finetune, student, teacher, source, held, output_range, training, steps, plan))
    return row


def finetune_out_values(loaded) -> int:
    n = 0
    for t in loaded.outputs:
        v = 1
        for d in t.shape[1:]:
            v *= d
        n += v
    return n


def _first(y):
    return y[0] if isinstance(y, (list, tuple)) else y


def _mask_update(tf, student):
    """Seconds of one mask update of every pruned layer (top-k over its weights), and how often
    the default schedule runs it."""
    from gencompress.compat.tfmot import internals

    wrappers = [layer for layer in student.submodules if isinstance(layer, internals().PruneLowMagnitude)]

    @tf.function
    def update():
        out = []
        for w in wrappers:
            for weight, _, _ in w.pruning_vars:
                out.append(w.pruning_obj._maybe_update_block_mask(weight)[1])
        return out

    return _median_seconds(lambda: [t.numpy() for t in update()])


def _loop(finetune, student, teacher, source, held, output_range, training, steps: int, plan: dict) -> dict:
    """The loop's own time per step over ``steps`` steps (one evaluation round at the end, the
    first step's tracing left out), and its overhead over the bare step."""
    from gencompress.tfenv import import_keras

    keras = import_keras()
    stamps = []

    class Stamp(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    config = dataclasses.replace(training, steps=steps, eval_every=steps, time_budget=None)
    result = finetune.train_to_match(student, teacher, source, held, output_range, config, callbacks=[Stamp()], progress=False,
                                     plan={**plan, "held_out_samples": len(held)})
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"loop_step_s": sum(intervals) / len(intervals), "loop_s": result.seconds, "loop_steps": result.steps_run}


def _finish(row: dict) -> dict:
    bare = row["bare_s"]
    mask = (row["mask_update_s"] or 0.0) / max(1, row["mask_every"] or 20)
    row["overhead_steps"] = row["loop_step_s"] / bare - 1
    row["overhead_all"] = (row["loop_step_s"] + row["eval_s"] / row["eval_every"]) / bare - 1
    row["python_s"] = row["loop_step_s"] - bare - row["data_s"] - mask
    return row


PROFILE_HEADER = (
    "| model | fine-tuning | batch | data ms | teacher fwd ms | student fwd+bwd+Adam ms | bare step ms | XLA step ms | "
    "mask update ms (every N) | eval ms (every N) | loop step ms | Python and other ms | loop overhead | with evals |"
)


def _profile_row(r: dict) -> str:
    ms = lambda s: "-" if s is None else f"{1000 * s:.0f}" if s >= 0.01 else f"{1000 * s:.2f}"  # noqa: E731
    xla = ms(r["xla_s"]) if r["xla_s"] is not None else "unsupported"
    every = f" ({r['mask_every']})" if r["mask_every"] else ""
    return (
        f"| {r['model'].split('_generator')[0]} | {r['kind']} | {r['batch']} | {ms(r['data_s'])} | {ms(r['teacher_s'])} | "
        f"{ms(r['student_s'])} | {ms(r['bare_s'])} | {xla} | {ms(r['mask_update_s'])}{every} | {ms(r['eval_s'])} ({r['eval_every']}) | "
        f"{ms(r['loop_step_s'])} | {ms(r['python_s'])} | {100 * r['overhead_steps']:+.0f} % | {100 * r['overhead_all']:+.0f} % |"
    )


def run_profile(args) -> list[str]:
    rows = [PROFILE_HEADER, "|" + "---|" * (PROFILE_HEADER.count("|") - 1)]
    print(rows[0], flush=True)
    for file in args.only or MODELS:
        for kind in args.kinds.split(","):
            code = f"import json, sys; sys.argv=['x']; import benchmarks.finetune_scale as b; print('ROW', json.dumps(b.profile_one({file!r}, {kind!r}, {args.steps})))"
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
            line = next((x for x in proc.stdout.splitlines() if x.startswith("ROW ")), None)
            if line is None:
                rows.append(f"| {file} | {kind} | failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:150]} |")
            else:
                rows.append(_profile_row(_finish(json.loads(line[4:]))))
            print(rows[-1], flush=True)
    return rows


COMMANDS_HEADER = (
    "| model | command | wall time | fine-tuning | steps | batch | s/step | stopped by | PSNR reached | result | exit |"
)


def _command(file: str, kind: str, folder: Path, budget: str | None) -> list[str]:
    base = [sys.executable, "-m", "gencompress"]
    model = str(REAL / file)
    extra = ["--time-budget", budget] if budget else []
    if kind == "prune":
        return base + ["prune", model, "--sparsity", "0.5", "-o", str(folder)] + extra
    if kind == "distill":
        return base + ["distill", model, "--width", "0.5", "-o", str(folder)] + extra
    return base + ["quantize", model, "--method", "qat", "-o", str(folder)] + extra


def _command_row(file: str, kind: str, report: dict, wall: float, code: int) -> str:
    if kind == "prune":
        section, ft = report["pruning"], report["pruning"]["finetune"]
        result = f"sparsity {section['measured_sparsity']:.3f}"
    elif kind == "distill":
        section, ft = report["distillation"], report["distillation"]["finetune"]
        result = f"{section['student_params']:,} params ({100 * section['params_ratio']:.0f} %)"
    else:
        section, ft = report["qat"], report["qat"]["finetune"]
        result = "QAT int8: " + ", ".join(f"{e['format']} {e['psnr_db']} dB" for e in section["exports"])
    plan = ft.get("plan") or {}
    floats = [a for a in report["artifacts"] if a.get("variant") in ("pruned", "student") and a["precision"] == "float32"]
    reached = floats[0]["fidelity"]["psnr_db"] if floats else ft.get("final_psnr_db", ft.get("best_psnr_db"))
    return (
        f"| {file.split('_generator')[0]} | {kind} | {wall / 60:.1f} min | {ft['seconds']:.0f} s | {ft['steps_run']} | {plan.get('batch_size')} | "
        f"{ft.get('seconds_per_step') or 0:.3f} | {ft.get('stopped_by')} | {reached} dB | {result} | {code} |"
    )


def run_commands(args) -> list[str]:
    out = Path(args.out)
    rows = [COMMANDS_HEADER, "|" + "---|" * (COMMANDS_HEADER.count("|") - 1)]
    print(rows[0], flush=True)
    for file in args.only or MODELS:
        for kind in args.commands.split(","):
            folder = out / f"{Path(file).stem}-{kind}"
            start = time.perf_counter()
            proc = subprocess.run(_command(file, kind, folder, args.time_budget), capture_output=True, text=True, cwd=REPO)
            wall = time.perf_counter() - start
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "stderr.log").write_text(proc.stderr)
            if not (folder / "report.json").exists():
                rows.append(f"| {file} | {kind} | failed (exit {proc.returncode}): {(proc.stderr.strip().splitlines() or ['?'])[-1][:150]} |")
            else:
                rows.append(_command_row(file, kind, json.loads((folder / "report.json").read_text()), wall, proc.returncode))
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["profile", "commands"])
    parser.add_argument("--only", nargs="*", help="model files (default: catgan, fmnist, dlss)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="profile: fine-tunings to profile")
    parser.add_argument("--steps", type=int, default=12, help="profile: loop steps timed")
    parser.add_argument("--commands", default=",".join(KINDS), help="commands: which to run")
    parser.add_argument("--time-budget", help="commands: pass --time-budget (default: the commands' defaults)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "finetune_scale"))
    args = parser.parse_args()
    if not REAL.is_dir():
        sys.exit(f"real generators not present at {REAL}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    rows = run_profile(args) if args.mode == "profile" else run_commands(args)
    rows.append(f"\n(load average at the start: {load:.1f} on {os.cpu_count()} CPUs)")
    (Path(args.out) / f"{args.mode}.md").write_text("\n".join(rows) + "\n")
    print(rows[-1])


if __name__ == "__main__":
    main()
