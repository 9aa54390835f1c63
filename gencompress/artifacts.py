"""Writing a run's files: whole or not at all, with the user's umask.

A run builds its artifacts in a scratch folder; ``save_files`` then writes them into a staging
folder inside the output folder and renames each into place (stop signals held back meanwhile),
so the output folder never holds half a file or a mix of two runs, and a failure or Ctrl-C
before the renames leaves it as it was. Temporary files get the mode an ordinary ``open()``
would give (``mkstemp`` creates 0600 files, and a rename keeps the mode).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
import weakref
from contextlib import contextmanager
from pathlib import Path

from gencompress.errors import OutputError, disk_full
from gencompress.interrupts import deferred
from gencompress.limits import check_name

# Followed by the writing process's id: a later run removes the folders of processes that died.
STAGING_PREFIX = ".gencompress-staging-"
PROBE_PREFIX = ".gencompress-probe-"


def file_mode() -> int:
    """The mode a new file gets from the process's umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    On any error the temporary file is removed, so a failed write leaves no half-written file.
    ``suffix`` ends the temporary name: writers that pick a format from the suffix (Keras
    ``model.save``: ``.h5`` or ``.keras``) need the target's own.
    """
    target = Path(target)
    check_name(target.name, target.parent, reserve=len(suffix) + 10)  # ".<name>.XXXXXXXX<suffix>"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)
    return Path(target)


def save_files(files: dict[str, str | os.PathLike | bytes], out: str | os.PathLike, replaces=()) -> dict[str, Path]:
    """Write ``files`` (name → source path or bytes) into folder ``out``, all together.

    Everything is first written into a staging folder inside ``out`` (same filesystem, so the
    renames are atomic), then each file is renamed into place and the files of ``replaces`` (a
    previous run's, by name) that this one does not write are removed, with stop signals held
    back. A failure while staging (a full disk) or an interrupt leaves ``out`` untouched; the
    staging folder is removed whatever happens. Returns the final path of each file.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _remove_dead_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    except OSError as exc:
        raise OutputError(output_problem(out, exc)) from None
    mode = file_mode()
    try:
        try:
            for name, source in files.items():
                staged = staging / name
                if isinstance(source, (bytes, bytearray)):
                    staged.write_bytes(source)
                else:
                    shutil.copyfile(source, staged)
                os.chmod(staged, mode)
        except OSError as exc:
            raise OutputError(f"{output_problem(out, exc)}; nothing of this run was written, {out} is as it was") from None
        with deferred():
            placed = {}
            for name in files:
                os.replace(staging / name, out / name)
                placed[name] = out / name
            for name in set(replaces) - set(files):
                if _plain_name(name) and (out / name).is_file():
                    (out / name).unlink()
            return placed
    finally:
        with deferred():
            shutil.rmtree(staging, ignore_errors=True)


def check_output_dir(out: str | os.PathLike) -> list[Path]:
    """Create folder ``out`` if needed and write and remove a probe file in it, so that a folder
    that cannot take the result is found before any work. Returns the folders it created,
    innermost first (``remove_created`` takes them away again if the run writes nothing)."""
    out = Path(out)
    created = []
    try:
        created = [p for p in [out, *out.parents] if not p.exists() and not p.is_symlink()]
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f"{PROBE_PREFIX}{os.getpid()}-", dir=out)
        try:
            os.write(fd, b"gencompress")
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as exc:
        remove_created(created)
        raise OutputError(output_problem(out, exc)) from None
    return created


