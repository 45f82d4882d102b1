"""The shape of a model from its config.json, read without touching the network."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import TracingError
from .model_list import is_hub_id


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

    @property
    def params(self) -> int:
        return self.arch.num_params()


_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8}


def _demo_config(spec: str) -> tuple[dict, str]:
    from .. import demo

    name = demo.recipes._name(spec)
    root = demo.default_root()
    if demo.is_built(root):
        return json.loads((root / name / "config.json").read_text()), "demo"
    return {"model_type": "llama", "vocab_size": demo.VOCAB_SIZE, **demo.MODEL_CONFIG, "torch_dtype": "float32"}, "demo"


def _folder_config(spec: str, p: Path) -> tuple[dict, str]:
    f = p / "config.json"
    if not f.is_file():
        raise TracingError(f"{spec} has no config.json; point to a Hugging Face model folder (config.json + weights)")
    try:
        return json.loads(f.read_text()), "local"
    except json.JSONDecodeError as e:
        raise TracingError(f"{f} is not valid JSON ({e.msg}); re-download or fix the file") from None


def read_config(spec: str) -> tuple[dict, str]:
    """The config.json of a model without touching the network: local folder, the Hugging Face
    cache, or the demo family (its fixed recipe when not built yet)."""
    spec = str(spec)
    if spec.startswith("demo:"):
        return _demo_config(spec)
    p = Path(spec).expanduser()
    if p.is_dir():
        return _folder_config(spec, p)
    if not is_hub_id(spec):
        raise TracingError(f"model folder {spec} does not exist; give an existing local folder, "
                           f"a hub id like org/name[@revision], or demo:<name>")
    from huggingface_hub import hf_hub_download

    repo, _, rev = spec.partition("@")
    try:
        f = hf_hub_download(repo, "config.json", revision=rev or None, local_files_only=True)
    except Exception:
        raise ConfigUnavailable(
            f"the config of {spec} is not in the local Hugging Face cache; download it with "
            f"`hf download {repo} config.json{' --revision ' + rev if rev else ''}` "
            f"(set HF_TOKEN first for gated models), or run without --dry-run to fetch the model", spec) from None
    try:
        return json.loads(Path(f).read_text()), "hub cache"
    except json.JSONDecodeError as e:
        raise TracingError(f"{f} (config of {spec}) is not valid JSON ({e.msg}); delete it and download again") from None


def model_info(spec: str) -> ModelInfo:
    """Shape and stored precision of a model (raises :class:`TracingError`, or
    :class:`ConfigUnavailable` for a hub model not in the cache)."""
    from ..arch import arch_from_config

    cfg, source = read_config(spec)
    arch = arch_from_config(cfg)
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").replace("torch.", "")
    ctx = cfg.get("max_position_embeddings")
    return ModelInfo(spec, arch, _DTYPE_BYTES.get(dtype, 2), source, int(ctx) if ctx else None)


def reference_info() -> ModelInfo:
    """A Llama-2-7B-shaped model, assumed when a config is not on this machine."""
    from ..arch import arch_from_config

    cfg = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "vocab_size": 32000, "num_attention_heads": 32, "num_key_value_heads": 32, "tie_word_embeddings": False}
    return ModelInfo("<assumed 7B>", arch_from_config(cfg), 2, "assumed")
