"""Recipes: a run written down as a TOML file, checked before any work, replayed step by step.

    version = 1
    output = "out/dcgan"                      # relative paths: against the recipe's folder

    [model]
    path = "../sample_models/dcgan_digits.h5"

    [calibration]
    source = "noise"

    [[steps]]
    [steps.quantize]                          # the fields of config.QuantizeConfig
    modes = ["int8"]
    min_psnr = 35.0

    [gates]                                   # config.Gates; judged on the last step's artifacts
    max_size_ratio = 0.35
    [gates.onnx]
    min_psnr = 40.0

A step's keys are the fields of its config dataclass (``config.py``), so every default lives
there once; nested tables are the nested configs (``training``, ``qat``). Steps chain: the model
a step makes (the pruned model, the student) is the next step's input. A recipe of one step
writes into its output folder exactly what the command writes; with several steps each writes
into ``<output>/<i>-<command>/``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from gencompress.calibration import Calibration
from gencompress.config import AnalyzeConfig, DistillConfig, ExportConfig, Gates, PruneConfig, QuantizeConfig
from gencompress.errors import GencompressError, InputError, OptionError, UnsupportedModelError
from gencompress.limits import check_path_names, read_document, refuse_special
from gencompress.printable import printable

RECIPE_VERSION = 1
STEPS = {"prune": PruneConfig, "distill": DistillConfig, "quantize": QuantizeConfig, "export": ExportConfig, "analyze": AnalyzeConfig}
_NOT_IN_STEPS = {"gates"}  # a run's gates are the recipe's [gates] table
_CALIBRATION_KEYS = {"source": str, "samples": int, "input_range": "range"}
_MODEL_KEYS = {"path": "file", "trust_code": bool, "custom_objects": "file", "input_shape": "shape"}


class RecipeError(OptionError):
    """A recipe that cannot run: the message names the key path."""


@dataclass(frozen=True)
class Step:
    command: str
    config: object
    student: str | None = None  # distill: a student architecture file


@dataclass(frozen=True)
class Recipe:
    """A checked recipe: absolute paths, configs made (and so validated)."""

    model: str
    steps: tuple[Step, ...]
    output: str
    calibration: Calibration = Calibration()
    trust_code: bool = False
    custom_objects: str | None = None
    source: str | None = None
    input_shape: tuple | dict | None = None  # fixes a fully convolutional model's unknown input dimensions

    @property
    def gates(self) -> Gates:
        return self.steps[-1].config.gates

    def document(self, base: Path | None = None) -> dict:
        """The recipe as TOML-ready data; paths relative to ``base`` (``None``: absolute)."""
        return _document(self, base)


# --------------------------------------------------------------------------- reading


def load(path: str | os.PathLike) -> Recipe:
    """Read and check a recipe: a ``.toml`` file, or a ``report.json`` (the recipe it recorded)."""
    path = Path(path)
    refuse_special(path, "recipe", RecipeError)
    if not path.is_file():
        raise InputError(f"recipe not found: {printable(path)}")
    text = read_document(path, "recipe", RecipeError).decode("utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise RecipeError(f"recipe {path}: not valid JSON: {exc}") from None
        if isinstance(doc, dict) and "schema_version" in doc:  # a report.json
            if not isinstance(doc.get("recipe"), dict):
                raise RecipeError(f"recipe {path}: this report records no recipe")
            doc = doc["recipe"].get("document")
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            doc = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError) as exc:
            raise RecipeError(f"recipe {path}: not valid TOML: {exc}") from None
    return parse(doc, path.resolve().parent, source=str(path))


def parse(doc, base: Path, source: str | None = None) -> Recipe:
    """Check ``doc`` (a recipe's data) and make its configs; relative paths resolve against ``base``."""
    _table(doc, "recipe")
    _known(doc, {"version", "output", "model", "calibration", "steps", "gates"}, "")
    version = doc.get("version", RECIPE_VERSION)
    if version != RECIPE_VERSION:
        raise RecipeError(f"recipe version: this gencompress reads version {RECIPE_VERSION}, got {_got(version)}")
    if "model" not in doc:
        raise RecipeError("recipe model: missing (a [model] table with path = \"...\")")
    model = _model(doc["model"], base)
    calibration = _calibration(doc.get("calibration", {}), base)
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise RecipeError("recipe steps: expected a list of steps ([[steps]] tables), got " + ("nothing" if raw_steps is None else _got(raw_steps)))
    steps = [_step(s, i, base) for i, s in enumerate(raw_steps)]
    last = next(iter(raw_steps[-1].values()))
    steps[-1] = _with_gates(steps[-1], doc.get("gates"), len(steps) - 1, "min_psnr" in last)
    output = doc.get("output")
    if output is not None and not isinstance(output, str):
        raise RecipeError(f"recipe output: expected a folder path (a string), got {_got(output)}")
    out = (base / output if output else base / "gencompress-out" / Path(model["path"]).stem).resolve()
    return Recipe(
        model=model["path"], trust_code=model.get("trust_code", False), custom_objects=model.get("custom_objects"),
        calibration=calibration, steps=tuple(steps), output=str(out), source=source, input_shape=model.get("input_shape"),
    )


def _model(doc, base: Path) -> dict:
    _table(doc, "model")
    _known(doc, set(_MODEL_KEYS), "model")
    if "path" not in doc:
        raise RecipeError("recipe model.path: missing (the model file)")
    model = {"path": _file(doc["path"], "model.path", base, folder_ok=True)}
    if "trust_code" in doc:
        model["trust_code"] = _value(doc["trust_code"], bool, "model.trust_code")
    if "custom_objects" in doc:
        model["custom_objects"] = _file(doc["custom_objects"], "model.custom_objects", base)
        if not model.get("trust_code"):
            raise RecipeError("recipe model.custom_objects: needs trust_code = true (the file's code runs at load time)")
    if "input_shape" in doc:
        model["input_shape"] = _shape(doc["input_shape"])
    return model


def _shape(value):
    """``model.input_shape``: a list of dimensions, or a table of them by input name."""
    def dims(v, where):
        if not isinstance(v, list) or not v or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v):
            raise RecipeError(f"recipe {where}: expected a list of dimensions >= 1 such as [256, 256, 3], got {_got(v)}")
        return tuple(v)

    if isinstance(value, dict):
        return {name: dims(v, f"model.input_shape.{name}") for name, v in value.items()}
    return dims(value, "model.input_shape")


