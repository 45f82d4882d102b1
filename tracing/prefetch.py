"""Read the next piece while the current one is computed: ``for key, value in ahead(keys, load)``.

A statistic that walks the blocks of two models reads block i+1's weights (storage latency, little
CPU) while it computes block i (matrix products, assignments: CPU), instead of one after the other.
``load`` runs in one background thread, one key at a time and in order, so a source is never read
by two threads at once; at most one loaded value waits beside the one being computed, and only
while the values are small (:data:`AHEAD_MAX_BYTES`: a sampled test's rows, not a 70B model's whole
matrices, whose reads are long enough to keep a disk busy on their own). What is read, and in
which order, is what a plain loop would read; an error of ``load`` is raised when its key's turn
comes, and the background read in flight is waited for before anything leaves.
"""
from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

#: a loaded value up to this size lets the next key be read ahead (a value of several tensors: their sum)
AHEAD_MAX_BYTES = 256 << 20


def nbytes(value) -> int:
    """Bytes of the tensors and arrays in ``value`` (a tensor, an array, or tuples and lists of them)."""
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if hasattr(value, "element_size") and hasattr(value, "numel"):  # a torch tensor
        return int(value.element_size() * value.numel())
    return int(getattr(value, "nbytes", 0) or 0)


def ahead(keys: Iterable, load: Callable, max_bytes: int = AHEAD_MAX_BYTES) -> Iterator[tuple]:
    """``(key, load(key))`` for every key in order, ``load`` of the next key running in a background
    thread while the caller works on the current one (when the current value is at most
    ``max_bytes``)."""
    keys = list(keys)
    if len(keys) < 2:
        for key in keys:
            yield key, load(key)
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")

    def submit(key):  # the caller's context (e.g. the compute device in force) holds in the thread
        return pool.submit(contextvars.copy_context().run, load, key)

    pending = None
    try:
        pending = submit(keys[0])
        for k, key in enumerate(keys):
            box = [pending.result()]  # the value leaves in the tuple handed out, held nowhere here
            pending = None
            last = k + 1 == len(keys)
            if not last and nbytes(box[0]) <= max_bytes:
                pending = submit(keys[k + 1])
            yield key, box.pop()
            if not last and pending is None:  # a large value: the next read starts after it was worked on
                pending = submit(keys[k + 1])
    finally:
        if pending is not None:  # the caller stopped early or failed: the read in flight ends first
            pending.cancel()
            try:
                pending.result()
            except BaseException:  # noqa: BLE001 - the caller's own error is the one that counts
                pass
        pool.shutdown(wait=True)
