"""Open a model: hub id (``id`` or ``id@revision``), ``demo:<name>``, a local folder, or a GGUF file
(ids, including a ``:<file>.gguf`` suffix, are parsed and resolved by :mod:`tracing.specs`).

A :class:`Checkpoint` gives the config, the tokenizer, and **lazy per-tensor access**: one
tensor is read at a time by the backend of the model's weight format (:mod:`tracing.sources`:
safetensors or ``pytorch_model*.bin`` folders, GGUF files, GPTQ / AWQ folders, quantized ones
dequantized to float32); the model is never materialised for weight-only work.
Every weight source (a checkpoint, an in-memory state dict, or a transformed view of either,
see :mod:`tracing.transforms`) has the same small interface: ``arch``, ``config``, ``get(name)``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import time
from pathlib import Path
import torch

from .arch import LM_HEAD, Arch, TensorRef, arch_from_config
from .arch.layout import select
from .errors import TracingError
from .machine import default_device  # noqa: F401 - re-exported (generation, pair)

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
    """``t`` itself, or a one-line TracingError naming the model and tensor if it holds NaN or inf.

    Sources check a tensor read whole once, and rows read alone on their own (only those rows, and not
    at all once the whole tensor has been checked): a sampled test reads only its rows, so a NaN or inf
    elsewhere in the tensor is not seen by it (nor does it change its result); a test that reads the
    tensor whole reports it."""
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
        self._finite: set[str] = set()  # tensors already checked for NaN / inf

    def _stored(self, name) -> torch.Tensor:
        ref = logical_ref(self.arch, name, self.label)
        for stored, index in ref.stores:
            if stored in self.state:
                return select(self.state[stored], index)
        raise TracingError(f"tensor {name} is missing from {self.label}")

    def get(self, name, dtype=torch.float32):
        t = self._stored(name)
        if name not in self._finite:
            require_finite(self.label, name, t)
            self._finite.add(name)
        return t.to(dtype)

    def get_rows(self, name, index, dtype=torch.float32):
        t = self._stored(name)[torch.as_tensor(index, dtype=torch.long)]
        return (t if name in self._finite else require_finite(self.label, name, t)).to(dtype)


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
    """A model on disk: config, tokenizer and lazily read tensors, whatever its weight format (the
    format's backend, :func:`tracing.sources.open_backend`, reads them)."""

    def __init__(self, spec: str | os.PathLike, resolved: Resolved | None = None, remote: bool = False,
                 digest: str = "full"):
        """``remote``: a hub model not in the local cache is read by range requests (only what the
        statistics ask for) rather than downloaded (:func:`tracing.specs.resolve`). ``digest``: how
        :meth:`provenance` identifies local weight files, ``"full"`` (SHA-256) or ``"fast"`` (size,
        modification time and a digest of the header: :mod:`tracing.identity`)."""
        from .sources import open_backend
        if digest not in ("full", "fast"):
            raise TracingError(f"--digest must be full or fast, got {digest!r}")
        self.digest = digest
        self.read_s = 0.0  # seconds spent reading tensors (and rows) from the weight files
        self.resolved = resolved or resolve(str(spec), remote=remote)
        self.path = self.resolved.path
        self.label = self.resolved.spec
        self._config = None
        self._finite: set[str] = set()  # tensors already checked for NaN / inf
        self.backend = open_backend(self.resolved)
        self.backend.validate()
        self.arch = self.backend.arch

    @property
    def quantized(self):
        """The backend of a quantized format (None for float weights)."""
        return self.backend if self.backend.quantized else None

    # config ------------------------------------------------------------------------------
    @property
    def config(self):
        if self._config is None:
            self._config = self.backend.config()
        return self._config

    # tensors -----------------------------------------------------------------------------
    def weight_files(self) -> list[Path]:
        return self.backend.weight_files()

    def get(self, name, dtype=torch.float32):
        t0 = time.perf_counter()
        t = self.backend.get(name, dtype)
        self.read_s += time.perf_counter() - t0
        if name not in self._finite:
            require_finite(self.label, name, t)
            self._finite.add(name)
        return t.to(dtype)

    def get_rows(self, name, index, dtype=torch.float32):
        """Rows ``index`` of ``name`` (from a safetensors file only those rows are read)."""
        return self.get_rows_stored(name, index, dtype).to(dtype)

    def get_rows_stored(self, name, index, dtype=torch.float32):
        """Rows ``index`` of ``name`` in the dtype the backend gives them (a safetensors file's own:
        bfloat16 rows stay bfloat16; a quantized format's are decoded to ``dtype``)."""
        t0 = time.perf_counter()
        t = self.backend.get_rows(name, index, dtype)
        self.read_s += time.perf_counter() - t0
        return t if name in self._finite else require_finite(self.label, name, t)

    def prefetch_rows(self, wants) -> None:
        """Start on the reads of :meth:`get_rows` of each ``(name, index)`` of ``wants``, all at once, when
        the backend reads by range requests (the calls that follow then wait for no round trip)."""
        fetch = getattr(self.backend, "prefetch_rows", None)
        if fetch is not None and wants:
            t0 = time.perf_counter()
            fetch(wants)
            self.read_s += time.perf_counter() - t0

    def release(self):
        self.backend.release()

    # tokenizer ---------------------------------------------------------------------------
    def has_tokenizer(self) -> bool:
        return self._folder_tokenizer() or self.backend.has_tokenizer()

    def _folder_tokenizer(self) -> bool:
        return self.path.is_dir() and any((self.path / f).exists()
                                          for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))

    def tokenizer(self):
        """The folder's tokenizer files first, else the one the weight file carries (GGUF metadata)."""
        if not self._folder_tokenizer():
            return self.backend.tokenizer() if self.backend.has_tokenizer() else None
        from transformers import AutoTokenizer
        try:
            return AutoTokenizer.from_pretrained(self.path, trust_remote_code=False)
        except Exception as e:
            raise TracingError(f"cannot load the tokenizer of {self.label} ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]})") from None

    # provenance --------------------------------------------------------------------------
    def provenance(self, hash_files: bool = True, digest: str | None = None) -> dict:
        """Exactly which weights these are: id, resolved commit or path, each file's size and SHA-256
        (with ``digest="fast"`` — this checkpoint's own ``digest`` unless given — local files not in
        the hub cache get the fast identity of :mod:`tracing.identity` instead, and ``identity`` says so)."""
        from .identity import FAST_NOTE, fast_identity
        files = self.backend.file_records() if hasattr(self.backend, "file_records") else []
        fast = False
        for f in [] if files else self.weight_files():
            entry = {"file": f.name, "size": f.stat().st_size}
            sha = self.resolved.hub_sha256.get(f.name) or _sha_from_hub_cache(f)
            ident = None if sha or (digest or self.digest) != "fast" else fast_identity(f)
            if sha:
                entry["sha256"], entry["sha256_source"] = sha, "hub"
            elif ident is not None:
                entry.update(ident)
                fast = True
            elif hash_files:
                entry["sha256"], entry["sha256_source"] = sha256_file(f), "computed"
            files.append(entry)
        out = {"id": self.resolved.spec, "path": str(self.path), "repo_id": self.resolved.repo_id,
               "revision": self.resolved.revision, "commit": self.resolved.commit, "files": files}
        if fast:
            out["identity"] = FAST_NOTE
        quantization = self.backend.quantization()
        if quantization is not None:
            out["quantization"] = quantization
        return out


