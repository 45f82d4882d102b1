"""The header of a GGUF file — metadata and tensor table — read lazily, once per file per process.

gguf-py's ``GGUFReader`` builds a numpy view of every metadata value when it opens a file, the
tokenizer's arrays included: with a 262,144-token vocabulary that is ~11 CPU-seconds per file,
paid by a statistic that reads a few rows. This reader walks the same bytes (gguf-py's constants
and type sizes) but keeps an array only as (type, count, offset) until its contents are asked for
(the tokenizer, for data statistics), so opening costs a pass over the header's bytes.

It reads through ``fetch(offset, size) -> bytes``, so the same parser serves a local file (memory
mapped) and a file on the hub (range requests of growing size, :mod:`tracing.sources.remote`).
The result quacks like a ``GGUFReader`` where the GGUF backend uses one: ``fields[key].contents()``,
``len(fields[key].data)`` for an array, and ``tensors`` with ``name``, ``tensor_type``, ``shape``,
``n_elements``, ``n_bytes``, ``data_offset`` and (local files) ``data``.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TracingError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_CHUNK = 1 << 16  # the first read; each further one doubles what is held


class _Bytes:
    """The file's first bytes, fetched on demand in growing chunks."""

    def __init__(self, fetch, size: int, label: str):
        self.fetch, self.size, self.label, self.buf = fetch, size, label, bytearray()

    def need(self, end: int) -> None:
        while len(self.buf) < end:
            if len(self.buf) >= self.size:
                raise TracingError(f"{self.label} is truncated inside its GGUF header ({self.size} bytes); "
                                   f"re-download it")
            n = min(max(end - len(self.buf), len(self.buf), _CHUNK), self.size - len(self.buf))
            self.buf += self.fetch(len(self.buf), n)

    def unpack(self, fmt: str, pos: int):
        n = struct.calcsize(fmt)
        self.need(pos + n)
        return struct.unpack_from(fmt, self.buf, pos), pos + n

    def string(self, pos: int) -> tuple[str, int]:
        (n,), pos = self.unpack("<Q", pos)
        self.need(pos + n)
        return bytes(self.buf[pos:pos + n]).decode("utf-8"), pos + n


@dataclass
class Field:
    """One metadata value: a scalar or string (``value``), or an array kept as its item type,
    count and offset until :meth:`contents` decodes it."""

    header: "Header"
    value: object = None
    item_type: int | None = None
    count: int = 0
    offset: int = 0

    @property
    def data(self):
        """As GGUFReader's field ``data``: one entry per array item (only its length is used)."""
        return range(self.count) if self.item_type is not None else [0]

    def contents(self):
        if self.item_type is None:
            return self.value
        b, pos, out = self.header.bytes, self.offset, []
        for _ in range(self.count):
            v, pos = _value(b, self.item_type, pos)
            out.append(v)
        return out


@dataclass
class Tensor:
    name: str
    tensor_type: object  # gguf.GGMLQuantizationType
    shape: np.ndarray  # dimensions innermost first, as GGUF stores them
    n_elements: int
    n_bytes: int
    data_offset: int
    header: "Header" = field(repr=False)

    @property
    def data(self) -> np.ndarray:
        """The tensor's bytes as GGUFReader shapes them (a memory map of a local file)."""
        return self.header.tensor_data(self)


@dataclass
class Header:
    label: str
    size: int
    bytes: _Bytes
    fields: dict = field(default_factory=dict)
    tensors: list = field(default_factory=list)
    data_start: int = 0
    digest: str = ""  # SHA-256 of the metadata and tensor table (everything before the alignment padding)
    path: Path | None = None
    _map: np.ndarray | None = None

    @property
    def fetched(self) -> int:
        """Bytes read from the file to parse the header (by requests of growing size: at least ``data_start``,
        the whole of a file smaller than the first request)."""
        return len(self.bytes.buf)

    def tensor_data(self, t: Tensor) -> np.ndarray:
        if self.path is None:
            raise TracingError(f"{self.label}: tensor data of a remote GGUF file is read by ranges, not mapped")
        if self._map is None:
            self._map = np.memmap(self.path, mode="r")
        return shaped(self._map[t.data_offset:t.data_offset + t.n_bytes], t.tensor_type, dims_of(t))


