"""Training a student against its teacher with the shared fine-tuning loop."""

from __future__ import annotations

from gencompress.compress.distillation.checkpoint import TrainingCheckpoint
from gencompress.compress.distillation.features import feature_pairs, training_model
from gencompress.compress.distribute import scope as _scope
from gencompress.errors import UnsupportedModelError
from gencompress.tfenv import import_keras


def train_student(
    student,
    teacher,
    source,
    held,
    output_range,
    finetune,
    *,
    feature_weight: float = 0.0,
    strategy=None,
    checkpoint: TrainingCheckpoint | None = None,
    progress=True,
    callbacks=(),
    plan: dict | None = None,
):
    """Train tf-keras ``student`` (built in ``strategy.scope()`` when a strategy is given) to
    reproduce frozen ``teacher`` with ``finetune.train_to_match``. Returns
    ``(FinetuneResult, feature pairs)``; ``student`` ends with the best held-out weights."""
    from gencompress.compress.finetune import train_to_match

    pairs = feature_pairs(teacher, student) if feature_weight > 0 else []
    if feature_weight > 0 and not pairs:
        raise UnsupportedModelError("--feature-loss: teacher and student share no intermediate spatial size to match")
    model = student
    if pairs:
        with _scope(strategy):
            model = training_model(student, teacher, pairs, feature_weight)
    result = train_to_match(
        model, teacher, source, held, output_range, finetune,
        callbacks=callbacks, progress=progress, strategy=strategy, checkpoint=checkpoint, plan=plan,
    )
    return result, pairs


def plain_copy(keras_model):
    """The same model with ordinary variables: no distribution-strategy variables, no layers
    shared with a training wrapper. What is saved and converted."""
    keras = import_keras()
    copy = keras.models.clone_model(keras_model)
    copy.set_weights(keras_model.get_weights())
    return copy
