"""The ``gencompress`` command line: a thin front over ``gencompress.api``.

Options are parsed into the config dataclasses (whose defaults are the only defaults: the options
read them with ``default_of``), the API call runs, its result is saved and rendered. Nothing heavy
is imported at module level: ``gencompress --help`` must not import TensorFlow.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from gencompress import config as C
from gencompress.config import default_of
from gencompress.errors import ConversionError, FidelityError, GencompressError, OptionError

DEFAULT_OUTPUT = Path("gencompress-out")


def _comma_list(allowed, all_value=None):
    def convert(ctx, param, value):
        if value is None:
            return None
        items = [v.strip() for v in value.split(",") if v.strip()]
        if all_value and items == ["all"]:
            return tuple(all_value)
        bad = [v for v in items if v not in allowed]
        if bad or not items:
            raise click.BadParameter(f"{', '.join(bad) or 'nothing'} (choose from {', '.join(allowed)})")
        return tuple(dict.fromkeys(items))

    return convert


def _input_range(ctx, param, value):
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("give LOW,HIGH, for example -1,1") from None
    if not lo < hi:
        raise click.BadParameter("LOW must be below HIGH")
    return lo, hi


def _layer_names(ctx, param, value):
    if value is None:
        return None
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names:
        raise click.BadParameter("give layer names, comma-separated")
    return names


def model_options(f):
    """Options every command that loads a model shares."""

    @click.argument("model", type=click.Path())
    @click.option("-o", "--output-dir", type=click.Path(file_okay=False), help=f"Where artifacts and the report go [default: {DEFAULT_OUTPUT}/<model stem>].")
    @click.option("--trust-code", is_flag=True, help="Allow Lambda layers and --custom-objects: loading then runs code from the model.")
    @click.option("--custom-objects", type=click.Path(dir_okay=False), help="Python file defining custom layer classes and Lambda helpers (needs --trust-code).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def run_options(f):
    """Options for commands that build and measure artifacts (``RunConfig`` and the calibration)."""
    R = C.RunConfig
    for option in reversed(
        [
            click.option("--format", "formats", default=",".join(default_of(R, "formats")), show_default=True, callback=_comma_list(C.FORMATS), help="Artifact formats, comma-separated."),
            click.option("--calibration", default="noise", show_default=True, help="Input source: 'noise', a .npy/.npz file (arrays keyed by input name) or a folder of PNG/JPEG images."),
            click.option("--calibration-samples", type=int, help="Samples used to calibrate [default: 200, fewer for large outputs: 32 for a 384×384 image; a quarter with --fast]."),
            click.option("--eval-samples", type=int, help="Held-out samples used to measure fidelity [default: 64, fewer for large outputs: 16 for a 384×384 image; a quarter with --fast]."),
            click.option("--seed", default=default_of(R, "seed"), show_default=True, type=int, help="Seed for noise, shuffling, splits and training."),
            click.option("--input-range", default="-1,1", show_default=True, callback=_input_range, help="Value range images are scaled to (image-folder calibration)."),
            click.option("--threads", default=default_of(R, "threads"), show_default=True, type=int, help="Runtime threads for latency."),
            click.option("--latency-runs", type=int, help="Timed runs per artifact, after up to 10 warm-up runs; at most about 5 s per artifact [default: 50; 10 with --fast]."),
            click.option("--fast", is_flag=True, help="A quick look: a quarter of the calibration and evaluation samples and 10 latency runs (said in the report)."),
        ]
    ):
        f = option(f)
    return f


def training_options(defaults: C.TrainingConfig, what: str):
    """Fine-tuning options (``TrainingConfig``), their defaults from ``defaults``."""

    def decorate(f):
        for option in reversed(
            [
                click.option("--steps", type=int, help=f"{what}most training steps (stops early when held-out PSNR stalls) [default: what fits in {defaults.target_seconds:g} s at the model's measured cost, at most {defaults.max_steps}; the report records the choice]."),
                click.option("--batch-size", type=int, help=f"{what}batch size (global: split across replicas when distributed) [default: {defaults.max_batch_size}, halved down to {defaults.min_batch_size} for models too costly for enough steps in that time]."),
                click.option("--time-budget", help=f"{what}stop fine-tuning when this much time is spent, e.g. 90s, 10m, 1h (the best weights so far are kept; shared by both fine-tunings with --then qat) [default: none]."),
                click.option("--learning-rate", type=float, help=f"{what}Adam learning rate (halved on plateaus) [default: {defaults.learning_rate:g}]."),
                click.option("--data", type=click.Path(), help=f"{what}inputs to calibrate and train on: a .npy/.npz file or an image folder (as --calibration; default: noise)."),
                click.option("--distribute", type=click.Choice(C.DISTRIBUTE), help=f"{what}mirrored: all local GPUs (or logical CPUs); multi-worker: the cluster in TF_CONFIG [default: none]."),
                click.option("--cpu-devices", type=int, hidden=True, help="Split the CPU into N logical devices (to try --distribute mirrored without GPUs)."),
            ]
        ):
            f = option(f)
        return f

    return decorate


def _training(defaults: C.TrainingConfig, steps=None, batch_size=None, learning_rate=None, distribute=None, time_budget=None, **more) -> C.TrainingConfig:
    given = {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "distribute": distribute, "time_budget": time_budget, **more}
    return C.replace(defaults, **{k: v for k, v in given.items() if v is not None})


def _calibration(calibration: str, data: str | None, samples, input_range):
    """``--data`` (commands that train) and ``--calibration`` name the same thing: the inputs."""
    from gencompress.calibration import Calibration

    if data is not None:
        if calibration not in ("noise", data):
            raise OptionError("--data and --calibration name different inputs: give one of them")
        calibration = data
    return Calibration.from_spec(calibration, samples=samples, input_range=input_range)


def _split(kwargs: dict, data=None):
    """Run options → (RunConfig fields, Calibration)."""
    calibration = _calibration(kwargs.pop("calibration"), data, kwargs.pop("calibration_samples"), kwargs.pop("input_range"))
    return kwargs, calibration


class _Group(click.Group):
    """Turns user errors (``GencompressError``) into one line on stderr and their exit code."""

    def invoke(self, ctx):
        from gencompress.progress import Progress

        try:
            with Progress().activate():
                return super().invoke(ctx)
        except GencompressError as exc:
            click.echo(f"gencompress: error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gencompress")
def cli():
    """Compress Keras generators and export them to TFLite and ONNX, measured against the float model.

    \b
    Examples:
      gencompress quantize sample_models/dcgan_digits.h5
      gencompress export model.keras --format onnx
      gencompress inspect model.h5
    """


Q = C.QuantizeConfig


@cli.command()
@model_options
@run_options
@click.option("--mode", "modes", default=",".join(default_of(Q, "modes")), show_default=True, callback=_comma_list(C.MODES, C.MODES), help="Precisions, comma-separated, or 'all': int8 (full integer), int16x8, float16, dynamic.")
@click.option("--int8-io", is_flag=True, help="TFLite: integer inputs and outputs instead of float.")
@click.option("--calibration-method", default=default_of(Q, "calibration_method"), show_default=True, type=click.Choice(C.CALIBRATION_METHODS), help="ONNX static calibration method.")
@click.option("--min-psnr", default=default_of(Q, "min_psnr"), show_default=True, type=float, help="Fidelity target in dB: int8 artifacts that miss it fall back to better calibration, mixed precision, then wider types. 0 turns the guard off.")
@click.option("--prefer", default=default_of(Q, "prefer"), show_default=True, type=click.Choice(C.PREFER), help="Among artifacts that meet --min-psnr: speed takes those that compute fastest (full int8, then mixed precision, then float compute); size the smallest.")
@click.option("--method", default=default_of(Q, "method"), show_default=True, type=click.Choice(C.METHODS), help="ptq: post-training only; qat: also quantization-aware training (fine-tuned against the float model), written as <stem>-qat.int8.* beside the post-training artifacts.")
@training_options(C.QAT_TRAINING, "--method qat: ")
def quantize(model, output_dir, trust_code, custom_objects, modes, int8_io, calibration_method, min_psnr, prefer, method,
             steps, batch_size, time_budget, learning_rate, data, distribute, cpu_devices, **run_kwargs):
    """Quantize MODEL post-training (or with QAT); writes float32 references and quantized .tflite/.onnx.

    \b
    Examples:
      gencompress quantize sample_models/dcgan_digits.h5 --mode int8,float16
      gencompress quantize model.h5 --method qat --steps 1000
      gencompress quantize model.keras --method qat --data latents.npy
    """
    if method == "ptq":
        given = [n for n, v in (("--steps", steps), ("--batch-size", batch_size), ("--time-budget", time_budget), ("--learning-rate", learning_rate), ("--data", data), ("--distribute", distribute)) if v is not None]
        if given:
            raise OptionError(f"{', '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} to --method qat")
    strategy = _strategy(distribute, cpu_devices)  # before TensorFlow's runtime starts
    run_kwargs, calibration = _split(run_kwargs, data)
    qat = _training(C.QAT_TRAINING, steps, batch_size, learning_rate, distribute, time_budget)
    config = Q(modes=modes, int8_io=int8_io, calibration_method=calibration_method, min_psnr=min_psnr, prefer=prefer, method=method, qat=qat, **run_kwargs)
    _run("quantize", model, output_dir, trust_code, custom_objects, config, calibration, strategy=strategy)


@cli.command()
@model_options
@run_options
def export(model, output_dir, trust_code, custom_objects, **run_kwargs):
    """Export MODEL as float32 .tflite and .onnx, measured against the Keras model.

    \b
    Example:
      gencompress export sample_models/cvae_decoder.keras -o out/
    """
    run_kwargs, calibration = _split(run_kwargs)
    _run("export", model, output_dir, trust_code, custom_objects, C.ExportConfig(**run_kwargs), calibration)


@cli.command()
@model_options
@run_options
@click.option("--calibration-method", default=default_of(C.AnalyzeConfig, "calibration_method"), show_default=True, type=click.Choice(C.CALIBRATION_METHODS), help="ONNX static calibration method.")
def analyze(model, output_dir, trust_code, custom_objects, calibration_method, **run_kwargs):
    """Rank MODEL's layers by how much int8 quantization of each one hurts the output.

    For each quantizable op (TFLite) or node (ONNX): the PSNR against the float model when only
    it is int8, and when everything but it is int8; for TFLite also the quantization debugger's
    RMSE/scale per tensor (about 0.29 is ideal rounding).

    \b
    Example:
      gencompress analyze sample_models/dcgan_digits.h5 --format tflite
    """
    run_kwargs, calibration = _split(run_kwargs)
    config = C.AnalyzeConfig(calibration_method=calibration_method, **run_kwargs)
    _run("analyze", model, output_dir, trust_code, custom_objects, config, calibration)


@cli.command()
@model_options
@click.option("--no-int8-check", is_flag=True, help="Skip the trial int8 conversion that finds ops staying float.")
def inspect(model, output_dir, trust_code, custom_objects, no_int8_check):
    """Show MODEL's inputs, outputs, layers and parameters, and what will not map to int8.

    \b
    Example:
      gencompress inspect sample_models/sr_photos.h5
    """
    from gencompress.pipelines.inspect import float_ops_in_int8, render_inspection

    loaded = _load_model(model, trust_code, custom_objects)
    leftovers = None if no_int8_check else float_ops_in_int8(loaded)
    click.echo(render_inspection(loaded, leftovers))


P = C.PruneConfig
_then = _comma_list(C.MODES + ("qat",), C.MODES)


@cli.command("prune")
@model_options
@run_options
@click.option("--sparsity", default=default_of(P, "sparsity"), show_default=True, type=float, help="Fraction of weights to zero in each pruned layer (0 < s < 1).")
@click.option("--schedule", default=default_of(P, "schedule"), show_default=True, type=click.Choice(C.SCHEDULES), help="constant: target sparsity from --begin-step; polynomial: ramp up to it by --end-step.")
@click.option("--begin-step", default=default_of(P, "begin_step"), show_default=True, type=int, help="Fine-tuning step where pruning starts.")
@click.option("--end-step", type=int, help="polynomial: step where the target is reached [default: half of --steps].")
@click.option("--structure", type=click.Choice(C.STRUCTURES), help="Structured sparsity: 2 zeros in every 4 weights along the input channels (needs --sparsity 0.5).")
@click.option("--layers", callback=_layer_names, help="Layers to prune, comma-separated names [default: every Dense/Conv/ConvTranspose tfmot can prune].")
@click.option("--skip-first", is_flag=True, help="Leave the first prunable layer dense.")
@click.option("--skip-last", is_flag=True, help="Leave the last prunable layer (usually the output layer) dense.")
@training_options(C.PRUNE_TRAINING, "")
@click.option("--then", "then", callback=_then, help="Also quantize the pruned model (and the original, for comparison): comma-separated float16, dynamic, int8, int16x8, qat (pruning-preserving quantization-aware training), or 'all' (post-training ones).")
@click.option("--min-psnr", default=default_of(P, "min_psnr"), show_default=True, type=float, help="With --then int8: the quantize step's fidelity target for the pruned model, in dB against the original (0 turns the guard off).")
def prune_command(model, output_dir, trust_code, custom_objects, sparsity, schedule, begin_step, end_step, structure, layers, skip_first,
                  skip_last, steps, batch_size, time_budget, learning_rate, data, distribute, cpu_devices, then, min_psnr, **run_kwargs):
    """Prune MODEL's weights by magnitude, fine-tune it to match the original, export it.

    Fine-tuning needs no training data: the original model is the teacher, fed noise latents
    (or --data). Writes <stem>-pruned.h5/.keras, float32 (and --then) .tflite/.onnx of the
    original and the pruned model, and the report with measured sparsity and gzip sizes.

    \b
    Examples:
      gencompress prune sample_models/dcgan_digits.h5 --sparsity 0.5 --then int8
      gencompress prune model.keras --sparsity 0.8 --schedule polynomial --steps 2000
      gencompress prune model.h5 --sparsity 0.5 --structure 2:4 --then int8
    """
    strategy = _strategy(distribute, cpu_devices)  # before TensorFlow's runtime starts
    run_kwargs, calibration = _split(run_kwargs, data)
    config = P(
        sparsity=sparsity, schedule=schedule, begin_step=begin_step, end_step=end_step, structure=structure, layers=layers,
        skip_first=skip_first, skip_last=skip_last, training=_training(C.PRUNE_TRAINING, steps, batch_size, learning_rate, distribute, time_budget),
        then=then or (), min_psnr=min_psnr, **run_kwargs,
    )
    _run("prune", model, output_dir, trust_code, custom_objects, config, calibration, strategy=strategy)


D = C.DistillConfig


@cli.command("distill")
@model_options
@run_options
@click.option("--width", type=float, help="Student = the teacher's architecture with hidden units/filters times this (0 < w <= 1) [default: 0.5 unless --student].")
@click.option("--depth", default=default_of(D, "depth"), show_default=True, type=float, help="Fraction of droppable blocks (shape-preserving conv blocks, residual blocks) the student keeps.")
@click.option("--student", "student_path", type=click.Path(), help="Student architecture (.h5/.keras) with the teacher's inputs and outputs, instead of --width.")
@training_options(C.DISTILL_TRAINING, "")
@click.option("--loss", default=C.DISTILL_TRAINING.loss, show_default=True, type=click.Choice(C.LOSSES), help="Pixel loss against the teacher's outputs.")
@click.option("--eval-every", default=C.DISTILL_TRAINING.eval_every, show_default=True, type=int, help="Steps between held-out evaluations (and checkpoints); raised where evaluating would cost over a tenth of the training.")
@click.option("--patience", default=C.DISTILL_TRAINING.patience, show_default=True, type=int, help="Evaluations without gain before stopping.")
@click.option("--feature-loss", default=default_of(D, "feature_weight"), show_default=True, type=float, help="Weight of intermediate feature matching (learned 1x1 projections, training only); 0 turns it off.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Save training state here after every evaluation; a rerun with the same directory resumes.")
@click.option("--then", "then", callback=_then, help="Also quantize the student: comma-separated float16, dynamic, int8, int16x8, qat (quantization-aware training against the teacher), or 'all' (post-training ones).")
@click.option("--min-psnr", default=default_of(D, "min_psnr"), show_default=True, type=float, help="Target for the student's artifacts in dB against the teacher; with --then int8 the quantize step's fidelity guard aims for it (0: off).")
def distill_command(model, output_dir, trust_code, custom_objects, width, depth, student_path, steps, batch_size, time_budget, learning_rate, data, distribute,
                    cpu_devices, loss, eval_every, patience, feature_loss, checkpoint_dir, then, min_psnr, **run_kwargs):
    """Distil MODEL (the teacher) into a smaller student trained to reproduce its outputs.

    No training data needed: the student learns the teacher's outputs on noise latents (or
    --data). Writes <stem>-student.h5/.keras, float32 (and --then) .tflite/.onnx of teacher and
    student, samples.png, and the report with the two side by side.

    \b
    Examples:
      gencompress distill sample_models/dcgan_digits.h5 --width 0.5 --then int8
      gencompress distill teacher.keras --student student_arch.keras --data latents.npy
      gencompress distill teacher.h5 --width 0.5 --distribute mirrored --checkpoint-dir ckpt/
    """
    if student_path is not None and width is not None:
        raise OptionError("--student is the student's architecture: give it or --width, not both")
    strategy = _strategy(distribute, cpu_devices)  # before TensorFlow's runtime starts (multi-worker needs it)
    run_kwargs, calibration = _split(run_kwargs, data)
    training = _training(C.DISTILL_TRAINING, steps, batch_size, learning_rate, distribute, time_budget, loss=loss, eval_every=eval_every, patience=patience)
    config = D(
        width=None if student_path else (default_of(D, "width") if width is None else width), depth=depth, feature_weight=feature_loss,
        training=training, then=then or (), min_psnr=min_psnr, checkpoint_dir=checkpoint_dir, **run_kwargs,
    )
    student = _load_model(student_path, trust_code, custom_objects) if student_path else None
    _run("distill", model, output_dir, trust_code, custom_objects, config, calibration, strategy=strategy, student=student)


def _strategy(distribute, cpu_devices):
    if distribute in (None, "none"):
        if cpu_devices is not None:
            raise OptionError("--cpu-devices only applies with --distribute mirrored")
        return None
    from gencompress.compress.distribute import make_strategy

    return make_strategy(distribute, cpu_devices)


def _run(command: str, model_path, output_dir, trust_code, custom_objects, config, calibration, **extra) -> None:
    """Load, run the API call, save the result, show the table and summary, exit as the result says."""
    import gencompress.api as api
    from gencompress.report.render import sensitivity_table, terminal_summary, terminal_table

    model = _load_model(model_path, trust_code, custom_objects)
    result = getattr(api, command)(model, config, calibration, **extra)
    out = result.save(Path(output_dir) if output_dir else DEFAULT_OUTPUT / model.stem)
    report = result.report.model_dump(mode="json")
    if command == "analyze":
        click.echo(sensitivity_table(report))
    else:
        click.echo(terminal_table(report))
        summary = terminal_summary(report)
        if summary:
            click.echo("\n" + summary if command in ("prune", "distill") or report.get("qat") else summary)
    click.echo(f"\nreport: {out / 'report.json'}, {out / 'report.md'}")
    _exit(result, out)


def _exit(result, out: Path) -> None:
    """A missed target exits 3, an artifact a converter could not build 4 (after everything is written)."""
    from gencompress.pipelines.grading import fidelity_failures

    missed = fidelity_failures(result.report)
    if missed:
        raise FidelityError("; ".join(missed) + f". The artifacts are written and marked passed: false in {out / 'report.json'}")
    failures = result.report.failures
    if failures:
        failed = "; ".join(f"{f.format} {f.precision}{' ' + f.variant if f.variant else ''}: {f.error}" for f in failures)
        raise ConversionError(f"{len(failures)} artifact(s) failed: {failed}")


def _load_model(path, trust_code: bool, custom_objects):
    """``api.load_model`` as a phase of the run (a large model takes seconds to load and verify)."""
    from gencompress.api import load_model
    from gencompress.progress import Progress

    with Progress.current().phase(f"loading {Path(path).name}"):
        return load_model(path, trust_code=trust_code, custom_objects=custom_objects)


def main(argv=None):
    """Console entry point."""
    cli.main(args=argv, prog_name="gencompress")
