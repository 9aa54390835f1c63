"""The ``gencompress`` command line: a thin front over ``gencompress.api``.

Options are parsed into the config dataclasses (whose defaults are the only defaults: the options
read them with ``default_of``), the API call runs, its result is saved and rendered. Nothing heavy
is imported at module level: ``gencompress --help`` must not import TensorFlow.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from gencompress import config as C
from gencompress.cli_options import (
    DEFAULT_OUTPUT,
    _comma_list,
    _layer_names,
    _split,
    _training,
    gate_options,
    model_options,
    record_options,
    run_options,
    training_options,
)
from gencompress.config import default_of
from gencompress.errors import (
    EXIT_BAD_INPUT,
    EXIT_OUTPUT,
    ConversionError,
    FidelityError,
    GencompressError,
    OptionError,
    OutputError,
    ResourceError,
    disk_full,
    out_of_memory,
)
from gencompress.interrupts import Interrupted, handling_signals, pending, stop


def _error(message: str) -> None:
    """One line on stderr: a message of several lines joined, control characters escaped (a
    name with a newline or an escape sequence cannot forge a line or recolour the terminal)."""
    from gencompress.printable import printable

    one = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    click.echo("gencompress: error: " + printable(one), err=True)


class _Group(click.Group):
    """Every user error as one line on stderr (``gencompress: error: ...``) and its exit code:
    ours (``GencompressError``), Click's (bad options, 2), a full disk or a refused write
    (``OutputError``, 5). Ctrl-C and SIGTERM stop the run, cleaned up, with 128 + the signal."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        code = 1
        with handling_signals():
            try:
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except click.exceptions.NoArgsIsHelpError as exc:
                exc.show()
                code = exc.exit_code
            except click.ClickException as exc:
                _error(exc.format_message())
                code = EXIT_BAD_INPUT if isinstance(exc, click.UsageError) else exc.exit_code
            except click.Abort:  # Ctrl-C before a command ran (Click turns it into Abort)
                stop()
                click.echo("gencompress: stopped", err=True)
                code = 128 + (pending() or 2)
            except BrokenPipeError:  # the reader of stdout went away (``| head``)
                sys.stdout = None
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        from gencompress.printable import printable

        def written():
            return _what_was_written(ctx.meta.get(_OUTPUT))

        try:
            return self._invoke_cleanly(ctx)
        except GencompressError as exc:
            if out_of_memory(exc) and not isinstance(exc, ResourceError):  # a converter out of memory: the machine's fault
                _error(f"out of memory: {exc}. {_MEMORY_ADVICE}{written()}")
                ctx.exit(EXIT_OUTPUT)
            _error(str(exc))
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # Interrupted: SIGINT, SIGTERM, SIGHUP
            stop()
            signum = exc.signum if isinstance(exc, Interrupted) else 2
            what = exc.what if isinstance(exc, Interrupted) else "Ctrl-C"
            click.echo(f"gencompress: stopped by {what}{printable(written())}", err=True)
            ctx.exit(128 + signum)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # a name the user gave, or one made from it
                _error(f"a file name is too long for the file system: {exc.filename or exc}{written()}")
                ctx.exit(EXIT_BAD_INPUT)
            if not (disk_full(exc) or isinstance(exc, PermissionError)):
                raise  # a bug: keep the traceback
            where = f": {exc.filename}" if exc.filename else ""
            _error(f"{'no space left on device' if disk_full(exc) else exc.strerror}{where}")
            ctx.exit(OutputError.exit_code)
        except Exception as exc:  # MemoryError (numpy's too), TensorFlow's ResourceExhaustedError
            if not out_of_memory(exc):
                raise  # a bug: keep the traceback
            _error(f"out of memory. {_MEMORY_ADVICE}{written()}")
            ctx.exit(EXIT_OUTPUT)

    def _invoke_cleanly(self, ctx):
        """The command with its own temporary folder; a run that wrote nothing leaves no folder."""
        from gencompress.artifacts import private_tempdir, remove_created
        from gencompress.memory import check_address_space
        from gencompress.progress import Progress

        try:
            # CI logs: no bars when either stream is not a terminal (`--json > summary.json`)
            check_address_space()  # before TensorFlow: under it, TensorFlow hangs or aborts
            with private_tempdir(), Progress(bars=None if sys.stdout.isatty() else False).activate():
                return super().invoke(ctx)
        finally:
            output = ctx.meta.get(_OUTPUT)
            if output and not output["saved"]:
                remove_created(output["created"])


