"""Lazy, quiet imports of TensorFlow and tf-keras.

tfmot needs Keras 2 (tf-keras): ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first
imported. The CLI imports nothing heavy at start-up (``gencompress --help`` stays fast), so every
module that needs TensorFlow calls these functions instead of importing it at the top.
"""

import os


def _prepare_environment():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # oneDNN reorders float sums with thread count; off so results repeat exactly.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def import_tf():
    """Return the ``tensorflow`` module, configured for tf-keras and quiet logs."""
    _prepare_environment()
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def import_keras():
    """Return ``tf_keras`` (Keras 2), the Keras that tfmot and our converters use."""
    import_tf()
    import tf_keras

    return tf_keras
