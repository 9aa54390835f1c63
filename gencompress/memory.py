"""How much memory the run may still take, checked before large arrays are made.

Python turns a failed allocation into ``MemoryError`` (the CLI: one line, exit 5), but on Linux
an allocation rarely fails: the kernel's out-of-memory killer ends the process instead (exit
137, no message), and TensorFlow's C++ aborts on a failed allocation (exit 134). So sizes known
in advance (calibration and held-out arrays, decoded images, arrays a file declares) are
checked against what the machine has left *before* they are allocated, and refused in one line
that names the shape and the estimate.

What is left is the least of: the kernel's ``MemAvailable`` plus free swap, the room under the
process's address-space and data limits (``ulimit -v``, ``ulimit -d``), and the room under its
cgroup's ``memory.max`` (a container's limit).

An address space under ``MIN_ADDRESS_SPACE`` cannot hold TensorFlow at all: refused before
TensorFlow is imported (there, it hangs in OpenBLAS' start-up or aborts in a converter).
"""

from __future__ import annotations

import resource
from pathlib import Path

from gencompress.errors import ResourceError

# Measured with TensorFlow 2.21 on Linux x86-64: importing TensorFlow and tf-keras reserves
# 1.6 GiB of address space; exporting and quantizing a 20-parameter model peaks at 2.8 GiB
# (converter threads and their allocator arenas). Under 1.5 GiB the import hangs in OpenBLAS'
# thread start-up; under 2.5 GiB the TFLite converter aborts (SIGABRT, exit 134).
MIN_ADDRESS_SPACE = 3 * 1024**3
# Headroom kept free when checking an estimate: the run needs memory beyond its arrays.
RESERVE_FRACTION = 0.1


def available_bytes() -> tuple[int | None, str]:
    """The memory the process can still take, and what limits it (``None``: unknown)."""
    candidates = []
    meminfo = _meminfo()
    if "MemAvailable" in meminfo:
        candidates.append((meminfo["MemAvailable"] + meminfo.get("SwapFree", 0), "available memory"))
    vm = _status_bytes("VmSize")
    for limit, name in ((resource.RLIMIT_AS, "the address-space limit (ulimit -v)"), (resource.RLIMIT_DATA, "the data-size limit (ulimit -d)")):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY and vm is not None:
            candidates.append((max(0, soft - vm), f"room under {name} of {gib(soft)}"))
    cgroup = _cgroup_room()
    if cgroup is not None:
        candidates.append(cgroup)
    if not candidates:
        return None, "unknown"
    return min(candidates)


def check_fits(needed: int, what: str, advice: str = "") -> None:
    """Raise ``ResourceError`` (exit 5) when ``needed`` bytes for ``what`` would not fit in what
    the machine has left (less a reserve for the rest of the run)."""
    room, source = available_bytes()
    if room is None or needed <= room * (1 - RESERVE_FRACTION):
        return
    advice = f"; {advice}" if advice else ""
    raise ResourceError(f"{what} needs about {gib(needed)} of memory; this machine has {gib(room)} ({source}){advice}")


def check_address_space() -> None:
    """Refuse an address-space limit too small for TensorFlow, before TensorFlow is imported."""
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY and soft < MIN_ADDRESS_SPACE:
        raise ResourceError(
            f"the address-space limit (ulimit -v) is {gib(soft)}: TensorFlow needs at least {gib(MIN_ADDRESS_SPACE)} "
            "to start and convert a model; raise it (ulimit -v unlimited) or run where it is higher"
        )


def gib(n: float) -> str:
    """A byte count in the unit that reads best: ``143.1 GiB``, ``512 MiB``."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n):,} bytes"


def shape_text(shape) -> str:
    """``20000×20000×3``: a sample shape as one reads it."""
    return "×".join(str(d) for d in shape) or "scalar"


def _meminfo() -> dict:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> tuple[int, str] | None:
    """Room under this process's cgroup memory limit (v2 ``memory.max``, v1 ``limit_in_bytes``)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, where = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy
            files = [(Path("/sys/fs/cgroup") / where.lstrip("/"), "memory.max", "memory.current")]
        elif "memory" in controllers.split(","):  # v1: mounted at its path, or (in a container) at the root
            files = [(Path("/sys/fs/cgroup/memory") / where.lstrip("/"), "memory.limit_in_bytes", "memory.usage_in_bytes"),
                     (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.usage_in_bytes")]
        else:
            continue
        for folder, limit_file, used_file in files:
            try:
                limit = (folder / limit_file).read_text().strip()
                used = int((folder / used_file).read_text())
            except (OSError, ValueError):
                continue
            if limit == "max" or int(limit) >= 2**62:  # no limit ("max"; v1 writes a huge number)
                return None
            return max(0, int(limit) - used), f"room under the container's memory limit of {gib(int(limit))}"
    return None
