"""The shape of a model from its weight format's backend, read without touching the network."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import TracingError


class ConfigUnavailable(TracingError):
    """A model's config.json is not on this machine (a hub model not yet downloaded)."""

    def __init__(self, message: str, spec: str):
        super().__init__(message)
        self.spec = spec


@dataclass(frozen=True)
class ModelInfo:
    spec: str
    arch: object  # tracing.arch.Arch
    bytes_per_param: int  # as stored on disk (for read time)
    source: str  # "local" | "hub cache" | "demo"
    max_positions: int | None = None  # context length (max_position_embeddings), when the config says
    weights_cached: bool = True  # False: a hub model whose config is cached but not its weights

    @property
    def params(self) -> int:
        return self.arch.num_params()


def _demo_info(spec) -> ModelInfo | None:
    """A demo model before the demo family is built: its fixed recipe (None once built)."""
    from .. import demo
    from ..arch import arch_from_config

    if demo.is_built(demo.default_root()):
        return None
    cfg = {"model_type": "llama", "vocab_size": demo.VOCAB_SIZE, **demo.MODEL_CONFIG, "torch_dtype": "float32"}
    return ModelInfo(spec.text, arch_from_config(cfg), 4, "demo")


def _not_cached(spec) -> ConfigUnavailable:
    file = spec.file or "config.json"
    rev = f" --revision {spec.revision}" if spec.revision else ""
    return ConfigUnavailable(
        f"the config of {spec.text} is not in the local Hugging Face cache; download it with "
        f"`hf download {spec.repo_id} {file}{rev}` (set HF_TOKEN first for gated models), or run "
        f"without --dry-run to fetch the model", spec.text)


def _cached_config(snapshot, file: str | None) -> bool:
    """Does a hub cache snapshot hold what the config is read from (the GGUF file named, or
    config.json, or a GGUF file)?"""
    if file is not None:
        return (snapshot / file).is_file()
    return (snapshot / "config.json").is_file() or any(snapshot.glob("*.gguf"))


def _cached_config_only(spec):
    """The cached config.json of a hub model whose weights are not cached (a model read by range
    requests), as a resolved folder holding it; else :class:`ConfigUnavailable`."""
    from huggingface_hub import try_to_load_from_cache

    from ..specs import Resolved
    if spec.file is None:
        f = try_to_load_from_cache(spec.repo_id, "config.json", revision=spec.revision)
        if isinstance(f, str):
            return Resolved(spec=spec.text, path=Path(f).parent, repo_id=spec.repo_id, revision=spec.revision)
    raise _not_cached(spec)


def model_info(spec: str) -> ModelInfo:
    """Shape and stored precision of a model, read without touching the network through its weight
    format's backend (:func:`tracing.sources.open_backend`): a local folder or GGUF file, the
    Hugging Face cache, or the demo family (its fixed recipe when not built yet). Raises
    :class:`TracingError`, or :class:`ConfigUnavailable` for a hub model not in the cache."""
    from ..sources import open_backend
    from ..specs import parse_spec, resolve

    s = parse_spec(str(spec))
    if s.kind == "demo" and (info := _demo_info(s)) is not None:
        return info
    try:
        resolved = resolve(s.text, local_files_only=True)
    except TracingError:
        if s.kind != "hub":
            raise
        resolved = _cached_config_only(s)  # fetched for range reads: config files, no weights
    if s.kind == "hub" and not _cached_config(resolved.path, s.file):
        raise _not_cached(s)
    backend = open_backend(resolved)  # a corrupt cached file is an error, not a missing one
    source = {"hub": "hub cache", "demo": "demo"}.get(s.kind, "local")
    ctx = getattr(backend.config(), "max_position_embeddings", None)
    return ModelInfo(s.text, backend.arch, backend.bytes_per_param(), source, int(ctx) if ctx else None,
                     weights_cached=s.kind != "hub" or _weights_cached(resolved.path, s.file, backend.arch))


def _weights_cached(folder: Path, file: str | None, arch) -> bool:
    """Does a hub cache snapshot hold the model's weights (every file its index lists that holds a
    tensor ``arch`` reads)?"""
    import json

    from ..sources.folder import weights_read
    if file is not None:
        return (folder / file).is_file()
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = weights_read(arch, json.loads(index.read_text())["weight_map"])
            return all((folder / f).is_file() for f in set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.gguf")) or any(folder.glob("pytorch_model*.bin"))


def reference_info() -> ModelInfo:
    """A Llama-2-7B-shaped model, assumed when a config is not on this machine."""
    from ..arch import arch_from_config

    cfg = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "vocab_size": 32000, "num_attention_heads": 32, "num_key_value_heads": 32, "tie_word_embeddings": False}
    return ModelInfo("<assumed 7B>", arch_from_config(cfg), 2, "assumed")
