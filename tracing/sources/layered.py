"""Safetensors folders whose linear layers are stored quantized, each next to its scales.

FP8, MXFP4, compressed-tensors and bitsandbytes checkpoints all keep a quantized layer as a few
tensors in the model's safetensors files (codes, scales, sometimes zero points or a shape) beside
the tensors stored as they are (embeddings, norms, routers).  :class:`LayeredBackend` holds what
they share: it reads every file's header once (names, dtypes, shapes, byte ranges; no tensor
data), checks that the files are whole and that every quantized layer's parts agree with each
other before anything is computed, and hands out one tensor at a time, dequantized to float32, or
only some of its rows.  A format (a subclass) says which stored tensors are quantized, with which
parts (:meth:`LayeredBackend.layer`), and dequantizes one layer, or some of its rows, from them
(:meth:`LayeredBackend.dequantize`); its arithmetic lives in pure functions over tensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..arch import arch_from_config
from ..errors import TracingError
from .base import read_config_json
from .folder import weights_read
from . import QuantizedBackend


@dataclass
class Meta:
    """One stored tensor, from its file's header."""
    file: Path
    dtype: str  # safetensors dtype, e.g. "F8_E4M3"
    shape: tuple[int, ...]


@dataclass
class Layer:
    """A quantized layer: the keys of its parts in the files, its storage type for the record, and
    whatever else its format needs to dequantize it."""
    kind: str
    parts: dict[str, str]
    info: dict = field(default_factory=dict)


