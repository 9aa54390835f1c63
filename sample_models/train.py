#!/usr/bin/env python
"""Train the small sample generators shipped in ``sample_models/``.

Run from the repository root::

    python sample_models/train.py                 # all three models
    python sample_models/train.py --only sr_photos  # just one (repeatable)

Everything is trained on data bundled with scikit-learn (no downloads):

* ``dcgan_digits``  DCGAN generator (GAN-trained on sklearn digits, 16x16x1, tanh)
                    -> dcgan_digits.h5, dcgan_digits_samples.png
* ``cvae_decoder``  decoder of a conditional VAE on digits (inputs z + int label)
                    -> cvae_decoder.h5, cvae_decoder.keras (Keras 3), cvae_decoder_samples.png
* ``sr_photos``     2x super-resolution net on patches of sklearn's sample photos
                    -> sr_photos.h5, sr_photos_savedmodel/ (Keras 3 ``model.export``)

Models are built and trained with tf-keras (Keras 2); the Keras 3 artefacts are
written in a subprocess running Keras 3 that loads the ``.h5`` file, and their
outputs are checked against the tf-keras model (max abs error <= 1e-5).

Only built-in layers are used (no Lambda / custom objects / raw tf ops on Keras
tensors), so every file loads with plain ``load_model(path, compile=False)``.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # must precede the TensorFlow import
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras import layers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 1234
TOLERANCE = 1e-5
MODEL_NAMES = ("dcgan_digits", "cvae_decoder", "sr_photos")


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def seed_everything(seed):
    """Reset every RNG the training touches (called once per model, so
    ``--only NAME`` reproduces exactly what a full run produces)."""
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(seed)  # python, numpy and tf global seeds
    np.random.seed(seed)
    return np.random.default_rng(seed)


def out_path(name):
    return os.path.join(HERE, name)


def load_digits_16(value_range):
    """sklearn digits (1797 x 8x8, values 0..16) -> 16x16x1 float32, bilinear."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    x = tf.image.resize(x, (16, 16), method="bilinear").numpy()
    x = np.clip(x, 0.0, 1.0)
    if value_range == "tanh":
        x = x * 2.0 - 1.0
    return x.astype(np.float32), d.target.astype(np.int32)


def save_grid_png(images, rows, cols, path, scale=4, pad=2):
    """images: (rows*cols, H, W, 1) in [0, 1] -> grey PNG grid."""
    from PIL import Image

    n, h, w = images.shape[:3]
    assert n == rows * cols
    canvas = np.full(
        (rows * (h * scale + pad) + pad, cols * (w * scale + pad) + pad), 128, np.uint8
    )
    for i in range(n):
        r, c = divmod(i, cols)
        img = np.clip(images[i, ..., 0], 0.0, 1.0)
        img = np.kron(img, np.ones((scale, scale)))
        y0, x0 = pad + r * (h * scale + pad), pad + c * (w * scale + pad)
        canvas[y0 : y0 + h * scale, x0 : x0 + w * scale] = np.round(img * 255).astype(np.uint8)
    Image.fromarray(canvas, mode="L").save(path, optimize=True)


def digit_classifier(seed):
    """A sklearn classifier on real 16x16 digits in [0, 1] used to score how
    recognisable generated digits are. Returns (clf, held-out accuracy)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits_16("unit")
    x = x.reshape(len(x), -1)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    clf = LogisticRegression(C=0.5, max_iter=3000).fit(xtr, ytr)
    acc = float(clf.score(xte, yte))
    clf = LogisticRegression(C=0.5, max_iter=3000).fit(x, y)  # refit on everything
    return clf, acc


def keras3_env():
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    env["KERAS_BACKEND"] = "tensorflow"
    return env


def run_keras3(script, *args):
    """Run ``script`` in a fresh Python with Keras 3 (no TF_USE_LEGACY_KERAS)."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=keras3_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"Keras 3 subprocess failed (exit code {proc.returncode})")
    return proc.stdout.strip()


def describe(model):
    ins = ", ".join(f"{n} {tuple(t.shape)} {t.dtype.name}" for n, t in zip(model.input_names, model.inputs))
    outs = ", ".join(f"{n} {tuple(t.shape)} {t.dtype.name}" for n, t in zip(model.output_names, model.outputs))
    return f"inputs [{ins}] -> outputs [{outs}]"