def _calibration(doc, base: Path) -> Calibration:
    _table(doc, "calibration")
    _known(doc, set(_CALIBRATION_KEYS), "calibration")
    source = _value(doc.get("source", "noise"), str, "calibration.source")
    if source != "noise":
        source = _file(source, "calibration.source", base, folder_ok=True)
    samples = _value(doc["samples"], int, "calibration.samples") if "samples" in doc else None
    input_range = doc.get("input_range", [-1.0, 1.0])
    if not (isinstance(input_range, list) and len(input_range) == 2 and all(_is_number(v) for v in input_range)):
        raise RecipeError(f"recipe calibration.input_range: expected [low, high] (two numbers), got {_got(input_range)}")
    try:
        return Calibration.from_spec(source, samples=samples, input_range=tuple(float(v) for v in input_range))
    except GencompressError as exc:
        raise RecipeError(f"recipe calibration: {exc}") from None


def _step(doc, i: int, base: Path) -> Step:
    where = f"steps[{i}]"
    _table(doc, where)
    if len(doc) != 1 or next(iter(doc)) not in STEPS:
        names = ", ".join(doc) or "nothing"
        raise RecipeError(f"recipe {where}: expected one table named after its command ({', '.join(STEPS)}), got {names}")
    command, fields = next(iter(doc.items()))
    where = f"{where}.{command}"
    _table(fields, where)
    fields = dict(fields)
    student = None
    if command == "distill" and "student" in fields:
        student = _file(fields.pop("student"), f"{where}.student", base)
        fields.setdefault("width", None)  # the student's architecture is given: nothing to derive
    if command == "distill" and fields.get("checkpoint_dir") is not None:
        fields["checkpoint_dir"] = str(base / _value(fields["checkpoint_dir"], str, f"{where}.checkpoint_dir"))
    config = _dataclass(STEPS[command], fields, where, skip=_NOT_IN_STEPS)
    return Step(command, config, student)


