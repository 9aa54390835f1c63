"""Gates: every limit on every deliverable, listed when it fails (terminal, report.json, --json), exit 3."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from gencompress.config import FormatGates, Gates, QuantizeConfig
from gencompress.errors import OptionError
from gencompress.pipelines.gates import deliverables, evaluate
from gencompress.results import ArtifactResult, Fidelity, Latency

FAST = ["--calibration-samples", "32", "--eval-samples", "8", "--latency-runs", "5"]


def art(name, fmt, precision, size, ratio, p50, psnr, ssim=0.99, variant=None):
    return ArtifactResult(
        path=f"/x/{name}", format=fmt, precision=precision, size_bytes=size, gzip_bytes=size // 2, size_vs_float=ratio,
        latency_ms=Latency(p50=p50, p90=p50, runs=5), fidelity=Fidelity(psnr_db=psnr, mse=0.0, max_abs_error=0.1, ssim=ssim),
        variant=variant,
    )


RUN = [
    art("m.float32.tflite", "tflite", "float32", 1000, 1.0, 1.0, 150.0),
    art("m.int8.tflite", "tflite", "int8", 280, 0.28, 0.5, 40.0),
    art("m.float32.onnx", "onnx", "float32", 1000, 1.0, 1.0, 150.0),
    art("m.int8.onnx", "onnx", "int8", 320, 0.32, 2.0, 36.0, ssim=None),
]


def test_every_failing_gate_is_listed_with_its_value_and_limit():
    gates = Gates(max_bytes=300, min_speedup=1.5, min_ssim=0.9, onnx=FormatGates(min_psnr=38.0, max_bytes=400))
    section = evaluate(RUN, gates, min_psnr=30.0)
    failed = {(c.artifact, c.gate): (c.measured, c.limit) for c in section.failures}
    assert failed == {
        ("m.int8.onnx", "min_psnr"): (36.0, 38.0),  # the format's own PSNR gate wins over the target
        ("m.int8.onnx", "min_ssim"): (None, 0.9),  # not measured: fails, never passes silently
        ("m.int8.onnx", "min_speedup"): (0.5, 1.5),
    }
    assert section.failed == 3 and section.limits["onnx"]["max_bytes"] == 400 and section.limits["tflite"]["max_bytes"] == 300
    # the float32 references are not deliverables: a size-ratio gate on them would measure 1.0
    assert {c.artifact for c in section.checks} == {"m.int8.tflite", "m.int8.onnx"}
    passed = {(c.artifact, c.gate) for c in section.checks if c.passed}
    assert ("m.int8.tflite", "min_speedup") in passed and ("m.int8.onnx", "max_bytes") in passed


def test_limits_are_inclusive_and_nothing_to_check_is_no_section():
    section = evaluate(RUN, Gates(max_bytes=280, max_size_ratio=0.28, tflite=FormatGates(max_latency_ms=0.5)), min_psnr=0.0)
    tflite = [c for c in section.checks if c.artifact == "m.int8.tflite"]
    assert tflite and all(c.passed for c in tflite)
    assert evaluate(RUN, Gates(), min_psnr=0.0) is None


def test_deliverables_follow_the_grader():
    pruned = RUN + [art("m-pruned.float32.tflite", "tflite", "float32", 1000, 1.0, 1.0, 35.0, variant="pruned")]
    assert [a.name for a in deliverables(pruned, lambda a: a.variant == "pruned" and a.precision != "float32")] == ["m-pruned.float32.tflite"]
    exported = [RUN[0], RUN[2]]
    assert deliverables(exported, lambda a: True) == exported  # export: the float32 artifacts are the deliverables


@pytest.mark.parametrize("kwargs, message", [
    ({"max_bytes": 0}, "--max-bytes must be a whole number"),
    ({"max_bytes": 1.5}, "--max-bytes must be a whole number"),
    ({"min_ssim": 1.2}, "--min-ssim must be at most 1"),
    ({"max_size_ratio": -0.1}, "--max-size-ratio must be a positive number"),
    ({"min_psnr": 30.0}, "the PSNR gate for every format is the command's min_psnr"),
])
def test_bad_gates_are_option_errors(kwargs, message):
    with pytest.raises(OptionError, match=message):
        Gates(**kwargs)


def test_a_latency_gate_is_timed():
    assert Gates(onnx=FormatGates(max_latency_ms=3.0)).timed and Gates(min_speedup=1.2).timed
    assert not Gates(max_bytes=10).timed and not QuantizeConfig().gates.timed


def test_cli_gates_fail_exit_3_listed_everywhere(dcgan_h5, tmp_path):
    """Real run of the tiny DCGAN: size and SSIM gates; the terminal table, report.json and --json
    all list each failure; the one stderr line names them; exit 3 after everything is written."""
    out = tmp_path / "o"
    args = [sys.executable, "-m", "gencompress", "quantize", str(dcgan_h5), "-o", str(out), *FAST,
            "--max-bytes", "2000", "--max-size-ratio", "onnx:0.01", "--min-ssim", "0.5", "--json"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)  # nothing but the JSON document on stdout
    failures = {(g["artifact"], g["gate"]) for g in summary["steps"][0]["gate_failures"]}
    assert failures == {("dcgan.int8.tflite", "max_bytes"), ("dcgan.int8.onnx", "max_bytes"), ("dcgan.int8.onnx", "max_size_ratio")}
    assert summary["exit_code"] == 3 and summary["passed"] is False
    report = json.loads((out / "report.json").read_text())
    assert report["gates"]["failed"] == 3
    assert report["gates"]["limits"]["onnx"] == {"min_psnr": 30.0, "min_ssim": 0.5, "max_bytes": 2000, "max_size_ratio": 0.01}
    ssim = [c for c in report["gates"]["checks"] if c["gate"] == "min_ssim"]
    assert len(ssim) == 2 and all(c["passed"] and c["measured"] > 0.5 for c in ssim)
    error = [line for line in result.stderr.splitlines() if line.startswith("gencompress: error:")]
    assert len(error) == 1 and "3 gate(s) failed" in error[0] and "limit at most 2,000 (--max-bytes)" in error[0]
    assert "gates failed (3):" in result.stderr  # the table goes to stderr under --json
    assert "Traceback" not in result.stderr
    assert (out / "dcgan.int8.onnx").is_file() and (out / "report.html").is_file()


def test_cli_latency_gate_remeasures_in_rounds(dcgan_h5, tmp_path):
    from gencompress.cli import cli
    from click.testing import CliRunner
    from gencompress.pipelines.gates import GATE_ROUND_RUNS, GATE_ROUNDS

    out = tmp_path / "o"
    result = CliRunner().invoke(cli, ["quantize", str(dcgan_h5), "-o", str(out), *FAST, "--format", "tflite",
                                      "--min-speedup", "0.01", "--max-latency-ms", "tflite:10000"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    gates = report["gates"]
    assert (gates["latency_rounds"], gates["latency_round_runs"]) == (GATE_ROUNDS, GATE_ROUND_RUNS)
    float32, int8 = report["artifacts"]
    assert int8["latency_ms"]["runs"] == float32["latency_ms"]["runs"] == GATE_ROUNDS * GATE_ROUND_RUNS
    speedup = next(c for c in gates["checks"] if c["gate"] == "min_speedup")
    # the median of per-round ratios: close to (not exactly) the ratio of the medians
    assert speedup["passed"] and 0.5 < speedup["measured"] / (float32["latency_ms"]["p50"] / int8["latency_ms"]["p50"]) < 2.0


def test_gate_option_values_are_checked(dcgan_h5, tmp_path):
    from click.testing import CliRunner

    from gencompress.cli import cli

    for bad, message in (("--max-bytes=tflite:1.5", "expected a whole number"), ("--min-ssim=coreml:0.9", "unknown format 'coreml'")):
        result = CliRunner().invoke(cli, ["quantize", str(dcgan_h5), "-o", str(tmp_path), bad])
        assert result.exit_code == 2 and message in result.output, result.output