def report(name, model, seconds, extra):
    print(f"[{name}] params={model.count_params():,}  train_wall_time={seconds:.1f}s")
    print(f"[{name}] {describe(model)}")
    for line in extra:
        print(f"[{name}] {line}")


# --------------------------------------------------------------------------- #
# 1. DCGAN generator on digits
# --------------------------------------------------------------------------- #
def build_dcgan_generator(latent_dim=32):
    z = layers.Input(shape=(latent_dim,), name="z")
    x = layers.Dense(4 * 4 * 64, use_bias=False, name="project")(z)
    x = layers.BatchNormalization(name="project_bn")(x)
    x = layers.LeakyReLU(0.2, name="project_lrelu")(x)
    x = layers.Reshape((4, 4, 64), name="reshape_4x4")(x)
    x = layers.Conv2DTranspose(32, 4, strides=2, padding="same", use_bias=False, name="deconv_8x8")(x)
    x = layers.BatchNormalization(name="deconv_8x8_bn")(x)
    x = layers.LeakyReLU(0.2, name="deconv_8x8_lrelu")(x)
    img = layers.Conv2DTranspose(1, 4, strides=2, padding="same", activation="tanh", name="image")(x)
    return tf_keras.Model(z, img, name="dcgan_generator")


def build_dcgan_discriminator():
    img = layers.Input(shape=(16, 16, 1), name="image")
    x = layers.Conv2D(32, 4, strides=2, padding="same", name="conv_8x8")(img)
    x = layers.LeakyReLU(0.2, name="conv_8x8_lrelu")(x)
    x = layers.Conv2D(64, 4, strides=2, padding="same", name="conv_4x4")(x)
    x = layers.LeakyReLU(0.2, name="conv_4x4_lrelu")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    logit = layers.Dense(1, name="logit")(x)
    return tf_keras.Model(img, logit, name="dcgan_discriminator")


