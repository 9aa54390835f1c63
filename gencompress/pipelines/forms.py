"""A run's model in the forms int8 is built from, and the work done once per form.

Each form is function-equal to the model (checked on held-out inputs before use) and made once
per run (``RunCache.transforms``): ``folded`` (BatchNorm folded into the layer before it: what
every int8 artifact is built from, ``int8_source``), ``subpixel`` (that, and transposed
convolutions as convolutions: both runtimes run it in int8 kernels) and ``equalized`` /
``equalized-subpixel`` (channels equalized across layers, ``compress.equalize``). Per form, one
float ONNX export, one TFLite calibration and one ONNX calibration per method, reused by every
artifact and search attempt.
"""

from __future__ import annotations

from gencompress.pipelines.session import Session

def float_onnx(session: Session, model=None) -> bytes:
    """The float ONNX graph of ``model`` (default: the session's), exported once per model."""
    from gencompress.converters.onnx import export_onnx_float

    model = model if model is not None else session.model
    cache = session.cache.onnx_exports
    if id(model) not in cache:
        with session.progress.phase("onnx: exporting the float graph (tf2onnx)"):
            cache[id(model)] = (model, export_onnx_float(model))
    return cache[id(model)][1]


def int8_source(session: Session):
    """What every int8 form of the session's model is built from: its BatchNorm-folded copy
    (``compress.batchnorm``), or the model itself when it has no BatchNorm to fold."""
    return transformed(session, "folded") or session.model


def tflite_calibrated(session: Session, model=None):
    """``model`` (default: the session's int8 source) calibrated for TFLite once per run (``TFLiteMixed``)."""
    from gencompress.compress.quantization import TFLiteMixed

    model = model if model is not None else int8_source(session)
    cache = session.cache.tflite_calibrations
    if id(model) not in cache:
        cache[id(model)] = (model, TFLiteMixed(model, session.calibration, session.progress))
    return cache[id(model)][1]


def quantize_onnx_calibrated(session: Session, precision: str, method: str, nodes_to_exclude=(), range_overrides=None, model=None) -> bytes:
    """Static ONNX quantization of ``model``'s float graph (default: the session's int8 source),
    calibrated once per model and method: onnxruntime writes the ranges to a cache file on the
    first call and reads them on every later one (variants, mixed precision, int16x8)."""
    from gencompress.converters.onnx import quantize_onnx

    model = model if model is not None else int8_source(session)
    float_bytes = float_onnx(session, model)
    index = list(session.cache.onnx_exports).index(id(model))  # the model's place names its cache
    cache = session.cache.dir / f"onnx-calibration-{index}-{method}.json"

    def build(on_sample=None):
        return quantize_onnx(
            float_bytes, precision, session.calibration, method, list(nodes_to_exclude) or None,
            range_overrides, calibration_cache=cache, on_sample=on_sample,
        )

    if cache.exists():
        return build()
    n = len(session.calibration)
    with session.progress.phase(f"onnx: calibrating ({method}) on {n} samples", total=n, unit="sample") as phase:
        return build(phase.update)


def transformed(session: Session, kind: str):
    """A function-equal copy of the session's model made for quantizing (``folded``: BatchNorm
    folded into the layer before it; ``subpixel``: that, and transposed convolutions as
    convolutions; ``equalized``, ``equalized-subpixel``: the folded form with its channels
    equalized across layers, and that in sub-pixel form), or ``None`` when it changes nothing or
    does not match the model's outputs. Made once per run."""
    key = (kind, id(session.model))  # a run may quantize a derived model (pruned, student) too
    if key not in session.cache.transforms:
        session.cache.transforms[key] = (session.model, _transform(session, kind))  # held: ids stay unique
    return session.cache.transforms[key][1]


def _transform(session: Session, kind: str):
    import dataclasses

    import numpy as np

    from gencompress.compress import subpixel

    model = session.model
    if model.keras_model is None:
        return None
    from gencompress.errors import OutputError, ResourceError

    try:
        new = _make_form(session, kind)
    except (MemoryError, ResourceError, OutputError):
        raise  # the machine, not the model
    except Exception as exc:  # noqa: BLE001 - an optional form a model does not allow: skipped, said
        session.progress.log(f"  {kind} form could not be made ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}): not used")
        return None
    if new is None:
        return None
    held = session.evaluation.take(8)
    x = [held.arrays[n] for n in model.input_names]
    def outputs(keras_model):
        out = keras_model(x if len(x) > 1 else x[0], training=False)
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    # Against the model's own outputs: a derived model (pruned, a student) is not the float
    # reference, and its form must match it, not the original (a pruned model never got one).
    lo, hi = session.output_range
    error = max(float(np.max(np.abs(o - r))) for o, r in zip(outputs(new), outputs(model.keras_model)))
    if not error <= subpixel.TOLERANCE * max(1.0, hi - lo):
        session.progress.log(f"  {kind} form differs from the model by {error:.3g}: not used")
        return None
    return dataclasses.replace(model, keras_model=new)


def _make_form(session: Session, kind: str):
    """The tf-keras model of form ``kind`` (see ``transformed``), or ``None`` when it would change nothing."""
    from gencompress.compress import subpixel
    from gencompress.compress.batchnorm import fold_batchnorm
    from gencompress.model import flat_copy, iter_layers

    model = session.model
    if kind.startswith("equalized"):
        from gencompress.compress.equalize import equalize

        with session.progress.phase("channels equalized across layers"):
            new, _ = equalize(int8_source(session).keras_model, session.calibration.arrays)
        if new is not None and kind == "equalized-subpixel":
            new, _ = subpixel.subpixel_model(new)
    elif kind == "folded":
        if not any(type(layer).__name__ in ("BatchNormalization", "SyncBatchNormalization") for layer in iter_layers(model.keras_model)):
            return None
        with session.progress.phase("BatchNorm folded into the layers before it"):
            new, rows = fold_batchnorm(flat_copy(model.keras_model))
        if not any(r["folded"] for r in rows):
            return None
    else:
        if not subpixel.has_conv_transposes(model.keras_model):
            return None
        with session.progress.phase("transposed convolutions in sub-pixel form"):
            new, _ = subpixel.subpixel_model(model.keras_model)
    if new is not None:
        subpixel.keep_output_names(new, model.keras_model)
    return new


def layer_macs(model) -> dict:
    """MACs by layer name of a ``LoadedModel`` (empty for a plain SavedModel)."""
    from gencompress.report.macs import count_macs

    if model.keras_model is None:
        return {}
    macs: dict = {}
    for row in count_macs(model.keras_model).layers:
        macs[row["name"]] = macs.get(row["name"], 0) + row["macs"]
    return macs
