"""Read chosen rows of one tensor of a safetensors file, and nothing else.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and byte range in the data section) and the row-major data. The rows are read with ``pread``
in runs of consecutive indices, with read-ahead turned off for the file (``POSIX_FADV_RANDOM``), so
a sampled test reads about K/h of each tensor: a memory map would let the kernel's read-ahead pull
in most of the tensor around sorted row accesses.

Sampled rows are scattered, so reading them one run after another waits out the storage's latency
once per run (a 7B model's 1024 rows of one tensor are about 940 runs). Instead every run is first
announced to the kernel (``POSIX_FADV_WILLNEED``: it starts reading them all at once, without
waiting), then the runs are read by :data:`~tracing.machine.READS_IN_FLIGHT` threads, each into its
own part of the result: the same bytes as one read after another, with many reads in flight.
"""
from __future__ import annotations

import json
import math
import os
import struct
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
          "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
          "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
MAX_HEADER = 100 << 20
#: fewer runs than this per thread are read by the calling thread alone
RUNS_PER_THREAD = 8
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
#: parsed headers kept (least recently used dropped first): a sharded model's shards are read in order
HEADERS_KEPT = 64
_HEADERS: OrderedDict[tuple, tuple[int, dict]] = OrderedDict()
_HEADERS_LOCK = threading.Lock()
#: a header is kept once its file is this old (nanoseconds); file times advance in ticks of up to 2 s
SETTLED_NS = 2_000_000_000


def header(path: str | os.PathLike) -> tuple[int, dict]:
    """(start of the data section, the JSON header) of a safetensors file.

    Parsed once per version of the file: the last :data:`HEADERS_KEPT` parsed headers are kept, keyed
    by the file's path, size, modification and change times and inode (taken from the open file), so
    a file rewritten in place or replaced is parsed again (a file changed or touched in the last
    :data:`SETTLED_NS` is not kept: file times have a coarse tick). The header is shared: do not modify it."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        key = (os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        with _HEADERS_LOCK:
            if key in _HEADERS:
                _HEADERS.move_to_end(key)
                return _HEADERS[key]
        parsed = _parse(f, path)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < SETTLED_NS:  # changed just now: a rewrite within the clock's tick
        return parsed                                 # could keep every part of the key, so not kept
    with _HEADERS_LOCK:
        _HEADERS[key] = parsed
        while len(_HEADERS) > HEADERS_KEPT:
            _HEADERS.popitem(last=False)
    return parsed


def _parse(f, path) -> tuple[int, dict]:
    """(start of the data section, the JSON header) read from the open file ``f``."""
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER:
        raise ValueError(f"{path}: safetensors header of {n} bytes")
    return 8 + n, json.loads(f.read(n))


def row_offset(index) -> int | None:
    """The first stored row of a part that is a block of whole rows (the ``index`` of a stored
    tensor's part, e.g. a role of a fused tensor; None: the whole tensor); None for any other part
    (columns, an expert of a stacked tensor)."""
    if index is None:
        return 0
    if isinstance(index, tuple) and len(index) == 1:
        index = index[0]
    if isinstance(index, slice) and index.step in (None, 1):
        return int(index.start or 0)
    return None


def runs(index: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of consecutive values of a sorted index: (position in index, first value, length)."""
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [index.size]])
    return [(int(s), int(index[s]), int(e - s)) for s, e in zip(starts, ends)]


