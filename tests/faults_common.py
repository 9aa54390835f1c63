"""What the fault tests share: the CLI in a subprocess as a user runs it, the one-line error
check and folder snapshots (the results to save again and again: ``exported`` in conftest)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

QUICK = ["--calibration-samples", "16", "--eval-samples", "8", "--latency-runs", "3"]


def gencompress(*args, env=None, umask=None, timeout=300):
    """The CLI in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gencompress", *map(str, args)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def assert_one_error(result, code: int, message: str):
    """Exit ``code``, no traceback, and exactly one error line, ``gencompress: error: ...``."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Usage:" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1 and errors[0].startswith("gencompress: error: "), result.stderr
    assert message in errors[0], errors[0]


def snapshot(folder: Path) -> dict | None:
    if not folder.exists():
        return None
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(folder.iterdir())}


def assert_whole_result(out: Path, command: str, others=()):
    """``out`` holds one complete run: exactly the files its report lists (and the user's own)."""
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == command
    assert sorted(p.name for p in out.iterdir()) == sorted([*report["files"], *others])
    for a in report["artifacts"]:
        assert Path(a["path"]).stat().st_size == a["size_bytes"]
