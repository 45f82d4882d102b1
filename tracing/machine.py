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


def available_bytes() -> int:
    """Memory available to new allocations now (``MemAvailable``), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return FALLBACK_MEMORY


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
