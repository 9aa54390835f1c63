"""Ctrl-C and SIGTERM stop a run wherever they land (inside TensorFlow's converter too), with
128 + the signal, and leave the output folder with the previous result or the new one whole,
and no temporary files. Real subprocesses and real signals at several points of a run."""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults_common import QUICK, assert_whole_result, gencompress, snapshot


# ----------------------------------------------------------------------------- signals: the machinery


def test_an_interrupt_swallowed_by_a_destructor_is_raised_again(capfd):
    """Python prints "Exception ignored" and goes on when KeyboardInterrupt hits a ``__del__``;
    the recorded signal comes back at the next checkpoint, and nothing is printed."""
    from gencompress.interrupts import Interrupted, check, handling_signals

    class Cleanup:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    with handling_signals():
        Cleanup()  # the interrupt is raised in __del__ and swallowed there
        swallowed = True
        with pytest.raises(Interrupted) as caught:
            check()
    assert swallowed and caught.value.exit_code == 130
    assert "Exception ignored" not in capfd.readouterr().err
    check()  # outside handling_signals: nothing recorded any more


def test_objects_an_interrupt_left_half_built_fail_quietly_after_the_stop():
    """A signal inside an ``__init__`` leaves an object whose ``__del__`` fails when it is
    collected, after the run said it stopped (TensorFlow's ``ApiDefMap`` in the random-signal
    test): no "Exception ignored" traceback under that line."""
    from gencompress.interrupts import Interrupted, handling_signals

    class Half:
        def __init__(self):
            signal.raise_signal(signal.SIGINT)
            self.handle = 1

        def __del__(self):
            self.handle  # noqa: B018 (AttributeError: __init__ was cut short)

    kept, reported, hook = [], [], sys.unraisablehook
    sys.unraisablehook = reported.append  # Python's own hook prints "Exception ignored"; pytest's warns
    try:
        with handling_signals():
            try:
                Half()
            except Interrupted as exc:
                kept.append(exc)  # its traceback holds the half-built object, as a library's cache would
        kept.clear()  # collected after the stop
    finally:
        sys.unraisablehook = hook
    assert reported == []


def test_deferred_signals_arrive_after_the_block():
    from gencompress.interrupts import Interrupted, deferred, handling_signals

    steps = []
    # Python's own handler, a plain KeyboardInterrupt: set here, since the whole suite in one
    # process left SIGINT otherwise by the time this ran (the test then saw no interrupt at all)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred():
                signal.raise_signal(signal.SIGINT)
                steps.append("after the signal")
    finally:
        if previous is not None:  # None: set from C, cannot be put back
            signal.signal(signal.SIGINT, previous)
    assert steps == ["after the signal"]
    with handling_signals(), pytest.raises(Interrupted) as caught:
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("still running")
    assert caught.value.exit_code == 143 and steps[-1] == "still running"


def test_native_capture_restores_the_terminal_whatever_interrupts_it(capfd):
    """An interrupt the converter turns into its own error comes back as the interrupt, with
    stdout and stderr pointing at the terminal again."""
    from gencompress.interrupts import Interrupted, handling_signals
    from gencompress.tfenv import native_output_captured

    with handling_signals(), pytest.raises(Interrupted):
        with native_output_captured():
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                raise RuntimeError("converter failed") from None  # what a C++ binding does
    os.write(2, b"visible\n")
    assert "visible" in capfd.readouterr().err


def test_interrupted_placing_finishes_first(exported, tmp_path, monkeypatch):
    """A signal while files are renamed into place waits until the result is whole."""
    from gencompress import artifacts
    from gencompress.interrupts import Interrupted, handling_signals

    out = tmp_path / "out"
    exported["all"].save(out)
    real_replace = os.replace

    def replace(src, dst):
        signal.raise_signal(signal.SIGTERM)
        return real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", replace)
    with handling_signals(), pytest.raises(Interrupted):
        exported["tflite"].save(out)
    assert_whole_result(out, "export")
    assert not (out / "dcgan.float32.onnx").exists()


def test_interrupted_staging_leaves_the_previous_result(exported, tmp_path, monkeypatch):
    from gencompress import artifacts
    from gencompress.interrupts import Interrupted, handling_signals

    out = tmp_path / "out"
    exported["tflite"].save(out)
    before = snapshot(out)

    def copyfile(src, dst):
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(artifacts.shutil, "copyfile", copyfile)
    with handling_signals(), pytest.raises(Interrupted):
        exported["all"].save(out)
    assert snapshot(out) == before


CONVERTER_INTERRUPTS = """
import os, signal, threading, time
from gencompress.converters.tflite import convert_tflite
from gencompress.interrupts import Interrupted, handling_signals
from gencompress.model import load_model

model = load_model({model!r})
reference = convert_tflite(model, "float32")
for delay in {delays!r}:
    with handling_signals():
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            convert_tflite(model, "float32")
            time.sleep(5)
            print(delay, "not stopped")
        except Interrupted:
            print(delay, "stopped")
        except BaseException as exc:
            print(delay, "lost:", type(exc).__name__)
"""


def test_ctrl_c_inside_the_tflite_converter_always_stops(dcgan_h5):
    """TensorFlow's converter swallows a KeyboardInterrupt that lands in it (and is broken for
    every later conversion in the process: no signatures). A signal at any point of a real
    conversion must come out as ``Interrupted``. In a subprocess: it breaks TensorFlow."""
    delays = [0.02, 0.1, 0.25, 0.5, 0.8, 1.2]
    code = CONVERTER_INTERRUPTS.format(model=str(dcgan_h5), delays=delays)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == [f"{d} stopped" for d in delays], result.stdout


