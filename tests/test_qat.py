"""Quantization-aware training: BatchNorm folding, QAT exports agreeing with the QAT Keras model
(TFLite and ONNX), layers left float, pruning-preserving QAT, and ``quantize --method qat``."""

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SAMPLES, build_conditional, build_dcgan, build_image_to_image, randomize_bn
from gencompress.cli import cli

FAST = ["--calibration-samples", "48", "--eval-samples", "16", "--latency-runs", "3"]


def _psnr(a, b, value_range):
    from gencompress.report.metrics import psnr_db

    return psnr_db(float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)), value_range)


def _noise(model, n, seed, label_ranges=None):
    from gencompress.calibration.sources import noise_set
    from gencompress.model import _tensor_info

    inputs = [_tensor_info(name, t.shape, t.dtype) for name, t in zip(model.input_names, model.inputs)]
    return noise_set(inputs, n, np.random.default_rng(seed), label_ranges)


def _feed(model, data):
    values = [data.arrays[n] for n in model.input_names]
    return values[0] if len(values) == 1 else values


def build_bn_generator(keras):
    """Dense → BN → LeakyReLU → Reshape → Conv2DTranspose → BN → LeakyReLU → Conv2D (no bias) → BN
    → Conv2DTranspose tanh, and three BatchNorms that must stay: after a LeakyReLU, after a Dense
    with a ReLU of its own, after a Dense whose output is also read by another layer."""
    keras.utils.set_random_seed(11)
    z = keras.Input((8,), name="z")
    x = keras.layers.Dense(4 * 4 * 8, use_bias=False, name="project")(z)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.LeakyReLU(0.2, name="project_act")(x)
    x = keras.layers.Reshape((4, 4, 8), name="reshape")(x)
    x = keras.layers.Conv2DTranspose(6, 3, 2, padding="same", name="up1")(x)
    x = keras.layers.BatchNormalization(name="up1_bn")(x)
    x = keras.layers.LeakyReLU(0.2, name="up1_act")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(x)
    x = keras.layers.BatchNormalization(name="conv_bn")(x)
    x = keras.layers.BatchNormalization(name="bn_after_bn")(x)  # follows a BatchNorm once conv_bn is folded
    image = keras.layers.Conv2DTranspose(1, 3, 2, padding="same", activation="tanh", name="image")(x)
    side = keras.layers.Dense(5, activation="relu", name="side")(z)
    side = keras.layers.BatchNormalization(name="bn_after_relu")(side)
    shared = keras.layers.Dense(5, name="shared")(z)
    shared_bn = keras.layers.BatchNormalization(name="bn_shared_input")(shared)
    side = keras.layers.Add(name="side_sum")([side, shared_bn, shared])
    model = keras.Model(z, [image, side], name="bn_generator")
    randomize_bn(keras, model)
    return model


# --------------------------------------------------------------------------- BatchNorm folding


def test_fold_batchnorm_is_output_equal_and_leaves_the_unfoldable(keras):
    from gencompress.compress.qat import fold_batchnorm

    model = build_bn_generator(keras)
    before = [w.copy() for w in model.get_weights()]
    folded, rows = fold_batchnorm(model)

    by_bn = {r["batchnorm"]: r for r in rows}
    assert {k: v["into"] for k, v in by_bn.items() if v["folded"]} == {"project_bn": "project", "up1_bn": "up1", "conv_bn": "conv"}
    assert "BatchNormalization" in by_bn["bn_after_bn"]["reason"]
    assert "applies relu before" in by_bn["bn_after_relu"]["reason"]
    assert "also read by other layers" in by_bn["bn_shared_input"]["reason"]
    names = [layer.name for layer in folded.layers]
    assert not {"project_bn", "up1_bn", "conv_bn"} & set(names)
    assert {"bn_after_bn", "bn_after_relu", "bn_shared_input"} <= set(names)
    assert folded.get_layer("project").use_bias and folded.get_layer("conv").use_bias

    z = np.random.default_rng(0).standard_normal((32, 8)).astype("float32")
    for a, b in zip(model(z), folded(z)):
        assert np.max(np.abs(a.numpy() - b.numpy())) <= 1e-5
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # input untouched