def _with_gates(step: Step, doc, i: int, step_sets_psnr: bool) -> Step:
    """The recipe's gates on the last step; ``gates.min_psnr`` is that step's fidelity target."""
    if doc is None:
        return step
    _table(doc, "gates")
    doc = dict(doc)
    if step.command == "analyze":
        raise RecipeError(f"recipe gates: the last step (steps[{i}].analyze) writes no artifacts to gate")
    if "min_psnr" in doc:
        psnr = _value(doc.pop("min_psnr"), float, "gates.min_psnr")
        given = step.config.min_psnr
        if step_sets_psnr and given != psnr:
            raise RecipeError(f"recipe gates.min_psnr: steps[{i}].{step.command}.min_psnr says {given:g}: give it once")
        step = dataclasses.replace(step, config=_make(type(step.config), {**_fields(step.config), "min_psnr": psnr}, "gates"))
    gates = _dataclass(Gates, doc, "gates", skip={"min_psnr"})
    return dataclasses.replace(step, config=_make(type(step.config), {**_fields(step.config), "gates": gates}, "gates"))


# --------------------------------------------------------------------------- typed values


def _dataclass(cls, doc: dict, where: str, skip=frozenset()):
    """``cls`` made from ``doc``: every key a field, every value of the field's type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    _known(doc, set(names), where)
    values = {name: _typed(doc[name], hints[name], f"{where}.{name}") for name in names if name in doc}
    return _make(cls, values, where)


def _make(cls, values: dict, where: str):
    try:
        return cls(**values)
    except GencompressError as exc:
        raise RecipeError(f"recipe {where}: {exc}") from None


def _typed(value, hint, where: str):
    if dataclasses.is_dataclass(hint):
        _table(value, where)
        return _dataclass(hint, value, where)
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _typed(value, hint, where)
    if typing.get_origin(hint) is tuple:
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise RecipeError(f"recipe {where}: expected a list of strings, got {_got(value)}")
        return tuple(value)
    return _value(value, hint, where)


def _value(value, kind, where: str):
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and _is_number(value):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    expected = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[kind]
    raise RecipeError(f"recipe {where}: expected {expected}, got {_got(value)}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _file(value, where: str, base: Path, folder_ok: bool = False) -> str:
    value = _value(value, str, where)
    path = (base / value).resolve() if not Path(value).is_absolute() else Path(value)
    refuse_special(path, f"recipe {where}:", RecipeError)
    if not (path.is_file() or (folder_ok and path.is_dir())):
        raise RecipeError(f"recipe {where}: file not found: {value}" + (f" (looked in {base})" if not Path(value).is_absolute() else ""))
    return str(path)


def _table(value, where: str) -> None:
    if not isinstance(value, dict):
        raise RecipeError(f"recipe {where}: expected a table, got {_got(value)}")


def _known(doc: dict, known: set, where: str) -> None:
    for key in doc:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(known))}"
            raise RecipeError(f"recipe {where + '.' if where else ''}{key}: unknown key ({hint})")


def _got(value) -> str:
    if isinstance(value, dict):
        return "a table"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _fields(config) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _default(cls, name: str):
    from gencompress.config import default_of

    return default_of(cls, name)


# --------------------------------------------------------------------------- writing


def _document(recipe: Recipe, base: Path | None) -> dict:
    def where(path: str) -> str:
        """Relative to the recipe when they share a folder below the root (a repository),
        else absolute (a relative path through / says nothing more)."""
        if base is None:
            return str(path)
        try:
            if os.path.commonpath([os.path.abspath(path), os.path.abspath(base)]) == os.path.abspath(os.sep):
                return str(path)
            return Path(os.path.relpath(path, base)).as_posix()
        except ValueError:  # another drive
            return str(path)

    cal = recipe.calibration
    calibration = {"source": cal.source if cal.kind == "noise" else where(cal.source)}
    if cal.samples is not None:
        calibration["samples"] = cal.samples
    calibration["input_range"] = [float(v) for v in cal.input_range]
    model = {"path": where(recipe.model)}
    if recipe.trust_code:
        model["trust_code"] = True
    if recipe.custom_objects:
        model["custom_objects"] = where(recipe.custom_objects)
    if recipe.input_shape is not None:
        shape = recipe.input_shape
        model["input_shape"] = {k: list(v) for k, v in shape.items()} if isinstance(shape, dict) else list(shape)
    doc = {"version": RECIPE_VERSION, "output": where(recipe.output), "model": model, "calibration": calibration}
    doc["steps"] = [{s.command: _step_table(s, where)} for s in recipe.steps]
    gates = _plain(recipe.gates)
    if gates:
        doc["gates"] = gates
    return doc


def _step_table(step: Step, where) -> dict:
    table = {}
    for name, value in _fields(step.config).items():
        if name in _NOT_IN_STEPS or value is None:
            continue
        if name == "qat" and getattr(step.config, "method", None) != "qat" and value == _default(type(step.config), "qat"):
            continue  # post-training quantization: the QAT settings are unused
        if name == "checkpoint_dir":
            value = where(value)
        table[name] = _plain(value) if dataclasses.is_dataclass(value) else (list(value) if isinstance(value, tuple) else value)
    if step.student:
        table["student"] = where(step.student)
    return table


def _plain(value):
    """A config as TOML data: nested tables, no unset (``None``) or empty entries."""
    if dataclasses.is_dataclass(value):
        out = {}
        for name, v in _fields(value).items():
            v = _plain(v)
            if v is not None and v != {}:
                out[name] = v
        return out
    return list(value) if isinstance(value, tuple) else value


def write(recipe: Recipe, path: str | os.PathLike) -> Path:
    """Write ``recipe`` as TOML at ``path``, its paths relative to the file's folder."""
    import tomli_w

    from gencompress.artifacts import write_bytes_atomic

    path = Path(path)
    doc = recipe.document(path.resolve().parent)
    text = "# gencompress recipe: replay with `gencompress run " + path.name + "`\n" + tomli_w.dumps(doc)
    return write_bytes_atomic(path, text.encode())


