"""The command line: real runs on tiny models, report keys, exit codes, no tracebacks."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from gencompress.cli import cli

FAST = ["--calibration-samples", "32", "--eval-samples", "8", "--latency-runs", "5"]
ARTIFACT_KEYS = {"path", "format", "precision", "size_bytes", "gzip_bytes", "latency_ms", "fidelity"}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_help_does_not_import_tensorflow():
    code = "import sys; from gencompress.cli import main; sys.argv=['gencompress','--help']\n" \
           "try:\n    main()\nexcept SystemExit:\n    pass\n" \
           "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print('clean')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "quantize" in result.stdout and "clean" in result.stdout


def test_quantize_writes_artifacts_and_full_report(dcgan_h5, tmp_path):
    result = invoke("quantize", dcgan_h5, "-o", tmp_path, *FAST)
    assert result.exit_code == 0, result.output
    assert "dcgan.int8.tflite" in result.output and "PSNR dB" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.md").read_text().startswith("# gencompress quantize report")
    assert report["model"]["params"] > 0 and report["model"]["output_range"] == [-1.0, 1.0]
    assert report["model"]["inputs"][0]["name"] == "z"
    assert report["evaluation"] == {"source": "noise", "samples": 8, "seed": 0, "tail_samples": 2}
    kinds = [(a["format"], a["precision"]) for a in report["artifacts"]]
    assert kinds == [("tflite", "float32"), ("tflite", "int8"), ("onnx", "float32"), ("onnx", "int8")]
    for a in report["artifacts"]:
        assert ARTIFACT_KEYS <= set(a)
        assert (tmp_path / a["path"].split("/")[-1]).stat().st_size == a["size_bytes"]
        assert 0 < a["gzip_bytes"] < a["size_bytes"]
        assert 0 < a["latency_ms"]["p50"] <= a["latency_ms"]["p90"]
        fid = a["fidelity"]
        assert fid["mse"] >= 0 and fid["max_abs_error"] >= 0 and 0 < fid["ssim"] <= 1.0
        floor = 80.0 if a["precision"] == "float32" else 20.0
        assert fid["psnr_db"] > floor, a
    assert not list(tmp_path.glob(".*tmp")), "no temp files left behind"


def test_export_two_input_model_onnx_only(conditional_h5, tmp_path):
    result = invoke("export", conditional_h5, "-o", tmp_path, "--format", "onnx", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert [a["precision"] for a in report["artifacts"]] == ["float32"]
    assert report["artifacts"][0]["fidelity"]["psnr_db"] > 80.0
    assert report["calibration"] is None  # nothing calibrated for float32


def test_same_command_same_artifacts(dcgan_h5, tmp_path):
    for out in ("a", "b"):
        assert invoke("quantize", dcgan_h5, "-o", tmp_path / out, *FAST).exit_code == 0
    for name in ("dcgan.int8.tflite", "dcgan.int8.onnx", "dcgan.float32.onnx"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_npz_calibration_and_all_modes(conditional_h5, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", z=rng.standard_normal((40, 4)), label=rng.integers(0, 5, (40, 1)))
    result = invoke("quantize", conditional_h5, "-o", tmp_path / "o", "--mode", "all", "--format", "tflite",
                    "--calibration", tmp_path / "data.npz", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [a["precision"] for a in report["artifacts"]] == ["float32", "float16", "dynamic", "int8", "int16x8"]
    # its RESIZE_NEAREST_NEIGHBOR (of a shape computed at run time) is not delegated in float
    # either: int8 loses nothing there, so int8 is not classed slow
    assert report["artifacts"][3]["fallback"]["compute"] == "int8"
    assert report["calibration"]["source"].endswith("data.npz")


def test_inspect_lists_layers_and_int8_leftovers(tmp_path, keras):
    z = keras.Input((4,), name="z")
    x = keras.layers.Dense(8, name="dense")(z)
    # ELU has no int8 kernel in TFLite: it must show up as staying float.
    out = keras.layers.ELU(name="elu")(x)
    keras.Model(z, out).save(tmp_path / "elu.h5")
    result = invoke("inspect", tmp_path / "elu.h5")
    assert result.exit_code == 0, result.output
    assert "parameters: 40" in result.output and "dense" in result.output
    assert "will not run as fast int8" in result.output and "ELU: no int8 kernel" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["quantize", "nope.h5"], "model not found: nope.h5"),
        (["quantize", "{model}", "--mode", "int4"], "Invalid value for '--mode'"),
        (["quantize", "{model}", "--input-range", "1,-1"], "LOW must be below HIGH"),
        (["quantize", "{model}", "--calibration", "{tmp}/missing.npz"], "calibration source not found"),
        (["quantize", "{model}", "--calibration", "{tmp}/bad.npy"], "needs samples of shape [8], got [3]"),
        (["quantize", "{model}", "--threads", "0"], "--threads and latency runs must be at least 1"),
        (["export", "{tmp}/corrupt.h5"], "cannot read"),
    ],
)
def test_bad_input_one_line_exit_2(dcgan_h5, tmp_path, args, message):
    np.save(tmp_path / "bad.npy", np.zeros((10, 3), np.float32))
    (tmp_path / "corrupt.h5").write_bytes(b"garbage")
    args = [a.format(model=dcgan_h5, tmp=tmp_path) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "gencompress", *args, "-o", str(tmp_path / "out"), *FAST],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [ln for ln in result.stderr.splitlines() if "rror" in ln]
    assert len(error_lines) == 1, result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_one_failing_precision_keeps_the_others(i2i_keras, tmp_path):
    # TFLite has no int16x8 kernel for PReLU: that artifact fails, the others are still built.
    args = ["quantize", str(i2i_keras), "-o", str(tmp_path), "--mode", "int8,int16x8", "--format", "tflite", *FAST]
    result = subprocess.run([sys.executable, "-m", "gencompress", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 4, result.stderr
    assert "tflite int16x8" in result.stderr and "PRELU" in result.stderr and "Traceback" not in result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    # int8 through the guard: "mixed" because PReLU has no XNNPACK int8 kernel and stays float
    assert [a["precision"] for a in report["artifacts"]] == ["float32", "mixed"]
    assert report["failures"][0]["precision"] == "int16x8"
    assert not (tmp_path / "sr.int16x8.tflite").exists()
    assert report["model"]["output_range_source"] == "measured on the evaluation set"