def dims_of(t) -> tuple[int, ...]:
    """A tensor's dimensions outermost first (GGUF lists them innermost first)."""
    return tuple(reversed([int(x) for x in t.shape]))


def shaped(raw: np.ndarray, tensor_type, dims: tuple[int, ...]) -> np.ndarray:
    """Stored bytes (uint8) of ``dims`` values as gguf-py shapes them: plain types as their numpy
    type, quantized ones as bytes per row of blocks."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quant_shape_to_byte_shape
    plain = {Q.F16: np.float16, Q.F32: np.float32, Q.F64: np.float64, Q.I8: np.int8, Q.I16: np.int16,
             Q.I32: np.int32, Q.I64: np.int64}
    if tensor_type in plain:
        return raw.view(plain[tensor_type]).reshape(dims)
    return raw.reshape(quant_shape_to_byte_shape(dims, tensor_type))


def _value(b: _Bytes, vtype: int, pos: int):
    if vtype == _STRING:
        return b.string(pos)
    if vtype in _SCALARS:
        (v,), pos = b.unpack(_SCALARS[vtype], pos)
        return v, pos
    raise TracingError(f"{b.label}: unknown GGUF metadata type {vtype}; the file is corrupt or of a newer GGUF "
                       f"version than the installed gguf package reads")


def _skip_array(b: _Bytes, itype: int, count: int, pos: int) -> int:
    if itype in _SCALARS:
        return pos + count * struct.calcsize(_SCALARS[itype])
    if itype == _STRING:
        for _ in range(count):
            (n,), pos = b.unpack("<Q", pos)
            pos += n
        return pos
    raise TracingError(f"{b.label}: GGUF arrays of type {itype} are not read; the file is corrupt or unusual")


def parse(fetch, size: int, label: str, path: Path | None = None) -> Header:
    """The header of a GGUF file of ``size`` bytes read through ``fetch(offset, n)``."""
    from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType
    b = _Bytes(fetch, size, label)
    (magic, version, n_tensors, n_kv), pos = b.unpack("<IIQQ", 0)
    if magic != GGUF_MAGIC or version not in (2, 3):
        raise TracingError(f"{label} is not a readable GGUF file (magic {magic:#x}, version {version}); it may be "
                           f"truncated or corrupt (or big-endian) — re-download it")
    h = Header(label, size, b, path=path)
    for _ in range(n_kv):
        key, pos = b.string(pos)
        (vtype,), pos = b.unpack("<I", pos)
        if vtype == _ARRAY:
            (itype, count), pos = b.unpack("<IQ", pos)
            h.fields[key] = Field(h, item_type=itype, count=count, offset=pos)
            pos = _skip_array(b, itype, count, pos)
        else:
            value, pos = _value(b, vtype, pos)
            h.fields[key] = Field(h, value=value)
    infos = []
    for _ in range(n_tensors):
        name, pos = b.string(pos)
        (n_dims,), pos = b.unpack("<I", pos)
        dims, pos = b.unpack(f"<{n_dims}Q", pos)
        (ttype, offset), pos = b.unpack("<IQ", pos)
        infos.append((name, dims, ttype, offset))
    b.need(pos)
    h.digest = hashlib.sha256(bytes(b.buf[:pos])).hexdigest()
    align = h.fields["general.alignment"].value if "general.alignment" in h.fields else GGUF_DEFAULT_ALIGNMENT
    h.data_start = pos + (-pos % int(align))
    for name, dims, ttype, offset in infos:
        kind = GGMLQuantizationType(ttype)
        block, type_size = GGML_QUANT_SIZES[kind]
        n = int(np.prod(dims)) if dims else 1
        h.tensors.append(Tensor(name, kind, np.array(dims, dtype=np.uint64), n, n * type_size // block,
                                h.data_start + offset, h))
    return h


_CACHE: dict[tuple, Header] = {}


def header_of(file: str | Path) -> Header:
    """The header of a local GGUF file, parsed once per process (again only when the file changed:
    its path, size, modification and status-change times are the key)."""
    p = Path(file).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _CACHE:
        with open(p, "rb") as fh:
            def fetch(offset: int, n: int) -> bytes:
                fh.seek(offset)
                return fh.read(n)
            _CACHE[key] = parse(fetch, st.st_size, str(file), path=p)
    return _CACHE[key]