def from_command(command: str, config, calibration: Calibration, model: str, output: str, trust_code: bool = False,
                 custom_objects: str | None = None, student: str | None = None, input_shape=None) -> Recipe:
    """The recipe of one command's run (``--save-recipe``, and what its report records)."""
    def absolute(p):
        return None if p is None else str(Path(p).resolve())

    if calibration.kind in ("file", "images"):
        calibration = dataclasses.replace(calibration, path=absolute(calibration.path))
    return Recipe(
        model=absolute(model), steps=(Step(command, config, absolute(student)),), output=absolute(output),
        calibration=calibration, trust_code=trust_code, custom_objects=absolute(custom_objects), input_shape=input_shape,
    )


# --------------------------------------------------------------------------- running


@dataclass
class StepRun:
    """One step as run: its result (saved) and the folder it went to."""

    index: int
    command: str
    result: object
    folder: Path


def code_files(recipe: Recipe) -> list[str]:
    """The files whose code a run of ``recipe`` would execute, as it asks (``trust_code``): the
    model, any student architecture, the ``custom_objects`` file. Empty when it asks for none."""
    if not recipe.trust_code:
        return []
    files = [recipe.model] + [s.student for s in recipe.steps if s.student] + ([recipe.custom_objects] if recipe.custom_objects else [])
    return list(dict.fromkeys(files))


def trust_line(recipe: Recipe) -> str:
    """One line naming what runs code, for a run given the permission (``--trust-code``)."""
    names = ", ".join(Path(f).name for f in code_files(recipe))
    return f"note: --trust-code: loading runs code from {names}, as the recipe asks" if names else ""


