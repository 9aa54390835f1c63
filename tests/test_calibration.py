"""Calibration and held-out sets: sources, validation, disjoint splits, determinism."""

import numpy as np
import pytest
from PIL import Image

from gencompress.calibration import build_sets
from gencompress.errors import CalibrationError
from gencompress.model import TensorInfo

Z = TensorInfo("z", (None, 8), "float32")
LABEL = TensorInfo("label", (None, 1), "int32")
IMAGE = TensorInfo("image", (None, 6, 5, 3), "float32")


def test_noise_shapes_labels_and_disjoint_streams():
    calib, held = build_sets([Z, LABEL], "noise", 50, 20, seed=7, label_ranges={"label": 4})
    assert calib.arrays["z"].shape == (50, 8) and held.arrays["z"].shape == (20, 8)
    assert calib.arrays["label"].dtype == np.int32
    assert set(np.unique(calib.arrays["label"])) == {0, 1, 2, 3}
    assert abs(float(calib.arrays["z"].std()) - 1.0) < 0.1
    # The held-out latents are not the calibration latents.
    assert not np.isin(held.arrays["z"], calib.arrays["z"]).any()
    again, _ = build_sets([Z, LABEL], "noise", 50, 20, seed=7, label_ranges={"label": 4})
    assert np.array_equal(again.arrays["z"], calib.arrays["z"])
    other, _ = build_sets([Z, LABEL], "noise", 50, 20, seed=8, label_ranges={"label": 4})
    assert not np.array_equal(other.arrays["z"], calib.arrays["z"])


def test_integer_input_without_known_range_needs_data():
    with pytest.raises(CalibrationError, match="integer input 'label'"):
        build_sets([Z, LABEL], "noise", 10, 5, seed=0)


def test_npz_split_is_disjoint_and_seeded(tmp_path):
    z = np.arange(30 * 8, dtype=np.float64).reshape(30, 8)  # rows are unique
    labels = np.arange(30).reshape(30, 1) % 3
    np.savez(tmp_path / "d.npz", z=z, label=labels)
    calib, held = build_sets([Z, LABEL], str(tmp_path / "d.npz"), 20, 10, seed=0)
    assert len(calib) == 20 and len(held) == 10
    assert calib.arrays["z"].dtype == np.float32 and calib.arrays["label"].dtype == np.int32
    rows = {tuple(r) for r in calib.arrays["z"]}
    assert not rows & {tuple(r) for r in held.arrays["z"]}
    # too few samples for the request: proportional split, nothing shared
    calib, held = build_sets([Z, LABEL], str(tmp_path / "d.npz"), 200, 64, seed=0)
    assert len(held) == round(30 * 64 / 264) and len(calib) + len(held) == 30


def test_npy_single_input(tmp_path):
    np.save(tmp_path / "z.npy", np.random.default_rng(0).standard_normal((12, 8)).astype("float32"))
    calib, held = build_sets([Z], str(tmp_path / "z.npy"), 8, 4, seed=0)
    assert calib.arrays["z"].shape == (8, 8) and held.arrays["z"].shape == (4, 8)


