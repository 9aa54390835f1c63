"""Magnitude pruning (tensorflow-model-optimization) with data-free fine-tuning.

``prune_model`` wraps the chosen layers of a *copy* of the model in tfmot's
``PruneLowMagnitude``, fine-tunes the copy to reproduce the original (``finetune.train_to_match``)
while the sparsity schedule zeroes the smallest weights, strips the wrappers and measures the
sparsity on the resulting weights. ``prune`` is the ``gencompress prune`` command as a library
call: original artifacts as the reference, the pruned model saved, its artifacts built and
measured, the report written.

What pruning buys: zeros compress, so the *download* (gzip, brotli) shrinks; the ``.tflite`` /
``.onnx`` files themselves store every weight and the runtimes run dense kernels, so file size,
memory and latency stay the same (see ``RUNTIME_NOTE``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gencompress.model import iter_layers
from gencompress.artifacts import derived_model_path, save_keras_atomic
from gencompress.errors import OptionError, UnsupportedModelError
from gencompress.tfenv import import_keras, import_tf

SCHEDULES = ("constant", "polynomial")
PRUNE_HINT = "prune less or fine-tune longer"
STRUCTURES = ("2:4",)

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


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how fast. Steps count fine-tuning steps (1 is the first).

    ``schedule``: ``constant`` prunes to ``sparsity`` at ``begin_step`` and re-picks the
    smallest weights every ``frequency`` steps; ``polynomial`` raises sparsity from
    ``initial_sparsity`` to ``sparsity`` between ``begin_step`` and ``end_step`` (default: half
    the fine-tuning steps), then fine-tunes at the final mask. ``structure="2:4"``: at least 2
    zeros in every 4 consecutive weights along the kernel's input-channel axis (sparsity 0.5 only;
    tfmot fixes that mask at the first step, whatever the schedule). ``layers``: names to prune
    (default: every Dense/Conv/ConvTranspose kernel tfmot can prune); ``skip_first`` /
    ``skip_last`` leave the first / last of them dense.
    """

    sparsity: float = 0.5
    schedule: str = "constant"
    begin_step: int = 0
    end_step: int | None = None
    frequency: int | None = None
    initial_sparsity: float = 0.0
    structure: str | None = None
    layers: tuple[str, ...] | None = None
    skip_first: bool = False
    skip_last: bool = False

    def __post_init__(self):
        if not (0.0 < self.sparsity < 1.0):
            raise OptionError(f"--sparsity must be between 0 and 1 (exclusive), got {self.sparsity}")
        if self.schedule not in SCHEDULES:
            raise OptionError(f"unknown schedule '{self.schedule}' (choose from {', '.join(SCHEDULES)})")
        if self.structure is not None:
            if self.structure not in STRUCTURES:
                raise OptionError(f"unknown structure '{self.structure}' (choose from {', '.join(STRUCTURES)})")
            if not math.isclose(self.sparsity, 0.5):
                raise OptionError(f"--structure 2:4 means 50% sparsity: use --sparsity 0.5, not {self.sparsity}")
        if self.begin_step < 0:
            raise OptionError(f"--begin-step must be 0 or more, got {self.begin_step}")
        if self.end_step is not None and self.end_step <= self.begin_step:
            raise OptionError(f"--end-step ({self.end_step}) must come after --begin-step ({self.begin_step})")
        if self.frequency is not None and self.frequency < 1:
            raise OptionError(f"pruning frequency must be at least 1, got {self.frequency}")
        if not (0.0 <= self.initial_sparsity < self.sparsity):
            raise OptionError(f"initial sparsity must be in [0, {self.sparsity}), got {self.initial_sparsity}")
        if self.layers is not None and not self.layers:
            raise OptionError("--layers needs at least one layer name")

    def effective_schedule(self, steps: int) -> dict:
        """The schedule actually run over ``steps`` fine-tuning steps, in fine-tuning steps.

        tfmot counts its pruning step from 1 and only updates masks on its frequency grid, so
        ``begin`` is at least 1 and ``end`` is moved down onto the grid (else the final sparsity
        would never be applied). ``target_at`` is the step from which the target sparsity holds.
        """
        begin = max(1, self.begin_step)
        if steps < begin:
            raise OptionError(f"--begin-step {self.begin_step} is past the last fine-tuning step ({steps}): raise --steps")
        if self.structure is not None:
            return {"kind": "2:4 (mask fixed at step 1)", "begin_step": 1, "end_step": 1, "frequency": 1, "target_at": 1}
        if self.schedule == "constant":
            frequency = self.frequency or max(1, min(100, steps // 20))
            return {"kind": "constant", "begin_step": begin, "end_step": None, "frequency": frequency, "target_at": begin}
        end = self.end_step if self.end_step is not None else begin + max(1, (steps - begin) // 2)
        if end > steps:
            raise OptionError(f"--end-step {end} is past the last fine-tuning step ({steps}): raise --steps or lower --end-step")
        if end <= begin:
            raise OptionError(f"the polynomial schedule needs --end-step after --begin-step ({begin}); raise --steps")
        frequency = min(self.frequency or max(1, (end - begin) // 20), end - begin)
        end = begin + frequency * ((end - begin) // frequency)
        return {
            "kind": "polynomial",
            "initial_sparsity": self.initial_sparsity,
            "begin_step": begin,
            "end_step": end,
            "frequency": frequency,
            "target_at": end,
        }


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


# --------------------------------------------------------------------------- layer selection


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
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    return prune_registry.PruneRegistry


def _prunable_weight_names(layer, registry):
    """Attribute names tfmot would prune; [] if supported with nothing to prune; None if unsupported."""
    if hasattr(layer, "get_prunable_weights"):  # a custom PrunableLayer
        wanted = {id(w) for w in layer.get_prunable_weights()}
        return [w.name.split("/")[-1].split(":")[0] for w in layer.weights if id(w) in wanted] or []
    if not registry.supports(layer):
        return None
    if registry._is_rnn_layer(layer) or registry._is_mha_layer(layer):
        return None  # tfmot prunes them through cells / sub-layers; not measured here yet
    return list(registry._weight_names(layer))


def _is_recurrent(layer, registry) -> bool:
    return registry.supports(layer) and (registry._is_rnn_layer(layer) or registry._is_mha_layer(layer))


def _is_op_layer(cls: str) -> bool:
    return cls in ("TFOpLambda", "SlicingOpLambda", "TensorFlowOpLayer", "Lambda")


def _m_by_n_axis(weight) -> int:
    # tfmot groups m-by-n along axis 0 of a rank-2 kernel and axis 2 of a rank-4 one.
    shape = tuple(weight.shape)
    return shape[0] if len(shape) == 2 else shape[2] if len(shape) == 4 else 1


def _left(layer, params, reason) -> dict:
    return {"name": layer.name, "class": type(layer).__name__, "params": int(params), "reason": reason}


# --------------------------------------------------------------------------- pruning


def prune_model(
    keras_model,
    config: PruneConfig,
    finetune=None,
    *,
    source=None,
    held=None,
    output_range: tuple[float, float] | None = None,
    progress: bool = False,
    callbacks=(),
    strategy=None,
):
    """Prune a copy of tf-keras ``keras_model``: returns ``(stripped pruned model, PruneInfo)``.

    The input model is never modified (it is the teacher of the fine-tuning). ``source`` yields
    training input batches and ``held`` is the validation ``CalibrationSet`` (both default to
    seeded noise, for models with float inputs only); ``output_range`` defaults to the range of
    the teacher's outputs on ``held``. ``finetune`` is a ``FinetuneConfig``; its ``steps`` must
    cover the schedule (pruning happens while training).
    """
    from gencompress.compress.finetune import FinetuneConfig, train_to_match

    tfmot = _tfmot()

    keras = import_keras()
    finetune = finetune or FinetuneConfig()
    if finetune.steps < 1:
        raise OptionError("pruning happens during fine-tuning: --steps must be at least 1")
    chosen, left = select_layers(keras_model, config)
    schedule = config.effective_schedule(finetune.steps)
    if source is None or held is None:
        source, held = _default_sources(keras_model, finetune)
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
        progress=progress, strategy=strategy,
    )
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    wrappers = [layer for layer in iter_layers(wrapped) if isinstance(layer, PruneLowMagnitude)]
    for w in wrappers:  # weights = weights * mask (the last optimizer step moved masked weights off 0)
        w.pruning_obj.weight_mask_op()
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    info = PruneInfo(config.sparsity, schedule, config.structure, left_dense=left)
    info.layers = measure_sparsity(stripped, chosen)
    info.finetune = {**result.summary(), "config": dataclasses.asdict(ft)}
    return stripped, info


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


def _default_sources(keras_model, finetune):
    from gencompress.calibration.sources import noise_set
    from gencompress.compress.finetune import NoiseBatches
    from gencompress.model import _tensor_info

    inputs = [_tensor_info(n, t.shape, t.dtype) for n, t in zip(keras_model.input_names, keras_model.inputs)]
    if any(t.is_integer for t in inputs):
        raise OptionError("this model has integer inputs: give prune_model a source and a held-out set")
    held = noise_set(inputs, 64, np.random.default_rng([finetune.seed, 5]), None)
    return NoiseBatches(inputs, finetune.batch_size, finetune.seed), held


def _ordered(arrays, names):
    values = [arrays[n] for n in names]
    return values[0] if len(values) == 1 else values


class _NullScope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------- artifacts


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


def prune(
    model, prune_config: PruneConfig, finetune_config, options, output_dir, then=(), command="prune",
    progress=True, log=lambda msg: None,
) -> dict:
    """The ``gencompress prune`` command: prune + fine-tune ``model`` (a ``LoadedModel``), write
    and measure the original and pruned artifacts (float32 and each ``then`` precision, per
    format), save ``<stem>-pruned.h5|.keras`` and write the report with a ``pruning`` section.

    Every artifact is measured against the *original* float model. ``int8`` goes through the
    quantize step's fidelity guard (``options.min_psnr`` > 0) for both models; the pruned
    model's quantized artifacts are graded against it (the original's are only the reference).
    """
    from gencompress.compress.finetune import training_sources
    from gencompress.report.render import write_report
    from gencompress.workflow import build_artifacts, make_report, prepare

    if model.keras_model is None:
        raise UnsupportedModelError(
            f"{model.path} is a plain SavedModel (no Keras layers): pruning needs a Keras model (.h5, .keras or a Keras SavedModel)"
        )
    if finetune_config.steps < 1:
        raise OptionError("pruning happens during fine-tuning: --steps must be at least 1")
    import_tf()
    select_layers(model.keras_model, prune_config)  # option errors before anything is written
    prune_config.effective_schedule(finetune_config.steps)
    session = prepare(model, options, output_dir)
    precisions = ["float32"] + [p for p in then if p not in ("float32", "qat")]

    # The original first: the size and fidelity reference. Its int8 goes through the same guard
    # as the pruned model's, so that both are what `gencompress quantize` would write.
    build_artifacts(session, precisions, log, PRUNE_HINT)
    source, val = training_sources(model, session.calibration, finetune_config.batch_size, options.seed, session.options.eval_samples)
    finetune_config = dataclasses.replace(finetune_config, seed=options.seed)
    pruned, info = prune_model(
        model.keras_model, prune_config, finetune_config,
        source=source, held=val, output_range=session.output_range, progress=progress,
    )
    saved = save_keras_atomic(pruned, derived_model_path(model, output_dir, "pruned"))
    pruned_loaded = dataclasses.replace(model, keras_model=pruned, path=str(saved), params=int(pruned.count_params()))
    # The same session (held-out set, original float reference, float sizes) around the pruned
    # model: its stem is <stem>-pruned, so its artifacts are <stem>-pruned.<precision>.<ext>.
    derived = dataclasses.replace(session, model=pruned_loaded, artifacts=[], failures=[])
    build_artifacts(derived, precisions, log, PRUNE_HINT)
    for a in derived.artifacts:
        a["variant"] = "pruned"
        if options.min_psnr > 0 and a["precision"] != "float32":
            psnr = a["fidelity"]["psnr_db"]
            a["passed"] = bool(psnr is not None and psnr >= options.min_psnr)
    session.artifacts.extend(derived.artifacts)
    session.failures.extend({**f, "variant": "pruned"} for f in derived.failures)
    qat = None
    if "qat" in then:  # pruning-preserving QAT of the pruned model, against the original
        from gencompress.compress.qat import grade_qat, qat_after_pruning, qat_markdown

        qat = qat_after_pruning(pruned_loaded, session, progress=progress, log=log)
        grade_qat(session, "pruned-qat")

    report = make_report(session, command)
    report["pruning"] = pruning_section(info, session.artifacts, saved, model, pruned_kernels(pruned, info.layers))
    sections = [pruning_markdown(report["pruning"])]
    if qat is not None:
        report["qat"] = qat
        sections.append(qat_markdown(qat))
    write_report(report, output_dir, sections)
    return report


def pruning_section(info: PruneInfo, artifacts: list[dict], saved: Path, model, kernels: dict) -> dict:
    section = info.to_dict()
    section["pruned_model"] = str(saved)
    total_params = int(model.params)
    section["model_params"] = total_params
    section["model_sparsity"] = round(info.pruned_zeros / total_params, 5) if total_params else None
    originals = {(a["format"], a["precision"]): a for a in artifacts if not a.get("variant")}
    rows, stored = [], []
    for a in artifacts:
        if a.get("variant") != "pruned":
            continue
        base = originals.get((a["format"], a["precision"]))
        rows.append(
            {
                "format": a["format"],
                "precision": a["precision"],
                "original_gzip_bytes": base["gzip_bytes"] if base else None,
                "pruned_gzip_bytes": a["gzip_bytes"],
                "gzip_ratio": round(a["gzip_bytes"] / base["gzip_bytes"], 4) if base else None,
                "size_ratio": round(a["size_bytes"] / base["size_bytes"], 4) if base else None,
                # what the fidelity guard chose for each (e.g. "int8, per-tensor dense weights")
                "original_variant": _chosen(base),
                "pruned_variant": _chosen(a),
            }
        )
        if a["format"] == "tflite":
            stored.append({"artifact": Path(a["path"]).name, "precision": a["precision"], **tflite_weight_sparsity(a["path"], kernels)})
    section["gzip"] = rows
    section["artifact_sparsity"] = stored
    section["runtime_note"] = RUNTIME_NOTE
    return section


def pruning_markdown(p: dict) -> str:
    sched = p["schedule"]
    ft = p["finetune"]
    first = next((h for h in ft["history"] if h["step"] >= sched["target_at"] and h["step"] > 0), None)
    lines = [
        "",
        "## Pruning",
        "",
        f"- requested sparsity {p['requested_sparsity']:.0%}, measured {p['measured_sparsity']:.2%} "
        f"({p['zero_weights']:,} of {p['pruned_weights']:,} pruned weights are zero; "
        f"{p['model_sparsity']:.2%} of all {p['model_params']:,} parameters)",
        f"- schedule: {sched['kind']}, from step {sched['begin_step']}"
        + (f" to {sched['end_step']}" if sched.get("end_step") else "")
        + f", masks updated every {sched['frequency']} step(s); structure: {p['structure'] or 'unstructured'}",
        f"- fine-tuning against the original model: {ft['steps_run']} steps in {ft['seconds']} s; validation PSNR "
        + (f"{_db(first['psnr_db'])} dB when the target sparsity was first reached (step {first['step']}), " if first else "")
        + f"best {_db(ft['best_psnr_db'])} dB at step {ft['best_step']}"
        + (" (stopped early)" if ft["stopped_early"] else ""),
        f"- pruned model: `{p['pruned_model']}`",
        "",
        "| layer | class | weight | shape | sparsity |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['class']} | {r['weight']} | {r['shape']} | {r['sparsity']:.2%} |" for r in p["layers"]]
    if p["left_dense"]:
        lines += ["", "Left dense:", ""]
        lines += [f"- {d['name']} ({d['class']}, {d['params']:,} parameters): {d['reason']}" for d in p["left_dense"]]
    if p["gzip"]:
        lines += ["", "| format | precision | gzip original | gzip pruned | gzip ratio | file size ratio |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {g['format']} | {g['precision']}{_variants(g)} | {_int(g['original_gzip_bytes'])} | {g['pruned_gzip_bytes']:,} | "
            f"{_pct(g['gzip_ratio'])} | {_pct(g['size_ratio'])} |"
            for g in p["gzip"]
        ]
    if p["artifact_sparsity"]:
        lines.append("")
    for s in p["artifact_sparsity"]:
        kept = "zeros kept" if s["zeros_kept"] else "ZEROS LOST"
        sparsity = "?" if s["sparsity"] is None else f"{s['sparsity']:.2%}"
        lines.append(f"- `{s['artifact']}`: pruned weights {sparsity} zero in the file ({kept})")
    lines += ["", p["runtime_note"], ""]
    return "\n".join(lines)


def pruning_summary(report: dict) -> str:
    """The terminal lines after the artifact table: sparsity, gzip ratios, notes, the saved model."""
    p = report["pruning"]
    lines = [
        f"sparsity: {p['measured_sparsity']:.2%} of {p['pruned_weights']:,} pruned weights (requested "
        f"{p['requested_sparsity']:.0%}; {len({r['name'] for r in p['layers']})} layers pruned, {len(p['left_dense'])} left dense)"
    ]
    lines += [
        f"gzip {g['format']} {g['precision']}: {g['pruned_gzip_bytes']:,} bytes, {100 * g['gzip_ratio']:.1f}% of the unpruned model's"
        for g in p["gzip"]
        if g["gzip_ratio"] is not None
    ]
    lines += [f"note: {Path(a['path']).name}: {n}" for a in report["artifacts"] for n in a.get("notes", [])]
    lines.append(f"pruned model: {p['pruned_model']}")
    return "\n".join(lines)


def _db(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _chosen(artifact) -> str | None:
    search = (artifact or {}).get("fallback") or (artifact or {}).get("smallest_int8_search") or {}
    return search.get("chosen")


def _variants(g) -> str:
    a, b = g.get("original_variant"), g.get("pruned_variant")
    if not (a or b):
        return ""
    return f" ({a})" if a == b else f" (original: {a or '-'}; pruned: {b or '-'})"


def _int(x) -> str:
    return "-" if x is None else f"{x:,}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
