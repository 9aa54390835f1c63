"""Knowledge distillation: train a smaller student generator to reproduce the teacher.

The student is the teacher's own architecture made narrower (``width``: hidden Dense units and
convolution filters scaled, input and output shapes kept) and optionally shallower (``depth``:
shape-preserving blocks dropped), with fresh seeded weights; or an architecture the user brings.
It is trained data-free with the fine-tuning loop of ``finetune.train_to_match`` (the teacher's
outputs on noise latents, or on the user's inputs, are the targets), optionally with
intermediate feature matching through learned 1×1 projections as in GAN Compression (Li et al.,
2020). Training can run under a ``tf.distribute`` strategy (all local devices, or many workers
configured by ``TF_CONFIG``) and can be checkpointed and resumed.

Modules: ``student`` (deriving and checking students), ``features`` (feature matching),
``checkpoint`` (resumable training), ``training`` (the training call).
"""

from gencompress.compress.distillation.checkpoint import TrainingCheckpoint
from gencompress.compress.distillation.features import FeaturePair, feature_pairs, training_model
from gencompress.compress.distillation.student import StudentPlan, check_student, derive_student
from gencompress.compress.distillation.training import plain_copy, train_student

__all__ = [
    "FeaturePair", "StudentPlan", "TrainingCheckpoint", "check_student", "derive_student", "feature_pairs",
    "plain_copy", "train_student", "training_model",
]