def test_fold_batchnorm_sequential(keras):
    from gencompress.compress.qat import fold_batchnorm

    keras.utils.set_random_seed(12)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, name="d"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.LeakyReLU(0.2),
            keras.layers.Reshape((2, 2, 4)),
            keras.layers.Conv2DTranspose(3, 3, 2, padding="same", name="ct"),
            keras.layers.BatchNormalization(name="ct_bn"),
        ]
    )
    randomize_bn(keras, model, seed=3)
    folded, rows = fold_batchnorm(model)
    assert [r["into"] for r in rows] == ["d", "ct"]
    assert isinstance(folded, keras.Sequential) and len(folded.layers) == len(model.layers) - 2
    x = np.random.default_rng(1).standard_normal((16, 6)).astype("float32")
    assert np.max(np.abs(model(x).numpy() - folded(x).numpy())) <= 1e-5


# --------------------------------------------------------------------------- exports agree with the QAT model


def _short_qat(keras, model, calibration, steps=8, seed=0):
    """Build + calibrate, then a few training steps (ranges and weights move off the calibration)."""
    from gencompress.compress.qat import build_qat_model, settle_weight_ranges

    built = build_qat_model(model, calibration)
    qat = built.model
    qat.compile(keras.optimizers.Adam(1e-4), "mse")
    for i in range(steps):
        batch = _noise(model, 16, 100 + i, {"label": 5})
        x = _feed(model, batch)
        qat.train_on_batch(x, model(x))
    settle_weight_ranges(qat)
    return built


@pytest.fixture(scope="module")
def tiny_models(keras):
    return {"dcgan": build_dcgan(keras), "conditional": build_conditional(keras), "sr": build_image_to_image(keras)}


