"""Hugging Face model folders: ``config.json`` and float weights in safetensors files (sharded or
not, read tensor by tensor with ``safe_open``; rows alone when only rows are asked for) or
``pytorch_model*.bin`` shards (memory-mapped with ``torch.load``)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..arch import arch_from_config, files_read
from ..arch.layout import Transposed, select
from ..errors import TracingError
from .base import Backend, _corrupt, _read_weight_map, read_config_json


class FolderBackend(Backend):
    """A model folder with float weights. The config is read at opening; the weight files' headers
    when a tensor or the file list is first needed (or by :meth:`validate`)."""

    format = "safetensors"
    quantized = False
    native = True

    def __init__(self, path: Path, label: str):
        self.path, self.label = Path(path), label
        cfg_file = self.path / "config.json"
        if not cfg_file.is_file():
            raise TracingError(f"{self.path} has no config.json; point to a Hugging Face model folder "
                               f"(config.json + model*.safetensors or pytorch_model*.bin)")
        raw = read_config_json(cfg_file)
        self.raw_config, self.cfg_file = raw, cfg_file
        self.arch = arch_from_config(raw, where=str(cfg_file))
        self._config = None
        self._index_cache: dict[str, Path] | None = None
        self._bin_cache: tuple[Path, dict] | None = None

    @classmethod
    def claims(cls, resolved) -> bool:
        return resolved.path.is_dir()

    @classmethod
    def open(cls, resolved) -> FolderBackend:
        return cls(resolved.path, resolved.spec)

    def validate(self) -> None:
        self._check_shapes()

    # config ----------------------------------------------------------------------------------
    def config(self):
        if self._config is None:
            from transformers import AutoConfig
            try:
                self._config = AutoConfig.from_pretrained(self.path, trust_remote_code=False)
            except Exception as e:  # transformers' own validation of the config's values
                cause = e.__cause__ or e
                detail = (str(cause).strip().splitlines() or [type(cause).__name__])[-1].strip()
                raise TracingError(f"{self.label}: transformers refuses its config.json ({detail}); "
                                   f"use the config.json that came with the weights") from None
        return self._config

    # tensors ---------------------------------------------------------------------------------
    @property
    def _index(self) -> dict[str, Path]:
        if self._index_cache is None:
            self._index_cache = self._build_index()
        return self._index_cache

    def _build_index(self) -> dict[str, Path]:
        """tensor name -> file, with every tensor's shape in ``self._shapes`` (from the file headers)."""
        p = self.path
        self._shapes: dict[str, tuple[int, ...]] = {}
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (p / index_name).is_file():
                weight_map = weights_read(self.arch, _read_weight_map(p / index_name))
                files = sorted(set(weight_map.values()))
                for f in files:
                    if not (p / f).is_file():
                        raise _corrupt(p / index_name, f"it lists {f}, which is missing")
                    self._shapes.update(_header_shapes(p / f))
                return {k: p / v for k, v in weight_map.items()}
        files = sorted(p.glob("*.safetensors")) or sorted(p.glob("pytorch_model*.bin"))
        if not files:
            raise TracingError(f"{p} has a config.json but no weights (model*.safetensors or pytorch_model*.bin); "
                               f"the download may be incomplete")
        index = {}
        for f in files:
            shapes = _header_shapes(f)
            self._shapes.update(shapes)
            index.update({k: f for k in shapes})
        return index

    def _check_shapes(self) -> None:
        """The config's sizes against the tensors' shapes (headers only; no tensor data is read).
        A fused tensor's role parts must fit it and add up to all of it."""
        index = self._index
        fused: dict[str, int] = {}  # stored name of a fused tensor -> elements its roles account for
        for name in self.arch.names():
            ref = self.arch.ref(name)
            stored, part = next(((s, i) for s, i in ref.stores if s in self._shapes), (None, None))
            if stored is None:
                continue
            found = tuple(self._shapes[stored])
            try:  # the role's part of a fused tensor, computed on the meta device
                got = found if part is None else tuple(select(torch.empty(found, device="meta"), part).shape)
            except (IndexError, RuntimeError):
                got = None
            if got != tuple(ref.shape):
                what = "" if part is None else f" (its {ref.role} part: {got})"
                self._shape_error(index, stored, f"{found}{what}", tuple(ref.shape))
            if part is not None:
                fused[stored] = fused.get(stored, 0) + _numel(ref.shape)
        for stored, n in fused.items():
            if n != _numel(self._shapes[stored]):
                self._shape_error(index, stored, str(tuple(self._shapes[stored])), f"parts with {n} elements in all")

    def _shape_error(self, index: dict, stored: str, found: str, want) -> None:
        raise TracingError(
            f"{self.cfg_file} does not match the weights: tensor {stored} in "
            f"{getattr(index.get(stored), 'name', 'the weights')} has shape {found}, but the config "
            f"implies {want}; fix the config's sizes or use the config.json that came with these weights")

    def _load_bin(self, f: Path) -> dict:
        if self._bin_cache is None or self._bin_cache[0] != f:
            self._bin_cache = None
            self._bin_cache = (f, _torch_load(f))
        return self._bin_cache[1]

    def _find(self, name):
        """``(stored name, role index, file)`` of a logical tensor, or None."""
        from ..models import logical_ref
        ref = logical_ref(self.arch, name, self.label)
        return next(((s, i, self._index[s]) for s, i in ref.stores if s in self._index), None)

    def has(self, name) -> bool:
        return self._find(name) is not None

    def get(self, name, dtype=torch.float32):
        from ..models import logical_ref
        found = self._find(name)
        if found is None:
            ref = logical_ref(self.arch, name, self.label)
            raise TracingError(f"{self.label}: tensor {ref.stores[0][0]} not found in its weight files; "
                               f"is this a complete {self.arch.model_type} causal LM checkpoint?")
        stored, index, f = found
        if f.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(f, framework="pt") as h:  # opened per tensor, closed at once
                if index is not None and not isinstance(index, Transposed) and all(isinstance(x, (int, slice))
                                                                                   for x in index):
                    return h.get_slice(stored)[index]  # only the role's rows are read
                if isinstance(index, Transposed) and index and isinstance(index[0], int):
                    return select(h.get_slice(stored)[index[0]], Transposed(index[1:]))  # one expert of a stack
                return select(h.get_tensor(stored), index)
        return select(self._load_bin(f)[stored], index)

    def get_rows(self, name, index, dtype=torch.float32):
        """Rows ``index`` of ``name``: from a safetensors file only those rows are read (a role that
        is a block of rows of a fused tensor too); other files give the tensor's rows."""
        from ..rows import read_rows, row_offset
        found = self._find(name)
        offset = None if found is None or found[2].suffix != ".safetensors" else row_offset(found[1])
        if offset is None:
            return self.get(name, dtype)[torch.as_tensor(index, dtype=torch.long)]
        stored, _, f = found
        rows = [int(i) + offset for i in index]
        try:
            t = read_rows(f, stored, rows)
        except (OSError, ValueError):
            t = None
        if t is None:  # a layout the row reader does not handle: safetensors' own slicing
            from safetensors import safe_open
            with safe_open(f, framework="pt") as h:
                t = h.get_slice(stored)[rows]
        return t

    def release(self):
        self._bin_cache = None

    def weight_files(self) -> list[Path]:
        return sorted(set(self._index.values()))

    def tensor_types(self) -> dict[str, str]:
        return {}

    def quantization(self) -> None:
        return None


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def weights_read(arch, weight_map: dict[str, str]) -> dict[str, str]:
    """An index's ``weight_map`` without the files that hold no tensor ``arch`` reads
    (:func:`~tracing.arch.files_read`): a download leaves them out; all of it when ``arch`` reads none."""
    keep = files_read(arch, weight_map) or set(weight_map.values())
    return {k: f for k, f in weight_map.items() if f in keep}


def _header_shapes(f: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in one weight file, without reading tensor data."""
    if f.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(f, framework="pt") as h:
                return {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise _corrupt(f, f"unreadable safetensors header: {str(e).splitlines()[0][:80]}") from None
    return {k: tuple(v.shape) for k, v in _torch_load(f).items() if isinstance(v, torch.Tensor)}


def _torch_load(f: Path) -> dict:
    """A ``pytorch_model*.bin`` file, memory-mapped (tensors are read when used)."""
    import pickle
    import zipfile
    try:
        state = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise _corrupt(f, f"cannot load it: {type(e).__name__}") from None
    if not isinstance(state, dict):
        raise _corrupt(f, "it does not hold a state dict")
    return state