_MEMORY_ADVICE = ("the machine, or a limit on the process (ulimit -v, a container's memory limit), cannot hold this run: "
                  "free memory, raise the limit, or give fewer --calibration-samples and --eval-samples")


def _what_was_written(output: dict | None) -> str:
    if output is None:
        return "; nothing was written"
    if output["saved"]:
        return f"; the new result is complete in {output['out']}"
    return f"; nothing of this run was written, {output['out']} is as it was"


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
@click.option("--browser-guard", is_flag=True, help="The search classes an int8 attempt slow when its browser runtime runs one of its int8 ops slower than float (onnxruntime-web: MatMul, Gemm), so the speed pick suits the browser.")
@click.option("--method", default=default_of(Q, "method"), show_default=True, type=click.Choice(C.METHODS), help="auto: post-training, and quantization-aware training (about 3 minutes, planned from the model's size) only when no post-training artifact meets --min-psnr at int8 speed, the faster passing one shipped; ptq: post-training only; qat: always also QAT, written as <stem>-qat.int8.* beside the post-training artifacts.")
@training_options(C.QAT_TRAINING, "--method qat or auto: ")
@gate_options
@record_options
def quantize(model, output_dir, trust_code, custom_objects, modes, int8_io, calibration_method, min_psnr, prefer, browser_guard, method,
             steps, batch_size, time_budget, learning_rate, data, distribute, cpu_devices, **run_kwargs):
    """Quantize MODEL post-training (or with QAT); writes float32 references and quantized .tflite/.onnx.

    \b
    Examples:
      gencompress quantize sample_models/dcgan_digits.h5 --mode int8,float16
      gencompress quantize model.h5 --method ptq          # post-training only
      gencompress quantize model.h5 --time-budget 10m     # a longer QAT rescue when needed
      gencompress quantize model.keras --method qat --data latents.npy
    """
    if method == "ptq":
        given = [n for n, v in (("--steps", steps), ("--batch-size", batch_size), ("--time-budget", time_budget), ("--learning-rate", learning_rate), ("--data", data), ("--distribute", distribute)) if v is not None]
        if given:
            raise OptionError(f"{', '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} to --method qat or auto")
    _output(model, output_dir)  # before any heavy work
    strategy = _strategy(distribute, cpu_devices)  # before TensorFlow's runtime starts
    run_kwargs, calibration = _split(run_kwargs, data)
    qat = _training(C.QAT_TRAINING, steps, batch_size, learning_rate, distribute, time_budget)
    config = Q(modes=modes, int8_io=int8_io, calibration_method=calibration_method, min_psnr=min_psnr, prefer=prefer, browser_guard=browser_guard,
               method=method, qat=qat, **run_kwargs)
    _run("quantize", model, output_dir, trust_code, custom_objects, config, calibration, strategy=strategy)


@cli.command()
@model_options
@run_options
@click.option("--min-psnr", default=default_of(C.ExportConfig, "min_psnr"), show_default=True, type=float, help="Gate: PSNR in dB the float artifacts must reach against the Keras model (0: not graded).")
@gate_options
@record_options
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
@record_options
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
    from gencompress.pipelines.inspect import (
        float_ops_in_int8,
        onnx_float_nodes_in_int8,
        render_inspection,
    )

    loaded = _load_model(model, trust_code, custom_objects)
    leftovers = None if no_int8_check else float_ops_in_int8(loaded)
    onnx_check = None if no_int8_check else onnx_float_nodes_in_int8(loaded)
    click.echo(render_inspection(loaded, leftovers, onnx_check))


