"""``distill`` as a library call: the teacher's float artifacts as the reference, a student
trained to reproduce it, saved and exported, everything measured against the teacher."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gencompress.artifacts import derived_model_name
from gencompress.calibration import Calibration
from gencompress.compress.distillation import check_student, derive_student, feature_pairs, plain_copy, train_student
from gencompress.compress.distillation.checkpoint import TrainingCheckpoint
from gencompress.compress.distribute import is_chief, scope, strategy_info
from gencompress.config import QAT_TRAINING, DistillConfig
from gencompress.errors import OptionError, UnsupportedModelError
from gencompress.model import flat_copy
from gencompress.pipelines.build import build_artifacts
from gencompress.pipelines.gates import judge
from gencompress.pipelines.result import Result
from gencompress.pipelines.session import Session, make_report, model_macs, prepare
from gencompress.progress import Progress
from gencompress.results import DistillationSection

DISTILL_HINT = "train longer or widen the student"
SAMPLES_PNG = "samples.png"


def distill(teacher, config: DistillConfig | None = None, calibration: Calibration | None = None, *, student=None,
            progress: Progress | None = None, strategy=None, callbacks=()) -> Result:
    """Train a student of ``teacher`` (a ``LoadedModel``) and export and measure both.

    The student is derived from the teacher by ``config.width``/``config.depth``, or is
    ``student`` (a ``LoadedModel`` of an architecture with the teacher's inputs and outputs,
    trained from its current weights). The result holds the teacher's float32 artifacts (the
    reference), ``<stem>-student.h5|.keras``, the student's float32 and ``then`` artifacts
    (``qat``: quantization-aware training against the teacher, ``<stem>-student-qat.int8.*``),
    ``samples.png`` for image outputs, and the distillation section; ``result.model`` is the
    trained student. Every PSNR is against the teacher; the student's artifacts are graded
    against ``config.min_psnr``. Under a multi-worker ``strategy`` every worker trains and a
    non-chief one saves into ``worker-<i>/``.
    """
    config = config or DistillConfig()
    if teacher.keras_model is None:
        raise UnsupportedModelError(
            f"{teacher.path} is a plain SavedModel (no Keras layers): distillation needs a Keras teacher (.h5, .keras or a Keras SavedModel)"
        )
    if student is not None and (config.width is not None or config.depth < 1.0):
        raise OptionError("--student is the student's architecture: give it or --width/--depth, not both")
    if student is None and config.width is None:
        raise OptionError("give a --width for the student, or a --student architecture")
    from gencompress.tfenv import import_tf

    import_tf()
    # Layers of nested models (a Sequential body inside a functional wrapper) at the top level:
    # the student is derived from, and features matched against, this same-output flat copy.
    teacher = dataclasses.replace(teacher, keras_model=flat_copy(teacher.keras_model))
    # The student first: architecture errors before any work.
    with scope(strategy):
        if student is None:
            student_keras, plan = derive_student(teacher.keras_model, config, seed=config.seed)
        else:
            check_student(teacher, student)
            student_keras, plan = plain_copy(student.keras_model), None
    if config.feature_weight > 0 and not feature_pairs(teacher.keras_model, student_keras):
        raise UnsupportedModelError("--feature-loss: teacher and student share no intermediate spatial size to match")
    session = prepare(teacher, config, calibration, progress)
    try:
        return _distill(session, teacher, config, student, student_keras, plan, strategy, callbacks)
    except BaseException:
        session.cache.close()
        raise


def _distill(session: Session, teacher, config: DistillConfig, student, student_keras, plan, strategy, callbacks) -> Result:
    from gencompress.artifacts import save_keras
    from gencompress.compress.finetune import training_sources
    from gencompress.pipelines.build import build_artifact
    from gencompress.pipelines.session import add_artifact

    for fmt in config.formats:
        add_artifact(session, fmt, "float32", build_artifact(session, fmt, "float32"))
    training = config.training
    if training.time_budget is not None and "qat" in config.then:  # the command's budget, shared by its two fine-tunings
        training = dataclasses.replace(training, time_budget=training.time_budget / 2)
    subdir = None if is_chief(strategy) else f"worker-{strategy.cluster_resolver.task_id}"
    checkpoint = None
    if config.checkpoint_dir is not None:
        directory = Path(config.checkpoint_dir) / subdir if subdir else Path(config.checkpoint_dir)
        checkpoint = TrainingCheckpoint(directory, _run_signature(teacher, student_keras, config, session))
    init = _initialise(session, teacher, student_keras, plan, config, checkpoint) if student is None else None
    if init and init["kind"] == "teacher":  # from the teacher's channels: steps as large as where it starts calls for
        from gencompress.compress.channels.training import start_learning_rate

        training = dataclasses.replace(training, learning_rate=start_learning_rate(training.learning_rate, init["psnr_start_db"]))
    training, ft_plan = _plan(session, teacher, student_keras, training, config.seed, strategy, checkpoint)
    source, val = training_sources(teacher, session.calibration, training.batch_size, config.seed, session.config.eval_samples)
    result, pairs = train_student(
        student_keras, teacher.keras_model, source, val, session.output_range, training,
        feature_weight=config.feature_weight, strategy=strategy, checkpoint=checkpoint,
        progress=session.progress, callbacks=callbacks, plan=ft_plan,
    )
    config = dataclasses.replace(config, training=training)
    trained = plain_copy(student_keras)
    name = derived_model_name(teacher, "student")
    path = save_keras(trained, session.workdir / name)
    session.files[name] = path
    base = student if student is not None else teacher
    student_loaded = dataclasses.replace(
        base, keras_model=trained, path=str(path), format="h5" if path.suffix == ".h5" else "keras", params=int(trained.count_params()),
    )
    # The same session around the student: artifacts <stem>-student.<precision>.<ext>, PSNR
    # against the teacher.
    derived = session.derived(student_loaded)
    build_artifacts(derived, [p for p in config.then if p != "qat"], DISTILL_HINT)
    qat = None
    if "qat" in config.then:
        from gencompress.pipelines.qat import add_qat_artifacts

        qat_training = dataclasses.replace(
            QAT_TRAINING, batch_size=training.batch_size, eval_every=training.eval_every, patience=training.patience, time_budget=training.time_budget,
        )
        qat = add_qat_artifacts(derived, qat_training, trained, teacher=teacher.keras_model, tag="qat")
    for a in derived.artifacts:
        a.variant = "student-qat" if a.variant == "qat" else "student"
    session.artifacts.extend(derived.artifacts)
    session.failures.extend(f.model_copy(update={"variant": "student"}) for f in derived.failures)
    judge(session, config.min_psnr, lambda a: a.variant in ("student", "student-qat"))
    samples = _samples(session, teacher, student_loaded)
    report = make_report(session, "distill")
    report.distillation = distillation_section(
        teacher, student_loaded, plan, config, result, pairs, session.artifacts, strategy, checkpoint, samples,
        student_source=None if student is None else student.path,
    )
    report.distillation.qat = qat
    report.distillation.init = init
    report.distillation.teacher_macs, report.distillation.student_macs = model_macs(teacher), model_macs(student_loaded)
    return Result(report, session.files, session.cache, previews=session.previews, model=trained, subdir=subdir)


def _initialise(session: Session, teacher, student_keras, plan, config: DistillConfig, checkpoint) -> dict:
    """``--init teacher``: the derived student's weights from the teacher's most important
    channels (``compress.distillation.teacher_init``); ``random`` keeps the fresh ones. A run
    resuming from a checkpoint takes the checkpoint's weights instead."""
    if config.init == "random":
        return {"kind": "random", "reason": "--init random"}
    if checkpoint is not None and checkpoint.saved_plan() is not None:
        return {"kind": "checkpoint", "reason": "resumed: the checkpoint's weights"}
    from gencompress.compress.distillation.teacher_init import initialise_from_teacher
    from gencompress.compress.finetune import training_sources

    source, val = training_sources(teacher, session.calibration, 16, config.seed, session.config.eval_samples)
    return initialise_from_teacher(
        teacher.keras_model, student_keras, plan, source, val, session.output_range, seed=config.seed, progress=session.progress,
    )


