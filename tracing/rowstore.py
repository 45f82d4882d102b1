"""Sampled rows read once per model: a store beside a grid's results.

A sampled test (``--rows K``) reads the same K rows of each block's MLP (or the same K columns of
the embedding) in every pair a model is part of. Over a grid of N models each model is in N − 1
pairs; with a store its rows are read from its weights once and every later pair reads them from
the store instead.

The store is keyed by what makes the rows what they are: the model's weight files (name, size and
SHA-256, the hashes its records' provenance holds), the tensor, and the exact row indices (they
follow from K, the seed and the MLP width). A changed weight file is a new key, never a stale hit.
Rows are kept losslessly: in bfloat16 or float16 when that round-trips them exactly (the stored
dtype of most checkpoints), else float32; a pair reads bit for bit the rows it would have read
from the weights.

One file per (model, rows, tensor), written atomically under a lock file, so concurrent pairs on
one machine or on a cluster's shared file system read a model's rows once and never see a
half-written file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from pathlib import Path

import torch

from .models import WeightSource, stored_rows_reader
from .fileio import atomic_write, file_lock
from .transforms import View

STORE_DTYPES = (torch.bfloat16, torch.float16)
FOLDER = ".sampled-rows"  # beside the results; hidden, so result readers skip it


def model_key(ckpt) -> str | None:
    """A digest of a checkpoint's weight files (name, size, SHA-256 — or, for a checkpoint opened
    with the fast identity, its folder, modification time and header digest: a rewritten file is a
    new key either way); None when a file has neither (then nothing is stored for it)."""
    from .identity import file_identity
    prov = ckpt.provenance() if hasattr(ckpt, "provenance") else {}
    files = [file_identity(f, prov.get("path")) for f in prov.get("files") or []]
    if not files or not all(files):
        return None
    files = sorted(files)
    quant = prov.get("quantization")
    blob = json.dumps({"files": files, "quantization": quant}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def rows_key(index) -> str:
    idx = torch.as_tensor(index, dtype=torch.int64).contiguous().numpy()
    return f"k{idx.size}-{hashlib.sha256(idx.tobytes()).hexdigest()[:16]}"


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` (float32) in the smallest dtype that holds it exactly."""
    for dt in STORE_DTYPES:
        c = t.to(dt)
        if torch.equal(c.to(t.dtype), t):
            return c
    return t


class StoredRows(View):
    """A checkpoint whose sampled rows (``get_rows``) and columns (``get_columns``) go through a
    store (a folder; without one, memory for the life of this object); everything else is the
    checkpoint's.

    ``counts()``: how many tensors' samples came from the store and how many were read from the weights."""

    def __init__(self, inner: WeightSource, root: str | os.PathLike | None, key: str | None):
        super().__init__(inner)
        self.root = None if root is None else Path(root) / key
        self._memory: dict[tuple[str, str], torch.Tensor] = {}
        self.hits = self.misses = 0

    def __getattr__(self, name):  # provenance, tokenizer, quantized, path ...: the checkpoint's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def config(self):
        return self.inner.config

    def get(self, name, dtype=torch.float32):
        return self.inner.get(name, dtype)

    def counts(self) -> dict[str, int]:
        return {"from_store": self.hits, "read": self.misses}

    def get_rows(self, name, index, dtype=torch.float32):
        return self._stored(f"rows-{rows_key(index)}", name, len(index), 0,
                            lambda: self.inner.get_rows(name, index, torch.float32)).to(dtype)

    def get_columns(self, name, index, dtype=torch.float32):
        return self._stored(f"cols-{rows_key(index)}", name, len(index), 1,
                            lambda: self.inner.get_columns(name, index, torch.float32)).to(dtype)

    def _stored(self, entry: str, name: str, n: int, axis: int, read) -> torch.Tensor:
        """The store's copy of one tensor's sampled rows (or columns), read with ``read()`` and kept
        when the store has none."""
        if self.root is None:
            kept = self._memory.get((entry, name))
            self.hits += kept is not None
            if kept is None:
                kept = self._memory[(entry, name)] = _compact(read())
                self.misses += 1
            return kept
        folder = self.root / entry
        f = folder / f"{name}.safetensors"
        t = self._load(f, n, axis)
        if t is None:
            folder.mkdir(parents=True, exist_ok=True)
            with file_lock(folder / f"{name}.lock"):
                t = self._load(f, n, axis)  # another pair may have written it meanwhile
                if t is None:
                    t = read()
                    self._save(f, t)
                    self.misses += 1
                    return t
        self.hits += 1
        return t

    @staticmethod
    def _load(f: Path, n: int, axis: int) -> torch.Tensor | None:
        if not f.is_file():
            return None
        from safetensors.torch import load_file
        try:
            t = load_file(f)["rows"]
        except Exception:  # noqa: BLE001 - an unreadable entry is read again from the weights
            return None
        return t if t.dim() == 2 and t.shape[axis] == n else None

    @staticmethod
    def _save(f: Path, t: torch.Tensor) -> None:
        from safetensors.torch import save

        try:
            atomic_write(f, save({"rows": _compact(t).contiguous()}))
        except OSError:  # a full or read-only disk: the pair still runs, it just reads the weights
            pass


