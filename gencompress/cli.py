"""The ``gencompress`` command line: thin fronts over the library calls in ``workflow``.

Nothing heavy is imported here at module level: ``gencompress --help`` must not import TensorFlow.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from gencompress.errors import ConversionError, FidelityError, GencompressError

ALL_MODES = ("float16", "dynamic", "int8", "int16x8")


def _comma_list(allowed, all_value=None):
    def convert(ctx, param, value):
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


def model_options(f):
    """Options every command that loads a model shares."""

    @click.argument("model", type=click.Path())
    @click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="Where artifacts and the report go [default: gencompress-out/<model stem>].")
    @click.option("--trust-code", is_flag=True, help="Allow Lambda layers and --custom-objects: loading then runs code from the model.")
    @click.option("--custom-objects", type=click.Path(dir_okay=False), help="Python file defining custom layer classes and Lambda helpers (needs --trust-code).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def run_options(f):
    """Options for commands that build and measure artifacts."""
    for option in reversed(
        [
            click.option("--format", "formats", default="tflite,onnx", show_default=True, callback=_comma_list(("tflite", "onnx")), help="Artifact formats, comma-separated."),
            click.option("--calibration", default="noise", show_default=True, help="Input source: 'noise', a .npy/.npz file (arrays keyed by input name) or a folder of PNG/JPEG images."),
            click.option("--calibration-samples", type=int, help="Samples used to calibrate [default: 200, fewer for large outputs: 32 for a 384×384 image; a quarter with --fast]."),
            click.option("--eval-samples", type=int, help="Held-out samples used to measure fidelity [default: 64, fewer for large outputs: 16 for a 384×384 image; a quarter with --fast]."),
            click.option("--seed", default=0, show_default=True, type=int, help="Seed for noise, shuffling and splits."),
            click.option("--input-range", default="-1,1", show_default=True, callback=_input_range, help="Value range images are scaled to (image-folder calibration)."),
            click.option("--threads", default=1, show_default=True, type=int, help="Runtime threads for latency."),
            click.option("--latency-runs", type=int, help="Timed runs per artifact, after up to 10 warm-up runs; at most about 5 s per artifact [default: 50; 10 with --fast]."),
            click.option("--fast", is_flag=True, help="A quick look: a quarter of the calibration and evaluation samples and 10 latency runs (said in the report)."),
        ]
    ):
        f = option(f)
    return f


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


@cli.command()
@model_options
@run_options
@click.option("--mode", "modes", default="int8", show_default=True, callback=_comma_list(ALL_MODES, ALL_MODES), help="Precisions, comma-separated, or 'all': int8 (full integer), int16x8, float16, dynamic.")
@click.option("--int8-io", is_flag=True, help="TFLite: integer inputs and outputs instead of float.")
@click.option("--calibration-method", default="minmax", show_default=True, type=click.Choice(["minmax", "percentile", "entropy"]), help="ONNX static calibration method.")
@click.option("--min-psnr", default=30.0, show_default=True, type=float, help="Fidelity target in dB: int8 artifacts that miss it fall back to better calibration, mixed precision, then wider types. 0 turns the guard off.")
@click.option("--method", default="ptq", show_default=True, type=click.Choice(["ptq", "qat"]), help="ptq: post-training only; qat: also quantization-aware training (fine-tuned against the float model), written as <stem>-qat.int8.* beside the post-training artifacts.")
@click.option("--steps", type=int, help="--method qat: most fine-tuning steps (stops early when held-out PSNR stalls) [default: 1000].")
@click.option("--batch-size", type=int, help="--method qat: fine-tuning batch size [default: 32].")
@click.option("--learning-rate", type=float, help="--method qat: Adam learning rate [default: 1e-5].")
@click.option("--data", type=click.Path(), help="--method qat: inputs to calibrate and fine-tune on, a .npy/.npz file or an image folder (as --calibration; default: noise).")
def quantize(model, output_dir, trust_code, custom_objects, modes, int8_io, calibration_method, min_psnr, method, steps, batch_size, learning_rate, data, **run_kwargs):
    """Quantize MODEL post-training (or with QAT); writes float32 references and quantized .tflite/.onnx.

    \b
    Examples:
      gencompress quantize sample_models/dcgan_digits.h5 --mode int8,float16
      gencompress quantize model.h5 --method qat --steps 1000
      gencompress quantize model.keras --method qat --data latents.npy
    """
    if method == "ptq":
        given = [n for n, v in (("--steps", steps), ("--batch-size", batch_size), ("--learning-rate", learning_rate), ("--data", data)) if v is not None]
        if given:
            from gencompress.errors import OptionError

            raise OptionError(f"{', '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} to --method qat")
        _run_command("quantize", model, output_dir, trust_code, custom_objects, precisions=modes, int8_io=int8_io, calibration_method=calibration_method, min_psnr=min_psnr, **run_kwargs)
        return
    from gencompress.compress.qat import qat_finetune_config, qat_summary, quantize_qat
    from gencompress.workflow import RunOptions

    finetune = qat_finetune_config(steps, batch_size, learning_rate, seed=run_kwargs["seed"])
    options = RunOptions(precisions=modes, int8_io=int8_io, calibration_method=calibration_method, min_psnr=min_psnr, **run_kwargs)
    loaded = _load_model(model, trust_code=trust_code, custom_objects_file=custom_objects)
    out = Path(output_dir) if output_dir else Path("gencompress-out") / loaded.stem
    report = quantize_qat(loaded, options, finetune, out, data=data, log=_log)
    _finish(report, out, qat_summary(report))


@cli.command()
@model_options
@run_options
def export(model, output_dir, trust_code, custom_objects, **run_kwargs):
    """Export MODEL as float32 .tflite and .onnx, measured against the Keras model.

    \b
    Example:
      gencompress export sample_models/cvae_decoder.keras -o out/
    """
    _run_command("export", model, output_dir, trust_code, custom_objects, precisions=("float32",), **run_kwargs)


def _run_command(command, model_path, output_dir, trust_code, custom_objects, **option_kwargs):
    from gencompress.workflow import RunOptions, run

    options = RunOptions(**option_kwargs)
    model = _load_model(model_path, trust_code=trust_code, custom_objects_file=custom_objects)
    out = Path(output_dir) if output_dir else Path("gencompress-out") / model.stem
    report = run(model, options, out, command)
    return _finish(report, out)


@cli.command()
@model_options
@run_options
@click.option("--calibration-method", default="minmax", show_default=True, type=click.Choice(["minmax", "percentile", "entropy"]), help="ONNX static calibration method.")
def analyze(model, output_dir, trust_code, custom_objects, calibration_method, **run_kwargs):
    """Rank MODEL's layers by how much int8 quantization of each one hurts the output.

    For each quantizable op (TFLite) or node (ONNX): the PSNR against the float model when only
    it is int8, and when everything but it is int8; for TFLite also the quantization debugger's
    RMSE/scale per tensor (about 0.29 is ideal rounding).

    \b
    Example:
      gencompress analyze sample_models/dcgan_digits.h5 --format tflite
    """
    from gencompress.report.render import sensitivity_table
    from gencompress.workflow import RunOptions, analyze as analyze_model

    options = RunOptions(calibration_method=calibration_method, **run_kwargs)
    loaded = _load_model(model, trust_code=trust_code, custom_objects_file=custom_objects)
    out = Path(output_dir) if output_dir else Path("gencompress-out") / loaded.stem
    report = analyze_model(loaded, options, out)
    click.echo(sensitivity_table(report))
    click.echo(f"\nreport: {out / 'report.json'}, {out / 'report.md'}")


@cli.command()
@model_options
@click.option("--no-int8-check", is_flag=True, help="Skip the trial int8 conversion that finds ops staying float.")
def inspect(model, output_dir, trust_code, custom_objects, no_int8_check):
    """Show MODEL's inputs, outputs, layers and parameters, and what will not map to int8.

    \b
    Example:
      gencompress inspect sample_models/sr_photos.h5
    """
    from gencompress.inspection import float_ops_in_int8, render_inspection

    loaded = _load_model(model, trust_code=trust_code, custom_objects_file=custom_objects)
    leftovers = None if no_int8_check else float_ops_in_int8(loaded)
    click.echo(render_inspection(loaded, leftovers))


def _layer_names(ctx, param, value):
    if value is None:
        return None
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names:
        raise click.BadParameter("give layer names, comma-separated")
    return names


@cli.command("prune")
@model_options
@run_options
@click.option("--sparsity", default=0.5, show_default=True, type=float, help="Fraction of weights to zero in each pruned layer (0 < s < 1).")
@click.option("--schedule", default="polynomial", show_default=True, type=click.Choice(["constant", "polynomial"]), help="constant: target sparsity from --begin-step; polynomial: ramp up to it by --end-step.")
@click.option("--begin-step", default=0, show_default=True, type=int, help="Fine-tuning step where pruning starts.")
@click.option("--end-step", type=int, help="polynomial: step where the target is reached [default: half of --steps].")
@click.option("--structure", type=click.Choice(["2:4"]), help="Structured sparsity: 2 zeros in every 4 weights along the input channels (needs --sparsity 0.5).")
@click.option("--layers", callback=_layer_names, help="Layers to prune, comma-separated names [default: every Dense/Conv/ConvTranspose tfmot can prune].")
@click.option("--skip-first", is_flag=True, help="Leave the first prunable layer dense.")
@click.option("--skip-last", is_flag=True, help="Leave the last prunable layer (usually the output layer) dense.")
@click.option("--steps", default=1000, show_default=True, type=int, help="Most fine-tuning steps (stops early when held-out PSNR stalls after the target is reached).")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Fine-tuning batch size.")
@click.option("--learning-rate", default=1e-3, show_default=True, type=float, help="Adam learning rate for fine-tuning.")
@click.option("--data", type=click.Path(), help="Fine-tuning inputs: a .npy/.npz file or an image folder (same as --calibration; default: noise).")
@click.option("--then", "then", callback=lambda ctx, p, v: None if v is None else _comma_list(ALL_MODES + ("qat",), ALL_MODES)(ctx, p, v), help="Also quantize the pruned model (and the original, for comparison): comma-separated float16, dynamic, int8, int16x8, qat (pruning-preserving quantization-aware training), or 'all' (post-training ones).")
@click.option("--min-psnr", default=30.0, show_default=True, type=float, help="With --then int8: the quantize step's fidelity target for the pruned model, in dB against the original (0 turns the guard off).")
def prune_command(model, output_dir, trust_code, custom_objects, sparsity, schedule, begin_step, end_step, structure, layers, skip_first, skip_last, steps, batch_size, learning_rate, data, then, min_psnr, **run_kwargs):
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
    from gencompress.compress.finetune import FinetuneConfig
    from gencompress.compress.pruning import PruneConfig, prune
    from gencompress.errors import OptionError
    from gencompress.workflow import RunOptions

    if data is not None:
        if run_kwargs["calibration"] not in ("noise", data):
            raise OptionError("--data and --calibration name different inputs: give one of them")
        run_kwargs["calibration"] = data
    prune_config = PruneConfig(sparsity=sparsity, schedule=schedule, begin_step=begin_step, end_step=end_step, structure=structure, layers=layers, skip_first=skip_first, skip_last=skip_last)
    finetune_config = FinetuneConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=run_kwargs["seed"])
    options = RunOptions(precisions=tuple(p for p in then or () if p != "qat") or ("float32",), min_psnr=min_psnr, **run_kwargs)
    loaded = _load_model(model, trust_code=trust_code, custom_objects_file=custom_objects)
    out = Path(output_dir) if output_dir else Path("gencompress-out") / loaded.stem
    report = prune(loaded, prune_config, finetune_config, options, out, then=tuple(then or ()), log=_log)
    from gencompress.compress.pruning import pruning_summary

    return _finish(report, out, pruning_summary(report))


@cli.command("distill")
@model_options
@run_options
@click.option("--width", type=float, help="Student = the teacher's architecture with hidden units/filters times this (0 < w <= 1) [default: 0.5 unless --student].")
@click.option("--depth", default=1.0, show_default=True, type=float, help="Fraction of droppable blocks (shape-preserving conv blocks, residual blocks) the student keeps.")
@click.option("--student", "student_path", type=click.Path(), help="Student architecture (.h5/.keras) with the teacher's inputs and outputs, instead of --width.")
@click.option("--steps", default=3000, show_default=True, type=int, help="Most training steps (stops early when held-out PSNR stalls).")
@click.option("--batch-size", default=32, show_default=True, type=int, help="Training batch size (global: split across replicas when distributed).")
@click.option("--learning-rate", default=2e-3, show_default=True, type=float, help="Adam learning rate (halved on plateaus).")
@click.option("--loss", default="l2", show_default=True, type=click.Choice(["l2", "l1"]), help="Pixel loss against the teacher's outputs.")
@click.option("--eval-every", default=100, show_default=True, type=int, help="Steps between held-out evaluations (and checkpoints).")
@click.option("--patience", default=5, show_default=True, type=int, help="Evaluations without gain before stopping.")
@click.option("--feature-loss", default=0.0, show_default=True, type=float, help="Weight of intermediate feature matching (learned 1x1 projections, training only); 0 turns it off.")
@click.option("--data", type=click.Path(), help="Training inputs: a .npy/.npz file or an image folder (same as --calibration; default: noise).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Save training state here after every evaluation; a rerun with the same directory resumes.")
@click.option("--distribute", default="none", show_default=True, type=click.Choice(["none", "mirrored", "multi-worker"]), help="mirrored: all local GPUs (or logical CPUs); multi-worker: the cluster in TF_CONFIG.")
@click.option("--cpu-devices", type=int, hidden=True, help="Split the CPU into N logical devices (to try --distribute mirrored without GPUs).")
@click.option("--then", "then", callback=lambda ctx, p, v: None if v is None else _comma_list(ALL_MODES + ("qat",), ALL_MODES)(ctx, p, v), help="Also quantize the student: comma-separated float16, dynamic, int8, int16x8, qat (quantization-aware training against the teacher), or 'all' (post-training ones).")
@click.option("--min-psnr", default=25.0, show_default=True, type=float, help="Target for the student's artifacts in dB against the teacher; with --then int8 the quantize step's fidelity guard aims for it (0: off).")
def distill_command(model, output_dir, trust_code, custom_objects, width, depth, student_path, steps, batch_size, learning_rate, loss, eval_every, patience, feature_loss, data, checkpoint_dir, distribute, cpu_devices, then, min_psnr, **run_kwargs):
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
    from gencompress.compress.distillation import DistillConfig, distill, distillation_summary, make_strategy
    from gencompress.compress.finetune import FinetuneConfig
    from gencompress.errors import OptionError
    from gencompress.workflow import RunOptions

    if data is not None:
        if run_kwargs["calibration"] not in ("noise", data):
            raise OptionError("--data and --calibration name different inputs: give one of them")
        run_kwargs["calibration"] = data
    if student_path is not None and width is not None:
        raise OptionError("--student is the student's architecture: give it or --width, not both")
    config = DistillConfig(width=None if student_path else (0.5 if width is None else width), depth=depth, feature_weight=feature_loss)
    finetune = FinetuneConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate, loss=loss, eval_every=eval_every, patience=patience, seed=run_kwargs["seed"])
    options = RunOptions(precisions=tuple(p for p in then or () if p != "qat") or ("float32",), min_psnr=min_psnr, **run_kwargs)
    strategy = make_strategy(distribute, cpu_devices)  # before TensorFlow's runtime starts (multi-worker needs it)
    loaded = _load_model(model, trust_code=trust_code, custom_objects_file=custom_objects)
    student = _load_model(student_path, trust_code=trust_code, custom_objects_file=custom_objects) if student_path else None
    out = Path(output_dir) if output_dir else Path("gencompress-out") / loaded.stem
    report = distill(loaded, options, config, finetune, out, then=tuple(then or ()), student=student, strategy=strategy, checkpoint_dir=checkpoint_dir, log=_log)
    out = Path(report["distillation"]["student_model"]).parent  # a non-chief worker writes into worker-<i>/
    return _finish(report, out, distillation_summary(report))


def _finish(report: dict, out: Path, summary: str | None = None) -> dict:
    """Show the table, notes and report paths; then turn a missed target (3) or an artifact a
    converter could not build (4) into the command's exit."""
    from gencompress.report.render import terminal_table
    from gencompress.workflow import fidelity_failures

    click.echo(terminal_table(report))
    for note in report.get("notes", []):
        click.echo(f"note: {note}")
    if summary:
        click.echo("\n" + summary)
    else:
        for a in report["artifacts"]:
            for note in a.get("notes", []):
                click.echo(f"note: {Path(a['path']).name}: {note}")
    click.echo(f"\nreport: {out / 'report.json'}, {out / 'report.md'}")
    missed = fidelity_failures(report)
    if missed:
        raise FidelityError("; ".join(missed) + f". The artifacts are written and marked passed: false in {out / 'report.json'}")
    if report.get("failures"):
        failed = "; ".join(
            f"{f['format']} {f['precision']}{' ' + f['variant'] if f.get('variant') else ''}: {f['error']}"
            for f in report["failures"]
        )
        raise ConversionError(f"{len(report['failures'])} artifact(s) failed: {failed}")
    return report


def _load_model(path, trust_code: bool, custom_objects_file):
    """``model.load_model`` as a phase of the run (a large model takes seconds to load and verify)."""
    from gencompress.model import load_model
    from gencompress.progress import Progress

    with Progress.current().phase(f"loading {Path(path).name}"):
        return load_model(path, trust_code=trust_code, custom_objects_file=custom_objects_file)


def _log(message: str) -> None:
    """A line on stderr, above any progress bar."""
    from gencompress.progress import Progress

    Progress.current().log(message)


def main(argv=None):
    """Console entry point."""
    cli.main(args=argv, prog_name="gencompress")
