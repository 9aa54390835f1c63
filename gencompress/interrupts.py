"""Ctrl-C and SIGTERM stop a run, wherever they land, and never cut a write in half.

Python turns SIGINT into a ``KeyboardInterrupt`` at the next bytecode, wherever that is: inside
a ``__del__`` or a weakref callback (where Python prints "Exception ignored" and goes on), or
inside a Python callback a converter calls from C++ (which turns it into its own error, that a
caller then takes for a failed conversion). Either way the interrupt is lost and the run goes
on. So the CLI installs handlers (``handling_signals``) that *record* the signal as well as
raise, and ``check()``, called at checkpoints (each progress phase and item, after every native
converter call), raises it again while one is recorded. ``deferred()`` holds signals back for a
few lines that must not be cut (renaming a result into place, swapping file descriptors).

Library callers keep Python's own handlers unless they use ``handling_signals`` themselves;
``deferred`` works with any handler.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

# The signals that stop a run: exit code 128 + the signal's number, as a shell reports it.
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived. A ``KeyboardInterrupt``, so ``except Exception`` never swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def what(self) -> str:
        return _NAMES.get(self.signum) or signal.Signals(self.signum).name


class _State:
    active = False  # handling_signals is installed
    pending: int | None = None  # a stop signal arrived and the run has not stopped yet
    stopping = False  # the run is cleaning up: checkpoints no longer raise


_state = _State()


def _on_signal(signum, frame):
    _state.pending = signum
    if not _state.stopping:
        raise Interrupted(signum)


def _quiet_unraisable(default):
    """Hide "Exception ignored in ..." for an interrupt raised inside a ``__del__``: it is recorded
    and raised again at the next checkpoint. Once a signal has stopped the run, hide them all: an
    interrupt that cut an ``__init__`` short leaves an object whose ``__del__`` fails when it is
    collected, as late as the interpreter's exit (TensorFlow's ``ApiDefMap``: "no attribute
    '_api_def_map'"), a traceback under the one line that said the run stopped."""

    def hook(unraisable):
        if _state.pending is not None and (_state.stopping or isinstance(unraisable.exc_value, KeyboardInterrupt)):
            return
        default(unraisable)

    return hook


@contextmanager
def handling_signals():
    """Stop signals raise ``Interrupted`` and stay recorded until the run stops (see ``stop``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS}
    hook, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable(sys.unraisablehook)
    _state.active, _state.pending, _state.stopping = True, None, False
    try:
        yield
    finally:
        _state.stopping = True
        for s, handler in previous.items():
            signal.signal(s, handler)
        if _state.pending is None:
            sys.unraisablehook = hook
        # else: stopped by a signal; the quiet hook stays for what is collected until the exit
        _state.active = False


def check() -> None:
    """A checkpoint: raise the recorded stop signal again if something swallowed it."""
    if _state.pending is not None and not _state.stopping:
        raise Interrupted(_state.pending)


def pending() -> int | None:
    """The stop signal that arrived, if one did (under ``handling_signals``)."""
    return _state.pending


def stop() -> None:
    """The run is stopping: later checkpoints and signals no longer raise, cleanup can finish."""
    _state.stopping = True


@contextmanager
def deferred():
    """Hold stop signals back while the block runs; deliver them when it ends."""
    if threading.current_thread() is not threading.main_thread() or any(signal.getsignal(s) is None for s in STOP_SIGNALS):
        yield  # signals go to the main thread only; a handler set from C cannot be put back
        return
    arrived: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)  # runs the handler now restored (ours, Python's, the default)