def with_store(src: WeightSource, root: str | os.PathLike | None, memory: bool = False) -> WeightSource:
    """``src`` reading sampled rows through the store at ``root``; without a root (or when its weight
    files have no hashes) ``src`` itself, or with ``memory`` a copy kept in memory (a model tested
    against many others in one process)."""
    key = None if root is None else model_key(src)
    if key is not None:
        return StoredRows(src, root, key)
    return StoredRows(src, None, None) if memory else src


def reads_by_range(src) -> bool:
    """Whether ``src`` (a checkpoint, or a transformed view of one) reads its rows from the hub by range
    requests each time they are asked for (a row store's rows come from the store instead)."""
    while not isinstance(src, StoredRows):
        inner = getattr(src, "__dict__", {}).get("inner")  # not through a wrapper's __getattr__
        if inner is None:
            return bool(getattr(getattr(src, "resolved", None), "remote", False))
        src = inner
    return False


class SpilledRows:
    """A weight source's sampled rows, each tensor's read once from ``src`` and kept in a local temporary
    file (not in memory) from which later reads of the same rows are served, bit for bit: a model read by
    range requests is then asked for each row once however often the rows are wanted. ``get_rows_stored``
    and ``prefetch_rows`` as a checkpoint's; :meth:`close` deletes the file."""

    def __init__(self, src):
        self.src = src
        self._read = stored_rows_reader(src)
        self._fetch = getattr(type(src), "prefetch_rows", None)
        self._file = tempfile.TemporaryFile(prefix="tracing-rows-")
        self._at: dict = {}  # (name, rows key, dtype) -> (offset, dtype, shape)
        self._end = 0
        self._lock = threading.RLock()  # one reader at a time: rows are fetched once, whatever the threads

    def __getattr__(self, name):  # arch, label, config ...: the source's
        if name == "src":
            raise AttributeError(name)
        return getattr(self.src, name)

    def _missing(self, name, index, dtype) -> tuple | None:
        key = (name, rows_key(index), dtype)
        return None if key in self._at else key

    def _spill(self, key, t: torch.Tensor) -> None:
        t = t.contiguous()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        self._file.seek(self._end)
        self._file.write(data)
        self._at[key] = (self._end, t.dtype, tuple(t.shape))
        self._end += len(data)

    def prefetch_rows(self, wants, dtype=torch.float32) -> None:
        """Read every ``(name, index)`` of ``wants`` not yet spilled (fetched ahead all at once when the
        source can) and spill them."""
        with self._lock:
            todo = [(name, index, key) for name, index in wants
                    if (key := self._missing(name, index, dtype)) is not None]
            if self._fetch is not None and todo:
                self._fetch(self.src, [(name, index) for name, index, _ in todo])
            for name, index, key in todo:
                self._spill(key, self._read(name, index, dtype))

    def get_rows_stored(self, name, index, dtype=torch.float32) -> torch.Tensor:
        with self._lock:
            key = self._missing(name, index, dtype)
            if key is not None:
                t = self._read(name, index, dtype)
                self._spill(key, t)
                return t
            offset, stored, shape = self._at[(name, rows_key(index), dtype)]
            n = math.prod(shape) * stored.itemsize
            self._file.seek(offset)
            data = bytearray(self._file.read(n))
        if not n:
            return torch.empty(shape, dtype=stored)
        return torch.frombuffer(data, dtype=torch.uint8).view(stored).reshape(shape)

    def get_rows(self, name, index, dtype=torch.float32) -> torch.Tensor:
        return self.get_rows_stored(name, index, dtype).to(dtype)

    def close(self) -> None:
        self._file.close()
        self._at.clear()