def run(recipe: Recipe, output: str | os.PathLike | None = None, progress=None, trust_code: bool = False) -> list[StepRun]:
    """Run every step in order, each saved as it ends (one step: into the output folder; several:
    into ``<output>/<i>-<command>/``); a step's model (pruned, student) feeds the next.

    A recipe says what to do, never what may run: its ``trust_code`` and ``custom_objects`` take
    effect only with ``trust_code=True`` here (``--trust-code`` on ``gencompress run``); without
    it a recipe that asks for them is refused before anything loads."""
    import gencompress.api as api
    from gencompress.progress import Progress
    from gencompress.results import RecipeRecord

    progress = progress or Progress.current()
    asks = code_files(recipe)
    if asks and not trust_code:
        names = ", ".join(printable(Path(f).name) for f in asks)
        raise UnsupportedModelError(
            f"recipe {printable(recipe.source or '')}: loading {names} runs code from {'them' if len(asks) > 1 else 'it'} "
            "(trust_code = true); a recipe or report cannot allow that by itself: pass --trust-code to `gencompress run` if you trust it"
        )
    if trust_code and not recipe.trust_code:  # allowed on the command line: what ran is what the report records
        recipe = dataclasses.replace(recipe, trust_code=True)
    if output is not None:  # what ran is what the report records
        recipe = dataclasses.replace(recipe, output=str(Path(output).resolve()))
    out = Path(output) if output is not None else Path(recipe.output)
    check_path_names(out, "output folder")  # before any work, as the commands do
    document = recipe.document()
    with progress.phase(f"loading {Path(recipe.model).name}"):
        model = api.load_model(recipe.model, trust_code=recipe.trust_code, custom_objects=recipe.custom_objects,
                               input_shape=recipe.input_shape)
    runs = []
    for i, step in enumerate(recipe.steps):
        progress.log(f"step {i + 1}/{len(recipe.steps)}: {step.command} {model.stem}")
        extra = {"progress": progress}
        if step.command == "distill" and step.student:
            extra["student"] = api.load_model(step.student, trust_code=recipe.trust_code, custom_objects=recipe.custom_objects)
        result = getattr(api, step.command)(model, step.config, recipe.calibration, **extra)
        result.report.recipe = RecipeRecord(document=document, step=i, source=recipe.source)
        folder = result.save(out if len(recipe.steps) == 1 else out / f"{i}-{step.command}")
        runs.append(StepRun(i, step.command, result, folder))
        if result.model is not None:
            model = _chained(result, folder)
    return runs


def _chained(result, folder: Path):
    """The model a step made, as the next step's input: named and placed as its saved file, so
    the next step writes what a command given that file would."""
    from gencompress.model import from_keras

    report = result.report
    saved = report.pruning.pruned_model if report.pruning else report.distillation.student_model
    path = Path(saved)
    loaded = from_keras(result.model, name=str(folder / path.name))
    return dataclasses.replace(loaded, format="h5" if path.suffix == ".h5" else "keras")


def summary(runs: list[StepRun], exit_code: int) -> dict:
    """What ``--json`` prints: per step its folder, artifacts, failed gates; the exit code."""
    steps = []
    for r in runs:
        report = r.result.report
        gates = report.gates
        steps.append({
            "step": r.index,
            "command": r.command,
            "output_dir": str(r.folder),
            "report": str(r.folder / "report.json"),
            "html": str(r.folder / "report.html"),
            "passed": r.result.passed and not (gates and gates.failed),
            "artifacts": [
                {"name": a.name, "path": a.path, "format": a.format, "precision": a.precision, "variant": a.variant,
                 "size_bytes": a.size_bytes, "size_vs_float": a.size_vs_float, "p50_ms": a.latency_ms.p50,
                 "psnr_db": a.fidelity.psnr_db, "ssim": a.fidelity.ssim, "passed": a.passed}
                for a in report.artifacts
            ],
            "gate_failures": [c.model_dump() for c in gates.failures] if gates else [],
            "failures": [f.model_dump() for f in report.failures],
        })
    return {"passed": exit_code == 0, "exit_code": exit_code, "steps": steps}
