"""Exact rewrites of a float ONNX graph so that onnxruntime's CPU provider runs it in int8.

onnxruntime turns a Q/DQ group into an int8 kernel only for some ops (Conv, MatMul, Gemm, Add,
Mul, LeakyRelu, Sigmoid, Concat, ...) and drops the Q/DQ around data-movement ops (Reshape,
Transpose, Slice, Resize, ...); any other op between Q/DQ pairs runs in float, with conversions
on both sides (see ``converters.ort_graph``). These rewrites replace such ops in the *float*
graph, before quantization, by exact equivalents made of ops it fuses:

- ``ConvTranspose`` → ``Conv`` with stride² times the output channels, then depth-to-space as
  Reshape → Transpose → Reshape (the sub-pixel form), and a Slice where the output is not a
  multiple of the stride. A ``Slice`` cropping its output and a ``BatchNormalization`` right
  after it are folded in first. (``DepthToSpace`` itself is not used: onnxruntime keeps its
  Q/DQ, so it would run in float.)
- ``BatchNormalization`` anywhere else (after an activation, a Transpose) → a 1×1 depthwise Conv.
- ``Neg`` → ``Mul`` by -1.
- ``MatMul`` followed by per-column ``Mul``/``Add`` constants (a Dense layer's BatchNorm, which
  tf2onnx writes as Mul and Add) → ``MatMul`` + one ``Add`` (which onnxruntime fuses to Gemm).

Each rewrite is checked on the caller's inputs: the rewritten float graph must give the
original's outputs within ``TOLERANCE`` (largest absolute difference); one that does not is left
out and named in ``RewriteResult.refused``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

# Largest absolute output difference a rewrite may cause (float rounding of reordered sums).
TOLERANCE = 1e-5


@dataclass(frozen=True)
class Rewrite:
    """One node replaced: its name and op type, and what it became."""

    node: str
    op: str
    into: str


@dataclass(frozen=True)
class RewriteResult:
    """The rewritten float graph (the input bytes when nothing changed), what was rewritten,
    what was left alone and why (``(node, op, reason)``), and the largest absolute output
    difference from the original on the inputs it was checked with."""

    model: bytes
    rewritten: tuple[Rewrite, ...] = ()
    refused: tuple[tuple[str, str, str], ...] = ()
    max_abs_error: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.rewritten)


class _Refuse(Exception):
    """A node this rewrite cannot replace exactly (the reason is the message)."""


@dataclass
class _Plan:
    """Replace ``remove`` (the anchor first) by ``nodes``, placed where the last removed node was."""

    rewrite: Rewrite
    remove: list
    nodes: list
    initializers: dict = field(default_factory=dict)


def rewrite_for_int8(float_onnx: bytes, inputs: Mapping[str, np.ndarray], tolerance: float = TOLERANCE) -> RewriteResult:
    """Rewrite ``float_onnx`` so more of it runs in onnxruntime's int8 kernels once quantized.

    ``inputs``: a few samples (batch axis first) keyed by graph input name; every rewrite is
    kept only if the outputs on them stay within ``tolerance`` of the original's. Deterministic:
    the same bytes and inputs give the same bytes.
    """
    import onnx

    model = onnx.load_from_string(float_onnx)
    plans, refused = _plans(model)
    if not plans:
        return RewriteResult(float_onnx, refused=tuple(refused))
    reference = _run(float_onnx, inputs)
    data = _apply(model, plans)
    error = _max_error(reference, _run(data, inputs))
    if error > tolerance:  # find the culprits: keep each rewrite that is exact on its own
        kept = []
        for plan in plans:
            trial = _apply(model, kept + [plan])
            e = _max_error(reference, _run(trial, inputs))
            if e <= tolerance:
                kept.append(plan)
            else:
                refused.append((plan.rewrite.node, plan.rewrite.op, f"outputs differ by {e:.2g} after the rewrite"))
        plans = kept
        if not plans:
            return RewriteResult(float_onnx, refused=tuple(refused))
        data = _apply(model, plans)
        error = _max_error(reference, _run(data, inputs))
    return RewriteResult(data, tuple(p.rewrite for p in plans), tuple(refused), float(error))


def _plans(model) -> tuple[list[_Plan], list]:
    """The rewrites that apply to ``model``, in node order, and the nodes refused with a reason."""
    graph = _Graph(model)
    plans, refused, taken = [], [], set()
    for node in list(model.graph.node):
        make = _REWRITES.get(node.op_type)
        if make is None or node.name in taken:
            continue
        try:
            plan = make(graph, node)
        except _Refuse as why:
            refused.append((node.name, node.op_type, str(why)))
            continue
        if plan is None or any(n.name in taken for n in plan.remove):
            continue
        taken.update(n.name for n in plan.remove)
        plans.append(plan)
    return plans, refused


def _apply(model, plans: list[_Plan]) -> bytes:
    """A copy of ``model`` with ``plans`` applied and initializers nothing reads any more removed."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    removed = {n.name for p in plans for n in p.remove}
    at = {p.remove[-1].name: p for p in plans}
    nodes = []
    for node in model.graph.node:
        if node.name in at:
            nodes.extend(at[node.name].nodes)
        elif node.name not in removed:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    for p in plans:
        out.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in p.initializers.items())
    used = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    keep = [i for i in out.graph.initializer if i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    # value_info of tensors that no longer exist (or changed shape) would mislead shape inference
    del out.graph.value_info[:]
    return out.SerializeToString()


def _run(data: bytes, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: inputs[n] for n in names})