@pytest.mark.parametrize("name", ["dcgan", "conditional", "sr"])
def test_qat_exports_agree_with_the_qat_keras_model(keras, tiny_models, tmp_path, name):
    """ConvTranspose (tfmot issue 771), UpSampling2D nearest/bilinear, Reshape, LeakyReLU, PReLU,
    tanh/sigmoid and linear outputs: TFLite int8 and QDQ ONNX within 40 dB of the QAT model."""
    from gencompress.compress.qat import convert_qat_tflite, export_qat_onnx
    from gencompress.compress.quantization import tflite_float_ops
    from gencompress.converters.runners import OnnxRunner
    from gencompress.converters.runners import TFLiteRunner
    from gencompress.model import _from_keras

    model = tiny_models[name]
    if name == "sr":  # a trained-looking PReLU (the fresh one is alpha = 0, a plain ReLU)
        prelu = model.get_layer("prelu1")
        prelu.set_weights([np.random.default_rng(0).uniform(0.05, 0.3, prelu.alpha.shape).astype("float32")])
    loaded = _from_keras(f"{name}.h5", "h5", model)
    calibration = _noise(model, 64, 1, {"label": 5})
    held = _noise(model, 24, 2, {"label": 5})
    built = _short_qat(keras, model, calibration)
    qat = built.model
    assert list(qat.output_names) == list(model.output_names) and list(qat.input_names) == list(model.input_names)
    qat_out = np.asarray(qat.predict(_feed(model, held), verbose=0))
    float_out = np.asarray(model(_feed(model, held)))
    value_range = {"dcgan": 2.0, "conditional": 1.0}.get(name, float(float_out.max() - float_out.min()))
    # Calibrated ranges: the QAT model starts close to the float one (tfmot's concat reordering
    # bug would put the conditional model near 30 dB).
    assert _psnr(qat_out, float_out, value_range) > 40.0

    from ai_edge_litert.interpreter import Interpreter

    def tflite_outputs(data):
        path = tmp_path / "qat.tflite"
        path.write_bytes(data)
        return TFLiteRunner(str(path), loaded.input_names, [t.name for t in loaded.outputs]).run_all(held)[0]

    data = convert_qat_tflite(qat)
    assert _psnr(tflite_outputs(data), qat_out, value_range) >= 40.0, name
    # Every compute op int8, but PRELU: float by default (no int8 PRELU kernel in XNNPACK) ...
    assert [u.op for u in tflite_float_ops(data)] == (["PRELU"] if name == "sr" else [])
    if name == "sr":  # ... and LiteRT's int8 PRELU when the converter may calibrate alpha
        data = convert_qat_tflite(qat, calibration=calibration)
        assert tflite_float_ops(data) == []
        assert _psnr(tflite_outputs(data), qat_out, value_range) >= 40.0

    interpreter = Interpreter(model_content=data)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    expected = {"dcgan": {"TRANSPOSE_CONV", "LEAKY_RELU", "TANH"}, "conditional": {"RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "LOGISTIC"}, "sr": {"PRELU", "RESIZE_BILINEAR"}}[name]
    assert expected <= ops
    if name == "dcgan":  # tfmot quantizes ConvTranspose kernels per tensor; so does the file
        kernels = [
            d for d in interpreter.get_tensor_details()
            if "conv2d_transpose" in d["name"] and d["dtype"] == np.int8 and len(d["shape_signature"]) == 4 and d["shape_signature"][0] != -1
        ]
        assert len(kernels) == 2 and all(len(d["quantization_parameters"]["scales"]) == 1 for d in kernels)

    onnx_bytes = export_qat_onnx(qat, loaded.inputs)
    onnx_path = tmp_path / "qat.onnx"
    onnx_path.write_bytes(onnx_bytes)
    onnx_out = OnnxRunner(str(onnx_path), loaded.input_names, []).run_all(held)[0]
    assert _psnr(onnx_out, qat_out, value_range) >= 40.0, name

    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    kinds = [n.op_type for n in graph.node]
    assert kinds.count("QuantizeLinear") >= 3 and "FakeQuantWithMinMaxVars" not in kinds
    # Kernels are int8; the label embedding (left float) and PReLU's alpha (8 values) stay float.
    weights = [i for i in graph.initializer if len(i.dims) >= 2 and not ("embed" in i.name or "prelu" in i.name)]
    assert weights and all(i.data_type == onnx.TensorProto.INT8 for i in weights), [(i.name, i.data_type) for i in weights]


def test_relu_after_dense_keeps_its_kernel_quantized(keras):
    from gencompress.compress.qat import build_qat_model

    keras.utils.set_random_seed(13)
    z = keras.Input((4,), name="z")
    x = keras.layers.Dense(8, name="dense")(z)
    x = keras.layers.ReLU(name="relu")(x)
    out = keras.layers.Dense(3, activation="sigmoid", name="out")(x)
    built = build_qat_model(keras.Model(z, out), _noise(keras.Model(z, out), 32, 0))
    names = {w.name for w in built.model.get_layer("quant_dense").weights}
    assert "quant_dense/kernel_min:0" in names  # tfmot's LayerReLUQuantize would drop it
    assert not any("post_activation" in n for n in names)  # and no fake-quant before the ReLU


def test_saturated_logits_get_a_bounded_range_and_the_int8_output_step(keras):
    from gencompress.compress.qat import SATURATION_BOUNDS, build_qat_model

    keras.utils.set_random_seed(14)
    z = keras.Input((4,), name="z")
    logits = keras.layers.Dense(16, name="image", activation="sigmoid")
    model = keras.Model(z, logits(z))
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 200.0, bias])  # logits spanning hundreds, as a saturated GAN's
    built = build_qat_model(model, _noise(model, 64, 0))
    variables = {w.name: w.numpy() for w in built.model.get_layer("quant_image").weights}
    lo, hi = variables["quant_image/pre_activation_min:0"], variables["quant_image/pre_activation_max:0"]
    bound = SATURATION_BOUNDS["sigmoid"]
    assert -bound <= lo < -bound / 2 and bound / 2 < hi <= bound
    out = np.asarray(built.model(np.random.default_rng(3).standard_normal((8, 4)).astype("float32")))
    steps = out * 256.0
    assert np.allclose(steps, np.round(steps), atol=1e-3)  # LiteRT's LOGISTIC output grid


def test_layers_tfmot_cannot_quantize_are_left_float_and_listed(keras, tmp_path):
    from gencompress.compress.qat import build_qat_model, convert_qat_tflite
    from gencompress.compress.quantization import tflite_float_ops
    from gencompress.converters.runners import TFLiteRunner
    from gencompress.tfenv import import_tf

    tf = import_tf()

    class Swish(keras.layers.Layer):
        def call(self, x):
            return x * tf.sigmoid(x)

    keras.utils.set_random_seed(15)
    z = keras.Input((6,), name="z")
    x = keras.layers.Dense(16, name="dense1")(z)
    x = Swish(name="swish")(x)
    x = keras.layers.Dense(16, name="dense2")(x)
    x = tf.math.square(x)  # a TFOpLambda layer
    out = keras.layers.Dense(8, activation="tanh", name="out")(x)
    model = keras.Model(z, out)

    calibration, held = _noise(model, 64, 0), _noise(model, 16, 1)
    built = build_qat_model(model, calibration)
    left = {d["name"]: d for d in built.left_float}
    assert set(left) == {"swish", "tf.math.square"}
    assert "custom layer" in left["swish"]["reason"] and "TFOpLambda" in left["tf.math.square"]["reason"]
    assert set(built.quantized) == {"dense1", "dense2", "out"}

    data = convert_qat_tflite(built.model)
    float_ops = {u.op for u in tflite_float_ops(data)}
    assert "SQUARE" in float_ops and "MUL" in float_ops  # the two layers compute in float
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    qat_out = built.model.predict(held.arrays["z"], verbose=0)
    out = TFLiteRunner(str(path), ["z"], ["out"]).run_all(held)[0]
    assert _psnr(out, qat_out, 2.0) >= 40.0


