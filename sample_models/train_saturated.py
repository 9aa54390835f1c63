"""Train `dcgan_saturated.h5`: a DCGAN generator that plain int8 quantization breaks.

Same shape as the public Fashion-MNIST DCGAN in ../shared/FINDINGS.md (Dense → BatchNorm →
LeakyReLU → Reshape → Conv2DTranspose → BatchNorm → LeakyReLU → Conv2DTranspose, sigmoid),
trained on scikit-learn's digits upscaled to 28×28 and *binarized*, so the generator learns to
push its logits far past the sigmoid's knee: that saturation is what int8 cannot represent.

    python sample_models/train_saturated.py      # about 2 minutes on 2 CPU cores
"""

import os
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

HERE = Path(__file__).resolve().parent
LATENT = 64
SEED = 7
STEPS = 4000
BATCH = 32


def data() -> np.ndarray:
    digits = load_digits().images.astype("float32") / 16.0  # (1797, 8, 8) in [0, 1]
    big = tf.image.resize(digits[..., None], (28, 28), method="bilinear").numpy()
    return (big > 0.35).astype("float32")  # binary strokes: the generator must saturate


def generator() -> keras.Model:
    z = keras.Input((LATENT,), name="z")
    x = keras.layers.Dense(7 * 7 * 64, use_bias=False, name="project")(z)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.LeakyReLU(0.2, name="project_lrelu")(x)
    x = keras.layers.Reshape((7, 7, 64), name="reshape_7x7")(x)
    x = keras.layers.Conv2DTranspose(32, 4, 2, padding="same", use_bias=False, name="deconv_14x14")(x)
    x = keras.layers.BatchNormalization(name="deconv_14x14_bn")(x)
    x = keras.layers.LeakyReLU(0.2, name="deconv_14x14_lrelu")(x)
    out = keras.layers.Conv2DTranspose(1, 4, 2, padding="same", activation="sigmoid", name="image")(x)
    return keras.Model(z, out, name="dcgan_saturated")


def discriminator() -> keras.Model:
    img = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(32, 4, 2, padding="same")(img)
    x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.Conv2D(64, 4, 2, padding="same")(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(img, keras.layers.Dense(1)(x))


def train() -> keras.Model:
    keras.utils.set_random_seed(SEED)
    real = data()
    gen, disc = generator(), discriminator()
    g_opt = keras.optimizers.Adam(6e-4, beta_1=0.5)
    d_opt = keras.optimizers.Adam(6e-4, beta_1=0.5)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)

    @tf.function
    def step(images, z):
        with tf.GradientTape() as gt, tf.GradientTape() as dt:
            fake = gen(z, training=True)
            r, f = disc(images, training=True), disc(fake, training=True)
            d_loss = bce(tf.ones_like(r), r) + bce(tf.zeros_like(f), f)
            g_loss = bce(tf.ones_like(f), f)
        g_opt.apply_gradients(zip(gt.gradient(g_loss, gen.trainable_variables), gen.trainable_variables))
        d_opt.apply_gradients(zip(dt.gradient(d_loss, disc.trainable_variables), disc.trainable_variables))
        return d_loss, g_loss

    rng = np.random.default_rng(SEED)
    start = time.time()
    for i in range(STEPS):
        idx = rng.integers(0, len(real), BATCH)
        d_loss, g_loss = step(real[idx], rng.standard_normal((BATCH, LATENT)).astype("float32"))
        if i % 500 == 0 or i == STEPS - 1:
            print(f"step {i}: d {float(d_loss):.3f} g {float(g_loss):.3f} ({time.time() - start:.0f} s)")
    print(f"trained in {time.time() - start:.0f} s")
    return gen


def save_grid(model: keras.Model, path: Path) -> None:
    from PIL import Image

    z = np.random.default_rng(0).standard_normal((64, LATENT)).astype("float32")
    imgs = model(z, training=False).numpy()[..., 0]
    grid = imgs.reshape(8, 8, 28, 28).transpose(0, 2, 1, 3).reshape(8 * 28, 8 * 28)
    Image.fromarray((grid * 255).astype("uint8")).resize((448, 448), Image.NEAREST).save(path)


if __name__ == "__main__":
    model = train()
    logits = keras.Model(model.input, model.get_layer("image").output)  # sigmoid output
    z = np.random.default_rng(1).standard_normal((256, LATENT)).astype("float32")
    pre = keras.Model(model.input, model.get_layer("deconv_14x14_lrelu").output)(z).numpy()
    out = logits(z).numpy()
    print(f"input of last layer spans [{pre.min():.1f}, {pre.max():.1f}];"
          f" outputs within 0.01 of 0 or 1: {np.mean((out < 0.01) | (out > 0.99)):.1%}")
    model.save(HERE / "dcgan_saturated.h5")
    save_grid(model, HERE / "dcgan_saturated_samples.png")