# ----------------------------------------------------------------------------- signals: whole runs


def _catching_stop_signals(pid: int) -> bool:
    """Whether the process has its own SIGTERM handler yet (gencompress installs it first thing;
    before that a signal ends it the default way, with nothing written)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _loading_tensorflow(pid: int) -> bool:
    """Whether TensorFlow's library is mapped into the process: it is loading the model."""
    try:
        return "libtensorflow_framework" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


# Where a signal lands: after this progress line (LOADING: once TensorFlow's library is mapped;
# None: once the handlers are in), then after a delay in seconds.
LOADING = "<loading>"
POINTS = {
    "loading": (LOADING, 0.2),
    "converting": ("reference outputs of the float model", 0.2),
    "calibrating": ("dcgan.float32.tflite: latency", 0.1),
    "searching": ("tflite: calibrating", 0.0),
    "exporting onnx": ("dcgan.int8.tflite: evaluating", 0.0),
    "saving": ("dcgan.int8.onnx: evaluating", 0.0),
}


def _stop_a_run(model, out: Path, scratch: Path, signum: int, after: str | None, delay: float):
    """Start ``quantize`` into ``out``, send ``signum`` at the point, return (process, stderr)."""
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "gencompress", "quantize", str(model), "-o", str(out), *QUICK],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    if after in (None, LOADING):
        ready = _catching_stop_signals if after is None else _loading_tensorflow
        deadline = time.monotonic() + 120
        while not ready(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _catching_stop_signals(proc.pid)
        time.sleep(delay)
        proc.send_signal(signum)
    for line in proc.stderr:
        lines.append(line)
        if after is not None and after in line:
            time.sleep(delay)
            proc.send_signal(signum)
            after = "\0"  # once
    proc.wait(timeout=300)
    proc.stdout.close()
    return proc, "".join(lines)


def _assert_stopped_cleanly(proc, stderr: str, out: Path, before: dict, scratch: Path, signum: int):
    """Stopped with 128 + the signal and the previous result as it was, or (a signal that came
    as the run ended) the new result whole. Nothing left in the scratch folder either way."""
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert os.listdir(scratch) == [], "temporary files left"
    assert not [p for p in out.iterdir() if p.name.startswith(".gencompress")], "staging left"
    now = snapshot(out)
    if now == before:
        assert proc.returncode == 128 + signum, stderr
        last = stderr.rstrip().splitlines()[-1]
        assert last.startswith(f"gencompress: stopped by {'Ctrl-C (SIGINT)' if signum == signal.SIGINT else 'SIGTERM'}; nothing"), stderr
        assert last.endswith((f"nothing of this run was written, {out} is as it was", "nothing was written")), stderr
        return "previous"
    assert_whole_result(out, "quantize")
    # Finished before the signal; or stopped after saving (it says so); or stopped during
    # Python's own shutdown, after everything was written (killed by the signal, the default way).
    assert proc.returncode in (0, 128 + signum, -signum), stderr
    if proc.returncode == 128 + signum:
        assert f"the new result is complete in {out}" in stderr
    return "new"


@pytest.fixture(scope="module")
def previous_result(dcgan_h5, tmp_path_factory):
    """A complete earlier result (``export``) for the stopped runs to leave as it was."""
    out = tmp_path_factory.mktemp("previous") / "out"
    assert gencompress("export", dcgan_h5, "-o", out, *QUICK).returncode == 0
    return out


@pytest.mark.parametrize(
    "point, signum",
    [
        ("loading", signal.SIGINT),
        ("converting", signal.SIGTERM),
        # Whole runs of about 15 s each; the converter case is test_ctrl_c_inside_the_tflite_converter_always_stops.
        pytest.param("calibrating", signal.SIGINT, marks=pytest.mark.slow),
        pytest.param("saving", signal.SIGTERM, marks=pytest.mark.slow),
    ],
)
def test_a_signal_stops_the_run_cleanly(dcgan_h5, previous_result, tmp_path, point, signum):
    out = tmp_path / "out"
    shutil.copytree(previous_result, out)
    before = snapshot(out)
    after, delay = POINTS[point]
    proc, stderr = _stop_a_run(dcgan_h5, out, tmp_path / "scratch", signum, after, delay)
    outcome = _assert_stopped_cleanly(proc, stderr, out, before, tmp_path / "scratch", signum)
    if point != "saving":
        assert outcome == "previous", stderr  # the run had minutes (here: seconds) to go


@pytest.mark.slow
def test_signals_at_random_points_never_leave_half_a_result(dcgan_h5, previous_result, tmp_path):
    """Each point with both signals at random delays, then random times over a whole run."""
    rng = random.Random(14)
    out = tmp_path / "out"
    trials = [(name, after, rng.uniform(0, 0.6), s) for name, (after, _) in POINTS.items() for s in (signal.SIGINT, signal.SIGTERM)]
    trials += [("anywhere", None, rng.uniform(0, 15), rng.choice([signal.SIGINT, signal.SIGTERM])) for _ in range(6)]
    for i, (name, after, delay, signum) in enumerate(trials):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(previous_result, out)
        before = snapshot(out)
        proc, stderr = _stop_a_run(dcgan_h5, out, tmp_path / f"scratch{i}", signum, after, delay)
        outcome = _assert_stopped_cleanly(proc, stderr, out, before, tmp_path / f"scratch{i}", signum)
        if name not in ("saving", "anywhere"):
            assert outcome == "previous", (name, delay, stderr)
