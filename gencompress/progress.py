"""Progress of a long run: bars with an ETA on a terminal, one line per phase in CI logs.

Every phase that can take more than a moment (calibration, a conversion, evaluating an artifact,
latency runs, a fidelity-search attempt, fine-tuning) runs inside ``progress.phase(...)``. On a
terminal that draws a tqdm bar (items, rate, ETA) on stderr; when stderr is not a terminal (a CI
log, a pipe) nothing is drawn and each phase prints one line when it ends, with its elapsed time.
Messages (``progress.log``) go to stderr either way, without breaking a bar being drawn.

tqdm, not hand-drawn bars: it is small, dependency-free, handles terminal width, rate and ETA,
and ``tqdm.write`` keeps log lines above an active bar.

A phase's start and end and each item are checkpoints for Ctrl-C (``interrupts.check``): an
interrupt that something swallowed is raised again there.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar

from gencompress.interrupts import check
from gencompress.printable import printable


_CURRENT: ContextVar = ContextVar("gencompress_progress", default=None)


class Phase:
    """A running phase: ``update(n)`` after each item, ``describe(text)`` for the figures so far."""

    def __init__(self, bar=None):
        self._bar = bar
        self.done = 0
        self.detail = ""
        self.deadline = None  # time.perf_counter() by which the phase will have ended (a time budget)

    def update(self, n: int = 1) -> None:
        check()
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, text: str) -> None:
        self.detail = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)


class Progress:
    """Where a run reports what it is doing. ``Progress.silent()`` reports nothing (library use).

    ``bars``: draw bars (default: when ``stream`` is a terminal). ``lines``: print a line as each
    phase ends (default: when no bars are drawn). ``every_percent``: with lines, also a line each
    time a phase with a known total passes another such share (long phases such as fine-tuning).
    """

    def __init__(self, stream=None, bars: bool | None = None, lines: bool | None = None, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled
        self.bars = enabled and (tty if bars is None else bars)
        self.lines = enabled and (not self.bars if lines is None else lines)
        self._depth = 0

    @classmethod
    def silent(cls) -> "Progress":
        return cls(enabled=False)

    @classmethod
    def current(cls) -> "Progress":
        """The progress of the command being run (see ``activate``), else a silent one."""
        return _CURRENT.get() or cls.silent()

    @contextmanager
    def activate(self):
        """Make this the ``current`` progress while the block runs (the CLI does, for a command)."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    def log(self, message: str) -> None:
        """A line of its own on stderr (above any bar)."""
        check()
        if not self.enabled:
            return
        message = printable(message)  # one line, whatever the names in it hold
        if self.bars:
            from tqdm import tqdm

            tqdm.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    @contextmanager
    def phase(self, label: str, total: int | None = None, unit: str = "it", every_percent: float | None = None):
        """Run a phase: yields a ``Phase``; says how long it took when it ends."""
        check()
        bar = None
        if self.bars:
            from tqdm import tqdm

            bar = tqdm(
                total=total, desc=printable(label), unit=unit, file=self.stream, leave=False, dynamic_ncols=True,
                position=self._depth, mininterval=0.2,
            )
        phase = Phase(bar)
        start = time.perf_counter()
        self._depth += 1
        try:
            if self.lines and every_percent and total:
                phase.update = _reporting(phase.update, phase, self, label, total, every_percent, start)
            yield phase
        finally:
            self._depth -= 1
            if bar is not None:
                bar.close()
            elapsed = time.perf_counter() - start
            check()  # before the line: an interrupted phase did not end
            if self.enabled and (self.lines or self.bars):
                detail = f" ({phase.detail})" if phase.detail else ""
                self.log(f"{label}: {_duration(elapsed)}{detail}")


def _reporting(update, phase: Phase, progress: Progress, label: str, total: int, every: float, start: float):
    """Wrap ``Phase.update`` to print a line each time another ``every`` percent of ``total`` is done."""
    state = {"next": every}

    def wrapped(n: int = 1) -> None:
        update(n)
        share = 100.0 * phase.done / total
        if share >= state["next"] and phase.done < total:
            elapsed = time.perf_counter() - start
            eta = elapsed * (total - phase.done) / max(phase.done, 1)
            if phase.deadline is not None:
                eta = max(0.0, min(eta, phase.deadline - time.perf_counter()))
            detail = f", {phase.detail}" if phase.detail else ""
            progress.log(f"{label}: {phase.done}/{total} ({share:.0f} %), {_duration(elapsed)}, ETA {_duration(eta)}{detail}")
            while state["next"] <= share:
                state["next"] += every

    return wrapped


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"
