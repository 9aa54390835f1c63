"""Tiny seeded generators built fresh for the tests (a few thousand parameters each)."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"


def build_dcgan(keras):
    """Dense → BN → LeakyReLU → Reshape → Conv2DTranspose ×2 → tanh, 16×16×1."""
    keras.utils.set_random_seed(1)
    z = keras.Input((8,), name="z")
    x = keras.layers.Dense(4 * 4 * 8, use_bias=False, name="project")(z)
    x = keras.layers.BatchNormalization(name="bn0")(x)
    x = keras.layers.LeakyReLU(0.2, name="act0")(x)
    x = keras.layers.Reshape((4, 4, 8), name="reshape")(x)
    x = keras.layers.Conv2DTranspose(4, 3, 2, padding="same", name="up1")(x)
    x = keras.layers.LeakyReLU(0.2, name="act1")(x)
    out = keras.layers.Conv2DTranspose(1, 3, 2, padding="same", activation="tanh", name="image")(x)
    model = keras.Model(z, out, name="tiny_dcgan")
    randomize_bn(keras, model)
    return model


def build_conditional(keras):
    """Noise + int label (Embedding) → Dense → UpSampling2D (nearest, bilinear) → sigmoid, 8×8×1."""
    keras.utils.set_random_seed(2)
    z = keras.Input((4,), name="z")
    label = keras.Input((1,), dtype="int32", name="label")
    e = keras.layers.Flatten(name="label_flat")(keras.layers.Embedding(5, 3, name="label_embed")(label))
    x = keras.layers.Concatenate(name="concat")([z, e])
    x = keras.layers.Dense(2 * 2 * 6, activation="relu", name="project")(x)
    x = keras.layers.Reshape((2, 2, 6), name="reshape")(x)
    x = keras.layers.UpSampling2D(2, name="up_nearest")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="up_bilinear")(x)
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="image")(x)
    return keras.Model([z, label], out, name="tiny_conditional")


def build_image_to_image(keras):
    """Image in → Conv/PReLU → UpSampling2D → linear conv + bilinear skip, 8×8×3 → 16×16×3."""
    keras.utils.set_random_seed(3)
    lowres = keras.Input((8, 8, 3), name="lowres")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(lowres)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu1")(x)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="up")(x)
    x = keras.layers.Conv2D(3, 3, padding="same", name="residual")(x)
    skip = keras.layers.UpSampling2D(2, interpolation="bilinear", name="skip")(lowres)
    out = keras.layers.Add(name="highres")([x, skip])
    return keras.Model(lowres, out, name="tiny_sr")


def randomize_bn(keras, model, seed=0):
    """Fresh BatchNorm layers are the identity; give them trained-looking statistics."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0, 0.1, beta.shape).astype("float32"),
                    rng.normal(0, 0.2, mean.shape).astype("float32"),
                    rng.uniform(0.5, 2.0, var.shape).astype("float32"),
                ]
            )


def make_session(model, calibration_samples=16, eval_samples=8, **config):
    """A run of ``model`` (a ``LoadedModel``) on seeded noise, ready to build and measure artifacts."""
    from gencompress.calibration import Calibration
    from gencompress.config import QuantizeConfig
    from gencompress.pipelines.session import prepare

    return prepare(model, QuantizeConfig(eval_samples=eval_samples, **config), Calibration.noise(calibration_samples))


@pytest.fixture(scope="session")
def keras():
    from gencompress.tfenv import import_keras

    return import_keras()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def dcgan_h5(keras, model_dir):
    path = model_dir / "dcgan.h5"
    build_dcgan(keras).save(path)
    return path


@pytest.fixture(scope="session")
def conditional_h5(keras, model_dir):
    path = model_dir / "conditional.h5"
    build_conditional(keras).save(path)
    return path


@pytest.fixture(scope="session")
def i2i_keras(keras, model_dir):
    path = model_dir / "sr.keras"
    build_image_to_image(keras).save(path)
    return path


@pytest.fixture(scope="session")
def dcgan(dcgan_h5):
    from gencompress.model import load_model

    return load_model(dcgan_h5)


@pytest.fixture(scope="session")
def conditional(conditional_h5):
    from gencompress.model import load_model

    return load_model(conditional_h5)


def build_collapsing(keras):
    """A generator int8 destroys: one hidden channel spans ±2000 (the next layer ignores it), so a
    per-tensor int8 scale leaves the signal channels (±3) a step of ~16. Float compute is fine."""
    import numpy as np

    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    z = keras.Input((8,), name="z")
    h = keras.layers.Dense(16, name="hidden")(z)
    h = keras.layers.LeakyReLU(0.2, name="hidden_act")(h)
    out = keras.layers.Dense(64, activation="sigmoid", name="image")(h)
    model = keras.Model(z, out, name="collapsing")
    w1 = rng.normal(0, 1, (8, 16)).astype("float32")
    w1[:, 0] *= 400.0
    w2 = rng.normal(0, 3, (16, 64)).astype("float32")
    w2[0, :] = 0.0
    model.get_layer("hidden").set_weights([w1, np.zeros(16, "float32")])
    model.get_layer("image").set_weights([w2, np.zeros(64, "float32")])
    return model


@pytest.fixture(scope="session")
def collapsing_h5(keras, model_dir):
    path = model_dir / "collapsing.h5"
    build_collapsing(keras).save(path)
    return path


@pytest.fixture(autouse=True, scope="session")
def _saved_reports_follow_the_schema():
    """Every report a test saves in this process (through the CLI or the API) is validated
    against the shipped report/schema.json."""
    import json

    import jsonschema

    from gencompress.pipelines.result import Result

    validator = jsonschema.Draft202012Validator(json.loads((REPO / "gencompress" / "report" / "schema.json").read_text()))
    original = Result.save

    def save(self, output_dir):
        out = original(self, output_dir)
        validator.validate(json.loads((out / "report.json").read_text()))
        return out

    Result.save = save
    yield
    Result.save = original


@pytest.fixture(scope="module")
def exported(dcgan):
    """Results of two library exports of one model, tflite only and both formats, to save again
    and again (the fault tests: a new result replacing an old one, interrupted saves)."""
    import gencompress as gc

    config = dict(eval_samples=8, latency_runs=3)
    results = {
        "tflite": gc.export(dcgan, gc.ExportConfig(formats=("tflite",), **config)),
        "all": gc.export(dcgan, gc.ExportConfig(**config)),
    }
    yield results
    for r in results.values():
        r.close()


# --browser and the demo (tests/test_browser.py, tests/test_demo.py)


@pytest.fixture(scope="session")
def browser_ready():
    from gencompress.converters import browser_setup

    lacking = browser_setup.missing()
    if lacking:
        pytest.skip("--browser needs " + "; ".join(lacking))


@pytest.fixture(scope="session")
def sample_run(browser_ready, tmp_path_factory):
    """The DCGAN sample quantized with --browser and browser gates, saved."""
    import gencompress as gc

    gates = gc.Gates(browser=gc.BrowserGates(max_latency_ms=10_000.0, onnx=gc.FormatGates(min_psnr=30.0)))
    config = gc.QuantizeConfig(browser=True, fast=True, latency_runs=5, gates=gates)
    result = gc.quantize(gc.load_model(SAMPLES / "dcgan_digits.h5"), config)
    folder = result.save(tmp_path_factory.mktemp("sample"))
    yield result, folder
    result.close()