def remove_created(folders) -> None:
    """Remove the folders ``check_output_dir`` created, those still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def output_problem(out: Path, exc: OSError) -> str:
    """One line on why ``out`` cannot take the result."""
    if disk_full(exc):
        return f"no space left to write into {out} ({exc.strerror or exc})"
    blocking = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return f"output folder {out} cannot be created: {blocking} is a file" if blocking != out else f"output folder {out} is a file"
    where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != out else ""
    return f"cannot write into output folder {out}: {exc.strerror or exc}{where}"


def _plain_name(name: str) -> bool:
    return bool(name) and name == Path(name).name and name not in (".", "..")


def _remove_dead_staging(out: Path) -> None:
    """Staging folders of runs that were killed (SIGKILL, a power cut) before they could clean up."""
    for folder in out.glob(f"{STAGING_PREFIX}*"):
        pid = folder.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


# A run's scratch folder in the temporary directory: "gencompress-<pid>-<random>", holding a lock
# file that its process keeps locked (``flock``) until it removes the folder.
SCRATCH_PREFIX = "gencompress-"
_SCRATCH_LOCK = ".lock"


class ScratchFolder:
    """A fresh folder for a run's scratch files, in ``parent`` (default: the temporary directory).

    Making one first removes the scratch folders of runs that died without cleaning up (SIGKILL,
    the out-of-memory killer, a TensorFlow abort, a power cut), as ``save_files`` does for staging
    folders: a folder is dead when its lock file can be locked (the kernel releases a dead
    process's locks, whatever pid namespace it ran in), or, without a lock file yet, when its
    process is gone."""

    def __init__(self, parent: str | os.PathLike | None = None):
        parent = Path(parent or tempfile.gettempdir())
        remove_dead_scratch(parent)
        self.path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent))
        lock = None
        try:
            lock = os.open(self.path / _SCRATCH_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
        except BaseException:
            _remove_scratch(self.path, lock)
            raise
        # Removed when closed, or like a TemporaryDirectory when collected or at exit (a library
        # caller that never closes its Result).
        self._finalizer = weakref.finalize(self, _remove_scratch, self.path, lock)

    def close(self) -> None:
        """Remove the folder with whatever is in it (stop signals held back meanwhile)."""
        with deferred():
            self._finalizer()


def _remove_scratch(path: Path, lock: int | None) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if lock is not None:
        os.close(lock)


def remove_dead_scratch(parent: str | os.PathLike) -> list[Path]:
    """Remove the scratch folders in ``parent`` whose run is gone; returns those removed."""
    removed = []
    try:
        candidates = list(Path(parent).glob(f"{SCRATCH_PREFIX}*"))
    except OSError:
        return removed
    for folder in candidates:
        pid = folder.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        try:
            info = folder.lstat()
        except OSError:
            continue
        if not (pid.isdigit() and stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()) or int(pid) == os.getpid():
            continue
        if _scratch_dead(folder, int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _scratch_dead(folder: Path, pid: int) -> bool:
    try:
        fd = os.open(folder / _SCRATCH_LOCK, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return not _alive(pid)  # made by a run that had not locked it yet, or by an older gencompress
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # locked: its run is alive
    finally:
        os.close(fd)
    return True


@contextmanager
def private_tempdir():
    """Point ``tempfile`` (and ``TMPDIR``, for native code and subprocesses) at a fresh scratch
    folder while the block runs, and remove it after, with whatever the libraries left in it: a
    converter interrupted between creating its temporary folder and the ``try`` that removes it."""
    scratch = ScratchFolder()
    root = str(scratch.path)
    saved_dir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = root
    try:
        yield scratch.path
    finally:
        with deferred():
            tempfile.tempdir = saved_dir
            if saved_env is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved_env
            scratch.close()


def save_keras(keras_model, path: str | os.PathLike) -> Path:
    """Save a tf-keras model (format from the suffix: ``.h5`` or ``.keras``), not compiled."""
    import warnings

    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf-keras calls .h5 "legacy": it is what the user gave us
        keras_model.save(tmp)  # not compiled: no optimizer state goes in
    return path


def derived_model_name(model, tag: str) -> str:
    """The file name of a model derived from ``model``: ``<stem>-<tag>.h5`` for an ``.h5`` input,
    ``<stem>-<tag>.keras`` otherwise (a SavedModel or Keras 3 input comes back as tf-keras)."""
    suffix = ".h5" if model.format == "h5" else ".keras"
    return f"{model.stem}-{tag}{suffix}"
