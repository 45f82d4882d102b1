"""A hub model read where it lies: safetensors files (single or sharded) of a hub repository that
is not in the local cache, read by HTTP range requests (:mod:`tracing.sources.hubhttp`) at the
commit the revision resolved to.

Only the config and index files are downloaded (into the Hugging Face cache); each weight file's
header is read by two ranged reads, sampled rows (``--rows``) by one request per run of rows
(runs at most a row apart are merged), a named tensor by one request for its bytes. Rows come out
in their stored dtype exactly as a local read gives them. The record's provenance names the hub
commit, each file's LFS SHA-256 as the hub reports it (range-read; digest from the hub, not
re-hashed) and the bytes read per file.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import TracingError
from ..rows import MAX_HEADER, row_offset, row_plan, rows_tensor, runs
from .folder import FolderBackend, _read_weight_map, weights_read
from .hubhttp import HubFiles, coalesce

#: how the record says the digests were obtained
DIGEST_NOTE = "range-read; digest from the hub, not re-hashed"



def range_read_record(resolved, sizes: dict, hub, name: str) -> dict:
    """The provenance of one weight file read by range requests: its size and digest as the hub reports
    them (not re-hashed) and the bytes read."""
    entry = {"file": name, "size": sizes.get(name)}
    sha = resolved.hub_sha256.get(name)
    if sha:
        entry["sha256"], entry["sha256_source"] = sha, "hub"
    entry["read"] = DIGEST_NOTE
    entry["bytes_read"] = hub.bytes_read.get(name, 0)
    return entry

class RemoteBackend(FolderBackend):
    """Safetensors weights of a hub repository read by range requests (the folder holds the
    downloaded config and index files only)."""

    format = "safetensors"

    def __init__(self, resolved, progress: bool = True):
        super().__init__(resolved.path, resolved.spec)
        self.resolved = resolved
        self.sizes = dict(resolved.hub_sizes)
        self.hub = HubFiles(resolved.repo_id, resolved.commit, resolved.hub_sha256, resolved.spec, progress)
        self._headers: dict[str, tuple[int, dict]] = {}

    @classmethod
    def claims(cls, resolved) -> bool:
        return bool(getattr(resolved, "remote", False))

    @classmethod
    def open(cls, resolved) -> RemoteBackend:
        return cls(resolved)

    # headers ---------------------------------------------------------------------------------
    def header(self, file: str) -> tuple[int, dict]:
        """(start of the data section, JSON header) of a weight file, read once."""
        if file not in self._headers:
            (n,) = struct.unpack("<Q", self.hub.read(file, 0, 8))
            if n > MAX_HEADER or 8 + n > self.sizes.get(file, 8 + n):
                raise TracingError(f"{self.label}: {file} on the hub has a safetensors header of {n} bytes; the "
                                   f"file is corrupt or not safetensors")
            try:
                head = json.loads(self.hub.read(file, 8, n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise TracingError(f"{self.label}: {file} on the hub has an unreadable safetensors header") from None
            head.pop("__metadata__", None)
            self._headers[file] = (8 + n, head)
        return self._headers[file]

    def _build_index(self) -> dict[str, Path]:
        p = self.path
        if (p / "model.safetensors.index.json").is_file():
            weight_map = weights_read(self.arch, _read_weight_map(p / "model.safetensors.index.json"))
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(f for f in self.sizes if f.endswith(".safetensors") and "/" not in f)
            weight_map = None
        if not files:
            raise TracingError(f"{self.label} has no safetensors weights on the hub; fetch it with --download")
        self._shapes: dict[str, tuple[int, ...]] = {}
        index = {}
        for f in files:
            if f not in self.sizes:
                raise TracingError(f"{self.label}: its index lists {f}, which the hub does not have at "
                                   f"commit {self.resolved.commit}")
            head = self.header(f)[1]
            self._shapes.update({k: tuple(v["shape"]) for k, v in head.items()})
            index.update({k: p / f for k in head})
        if weight_map is not None:
            index = {k: p / v for k, v in weight_map.items()}
        return index

    # tensors ---------------------------------------------------------------------------------
    def get(self, name, dtype=torch.float32):
        """A whole tensor, or a role's part of one: only the rows of a fused tensor it holds, or the one
        expert of a stacked tensor it belongs to."""
        from ..models import select
        found = self._find(name)
        if found is None:
            return super().get(name, dtype)  # the folder backend's error
        stored, part, f = found
        shape = self._shapes[stored]
        rows, rest = first_axis(part, shape)
        t = self._read_rows(f.name, stored, rows)
        if t is None:
            raise TracingError(f"{self.label}: tensor {stored} has a dtype the range reader does not handle; "
                               f"fetch the model with --download")
        if rest is False:  # the whole tensor
            return select(t.reshape(shape), part)
        return t if rest is None else select(t[0], rest)

    def get_rows(self, name, index, dtype=torch.float32):
        found = self._find(name)
        offset = None if found is None else row_offset(found[1])
        if offset is None:
            return self.get(name, dtype)[torch.as_tensor(index, dtype=torch.long)]
        stored, _, f = found
        t = self._read_rows(f.name, stored, np.asarray([int(i) + offset for i in index], dtype=np.int64))
        if t is None:
            return self.get(name, dtype)[torch.as_tensor(index, dtype=torch.long)]
        return t

    def prefetch_rows(self, wants) -> None:
        """Fetch now, with many requests in flight, what :meth:`get_rows` of each ``(name, index)`` of
        ``wants`` will read (the same requests), so that those calls, made next, wait for no round trip."""
        with self.hub.record() as asked:
            for name, index in wants:
                self.get_rows(name, index)
        self.hub.fetch_ahead(asked)

    def _requests(self, file: str, stored: str, idx: np.ndarray, lead: int = 1):
        """``(plan, spans, requests)`` of rows ``idx`` of a stored tensor (counted over its first ``lead``
        axes): the row layout (:func:`tracing.rows.row_plan`, None when the reader does not handle it), the
        byte span of each run of rows, and the requests that read them (runs at most a row apart merged)."""
        plan = row_plan(*self.header(file), stored, idx, lead)
        if plan is None:
            return None, [], []
        row_bytes, base = plan[2], plan[3]
        spans = [(base + first * row_bytes, n * row_bytes) for _, first, n in runs(idx)]
        return plan, spans, coalesce(spans, gap=row_bytes)

    def _read_rows(self, file: str, stored: str, idx: np.ndarray, lead: int = 1) -> torch.Tensor | None:
        """Rows ``idx`` (sorted, distinct; over the first ``lead`` axes) of a stored tensor in its stored dtype,
        by range requests."""
        plan, spans, requests = self._requests(file, stored, idx, lead)
        if plan is None:
            return None
        dtype, row_shape, _, _ = plan
        return rows_tensor(self.hub.read_spans(file, spans, requests), idx.size, dtype, row_shape)

    def planned_bytes(self, name: str, index=None) -> int:
        """Bytes that :meth:`get_rows` (``index`` given) or :meth:`get` of ``name`` will transfer."""
        found = self._find(name)
        if found is None:
            return 0
        stored, part, f = found
        offset = row_offset(part)
        if index is None or offset is None:
            idx = first_axis(part if index is None else None, self._shapes[stored])[0]
        else:
            idx = np.asarray([int(i) + offset for i in index])
        plan, _, requests = self._requests(f.name, stored, idx)
        if plan is None:  # read whole (and then failing): the tensor's bytes
            return 0
        return sum(n for _, n, _ in requests)

    def header_bytes(self) -> int:
        """Bytes of the weight files' headers (read when the model was opened)."""
        return sum(self.header(f.name)[0] for f in self.weight_files())

    def total_bytes(self) -> int:
        """Bytes of the weight files on the hub (what a download costs)."""
        return sum(self.sizes.get(f.name, 0) for f in self.weight_files())

    # files and provenance --------------------------------------------------------------------
    def file_records(self) -> list[dict]:
        """Provenance of the weight files: size and digest as the hub reports them, bytes read."""
        return [range_read_record(self.resolved, self.sizes, self.hub, f.name) for f in self.weight_files()]


def first_axis(part, shape) -> tuple[np.ndarray, object]:
    """Which rows (first-axis entries) of a stored tensor of ``shape`` a role's ``part`` needs, and
    what is left to select: ``(rows, False)`` all of them (then ``part`` applies to the whole),
    ``(rows, None)`` a block of rows that is the part itself (a role of a fused tensor), or
    ``([e], rest)`` one entry of a stacked tensor (an expert) and the index ``rest`` within it."""
    from ..arch.layout import Transposed
    n = shape[0] if shape else 0
    if part is not None and not isinstance(part, Transposed) and row_offset(part) is not None:
        s = part[0] if isinstance(part, tuple) else part
        start, stop = s.start or 0, n if s.stop is None else min(s.stop, n)
        return np.arange(start, stop), None
    items = tuple(part) if isinstance(part, tuple) else ()
    if items and isinstance(items[0], int) and len(shape) > 1:
        rest = items[1:]
        if isinstance(part, Transposed):
            rest = Transposed(rest)
        elif not rest:
            rest = (slice(None),)
        return np.asarray([items[0] % n]), rest
    return np.arange(n), False