# --------------------------------------------------------------------------- after pruning


def test_pruning_preserving_qat_keeps_the_zeros(keras, dcgan, tmp_path):
    """prune … --then qat: zeros survive fine-tuning (a learning rate that would move them) and
    int8, ConvTranspose kernels included."""
    from gencompress.compress.pruning import prune_model
    from gencompress.config import PruneConfig, TrainingConfig
    from gencompress.pipelines.qat import qat_after_pruning

    from conftest import make_session

    pruned, info = prune_model(dcgan.keras_model, PruneConfig(sparsity=0.5, schedule="constant", training=TrainingConfig(steps=20, batch_size=16, eval_every=10)))
    pruned_loaded = dataclasses.replace(dcgan, keras_model=pruned)
    session = make_session(dcgan, 48, 16, formats=("tflite",), latency_runs=3)
    section = qat_after_pruning(pruned_loaded, session, TrainingConfig(steps=20, batch_size=16, eval_every=10, learning_rate=1e-3))
    section = section.model_dump()
    assert section["scheme"] == "tfmot 8-bit, pruning-preserving"
    rows = {r["name"]: r for r in section["sparsity"]}
    assert set(rows) == {"project", "up1", "image"}
    for name, row in rows.items():
        assert row["float_zeros"] >= 0.45 * row["size"], row
        assert row["zeros_kept"] and row["int8_zeros"] >= row["float_zeros"], row
    assert (session.workdir / "dcgan-pruned-qat.int8.tflite").exists()
    exported = section["exports"][0]
    assert exported["agrees"], exported


# --------------------------------------------------------------------------- the command


def test_quantize_method_qat_writes_ptq_and_qat_side_by_side(dcgan_h5, tmp_path):
    latents = tmp_path / "latents.npy"
    np.save(latents, np.random.default_rng(0).standard_normal((120, 8)).astype("float32"))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["quantize", str(dcgan_h5), "-o", str(out), "--method", "qat", "--steps", "20", "--data", str(latents), "--min-psnr", "25", *FAST]
    )
    assert result.exit_code == 0, result.output
    assert "dcgan-qat.int8.tflite" in result.output and "vs QAT Keras model" in result.output
    report = json.loads((out / "report.json").read_text())
    kinds = [(a["format"], a["precision"], a.get("variant")) for a in report["artifacts"]]
    assert kinds == [
        ("tflite", "float32", None), ("tflite", "int8", None), ("onnx", "float32", None), ("onnx", "int8", None),
        ("tflite", "int8", "qat"), ("onnx", "int8", "qat"),
    ]
    for a in report["artifacts"]:
        assert (out / a["path"].split("/")[-1]).exists()
        # QAT artifacts are graded; the post-training ones are the reference.
        expected = None if a["precision"] == "int8" and a.get("variant") is None else True
        assert a["passed"] is expected, a
    assert report["calibration"]["source"] == str(latents) and report["evaluation"]["source"] == str(latents)
    q = report["qat"]
    assert q["finetune"]["steps_run"] >= 10 and q["finetune"]["config"]["learning_rate"] == 1e-5
    # QAT trains the fast form: BatchNorm already folded (bn0 into its layer), transposed
    # convolutions in sub-pixel form; nothing is left for tfmot to fold
    assert not [r for r in q["batchnorm"] if r["folded"]] and "up1_pad" in q["quantized_layers"]
    # left float: only the depth-to-space shuffles (no weights; the grid is carried through them)
    assert all(r["params"] == 0 and r["name"].endswith("_shuffle") for r in q["left_float"]) and q["range_calibration"]["samples"] > 0
    assert [e["format"] for e in q["exports"]] == ["tflite", "onnx"] and all(e["agrees"] for e in q["exports"])
    assert [r["format"] for r in q["comparison"]] == ["tflite", "onnx"]
    for row in q["comparison"]:
        assert row["qat_psnr_db"] > 30 and row["ptq_int8_best"]["psnr_db"] > 30 and row["qat_minus_ptq_int8_db"] is not None
    md = (out / "report.md").read_text()
    assert "## Quantization-aware training" in md and "QAT - PTQ int8" in md
    assert not list(out.glob(".*"))