def train_dcgan(epochs=100, batch=64, latent_dim=32, g_lr=1e-3, d_lr=2e-4, r1_gamma=1.0, ema_decay=0.999):
    """Non-saturating GAN loss + R1 penalty on the discriminator (keeps the
    small-data GAN stable), TTUR-style learning rates, and an exponential
    moving average of the generator weights (what gets shipped)."""
    rng = seed_everything(SEED)
    x, _ = load_digits_16("tanh")
    gen, disc = build_dcgan_generator(latent_dim), build_dcgan_discriminator()
    g_opt = tf_keras.optimizers.Adam(g_lr, beta_1=0.5)
    d_opt = tf_keras.optimizers.Adam(d_lr, beta_1=0.5)
    bce = tf_keras.losses.BinaryCrossentropy(from_logits=True)
    ema = [tf.Variable(v, trainable=False) for v in gen.trainable_variables]

    @tf.function
    def step(real, z):
        with tf.GradientTape() as gt, tf.GradientTape() as dt:
            fake = gen(z, training=True)
            with tf.GradientTape() as rt:
                rt.watch(real)
                real_logit = disc(real, training=True)
                real_sum = tf.reduce_sum(real_logit)
            real_grad = rt.gradient(real_sum, real)
            r1 = 0.5 * r1_gamma * tf.reduce_mean(tf.reduce_sum(tf.square(real_grad), axis=[1, 2, 3]))
            fake_logit = disc(fake, training=True)
            d_loss = bce(tf.ones_like(real_logit), real_logit) + bce(tf.zeros_like(fake_logit), fake_logit)
            d_total = d_loss + r1
            g_loss = bce(tf.ones_like(fake_logit), fake_logit)  # non-saturating
        g_opt.apply_gradients(zip(gt.gradient(g_loss, gen.trainable_variables), gen.trainable_variables))
        d_opt.apply_gradients(zip(dt.gradient(d_total, disc.trainable_variables), disc.trainable_variables))
        for e, v in zip(ema, gen.trainable_variables):
            e.assign(ema_decay * e + (1.0 - ema_decay) * v)
        return d_loss, g_loss, r1

    n = len(x)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):  # drop the ragged last batch
            real = x[perm[i : i + batch]]
            z = rng.standard_normal((batch, latent_dim)).astype(np.float32)
            d_loss, g_loss, r1 = step(tf.constant(real), tf.constant(z))
        if (epoch + 1) % 25 == 0:
            print(f"[dcgan_digits] epoch {epoch + 1}/{epochs}  d_loss={float(d_loss):.3f}  "
                  f"g_loss={float(g_loss):.3f}  r1={float(r1):.3f}", flush=True)
    for e, v in zip(ema, gen.trainable_variables):  # ship the EMA generator
        v.assign(e)
    # Re-estimate the BatchNorm moving statistics with the final weights (the
    # running averages otherwise lag behind the last updates), so that
    # inference-mode samples match the training-mode ones: average the batch
    # statistics of 50 large batches (momentum 0 => moving stats = batch stats).
    bn = [l for l in gen.layers if isinstance(l, layers.BatchNormalization)]
    sums = [[0.0, 0.0] for _ in bn]
    for l in bn:
        l.momentum = 0.0
    n_recal = 50
    for _ in range(n_recal):
        gen(rng.standard_normal((256, latent_dim)).astype(np.float32), training=True)
        for s, l in zip(sums, bn):
            s[0] += l.moving_mean.numpy()
            s[1] += l.moving_variance.numpy()
    for s, l in zip(sums, bn):
        l.moving_mean.assign(s[0] / n_recal)
        l.moving_variance.assign(s[1] / n_recal)
        l.momentum = 0.99  # the default; this is what gets saved in the config
    seconds = time.perf_counter() - t0

    path = out_path("dcgan_digits.h5")
    gen.save(path, include_optimizer=False, save_format="h5")

    # samples + recognisability score with a classifier trained on real digits
    z = np.random.default_rng(SEED + 1).standard_normal((1000, latent_dim)).astype(np.float32)
    imgs = (gen.predict(z, batch_size=250, verbose=0) + 1.0) / 2.0
    save_grid_png(imgs[:64], 8, 8, out_path("dcgan_digits_samples.png"))
    clf, real_acc = digit_classifier(SEED)
    prob = clf.predict_proba(imgs.reshape(len(imgs), -1))
    pred = prob.argmax(1)
    counts = np.bincount(pred, minlength=10)
    extra = [
        f"epochs={epochs} steps={epochs * (n // batch)} batch={batch} lr G/D={g_lr}/{d_lr} R1 gamma={r1_gamma} EMA={ema_decay}",
        f"1000 samples scored by a logistic-regression digit classifier (held-out acc on real digits {real_acc:.3f}):",
        f"  mean max-prob={prob.max(1).mean():.3f}  share with max-prob>0.9={np.mean(prob.max(1) > 0.9):.3f}",
        f"  predicted-class histogram={counts.tolist()}",
    ]
    report("dcgan_digits", gen, seconds, extra)

    reloaded = tf_keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(reloaded.predict(z[:16], verbose=0), imgs[:16] * 2 - 1, atol=1e-5)
    return {"seconds": seconds}


# --------------------------------------------------------------------------- #
# 2. Conditional VAE decoder on digits (+ Keras 3 .keras copy)
# --------------------------------------------------------------------------- #
def build_cvae_decoder(latent_dim=8):
    z = layers.Input(shape=(latent_dim,), name="z")
    label = layers.Input(shape=(1,), dtype="int32", name="label")
    emb = layers.Embedding(10, 8, name="label_embedding")(label)
    emb = layers.Flatten(name="label_embedding_flat")(emb)
    x = layers.Concatenate(name="z_and_label")([z, emb])
    x = layers.Dense(4 * 4 * 32, name="project")(x)
    x = layers.ReLU(name="project_relu")(x)
    x = layers.Reshape((4, 4, 32), name="reshape_4x4")(x)
    x = layers.UpSampling2D(2, interpolation="nearest", name="upsample_8x8_nearest")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_8x8")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="upsample_16x16_bilinear")(x)
    img = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="image")(x)
    return tf_keras.Model([z, label], img, name="cvae_decoder")


def build_cvae_encoder(latent_dim=8):
    img = layers.Input(shape=(16, 16, 1), name="image")
    label = layers.Input(shape=(1,), dtype="int32", name="label")
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv_8x8")(img)
    x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv_4x4")(x)
    x = layers.Flatten(name="flatten")(x)
    emb = layers.Flatten(name="label_embedding_flat")(layers.Embedding(10, 8, name="label_embedding")(label))
    x = layers.Concatenate(name="features_and_label")([x, emb])
    x = layers.Dense(128, activation="relu", name="hidden")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_logvar = layers.Dense(latent_dim, name="z_logvar")(x)
    return tf_keras.Model([img, label], [z_mean, z_logvar], name="cvae_encoder")