P = C.PruneConfig
_then = _comma_list(C.MODES + ("qat",), C.MODES)


@cli.command("prune")
@model_options
@run_options
@click.option("--sparsity", default=default_of(P, "sparsity"), show_default=True, type=float, help="Fraction of weights to zero in each pruned layer (0 < s < 1).")
@click.option("--schedule", default=default_of(P, "schedule"), show_default=True, type=click.Choice(C.SCHEDULES), help="constant: target sparsity from --begin-step; polynomial: ramp up to it by --end-step.")
@click.option("--begin-step", default=default_of(P, "begin_step"), show_default=True, type=int, help="Fine-tuning step where pruning starts.")
@click.option("--end-step", type=int, help="polynomial: step where the target is reached [default: half of --steps].")
@click.option("--structure", type=click.Choice(C.STRUCTURES), help="2:4: 2 zeros in every 4 weights along the input channels (needs --sparsity 0.5); channels: remove whole filters/units (a smaller, faster model), --sparsity then being the fraction of channels removed.")
@click.option("--target-macs", type=float, help="--structure channels: MACs to keep, a fraction of the original's (0.5: half).")
@click.option("--target-params", type=float, help="--structure channels: parameters to keep, a fraction of the original's.")
@click.option("--importance", default=default_of(P, "importance"), show_default=True, type=click.Choice(C.IMPORTANCE), help="--structure channels: taylor (each channel's measured effect on the outputs) or l1 (its weights' norm).")
@click.option("--layers", callback=_layer_names, help="Layers to prune, comma-separated names [default: every Dense/Conv/ConvTranspose tfmot can prune].")
@click.option("--skip-first", is_flag=True, help="Leave the first prunable layer dense.")
@click.option("--skip-last", is_flag=True, help="Leave the last prunable layer (usually the output layer) dense.")
@training_options(C.PRUNE_TRAINING, "")
@click.option("--then", "then", callback=_then, help="Also quantize the pruned model (and the original, for comparison): comma-separated float16, dynamic, int8, int16x8, qat (pruning-preserving quantization-aware training), or 'all' (post-training ones).")
@click.option("--min-psnr", default=default_of(P, "min_psnr"), show_default=True, type=float, help="With --then int8: the quantize step's fidelity target for the pruned model, in dB against the original (0 turns the guard off). With --structure channels and no size option: the smallest model meeting it.")
@gate_options
@record_options
def prune_command(model, output_dir, trust_code, custom_objects, sparsity, schedule, begin_step, end_step, structure, target_macs, target_params,
                  importance, layers, skip_first, skip_last, steps, batch_size, time_budget, learning_rate, data, distribute, cpu_devices, then,
                  min_psnr, **run_kwargs):
    """Prune MODEL (weights by magnitude, or whole channels), fine-tune it to match the original, export it.

    Fine-tuning needs no training data: the original model is the teacher, fed noise latents
    (or --data). Writes <stem>-pruned.h5/.keras, float32 (and --then) .tflite/.onnx of the
    original and the pruned model, and the report. With --structure channels the pruned model
    has fewer filters (smaller and faster files); with --min-psnr and no size option it is the
    smallest that still meets that PSNR.

    \b
    Examples:
      gencompress prune sample_models/dcgan_digits.h5 --sparsity 0.5 --then int8
      gencompress prune model.keras --sparsity 0.8 --schedule polynomial --steps 2000
      gencompress prune model.h5 --sparsity 0.5 --structure 2:4 --then int8
      gencompress prune model.h5 --structure channels --target-macs 0.5 --then int8
      gencompress prune model.h5 --structure channels --min-psnr 30
    """
    _output(model, output_dir)  # before any heavy work
    strategy = _strategy(distribute, cpu_devices)  # before TensorFlow's runtime starts
    run_kwargs, calibration = _split(run_kwargs, data)
    given = click.get_current_context().get_parameter_source
    # --structure channels with --min-psnr and no size: the smallest model meeting it
    search = structure == "channels" and given("min_psnr") != ParameterSource.DEFAULT and given("sparsity") == ParameterSource.DEFAULT and \
        target_macs is None and target_params is None
    config = P(
        sparsity=sparsity, schedule=schedule, begin_step=begin_step, end_step=end_step, structure=structure, layers=layers,
        skip_first=skip_first, skip_last=skip_last,
        training=_training(C.PRUNE_TRAINING, steps, batch_size, learning_rate, distribute, time_budget),
        then=then or (), min_psnr=min_psnr, target_macs=target_macs, target_params=target_params, search=search, importance=importance, **run_kwargs,
    )
    _run("prune", model, output_dir, trust_code, custom_objects, config, calibration, strategy=strategy)