def stored_rows_reader(src: WeightSource):
    """``src``'s reader of rows ``(name, index) -> tensor`` that keeps the stored dtype when it can
    (a checkpoint's bfloat16 rows without a round trip through float32), else ``src.get_rows``. Asked
    of the source's own class: a row store passes other attributes through to its checkpoint, and
    its rows must come through the store."""
    stored = getattr(type(src), "get_rows_stored", None)
    return stored.__get__(src) if stored is not None else src.get_rows


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
    """SHA-256 of a weight file, remembered by (path, size, modification and status-change times) so
    a 140 GB model is hashed once (a file rewritten and given back its old mtime is hashed again)."""
    st = f.stat()
    key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
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


def config_for(config, arch: Arch, language_model: bool = True):
    """A copy of ``config`` matching ``arch`` (a rotated view is untied). Of a vision-language wrapper:
    its language model's config, or with ``language_model=False`` the whole wrapper's config (a view's
    config, of the same kind as its source's), untied in both when ``arch`` is."""
    cfg = copy.deepcopy(config)
    levels = [cfg]
    if arch.wrapper:
        from .arch import FAMILIES
        levels.append(getattr(cfg, FAMILIES[arch.wrapper].text_of))
    if not arch.tied:
        for c in levels:
            if getattr(c, "tie_word_embeddings", False):
                c.tie_word_embeddings = False
    return levels[-1] if language_model else cfg


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
    if not ck.backend.native:  # e.g. quantized: dequantized tensor by tensor into a float module
        return ck, load_module(ck, resolve_dtype(dtype, device), device)
    model = AutoModelForCausalLM.from_pretrained(ck.path, dtype=resolve_dtype(dtype, device),
                                                 trust_remote_code=trust_remote_code)
    return ck, model.to(device).eval()