KERAS3_CVAE = textwrap.dedent(
    """
    import sys, numpy as np, keras
    h5, out, tmp = sys.argv[1:4]
    model = keras.models.load_model(h5, compile=False)
    model.save(out)
    model = keras.models.load_model(out, compile=False)   # check the written file
    z, label = np.load(tmp + "/z.npy"), np.load(tmp + "/label.npy")
    ref = np.load(tmp + "/ref.npy")
    got = np.asarray(model.predict({"z": z, "label": label}, verbose=0))
    err = float(np.max(np.abs(got - ref)))
    if not err <= %r:
        raise SystemExit("Keras 3 .keras output mismatch: max abs err %%g" %% err)
    print("keras=%%s inputs=%%s outputs=%%s max_abs_err=%%.3g" %% (
        keras.__version__,
        [(t.name, tuple(t.shape), str(t.dtype)) for t in model.inputs],
        [(t.name, tuple(t.shape), str(t.dtype)) for t in model.outputs], err))
    """
    % TOLERANCE
)


def train_cvae(epochs=150, batch=64, latent_dim=8):
    rng = seed_everything(SEED)
    x, y = load_digits_16("unit")
    perm = rng.permutation(len(x))
    n_val = len(x) // 10
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    xtr, ytr, xval, yval = x[tr_idx], y[tr_idx, None], x[val_idx], y[val_idx, None]

    enc, dec = build_cvae_encoder(latent_dim), build_cvae_decoder(latent_dim)
    variables = enc.trainable_variables + dec.trainable_variables
    opt = tf_keras.optimizers.Adam(1e-3)

    def losses(img, label, eps, training):
        mean, logvar = enc([img, label], training=training)
        z = mean + tf.exp(0.5 * logvar) * eps
        rec = dec([z, label], training=training)
        bce = tf_keras.backend.binary_crossentropy(img, rec)  # per pixel
        rec_loss = tf.reduce_mean(tf.reduce_sum(bce, axis=[1, 2, 3]))
        kl = tf.reduce_mean(-0.5 * tf.reduce_sum(1 + logvar - tf.square(mean) - tf.exp(logvar), axis=1))
        return rec_loss, kl

    @tf.function
    def step(img, label, eps):
        with tf.GradientTape() as tape:
            rec_loss, kl = losses(img, label, eps, True)
            loss = rec_loss + kl
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return rec_loss, kl

    n = len(xtr)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        p = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            idx = p[i : i + batch]
            eps = rng.standard_normal((batch, latent_dim)).astype(np.float32)
            rec_loss, kl = step(xtr[idx], ytr[idx], eps)
        if (epoch + 1) % 50 == 0:
            print(f"[cvae_decoder] epoch {epoch + 1}/{epochs}  train rec={float(rec_loss):.2f} kl={float(kl):.2f}", flush=True)
    seconds = time.perf_counter() - t0

    eps = np.random.default_rng(SEED + 2).standard_normal((len(xval), latent_dim)).astype(np.float32)
    val_rec, val_kl = (float(v) for v in losses(xval, yval, eps, False))

    path = out_path("cvae_decoder.h5")
    dec.save(path, include_optimizer=False, save_format="h5")
    reloaded = tf_keras.models.load_model(path, compile=False)

    # 10 x 8 grid: one row per label, same latent per column
    zs = np.random.default_rng(SEED + 3).standard_normal((8, latent_dim)).astype(np.float32)
    grid_z = np.tile(zs, (10, 1))
    grid_label = np.repeat(np.arange(10, dtype=np.int32), 8)[:, None]
    save_grid_png(reloaded.predict([grid_z, grid_label], verbose=0), 10, 8, out_path("cvae_decoder_samples.png"))

    # conditional accuracy: does a real-digit classifier agree with the label?
    clf, real_acc = digit_classifier(SEED)
    z = np.random.default_rng(SEED + 4).standard_normal((1000, latent_dim)).astype(np.float32)
    lab = (np.arange(1000) % 10).astype(np.int32)[:, None]
    imgs = reloaded.predict([z, lab], batch_size=250, verbose=0)
    label_acc = float(np.mean(clf.predict(imgs.reshape(len(imgs), -1)) == lab[:, 0]))

    # Keras 3 copy (.keras), verified against the tf-keras outputs
    with tempfile.TemporaryDirectory() as tmp:
        vz = np.random.default_rng(SEED + 5).standard_normal((16, latent_dim)).astype(np.float32)
        vl = (np.arange(16) % 10).astype(np.int32)[:, None]
        np.save(f"{tmp}/z.npy", vz)
        np.save(f"{tmp}/label.npy", vl)
        np.save(f"{tmp}/ref.npy", reloaded.predict([vz, vl], verbose=0))
        keras_path = out_path("cvae_decoder.keras")
        if os.path.exists(keras_path):
            os.remove(keras_path)
        k3 = run_keras3(KERAS3_CVAE, path, keras_path, tmp)

    extra = [
        f"epochs={epochs} steps={epochs * (n // batch)} batch={batch} train/val={n}/{len(xval)}",
        f"validation: reconstruction BCE={val_rec:.2f} (sum over 256 px)  KL={val_kl:.2f}  -ELBO={val_rec + val_kl:.2f}",
        f"1000 prior samples (labels 0..9): real-digit classifier agrees with the conditioning label {label_acc:.3f} "
        f"(classifier held-out acc on real digits {real_acc:.3f})",
        f"Keras 3 .keras check: {k3}",
    ]
    report("cvae_decoder", dec, seconds, extra)
    return {"seconds": seconds}


