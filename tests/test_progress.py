"""Progress: bars on a terminal, one line per phase in CI logs; sample counts that fit the model."""

import io
import json
import re
import time

import pytest
from click.testing import CliRunner

from gencompress.cli import cli
from gencompress.progress import Progress
from gencompress.report.latency import measure_latency
from gencompress.pipelines.session import auto_sample_counts

from conftest import make_session


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream)
    assert not progress.bars and progress.lines
    with progress.phase("calibrating", total=3) as phase:
        for _ in range(3):
            phase.update()
        phase.describe("done right")
    progress.log("a message")
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"calibrating: \d+\.\d s \(done right\)", lines[0]), lines
    assert lines[1] == "a message" and len(lines) == 2


def test_every_percent_lines_for_long_phases():
    stream = io.StringIO()
    with Progress(stream).phase("fine-tune", total=100, every_percent=25) as phase:
        for _ in range(100):
            phase.update()
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines[:-1]] == ["fine-tune: 25/100", "fine-tune: 50/100", "fine-tune: 75/100"]
    assert all("ETA" in line for line in lines[:-1]) and lines[-1].startswith("fine-tune: ")


def test_bars_on_a_terminal():
    stream = _Tty()
    progress = Progress(stream)
    assert progress.bars and not progress.lines
    with progress.phase("evaluating", total=4, unit="sample") as phase:
        for _ in range(4):
            time.sleep(0.25)  # bars redraw at most every 0.2 s
            phase.update()
    text = stream.getvalue()
    assert "0/4" in text and "3/4" in text and "sample/s" in text and "\r" in text  # drawn and redrawn
    assert re.search(r"\revaluating: 1\.\d s\n$", text)  # the bar is cleared; the phase's line stays


def test_silent_by_default_for_library_use():
    assert not Progress.current().enabled
    with Progress(io.StringIO()).activate() as p:
        assert Progress.current() is p
    assert not Progress.current().enabled


def test_cli_prints_a_line_per_phase(dcgan_h5, tmp_path):
    result = CliRunner().invoke(
        cli, ["quantize", str(dcgan_h5), "-o", str(tmp_path), "--calibration-samples", "16", "--eval-samples", "8", "--latency-runs", "3"]
    )
    assert result.exit_code == 0, result.stderr
    err = result.stderr
    for phase in ("loading dcgan.h5", "reference outputs", "tflite: calibrating on 16 samples", "tflite try 1: int8",
                  "dcgan.float32.tflite: latency", "dcgan.int8.tflite: evaluating", "onnx: exporting the float graph",
                  "onnx: calibrating (minmax) on 16 samples", "onnx try 1: int8"):
        assert re.search(re.escape(phase) + r".*: \d+\.\d s", err), (phase, err)
    assert "\r" not in err  # no bars in a log
    # the pick's outputs and latency were measured by its search attempt: not measured again
    assert "dcgan.int8.tflite: latency" not in err


def test_fast_says_so(dcgan_h5, tmp_path):
    result = CliRunner().invoke(cli, ["quantize", str(dcgan_h5), "-o", str(tmp_path), "--fast"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["fast"] is True
    assert (report["settings"]["calibration_samples"], report["settings"]["eval_samples"], report["settings"]["latency_runs"]) == (50, 16, 10)
    assert report["notes"] and report["notes"][0].startswith("--fast: 50 calibration samples, 16 held-out samples, 10 latency runs")
    assert "note: --fast" in result.output and "--fast" in (tmp_path / "report.md").read_text()


class _Shape:
    def __init__(self, *shape):
        self.shape = (None,) + shape


class _Outputs:
    def __init__(self, *shapes):
        self.outputs = [_Shape(*s) for s in shapes]


@pytest.mark.parametrize(
    "shape, counts, fast",
    [
        ((16, 16, 1), (200, 64), (50, 16)),
        ((28, 28, 1), (200, 64), (50, 16)),
        ((64, 64, 3), (200, 64), (50, 16)),
        ((128, 128, 3), (163, 41), (40, 10)),
        ((256, 256, 3), (41, 16), (10, 8)),
        ((384, 384, 3), (32, 16), (8, 8)),
        ((400, 600, 3), (32, 16), (8, 8)),
    ],
)
def test_sample_counts_follow_output_size(shape, counts, fast):
    assert auto_sample_counts(_Outputs(shape)) == counts
    assert auto_sample_counts(_Outputs(shape), fast=True) == fast


def test_given_counts_win(dcgan_h5, tmp_path):
    from gencompress.model import load_model

    session = make_session(load_model(dcgan_h5), 7, 5, fast=True)
    assert (len(session.calibration), len(session.evaluation), session.config.latency_runs) == (7, 5, 10)


class _SlowRunner:
    """A runtime stand-in that takes 50 ms per call: the latency protocol's own logic under test."""

    def __init__(self):
        self.calls = 0

    def set_inputs(self, sample):
        pass

    def invoke(self):
        self.calls += 1
        time.sleep(0.05)


def test_latency_stops_at_its_time_budget():
    runner = _SlowRunner()
    start = time.perf_counter()
    result = measure_latency(runner, {}, warmup=10, runs=1000, max_seconds=1.0)
    assert time.perf_counter() - start < 2.0
    assert 5 <= result["runs"] <= 20 and runner.calls < 30
    assert 45 < result["p50"] < 80