def test_comparison_takes_the_best_post_training_int8_at_the_qat_size():
    from gencompress.pipelines.qat import compare_ptq_qat
    from gencompress.results import ArtifactResult

    def artifact(fmt, precision, size, psnr, variant=None, **extra):
        return ArtifactResult(
            path=f"out/m-{variant or 'ptq'}.{precision}.{fmt}", format=fmt, precision=precision, size_bytes=size, gzip_bytes=size,
            size_vs_float=None, latency_ms={"p50": 1.0, "p90": 1.0, "runs": 1},
            fidelity={"psnr_db": psnr, "mse": 0.0, "max_abs_error": 0.0}, variant=variant, **extra,
        )

    def attempt(label, precision, size, psnr):
        return {"label": label, "precision": precision, "size_bytes": size, "psnr_db": psnr, "latency_p50_ms": 1.0, "passed": True, "slower_than_float": False}

    attempts = [
        attempt("int8", "int8", 1300, 31.0),
        attempt("int8, saturation-aware ranges", "int8", 1300, 36.0),
        attempt("int8, saturation-aware ranges, per-tensor dense weights", "int8", 1000, 35.7),
        attempt("mixed: float image", "mixed", 1010, 40.0),
    ]
    fallback = {"target_psnr_db": 30.0, "chosen": attempts[2]["label"], "size_cost_bytes": 0, "latency_cost_ms": 0.0, "attempts": attempts}
    artifacts = [
        artifact("tflite", "float32", 4000, 140.0),
        artifact("tflite", "int8", 1000, 35.7, fallback=fallback),
        artifact("tflite", "int8", 1010, 35.9, variant="qat"),
        artifact("onnx", "int8", 1300, 31.0),
        artifact("onnx", "int8", 1200, 36.1, variant="qat"),
    ]
    tflite, onnx = compare_ptq_qat(artifacts)
    # Same size: the per-tensor variant (1000 B), not the better but larger per-channel one,
    # and never a mixed-precision one.
    assert tflite["ptq_int8_best"]["psnr_db"] == 35.7 and tflite["qat_minus_ptq_int8_db"] == pytest.approx(0.2)
    assert tflite["ptq_chosen"] == attempts[2]["label"] and tflite["qat_artifact"] == "m-qat.int8.tflite"
    # Nothing as small as the QAT file: the smallest post-training int8 is the reference.
    assert onnx["ptq_int8_best"] == {"label": "int8", "size_bytes": 1300, "psnr_db": 31.0}
    assert onnx["qat_minus_ptq_int8_db"] == pytest.approx(5.1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "ptq", "--steps", "10"], "--steps only applies to --method qat or auto"),
        (["--method", "ptq", "--data", "x.npy"], "--data only applies to --method qat or auto"),
        (["--method", "qat", "--steps", "-1"], "--steps must be 0 or more"),
        (["--method", "qat", "--learning-rate", "0"], "--learning-rate must be a positive number"),
        (["--method", "qat", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--method", "qat", "--data", "{tmp}/missing.npz"], "calibration source not found"),
        (["--method", "qat", "--data", "{tmp}/a.npy", "--calibration", "{tmp}/b.npy"], "--data and --calibration name different inputs"),
        (["--method", "int4"], "Invalid value for '--method'"),
    ],
)
def test_bad_qat_options_one_line_exit_2(dcgan_h5, tmp_path, args, message):
    out = tmp_path / "out"
    args = [a.format(tmp=tmp_path) for a in args]
    result = CliRunner().invoke(cli, ["quantize", str(dcgan_h5), "-o", str(out), *args, *FAST])
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert len([ln for ln in result.stderr.splitlines() if "rror" in ln]) == 1, result.stderr
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.slow
def test_keras3_model_through_the_bridge(tmp_path):
    import keras as keras3  # Keras 3, even with TF_USE_LEGACY_KERAS=1

    keras3.utils.set_random_seed(7)
    z = keras3.Input((8,), name="z")
    x = keras3.layers.Dense(64, name="project")(z)
    x = keras3.layers.BatchNormalization(name="project_bn")(x)
    x = keras3.layers.LeakyReLU(negative_slope=0.2, name="act")(x)
    x = keras3.layers.Reshape((4, 4, 4), name="reshape")(x)
    x = keras3.layers.Conv2DTranspose(8, 3, 2, padding="same", activation="relu", name="up")(x)
    out = keras3.layers.Conv2D(1, 3, padding="same", activation="tanh", name="image")(x)
    path = tmp_path / "k3.keras"
    keras3.Model(z, out, name="k3_gen").save(path)

    result = CliRunner().invoke(cli, ["quantize", str(path), "-o", str(tmp_path / "out"), "--method", "qat", "--steps", "10", "--format", "tflite", "--min-psnr", "0", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["format"] == "keras3"
    # QAT trains the fast form: project_bn folded into project before it (nothing left to fold)
    layers = report["qat"]["quantized_layers"] + [r["name"] for r in report["qat"]["left_float"]]
    assert "project" in layers and "project_bn" not in layers and not report["qat"]["batchnorm"]
    qat = next(a for a in report["artifacts"] if a.get("variant") == "qat")
    assert qat["path"].endswith("k3-qat.int8.tflite") and qat["fidelity"]["psnr_db"] > 35
    assert report["qat"]["exports"][0]["agrees"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "sample, steps",
    [("dcgan_digits.h5", 150), ("dcgan_saturated.h5", 150), ("cvae_decoder.h5", 150), ("sr_photos.h5", 50)],
)
def test_qat_targets_on_the_samples(tmp_path, sample, steps):
    """QAT int8 .tflite >= 35 dB against the float model, no worse than post-training int8 at
    the same size, and within 40 dB of the QAT Keras model."""
    args = ["--method", "qat", "--steps", str(steps), "--min-psnr", "0", "--calibration-samples", "200", "--eval-samples", "64", "--latency-runs", "5"]
    result = CliRunner().invoke(cli, ["quantize", str(SAMPLES / sample), "-o", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {r["format"]: r for r in report["qat"]["comparison"]}
    tflite = rows["tflite"]
    assert tflite["qat_psnr_db"] >= 35.0, tflite
    assert tflite["qat_psnr_db"] >= tflite["ptq_int8_best"]["psnr_db"], tflite
    assert tflite["qat_size_bytes"] <= 1.1 * tflite["ptq_size_bytes"], tflite
    for e in report["qat"]["exports"]:
        assert e["agreement_psnr_db"] >= 40.0, e


def test_method_auto_runs_qat_only_when_post_training_misses_at_full_speed(dcgan_h5, tmp_path):
    """auto: no QAT when int8 passes; when nothing passes in int8 or mixed compute, QAT runs and
    per format the passing one of the two is shipped (graded), the other kept as the reference."""
    args = ["quantize", str(dcgan_h5), "--method", "auto", "--steps", "10", "--format", "tflite", *FAST]
    easy = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "easy"), "--min-psnr", "20"])
    assert easy.exit_code == 0, easy.output
    report = json.loads((tmp_path / "easy" / "report.json").read_text())
    assert report["qat"] is None and "no QAT" in easy.output
    assert [a.get("variant") for a in report["artifacts"]] == [None, None]

    hard = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "hard"), "--min-psnr", "70"])
    report = json.loads((tmp_path / "hard" / "report.json").read_text())
    assert "auto: quantization-aware training: no post-training tflite artifact meets 70 dB" in hard.output
    ptq, qat = report["artifacts"][1], report["artifacts"][2]
    assert qat["variant"] == "qat" and report["qat"]["comparison"]
    assert qat["fidelity"]["psnr_db"] < 70  # 10 steps do not reach 70 dB: post-training stays the deliverable
    assert qat["passed"] is None and any("--method auto: reference" in n for n in qat["notes"])
    assert ptq["passed"] is (ptq["fidelity"]["psnr_db"] >= 70) and any("--method auto: shipped" in n for n in ptq["notes"])
    assert hard.exit_code == (0 if ptq["passed"] else 3), hard.output