def test_image_folder_resized_and_scaled(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    Image.fromarray(np.full((7, 7), 255, np.uint8)).save(tmp_path / "white.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    calib, held = build_sets([IMAGE], str(tmp_path), 4, 2, seed=0, input_range=(-1.0, 1.0))
    assert calib.arrays["image"].shape == (4, 6, 5, 3) and len(held) == 2
    both = np.concatenate([calib.arrays["image"], held.arrays["image"]])
    assert both.min() >= -1.0 and both.max() <= 1.0
    assert np.isclose(both.max(), 1.0)  # the white image maps to the top of the range


@pytest.mark.parametrize(
    "arrays, inputs, message",
    [
        ({"z": np.zeros((5, 7))}, [Z], r"shape \[8\], got \[7\]"),
        ({"z": np.full((5, 8), np.nan)}, [Z], "40 NaN/Inf"),
        ({"z": np.zeros((5, 8)), "label": np.zeros((5, 1), np.float32)}, [Z, LABEL], "label' is int32, got float32"),
        ({"z": np.zeros((5, 8))}, [Z, LABEL], "no array for input\\(s\\) label"),
        ({"z": np.array([["a"] * 8] * 5)}, [Z], "needs numbers"),
        ({"z": np.zeros((1, 8))}, [Z], "at least 2 samples"),
    ],
)
def test_bad_array_files(tmp_path, arrays, inputs, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CalibrationError, match=message):
        build_sets(inputs, str(tmp_path / "bad.npz"), 10, 5, seed=0)


def test_bad_sources(tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        build_sets([Z], str(tmp_path / "nope.npy"), 10, 5, seed=0)
    with pytest.raises(CalibrationError, match="no PNG/JPEG images"):
        build_sets([IMAGE], str(tmp_path), 10, 5, seed=0)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(CalibrationError, match="cannot read image"):
        build_sets([IMAGE], str(tmp_path), 10, 5, seed=0)
    with pytest.raises(CalibrationError, match="one image input"):
        build_sets([Z], str(tmp_path), 10, 5, seed=0)
    np.save(tmp_path / "one.npy", np.zeros((4, 8)))
    with pytest.raises(CalibrationError, match="model has 2 inputs"):
        build_sets([Z, LABEL], str(tmp_path / "one.npy"), 10, 5, seed=0)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(CalibrationError, match="not a .npy/.npz"):
        build_sets([Z], str(tmp_path / "x.csv"), 10, 5, seed=0)


def test_a_float_input_read_by_an_embedding_is_a_label(keras):
    """Keras 3's Input(shape=(1,)) is float32: a conditional GAN saved so (label -> Embedding)
    got standard-normal 'labels' (-1, 0.3) from noise calibration and the Embedding refused them
    (a traceback, exit 1, on a published cGAN). Any input an Embedding reads gets valid ids."""
    from gencompress.calibration import Calibration
    from gencompress.model import from_keras

    z = keras.Input((4,), name="z")
    label = keras.Input((1,), name="label")  # float32
    e = keras.layers.Flatten()(keras.layers.Embedding(7, 3)(label))
    out = keras.layers.Dense(8, activation="tanh")(keras.layers.Concatenate()([z, e]))
    model = from_keras(keras.Model([z, label], out))
    assert model.label_ranges == {"label": 7}
    calib, held = Calibration.noise().sets(model.inputs, model.label_ranges, 32, 16, seed=0)
    for data in (calib, held):
        ids = data.arrays["label"]
        assert ids.dtype == np.float32 and set(np.unique(ids)) <= set(range(7)) and len(np.unique(ids)) > 3
    assert held.tail == 2 and np.linalg.norm(held.arrays["z"][-1]) > 3.0  # the latent goes to the tail, the label does not
    outputs = model.predict(held.arrays)
    assert np.all(np.isfinite(outputs[0]))


def test_image_inputs_get_image_like_noise():
    """White noise is no image: image inputs get random fields with natural images' 1/f
    amplitude spectrum, each spanning --input-range, channels mostly shared; latents stay
    standard normal; the same seed gives the same images."""
    from gencompress.calibration.sources import image_noise, is_image, noise_set

    image, latent = TensorInfo("photo", (None, 64, 64, 3), "float32"), TensorInfo("z", (None, 64), "float32")
    assert is_image(image) and not is_image(latent) and not is_image(TensorInfo("wave", (None, 16000, 1), "float32"))
    data = noise_set([image, latent], 16, np.random.default_rng(3), None, (0.0, 1.0))
    x = data.arrays["photo"]
    assert x.dtype == np.float32 and x.shape == (16, 64, 64, 3)
    assert np.allclose(x.reshape(16, -1).min(axis=1), 0.0) and np.allclose(x.reshape(16, -1).max(axis=1), 1.0)
    assert abs(float(np.std(data.arrays["z"])) - 1.0) < 0.1
    # amplitude falls as 1/f: the spectrum's log-log slope over mid frequencies is about -1
    spectrum = np.abs(np.fft.fft2(x[..., 0] - x[..., 0].mean(axis=(1, 2), keepdims=True))).mean(axis=0)
    f = np.sqrt(np.fft.fftfreq(64)[:, None] ** 2 + np.fft.fftfreq(64)[None, :] ** 2)
    band = (f > 0.05) & (f < 0.4)
    slope = np.polyfit(np.log(f[band]), np.log(spectrum[band]), 1)[0]
    assert -1.3 < slope < -0.7, slope
    # channels mostly share their field (colours are correlated)
    assert np.corrcoef(x[..., 0].ravel(), x[..., 1].ravel())[0, 1] > 0.8
    assert np.array_equal(image_noise((2, 64, 64, 3), np.random.default_rng(1)), image_noise((2, 64, 64, 3), np.random.default_rng(1)))
