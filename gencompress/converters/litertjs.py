"""What LiteRT.js 2.5.3 needs of a ``.tflite`` that the native runtime does not: the copy of an
artifact the browser runs (and the demo ships), same ops and weights.

- **A static batch.** Its ``CompiledModel`` checks each input buffer against the signature's
  type, ``-1`` included, and has no resize, so a ``[-1, ...]`` input never runs. The shape
  signatures' ``-1`` become 1, edited in place (every other byte kept: re-serializing would drop
  the weights ai-edge-quantizer keeps after the flatbuffer).
- **Shapes as constants.** It leaves the output of a ``SHAPE`` op unwritten (zeros) after some
  delegated ops (a Dense straight into a Keras ``Reshape``: ``FULLY_CONNECTED → SHAPE``), so
  the ``RESHAPE`` and ``TRANSPOSE_CONV`` fed by ``SHAPE → STRIDED_SLICE → PACK`` get garbage
  (the published VAE decoder ``zeej``: -147 dB). With the batch fixed every shape is known: the
  ``RESHAPE`` shape and ``TRANSPOSE_CONV`` output-shape inputs become constants of their
  outputs' static shapes and the ops left without consumers go. Needs a re-serialization, so it
  is skipped for files with weights after the flatbuffer (said in the notes).
"""

from __future__ import annotations

import numpy as np

# Ops whose shape input (by position) is computed at run time in a dynamic-batch graph.
_SHAPE_INPUTS = {"RESHAPE": 1, "TRANSPOSE_CONV": 0}
_INT32 = 2  # TensorType.INT32


def litertjs_copy(data: bytes) -> tuple[bytes | None, list[str]]:
    """The copy of ``data`` LiteRT.js can run, and what was changed (``None``: nothing to change)."""
    fixed = static_batch_tflite(data)
    notes = []
    if fixed is not None:
        notes.append("LiteRT.js runs static shapes only (its CompiledModel refuses a [-1, ...] input): "
                     "measured a copy with the batch dimension fixed to 1 (same ops and weights)")
    folded, why = constant_shapes(fixed if fixed is not None else data)
    if folded is not None:
        notes.append("LiteRT.js leaves SHAPE outputs unwritten after some delegated ops: in the copy, the "
                     "shapes that RESHAPE / TRANSPOSE_CONV read are constants (the static shapes)")
    elif why:
        notes.append(why)
    return (folded if folded is not None else fixed), notes


def static_batch_tflite(data: bytes) -> bytes | None:
    """``data`` with every dynamic (-1) dimension of its tensors' shape signatures set to 1 (the
    size the converter stored for the batch), or ``None`` when nothing is dynamic. Edited in
    place: the rest of the file is byte for byte the artifact's."""
    from gencompress.compat.tflite import shape_signature_views

    edited = bytearray(data)
    changed = False
    for signature in shape_signature_views(edited):
        if (signature < 0).any():
            signature[signature < 0] = 1
            changed = True
    return bytes(edited) if changed else None


def constant_shapes(data: bytes) -> tuple[bytes | None, str]:
    """``data`` (static shapes) with the run-time shape inputs of RESHAPE / TRANSPOSE_CONV as
    constants and the ops that computed them removed; ``(None, why)`` when there are none or the
    file cannot be rewritten."""
    from gencompress.compat.tflite import builtin_op_name, constant_tensor, flatbuffer_object, has_external_buffers, write_flatbuffer

    model = flatbuffer_object(data)
    subgraph = model.subgraphs[0]
    produced = {int(o): op for op in subgraph.operators for o in op.outputs}
    targets = []
    for op in subgraph.operators:
        position = _SHAPE_INPUTS.get(builtin_op_name(model, model.operatorCodes[op.opcodeIndex]))
        if position is not None and len(op.inputs) > position and int(op.inputs[position]) in produced:
            targets.append((op, position))
    if not targets:
        return None, ""
    if has_external_buffers(model):
        return None, ("this file keeps weights after its flatbuffer: its run-time shapes were left as they are "
                      "(LiteRT.js may leave them unwritten)")
    for op, position in targets:
        shape = np.asarray(subgraph.tensors[int(op.outputs[0])].shape, dtype=np.int32)
        op.inputs[position] = constant_tensor(model, subgraph, shape, _INT32, f"gencompress/static_shape_{len(subgraph.tensors)}")
    _drop_unused(subgraph)
    return write_flatbuffer(model), ""


def _drop_unused(subgraph) -> None:
    """Remove ops none of whose outputs is read (by an op or as a model output), until none is left."""
    while True:
        read = {int(i) for op in subgraph.operators for i in op.inputs if i >= 0} | {int(o) for o in subgraph.outputs}
        kept = [op for op in subgraph.operators if any(int(o) in read for o in op.outputs)]
        if len(kept) == len(subgraph.operators):
            return
        subgraph.operators = kept