D = C.DistillConfig


@cli.command("distill")
@model_options
@run_options
@click.option("--width", type=float, help="Student = the teacher's architecture with hidden units/filters times this (0 < w <= 1) [default: 0.5 unless --student].")
@click.option("--init", "init", default=default_of(D, "init"), show_default=True, type=click.Choice(C.INITS), help="teacher: the --width student starts from the teacher's most important channels (channel pruning, re-fitted); random: from fresh seeded weights.")
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
@gate_options
@record_options
def distill_command(model, output_dir, trust_code, custom_objects, width, init, depth, student_path, steps, batch_size, time_budget, learning_rate, data, distribute,
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
      gencompress distill teacher.h5 --width 0.5 --init random
    """
    if student_path is not None and width is not None:
        raise OptionError("--student is the student's architecture: give it or --width, not both")
    _output(model, output_dir)  # before any heavy work
    strategy = _strategy(distribute, cpu_devices)  # before TensorFlow's runtime starts (multi-worker needs it)
    run_kwargs, calibration = _split(run_kwargs, data)
    training = _training(C.DISTILL_TRAINING, steps, batch_size, learning_rate, distribute, time_budget, loss=loss, eval_every=eval_every, patience=patience)
    config = D(
        width=None if student_path else (default_of(D, "width") if width is None else width), depth=depth, feature_weight=feature_loss,
        training=training, then=then or (), min_psnr=min_psnr, checkpoint_dir=checkpoint_dir, init=init, **run_kwargs,
    )
    student = _load_model(student_path, trust_code, custom_objects) if student_path else None
    _run("distill", model, output_dir, trust_code, custom_objects, config, calibration, strategy=strategy, student=student,
         student_path=student_path)


def _strategy(distribute, cpu_devices):
    if distribute in (None, "none"):
        if cpu_devices is not None:
            raise OptionError("--cpu-devices only applies with --distribute mirrored")
        return None
    from gencompress.compress.distribute import make_strategy

    return make_strategy(distribute, cpu_devices)


def _run(command: str, model_path, output_dir, trust_code, custom_objects, config, calibration, student_path=None, **extra) -> None:
    """Load, write the recipe if asked, run the API call, save the result, show the table and
    summary, exit as the result says."""
    import gencompress.api as api
    from gencompress import recipe as recipes
    from gencompress.results import RecipeRecord

    output = _output(model_path, output_dir)
    if getattr(config, "browser", False):  # what --browser lacks, in one line, before loading
        from gencompress.converters.browser_setup import check

        check()
    model = _load_model(model_path, trust_code, custom_objects)
    out = output["out"]
    recipe = recipes.from_command(command, config, calibration, model_path, out, trust_code, custom_objects, student_path,
                                  click.get_current_context().meta.get("gencompress.input_shape"))
    save_recipe = click.get_current_context().meta.get("gencompress.save_recipe")
    if save_recipe:
        recipes.write(recipe, save_recipe)
    result = getattr(api, command)(model, config, calibration, **extra)
    result.report.recipe = RecipeRecord(document=recipe.document())
    try:
        out = result.save(out)
        output["saved"] = True
    finally:
        result.close()
    _show(result, out)
    _finish([recipes.StepRun(0, command, result, out)])


def _output(model_path, output_dir) -> dict:
    """The command's output folder, created and probed (``artifacts.check_output_dir``) once,
    before any heavy work: the first call checks, later ones return what it found."""
    from gencompress.artifacts import check_output_dir
    from gencompress.limits import check_path_names, check_stem
    from gencompress.model import model_stem

    meta = click.get_current_context().meta
    if _OUTPUT not in meta:
        check_stem(model_stem(model_path), Path(model_path).parent)  # the artifacts' names, before any work
        out = Path(output_dir) if output_dir else DEFAULT_OUTPUT / model_stem(model_path)
        check_path_names(out, "output folder")
        meta[_OUTPUT] = {"out": out, "created": check_output_dir(out), "saved": False}
    return meta[_OUTPUT]


_OUTPUT = "gencompress.output"


def _show(result, out: Path) -> None:
    """The artifact table, the summary lines and any failed gates (stdout; stderr with --json)."""
    from gencompress.printable import printable
    from gencompress.report.render import (
        browser_table,
        gate_failures_table,
        sensitivity_table,
        terminal_summary,
        terminal_table,
    )

    report = result.report.model_dump(mode="json")
    if report["command"] == "analyze":
        click.echo(sensitivity_table(report))
    else:
        click.echo(terminal_table(report))
        if browser_table(report):
            click.echo("\n" + browser_table(report))
        summary = terminal_summary(report)
        if summary:
            click.echo("\n" + summary if report["command"] in ("prune", "distill") or report.get("qat") else summary)
        gates = gate_failures_table(report)
        if gates:
            click.echo("\n" + gates)
    click.echo("\nreport: " + printable(f"{out / 'report.json'}, {out / 'report.md'}, {out / 'report.html'}"))


def _finish(runs) -> None:
    """Exit as the runs say: a missed target or gate 3, an artifact a converter could not build 4
    (after everything is written); ``--json`` gets the summary either way."""
    from gencompress import recipe as recipes

    errors = [e for e in (_verdict(r.result, r.folder) for r in runs) if e is not None]
    error = next((e for e in errors if isinstance(e, FidelityError)), errors[0] if errors else None)
    click.get_current_context().meta["gencompress.summary"] = recipes.summary(runs, error.exit_code if error else 0)
    if error is not None:
        raise error


def _verdict(result, out: Path) -> GencompressError | None:
    from gencompress.pipelines.grading import fidelity_failures
    from gencompress.report.render import gate_line

    missed = fidelity_failures(result.report)
    gates = result.report.gates
    missed_names = {a.name for a in result.report.artifacts if a.passed is False}
    # a missed fidelity target is said above, with the search's story; the other gates here
    other = [gate_line(c.model_dump()) for c in (gates.failures if gates else []) if not (c.gate == "min_psnr" and c.artifact in missed_names)]
    if missed or other:
        parts = []
        if missed:
            parts.append("; ".join(missed) + f". The artifacts are written and marked passed: false in {out / 'report.json'}")
        if other:
            parts.append(f"{len(other)} gate(s) failed: " + "; ".join(other) + f" (see gates in {out / 'report.json'})")
        return FidelityError(". ".join(parts))
    failures = result.report.failures
    if failures:
        failed = "; ".join(f"{f.format} {f.precision}{' ' + f.variant if f.variant else ''}: {f.error}" for f in failures)
        return ConversionError(f"{len(failures)} artifact(s) failed: {failed}")
    return None


@cli.command("run")
@click.argument("recipe", type=click.Path())
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="Where the artifacts and reports go, instead of the recipe's output.")
@click.option("--trust-code", is_flag=True, help="Allow the Lambda layers and custom objects the recipe asks for (trust_code, custom_objects): loading then runs code from its files. A recipe or report never allows that by itself.")
@record_options
def run_command(recipe, output_dir, trust_code):
    """Run RECIPE (a .toml recipe, or a report.json to replay): its steps in order, then its gates.

    The recipe is checked whole before any work (a wrong key, type or missing file: one line,
    exit 2). A failed gate exits 3 after everything is written. With --save-recipe the recipe
    is written out as TOML (say, the one a report.json recorded).

    \b
    Examples:
      gencompress run examples/quantize-dcgan.toml
      gencompress run compress.toml -o other/ --json
      gencompress run gencompress-out/dcgan_digits/report.json --save-recipe replay.toml
      gencompress run lambda-model.toml --trust-code
    """
    from gencompress import recipe as recipes
    from gencompress.printable import printable

    loaded = recipes.load(recipe)
    save_recipe = click.get_current_context().meta.get("gencompress.save_recipe")
    if save_recipe:
        recipes.write(loaded, save_recipe)
    if trust_code and recipes.trust_line(loaded):
        click.echo(printable(recipes.trust_line(loaded)), err=True)
    runs = recipes.run(loaded, output_dir, trust_code=trust_code)
    for r in runs:
        if len(runs) > 1:
            click.echo("\n" + printable(f"== step {r.index}: {r.command} ({r.folder})"))
        _show(r.result, r.folder)
    _finish(runs)


@cli.command("setup-browser")
def setup_browser():
    """Install the browser runtimes --browser and `gencompress demo` use (npm ci of the pinned lockfile).

    onnxruntime-web and LiteRT.js (@litertjs/core), at the versions gencompress pins, go into
    ~/.cache/gencompress/browser-runtimes/ (or $GENCOMPRESS_BROWSER_RUNTIMES); Chromium comes
    from the system's packages. Needs npm (Node.js 18 or later).

    \b
    Example:
      gencompress setup-browser && gencompress quantize sample_models/dcgan_digits.h5 --browser
    """
    from gencompress.converters import browser_setup

    browser_setup.install(log=click.echo)
    lacking = [m for m in browser_setup.missing() if "runtimes" not in m]
    click.echo(f"browser runtimes: {browser_setup.runtimes_dir()}")
    if lacking:
        raise browser_setup.BrowserUnavailable("--browser still needs " + "; ".join(lacking))
    click.echo(f"Chromium: {browser_setup.chromium()}")


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("-o", "--output-dir", type=click.Path(), help="Where the demo goes [default: FOLDER/demo].")
@click.option("--artifact", help="The artifact to demo, by file name [default: the run's deliverable the browser runs fastest].")
def demo(folder, output_dir, artifact):
    """Write a static web page that draws new samples from an artifact of FOLDER, in the browser.

    FOLDER is a gencompress output folder (report.json beside the artifacts). The demo folder
    holds index.html, the artifact and its browser runtime's files (from the npm packages
    `gencompress setup-browser` installed: nothing from a CDN); it works opened from file://
    or from any static server. A button draws new samples from random latents (image-to-image
    models: from an image you choose).

    \b
    Examples:
      gencompress demo gencompress-out/dcgan_digits
      gencompress demo out/sr --artifact sr_photos.int8.onnx -o site/
    """
    from gencompress.api import demo as make_demo

    out = make_demo(folder, output_dir, artifact)
    click.echo(f"demo: {out / 'index.html'} (open it, or serve {out} with any static server)")


def _load_model(path, trust_code: bool, custom_objects):
    """``api.load_model`` as a phase of the run (a large model takes seconds to load and verify)."""
    from gencompress.api import load_model
    from gencompress.progress import Progress

    input_shape = click.get_current_context().meta.get("gencompress.input_shape")
    with Progress.current().phase(f"loading {Path(path).name}"):
        return load_model(path, trust_code=trust_code, custom_objects=custom_objects, input_shape=input_shape)


def main(argv=None):
    """Console entry point."""
    import signal

    from gencompress.interrupts import STOP_SIGNALS

    try:
        cli.main(args=argv, prog_name="gencompress")
    finally:
        # Everything is written by now, and Python's shutdown with TensorFlow loaded takes
        # seconds: a signal then ends the process at once, the system's way (128 + signal).
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
