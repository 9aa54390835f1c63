"""Distillation: width/depth students, a user's student, training (pixel and feature loss),
checkpoint resume, the mirrored strategy on two logical CPUs, and the ``distill`` command."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, build_dcgan, build_image_to_image
from gencompress.calibration.sources import noise_set
from gencompress.cli import cli
from gencompress.compress.distillation import (
    TrainingCheckpoint,
    derive_student,
    feature_pairs,
    train_student,
)
from gencompress.compress.finetune import NoiseBatches
from gencompress.config import DistillConfig, TrainingConfig
from gencompress.errors import OptionError, UnsupportedModelError
from gencompress.model import _tensor_info

FAST = ["--calibration-samples", "32", "--eval-samples", "16", "--latency-runs", "3"]
RANGE = (-1.0, 1.0)


@pytest.fixture(scope="module")
def teacher(keras):
    return build_dcgan(keras)


def _inputs(model):
    return [_tensor_info(n, t.shape, t.dtype) for n, t in zip(model.input_names, model.inputs)]


def _held(model, n=32):
    return noise_set(_inputs(model), n, np.random.default_rng(9), None)


def _shapes(tensors):
    return [tuple(t.shape) for t in tensors]


def test_width_student_keeps_the_interface_and_scales_hidden_channels(keras, teacher):
    student, plan = derive_student(teacher, DistillConfig(width=0.5), seed=0)
    assert _shapes(student.inputs) == _shapes(teacher.inputs) and _shapes(student.outputs) == _shapes(teacher.outputs)
    assert [layer.name for layer in student.layers] == [layer.name for layer in teacher.layers]
    # project feeds Reshape(4, 4, 8): the Reshape's channels halve and the Dense follows (4*4*4).
    assert student.get_layer("reshape").output_shape == (None, 4, 4, 4)
    assert student.get_layer("project").units == 64 and student.get_layer("up1").filters == 2
    assert student.get_layer("image").filters == 1  # the output layer stays
    assert plan.resized == [
        {"name": "project", "class": "Dense", "teacher": 128, "student": 64},
        {"name": "up1", "class": "Conv2DTranspose", "teacher": 4, "student": 2},
    ]
    # 8*64 + bn 4*64 + 3*3*4*2+2 + 3*3*2*1+1 = 861 of the teacher's 1,865.
    assert (student.count_params(), teacher.count_params()) == (861, 1865)
    # Seeded: the same seed gives the same fresh weights, another seed others.
    again, _ = derive_student(teacher, DistillConfig(width=0.5), seed=0)
    other, _ = derive_student(teacher, DistillConfig(width=0.5), seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(student.get_weights(), again.get_weights()))
    assert not np.array_equal(student.get_layer("project").kernel.numpy(), other.get_layer("project").kernel.numpy())


def test_channels_tied_to_inputs_and_outputs_stay(keras):
    # tiny_sr: residual conv + bilinear skip of the input are added: the residual's 3 channels
    # are tied to the input's; only conv1 (and its PReLU, through its input) narrows.
    i2i = build_image_to_image(keras)
    student, plan = derive_student(i2i, DistillConfig(width=0.25))
    assert [(r["name"], r["student"]) for r in plan.resized] == [("conv1", 2)]
    assert student.get_layer("residual").filters == 3 and student.get_layer("prelu1").alpha.shape[-1] == 2
    assert _shapes(student.outputs) == [(None, 16, 16, 3)]


def test_depth_drops_shape_preserving_and_residual_blocks(keras):
    keras.utils.set_random_seed(6)
    x_in = keras.Input((8, 8, 3), name="x")
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(x_in)
    for i in range(3):  # residual blocks
        h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"res{i}_a")(x)
        h = keras.layers.Conv2D(8, 3, padding="same", name=f"res{i}_b")(h)
        x = keras.layers.Add(name=f"res{i}_add")([x, h])
    x = keras.layers.Conv2D(8, 3, padding="same", name="plain")(x)
    x = keras.layers.BatchNormalization(name="plain_bn")(x)
    x = keras.layers.ReLU(name="plain_act")(x)
    out = keras.layers.Conv2D(3, 1, activation="tanh", name="image")(x)
    model = keras.Model(x_in, out, name="resnetish")

    student, plan = derive_student(model, DistillConfig(width=0.5, depth=0.5), seed=0)
    assert plan.droppable_blocks == 4
    # Two of four dropped, spread over the network (the 2nd and the 4th).
    assert plan.dropped_blocks == [["res1_a", "res1_b", "res1_add"], ["plain", "plain_bn", "plain_act"]]
    names = [layer.name for layer in student.layers]
    assert {"res0_add", "res2_add"} <= set(names) and not {"res1_a", "res1_add", "plain", "plain_bn"} & set(names)
    assert student.get_layer("res2_a").filters == 4 and student.get_layer("image").filters == 3
    assert _shapes(student.outputs) == [(None, 8, 8, 3)]
    z = np.zeros((2, 8, 8, 3), np.float32)
    assert student(z).shape == (2, 8, 8, 3)
    every, plan = derive_student(model, DistillConfig(width=1.0, depth=0.0), seed=0)
    assert len(plan.dropped_blocks) == 4 and every.count_params() < model.count_params()
    # The DCGAN has no block whose output has its input's shape.
    with pytest.raises(UnsupportedModelError, match="no block that can be dropped"):
        derive_student(build_dcgan(keras), DistillConfig(depth=0.5))


def test_training_improves_held_out_psnr_and_feature_loss_trains(keras, teacher):
    held = _held(teacher)
    inputs = _inputs(teacher)
    config = TrainingConfig(steps=150, batch_size=16, eval_every=50, learning_rate=3e-3)
    results = {}
    for weight in (0.0, 1.0):
        student, _ = derive_student(teacher, DistillConfig(width=0.5), seed=0)
        result, pairs = train_student(student, teacher, NoiseBatches(inputs, 16, 0), held, RANGE, config, feature_weight=weight, progress=False)
        results[weight] = (result, pairs, student)
    plain, _, _ = results[0.0]
    assert plain.initial_psnr_db < 27.0 and plain.best_psnr_db > plain.initial_psnr_db + 3.0, plain.history
    assert plain.best_psnr_db > 29.0

    result, pairs, student = results[1.0]
    # Matched by spatial size: the Reshape output at 4x4 and the last 8x8 activation.
    assert [(p.teacher_layer, p.student_layer, p.spatial, p.teacher_channels, p.student_channels) for p in pairs] == [
        ("reshape", "reshape", (4, 4), 8, 4),
        ("act1", "act1", (8, 8), 4, 2),
    ]
    assert result.best_psnr_db > result.initial_psnr_db + 3.0
    # The projections trained with the student but are not part of it.
    assert not any("distill" in layer.name for layer in student.layers)
    assert len(student.get_weights()) == len(derive_student(teacher, DistillConfig(width=0.5))[0].get_weights())


def test_feature_pairs_of_a_different_student(keras, teacher):
    keras.utils.set_random_seed(3)
    z = keras.Input((8,), name="z")
    x = keras.layers.Dense(4 * 4 * 3, name="fc")(z)
    x = keras.layers.Reshape((4, 4, 3), name="grid")(x)
    x = keras.layers.UpSampling2D(name="up")(x)
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="c8")(x)
    x = keras.layers.UpSampling2D(name="up16")(x)
    out = keras.layers.Conv2D(1, 3, padding="same", activation="tanh", name="image")(x)
    other = keras.Model(z, out, name="other")
    pairs = feature_pairs(teacher, other)
    # The last tensor at each size both have (16x16 is only the teacher's output).
    assert [(p.teacher_layer, p.student_layer, p.spatial, p.student_channels) for p in pairs] == [
        ("reshape", "grid", (4, 4), 3),
        ("act1", "c8", (8, 8), 5),
    ]


def test_checkpoint_resume_continues_where_it_stopped_and_matches_a_straight_run(keras, teacher, tmp_path):
    held, inputs = _held(teacher), _inputs(teacher)
    config = TrainingConfig(steps=100, batch_size=16, eval_every=20, learning_rate=3e-3)

    class Crash(keras.callbacks.Callback):
        """Dies in the middle of the third round (after the checkpoint at step 40)."""

        def on_train_batch_begin(self, batch, logs=None):
            self.n = getattr(self, "n", 0) + 1
            if self.n == 47:
                raise KeyboardInterrupt

    def run(checkpoint=None, callbacks=()):
        student, _ = derive_student(teacher, DistillConfig(width=0.5), seed=0)
        result, _ = train_student(
            student, teacher, NoiseBatches(inputs, 16, 0), held, RANGE, config, feature_weight=0.5,
            checkpoint=checkpoint, callbacks=callbacks, progress=False,
        )
        return result, student.get_weights()

    straight, straight_weights = run()
    ckpt_dir = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(TrainingCheckpoint(ckpt_dir, {"run": 1}), [Crash()])
    assert sorted(p.name for p in ckpt_dir.glob("loop-*.json")) == ["loop-20.json", "loop-40.json"]

    resumed_ckpt = TrainingCheckpoint(ckpt_dir, {"run": 1})
    resumed, resumed_weights = run(resumed_ckpt)
    assert resumed_ckpt.resumed_from == 40
    assert resumed.history == straight.history and resumed.steps_run == 100
    # Same batches from step 41 on, same Adam state, same learning rate: the same weights, bit for bit.
    assert all(np.array_equal(a, b) for a, b in zip(straight_weights, resumed_weights))
    # A finished run resumes as finished; another run's settings are refused.
    done = TrainingCheckpoint(ckpt_dir, {"run": 1})
    _, again = run(done)
    assert done.resumed_from == 100 and all(np.array_equal(a, b) for a, b in zip(straight_weights, again))
    with pytest.raises(OptionError, match="holds a checkpoint of a different run"):
        run(TrainingCheckpoint(ckpt_dir, {"run": 2}))


def test_distill_command_then_int8(dcgan_h5, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        # --init random: a fresh student (far from the teacher) through the int8 step
        cli, ["distill", str(dcgan_h5), "-o", str(out), "--width", "0.5", "--init", "random", "--steps", "200", "--eval-every", "50", "--then", "int8",
              "--min-psnr", "20", *FAST]
    )
    assert result.exit_code == 0, result.output
    assert "student: 861 parameters, 46.2% of the teacher's 1,865" in result.output
    report = json.loads((out / "report.json").read_text())
    kinds = [(a["format"], a["precision"], a.get("variant")) for a in report["artifacts"]]
    # ONNX: onnxruntime runs this student's ConvTranspose in float either way (no int8 kernel),
    # so the search keeps it float on purpose (mixed) rather than ship int8 classed slow
    onnx_int8 = report["artifacts"][5]["precision"]
    assert onnx_int8 in ("int8", "mixed") and kinds == [
        ("tflite", "float32", None), ("onnx", "float32", None),
        ("tflite", "float32", "student"), ("tflite", "int8", "student"), ("onnx", "float32", "student"), ("onnx", onnx_int8, "student"),
    ]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["dcgan.float32.tflite", "dcgan.float32.onnx", "dcgan-student.h5", "dcgan-student.float32.tflite", "dcgan-student.int8.tflite",
         "dcgan-student.float32.onnx", f"dcgan-student.{onnx_int8}.onnx", "report.html", "report.json", "report.md", "samples.png"]
    )
    d = report["distillation"]
    assert (d["teacher_params"], d["student_params"], d["width"]) == (1865, 861, 0.5)
    assert d["finetune"]["steps_run"] == 200 and d["finetune"]["best_psnr_db"] > d["finetune"]["initial_psnr_db"] + 3
    for row in d["side_by_side"]:  # the student's artifacts: smaller than the teacher's, close to it
        # (not ONNX int8: on a 1.9K-parameter model the QDQ nodes' scales outweigh the weights)
        if row["format"] != "onnx" or row["precision"] == "float32":
            assert row["size_ratio"] < (0.8 if row["precision"] == "float32" else 0.6), row
        assert row["psnr_db"] >= 20.0, row
    for a in report["artifacts"]:
        assert a["passed"] is (True if a.get("variant") == "student" else None)
        if a["precision"] in ("int8", "mixed"):
            assert a["fallback"]["target_psnr_db"] == 20.0
    md = (out / "report.md").read_text()
    assert "## Distillation" in md and "project 128→64" in md
    from gencompress.model import load_model

    student = load_model(out / "dcgan-student.h5")
    assert student.params == 861 and student.inputs == load_model(dcgan_h5).inputs
    assert not list(out.glob(".*"))  # no temp files left


def test_then_qat_quantization_aware_training_of_the_student(dcgan_h5, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["distill", str(dcgan_h5), "-o", str(out), "--steps", "100", "--eval-every", "50", "--format", "tflite",
              "--then", "qat", "--min-psnr", "20", *FAST]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    kinds = [(a["precision"], a.get("variant")) for a in report["artifacts"]]
    assert kinds == [("float32", None), ("float32", "student"), ("int8", "student-qat")]
    qat = next(a for a in report["artifacts"] if a.get("variant") == "student-qat")
    assert qat["path"].endswith("dcgan-student-qat.int8.tflite") and qat["passed"] is True
    d = report["distillation"]
    assert d["qat"]["exports"][0]["agrees"] and d["qat"]["finetune"]["steps_run"] > 0
    assert [r["precision"] for r in d["side_by_side"]] == ["float32", "int8 (qat)"]


def test_user_student_architecture_with_feature_loss(keras, dcgan_h5, tmp_path):
    # Another architecture (upsampling + conv instead of transposed convs), output named differently.
    keras.utils.set_random_seed(8)
    z = keras.Input((8,), name="z")
    x = keras.layers.Dense(4 * 4 * 6, activation="relu", name="fc")(z)
    x = keras.layers.Reshape((4, 4, 6), name="grid")(x)
    x = keras.layers.UpSampling2D(name="up8")(x)
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="c8")(x)
    x = keras.layers.UpSampling2D(name="up16")(x)
    out = keras.layers.Conv2D(1, 3, padding="same", activation="tanh", name="picture")(x)
    arch = tmp_path / "arch.keras"
    keras.Model(z, out, name="user_student").save(arch)
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["distill", str(dcgan_h5), "-o", str(out_dir), "--student", str(arch), "--feature-loss", "0.5", "--steps", "150",
              "--eval-every", "50", "--format", "tflite", "--min-psnr", "0", *FAST]
    )
    assert result.exit_code == 0, result.output
    d = json.loads((out_dir / "report.json").read_text())["distillation"]
    assert d["student_source"] == str(arch) and d["width"] is None and d["resized_layers"] == []
    assert [(p["teacher_layer"], p["student_layer"]) for p in d["feature_loss"]["pairs"]] == [("reshape", "grid"), ("act1", "c8")]
    assert d["finetune"]["best_psnr_db"] > d["finetune"]["initial_psnr_db"] + 3.0
    from gencompress.model import load_model

    saved = load_model(out_dir / "dcgan-student.h5")  # the teacher's format, the student's layers
    assert [t.name for t in saved.outputs] == ["picture"] and saved.params == d["student_params"]
    assert not any("distill" in layer.name for layer in saved.keras_model.layers)


def test_user_student_and_bad_options_one_line_exit_2(keras, dcgan_h5, tmp_path):
    keras.utils.set_random_seed(4)
    z = keras.Input((8,), name="z")
    wrong = keras.Model(z, keras.layers.Reshape((8, 8, 1), name="grid")(keras.layers.Dense(64, name="fc")(z)), name="wrong")
    wrong_path = tmp_path / "wrong.h5"
    wrong.save(wrong_path)
    cases = [
        (["--student", str(wrong_path)], "--student output 'grid' is [None, 8, 8, 1], the teacher's 'image' is [None, 16, 16, 1]"),
        (["--student", str(wrong_path), "--width", "0.5"], "give it or --width, not both"),
        (["--width", "1.5"], "--width must be in (0, 1]"),
        (["--depth", "0.5"], "no block that can be dropped"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--distribute", "multi-worker"], "TF_CONFIG"),
        (["--then", "int4"], "Invalid value for '--then'"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        result = CliRunner(env={"TF_CONFIG": None}).invoke(cli, ["distill", str(dcgan_h5), "-o", str(out), *args, *FAST])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, result.stderr
        assert len([ln for ln in result.stderr.splitlines() if "rror" in ln]) == 1, result.stderr
        assert not out.exists() or not list(out.iterdir())


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(dcgan_h5, tmp_path):
    # Logical devices must be configured before TensorFlow starts: a fresh process.
    out = tmp_path / "out"
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "gencompress", "distill", str(dcgan_h5), "-o", str(out), "--init", "random", "--steps", "100", "--eval-every", "50",
         "--format", "tflite", "--min-psnr", "0", "--distribute", "mirrored", "--cpu-devices", "2", *FAST],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads((out / "report.json").read_text())["distillation"]
    assert d["distribute"]["strategy"] == "MirroredStrategy" and d["distribute"]["replicas"] == 2
    assert [dev.rsplit(":", 2)[-2:] for dev in d["distribute"]["devices"]] == [["CPU", "0"], ["CPU", "1"]]
    ft = d["finetune"]
    assert ft["steps_run"] == 100 and ft["best_psnr_db"] > ft["initial_psnr_db"] + 3.0, ft


def _free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_strategy_with_two_local_workers(dcgan_h5, tmp_path):
    # Two processes on 127.0.0.1, each told its place in the cluster by TF_CONFIG, as on two machines.
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    out = tmp_path / "out"
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "gencompress", "distill", str(dcgan_h5), "-o", str(out), "--init", "random", "--steps", "100", "--eval-every", "50",
                 "--format", "tflite", "--min-psnr", "0", "--distribute", "multi-worker", "--checkpoint-dir", str(tmp_path / "ckpt"), *FAST],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
        )
    try:
        logs = [p.communicate(timeout=500)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    chief = json.loads((out / "report.json").read_text())["distillation"]
    other = json.loads((out / "worker-1" / "report.json").read_text())["distillation"]  # non-chief: its own folder
    assert chief["distribute"]["strategy"] == "MultiWorkerMirroredStrategy" and chief["distribute"]["replicas"] == 2
    assert (chief["distribute"]["chief"], other["distribute"]["chief"]) == (True, False)
    # Synchronous training: both workers hold the same model at every evaluation.
    assert chief["finetune"]["history"] == other["finetune"]["history"]
    assert chief["finetune"]["best_psnr_db"] > chief["finetune"]["initial_psnr_db"] + 3.0
    assert (tmp_path / "ckpt" / "ckpt-100.index").exists() and (tmp_path / "ckpt" / "worker-1" / "ckpt-100.index").exists()
