"""Magnitude pruning: sparsity measured on the weights, 2:4 patterns, layers left dense, Keras 3
models, int8 keeping the zeros, and the ``prune`` command."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import build_dcgan
from gencompress.cli import cli
from gencompress.config import TrainingConfig
from gencompress.compress.pruning import prune_model, select_layers
from gencompress.config import PruneConfig
from gencompress.errors import OptionError

FT = TrainingConfig(steps=60, batch_size=16, eval_every=20)
FAST = ["--calibration-samples", "32", "--eval-samples", "8", "--latency-runs", "3"]


def _psnr(a, b, value_range=2.0):
    from gencompress.report.metrics import psnr_db

    return psnr_db(float(np.mean((np.asarray(a, np.float64) - b) ** 2)), value_range)


@pytest.fixture(scope="module")
def tiny(keras):
    return build_dcgan(keras)


@pytest.mark.parametrize("schedule, sparsity", [("constant", 0.5), ("polynomial", 0.7)])
def test_sparsity_measured_on_weights_matches_the_request(keras, tiny, schedule, sparsity):
    before = [w.copy() for w in tiny.get_weights()]
    pruned, info = prune_model(tiny, PruneConfig(sparsity=sparsity, schedule=schedule, training=FT))

    assert abs(info.measured_sparsity - sparsity) <= 0.01, info.layers
    assert [r["name"] for r in info.layers] == ["project", "up1", "image"]
    for row in info.layers:  # each layer on its own, to the granularity of its size
        kernel = pruned.get_layer(row["name"]).kernel.numpy()
        assert row["zeros"] == np.count_nonzero(kernel == 0) and row["size"] == kernel.size
        assert abs(row["sparsity"] - sparsity) <= 1.0 / kernel.size + 1e-9
    if schedule == "polynomial":
        assert info.schedule["end_step"] <= FT.steps and info.finetune["best_step"] >= info.schedule["end_step"]
    # Wrappers stripped, same layers as the original, which is untouched.
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in tiny.layers]
    assert all(np.array_equal(a, b) for a, b in zip(before, tiny.get_weights()))
    z = np.random.default_rng(5).standard_normal((16, 8)).astype("float32")
    assert _psnr(pruned(z), tiny(z).numpy()) > 20.0
    assert {d["name"] for d in info.left_dense} == {"bn0"}


def test_2_by_4_pattern_on_the_weights(keras, tiny):
    pruned, info = prune_model(tiny, PruneConfig(sparsity=0.5, structure="2:4", training=TrainingConfig(steps=20, batch_size=16, eval_every=20)))
    assert [r["name"] for r in info.layers] == ["project", "up1"]
    # image's kernel is (3, 3, 1, 4): one input channel, no group of 4 to thin.
    assert any(d["name"] == "image" and "multiple of 4" in d["reason"] for d in info.left_dense)
    for name in ("project", "up1"):
        kernel = pruned.get_layer(name).kernel.numpy()
        # tfmot's groups: consecutive weights along axis 0 of a Dense kernel, axis 2 of a conv one.
        rows = kernel.T if kernel.ndim == 2 else np.transpose(kernel, (3, 0, 1, 2)).reshape(-1, kernel.shape[2])
        groups = rows.reshape(-1, 4)
        assert np.all(np.count_nonzero(groups == 0, axis=1) >= 2), name
    assert info.measured_sparsity == pytest.approx(0.5, abs=0.01)


def test_layers_tfmot_cannot_prune_are_left_dense_and_listed(keras):
    from gencompress.tfenv import import_tf

    tf = import_tf()
    keras.utils.set_random_seed(4)
    x_in = keras.Input((6,), name="x")
    x = keras.layers.Dense(16, name="dense1")(x_in)
    x = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25), name="prelu")(x)
    x = tf.nn.relu(x)  # a TFOpLambda layer
    out = keras.layers.Dense(4, activation="tanh", name="out")(x)
    model = keras.Model(x_in, out)

    pruned, info = prune_model(model, PruneConfig(sparsity=0.5, schedule="constant", training=TrainingConfig(steps=20, batch_size=8, eval_every=20)))
    assert [r["name"] for r in info.layers] == ["dense1", "out"]
    left = {d["class"]: d for d in info.left_dense}
    assert left["PReLU"]["params"] == 16 and "tfmot cannot prune PReLU" in left["PReLU"]["reason"]
    assert "TFOpLambda" in left and "cannot prune" in left["TFOpLambda"]["reason"]
    assert np.count_nonzero(pruned.get_layer("prelu").alpha.numpy() == 0) == 0

    with pytest.raises(OptionError, match=r"cannot prune prelu \(tfmot cannot prune PReLU"):
        select_layers(model, PruneConfig(layers=("prelu",)))
    with pytest.raises(OptionError, match="no layer named nope .prunable: dense1, out"):
        select_layers(model, PruneConfig(layers=("nope",)))


def test_layer_selection(tiny):
    chosen, left = select_layers(tiny, PruneConfig(layers=("up1",)))
    assert chosen == ["up1"]
    chosen, left = select_layers(tiny, PruneConfig(skip_first=True, skip_last=True))
    assert chosen == ["up1"]
    reasons = {d["name"]: d["reason"] for d in left}
    assert "--skip-first" in reasons["project"] and "--skip-last" in reasons["image"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 0.0}, "between 0 and 1"),
        ({"sparsity": 1.0}, "between 0 and 1"),
        ({"sparsity": 0.8, "structure": "2:4"}, "use --sparsity 0.5"),
        ({"schedule": "cubic"}, "unknown schedule"),
        ({"begin_step": 10, "end_step": 10}, "must come after"),
        ({"layers": ()}, "at least one layer"),
    ],
)
def test_bad_prune_config(kwargs, message):
    with pytest.raises(OptionError, match=message):
        PruneConfig(**kwargs)


def test_schedule_fits_the_fine_tuning_steps():
    s = PruneConfig(schedule="polynomial", training=TrainingConfig(steps=1000)).effective_schedule()
    # begin at tfmot's step 1, end at half the steps (500) moved down onto the frequency grid
    assert (s["begin_step"], s["end_step"], s["frequency"], s["target_at"]) == (1, 481, 24, 481)
    s = PruneConfig(schedule="polynomial", begin_step=100, end_step=450, training=TrainingConfig(steps=500)).effective_schedule()
    assert s["begin_step"] == 100 and s["end_step"] <= 450 and (s["end_step"] - 100) % s["frequency"] == 0
    # the defaults are the CLI's: polynomial, the target reached half-way
    assert PruneConfig().schedule == "polynomial"
    assert PruneConfig(training=TrainingConfig(steps=100)).effective_schedule()["target_at"] == 49
    assert PruneConfig(schedule="constant", training=TrainingConfig(steps=100)).effective_schedule()["target_at"] == 1
    with pytest.raises(OptionError, match="past the last fine-tuning step"):
        PruneConfig(schedule="polynomial", end_step=2000, training=TrainingConfig(steps=1000)).effective_schedule()


def test_prune_command_then_int8_keeps_the_zeros(dcgan_h5, tmp_path):
    result = CliRunner().invoke(
        cli, ["prune", str(dcgan_h5), "-o", str(tmp_path), "--sparsity", "0.6", "--steps", "40", "--then", "int8", "--min-psnr", "0", *FAST]
    )
    assert result.exit_code == 0, result.output
    assert "sparsity: 60.0" in result.output and "dcgan-pruned.int8.tflite" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    kinds = [(a["format"], a["precision"], a.get("variant")) for a in report["artifacts"]]
    assert kinds == [
        ("tflite", "float32", None), ("tflite", "int8", None), ("onnx", "float32", None), ("onnx", "int8", None),
        ("tflite", "float32", "pruned"), ("tflite", "int8", "pruned"), ("onnx", "float32", "pruned"), ("onnx", "int8", "pruned"),
    ]
    for a in report["artifacts"]:
        assert (tmp_path / a["path"].split("/")[-1]).exists()
    p = report["pruning"]
    assert abs(p["measured_sparsity"] - 0.6) <= 0.01 and p["requested_sparsity"] == 0.6
    assert p["pruned_model"].endswith("dcgan-pruned.h5") and (tmp_path / "dcgan-pruned.h5").exists()
    assert p["finetune"]["steps_run"] >= 40 and p["finetune"]["best_psnr_db"] > 20
    assert "run dense" in p["runtime_note"]
    # Pruned and original: about the same file sizes (zeros are stored; the tiny model's untrained
    # zero biases are dropped by the converter until fine-tuning moves them), smaller gzip.
    for g in p["gzip"]:
        assert 0.9 < g["size_ratio"] < 1.1 and g["gzip_ratio"] < (0.8 if g["precision"] == "float32" else 1.0), g
    # int8 keeps every zero of the float weights (0.0 quantizes to 0; BN folding scales channels).
    int8 = next(s for s in p["artifact_sparsity"] if s["precision"] == "int8")
    assert int8["zeros_kept"] and int8["sparsity"] >= p["measured_sparsity"]
    assert all(layer["found"] and layer["dtype"] == "int8" for layer in int8["layers"])
    md = (tmp_path / "report.md").read_text()
    assert "## Pruning" in md and "zeros kept" in md
    assert not list(tmp_path.glob(".*"))  # no temp files left

    from gencompress.model import load_model

    reloaded = load_model(tmp_path / "dcgan-pruned.h5")
    assert np.count_nonzero(reloaded.keras_model.get_layer("project").kernel.numpy() == 0) == next(
        r["zeros"] for r in p["layers"] if r["name"] == "project"
    )


def test_keras3_model_pruned_end_to_end(tmp_path):
    import keras as keras3  # Keras 3, even with TF_USE_LEGACY_KERAS=1

    from gencompress.bridge import TOLERANCE
    from gencompress.model import load_model

    keras3.utils.set_random_seed(7)
    z = keras3.Input((8,), name="z")
    x = keras3.layers.Dense(64, name="project")(z)
    x = keras3.layers.LeakyReLU(negative_slope=0.2, name="act")(x)
    x = keras3.layers.Reshape((4, 4, 4), name="reshape")(x)
    x = keras3.layers.Conv2DTranspose(8, 3, 2, padding="same", activation="relu", name="up")(x)
    out = keras3.layers.Conv2D(1, 3, padding="same", activation="tanh", name="image")(x)
    k3 = keras3.Model(z, out, name="k3_gen")
    path = tmp_path / "k3.keras"
    k3.save(path)

    loaded = load_model(path)
    assert loaded.format == "keras3"
    zs = np.random.default_rng(0).standard_normal((8, 8)).astype("float32")
    assert np.max(np.abs(loaded.keras_model(zs).numpy() - np.asarray(k3(zs)))) <= TOLERANCE

    out_dir = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["prune", str(path), "-o", str(out_dir), "--sparsity", "0.5", "--steps", "40", "--format", "tflite", "--then", "int8", "--min-psnr", "20", *FAST]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out_dir / "report.json").read_text())
    p = report["pruning"]
    assert p["pruned_model"].endswith("k3-pruned.keras")
    assert abs(p["measured_sparsity"] - 0.5) <= 0.01
    assert [r["name"] for r in p["layers"]] == ["project", "up", "image"]
    pruned = load_model(out_dir / "k3-pruned.keras")  # written by tf-keras: loads without the bridge
    assert pruned.format == "keras"
    kernel = pruned.keras_model.get_layer("up").kernel.numpy()
    assert abs(np.mean(kernel == 0) - 0.5) <= 0.01
    assert _psnr(pruned.keras_model(zs).numpy(), np.asarray(k3(zs))) > 20.0
    assert all(s["zeros_kept"] for s in p["artifact_sparsity"])
    # --then int8 went through the quantize step's fidelity guard, for both models; the pruned
    # model's quantized artifact is graded against the original float model.
    for a in report["artifacts"]:
        if a["precision"] != "float32":
            assert a["fallback"]["target_psnr_db"] == 20.0
            assert a["passed"] is (True if a.get("variant") == "pruned" else None)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparsity", "1.5"], "--sparsity must be between 0 and 1"),
        (["--sparsity", "0.8", "--structure", "2:4"], "use --sparsity 0.5"),
        (["--layers", "nope"], "no layer named nope"),
        (["--schedule", "polynomial", "--steps", "100", "--end-step", "500"], "past the last fine-tuning step"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--then", "int4"], "Invalid value for '--then'"),
        (["--data", "{tmp}/missing.npz"], "calibration source not found"),
    ],
)
def test_bad_options_one_line_exit_2(dcgan_h5, tmp_path, args, message):
    out = tmp_path / "out"
    args = [a.format(tmp=tmp_path) for a in args]
    result = CliRunner().invoke(cli, ["prune", str(dcgan_h5), "-o", str(out), *args, *FAST])
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert len([ln for ln in result.stderr.splitlines() if "rror" in ln]) == 1, result.stderr
    assert not out.exists() or not list(out.iterdir())


def test_pruned_float_below_min_psnr_keeps_artifacts_and_exits_3(dcgan_h5, tmp_path):
    # The original's int8 meets 45 dB; 40 steps of pruning at 0.8 cannot: the guard keeps the
    # smallest int8 (same recipe as the original's), grades it failed, and the run exits 3.
    result = CliRunner().invoke(
        cli, ["prune", str(dcgan_h5), "-o", str(tmp_path), "--sparsity", "0.8", "--steps", "40", "--format", "tflite",
              "--then", "int8", "--min-psnr", "45", *FAST]
    )
    assert result.exit_code == 3, result.output
    errors = [ln for ln in result.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "below --min-psnr 45" in errors[0] and "Traceback" not in result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    original, pruned = [a for a in report["artifacts"] if a["precision"] != "float32"]
    assert original["passed"] is None and original["fidelity"]["psnr_db"] >= 45
    assert pruned["passed"] is False and pruned["smallest_int8_search"] and pruned["fallback"] is None
    assert any("no quantization can reach it" in n for n in pruned["notes"])
    g = report["pruning"]["gzip"][1]
    assert g["original_variant"] == original["fallback"]["chosen"] and g["pruned_variant"] is not None
    assert (tmp_path / "dcgan-pruned.int8.tflite").exists()


def test_prune_then_qat_keeps_the_sparsity(dcgan_h5, tmp_path):
    """`prune … --then qat`: pruning-preserving QAT; the int8 TFLite weights keep the zeros."""
    import json

    from click.testing import CliRunner

    from gencompress.cli import cli

    args = ["prune", str(dcgan_h5), "-o", str(tmp_path), "--sparsity", "0.5", "--steps", "100", "--then", "qat",
            "--min-psnr", "0", "--calibration-samples", "32", "--eval-samples", "8", "--latency-runs", "3"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    qat = [a for a in report["artifacts"] if a.get("variant") == "pruned-qat"]
    assert {a["format"] for a in qat} == {"tflite", "onnx"} and all(a["precision"] == "int8" for a in qat)
    rows = report["qat"]["sparsity"]
    assert {r["name"] for r in rows} == {"project", "up1", "image"}
    for r in rows:  # QAT kept every pruned zero, and int8 kept them too
        assert r["float_zeros"] == r["size"] // 2 and r["int8_zeros"] == r["float_zeros"], r


@pytest.mark.slow
def test_prune_then_qat_under_the_mirrored_strategy(dcgan_h5, tmp_path):
    """The one training loop runs pruning (and its QAT) under tf.distribute too: two logical CPUs,
    set up before TensorFlow starts, so in a fresh process."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-m", "gencompress", "prune", str(dcgan_h5), "-o", str(out), "--steps", "60", "--then", "qat",
         "--format", "tflite", "--min-psnr", "0", "--distribute", "mirrored", "--cpu-devices", "2", *FAST],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for section in (report["pruning"], report["qat"]):
        assert section["distribute"]["strategy"] == "MirroredStrategy" and section["distribute"]["replicas"] == 2
    assert abs(report["pruning"]["measured_sparsity"] - 0.5) <= 0.01
    assert all(row["zeros_kept"] for row in report["qat"]["sparsity"])
