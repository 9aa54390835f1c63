"""Activation ranges chosen for the quantization error (the search's "ranges for the least error")."""

import numpy as np

from gencompress.compress.ranges import best_range


def test_rare_large_values_do_not_set_the_range():
    """A ReLU output: a million values mostly under 3, a few out to 9. Min/max spends the 256
    levels on the rare ones; the chosen range (5.8 here) clips them and rounds the rest finer,
    with less total error."""
    rng = np.random.default_rng(0)
    values = np.concatenate([np.abs(rng.normal(0, 1, 1_000_000)), [9.0, 8.0, 7.5]])
    lo, hi = best_range(values, 0.0, 9.0)
    assert lo == 0.0 and 3.0 < hi < 7.0

    def error(a, b):
        step = (b - a) / 255
        q = np.round((np.clip(values, a, b) - a) / step) * step + a
        return float(np.mean((q - values) ** 2))

    assert error(lo, hi) < 0.7 * error(0.0, 9.0)


def test_symmetric_tensor_keeps_both_ends_and_a_tight_one_is_left_alone():
    rng = np.random.default_rng(1)
    lo, hi = best_range(rng.normal(0, 1, 50_000), -6.0, 6.0)
    assert -6.0 <= lo < -2.0 and 2.0 < hi <= 6.0
    uniform = rng.uniform(-1, 1, 50_000)
    assert best_range(uniform, -1.0, 1.0) == (-1.0, 1.0)  # every level used: nothing to clip


def test_calibration_keeps_values_from_every_channel(keras, tmp_path):
    """The kept values are random positions: a stride aliased with the channel count and kept one
    channel of a 64x64 tensor (the chosen ranges were a third of the tensor's and int8 fell from
    38 to 15 dB on a DCGAN)."""
    from gencompress.converters.tflite import calibrate
    from gencompress.model import from_keras

    from conftest import make_session

    x = keras.Input((8, 8, 4), name="x")
    y = keras.layers.Conv2D(8, 1, name="c", kernel_initializer="zeros",
                            bias_initializer=keras.initializers.Constant(np.arange(8, dtype="float32")))(x)
    model = from_keras(keras.Model(x, keras.layers.ReLU(name="r")(y)))
    session = make_session(model, 16, 2)
    kept: dict = {}
    calibrate(model, session.calibration, keep=kept)
    # the conv output holds channel c's constant c at every position: all eight must be kept
    assert any(set(np.unique(np.concatenate(v)).tolist()) == set(range(8)) for v in kept.values())