class LayeredBackend(QuantizedBackend):
    """A folder of config.json (with ``quantization_config``) and safetensors files."""

    method = "?"
    undoes = ""  # what the reader undid, for the record

    def __init__(self, folder: Path, qcfg: dict, label: str):
        self.folder, self.q, self.label = Path(folder), qcfg, label
        self.format = self.method
        self._config = None
        self._last: tuple[str, torch.Tensor] | None = None
        self._layers: dict[str, Layer | None] = {}
        self.raw_config = read_config_json(self.folder / "config.json")
        self.arch = arch_from_config(self.raw_config, where=str(self.folder / "config.json"))
        self._meta = self._scan()
        self._check_complete()

    @classmethod
    def claims(cls, resolved) -> bool:
        """A folder whose ``quantization_config`` names a method other than GPTQ/AWQ (those are
        :class:`~tracing.sources.gptq.PackedInt4Backend`'s); an unknown method is refused when opened."""
        from . import quantization_config
        q = resolved.path.is_dir() and quantization_config(resolved.path)
        return bool(q) and str(q["quant_method"]).lower() not in ("gptq", "awq")

    @classmethod
    def open(cls, resolved) -> LayeredBackend:
        from . import quantization_config
        from .formats import open_format
        return open_format(resolved.path, quantization_config(resolved.path), resolved.spec)

    # format hooks ------------------------------------------------------------------------
    def layer(self, stored: str) -> Layer | None:
        """The quantized parts of checkpoint tensor ``stored``, None when it is stored as it is or
        absent; a TracingError naming the tensor when its parts are missing or disagree."""
        raise NotImplementedError

    def dequantize(self, layer: Layer, rows: np.ndarray | None) -> torch.Tensor:
        """The float32 weight of ``layer`` (its rows ``rows`` only, when given), read with
        :meth:`read` and :meth:`read_rows`."""
        raise NotImplementedError

    # files -------------------------------------------------------------------------------
    def _scan(self) -> dict[str, Meta]:
        from ..rows import header
        idx = self.folder / "model.safetensors.index.json"
        if idx.is_file():
            try:
                weight_map = json.loads(idx.read_text())["weight_map"]
                files = sorted({self.folder / v for v in weights_read(self.arch, weight_map).values()})
            except (ValueError, KeyError, TypeError, AttributeError):
                raise TracingError(f"{idx} is corrupt (no weight_map of tensor names to files); "
                                   f"download the model again") from None
        else:
            files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise TracingError(f"{self.folder} is a {self.method} folder without *.safetensors weights")
        meta = {}
        for f in files:
            if not f.is_file():
                raise TracingError(f"{f} is missing (listed in the folder's index); download the model again")
            try:
                start, head = header(f)
            except (OSError, ValueError, UnicodeDecodeError) as e:
                raise TracingError(f"{f} is not a readable safetensors file ({type(e).__name__}); it may be "
                                   f"truncated or corrupt — download it again") from None
            size = f.stat().st_size
            for key, m in head.items():
                if key == "__metadata__":
                    continue
                if start + int(m["data_offsets"][1]) > size:
                    raise TracingError(f"{f} is truncated: tensor {key} ends past the end of the file; "
                                       f"download it again")
                meta[key] = Meta(f, m["dtype"], tuple(m["shape"]))
        return meta

    def has_key(self, key: str) -> bool:
        return key in self._meta

    def meta(self, key: str) -> Meta:
        return self._meta[key]

    def read(self, key: str) -> torch.Tensor:
        """One stored tensor, whole."""
        from safetensors import safe_open
        with safe_open(self._meta[key].file, framework="pt") as h:
            return h.get_tensor(key)

    def read_rows(self, key: str, rows: np.ndarray, lead: int = 1) -> torch.Tensor:
        """Rows ``rows`` (sorted, distinct) of one stored tensor, and nothing else of it; with
        ``lead`` > 1 the rows are counted over its first ``lead`` axes together (a stacked tensor's
        row e·n + r is row r of its part e)."""
        from ..rows import read_rows
        rows = np.asarray(rows, dtype=np.int64)
        t = read_rows(self._meta[key].file, key, rows, lead)
        if t is None:
            from safetensors import safe_open
            with safe_open(self._meta[key].file, framework="pt") as h:
                if lead > 1:
                    t = h.get_tensor(key).flatten(0, lead - 1)[torch.from_numpy(rows)]
                else:
                    t = h.get_slice(key)[rows.tolist()]
        return t

    def weight_files(self):
        return sorted({m.file for m in self._meta.values()})

    # config ------------------------------------------------------------------------------
    def config(self):
        if self._config is None:
            from transformers import AutoConfig
            try:
                cfg = AutoConfig.from_pretrained(self.folder, trust_remote_code=False)
            except (ValueError, OSError, KeyError) as e:
                raise TracingError(f"{self.folder / 'config.json'} cannot be read as a transformers config "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config  # the weights handed out are float
            self._config = cfg
        return self._config

    # tensors -----------------------------------------------------------------------------
    def _layer(self, stored: str) -> Layer | None:
        if stored not in self._layers:
            self._layers[stored] = self.layer(stored)
        return self._layers[stored]

    def _stored(self, name: str) -> tuple[str, object, Layer | None] | None:
        """``(stored name, index, layer)`` of the first store of ``name`` this folder holds."""
        from ..models import logical_ref
        for stored, index in logical_ref(self.arch, name, self.label).stores:
            lay = self._layer(stored)
            if lay is not None or stored in self._meta:
                return stored, index, lay
        return None

    def _check_complete(self) -> None:
        from ..models import logical_ref
        for name in self.arch.names():
            if self._stored(name) is None:
                stored = logical_ref(self.arch, name, self.label).stores[0][0]
                raise TracingError(f"{self.folder}: tensor {stored} is missing (neither stored nor quantized); "
                                   f"the checkpoint is incomplete — download it again")

    def has(self, name):
        try:
            return self._stored(name) is not None
        except TracingError:
            return False

    def _whole(self, stored: str, lay: Layer | None, keep: bool) -> torch.Tensor:
        if self._last is not None and self._last[0] == stored:
            return self._last[1]
        self._last = None
        w = self.read(stored) if lay is None else self.dequantize(lay, None)
        if keep:  # a fused or stacked tensor serves several roles, read one after another
            self._last = (stored, w)
        return w

    def get(self, name, dtype=torch.float32):
        from ..models import logical_ref, select
        found = self._stored(name)
        if found is None:
            raise TracingError(f"{self.label}: tensor {name} not found in its weight files")
        stored, index, lay = found
        w = select(self._whole(stored, lay, keep=index is not None), index)
        shape = tuple(logical_ref(self.arch, name, self.label).shape)
        if tuple(w.shape) != shape:
            raise TracingError(f"{self.folder}: {stored} gives shape {tuple(w.shape)} for {name}, but the config "
                               f"expects {shape}; use the config.json that came with these weights")
        return w.to(dtype)

    def get_rows(self, name, index, dtype=torch.float32):
        """Rows ``index`` of ``name``: only those rows of its codes and of its scales are read."""
        from ..rows import row_offset
        found = self._stored(name)
        offset = None if found is None else row_offset(found[1])
        if offset is None or (self._last is not None and self._last[0] == found[0]):
            return super().get_rows(name, index, dtype)
        stored, _, lay = found
        rows = np.asarray(index, dtype=np.int64) + offset
        w = self.read_rows(stored, rows) if lay is None else self.dequantize(lay, rows)
        return w.to(dtype)

    # provenance --------------------------------------------------------------------------
    def tensor_types(self):
        """Storage type of every tensor the model reads (a quantized layer: its format's kind)."""
        out = {}
        for name in self.arch.names():
            found = self._stored(name)
            if found is not None:
                stored, _, lay = found
                out[stored] = lay.kind if lay is not None else self._meta[stored].dtype
        return out

    def quantization(self):
        info = super().quantization()
        if self.undoes:
            info["undone"] = self.undoes
        return info

    def has_tokenizer(self):
        return False  # the folder's tokenizer files are read by the checkpoint itself


_POOL = None


#: chunks a thread must get before the work is shared: handing chunks to threads costs about as
#: much as decoding a few hundred thousand values (more on a busy machine), so the rows of a
#: sampled test are decoded in the calling thread
CHUNKS_PER_THREAD = 16


def in_chunks(n: int, step: int, work) -> None:
    """``work(i, j)`` over ``range(0, n)`` in chunks of ``step``; when there are many, the chunks are
    shared among as many threads as torch uses (numpy's table lookups and multiplications release
    the GIL), as torch's own conversions of a bfloat16 tensor are."""
    global _POOL
    starts = list(range(0, n, step))
    threads = min(torch.get_num_threads(), len(starts) // CHUNKS_PER_THREAD)
    if threads < 2:
        for i in starts:
            work(i, min(i + step, n))
        return
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max(2, torch.get_num_threads()), thread_name_prefix="dequantize")
    parts = np.array_split(np.asarray(starts), threads)

    def run(part):
        for i in part:
            work(int(i), min(int(i) + step, n))
    for f in [_POOL.submit(run, p) for p in parts]:
        f.result()


def bad_part(folder: Path, key: str, why: str, fix: str = "the checkpoint is inconsistent — download it again") -> TracingError:
    return TracingError(f"{folder}: {key} {why}; {fix}")
