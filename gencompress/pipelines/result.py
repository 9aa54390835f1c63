"""What a library call returns: the typed report and the files it made, written by ``save``."""

from __future__ import annotations

import os
from pathlib import Path

from gencompress.results import ArtifactResult, Report


class Artifacts(list):
    """The run's artifacts. ``artifacts["tflite"]``: the main artifact of that format (the
    quantized one when there is one, else float32); ``artifacts["onnx", "float32"]``: by format
    and precision; an ``int`` indexes as in a list."""

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return super().__getitem__(key)
        fmt, precision = (key, None) if isinstance(key, str) else key
        mine = [a for a in self if a.format == fmt]
        if precision is not None:
            mine = [a for a in mine if a.precision == precision]
        else:
            mine = sorted(mine, key=lambda a: (a.precision == "float32", a.variant is None))
        if not mine:
            raise KeyError(key)
        return mine[0]


class Result:
    """A run's outcome: ``report`` (typed; what ``report.json`` holds), ``artifacts``, the
    derived Keras ``model`` (pruned model or student, else ``None``). The files stay in a scratch
    folder until ``save`` writes them; the folder goes with this object."""

    def __init__(self, report: Report, files: dict[str, Path], cache, model=None, subdir: str | None = None, previews=None):
        self.report = report
        self.files = dict(files)
        self.model = model
        self.previews = previews  # outputs of a few held-out samples per artifact, for report.html
        self._cache = cache  # keeps the scratch folder alive
        self._subdir = subdir  # a non-chief multi-worker run writes into <out>/worker-<i>

    @property
    def artifacts(self) -> Artifacts:
        return Artifacts(self.report.artifacts)

    @property
    def passed(self) -> bool:
        """No graded artifact missed the fidelity target and no precision failed to build."""
        return not self.report.failures and all(a.passed is not False for a in self.report.artifacts)

    def save(self, output_dir: str | os.PathLike) -> Path:
        """Write the artifacts, any derived model and picture, ``report.json``, ``report.md`` and
        ``report.html`` into ``output_dir``, all together (see ``artifacts.save_files``): they
        replace a previous run's result there whole (its files this run does not write go).
        Returns the folder."""
        from gencompress.artifacts import check_output_dir, remove_created, save_files
        from gencompress.report.html import render_html
        from gencompress.report.render import markdown

        out = Path(output_dir) / self._subdir if self._subdir else Path(output_dir)
        created = check_output_dir(out)
        self._point_to(out)
        self.report.files = sorted([*self.files, "report.html", "report.json", "report.md"])
        report = self.report.model_dump(mode="json")
        files = {
            **self.files,
            "report.json": self.report.to_json().encode(),
            "report.md": markdown(report).encode(),
            "report.html": render_html(report, self.previews).encode(),
        }
        try:
            save_files(files, out, replaces=previous_run_files(out))
        except BaseException:
            remove_created(created)
            raise
        return out

    def close(self) -> None:
        """Remove the scratch folder now (it goes with this object otherwise); ``save`` no longer works."""
        if self._cache is not None:  # analyze writes no artifacts: no scratch folder
            self._cache.close()

    def _point_to(self, out: Path) -> None:
        """Paths in the report name where the files will be (a second ``save`` elsewhere too)."""
        names = set(self.files)

        def where(path):
            return str(out / Path(path).name) if path and Path(path).name in names else path

        for a in self.report.artifacts:
            a.path = where(a.path)
        if self.report.pruning is not None:
            self.report.pruning.pruned_model = where(self.report.pruning.pruned_model)
        if self.report.channel_pruning is not None:
            self.report.channel_pruning.pruned_model = where(self.report.channel_pruning.pruned_model)
        d = self.report.distillation
        if d is not None:
            d.student_model = where(d.student_model)
            d.samples = where(d.samples) if d.samples else None

    def __repr__(self) -> str:
        return f"<Result {self.report.command} {self.report.model.path}: {len(self.report.artifacts)} artifacts>"


def previous_run_files(out: Path) -> list[str]:
    """The files a previous gencompress run wrote into ``out``, as its ``report.json`` lists them
    (reports from before ``files`` existed: its artifacts, models and picture)."""
    import json

    from gencompress.errors import InputError
    from gencompress.limits import read_document

    try:  # the folder's report.json is anyone's: bounded, and a FIFO there is not waited on
        report = json.loads(read_document(out / "report.json", "report"))
    except (OSError, ValueError, RecursionError, InputError):
        return []
    if not isinstance(report, dict) or "schema_version" not in report or "command" not in report:
        return []  # not ours: leave the folder's other files alone
    if isinstance(report.get("files"), list):
        return [f for f in report["files"] if isinstance(f, str)]
    paths = [a.get("path") for a in report.get("artifacts") or [] if isinstance(a, dict)]
    paths += [(report.get(k) or {}).get("pruned_model") for k in ("pruning", "channel_pruning")]
    paths += [(report.get("distillation") or {}).get(k) for k in ("student_model", "samples")]
    return ["report.json", "report.md"] + [Path(p).name for p in paths if isinstance(p, str) and p]


def artifact_result(report: Report, fmt: str, precision: str) -> ArtifactResult | None:
    return next((a for a in report.artifacts if a.format == fmt and a.precision == precision), None)
