"""A GGUF file on the hub read where it lies: its metadata and tensor table by range requests of
growing size (:mod:`tracing.sources.ggufheader`, once per file per process), then only the bytes a
statistic asks for — for ``--rows``, the sampled rows' quantization blocks (a row of a row-major
GGUF tensor is a whole number of blocks, one contiguous byte range), requests merged where rows
are adjacent. Bytes the header's requests already fetched (the whole of a file smaller than the first
request, and any tensor data after the header up to the end of the last request) are taken from them, not
asked for again: no byte of the file is sent twice. Rows and tensors are dequantized exactly as from a
local copy of the file. The record's provenance says the file was range-read, with the hub's SHA-256 and
the bytes read.
"""
from __future__ import annotations

import numpy as np

from ..errors import TracingError
from .gguf import GGUFBackend
from .ggufheader import dims_of, parse, shaped
from .hubhttp import HubFiles, coalesce
from .remote import range_read_record

CHUNK = 16 << 20  # a whole tensor is read in requests of this many bytes
_HEADERS: dict[tuple, object] = {}


class RemoteGGUFBackend(GGUFBackend):
    """One ``.gguf`` file of a hub repository (the spec's ``:<file>.gguf`` or the repository's only
    one), read by range requests at the resolved commit."""

    def __init__(self, resolved, progress: bool = True):
        self.resolved, self.name = resolved, resolved.file
        self.sizes = dict(resolved.hub_sizes)
        if self.name not in self.sizes:
            raise TracingError(f"{resolved.spec}: the hub has no file {self.name} at commit {resolved.commit}")
        self.hub = HubFiles(resolved.repo_id, resolved.commit, resolved.hub_sha256, resolved.spec, progress)
        key = (self.hub.base, resolved.repo_id, resolved.commit, self.name, resolved.hub_sha256.get(self.name))
        if key not in _HEADERS:
            _HEADERS[key] = parse(lambda offset, n: self.hub.read(self.name, offset, n), self.sizes[self.name],
                                  f"{resolved.spec}: {self.name}")
        super().__init__(resolved.path / self.name, resolved.spec, folder=resolved.path, reader=_HEADERS[key])

    @classmethod
    def claims(cls, resolved) -> bool:
        return bool(getattr(resolved, "remote", False)) and str(resolved.file or "").endswith(".gguf")

    @classmethod
    def open(cls, resolved) -> RemoteGGUFBackend:
        return cls(resolved)

    # stored bytes by range requests ----------------------------------------------------------
    def _unheld(self, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The parts of ``spans`` (sorted ``(start, length)``) past the bytes the header's requests fetched:
        what is asked of the hub."""
        held = self.reader.fetched
        return [(max(s, held), s + n - max(s, held)) for s, n in spans if s + n > held]

    def _requests(self, spans: list[tuple[int, int]], gap: int) -> list[tuple[int, int, list[int]]]:
        """The requests that read ``spans``: their parts not held, merged where at most ``gap`` bytes lie between."""
        return coalesce(self._unheld(spans), gap=gap)

    def _read_spans(self, spans: list[tuple[int, int]], gap: int) -> np.ndarray:
        """The bytes of ``spans`` (sorted ``(start, length)``), concatenated: those the header's requests
        fetched from them, the others by merged requests (:meth:`_requests`)."""
        held, unheld = self.reader.bytes.buf, self._unheld(spans)
        got = self.hub.read_spans(self.name, unheld, gap=gap) if unheld else b""
        out, pos, at = bytearray(sum(n for _, n in spans)), 0, 0
        for s, n in spans:
            k = min(n, max(0, len(held) - s))  # the span's bytes among those held
            out[pos:pos + k] = held[s:s + k]
            out[pos + k:pos + n] = got[at:at + n - k]
            pos, at = pos + n, at + n - k
        return np.frombuffer(out, dtype=np.uint8)

    def _whole(self, t) -> list[tuple[int, int]]:
        """The spans a whole tensor is read in."""
        return [(t.data_offset + a, min(CHUNK, t.n_bytes - a)) for a in range(0, t.n_bytes, CHUNK)]

    def _data(self, t) -> np.ndarray:
        return shaped(self._read_spans(self._whole(t), 0), t.tensor_type, dims_of(t))

    def _row_data(self, t, expert: int | None, rows: np.ndarray) -> np.ndarray:
        spans, row_bytes = self._row_spans(t, expert, rows)
        return shaped(self._read_spans(spans, row_bytes), t.tensor_type, (len(rows), dims_of(t)[-1]))

    def _row_spans(self, t, expert: int | None, rows) -> tuple[list[tuple[int, int]], int]:
        dims = dims_of(t)
        row_bytes = t.n_bytes // int(np.prod(dims[:-1]))
        first = 0 if expert is None else expert * dims[-2]
        return [(t.data_offset + (first + int(r)) * row_bytes, row_bytes) for r in rows], row_bytes

    def planned_bytes(self, name: str, index=None) -> int:
        """Bytes that :meth:`get_rows` (``index`` given) or :meth:`get` of ``name`` will transfer: a tensor read
        whole costs its GGUF tensor, and the second part beside it of one the converter split in two; bytes
        the header's requests fetched cost nothing."""
        ref, stored, part, t, expert = self._find(name)
        offset = None if index is None else self._rows_offset(ref, stored, part)
        if offset is None:  # read whole
            return sum(n for x in self._parts(stored) for _, n, _ in self._requests(self._whole(x), 0))
        spans, row_bytes = self._row_spans(t, expert, np.asarray(index, dtype=np.int64) + offset)
        return sum(n for _, n, _ in self._requests(spans, row_bytes))

    def _probe(self, t) -> np.ndarray:
        from gguf import GGML_QUANT_SIZES
        block, size = GGML_QUANT_SIZES[t.tensor_type]
        return shaped(np.zeros(size, dtype=np.uint8), t.tensor_type, (block,))

    # provenance ------------------------------------------------------------------------------
    def file_records(self) -> list[dict]:
        return [range_read_record(self.resolved, self.sizes, self.hub, self.name)]

    def header_bytes(self) -> int:
        """Bytes read to parse the header: requests of growing size, at least the metadata and tensor table
        (the whole of a file smaller than the first request); tensor data among them is not read again."""
        return self.reader.fetched

    def total_bytes(self) -> int:
        return self.sizes.get(self.name, 0)
