"""Quantized hub models read where they lie: the safetensors formats (FP8, compressed-tensors,
bitsandbytes, MXFP4, GPTQ/AWQ) of a hub repository not in the local cache, read by HTTP range
requests through :class:`tracing.sources.remote.RemoteBackend` at the commit the revision resolved to.

The format's own reader does the arithmetic; only its file access changes: the files' headers are
read by ranged reads when the model is opened, a whole stored tensor by one request for its bytes,
and rows of a stored tensor by one request per run of rows. A sampled row of a format whose rows lie
alone (FP8 codes and the one scale row of their block, compressed-tensors packed rows and their
scale rows, bitsandbytes codes and the absmax of their blocks, MXFP4 blocks and scales) reads those
bytes only; GPTQ and AWQ pack each row of a weight across the columns of ``qweight`` (one word per
eight rows), so their sampled rows cost the layer's packed tensors, read whole. A small stored tensor whose rows
would take several requests (an expert's FP8 block scales, a few kB) is read whole in one
(:func:`small_whole`). Results are bit-identical to the local read of the same folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import TracingError
from .remote import RemoteBackend


class RangeReads:
    """File access of a quantized format's backend by range requests. Mixed in before the format's
    class (:func:`remote_class`); ``self.files`` is the :class:`RemoteBackend` that reads the bytes."""

    files: RemoteBackend
    _planning: dict | None = None

    def _open_files(self, resolved) -> None:
        self.files = RemoteBackend(resolved)
        self.resolved = resolved

    # the stored tensors ------------------------------------------------------------------------
    def _stored_meta(self, key: str) -> tuple[str, dict]:
        """``(file, header entry)`` of a stored tensor."""
        f = self.files._index.get(key)
        entry = None if f is None else self.files.header(f.name)[1].get(key)
        if entry is None:
            raise TracingError(f"{self.label}: tensor {key} is not in the safetensors headers of its files on the "
                               f"hub; the repository's index does not match its files — fetch it with --download")
        return f.name, entry

    def _scan(self):
        from .layered import Meta
        meta = {}
        for key, f in self.files._index.items():
            file, m = self._stored_meta(key)
            start = self.files.header(file)[0]
            if start + int(m["data_offsets"][1]) > self.files.sizes.get(file, 0):
                raise TracingError(f"{self.label}: {file} on the hub is shorter than its header says (tensor {key} "
                                   f"ends past its end); fetch the model with --download")
            meta[key] = Meta(f, m["dtype"], tuple(m["shape"]))
        return meta

    def _build_index(self):  # GPTQ / AWQ: tensor name -> file
        return dict(self.files._index)

    def read(self, key: str) -> torch.Tensor:
        """One stored tensor, whole: one request for its bytes."""
        from ..rows import DTYPES
        file, m = self._stored_meta(key)
        start = self.files.header(file)[0] + int(m["data_offsets"][0])
        n = int(m["data_offsets"][1]) - int(m["data_offsets"][0])
        if m["dtype"] not in DTYPES:
            raise TracingError(f"{self.label}: tensor {key} has dtype {m['dtype']}, which the range reader does not "
                               f"handle; fetch the model with --download")
        if self._planning is not None:
            self._planning["bytes"] += n
            return torch.zeros(m["shape"], dtype=DTYPES[m["dtype"]])
        data = bytearray(self.files.hub.read_many(file, [(start, n)])[0]) if n else bytearray()
        if not data:
            return torch.empty(m["shape"], dtype=DTYPES[m["dtype"]])
        return torch.frombuffer(data, dtype=DTYPES[m["dtype"]]).reshape(m["shape"])

    _read = read  # GPTQ / AWQ

    def read_rows(self, key: str, rows, lead: int = 1) -> torch.Tensor:
        """Rows ``rows`` (sorted, distinct; counted over the first ``lead`` axes, as
        :meth:`LayeredBackend.read_rows`) of one stored tensor, and nothing else of it."""
        rows = np.asarray(rows, dtype=np.int64)
        file, m = self._stored_meta(key)
        plan, _, requests = self.files._requests(file, key, rows, lead)
        if plan is None or small_whole(m, requests):
            return self._whole_rows(key, rows, lead)
        if self._planning is not None:
            self._planning["bytes"] += sum(n for _, n, _ in requests)
            return torch.zeros([rows.size, *plan[1]], dtype=plan[0])
        t = self.files._read_rows(file, key, rows, lead)
        return self._whole_rows(key, rows, lead) if t is None else t

    def prefetch_rows(self, wants) -> None:
        """Fetch now, with many requests in flight, what :meth:`get_rows` of each ``(name, index)`` of
        ``wants`` will read (the same requests: the format's reader run on zeros to list them)."""
        self._last = None
        try:
            with self.hub.record() as asked:
                for name, index in wants:
                    self.get_rows(name, index)
        finally:
            self._last = None  # nothing decoded from the zeros is kept
        self.hub.fetch_ahead(asked)

    def _whole_rows(self, key: str, rows: np.ndarray, lead: int) -> torch.Tensor:
        t = self.read(key)
        return (t.flatten(0, lead - 1) if lead > 1 else t)[torch.as_tensor(rows)]

    def tensor_types(self):
        if not hasattr(self, "_meta"):  # GPTQ / AWQ: the packed layers by their qweight
            return self._packed_types()
        return super().tensor_types()

    def _packed_types(self) -> dict[str, str]:
        out = {}
        for key in self.files._index:
            part = key.rpartition(".")[2]
            if part == "qweight":
                out[key] = f"{self.method.upper()} int{self.bits} g{self.group_size}"
            elif part not in ("qzeros", "scales", "g_idx"):
                out[key] = self._stored_meta(key)[1]["dtype"]
        return out

    # what it costs -----------------------------------------------------------------------------
    @property
    def hub(self):
        return self.files.hub

    def weight_files(self) -> list[Path]:
        return self.files.weight_files()

    def file_records(self) -> list[dict]:
        return self.files.file_records()

    def total_bytes(self) -> int:
        return self.files.total_bytes()

    def header_bytes(self) -> int:
        """Bytes read when the model was opened: the files' headers and the few small tensors a
        format reads to know its layers (a bitsandbytes quant_state, a packed weight_shape)."""
        return self._opened_bytes

    def planned_bytes(self, name: str, index=None) -> int:
        """Bytes that :meth:`get_rows` (``index`` given) or :meth:`get` of ``name`` will transfer,
        computed by running the format's reader on the headers alone (zeros in place of the data)."""
        if not self.has(name):
            return 0
        self._last, self._planning = None, {"bytes": 0}
        try:
            self.get(name) if index is None else self.get_rows(name, index)
            return self._planning["bytes"]
        finally:
            self._last, self._planning = None, None


#: a stored tensor of at most this many bytes is read whole in one request rather than in several
#: requests for its rows (an expert's FP8 block scales: 16 × 56 float32, 3.5 kB): at 100 MB/s a
#: round trip of ~1 ms (and ~0.8 ms of the client's CPU per request) costs as much as ~100 kB
SMALL_WHOLE = 16 << 10
#: ... and at most this many times the bytes its rows' requests would take (a small weight's few
#: sampled rows are still read alone)
SMALL_WHOLE_RATIO = 4


def small_whole(entry: dict, requests: list) -> bool:
    """Whether rows of the stored tensor ``entry`` (its header entry), asked in ``requests``, are read by
    one request for the whole tensor instead: more than one request, the tensor at most
    :data:`SMALL_WHOLE` bytes and at most :data:`SMALL_WHOLE_RATIO` times the rows' bytes."""
    whole = int(entry["data_offsets"][1]) - int(entry["data_offsets"][0])
    asked = sum(n for _, n, _ in requests)
    return len(requests) > 1 and whole <= SMALL_WHOLE and whole <= SMALL_WHOLE_RATIO * asked


def remote_class(cls: type) -> type:
    """``cls`` (a quantized format's backend) reading its files by range requests."""

    def __init__(self, resolved, qcfg):
        self._open_files(resolved)
        cls.__init__(self, resolved.path, qcfg, resolved.spec)
        self._opened_bytes = sum(self.files.hub.bytes_read.values())

    return type(f"Remote{cls.__name__}", (RangeReads, cls), {"__init__": __init__})


class RemoteQuantizedBackend:
    """Claims a quantized hub model read by range requests and opens it with its format's reader."""

    @classmethod
    def claims(cls, resolved) -> bool:
        from . import quantization_config
        return bool(getattr(resolved, "remote", False)) and bool(quantization_config(resolved.path))

    @classmethod
    def open(cls, resolved):
        from . import quantization_config
        from .formats import format_class
        qcfg = quantization_config(resolved.path)
        return remote_class(format_class(resolved.path, qcfg))(resolved, qcfg)
