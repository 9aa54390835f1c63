"""The teacher -> student fine-tuning loop, on tiny seeded models."""

import numpy as np
import pytest

from conftest import build_dcgan
from gencompress.calibration.sources import CalibrationSet, noise_set
from gencompress.compress.finetune import (
    ArrayBatches,
    NoiseBatches,
    train_to_match,
    training_sources,
)
from gencompress.config import TrainingConfig
from gencompress.errors import OptionError

RANGE = (-1.0, 1.0)


@pytest.fixture(scope="module")
def teacher(keras):
    return build_dcgan(keras)


@pytest.fixture(scope="module")
def dcgan_loaded(dcgan):
    return dcgan


def _perturbed_copy(keras, model, scale=0.5, seed=0):
    student = keras.models.clone_model(model)
    rng = np.random.default_rng(seed)
    weights = []
    for w, v in zip(model.weights, model.get_weights()):
        if w.trainable and v.ndim > 1:
            v = v + rng.normal(0.0, scale * (v.std() + 1e-6), v.shape).astype(v.dtype)
        weights.append(v)
    student.set_weights(weights)
    return student


def _held(model, n=32, seed=9):
    from gencompress.model import _tensor_info

    inputs = [_tensor_info(name, t.shape, t.dtype) for name, t in zip(model.input_names, model.inputs)]
    return noise_set(inputs, n, np.random.default_rng(seed), None), inputs


def test_recovers_a_perturbed_student_stops_early_and_restores_the_best(keras, teacher, capsys):
    teacher_before = [w.copy() for w in teacher.get_weights()]
    held, inputs = _held(teacher)
    student = _perturbed_copy(keras, teacher)
    # A frozen, perturbed first layer: the rest can compensate only in part, so PSNR plateaus.
    student.get_layer("project").trainable = False
    config = TrainingConfig(steps=600, batch_size=16, learning_rate=3e-3, eval_every=10, patience=3, min_delta=0.5)
    result = train_to_match(student, teacher, NoiseBatches(inputs, 16, seed=1), held, RANGE, config)

    assert result.history[0]["step"] == 0 and result.history[0]["loss"] is None
    assert result.initial_psnr_db < 30.0
    assert result.best_psnr_db > result.initial_psnr_db + 3.0, result.history
    assert result.best_psnr_db == max(h["psnr_db"] for h in result.history[1:])
    # Stopped early: well before 600 steps, and only after `patience` evaluations without a
    # 0.5 dB gain over the best that reset the counter.
    assert result.stopped_early and result.steps_run < 600
    assert [h["step"] for h in result.history] == list(range(0, result.steps_run + 1, 10))
    reference, waits = -np.inf, []
    for h in result.history[1:]:  # the patience counter, replayed from the history
        reference, wait = (h["psnr_db"], 0) if h["psnr_db"] > reference + 0.5 else (reference, waits[-1] + 1)
        waits.append(wait)
    assert waits[-1] == 3 and max(waits[:-1]) < 3
    # The best weights are back: scoring the student again gives the best PSNR.
    out = student.predict(held.arrays["z"], verbose=0)
    ref = teacher.predict(held.arrays["z"], verbose=0)
    from gencompress.report.metrics import psnr_db

    assert psnr_db(float(np.mean((out.astype(np.float64) - ref) ** 2)), 2.0) == pytest.approx(result.best_psnr_db, abs=1e-3)
    assert result.final_psnr_db == result.best_psnr_db
    # The teacher is frozen; BatchNorm layers of the student are trainable again afterwards.
    assert all(np.array_equal(a, b) for a, b in zip(teacher_before, teacher.get_weights()))
    assert all(layer.trainable for layer in student.layers if layer.name != "project")
    # Not a terminal: no live line, but the summary line is always printed.
    err = capsys.readouterr().err
    assert "fine-tune: " in err and f"at step {result.best_step}" in err and "\r" not in err


def test_same_seed_same_result_and_callbacks_and_extra_loss(keras, teacher):
    held, inputs = _held(teacher)
    seen, runs = [], []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    for _ in range(2):
        student = _perturbed_copy(keras, teacher)
        config = TrainingConfig(steps=40, batch_size=8, eval_every=20)
        result = train_to_match(student, teacher, NoiseBatches(inputs, 8, seed=3), held, RANGE, config, callbacks=[Count()], progress=False)
        runs.append((result.history, student.get_weights()))
    assert len(seen) == 80  # the user callback saw every step of both runs
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))

    # extra_loss is added to the reconstruction loss.
    student = _perturbed_copy(keras, teacher)
    result = train_to_match(
        student, teacher, NoiseBatches(inputs, 8), held, RANGE, TrainingConfig(steps=20, batch_size=8, eval_every=20),
        extra_loss=lambda y_true, y_pred: 5.0, progress=False,
    )
    assert result.history[-1]["loss"] >= 5.0


def test_mirrored_strategy_and_zero_steps(keras, teacher):
    from gencompress.tfenv import import_tf

    tf = import_tf()
    held, inputs = _held(teacher)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        student = _perturbed_copy(keras, teacher)
    result = train_to_match(
        student, teacher, NoiseBatches(inputs, 8), held, RANGE, TrainingConfig(steps=40, batch_size=8, eval_every=20),
        progress=False, strategy=strategy,
    )
    assert result.steps_run == 40 and result.best_psnr_db > result.initial_psnr_db

    untouched = _perturbed_copy(keras, teacher)
    before = untouched.get_weights()
    result = train_to_match(untouched, teacher, NoiseBatches(inputs, 8), held, RANGE, TrainingConfig(steps=0), progress=False)
    assert result.steps_run == 0 and len(result.history) == 1
    assert all(np.array_equal(a, b) for a, b in zip(before, untouched.get_weights()))


def test_batch_streams(conditional):
    # Noise: fresh seeded batches, valid ids for the label input.
    first = [b for _, b in zip(range(3), NoiseBatches(conditional.inputs, 5, seed=0, label_ranges=conditional.label_ranges))]
    again = next(iter(NoiseBatches(conditional.inputs, 5, seed=0, label_ranges=conditional.label_ranges)))
    assert np.array_equal(first[0]["z"], again["z"]) and not np.array_equal(first[0]["z"], first[1]["z"])
    labels = np.concatenate([b["label"] for b in first])
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 5

    # Arrays: shuffled cycles, every sample once per cycle, fixed batch size.
    data = CalibrationSet({"x": np.arange(10, dtype=np.float32)[:, None]}, "data.npy")
    batches = [b["x"][:, 0] for _, b in zip(range(5), ArrayBatches(data, 4, seed=0))]
    assert all(len(b) == 4 for b in batches)
    stream = np.concatenate(batches)
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert list(stream[:10]) != list(range(10))

    # Finite data: a validation tail is split off the training part.
    train, val = training_sources(conditional, CalibrationSet({"z": np.zeros((20, 4), np.float32), "label": np.zeros((20, 1), np.int32)}, "d.npz"), 4, 0, 8)
    assert isinstance(train, ArrayBatches) and len(train.data) == 18 and len(val) == 2
    noise_train, noise_val = training_sources(conditional, noise_set(conditional.inputs, 4, np.random.default_rng(0), conditional.label_ranges), 4, 0, 8)
    assert isinstance(noise_train, NoiseBatches) and len(noise_val) == 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"learning_rate": -1.0}, "--learning-rate"),
        ({"loss": "huber"}, "unknown fine-tuning loss"),
        ({"steps": -5}, "--steps"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(OptionError, match=message):
        TrainingConfig(**kwargs)
