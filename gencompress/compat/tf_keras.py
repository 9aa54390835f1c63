"""tf-keras internals the loaders need: legacy ``.h5`` reading, the safe-mode scope, the Lambda
layer's module globals and the ``TensorFlowOpLayer`` class TF 2.0-2.3 models name."""

from __future__ import annotations


def json_utils():
    from tf_keras.src.saving.legacy.saved_model import json_utils

    return json_utils


def safe_mode_scope(safe: bool):
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(safe)


def load_weights_from_hdf5_group(group, model) -> None:
    from tf_keras.src.saving.legacy.hdf5_format import load_weights_from_hdf5_group

    load_weights_from_hdf5_group(group, model)


def lambda_layer_module():
    from tf_keras.src.layers.core import lambda_layer

    return lambda_layer


def tensorflow_op_layer():
    from tf_keras.src.engine.base_layer import TensorFlowOpLayer

    return TensorFlowOpLayer