def _max_error(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    errors = [float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0 for x, y in zip(a, b)]
    return max(errors) if all(math.isfinite(e) for e in errors) else math.inf


# --------------------------------------------------------------------------- the graph


class _Graph:
    """Read access to a model's graph: constants, shapes (from shape inference), consumers."""

    def __init__(self, model):
        import onnx
        from onnx import numpy_helper

        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:  # Constant nodes hold constants too
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        inferred = onnx.shape_inference.infer_shapes(model)
        self.shapes = {}
        for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            dims = v.type.tensor_type.shape.dim
            self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        self.consumers: dict[str, list] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in model.graph.output}
        self.producer = {o: n for n in model.graph.node for o in n.output}

    def const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise _Refuse(f"{what} is not a constant")
        return self.consts[name].astype(np.float32) if self.consts[name].dtype == np.float64 else self.consts[name]

    def sole_consumer(self, name: str, op_type: str):
        """The one node reading ``name`` when it is an ``op_type`` and ``name`` is not a graph output."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.outputs:
            return users[0]
        return None


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _node(op: str, inputs: list[str], outputs: list[str], name: str, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=name, **attrs)


# --------------------------------------------------------------------------- ConvTranspose


def _conv_transpose(g: _Graph, node) -> _Plan:
    """``ConvTranspose`` as ``Conv`` + depth-to-space (see ``subpixel_kernel``)."""
    a = _attrs(node)
    if a.get("group", 1) != 1:
        raise _Refuse("grouped")
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise _Refuse("dilated")
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or "output_shape" in a:
        raise _Refuse("auto_pad or output_shape instead of explicit pads")
    weight = g.const(node.input[1], "the weight")
    if weight.ndim != 4:
        raise _Refuse("not 2-D")
    shape = g.shapes.get(node.input[0])
    if not shape or len(shape) != 4 or None in shape[2:]:
        raise _Refuse("input height and width not known")
    cout = weight.shape[1]
    bias = g.const(node.input[2], "the bias") if len(node.input) > 2 and node.input[2] else np.zeros(cout, np.float32)
    strides = list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    extra = list(a.get("output_padding", [0, 0]))
    full = [strides[i] * (shape[2 + i] - 1) + extra[i] + weight.shape[2 + i] for i in range(2)]
    begin, length = [pads[0], pads[1]], [full[i] - pads[i] - pads[2 + i] for i in range(2)]
    after = _After(g, node, begin, length)
    if after.bn is not None:
        scale, shift = _bn_affine(g, after.bn)
        weight, bias = weight * scale[None, :, None, None], bias * scale + shift
    kernel, conv_pads, rows = subpixel_kernel(weight, strides, after.begin, after.length, shape[2:])
    name = node.name
    inits = {f"{name}/subpixel_weight": kernel, f"{name}/subpixel_bias": np.tile(bias.astype(np.float32), strides[0] * strides[1])}
    nodes = [_node("Conv", [node.input[0], *inits], [f"{name}/subpixel_conv:0"], f"{name}/subpixel_conv", pads=conv_pads, kernel_shape=list(kernel.shape[2:]))]
    nodes += after.activations(nodes[-1].output[0])  # elementwise: they commute with depth-to-space
    if strides != [1, 1]:
        nodes += _depth_to_space(name, nodes[-1].output[0], cout, strides, rows, inits)
    if [rows[i] * strides[i] for i in range(2)] != after.length:
        inits[f"{name}/crop_starts"] = np.zeros(2, np.int64)
        inits[f"{name}/crop_ends"] = np.array(after.length, np.int64)
        inits[f"{name}/crop_axes"] = np.array([2, 3], np.int64)
        nodes.append(_node("Slice", [nodes[-1].output[0], f"{name}/crop_starts", f"{name}/crop_ends", f"{name}/crop_axes"], [""], f"{name}/crop"))
    nodes[-1].output[0] = after.out
    folded = [n.op_type for n in after.remove[1:]]
    into = ("Conv + depth-to-space" if strides != [1, 1] else "Conv") + (f" ({', '.join(folded)} folded in)" if folded else "")
    return _Plan(Rewrite(name, "ConvTranspose", into), after.remove, nodes, inits)


# Elementwise ops of one input that commute with depth-to-space and cropping: moved before them,
# so the Conv's int8 kernel absorbs a Relu and its output range is the activation's.
_ELEMENTWISE = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "Softplus"}


class _After:
    """What a ConvTranspose rewrite absorbs after the node: a Slice cropping H/W (into the
    crop), a BatchNormalization (into the weights), then elementwise activations (moved)."""

    def __init__(self, g: _Graph, node, begin: list[int], length: list[int]):
        self.remove, self.out, self.begin, self.length, self.bn, self.moved = [node], node.output[0], begin, length, None, []
        crop = g.sole_consumer(self.out, "Slice")
        if crop is not None and (window := _spatial_crop(g, crop, length)) is not None:
            self.begin = [begin[i] + window[i][0] for i in range(2)]
            self.length = [window[i][1] for i in range(2)]
            self._take(crop)
        bn = g.sole_consumer(self.out, "BatchNormalization")
        if bn is not None and len(bn.output) == 1 and all(n in g.consts for n in bn.input[1:5]):
            self.bn = bn
            self._take(bn)
        while (nxt := next((g.sole_consumer(self.out, op) for op in sorted(_ELEMENTWISE) if g.sole_consumer(self.out, op)), None)) is not None:
            self.moved.append(nxt)
            self._take(nxt)

    def _take(self, node) -> None:
        self.remove.append(node)
        self.out = node.output[0]

    def activations(self, x: str) -> list:
        """Copies of the moved activations, applied to ``x`` (the Conv's output)."""
        from onnx import helper

        copies = []
        for node in self.moved:
            copy = helper.make_node(node.op_type, [x], [f"{node.name}/before_depth_to_space:0"], name=node.name)
            copy.attribute.extend(node.attribute)
            copies.append(copy)
            x = copy.output[0]
        return copies


def _depth_to_space(name: str, x: str, channels: int, strides: list[int], rows: list[int], inits: dict) -> list:
    """[N, sh·sw·C, Qh, Qw] → [N, C, Qh·sh, Qw·sw], channel (rh·sw + rw)·C + c to (c, q·sh + rh, ...).

    Written channels-last (Transpose to NHWC, Reshape, Transpose of the two middle axes, Reshape,
    Transpose back): onnxruntime runs int8 convolutions channels-last, so the outer Transposes
    cancel against the ones it inserts, and the middle one moves whole sw·C blocks (the
    channels-first form moved single bytes: 190 µs of a 0.8 ms int8 VAE decoder).
    """
    sh, sw = strides
    inits[f"{name}/d2s_split"] = np.array([0, rows[0], rows[1], sh, sw, channels], np.int64)
    inits[f"{name}/d2s_merge"] = np.array([0, rows[0] * sh, rows[1] * sw, channels], np.int64)
    steps = [
        ("Transpose", [x], "to_nhwc", {"perm": [0, 2, 3, 1]}),
        ("Reshape", [f"{name}/d2s_split"], "d2s_split", {}),
        ("Transpose", [], "d2s_transpose", {"perm": [0, 1, 3, 2, 4, 5]}),
        ("Reshape", [f"{name}/d2s_merge"], "d2s_merge", {}),
        ("Transpose", [], "to_nchw", {"perm": [0, 3, 1, 2]}),
    ]
    nodes, prev = [], None
    for op, extra, suffix, attrs in steps:
        ins = extra if prev is None else [prev] + extra
        nodes.append(_node(op, ins, [f"{name}/{suffix}:0"], f"{name}/{suffix}", **attrs))
        prev = nodes[-1].output[0]
    return nodes


def subpixel_kernel(weight: np.ndarray, strides, begin, length, size) -> tuple[np.ndarray, list[int], list[int]]:
    """The stride-1 Conv that computes a ConvTranspose phase by phase.

    ``weight``: the ConvTranspose's [Cin, Cout, kh, kw]; output row ``o`` (of ``length``, after
    cropping ``begin`` rows of the full output) is ``q·s + r``: it sums ``x[i]·w[k]`` over
    ``i·s + k = o + begin``, i.e. taps ``k = r + begin + (P - j)·s`` of a length-L correlation
    at input row ``q + j - P``. Returns the kernel [sh·sw·Cout, Cin, Lh, Lw] (channel
    ``(rh·sw + rw)·Cout + c``), the Conv's pads and its output rows/columns per phase (the
    depth-to-space output, ``rows·s``, is at least ``length``).
    """
    plans = [_axis(weight.shape[2 + i], strides[i], begin[i], length[i], size[i]) for i in range(2)]
    (ph, lh, taps_h, end_h, qh), (pw, lw, taps_w, end_w, qw) = plans
    cin, cout = weight.shape[:2]
    sh, sw = strides
    kernel = np.zeros((sh, sw, cout, cin, lh, lw), np.float32)
    w = np.transpose(weight, (1, 0, 2, 3))  # [Cout, Cin, kh, kw]
    for rh, jh, kh in taps_h:
        for rw, jw, kw in taps_w:
            kernel[rh, rw, :, :, jh, jw] = w[:, :, kh, kw]
    return kernel.reshape(sh * sw * cout, cin, lh, lw), [ph, pw, end_h, end_w], [qh, qw]


def _axis(k: int, s: int, begin: int, length: int, n: int):
    """One spatial axis of ``subpixel_kernel``: (pad before, kernel length, taps (r, j, k), pad
    after, output rows per phase)."""
    spans = []
    for r in range(s):
        lo, hi = -((r + begin) // s), (k - 1 - r - begin) // s  # t = P - j with 0 <= r + begin + t·s < k
        if lo <= hi:
            spans.append((lo, hi))
    if not spans:
        raise _Refuse("the crop removes every tap")
    t_min, t_max = min(lo for lo, _ in spans), max(hi for _, hi in spans)
    if t_max < 0:
        raise _Refuse("crops more than a kernel's length")
    pad, size = t_max, t_max - t_min + 1
    taps = [(r, pad - t, r + begin + t * s) for r in range(s) for t in range(t_min, t_max + 1) if 0 <= r + begin + t * s < k]
    rows = -(-length // s)
    end = max(0, rows - 1 + size - n - pad)
    return pad, size, taps, end, n + pad + end - size + 1


def _spatial_crop(g: _Graph, node, length: list[int]):
    """``[(start, size)]`` per spatial axis of a Slice that only crops H and W, else None."""
    try:
        starts, ends = (g.const(n, "").astype(np.int64) for n in node.input[1:3])
        axes = g.const(node.input[3], "").astype(np.int64) if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
        steps = g.const(node.input[4], "") if len(node.input) > 4 and node.input[4] else np.ones(len(starts))
    except _Refuse:
        return None
    window = [(0, length[0]), (0, length[1])]
    for axis, start, end, step in zip(axes, starts, ends, steps):
        axis = int(axis) % 4
        if axis < 2 or step != 1 or start < 0:
            return None
        n = length[axis - 2]
        stop = n + int(end) if end < 0 else min(int(end), n)
        window[axis - 2] = (int(start), stop - int(start))
    return window


def _bn_affine(g: _Graph, bn) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (g.const(n, "a BatchNormalization parameter").astype(np.float64) for n in bn.input[1:5])
    scale = gamma / np.sqrt(var + _attrs(bn).get("epsilon", 1e-5))
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


# --------------------------------------------------------------------------- the others


def _batch_norm(g: _Graph, node) -> _Plan | None:
    """A BatchNormalization no Conv before it absorbs, as a 1×1 depthwise Conv."""
    producer = g.producer.get(node.input[0])
    if producer is not None and producer.op_type == "Conv" and g.sole_consumer(node.input[0], "BatchNormalization"):
        return None  # onnxruntime folds it into the Conv
    shape = g.shapes.get(node.input[0])
    if not shape or len(shape) != 4 or len(node.output) != 1:
        raise _Refuse("not a 4-D inference-mode BatchNormalization")
    scale, shift = _bn_affine(g, node)
    name = node.name
    inits = {f"{name}/depthwise_weight": scale.reshape(-1, 1, 1, 1), f"{name}/depthwise_bias": shift}
    conv = _node("Conv", [node.input[0], *inits], [node.output[0]], f"{name}/depthwise", group=len(scale), kernel_shape=[1, 1])
    return _Plan(Rewrite(name, "BatchNormalization", "1×1 depthwise Conv"), [node], [conv], inits)


def _neg(g: _Graph, node) -> _Plan:
    name = node.name
    inits = {f"{name}/minus_one": np.array(-1.0, np.float32)}
    mul = _node("Mul", [node.input[0], f"{name}/minus_one"], [node.output[0]], f"{name}/times_minus_one")
    return _Plan(Rewrite(name, "Neg", "Mul by -1"), [node], [mul], inits)


def _matmul(g: _Graph, node) -> _Plan | None:
    """MatMul with constant weights and the per-column Mul/Add constants after it, as MatMul + Add."""
    if node.input[1] not in g.consts or g.consts[node.input[1]].ndim != 2:
        return None
    weight = g.consts[node.input[1]].astype(np.float64)
    columns = weight.shape[1]
    bias = np.zeros(columns)
    chain, out = [], node.output[0]
    while True:
        nxt = g.sole_consumer(out, "Mul") or g.sole_consumer(out, "Add")
        other = None if nxt is None else next((i for i in nxt.input if i != out), None)
        if nxt is None or other not in g.consts or g.consts[other].size not in (1, columns):
            break
        value = g.consts[other].astype(np.float64).reshape(-1)
        if g.consts[other].ndim > 2 or (g.consts[other].ndim == 2 and g.consts[other].shape[0] != 1):
            break
        if nxt.op_type == "Mul":
            weight, bias = weight * value, bias * value
        else:
            bias = bias + value
        chain.append(nxt)
        out = nxt.output[0]
    if not any(n.op_type == "Mul" for n in chain) and len(chain) < 2:
        return None  # MatMul + bias is already what onnxruntime fuses
    name = node.name
    inits = {f"{name}/folded_weight": weight.astype(np.float32), f"{name}/folded_bias": bias.astype(np.float32)}
    nodes = [
        _node("MatMul", [node.input[0], f"{name}/folded_weight"], [f"{name}/folded:0"], f"{name}/folded"),
        _node("Add", [f"{name}/folded:0", f"{name}/folded_bias"], [out], f"{name}/folded_bias_add"),
    ]
    return _Plan(Rewrite(name, "MatMul", f"MatMul + Add ({', '.join(n.op_type for n in chain)} folded)"), [node] + chain, nodes, inits)


_REWRITES = {
    "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batch_norm,
    "Neg": _neg,
    "MatMul": _matmul,
}
