"""``tf.distribute`` for every fine-tuning loop (pruning, QAT, distillation).

``mirrored``: every local GPU, or every logical CPU device when there is none (``cpu_devices``
splits the CPU into that many, to try the mirrored path without GPUs); ``multi-worker``: the
cluster in ``TF_CONFIG``, synchronous steps with all-reduced gradients. A strategy must be made
before TensorFlow's runtime starts (multi-worker and logical CPU devices need that).
"""

from __future__ import annotations

import json
import os

from gencompress.config import DISTRIBUTE
from gencompress.errors import OptionError
from gencompress.tfenv import import_tf


def make_strategy(kind: str | None, cpu_devices: int | None = None):
    """The ``tf.distribute`` strategy for ``kind`` (none, mirrored, multi-worker), or ``None``.

    ``mirrored``: every local GPU, else every logical CPU device. ``multi-worker``: the cluster in
    ``TF_CONFIG``. ``cpu_devices`` splits the CPU into that many logical devices (to try the
    mirrored path on a machine without GPUs); like ``multi-worker`` it must be asked for before
    TensorFlow has started its runtime, so call this first in a program.
    """
    kind = kind or "none"
    if kind not in DISTRIBUTE:
        raise OptionError(f"unknown --distribute '{kind}' (choose from {', '.join(DISTRIBUTE)})")
    tf = import_tf()
    if cpu_devices is not None:
        if cpu_devices < 1:
            raise OptionError(f"--cpu-devices must be at least 1, got {cpu_devices}")
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)])
        except RuntimeError:
            if len(tf.config.list_logical_devices("CPU")) != cpu_devices:
                raise OptionError("--cpu-devices must be set before TensorFlow starts its runtime (too late in this process)") from None
    if kind == "none":
        return None
    if kind == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [d.name for d in tf.config.list_logical_devices("CPU")]
        with _quiet():
            return tf.distribute.MirroredStrategy(devices)
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise OptionError("--distribute multi-worker reads the cluster from the TF_CONFIG environment variable, which is not set")
    try:
        cluster = json.loads(raw)
        cluster["cluster"]["worker"], cluster["task"]["index"]
    except (ValueError, KeyError, TypeError):
        raise OptionError('TF_CONFIG must be JSON like {"cluster": {"worker": ["host1:port", ...]}, "task": {"type": "worker", "index": 0}}') from None
    try:
        with _quiet():
            return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:
        raise OptionError(f"cannot start MultiWorkerMirroredStrategy: {str(exc).splitlines()[0]}") from None


def strategy_info(strategy) -> dict | None:
    if strategy is None:
        return None
    extended = strategy.extended
    info = {
        "strategy": {"CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy"}.get(type(strategy).__name__, type(strategy).__name__),
        "replicas": int(strategy.num_replicas_in_sync),
        "devices": list(getattr(extended, "worker_devices", ())),
    }
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and getattr(resolver, "task_type", None):
        info.update(task_type=resolver.task_type, task_id=int(resolver.task_id or 0), chief=is_chief(strategy))
    return info


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and not resolver.task_id and "chief" not in resolver.cluster_spec().as_dict())


class _quiet:
    """Strategies log their devices through absl at INFO; a CLI run shows the progress line instead."""

    def __enter__(self):
        import logging

        self._logger = logging.getLogger("tensorflow")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return False


class _NullScope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def scope(strategy):
    return strategy.scope() if strategy is not None else _NullScope()
