"""Facts about this machine, in one place: the cores this process may use, its memory, the default
compute device, and the device policy in force.

Every tensor product the toolkit makes outside a forward pass (cosine matrices of alignment and of
the weight statistics) runs on :func:`compute_device`: the device the options chose
(``--device``, set for a pair's run with :func:`use_device`), else the default — a GPU when one
is visible, else the CPU. The launcher and job sizing read cores and memory from here too. This
module imports torch only to ask whether a GPU is visible.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar

GiB = 1 << 30
FALLBACK_MEMORY = 8 * GiB  # when the system does not say
#: reads in flight at once when the toolkit reads many pieces of one local file: runs of sampled rows
#: (several requests keep a disk's or a network file system's queue busy, where one read at a time
#: waits out the latency of each)
READS_IN_FLIGHT = 4
#: range requests to the hub in flight at once (on one connection pool): a request's round trip is
#: mostly waiting, so more of them overlap than a disk's reads; bounded so a hub or CDN is not flooded
REMOTE_READS_IN_FLIGHT = 16
_DEVICE: ContextVar[str | None] = ContextVar("tracing_device", default=None)


def cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a Slurm allocation), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return os.cpu_count() or 1


#: cgroup v1 reports "no limit" as the largest page-aligned signed 64-bit number; anything this large is none
_NO_LIMIT = 1 << 60


def cgroup_limit_files(self_cgroup="/proc/self/cgroup", root="/sys/fs/cgroup") -> list[str]:
    """The files that may hold a memory limit of this process's cgroup and of its ancestors (a
    Slurm job's limit is on the job's cgroup, above the step's and task's): cgroup v2's
    ``memory.max`` and v1's ``memory/…/memory.limit_in_bytes``, from ``self_cgroup`` (the
    ``/proc/self/cgroup`` listing) under ``root``."""
    try:
        with open(self_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    out = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base, name = str(root), "memory.max"
        elif "memory" in controllers.split(","):
            base, name = f"{root}/memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        out += ["/".join([base, *parts[:n], name]) for n in range(len(parts), -1, -1)]
    return out


def cgroup_memory_limit(paths) -> int | None:
    """The smallest memory limit in ``paths`` (cgroup files: a number of bytes, or ``max`` when there
    is none), in bytes; None when none is set or none of the files can be read."""
    limits = []
    for path in paths:
        try:
            with open(path) as f:
                limits.append(int(f.read().strip()))
        except (OSError, ValueError):  # no such file, or "max"
            continue
    limits = [n for n in limits if 0 < n < _NO_LIMIT]
    return min(limits) if limits else None


def available_bytes(meminfo="/proc/meminfo", cgroup_paths=None) -> int:
    """Memory available to new allocations now, in bytes: ``MemAvailable``, at most the cgroup's
    memory limit when one is set (a Slurm job sees its ``--mem``, not the node's free memory)."""
    free = FALLBACK_MEMORY
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    limit = cgroup_memory_limit(cgroup_limit_files() if cgroup_paths is None else cgroup_paths)
    return free if limit is None else min(free, limit)


def total_memory_gb() -> float:
    """Physical memory of the machine, in GiB."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return FALLBACK_MEMORY / GiB


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_device() -> str:
    """The device for tensor products: the one in force (:func:`use_device`), else the default."""
    return _DEVICE.get() or default_device()


@contextmanager
def use_device(device: str | None):
    """Within this block :func:`compute_device` is ``device`` (None: the default)."""
    token = _DEVICE.set(device)
    try:
        yield
    finally:
        _DEVICE.reset(token)