def _samples(session: Session, teacher, student, n: int = 16) -> str | None:
    """``samples.png``: the teacher's and the student's outputs on the same held-out inputs."""
    from gencompress.report.samples import side_by_side_png

    feeds = {k: v[:n] for k, v in session.evaluation.arrays.items()}
    png = side_by_side_png(teacher.predict(feeds)[0], student.predict(feeds)[0], session.output_range)
    return None if png is None else str(session.add_file(SAMPLES_PNG, png))


def _plan(session: Session, teacher, student_keras, training, seed: int, strategy, checkpoint):
    """The student's fine-tuning with steps and batch decided: as given, as the run being resumed
    chose them, or from the student's measured step cost."""
    from gencompress.compress.finetune import training_sources
    from gencompress.compress.finetune_plan import PROBE_BATCH, resolve_training

    saved = checkpoint.saved_plan() if checkpoint is not None else None
    if saved is not None and not training.resolved:  # resume as the interrupted run planned
        training = dataclasses.replace(
            training, steps=training.steps if training.steps is not None else saved["steps"],
            batch_size=training.batch_size or saved["batch_size"], eval_every=saved["eval_every"],
        )
    probe = None
    if not training.resolved:
        probe = student_keras if strategy is None else plain_copy(student_keras)  # the probe leaves it unchanged
    sample, _ = training_sources(teacher, session.calibration, PROBE_BATCH, seed, 1)
    training, plan = resolve_training(
        training, probe, teacher.keras_model, next(iter(sample)), session.config.eval_samples, strategy, session.progress,
    )
    if checkpoint is not None:
        checkpoint.plan = plan
    return training, plan


