"""The Python API: the README's example runs, results are typed, nothing is written until save,
and the CLI gives the same artifact bytes as the API."""

import hashlib
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

import gencompress as gc
from gencompress.cli import cli

from conftest import REPO, SAMPLES


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample_models").symlink_to(SAMPLES)  # the example's paths are the repository's
    namespace = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    result = namespace["result"]
    assert isinstance(result.report, gc.Report)
    assert (tmp_path / "out" / "report.json").exists()
    assert namespace["student"] is not None


def test_typed_results_and_explicit_save(dcgan_h5, tmp_path):
    model = gc.load_model(dcgan_h5)
    config = gc.QuantizeConfig(min_psnr=35, eval_samples=8, latency_runs=3)
    result = gc.quantize(model, config, calibration=gc.Calibration.noise(32, seed=0))
    assert not list(tmp_path.iterdir())  # nothing written yet
    tflite = result.artifacts["tflite"]
    assert isinstance(tflite, gc.ArtifactResult) and isinstance(tflite.fidelity, gc.Fidelity)
    assert tflite.precision != "float32" and tflite.fidelity.psnr_db >= 35 and tflite.passed
    assert result.artifacts["tflite", "float32"].fidelity.psnr_db > 80
    assert result.passed
    out = result.save(tmp_path / "out")
    saved = json.loads((out / "report.json").read_text())
    assert saved["schema_version"] == gc.Report.model_fields["schema_version"].default
    assert set(saved["versions"]) >= {"gencompress", "tensorflow", "tf_keras", "litert", "onnxruntime", "tf2onnx", "onnx"}
    assert all(v for v in saved["versions"].values())
    for a in saved["artifacts"]:
        assert a["path"].startswith(str(out)) and (out / a["path"].split("/")[-1]).exists()
    assert tflite.path.startswith(str(out))  # the typed result follows the files


def test_from_keras_in_memory(keras, tmp_path):
    import keras as keras3

    from conftest import build_dcgan

    tk = gc.from_keras(build_dcgan(keras), name="mine")
    assert tk.stem == "mine" and tk.format == "keras-object"
    keras3.utils.set_random_seed(0)
    k3 = keras3.Sequential([keras3.Input((5,), name="z"), keras3.layers.Dense(12, activation="tanh", name="d")])
    m3 = gc.from_keras(k3)
    assert m3.format == "keras3-object" and m3.output_activation == "tanh"
    result = gc.export(m3, gc.ExportConfig(eval_samples=4, latency_runs=2))
    assert all(a.fidelity.psnr_db > 80 for a in result.report.artifacts)


def test_arrays_calibration(conditional):
    rng = np.random.default_rng(0)
    arrays = {"z": rng.standard_normal((40, 4)).astype("float32"), "label": rng.integers(0, 5, (40, 1)).astype("int32")}
    result = gc.quantize(conditional, gc.QuantizeConfig(eval_samples=8, latency_runs=2, formats=("tflite",)), gc.Calibration.arrays_of(arrays, samples=32))
    assert result.report.calibration.source == "arrays" and result.report.calibration.samples == 32
    with pytest.raises(gc.CalibrationError, match="no array for input"):
        gc.quantize(conditional, gc.QuantizeConfig(), gc.Calibration.arrays_of({"z": arrays["z"]}))


def test_config_defaults_are_the_clis():
    from gencompress import config as C
    from gencompress.cli import distill_command, prune_command, quantize

    def option(command, name):
        return next(p for p in command.params if p.name == name)

    assert option(quantize, "min_psnr").default == C.QuantizeConfig().min_psnr == 30.0
    assert option(prune_command, "sparsity").default == C.PruneConfig().sparsity
    assert option(prune_command, "schedule").default == C.PruneConfig().schedule
    assert option(distill_command, "min_psnr").default == C.DistillConfig().min_psnr == 25.0
    assert option(distill_command, "loss").default == C.DistillConfig().training.loss


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.suffix in (".tflite", ".onnx")}


@pytest.mark.slow
@pytest.mark.parametrize("sample", ["dcgan_digits.h5", "dcgan_saturated.h5", "cvae_decoder.h5", "cvae_decoder.keras", "sr_photos.h5", "sr_photos_savedmodel"])
def test_cli_and_api_give_the_same_bytes(sample, tmp_path):
    args = ["--calibration-samples", "64", "--eval-samples", "16", "--latency-runs", "3"]
    result = CliRunner().invoke(cli, ["quantize", str(SAMPLES / sample), "-o", str(tmp_path / "cli"), *args])
    assert result.exit_code == 0, result.output
    model = gc.load_model(SAMPLES / sample)
    api = gc.quantize(model, gc.QuantizeConfig(eval_samples=16, latency_runs=3), gc.Calibration.noise(64))
    api.save(tmp_path / "api")
    cli_digests, api_digests = _digests(tmp_path / "cli"), _digests(tmp_path / "api")
    assert len(cli_digests) == 4 and cli_digests == api_digests