# --------------------------------------------------------------------------- #
# 3. 2x super-resolution on the sklearn sample photos (+ Keras 3 SavedModel)
# --------------------------------------------------------------------------- #
def build_sr():
    lowres = layers.Input(shape=(16, 16, 3), name="lowres")
    x = layers.Conv2D(32, 3, padding="same", name="conv1")(lowres)
    x = layers.PReLU(shared_axes=[1, 2], name="conv1_prelu")(x)
    x = layers.Conv2D(32, 3, padding="same", name="conv2")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="conv2_prelu")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="upsample_features")(x)
    x = layers.Conv2D(16, 3, padding="same", name="conv3")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="conv3_prelu")(x)
    residual = layers.Conv2D(3, 3, padding="same", name="residual")(x)  # linear
    skip = layers.UpSampling2D(2, interpolation="bilinear", name="upsample_input")(lowres)
    highres = layers.Add(name="highres")([skip, residual])
    return tf_keras.Model(lowres, highres, name="sr_photos")


def downscale(patches):
    """32x32 -> 16x16 bilinear (for an exact 2x factor this is a 2x2 box mean)."""
    return tf.image.resize(patches, (16, 16), method="bilinear").numpy().astype(np.float32)


def psnr(pred, target):
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = np.mean((np.asarray(pred, np.float64) - target) ** 2)
    return float(10 * np.log10(4.0 / mse))


KERAS3_SR = textwrap.dedent(
    """
    import sys, shutil, os, numpy as np, keras, tensorflow as tf
    h5, out, tmp = sys.argv[1:4]
    model = keras.models.load_model(h5, compile=False)
    if os.path.exists(out):
        shutil.rmtree(out)
    model.export(out, verbose=False)
    loaded = tf.saved_model.load(out)
    fn = loaded.signatures["serving_default"]
    x, ref = np.load(tmp + "/x.npy"), np.load(tmp + "/ref.npy")
    (in_key,) = fn.structured_input_signature[1].keys()
    res = fn(**{in_key: tf.constant(x)})
    (out_key,) = res.keys()
    got = res[out_key].numpy()
    err = float(np.max(np.abs(got - ref)))
    if not err <= %r:
        raise SystemExit("SavedModel output mismatch: max abs err %%g" %% err)
    print("keras=%%s serving_default inputs=%%s outputs=%%s max_abs_err=%%.3g" %% (
        keras.__version__,
        {k: (tuple(v.shape), v.dtype.name) for k, v in fn.structured_input_signature[1].items()},
        {k: (tuple(v.shape), v.dtype.name) for k, v in fn.structured_outputs.items()}, err))
    """
    % TOLERANCE
)


