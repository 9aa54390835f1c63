"""Where a browser runtime's outputs part from the native runtime's on the same artifact: the
first op (in execution order) whose output differs between the two.

A copy of the artifact with every op's output made a model output runs in both runtimes on one
held-out sample; the tensors are compared in the order the ops run. Integer tensors must be
equal; float ones within ``FLOAT_TOLERANCE`` of their range (rounding of the same arithmetic).
Exposing a tensor keeps a runtime from fusing its producer away, so when the copy agrees
everywhere the difference lies in a fusion one runtime makes, and this says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FLOAT_TOLERANCE = 1e-4


def first_differing_op(session, page, a) -> str | None:
    """A line naming the first op whose output differs natively and in ``page``'s runtime for
    artifact ``a`` of ``session``, or saying why none could be named (``None``: not comparable)."""
    from gencompress.converters.browser import BrowserLoadError

    data = Path(a.path).read_bytes()
    debug, tensors = (_onnx_exposed if a.format == "onnx" else _tflite_exposed)(data)
    if debug is None:
        return "not located: the file keeps weights after its flatbuffer (ai-edge-quantizer), which a copy with every tensor exposed cannot carry"
    if not tensors:
        return None
    path = session.workdir / f"{Path(a.path).stem}.every-tensor{Path(a.path).suffix}"
    path.write_bytes(debug)
    names = [t["key"] for t in tensors]
    sample = session.evaluation.sample(0)
    try:
        native = _native(path, a.format, session.model.input_names, names, sample)
        browser = page.runner(path, session.model.input_names, names, session.workdir).run(sample)
    except BrowserLoadError as exc:
        return f"not located (the copy with every tensor exposed does not run in the browser: {exc})"
    for t, n, b in zip(tensors, native, browser):
        differs, what = _differs(np.asarray(n), np.asarray(b))
        if differs:
            return f"{t['op']} {t['node']} (output {t['tensor']}: {what})"
    fusion = _native_fusion(session, page, a) if a.format == "onnx" else None
    return fusion or "not located: with every tensor exposed both runtimes agree, so the difference is in a fusion one of them makes"


def _native_fusion(session, page, a) -> str | None:
    """The nodes native onnxruntime fuses at its full optimization level but not at the first
    lower level whose outputs equal the browser's: the fusion the browser build does not make."""
    import onnxruntime as ort

    from gencompress.converters.ort_graph import INT8_KERNELS, _level, optimized_graph
    from gencompress.converters.runners import ONNX_PROVIDERS, onnx_session_options

    sample = session.evaluation.sample(0)
    outputs = [t.name for t in session.model.outputs]
    browser = page.runner(a.path, session.model.input_names, outputs, session.workdir).run(sample)
    for level in ("extended", "basic", "disable"):
        options = onnx_session_options()
        options.graph_optimization_level = _level(level)
        native = ort.InferenceSession(str(a.path), options, providers=ONNX_PROVIDERS).run(None, {n: sample[n] for n in session.model.input_names})
        if not any(_differs(np.asarray(n), np.asarray(b))[0] for n, b in zip(native, browser)):
            def kinds(graph):  # onnxruntime's blocked-layout ops keep their names in another domain
                return {f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in graph.node}

            full, lower = optimized_graph(a.path, "all").graph, optimized_graph(a.path, level).graph
            added = sorted(kinds(full) - kinds(lower))
            if added:
                return (f"a fusion of native onnxruntime's: at optimization level '{level}' its outputs equal the browser's; "
                        f"the full level adds {', '.join(added)}")
            integer = sorted({n.op_type for n in full.node if n.op_type.startswith("QLinear") or n.op_type in INT8_KERNELS})
            return (f"native onnxruntime's kernels at its full optimization level: at '{level}' (the same graph) its outputs "
                    f"equal the browser's" + (f"; integer kernels: {', '.join(integer)}" if integer else ""))
    return None


def _native(path: Path, fmt: str, input_names: list[str], names: list[str], sample: dict) -> list[np.ndarray]:
    """The exposed tensors natively, in the order of ``names`` (onnxruntime with the runners'
    session options; LiteRT through its runner, which matches outputs by signature key)."""
    from gencompress.converters.runners import ONNX_PROVIDERS, make_runner, onnx_session_options

    if fmt == "tflite":
        return make_runner(path, fmt, input_names, names).run(sample)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), onnx_session_options(), providers=ONNX_PROVIDERS)
    return session.run(names, {n: sample[n] for n in input_names})


def _differs(native: np.ndarray, browser: np.ndarray) -> tuple[bool, str]:
    if native.shape != browser.shape:
        return True, f"shape {list(browser.shape)} against {list(native.shape)}"
    n, b = native.astype(np.float64), browser.astype(np.float64)
    diff = np.abs(n - b)
    if not diff.size:
        return False, ""
    if np.issubdtype(native.dtype, np.integer):
        bad = diff > 0
    else:
        span = float(np.max(n) - np.min(n)) if n.size else 0.0
        bad = diff > FLOAT_TOLERANCE * max(span, 1e-12)
    if not bad.any():
        return False, ""
    return True, f"max difference {float(diff.max()):.4g}, {100 * float(bad.mean()):.1f} % of the values"


def _onnx_exposed(data: bytes):
    """The ONNX model with every node output a graph output, and those outputs in node order."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load_model_from_string(data))
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.output) + list(graph.input)}
    existing = {o.name for o in graph.output}
    tensors = []
    for node in graph.node:
        for out in node.output:
            if not out or out not in types or types[out] == 0:
                continue
            if out not in existing:
                graph.output.append(onnx.helper.make_tensor_value_info(out, types[out], None))
            tensors.append({"key": out, "tensor": out, "op": node.op_type, "node": node.name or out})
    return model.SerializeToString(), tensors


def _tflite_exposed(data: bytes):
    """The TFLite model with every op's output a model (and signature) output, keyed ``t<index>``,
    and those outputs in execution order."""
    from gencompress.compat.tflite import builtin_op_name, flatbuffer_object, has_external_buffers, tensor_map, write_flatbuffer

    model = flatbuffer_object(data)
    if has_external_buffers(model):  # rewriting would lose the weights kept after the flatbuffer
        return None, []
    subgraph = model.subgraphs[0]
    outputs = [int(i) for i in subgraph.outputs]
    tensors = []
    for op in subgraph.operators:
        name = builtin_op_name(model, model.operatorCodes[op.opcodeIndex])
        for index in (int(i) for i in op.outputs if i >= 0):
            if index not in outputs:
                outputs.append(index)
            raw = subgraph.tensors[index].name
            tensors.append({"key": f"t{index}", "tensor": raw.decode() if isinstance(raw, bytes) else str(raw), "op": name,
                            "node": f"#{len(tensors)}", "index": index})
    subgraph.outputs = np.array(outputs, dtype=np.int32)
    if model.signatureDefs:
        signature = model.signatureDefs[0]
        kept = {int(m.tensorIndex) for m in signature.outputs}
        for t in tensors:
            if t["index"] not in kept:
                signature.outputs.append(tensor_map(t["key"], t["index"]))
        for m in signature.outputs:  # every output keyed by index, the original ones too
            m.name = f"t{int(m.tensorIndex)}"
    return write_flatbuffer(model), tensors
