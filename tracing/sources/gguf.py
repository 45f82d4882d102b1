"""GGUF files (llama.cpp): tensors dequantized one at a time with the ``gguf`` package.

llama.cpp's converter names tensors ``token_embd``, ``blk.{i}.attn_q`` … and, for the ``llama``
architecture (Llama, Mistral), permutes the rows of Q and K within each head into its rotary
layout; that permutation is undone here so that every tensor equals its Hugging Face counterpart
up to quantization error.  Config and tokenizer come from the folder when it has them, else from
the file's metadata (through transformers' GGUF support).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..arch import LM_HEAD, arch_from_config
from ..errors import TracingError
from . import QuantizedBackend

# GGUF's own per-block tensor names -> roles of the architecture adapter
BLOCK_ROLES = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o",
               "ffn_gate": "gate", "ffn_up": "up", "ffn_down": "down",
               "attn_norm": "in_norm", "ffn_norm": "post_norm"}
#: GGUF's global tensor names -> roles outside the blocks
GLOBAL_ROLES = {"token_embd.weight": "embed", "output_norm.weight": "final_norm", "output.weight": "lm_head"}
#: GGUF architectures whose converter applies the rotary row permutation to Q and K
PERMUTED_ARCHS = {"llama"}
SUPPORTED_ARCHS = {"llama", "mistral", "qwen2"}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
CHUNK_ELEMENTS = 1 << 24  # larger tensors are dequantized in row chunks (bounded temporary memory)
BAR_ELEMENTS = 1 << 26  # and the largest (embeddings, heads) show a progress bar on a terminal


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def open_reader(file: Path):
    from gguf import GGUFReader
    try:
        reader = GGUFReader(file)
    except Exception as e:  # bad magic, truncated header, ...
        raise TracingError(f"{file} is not a readable GGUF file ({type(e).__name__}: {str(e)[:160]}); "
                           f"it may be truncated or corrupt — re-download it") from None
    size = file.stat().st_size
    for t in reader.tensors:
        if t.data_offset + int(t.n_bytes) > size or t.data.size * t.data.itemsize < int(t.n_bytes):
            raise TracingError(f"{file} is truncated: tensor {t.name} ends past the end of the file "
                               f"({size} bytes); re-download it")
    return reader


def config_from_metadata(reader, file: Path):
    """A transformers config from the file's metadata (transformers' own GGUF key mapping; the
    tokenizer arrays are only counted, not parsed, which keeps opening a large-vocabulary file fast)."""
    from transformers import AutoConfig
    from transformers.integrations import GGUF_CONFIG_MAPPING
    arch = str(_field(reader, "general.architecture", ""))
    if arch not in SUPPORTED_ARCHS:
        raise TracingError(f"{file}: GGUF architecture {arch!r} is not supported; model-tracing reads "
                           f"{', '.join(sorted(SUPPORTED_ARCHS))} (Llama-family) GGUF files")
    name = str(_field(reader, "general.name", "") or "")
    model_type = "mistral" if arch == "llama" and "mistral" in name.lower() else arch
    kw = {}
    for key, hf in GGUF_CONFIG_MAPPING[arch].items():
        value = _field(reader, f"{arch}.{key}")
        if hf not in (None, -1) and value is not None:
            kw[hf] = value
    if "vocab_size" not in kw and "tokenizer.ggml.tokens" in reader.fields:
        kw["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    for which, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        value = _field(reader, f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            kw[f"{which}_token_id"] = int(value)
    kw["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    return AutoConfig.for_model(model_type, **kw)


def unpermute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row interleaving of Q or K (weights or biases)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


class GGUFBackend(QuantizedBackend):
    format = "gguf"

    def __init__(self, file: Path, label: str, folder: Path | None = None):
        self.file, self.label, self.folder = Path(file), label, folder
        self.reader = open_reader(self.file)
        self.gguf_arch = str(_field(self.reader, "general.architecture", "?"))
        self._config = None
        self.arch = arch_from_config(self.config(), where=str(self.file))
        self._tensors = self._map_tensors()
        self._check_types()

    # config --------------------------------------------------------------------------------
    def _folder_has_config(self) -> bool:
        return self.folder is not None and (self.folder / "config.json").is_file()

    def config(self):
        if self._config is None:
            from transformers import AutoConfig
            try:
                if self._folder_has_config():
                    cfg = AutoConfig.from_pretrained(self.folder, trust_remote_code=False)
                else:
                    cfg = config_from_metadata(self.reader, self.file)
            except TracingError:
                raise
            except Exception as e:
                raise TracingError(f"{self.file}: cannot build a model config from its metadata "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); only Llama-family "
                                   f"GGUF files (general.architecture llama, mistral, qwen2) are supported") from None
            self._config = cfg
        return self._config

    # tensors -------------------------------------------------------------------------------
    def _map_tensors(self) -> dict:
        out = {}
        a = self.arch
        global_names = {"embed": a.embed, "final_norm": a.final_norm, "lm_head": LM_HEAD}
        for t in self.reader.tensors:
            if t.name in GLOBAL_ROLES:
                out[global_names[GLOBAL_ROLES[t.name]]] = t
                continue
            m = _BLOCK_RE.fullmatch(t.name)
            if m and m.group(2) in BLOCK_ROLES:
                role = BLOCK_ROLES[m.group(2)] + ("_bias" if m.group(3) == "bias" else "")
                i = int(m.group(1))
                if i < self.arch.L:
                    out[self.arch.block_name(i, role)] = t
        missing = [n for n in self.arch.names() if n not in out]
        if missing:
            raise TracingError(f"{self.file}: tensors for {', '.join(missing[:3])} are missing "
                               f"({len(missing)} in all); is this a complete Llama-family GGUF file?")
        return out

    def _check_types(self) -> None:
        from gguf import GGMLQuantizationType, dequantize
        seen = set()
        for name, t in self._tensors.items():
            if t.tensor_type in seen:
                continue
            seen.add(t.tensor_type)
            try:
                dequantize(np.asarray(t.data[:1]), t.tensor_type)
            except Exception:
                kind = GGMLQuantizationType(t.tensor_type).name
                raise TracingError(f"{self.file}: tensor {t.name} uses quantization type {kind}, which the "
                                   f"installed gguf package cannot dequantize; upgrade it (pip install -U gguf) "
                                   f"or use another quantization of this model") from None

    def has(self, name):
        return name in self._tensors or (name == LM_HEAD and self.arch.tied)

    def tensor_types(self):
        from gguf import GGMLQuantizationType
        return {t.name: GGMLQuantizationType(t.tensor_type).name for t in self.reader.tensors}

    def weight_files(self):
        return [self.file]

    def get(self, name, dtype=torch.float32):
        if name == LM_HEAD and name not in self._tensors:
            name = self.arch.embed
        t = self._tensors.get(name)
        if t is None:
            raise TracingError(f"{self.label}: tensor {name} not found in {self.file.name}")
        w = torch.from_numpy(self._dequantize(t))
        role, _ = self.arch.role_of(name)
        if self.gguf_arch in PERMUTED_ARCHS and role in ("q", "k", "q_bias", "k_bias"):
            heads = self.arch.n_heads if role.startswith("q") else self.arch.n_kv_heads
            w = unpermute_rotary(w, heads)
        shape = self.arch.shape(name)
        if tuple(w.shape) != tuple(shape):
            raise TracingError(f"{self.file}: tensor {t.name} has shape {tuple(w.shape)}, but the config "
                               f"expects {tuple(shape)} for {name}")
        return w.to(dtype)

    def _dequantize(self, t) -> np.ndarray:
        from gguf import dequantize
        data = t.data
        rows = data.shape[0] if data.ndim > 1 else 1
        if t.n_elements <= CHUNK_ELEMENTS or rows == 1:
            out = dequantize(np.asarray(data), t.tensor_type)
            return np.array(out, dtype=np.float32, copy=True).reshape(self._shape(t))
        step = max(1, CHUNK_ELEMENTS * rows // int(t.n_elements))
        parts = [dequantize(np.asarray(data[a:a + step]), t.tensor_type).astype(np.float32, copy=False)
                 for a in tqdm(range(0, rows, step), desc=f"dequantize {t.name}", leave=False,
                               disable=None if t.n_elements > BAR_ELEMENTS else True)]
        return np.concatenate(parts).reshape(self._shape(t))

    @staticmethod
    def _shape(t) -> tuple[int, ...]:
        return tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF lists dimensions innermost first

    # tokenizer -----------------------------------------------------------------------------
    def has_tokenizer(self):
        return _field(self.reader, "tokenizer.ggml.model") is not None

    def tokenizer(self):
        from transformers import AutoTokenizer
        try:
            return AutoTokenizer.from_pretrained(self.file.parent, gguf_file=self.file.name, trust_remote_code=False)
        except Exception as e:
            raise TracingError(f"cannot build the tokenizer of {self.label} from {self.file.name} "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
