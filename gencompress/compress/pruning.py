"""Magnitude pruning (tensorflow-model-optimization) with data-free fine-tuning.

``prune_model`` wraps the chosen layers of a *copy* of the model in tfmot's
``PruneLowMagnitude``, fine-tunes the copy to reproduce the original (``finetune.train_to_match``)
while the sparsity schedule zeroes the smallest weights, strips the wrappers and measures the
sparsity on the resulting weights. ``tflite_weight_sparsity`` finds the zeros again in a written
``.tflite``.

What pruning buys: zeros compress, so the *download* (gzip, brotli) shrinks; the ``.tflite`` /
``.onnx`` files themselves store every weight and the runtimes run dense kernels, so file size,
memory and latency stay the same (see ``RUNTIME_NOTE``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from gencompress.compat.tfmot import internals, is_recurrent_or_attention, prunable_weight_names
from gencompress.config import PruneConfig
from gencompress.errors import OptionError
from gencompress.model import iter_layers
from gencompress.tfenv import import_keras, import_tf


# Layers pruned by default: tfmot prunes their kernel. Embedding tables only when named.
_DEFAULT_WEIGHTS = {"kernel", "pointwise_kernel", "recurrent_kernel"}


RUNTIME_NOTE = (
    "Pruning zeroes weights; it does not remove them. TFLite and ONNX store the pruned weights "
    "densely (zeros included), so file size, memory and latency are unchanged: the gain is the "
    "compressed download (the gzip column). Speed-ups need sparse kernels, and XNNPACK (LiteRT's "
    "CPU backend) has them only for float CNN subgraphs of a set shape: a 3x3 stride-2 CONV_2D with "
    "3 input channels first, then 1x1 CONV_2D layers with at least 2/3 of their weights zero (stored "
    "sparse, with DENSIFY ops), depthwise 3x3/5x5 convolutions, ending in a spatial MEAN or "
    "DEPTH_TO_SPACE. Dense layers, transposed convolutions and int8 models always run dense. The "
    "2:4 pattern is for hardware with 2:4 sparse units (NVIDIA Ampere+ tensor cores via TensorRT); "
    "on these CPU runtimes it is an accuracy-cost knob, not a speed one."
)


@dataclass
class PruneInfo:
    """What was pruned and how sparse the result measured."""

    requested_sparsity: float
    schedule: dict
    structure: str | None
    layers: list[dict] = field(default_factory=list)
    left_dense: list[dict] = field(default_factory=list)
    finetune: dict = field(default_factory=dict)

    @property
    def pruned_zeros(self) -> int:
        return sum(layer["zeros"] for layer in self.layers)

    @property
    def pruned_size(self) -> int:
        return sum(layer["size"] for layer in self.layers)

    @property
    def measured_sparsity(self) -> float:
        """Zeros over the size of the pruned weights, measured on the stripped model."""
        return self.pruned_zeros / self.pruned_size if self.pruned_size else 0.0

    def to_dict(self) -> dict:
        return {
            "requested_sparsity": self.requested_sparsity,
            "schedule": self.schedule,
            "structure": self.structure,
            "measured_sparsity": round(self.measured_sparsity, 5),
            "pruned_weights": self.pruned_size,
            "zero_weights": self.pruned_zeros,
            "layers": self.layers,
            "left_dense": self.left_dense,
            "finetune": self.finetune,
        }


def select_layers(keras_model, config: PruneConfig) -> tuple[list[str], list[dict]]:
    """Names of the layers to prune, and the layers left dense (name, class, params, reason)."""
    tfmot_registry = _registry()
    candidates, left = [], []
    for layer in iter_layers(keras_model):
        cls = type(layer).__name__
        params = int(layer.count_params()) if layer.built else 0
        names = _prunable_weight_names(layer, tfmot_registry)
        if names is None:
            if params or _is_op_layer(cls):
                left.append(_left(layer, params, f"tfmot cannot prune {cls} layers" if not _is_recurrent(layer, tfmot_registry) else f"{cls} (recurrent/attention) layers are not pruned by gencompress yet"))
            continue
        if not names:
            if params:
                left.append(_left(layer, params, f"tfmot prunes no weights of {cls} layers"))
            continue
        candidates.append((layer, names))

    by_name = {layer.name: (layer, names) for layer, names in candidates}
    if config.layers is not None:
        all_names = {layer.name for layer in iter_layers(keras_model)}
        unknown = [n for n in config.layers if n not in all_names]
        if unknown:
            raise OptionError(
                f"--layers: no layer named {', '.join(unknown)} (prunable: {', '.join(by_name) or 'none'})"
            )
        refused = [n for n in config.layers if n not in by_name]
        if refused:
            reasons = {d["name"]: d["reason"] for d in left}
            raise OptionError(
                "--layers: cannot prune " + "; ".join(f"{n} ({reasons.get(n, 'no prunable weights')})" for n in refused)
            )
        chosen = [layer for layer, _ in candidates if layer.name in config.layers]
    else:
        chosen = []
        for layer, names in candidates:
            if _DEFAULT_WEIGHTS & set(names):
                chosen.append(layer)
            else:
                left.append(_left(layer, layer.count_params(), f"{type(layer).__name__} is pruned only when named in --layers"))
    if config.skip_first and chosen:
        left.append(_left(chosen[0], chosen[0].count_params(), "first prunable layer (--skip-first)"))
        chosen = chosen[1:]
    if config.skip_last and chosen:
        left.append(_left(chosen[-1], chosen[-1].count_params(), "last prunable layer (--skip-last)"))
        chosen = chosen[:-1]
    if config.structure == "2:4":
        kept = []
        for layer in chosen:
            bad = [w for w in by_name[layer.name][1] if _m_by_n_axis(_weight_value(layer, w)) % 4]
            if bad:
                axis = _m_by_n_axis(_weight_value(layer, bad[0]))
                left.append(_left(layer, layer.count_params(), f"2:4 needs the kernel's input-channel axis to be a multiple of 4 (it is {axis})"))
            else:
                kept.append(layer)
        chosen = kept
    if not chosen:
        raise OptionError("no layer to prune: " + ("; ".join(f"{d['name']}: {d['reason']}" for d in left) or "the model has no prunable layers"))
    return [layer.name for layer in chosen], left


def _tfmot():
    import warnings

    import_tf()  # TF_USE_LEGACY_KERAS=1 first: tfmot only works with tf-keras
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # tfmot 0.8 still uses distutils
        import tensorflow_model_optimization as tfmot
    return tfmot


def _registry():
    _tfmot()
    return internals().prune_registry.PruneRegistry


def _prunable_weight_names(layer, registry):
    """Attribute names tfmot would prune; [] if supported with nothing to prune; None if unsupported."""
    if hasattr(layer, "get_prunable_weights"):  # a custom PrunableLayer
        wanted = {id(w) for w in layer.get_prunable_weights()}
        return [w.name.split("/")[-1].split(":")[0] for w in layer.weights if id(w) in wanted] or []
    if not registry.supports(layer):
        return None
    return prunable_weight_names(registry, layer)  # None for RNN / attention: pruned through cells, not measured here


def _is_recurrent(layer, registry) -> bool:
    return registry.supports(layer) and is_recurrent_or_attention(registry, layer)


def _is_op_layer(cls: str) -> bool:
    return cls in ("TFOpLambda", "SlicingOpLambda", "TensorFlowOpLayer", "Lambda")


def _m_by_n_axis(weight) -> int:
    # tfmot groups m-by-n along axis 0 of a rank-2 kernel and axis 2 of a rank-4 one.
    shape = tuple(weight.shape)
    return shape[0] if len(shape) == 2 else shape[2] if len(shape) == 4 else 1


def _left(layer, params, reason) -> dict:
    return {"name": layer.name, "class": type(layer).__name__, "params": int(params), "reason": reason}


def prune_model(
    keras_model,
    config: PruneConfig,
    *,
    source=None,
    held=None,
    output_range: tuple[float, float] | None = None,
    seed: int = 0,
    progress: bool = False,
    callbacks=(),
    strategy=None,
    plan: dict | None = None,
):
    """Prune a copy of tf-keras ``keras_model``: returns ``(stripped pruned model, PruneInfo)``.

    The input model is never modified (it is the teacher of the fine-tuning). ``source`` yields
    training input batches and ``held`` is the validation ``CalibrationSet`` (both default to
    noise seeded by ``seed``, for models with float inputs only); ``output_range`` defaults to the
    range of the teacher's outputs on ``held``. ``config.training`` is the fine-tuning; its
    ``steps`` cover the schedule (pruning happens while training).
    """
    from gencompress.compress.finetune import train_to_match

    tfmot = _tfmot()

    keras = import_keras()
    chosen, left = select_layers(keras_model, config)
    if not config.training.resolved:
        config, plan = _plan(keras, keras_model, config, source, held, seed, strategy)
    finetune = config.training
    schedule = config.effective_schedule()
    if source is None or held is None:
        source, held = _default_sources(keras_model, finetune.batch_size, seed)
    if output_range is None:
        from gencompress.report.metrics import measured_output_range

        reference = keras_model.predict(_ordered(held.arrays, keras_model.input_names), verbose=0)
        output_range = measured_output_range(reference if isinstance(reference, list) else [reference])

    scope = strategy.scope() if strategy is not None else _NullScope()
    with scope:
        student = keras.models.clone_model(keras_model)  # fresh layers: tfmot's own cloning shares them
        student.set_weights(keras_model.get_weights())
        wrapped = _wrap(keras, tfmot, student, set(chosen), config, schedule)

    ft = dataclasses.replace(finetune, min_steps=max(finetune.min_steps, schedule["target_at"]))
    result = train_to_match(
        wrapped, keras_model, source, held, output_range, ft,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), *callbacks],
        progress=progress, strategy=strategy, plan=plan,
    )
    if result.steps_run < schedule["target_at"]:
        result.notes.append(
            f"training ended at step {result.steps_run} ({result.stopped_by}), before the schedule reaches the target sparsity "
            f"at step {schedule['target_at']}: the measured sparsity is below the request (a --schedule constant reaches it from the start)"
        )
    wrappers = [layer for layer in iter_layers(wrapped) if isinstance(layer, internals().PruneLowMagnitude)]
    # weights = weights * mask: the last optimizer step moved masked weights off 0. Not tfmot's
    # weight_mask_op: under a tf.distribute strategy it fails outside a replica context.
    for w in wrappers:
        for weight, mask, _ in w.pruning_vars:
            weight.assign(weight.numpy() * mask.numpy())
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    info = PruneInfo(config.sparsity, schedule, config.structure, left_dense=left)
    info.layers = measure_sparsity(stripped, chosen)
    info.finetune = {**result.summary(), "config": dataclasses.asdict(ft)}
    return stripped, info


def _plan(keras, keras_model, config: PruneConfig, source, held, seed: int, strategy):
    """``config`` with the fine-tuning's steps and batch chosen from a copy's measured step cost."""
    from gencompress.compress.finetune_plan import PROBE_BATCH, resolve_training

    probe = keras.models.clone_model(keras_model)
    probe.set_weights(keras_model.get_weights())
    training = config.training
    if source is None:
        source, _ = _default_sources(keras_model, PROBE_BATCH, seed)
    elif training.batch_size is None:  # a given stream has its batch size
        training = dataclasses.replace(training, batch_size=len(next(iter(next(iter(source)).values()))))
    batches = iter(source)
    first = next(batches)
    while len(next(iter(first.values()))) < PROBE_BATCH:  # a small given batch: gather a probe batch
        more = next(batches)
        first = {k: np.concatenate([v, more[k]]) for k, v in first.items()}
    held_samples = len(held) if held is not None else 64
    training, plan = resolve_training(training, probe, keras_model, first, held_samples, strategy)
    return dataclasses.replace(config, training=training), plan


def _wrap(keras, tfmot, model, chosen: set, config: PruneConfig, schedule: dict):
    sparsity = tfmot.sparsity.keras
    if schedule["kind"] == "polynomial":
        sched = sparsity.PolynomialDecay(
            initial_sparsity=config.initial_sparsity,
            final_sparsity=config.sparsity,
            begin_step=schedule["begin_step"],
            end_step=schedule["end_step"],
            frequency=schedule["frequency"],
        )
    else:
        sched = sparsity.ConstantSparsity(config.sparsity, begin_step=schedule["begin_step"], frequency=schedule["frequency"])
    m_by_n = (2, 4) if config.structure == "2:4" else None

    def clone(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone)
        if layer.name in chosen:
            return sparsity.prune_low_magnitude(layer, pruning_schedule=sched, sparsity_m_by_n=m_by_n)
        return layer

    return keras.models.clone_model(model, clone_function=clone)


def measure_sparsity(keras_model, names) -> list[dict]:
    """Per layer: zeros in its prunable weights over their size, read from the weights."""
    registry = _registry()
    layers = {layer.name: layer for layer in iter_layers(keras_model)}
    rows = []
    for name in names:
        layer = layers[name]
        for weight_name in _prunable_weight_names(layer, registry) or []:
            values = _weight_value(layer, weight_name)
            zeros = int(np.count_nonzero(values == 0))
            rows.append(
                {
                    "name": name,
                    "class": type(layer).__name__,
                    "weight": weight_name,
                    "shape": list(values.shape),
                    "size": int(values.size),
                    "zeros": zeros,
                    "sparsity": round(zeros / values.size, 5) if values.size else 0.0,
                }
            )
    return rows


def _weight_value(layer, weight_name) -> np.ndarray:
    weight = getattr(layer, weight_name, None)
    if weight is None:
        weight = next(w for w in layer.weights if w.name.split("/")[-1].split(":")[0] == weight_name)
    return np.asarray(weight.numpy())


def _default_sources(keras_model, batch_size: int, seed: int):
    from gencompress.calibration.sources import noise_set
    from gencompress.compress.finetune import NoiseBatches
    from gencompress.model import _tensor_info

    inputs = [_tensor_info(n, t.shape, t.dtype) for n, t in zip(keras_model.input_names, keras_model.inputs)]
    if any(t.is_integer for t in inputs):
        raise OptionError("this model has integer inputs: give prune_model a source and a held-out set")
    held = noise_set(inputs, 64, np.random.default_rng([seed, 5]), None)
    return NoiseBatches(inputs, batch_size, seed), held


def _ordered(arrays, names):
    values = [arrays[n] for n in names]
    return values[0] if len(values) == 1 else values


class _NullScope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def tflite_weight_sparsity(path, kernels: dict[str, np.ndarray]) -> dict:
    """Zeros in a ``.tflite``'s weight tensors, matched to the pruned kernels (Keras layout).

    The converter renames, transposes (Dense ``[in, out]`` → ``[out, in]``, convolutions to
    ``[out, h, w, in]``) and folds BatchNorm scales into kernels, so a kernel is found by content:
    among constant tensors of the same size, the one and the axis order whose zeros cover the
    most of the kernel's zeros (a name that mentions the layer breaks ties). ``zeros_kept``: every
    zero of the float kernel is a zero in the file (int8 symmetric quantization maps 0.0 to 0;
    folding scales whole channels). Weights that quantize to 0 add to the file's sparsity.
    """
    import itertools

    from ai_edge_litert.interpreter import Interpreter

    from gencompress.tfenv import native_output_captured

    with native_output_captured():
        interpreter = Interpreter(model_path=str(path))
    constants = []
    for d in interpreter.get_tensor_details():
        if len(d["shape"]) < 2:
            continue
        try:
            constants.append((d["name"], d["index"], interpreter.get_tensor(d["index"])))
        except ValueError:  # not a constant: no data
            continue
    per_layer, used = [], set()
    for layer, kernel in kernels.items():
        zero = kernel == 0
        best = None
        for name, index, value in constants:
            if value.size != kernel.size or index in used:
                continue
            squeezed = tuple(d for d in value.shape if d != 1)
            for perm in itertools.permutations(range(kernel.ndim)):
                z = np.transpose(zero, perm)
                if tuple(d for d in z.shape if d != 1) != squeezed:
                    continue
                file_zero = value.reshape(z.shape) == 0
                covered = float(np.count_nonzero(file_zero & z) / max(1, np.count_nonzero(z)))
                score = (covered, _mentions(name, layer))
                if best is None or score > best[0]:
                    best = (score, name, index, value)
        if best is None:
            per_layer.append({"name": layer, "found": False})
            continue
        (covered, _), name, index, value = best
        used.add(index)
        zeros = int(np.count_nonzero(value == 0))
        per_layer.append(
            {
                "name": layer,
                "found": True,
                "tensor": name,
                "dtype": str(value.dtype),
                "size": int(value.size),
                "zeros": zeros,
                "sparsity": round(zeros / value.size, 5),
                "float_zeros": int(np.count_nonzero(zero)),
                "zeros_kept": bool(covered == 1.0),
            }
        )
    found = [p for p in per_layer if p["found"]]
    size = sum(p["size"] for p in found)
    return {
        "sparsity": round(sum(p["zeros"] for p in found) / size, 5) if size else None,
        "zeros_kept": bool(found) and len(found) == len(per_layer) and all(p["zeros_kept"] for p in found),
        "layers": per_layer,
    }


def pruned_kernels(keras_model, rows: list[dict]) -> dict[str, np.ndarray]:
    """The pruned weights of ``rows`` (``PruneInfo.layers``), keyed by layer name."""
    layers = {layer.name: layer for layer in iter_layers(keras_model)}
    return {r["name"]: _weight_value(layers[r["name"]], r["weight"]) for r in rows if r["weight"] in ("kernel", "pointwise_kernel")}


def _mentions(tensor_name: str, layer_name: str) -> bool:
    return f"/{layer_name}/" in f"/{tensor_name.replace(';', '/')}/"
