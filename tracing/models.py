"""Open a model: hub id (``id`` or ``id@revision``), ``demo:<name>``, a local folder, or a GGUF file
(ids, including a ``:<file>.gguf`` suffix, are parsed and resolved by :mod:`tracing.specs`).
Quantized checkpoints (GGUF, GPTQ, AWQ; see :mod:`tracing.sources`) are dequantized to float32
one tensor at a time.

A :class:`Checkpoint` gives the config, the tokenizer, and **lazy per-tensor access**: one
tensor is read at a time (safetensors ``safe_open``, sharded or not, or ``pytorch_model*.bin``
shards through ``torch.load(mmap=True)``); the model is never materialised for weight-only work.
Every weight source (a checkpoint, an in-memory state dict, or a transformed view of either,
see :mod:`tracing.transforms`) has the same small interface: ``arch``, ``config``, ``get(name)``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
import torch

from .arch import LM_HEAD, Arch, TensorRef, arch_from_config
from .arch.layout import Transposed, select
from .errors import TracingError

from .specs import Resolved, Spec, parse_spec, resolve  # noqa: F401 - model ids; re-exported here


# ------------------------------------------------------------------------------------------
# Weight sources
# ------------------------------------------------------------------------------------------
class WeightSource:
    """Read-only access to a model's tensors, one at a time.

    Subclasses implement ``get``; tensors returned must not be modified in place.
    ``release()`` drops any per-block cache (called after each block by streaming code).
    """

    arch: Arch
    config: object  # a transformers PretrainedConfig
    label: str = "model"

    def get(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def get_rows(self, name: str, index, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``index`` (sorted integer indices) of tensor ``name``; this default reads the whole
        tensor, sources that can read rows alone override it."""
        return self.get(name, dtype)[torch.as_tensor(index, dtype=torch.long)]

    def get_columns(self, name: str, index, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Columns ``index`` of tensor ``name`` (a row-major file holds no column alone: the tensor is
        read whole; a store of sampled columns overrides this)."""
        return self.get(name, dtype)[:, torch.as_tensor(index, dtype=torch.long)]

    def release(self) -> None:
        pass

    def names(self) -> list[str]:
        return self.arch.names()

    def state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Materialise every tensor (small models only)."""
        return {n: self.get(n, dtype) for n in self.names()}


def logical_ref(arch: Arch, name: str, label: str) -> TensorRef:
    """The reference of a logical name (an lm_head of a tied model reads the embedding)."""
    if name == LM_HEAD and arch.tied:
        name = arch.embed
    try:
        return arch.ref(name)
    except KeyError:
        raise TracingError(f"{label}: {name} is not a tensor of a {arch.model_type} checkpoint") from None




def require_finite(label: str, name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or a one-line TracingError naming the model and tensor if it holds NaN or inf."""
    # a NaN or inf makes the sum non-finite (so does an overflow: then every value is checked)
    if t.is_floating_point() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        raise TracingError(f"{label}: tensor {name} holds non-finite values ({nan} NaN, {inf} inf); "
                           f"the weights are corrupt or come from a diverged run, use an intact checkpoint")
    return t


class DictSource(WeightSource):
    """A state dict held in memory, keyed by file names or by transformers' module names
    (e.g. ``model.state_dict()`` of a loaded model, with fused experts)."""

    def __init__(self, state: dict[str, torch.Tensor], config, label: str = "model"):
        self.config = config
        self.arch = arch_from_config(config)
        self.state = state
        self.label = label

    def get(self, name, dtype=torch.float32):
        ref = logical_ref(self.arch, name, self.label)
        for stored, index in ref.stores:
            if stored in self.state:
                return require_finite(self.label, name, select(self.state[stored], index)).to(dtype)
        raise TracingError(f"tensor {name} is missing from {self.label}")


def from_module(model: torch.nn.Module, label: str = "model") -> DictSource:
    """A weight source over a loaded transformers model (shares its tensors)."""
    return DictSource({k: v.detach() for k, v in model.state_dict().items()}, model.config, label)


class CachedSource(WeightSource):
    """Memoises ``get`` until ``release()``: several views of one model then share one read."""

    def __init__(self, inner: WeightSource):
        self.inner, self.arch, self.config, self.label = inner, inner.arch, inner.config, inner.label
        self._cache: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name, dtype=torch.float32):
        key = (name, dtype)
        if key not in self._cache:
            self._cache[key] = self.inner.get(name, dtype)
        return self._cache[key]

    def get_rows(self, name, index, dtype=torch.float32):
        key = (name, dtype)
        if key in self._cache:
            return self._cache[key][torch.as_tensor(index, dtype=torch.long)]
        return self.inner.get_rows(name, index, dtype)

    def release(self):
        self._cache.clear()
        self.inner.release()


# ------------------------------------------------------------------------------------------
# Checkpoints on disk
# ------------------------------------------------------------------------------------------
class Checkpoint(WeightSource):
    """A model on disk: config, tokenizer and lazily read tensors."""

    def __init__(self, spec: str | os.PathLike, resolved: Resolved | None = None):
        self.resolved = resolved or resolve(str(spec))
        self.path = self.resolved.path
        self.label = self.resolved.spec
        self._config = None
        self._bin_cache: tuple[Path, dict] | None = None
        self._finite: set[str] = set()  # tensors already checked for NaN / inf
        from .sources import detect
        self.quantized = detect(self.path, self.resolved.file, self.label)
        if self.quantized is not None:
            self.arch = self.quantized.arch
            self._index = {}
            return
        cfg_file = self.path / "config.json"
        if not cfg_file.is_file():
            raise TracingError(f"{self.path} has no config.json; point to a Hugging Face model folder "
                               f"(config.json + model*.safetensors or pytorch_model*.bin)")
        try:
            raw = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise TracingError(f"{cfg_file} is not valid JSON ({e.msg}); re-download or fix the file") from None
        if not isinstance(raw, dict):
            raise TracingError(f"{cfg_file} does not hold a JSON object; re-download or fix the file")
        self.arch = arch_from_config(raw, where=str(cfg_file))
        self._index = self._build_index()
        self._check_shapes(cfg_file)

    # config ------------------------------------------------------------------------------
    @property
    def config(self):
        if self._config is None and self.quantized is not None:
            self._config = self.quantized.config()
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

    # tensors -----------------------------------------------------------------------------
    def _build_index(self) -> dict[str, Path]:
        """tensor name -> file, with every tensor's shape in ``self._shapes`` (from the file headers)."""
        p = self.path
        self._shapes: dict[str, tuple[int, ...]] = {}
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (p / index_name).is_file():
                weight_map = _read_weight_map(p / index_name)
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

    def _check_shapes(self, cfg_file: Path) -> None:
        """The config's sizes against the tensors' shapes (headers only; no tensor data is read).
        A fused tensor's role parts must fit it and add up to all of it."""
        fused: dict[str, int] = {}  # stored name of a fused tensor -> elements its roles account for
        for name in self.arch.names():
            ref = self.arch.ref(name)
            stored, index = next(((s, i) for s, i in ref.stores if s in self._shapes), (None, None))
            if stored is None:
                continue
            found = tuple(self._shapes[stored])
            try:  # the role's part of a fused tensor, computed on the meta device
                got = found if index is None else tuple(select(torch.empty(found, device="meta"), index).shape)
            except (IndexError, RuntimeError):
                got = None
            if got != tuple(ref.shape):
                part = "" if index is None else f" (its {ref.role} part: {got})"
                self._shape_error(cfg_file, stored, f"{found}{part}", tuple(ref.shape))
            if index is not None:
                fused[stored] = fused.get(stored, 0) + _numel(ref.shape)
        for stored, n in fused.items():
            if n != _numel(self._shapes[stored]):
                self._shape_error(cfg_file, stored, str(tuple(self._shapes[stored])),
                                  f"parts with {n} elements in all")

    def _shape_error(self, cfg_file: Path, stored: str, found: str, want) -> None:
        raise TracingError(
            f"{cfg_file} does not match the weights: tensor {stored} in "
            f"{getattr(self._index.get(stored), 'name', 'the weights')} has shape {found}, but the config "
            f"implies {want}; fix the config's sizes or use the config.json that came with these weights")

    def _load_bin(self, f: Path) -> dict:
        if self._bin_cache is None or self._bin_cache[0] != f:
            self._bin_cache = None
            self._bin_cache = (f, _torch_load(f))
        return self._bin_cache[1]

    def weight_files(self) -> list[Path]:
        if self.quantized is not None:
            return self.quantized.weight_files()
        return sorted(set(self._index.values()))

    def get(self, name, dtype=torch.float32):
        if self.quantized is not None:
            t = self.quantized.get(name, dtype)
            if name not in self._finite:
                require_finite(self.label, name, t)
                self._finite.add(name)
            return t
        ref = logical_ref(self.arch, name, self.label)
        for stored, index in ref.stores:
            f = self._index.get(stored)
            if f is not None:
                break
        else:
            raise TracingError(f"{self.label}: tensor {ref.stores[0][0]} not found in its weight files; "
                               f"is this a complete {self.arch.model_type} causal LM checkpoint?")
        if f.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(f, framework="pt") as h:  # opened per tensor, closed at once
                if index is not None and not isinstance(index, Transposed) and all(isinstance(x, (int, slice)) for x in index):
                    t = h.get_slice(stored)[index]  # only the role's rows are read
                else:
                    t = select(h.get_tensor(stored), index)
        else:
            t = select(self._load_bin(f)[stored], index)
        if name not in self._finite:
            require_finite(self.label, name, t)
            self._finite.add(name)
        return t.to(dtype)

    def get_rows(self, name, index, dtype=torch.float32):
        """Rows ``index`` of ``name``: from a safetensors file only those rows are read (a role that
        is a block of rows of a fused tensor too); other sources read the tensor and keep the rows."""
        if self.quantized is not None:
            return require_finite(self.label, name, self.quantized.get_rows(name, index, dtype))
        ref = logical_ref(self.arch, name, self.label)
        found = next(((s, i, self._index[s]) for s, i in ref.stores if s in self._index), None)
        from .rows import read_rows, row_offset
        offset = None if found is None or found[2].suffix != ".safetensors" else row_offset(found[1])
        if offset is None:
            return super().get_rows(name, index, dtype)
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
        return require_finite(self.label, name, t).to(dtype)

    def release(self):
        self._bin_cache = None

    # tokenizer ---------------------------------------------------------------------------
    def has_tokenizer(self) -> bool:
        return self._folder_tokenizer() or (self.quantized is not None and self.quantized.has_tokenizer())

    def _folder_tokenizer(self) -> bool:
        return self.path.is_dir() and any((self.path / f).exists()
                                          for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))

    def tokenizer(self):
        if not self.has_tokenizer():
            return None
        if not self._folder_tokenizer():  # only the GGUF metadata has one
            return self.quantized.tokenizer()
        from transformers import AutoTokenizer
        try:
            return AutoTokenizer.from_pretrained(self.path, trust_remote_code=False)
        except Exception as e:
            raise TracingError(f"cannot load the tokenizer of {self.label} ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]})") from None

    # provenance --------------------------------------------------------------------------
    def provenance(self, hash_files: bool = True) -> dict:
        """Exactly which weights these are: id, resolved commit or path, each file's size and SHA-256."""
        files = []
        for f in self.weight_files():
            entry = {"file": f.name, "size": f.stat().st_size}
            sha = self.resolved.hub_sha256.get(f.name) or _sha_from_hub_cache(f)
            if sha:
                entry["sha256"], entry["sha256_source"] = sha, "hub"
            elif hash_files:
                entry["sha256"], entry["sha256_source"] = sha256_file(f), "computed"
            files.append(entry)
        out = {"id": self.resolved.spec, "path": str(self.path), "repo_id": self.resolved.repo_id,
               "revision": self.resolved.revision, "commit": self.resolved.commit, "files": files}
        if self.quantized is not None:
            out["quantization"] = self.quantized.quantization()
        return out


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _corrupt(f: Path, why: str) -> TracingError:
    return TracingError(f"{f} is corrupt or incomplete ({why}); delete it and download the model again")


def _read_weight_map(f: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(f.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _corrupt(f, f"not valid JSON: {type(e).__name__}") from None
    except (KeyError, TypeError):
        raise _corrupt(f, "no weight_map in it") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise _corrupt(f, "its weight_map is not a mapping of tensor names to files")
    return weight_map


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


def _sha_from_hub_cache(f: Path) -> str | None:
    """In the hub cache an LFS file is a link to a blob named by its SHA-256."""
    if f.is_symlink():
        target = Path(os.readlink(f)).name
        if re.fullmatch(r"[0-9a-f]{64}", target):
            return target
    return None


def _hash_cache_file() -> Path:
    return Path(os.environ.get("TRACING_CACHE_DIR", Path.home() / ".cache" / "model-tracing")) / "sha256.json"


def sha256_file(f: Path, chunk: int = 1 << 23) -> str:
    """SHA-256 of a weight file, remembered by (path, size, mtime) so a 140 GB model is hashed once."""
    st = f.stat()
    key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = _hash_cache_file()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    try:  # best effort; a read-only home just means hashing again next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        cache[key] = digest
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return digest


# ------------------------------------------------------------------------------------------
# Loaded modules (for generation and for checks against the streamed path)
# ------------------------------------------------------------------------------------------
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
    if dtype not in table:
        raise TracingError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def config_for(config, arch: Arch):
    """A copy of ``config`` matching ``arch`` (a rotated view is untied)."""
    if arch.wrapper:  # a vision-language wrapper: the language model's config
        from .arch import FAMILIES
        config = getattr(config, FAMILIES[arch.wrapper].text_of)
    cfg = copy.deepcopy(config)
    if not arch.tied and getattr(cfg, "tie_word_embeddings", False):
        cfg.tie_word_embeddings = False
    return cfg


def load_module(source: WeightSource, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.nn.Module:
    """Build a transformers ``nn.Module`` holding ``source``'s weights (transforms applied)."""
    from transformers import AutoModelForCausalLM

    from .arch.modules import materialise_buffers, module_state
    cfg = config_for(source.config, source.arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state = module_state(source.arch, source.names(), lambda n: source.get(n, dtype).to(device), shapes)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if unexpected or missing:
        raise TracingError(f"weights of {source.label} do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if source.arch.tied:
        model.tie_weights()
    materialise_buffers(model, cfg, device)
    return model.to(device).eval()


def load_pretrained(spec: str, dtype="auto", device: str | None = None, trust_remote_code: bool = False):
    """Plain ``from_pretrained`` of a spec (used for generation)."""
    from transformers import AutoModelForCausalLM
    device = device or default_device()
    ck = Checkpoint(spec)
    if ck.quantized is not None:  # dequantized tensor by tensor into a float module
        return ck, load_module(ck, resolve_dtype(dtype, device), device)
    model = AutoModelForCausalLM.from_pretrained(ck.path, dtype=resolve_dtype(dtype, device),
                                                 trust_remote_code=trust_remote_code)
    return ck, model.to(device).eval()

