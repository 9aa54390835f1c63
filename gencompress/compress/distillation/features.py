"""Intermediate feature matching (GAN Compression, Li et al. 2020): for each spatial size both
models have, the last teacher and student tensors at that size are paired, a learned 1×1
projection maps the student's channels to the teacher's, and the weighted mean of their MSEs is
added to the loss. The projections live only in a training wrapper: the saved student has none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gencompress.compress.distillation.student import tensor_dims, tensor_key, graph_nodes
from gencompress.tfenv import import_keras, import_tf


@dataclass(frozen=True)
class FeaturePair:
    """A teacher and a student tensor at the same spatial size, matched during training."""

    teacher_layer: str
    student_layer: str
    spatial: tuple
    teacher_channels: int
    student_channels: int

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "spatial": list(self.spatial)}


def feature_pairs(teacher, student) -> list[FeaturePair]:
    """Intermediate layers to match: for each spatial size (H×W, or length) that both models
    have, the last tensor at that size in each (inputs and outputs excluded). A width student's
    pairs are its teacher's layers of the same names."""

    def last_by_size(model):
        ends = {tensor_key(t) for t in model.inputs + model.outputs}
        found = {}
        for n in graph_nodes(model):
            if n.cls == "InputLayer" or len(n.outputs) != 1 or tensor_key(n.outputs[0]) in ends:
                continue
            dims = tensor_dims(n.outputs[0])
            if len(dims) >= 2 and None not in dims:
                found.pop(dims[:-1], None)  # re-insert: the order is that of the last tensor
                found[dims[:-1]] = (n.layer.name, n.outputs[0])
        return found

    t, s = last_by_size(teacher), last_by_size(student)
    return [
        FeaturePair(t[k][0], s[k][0], k, int(tensor_dims(t[k][1])[-1]), int(tensor_dims(s[k][1])[-1]))
        for k in t
        if k in s
    ]


def training_model(student, teacher, pairs: list[FeaturePair], weight: float):
    """``student`` with the feature-matching loss attached, for training only.

    A frozen copy of the teacher computes the target features in inference mode; each
    student feature goes through a learned 1×1 projection to the teacher's channel count and
    ``weight`` × the mean of the projections' MSEs is added as a model loss. The returned model
    shares the student's layers (training it trains the student), has the student's inputs and
    outputs, and owns the projections; the student itself never contains them.
    Build it in the strategy's scope, like the student.
    """
    keras = import_keras()
    frozen = keras.models.clone_model(teacher)
    frozen.set_weights(teacher.get_weights())
    frozen.trainable = False
    targets = keras.Model(frozen.inputs, [_output_of(frozen, p.teacher_layer) for p in pairs], name="distill_teacher_features")
    inputs = student.inputs
    teacher_features = targets(inputs if len(inputs) > 1 else inputs[0], training=False)
    teacher_features = teacher_features if isinstance(teacher_features, list) else [teacher_features]
    # Dense on the channel axis is a 1x1 convolution (any spatial rank).
    projected = [
        keras.layers.Dense(p.teacher_channels, name=f"distill_proj_{i}")(_output_of(student, p.student_layer))
        for i, p in enumerate(pairs)
    ]
    # The loss is added by a layer on the output path (it passes the outputs through): no tf ops
    # on Keras tensors, whose auto-named TFOpLambda layers would shift other models' layer names.
    outputs = _feature_matching_layer(keras)(weight, len(student.outputs), name="distill_feature_matching")(
        list(student.outputs) + projected + teacher_features
    )
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=f"{student.name}_distill")


_FEATURE_MATCHING = None


def _feature_matching_layer(keras):
    """The Keras layer class (built once, lazily: no Keras import at module import)."""
    global _FEATURE_MATCHING
    if _FEATURE_MATCHING is None:
        tf = import_tf()

        class FeatureMatching(keras.layers.Layer):
            """Identity on the first ``n_outputs`` tensors; adds ``weight`` × the mean MSE between
            the projected student features and the (constant) teacher features as a loss."""

            def __init__(self, weight, n_outputs, **kwargs):
                super().__init__(**kwargs)
                self.weight, self.n_outputs = float(weight), int(n_outputs)

            def call(self, tensors):
                outputs, rest = tensors[: self.n_outputs], tensors[self.n_outputs :]
                half = len(rest) // 2
                terms = [
                    tf.reduce_mean(tf.square(p - tf.stop_gradient(t))) for p, t in zip(rest[:half], rest[half:])
                ]
                self.add_loss(self.weight * tf.add_n(terms) / len(terms))
                return list(outputs)

        _FEATURE_MATCHING = FeatureMatching
    return _FEATURE_MATCHING


def _output_of(model, layer_name):
    layer = model.get_layer(layer_name)
    return layer.get_output_at(len(layer._inbound_nodes) - 1) if len(layer._inbound_nodes) > 1 else layer.output
