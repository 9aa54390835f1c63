"""Channel pruning: whole filters and units removed, so the written model is a plain Keras model
with fewer channels whose ``.tflite``/``.onnx`` are physically smaller and faster.

Modules: ``graph`` (the one planner of coupled channels, shared with ``--width`` students),
``probe`` (the model with channel masks on every exit of a group), ``importance`` (which
channels matter to the teacher's outputs), ``refit`` (least-squares re-fit of the layers that
read pruned channels, on the teacher's activations), ``slicing`` (the physical model), ``cost``
(MACs and parameters as functions of the channels kept), ``allocation`` (per-group amounts from
measured sensitivity under a global target), ``pruner`` (the whole step), ``smallest`` (the
search for the smallest model meeting a PSNR target).
"""
