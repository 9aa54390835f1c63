"""End to end: the real CLI on the shipped, trained sample models (slow; run in CI)."""

import json

import pytest
from click.testing import CliRunner

from gencompress.cli import cli

from conftest import SAMPLES

pytestmark = pytest.mark.slow
FAST = ["--calibration-samples", "100", "--eval-samples", "32", "--latency-runs", "10"]


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("sample", ["dcgan_digits.h5", "cvae_decoder.h5", "sr_photos.h5"])
def test_quantize_each_sample(tmp_path, sample):
    from ai_edge_litert.interpreter import Interpreter
    import onnxruntime as ort

    _run("quantize", SAMPLES / sample, "-o", tmp_path, *FAST)
    report = json.loads((tmp_path / "report.json").read_text())
    # the fidelity guard may keep some ops float ("mixed"): the super-resolution net's PReLUs
    # have no XNNPACK int8 kernel
    by_kind = {(a["format"], a["precision"].replace("mixed", "int8")): a for a in report["artifacts"]}
    assert set(by_kind) == {("tflite", "float32"), ("tflite", "int8"), ("onnx", "float32"), ("onnx", "int8")}
    for (fmt, precision), a in by_kind.items():
        fid = a["fidelity"]
        if precision == "float32":
            assert fid["psnr_db"] > 80.0, a
        else:
            # int8 weights are a quarter of float; on these small models scales, zero points and
            # (ONNX) Q/DQ nodes with long names add 10-35 % of the float size on top.
            assert a["size_vs_float"] < 0.65, a
            assert fid["psnr_db"] > 20.0, a
        assert all(fid[k] is not None for k in ("psnr_db", "mse", "max_abs_error", "ssim"))
        assert a["latency_ms"]["p50"] > 0 and a["gzip_bytes"] > 0
    assert all(a["passed"] for a in report["artifacts"])  # default --min-psnr 30
    Interpreter(model_path=by_kind[("tflite", "int8")]["path"]).allocate_tensors()
    ort.InferenceSession(by_kind[("onnx", "int8")]["path"], providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("sample, fmt", [("cvae_decoder.keras", "keras3"), ("sr_photos_savedmodel", "savedmodel")])
@pytest.mark.parametrize("command", ["export", "quantize"])
def test_keras3_and_savedmodel_samples(tmp_path, sample, fmt, command):
    _run(command, SAMPLES / sample, "-o", tmp_path, *FAST)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"]["format"] == fmt
    precisions = {a["precision"].replace("mixed", "int8") for a in report["artifacts"]}
    assert precisions == ({"float32"} if command == "export" else {"float32", "int8"})
    for a in report["artifacts"]:
        assert a["fidelity"]["psnr_db"] > (80.0 if a["precision"] == "float32" else 20.0), a


def test_sample_output_ranges():
    from gencompress.model import load_model

    assert load_model(SAMPLES / "dcgan_digits.h5").known_output_range() == (-1.0, 1.0)
    cvae = load_model(SAMPLES / "cvae_decoder.h5")
    assert cvae.known_output_range() == (0.0, 1.0) and cvae.label_ranges == {"label": 10}
    assert load_model(SAMPLES / "sr_photos.h5").known_output_range() is None
