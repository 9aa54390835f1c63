"""The published generators in ../shared/real_generators (see its MANIFEST.json): every one loads
and exports float TFLite and ONNX equal to Keras; the cheaper half quantizes end to end.

Slow (run in CI); skipped with the reason when the folder is absent.
"""

import json

import pytest
from click.testing import CliRunner

from gencompress.cli import cli

from real_generators import REAL, corpus, load_args, manifest, output_values

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not REAL.is_dir(), reason=f"real generators not present at {REAL}")]

ENTRIES = manifest()
BATCH2 = [e for e in corpus() if e["batch"] == 2]
# The seven with the smallest outputs (28×28 to 64×64): a full default quantize each in CI.
CHEAPER_HALF = sorted(ENTRIES, key=lambda e: (output_values(e), e["file"]))[: len(ENTRIES) // 2]


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _report(folder):
    return json.loads((folder / "report.json").read_text())


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["file"])
def test_loads_and_exports_equal_to_keras(entry, tmp_path):
    out = tmp_path / "out"
    args = ["export", REAL / entry["file"], "-o", out, *load_args(entry, tmp_path)]
    result = _cli(*args, "--calibration-samples", 1, "--eval-samples", 2, "--latency-runs", 1)
    assert result.exit_code == 0, result.output
    report = _report(out)
    model = report["model"]
    assert model["params"] == entry["params"]
    assert [t["shape"] for t in model["inputs"]] == entry["inputs"]
    if entry["outputs"] is not None:
        assert [t["shape"] for t in model["outputs"]] == entry["outputs"]
    assert sorted(a["format"] for a in report["artifacts"]) == ["onnx", "tflite"]
    for a in report["artifacts"]:
        assert a["precision"] == "float32" and a["fidelity"]["psnr_db"] >= 80.0, a


@pytest.mark.parametrize("entry", CHEAPER_HALF, ids=lambda e: e["file"])
def test_quantize_end_to_end(entry, tmp_path):
    """The post-training search on real generators (the QAT rescue after it, minutes per model,
    is tests/test_rescue.py's and the benchmark's)."""
    out = tmp_path / "out"
    result = _cli("quantize", REAL / entry["file"], "-o", out, *load_args(entry, tmp_path), "--latency-runs", 10, "--method", "ptq")
    assert result.exit_code in (0, 3), result.output
    report = _report(out)
    quantized = [a for a in report["artifacts"] if a["precision"] != "float32"]
    assert sorted(a["format"] for a in quantized) == ["onnx", "tflite"]
    for a in quantized:
        assert a["size_vs_float"] < 0.6, a  # every pick stores int8 weights at least
        assert a["fallback"]["attempts"] and a["passed"] == (a["fidelity"]["psnr_db"] >= 30.0)
    if result.exit_code == 3:
        assert "below --min-psnr 30" in result.output
    else:
        assert all(a["passed"] for a in quantized)


@pytest.mark.parametrize("entry", BATCH2, ids=lambda e: e["file"])
def test_batch2_exports_or_says_why_not_in_one_line(entry, tmp_path):
    """The second batch (see its README): each either exports float TFLite and ONNX equal to
    Keras, or gets one clear line and a documented exit code (2: a custom layer whose code is
    not in the file; 4: a converter cannot convert it), never a traceback."""
    out = tmp_path / "out"
    result = _cli("export", entry["path"], "-o", out, *load_args(entry, tmp_path), "--calibration-samples", 1, "--eval-samples", 2,
                  "--latency-runs", 1)
    if result.exit_code == 0:
        for a in _report(out)["artifacts"]:
            assert a["precision"] == "float32" and a["fidelity"]["psnr_db"] >= 80.0, a
        return
    assert result.exit_code in (2, 4), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and result.output.count("gencompress: error:") == 1, result.output
