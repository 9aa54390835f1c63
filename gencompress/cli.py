"""The ``gencompress`` command line: thin fronts over the library calls in ``workflow``.

Nothing heavy is imported here at module level: ``gencompress --help`` must not import TensorFlow.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from gencompress.errors import ConversionError, GencompressError

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
    @click.option("--custom-objects", type=click.Path(dir_okay=False), help="Python file defining custom layer classes (needs --trust-code).")
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
            click.option("--calibration-samples", default=200, show_default=True, type=int, help="Samples used to calibrate."),
            click.option("--eval-samples", default=64, show_default=True, type=int, help="Held-out samples used to measure fidelity."),
            click.option("--seed", default=0, show_default=True, type=int, help="Seed for noise, shuffling and splits."),
            click.option("--input-range", default="-1,1", show_default=True, callback=_input_range, help="Value range images are scaled to (image-folder calibration)."),
            click.option("--threads", default=1, show_default=True, type=int, help="Runtime threads for latency."),
            click.option("--latency-runs", default=50, show_default=True, type=int, help="Timed runs per artifact (after 10 warm-up runs)."),
        ]
    ):
        f = option(f)
    return f


class _Group(click.Group):
    """Turns user errors (``GencompressError``) into one line on stderr and their exit code."""

    def invoke(self, ctx):
        try:
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
def quantize(model, output_dir, trust_code, custom_objects, modes, int8_io, calibration_method, **run_kwargs):
    """Quantize MODEL post-training; writes float32 references and quantized .tflite/.onnx.

    \b
    Example:
      gencompress quantize sample_models/dcgan_digits.h5 --mode int8,float16
    """
    _run_command("quantize", model, output_dir, trust_code, custom_objects, precisions=modes, int8_io=int8_io, calibration_method=calibration_method, **run_kwargs)


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
    from gencompress.model import load_model
    from gencompress.report.render import terminal_table
    from gencompress.workflow import RunOptions, run

    options = RunOptions(**option_kwargs)
    model = load_model(model_path, trust_code=trust_code, custom_objects_file=custom_objects)
    out = Path(output_dir) if output_dir else Path("gencompress-out") / model.stem
    report = run(model, options, out, command)
    click.echo(terminal_table(report))
    click.echo(f"\nreport: {out / 'report.json'}, {out / 'report.md'}")
    if report["failures"]:
        failed = "; ".join(f"{f['format']} {f['precision']}: {f['error']}" for f in report["failures"])
        raise ConversionError(f"{len(report['failures'])} artifact(s) failed: {failed}")
    return report


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
    from gencompress.model import load_model

    loaded = load_model(model, trust_code=trust_code, custom_objects_file=custom_objects)
    leftovers = None if no_int8_check else float_ops_in_int8(loaded)
    click.echo(render_inspection(loaded, leftovers))


def main(argv=None):
    """Console entry point."""
    cli.main(args=argv, prog_name="gencompress")