def train_sr(epochs=4, batch=16, n_patches=12000, patch=32):
    from sklearn.datasets import load_sample_images

    rng = seed_everything(SEED)
    photos = [im.astype(np.float32) / 127.5 - 1.0 for im in load_sample_images().images]
    # hold out the right-most 160 columns of each photo for validation
    split = 480
    train_imgs = [im[:, :split] for im in photos]
    val_imgs = [im[:, split:] for im in photos]

    # random training patches with flips / 90-degree rotations
    hr = np.empty((n_patches, patch, patch, 3), np.float32)
    for i in range(n_patches):
        im = train_imgs[i % len(train_imgs)]
        r = rng.integers(0, im.shape[0] - patch + 1)
        c = rng.integers(0, im.shape[1] - patch + 1)
        p = im[r : r + patch, c : c + patch]
        if rng.random() < 0.5:
            p = p[:, ::-1]
        hr[i] = np.rot90(p, k=int(rng.integers(0, 4)))
    lr = downscale(hr)

    # validation: every non-overlapping 32x32 tile of the held-out strips
    val_hr = np.stack(
        [
            im[r : r + patch, c : c + patch]
            for im in val_imgs
            for r in range(0, im.shape[0] - patch + 1, patch)
            for c in range(0, im.shape[1] - patch + 1, patch)
        ]
    )
    val_lr = downscale(val_hr)

    model = build_sr()
    steps = epochs * (n_patches // batch)
    lr_sched = tf_keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps, alpha=0.05)
    model.compile(optimizer=tf_keras.optimizers.Adam(lr_sched), loss="mse")
    t0 = time.perf_counter()
    hist = model.fit(lr, hr, batch_size=batch, epochs=epochs, shuffle=True, verbose=0,
                     validation_data=(val_lr, val_hr))
    seconds = time.perf_counter() - t0
    print(f"[sr_photos] val mse per epoch: {[round(v, 5) for v in hist.history['val_loss']]}", flush=True)

    path = out_path("sr_photos.h5")
    model.save(path, include_optimizer=False, save_format="h5")
    reloaded = tf_keras.models.load_model(path, compile=False)
    pred = reloaded.predict(val_lr, batch_size=256, verbose=0)
    bilinear = tf.image.resize(val_lr, (patch, patch), method="bilinear").numpy()
    bicubic = np.clip(tf.image.resize(val_lr, (patch, patch), method="bicubic").numpy(), -1, 1)

    with tempfile.TemporaryDirectory() as tmp:
        x = val_lr[:32]
        np.save(f"{tmp}/x.npy", x)
        np.save(f"{tmp}/ref.npy", reloaded.predict(x, verbose=0))
        k3 = run_keras3(KERAS3_SR, path, out_path("sr_photos_savedmodel"), tmp)

    extra = [
        f"epochs={epochs} steps={steps} batch={batch} train patches={n_patches} val tiles={len(val_hr)}",
        f"validation PSNR (held-out columns {split}: of both photos, [-1,1] range, peak 2): "
        f"model={psnr(pred, val_hr):.2f} dB  model clipped to [-1,1]={psnr(np.clip(pred, -1, 1), val_hr):.2f} dB  "
        f"bilinear={psnr(bilinear, val_hr):.2f} dB  bicubic={psnr(bicubic, val_hr):.2f} dB",
        f"output range on validation: [{pred.min():.3f}, {pred.max():.3f}]",
        f"Keras 3 SavedModel check: {k3}",
    ]
    report("sr_photos", model, seconds, extra)
    return {"seconds": seconds}


# --------------------------------------------------------------------------- #
TRAINERS = {"dcgan_digits": train_dcgan, "cvae_decoder": train_cvae, "sr_photos": train_sr}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", action="extend", choices=MODEL_NAMES, metavar="NAME",
                    help=f"train only these models ({', '.join(MODEL_NAMES)})")
    args = ap.parse_args(argv)
    names = args.only or list(MODEL_NAMES)
    tf.config.experimental.enable_op_determinism()

    summary = {}
    for name in MODEL_NAMES:
        if name in names:
            t0 = time.perf_counter()
            res = TRAINERS[name]()
            res["total"] = time.perf_counter() - t0
            summary[name] = res
    print()
    for name, res in summary.items():
        print(f"{name:14s} training {res['seconds']:6.1f}s   total incl. export/checks {res['total']:6.1f}s")


if __name__ == "__main__":
    main()
