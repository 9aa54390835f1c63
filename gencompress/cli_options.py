"""The command line's shared options: each parses into the config dataclasses (defaults read
from them with ``default_of``), the gates, ``--save-recipe`` and ``--json``."""

from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import click

from gencompress import config as C
from gencompress.config import default_of
from gencompress.errors import OptionError

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
    @click.option("-o", "--output-dir", type=click.Path(), help=f"Where artifacts and the report go [default: {DEFAULT_OUTPUT}/<model stem>].")
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


def _gate_values(kind):
    """``VALUE`` (every format) or ``FORMAT:VALUE`` (one format), repeatable."""

    def convert(ctx, param, values):
        parsed = []
        for raw in values:
            fmt, _, number = raw.rpartition(":")
            if fmt and fmt not in C.FORMATS:
                raise click.BadParameter(f"unknown format '{fmt}' in '{raw}' (give VALUE or FORMAT:VALUE, FORMAT one of {', '.join(C.FORMATS)})")
            try:
                value = kind(number)
            except ValueError:
                raise click.BadParameter(f"'{raw}': expected {'a whole number' if kind is int else 'a number'}, or FORMAT:VALUE") from None
            parsed.append((fmt or None, value))
        return parsed

    return convert


_GATE_OPTIONS = [
    ("min_ssim", float, "Gate: SSIM against the float model at least this (image outputs)."),
    ("max_bytes", int, "Gate: artifact size at most this many bytes."),
    ("max_size_ratio", float, "Gate: artifact size at most this share of the float32 artifact's (0.3: 30 %)."),
    ("min_speedup", float, "Gate: p50 latency of the float32 artifact over this one's at least this (1.5: 1.5x faster); latency then takes 200 runs."),
    ("max_latency_ms", float, "Gate: p50 latency at most this many ms; latency then takes 200 runs."),
]


def gate_options(f):
    """The gates (``config.Gates``) a command's deliverable artifacts must pass (exit 3 otherwise);
    ``--min-psnr``, the fidelity target, is the PSNR gate. Each takes VALUE for every format or
    FORMAT:VALUE for one (repeatable)."""
    for name, kind, text in reversed(_GATE_OPTIONS):
        f = click.option("--" + name.replace("_", "-"), name, multiple=True, metavar="[FORMAT:]VALUE", callback=_gate_values(kind),
                         help=text + " FORMAT:VALUE for one format.")(f)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        every, per_format = {}, {fmt: {} for fmt in C.FORMATS}
        for name, _, _ in _GATE_OPTIONS:
            for fmt, value in kwargs.pop(name):
                (per_format[fmt] if fmt else every)[name] = value
        kwargs["gates"] = C.Gates(**every, **{fmt: C.FormatGates(**given) for fmt, given in per_format.items()})
        return f(*args, **kwargs)

    return wrapper


def record_options(f):
    """``--save-recipe`` (write this run down) and ``--json`` (a summary on stdout, nothing else)."""

    @click.option("--save-recipe", type=click.Path(dir_okay=False), help="Write this run as a recipe (TOML) to replay with `gencompress run`.")
    @click.option("--json", "json_output", is_flag=True, help="Print only a JSON summary on stdout (tables and progress go to stderr).")
    @functools.wraps(f)
    def wrapper(*args, save_recipe, json_output, **kwargs):
        ctx = click.get_current_context()
        ctx.meta["gencompress.save_recipe"] = save_recipe
        if not json_output:
            return f(*args, **kwargs)
        with _stdout_to_stderr() as stdout:
            try:
                return f(*args, **kwargs)
            finally:
                summary = ctx.meta.get("gencompress.summary")
                if summary is not None:
                    stdout(summary)

    return wrapper


@contextmanager
def _stdout_to_stderr():
    """Everything written to stdout (ours, TensorFlow's C++ side, Keras) goes to stderr while the
    block runs; yields a writer for the real stdout, used once the block is left."""
    import json

    out = sys.stdout
    pending = []
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # captured (tests): Python-level only
        fd = None
    saved = None
    if fd is not None:
        out.flush()
        saved = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
    try:
        with redirect_stdout(sys.stderr):
            yield pending.append
    finally:
        if saved is not None:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
        for doc in pending:
            out.write(json.dumps(doc, indent=2) + "\n")
            out.flush()