def _run_signature(teacher, student_keras, config: DistillConfig, session: Session) -> dict:
    """What a checkpoint folder must have been made by to be resumed."""
    # what changes the weights a step gives (not how long to train, nor on how many devices);
    # steps and batch chosen from the measured cost are the saved plan's on resuming
    skip = ("steps", "patience", "min_steps", "distribute", "time_budget", "target_seconds", "max_steps", "xla")
    training = {k: v for k, v in dataclasses.asdict(config.training).items() if k not in skip}
    data = [session.calibration_spec.source, len(session.calibration), session.config.eval_samples, config.seed]
    return {
        "teacher": [teacher.path, teacher.params],
        "student": student_keras.to_json(),
        "feature_weight": config.feature_weight,
        "finetune": {**training, "seed": config.seed},
        "data": data,
    }


def distillation_section(teacher, student, plan, config: DistillConfig, result, pairs, artifacts, strategy, checkpoint, samples,
                         student_source=None) -> DistillationSection:
    teachers = {(a.format, a.precision): a for a in artifacts if not a.variant}
    rows = []
    for a in artifacts:
        if a.variant not in ("student", "student-qat"):
            continue
        base = teachers.get((a.format, "float32"))
        rows.append(
            {
                "format": a.format,
                "precision": a.precision + (" (qat)" if a.variant == "student-qat" else ""),
                "teacher_size_bytes": base.size_bytes,
                "student_size_bytes": a.size_bytes,
                "size_ratio": round(a.size_bytes / base.size_bytes, 4),
                "teacher_p50_ms": base.latency_ms.p50,
                "student_p50_ms": a.latency_ms.p50,
                "latency_ratio": round(a.latency_ms.p50 / base.latency_ms.p50, 4) if base.latency_ms.p50 else None,
                "psnr_db": a.fidelity.psnr_db,
                "ssim": a.fidelity.ssim,
                "chosen": a.fallback.chosen if a.fallback else None,
            }
        )
    training = config.training
    return DistillationSection(
        student_model=student.path,
        student_source=student_source or "derived",
        teacher_params=int(teacher.params),
        student_params=int(student.params),
        params_ratio=round(student.params / teacher.params, 4) if teacher.params else None,
        width=config.width,
        depth=config.depth,
        resized_layers=plan.resized if plan else [],
        dropped_blocks=plan.dropped_blocks if plan else [],
        droppable_blocks=plan.droppable_blocks if plan else None,
        loss=training.loss,
        feature_loss={"weight": config.feature_weight, "pairs": [p.to_dict() for p in pairs]} if config.feature_weight > 0 else None,
        finetune=result.summary(),
        final_psnr_db=None if result.final_psnr_db is None else round(float(result.final_psnr_db), 3),
        batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        distribute=strategy_info(strategy),
        checkpoint=None if checkpoint is None else {"dir": str(checkpoint.directory), "resumed_from_step": checkpoint.resumed_from},
        side_by_side=rows,
        samples=samples,
    )