def row_plan(start: int, head: dict, name: str, index, lead: int = 1) -> tuple | None:
    """How rows ``index`` (sorted, distinct) of tensor ``name`` lie in a safetensors file with data
    section at ``start`` and JSON header ``head``: ``(dtype, row shape, bytes per row, byte offset of
    row 0)``; None when the dtype or layout is not one the row readers handle.  The rows are counted
    over the first ``lead`` axes taken together (``lead=2``: row e·n + r of a stacked [E, n, ...]
    tensor is row r of its part e)."""
    idx = np.asarray(index, dtype=np.int64)
    meta = head.get(name)
    if not meta or meta.get("dtype") not in DTYPES or len(meta.get("shape", ())) < lead:
        return None
    shape = [math.prod(meta["shape"][:lead]), *meta["shape"][lead:]]
    if idx.size and (np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= shape[0]):
        return None
    dtype = DTYPES[meta["dtype"]]
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
    return dtype, shape[1:], row_bytes, start + int(meta["data_offsets"][0])


def rows_tensor(buf, n: int, dtype: torch.dtype, row_shape: list) -> torch.Tensor:
    """``n`` rows read into ``buf`` (a bytearray) as a tensor of the stored dtype."""
    if not buf:
        return torch.empty([0, *row_shape], dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape([n, *row_shape])


def read_rows(path: str | os.PathLike, name: str, index, lead: int = 1) -> torch.Tensor | None:
    """Rows ``index`` (sorted, distinct; over the first ``lead`` axes, see :func:`row_plan`) of
    tensor ``name`` in its stored dtype; None when the tensor's dtype or layout is not one this
    reader handles (the caller then reads it whole).  An ``OSError`` naming the file and the tensor
    when the file ends before the rows do."""
    idx = np.asarray(index, dtype=np.int64)
    plan = row_plan(*header(path), name, idx, lead)
    if plan is None:
        return None
    dtype, row_shape, row_bytes, base = plan
    out = bytearray(idx.size * row_bytes)
    # (position in out, position in the file, bytes) of each run of consecutive rows
    spans = [(pos * row_bytes, base + first * row_bytes, n * row_bytes) for pos, first, n in runs(idx)]
    fd = os.open(Path(path), os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            if len(spans) > 1:
                for _, at, n in spans:
                    os.posix_fadvise(fd, at, n, os.POSIX_FADV_WILLNEED)
        read_spans(fd, memoryview(out), spans, f"{path}: short read of tensor {name}")
    finally:
        os.close(fd)
    return rows_tensor(out, idx.size, dtype, row_shape)


def _forget_pool() -> None:
    """In a forked child: the parent's reader threads do not exist there; a new pool is made on use
    (and the locks, which a parent's thread may have held at the fork, are new)."""
    global _POOL, _POOL_LOCK, _HEADERS_LOCK
    _POOL, _POOL_LOCK, _HEADERS_LOCK = None, threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            from .machine import READS_IN_FLIGHT
            _POOL = ThreadPoolExecutor(READS_IN_FLIGHT, thread_name_prefix="rows")
        return _POOL


def _pread_into(fd: int, view: memoryview, at: int) -> int:
    """Fill ``view`` from byte ``at`` of ``fd``; the bytes read (fewer only at the end of the file)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], at + done)
        if got == 0:
            break
        done += got
    return done


def read_spans(fd: int, out: memoryview, spans: list[tuple[int, int, int]], short: str) -> None:
    """Read each span ``(position in out, position in the file, bytes)`` of ``fd`` into ``out``,
    by up to :data:`~tracing.machine.READS_IN_FLIGHT` threads when there are many; ``OSError(short)``
    when the file ends before a span does. Every read has finished when this returns or raises."""
    def work(part) -> bool:
        return all(_pread_into(fd, out[pos:pos + n], at) == n for pos, at, n in part)

    from .machine import READS_IN_FLIGHT
    threads = min(READS_IN_FLIGHT, len(spans) // RUNS_PER_THREAD)
    if threads < 2:
        whole = work(spans)
    else:  # contiguous groups of runs: each thread reads forward through its part of the file
        bounds = np.linspace(0, len(spans), threads + 1).astype(int)
        futures = [_pool().submit(work, spans[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        wait(futures)  # every read has finished (the file is closed after this) before any error is raised
        whole = all([f.result() for f in futures])
    if not whole:
        raise OSError(short)
