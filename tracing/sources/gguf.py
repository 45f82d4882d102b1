"""GGUF files (llama.cpp): tensors dequantized one at a time with the ``gguf`` package.

Tensor names are mapped with gguf-py's own ``TensorNameMap`` (the table llama.cpp's
``convert_hf_to_gguf.py`` names tensors with: ``token_embd``, ``blk.{i}.attn_q``, ``blk.{i}.attn_qkv``
…), inverted onto the checkpoint names of the architecture adapter, so fused tensors (Phi-3's
``qkv_proj`` and ``gate_up_proj``, GPT-NeoX's ``query_key_value``) are read through the same
per-role views as from safetensors. What the converter changes in values is undone, so that every
tensor equals its Hugging Face counterpart up to quantization error:

- ``llama`` (Llama, Mistral): the rows of Q and K are permuted within each head into llama.cpp's
  rotary layout;
- ``gemma``, ``gemma2``, ``gemma3``: every norm gain is stored as 1 + w;
- ``gptneox``: ``query_key_value`` is regrouped from per-head (q, k, v) to all q, all k, all v;
- mixtures of experts (``llama`` with experts for Mixtral, ``qwen2moe``, ``qwen3moe``, ``deepseek2``,
  ``olmoe``, ``glm4moe``, ``minimax-m2``, ``ernie4_5-moe``):
  each block's experts are stacked in one tensor per projection (``ffn_gate_exps``, ``ffn_up_exps``,
  ``ffn_down_exps``), read once and handed out expert by expert; a router's correction bias
  (``e_score_correction_bias``) is ``exp_probs_b.bias``;
- ``gpt-oss``: the experts' fused, transposed ``gate_up_proj`` (gate and up interleaved) and
  ``down_proj`` are written as ``ffn_gate_exps``, ``ffn_up_exps``, ``ffn_down_exps`` [E, out, in] with
  their biases; each expert's role is read from them; the attention sinks are ``attn_sinks.weight``;
- ``llama4``: the same for Llama 4's stacked experts (gate and up in halves); Q and K rows are not
  permuted for this architecture;
- ``gemma4``: names only (norm gains are stored as they are, x̂·w): ``layer_scalar`` and the stacked
  experts get ``.weight``, the router's gain is ``ffn_gate_inp.scale`` and its per-expert scale
  ``ffn_down_exps.scale``;
- ``deepseek2`` (DeepSeek-V3, Kimi K2): multi-head latent attention's ``kv_b_proj`` is split per head
  into ``attn_k_b`` (the key rows, transposed) and ``attn_v_b``; both are read and put back together;
- ``deepseek32`` (DeepSeek-V3.2): the same, and the attention indexer's tensors renamed only
  (``indexer.attn_q_b``, ``indexer.attn_k``, ``indexer.k_norm`` with its bias, ``indexer.proj``; named
  with the table of ``glm-dsa``, which lists the same tensors, when the installed gguf-py has no
  ``deepseek32``); the multi-token-prediction blocks the converter appends are not read;
- ``qwen3next``, ``qwen35``, ``qwen35moe`` (Qwen3-Next, Qwen3.5, Qwen3.5-MoE: Gated DeltaNet linear
  attention): ``A_log`` is stored as ``ssm_a`` = −exp(A_log) (read back as log(−ssm_a)), ``dt_bias`` as
  ``ssm_dt.bias``, ``conv1d`` [C, 1, K] squeezed to [C, K], every norm gain but the linear attention's
  gated ``norm`` (``ssm_norm``) as 1 + w; Qwen3-Next's ``in_proj_qkvz`` (q, k, v, z grouped per key head)
  is split into ``attn_qkv`` (all q, all k, all v) and ``attn_gate`` (all z), both read and regrouped,
  its ``in_proj_ba`` is ``ssm_ba`` as it is; Qwen3.5's value heads are reordered from grouped by key
  head to tiled (the v rows of ``in_proj_qkv`` and ``conv1d``, the rows of ``in_proj_z``, ``in_proj_a``,
  ``in_proj_b``, ``A_log``, ``dt_bias``, the columns of ``out_proj``) and put back; the shared
  expert's gate is ``ffn_gate_inp_shexp`` (a vector); the full-attention blocks' gated ``q_proj`` is
  stored as it is; the multi-token-prediction blocks are not read.

Each rule is a row of :data:`CHANGES` (architectures, checkpoint names, change); a tensor split in two
is declared in :data:`SPLITS`, a renamed parameter in :data:`RENAMES`. On opening, every GGUF tensor's
size is checked against the config (a damaged file or another model's config is a one-line error).

Config and tokenizer come from the folder when it has them (``./folder:file.gguf``), else from the
file's metadata (the architectures of :data:`METADATA_ARCHS`), read as data with transformers' own key
mapping (:data:`METADATA_KEYS`, checked against transformers' table by the tests), so that a weight-only
statistic on a GGUF file imports no transformers; transformers' config object is built only for a
forward pass.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..arch import arch_from_config
from ..errors import TracingError
from . import QuantizedBackend
from .base import read_config_json

#: the GGUF architecture llama.cpp writes for each model_type the adapter knows
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
             "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3", "olmo2": "olmo2", "gpt_neox": "gptneox",
             "mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "deepseek_v3": "deepseek2",
             "olmoe": "olmoe", "glm4_moe": "glm4moe", "minimax_m2": "minimax-m2", "ernie4_5_moe": "ernie4_5-moe",
             "gpt_oss": "gpt-oss", "llama4_text": "llama4", "gemma4_text": "gemma4", "qwen3_next": "qwen3next",
             "qwen3_5_text": "qwen35", "qwen3_5_moe_text": "qwen35moe", "deepseek_v32": "deepseek32"}
#: GGUF architectures whose config is built from the metadata -> model_type (``llama`` with experts: mixtral)
METADATA_ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3": "gemma3_text",
                  "phi3": "phi3", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}
#: metadata keys llama.cpp's converter writes that transformers' mapping does not read for every architecture
EXTRA_KEYS = (("attention.key_length", "head_dim"), ("attn_logit_softcapping", "attn_logit_softcapping"),
              ("final_logit_softcapping", "final_logit_softcapping"),
              ("expert_feed_forward_length", "moe_intermediate_size"),
              ("expert_shared_feed_forward_length", "shared_expert_intermediate_size"))
#: experts stacked per block: checkpoint name of one expert -> (the merged name llama.cpp maps, expert)
_EXPERT = re.compile(r"(?P<pre>.*\.experts)\.(?P<e>\d+)\.(?P<w>\w+)\.weight")
#: GGUF architectures whose converter applies the rotary row permutation to Q and K
PERMUTED_ARCHS = {"llama"}
#: GGUF architectures whose converter stores norm gains as 1 + w
SHIFTED_NORM_ARCHS = {"gemma", "gemma2", "gemma3"}
#: GGUF architectures whose converter splits MLA's kv_b_proj into attn_k_b (transposed) and attn_v_b
SPLIT_KV_B_ARCHS = {"deepseek2", "deepseek32"}
#: GGUF architectures of Gated DeltaNet models: the converter stores ``A_log`` as ``ssm_a`` = −exp(A_log),
#: ``dt_bias`` as ``ssm_dt.bias``, ``conv1d`` [C, 1, K] squeezed to [C, K], and every norm gain but the
#: linear attention's gated norm as 1 + w
DELTANET_ARCHS = {"qwen3next", "qwen35", "qwen35moe"}
#: GGUF architectures whose converter splits Qwen3-Next's ``in_proj_qkvz`` (q, k, v, z grouped per key head)
#: into ``attn_qkv`` (all q, all k, all v) and ``attn_gate`` (all z)
SPLIT_QKVZ_ARCHS = {"qwen3next"}
#: GGUF architectures whose converter reorders the linear attention's value heads from grouped by key head
#: to tiled (when there are more value than key heads): the v rows of ``in_proj_qkv`` and of ``conv1d``,
#: the rows of ``in_proj_z``, ``in_proj_a``, ``in_proj_b``, ``A_log`` and ``dt_bias``, the columns of ``out_proj``
TILED_V_ARCHS = {"qwen35", "qwen35moe"}
#: tensors the converter splits in two: GGUF architecture -> {checkpoint name tail: (the name the first part
#: is looked up as, (GGUF name tail of the first part, of the second beside it))}
SPLITS = {**{a: {"kv_b_proj.weight": ("k_b_proj", ("attn_k_b", "attn_v_b"))} for a in SPLIT_KV_B_ARCHS},
          **{a: {"in_proj_qkvz.weight": ("in_proj_qkv", ("attn_qkv", "attn_gate"))} for a in SPLIT_QKVZ_ARCHS}}
#: parameters the converter renames: GGUF architecture -> {checkpoint name tail: (renamed, suffix)}
RENAMES = {a: {"linear_attn.dt_bias": ("linear_attn.dt_proj", "bias")} for a in DELTANET_ARCHS}
#: GGUF architectures the installed gguf package may not name yet -> one with the same tensor names
#: (DeepSeek-V3.2's ``deepseek32``: DeepSeek-V3's tensors and the attention indexer's, as GLM-5's ``glm-dsa``)
NAME_TABLE_OF = {"deepseek32": "glm-dsa"}
#: GGUF architectures whose converter appends .weight to every parameter without a suffix
WEIGHT_SUFFIXED_ARCHS = {"gemma4"}
#: per-tensor scales the converter stores beside another tensor: checkpoint name tail -> (tensor, suffix)
SCALE_RENAMES = {"gemma4": {"router.scale": ("router.proj", "scale"),
                            "router.per_expert_scale": ("experts.down_proj", "scale")}}
#: GGUF architectures whose converter splits fused, transposed experts (``gate_up_proj`` [E, d, 2h]:
#: gpt-oss's gate and up interleaved, Llama 4's in halves) into one stacked tensor per projection, as [E, out, in]
SPLIT_EXPERT_ARCHS = {"gpt-oss", "llama4"}
#: what the converter changed in a stored tensor's rows or values, undone on read: (GGUF architectures,
#: checkpoint name pattern, change); every rule that matches applies, in this order
CHANGES = ((PERMUTED_ARCHS, r".*q_proj\.(weight|bias)", "rotary_q"),
           (PERMUTED_ARCHS, r".*k_proj\.(weight|bias)", "rotary_k"),
           (SHIFTED_NORM_ARCHS | DELTANET_ARCHS, r".*(?<!linear_attn\.)norm\.weight", "one_plus_w"),
           ({"gptneox"}, r".*\.query_key_value\.(weight|bias)", "neox_qkv"),
           (SPLIT_KV_B_ARCHS, r".*kv_b_proj\.weight", "kv_b"),
           (SPLIT_QKVZ_ARCHS, r".*linear_attn\.in_proj_qkvz\.weight", "qkvz"),
           (DELTANET_ARCHS, r".*linear_attn\.A_log", "minus_exp"),
           (TILED_V_ARCHS, r".*linear_attn\.(in_proj_qkv|conv1d)\.weight", "tiled_v_after_qk"),
           (TILED_V_ARCHS, r".*linear_attn\.in_proj_z\.weight", "tiled_v"),
           (TILED_V_ARCHS, r".*linear_attn\.(in_proj_[ab]\.weight|A_log|dt_bias)", "tiled_v_heads"),
           (TILED_V_ARCHS, r".*linear_attn\.out_proj\.weight", "tiled_v_columns"))
#: the changes that rewrite values (the others only move rows or columns)
VALUE_CHANGES = {"one_plus_w", "minus_exp"}
_SPLIT_EXPERT = re.compile(r"(?P<pre>.*\.experts)\.\w+#expert_(?P<w>gate|up|down)(?P<bias>_bias)?\.(?P<e>\d+)")
CHUNK_ELEMENTS = 1 << 24  # larger tensors are dequantized in row chunks (bounded temporary memory)
BAR_ELEMENTS = 1 << 26  # and the largest (embeddings, heads) show a progress bar on a terminal


def supported() -> str:
    return ", ".join(sorted(set(GGUF_ARCH.values())))


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def open_reader(file: Path):
    """The file's metadata and tensor table (:mod:`tracing.sources.ggufheader`: parsed once per file
    per process, the tokenizer's arrays only when asked for), checked against the file's size."""
    from .ggufheader import header_of
    try:
        reader = header_of(file)
    except TracingError:
        raise
    except Exception as e:  # bad magic, truncated header, ...
        raise TracingError(f"{file} is not a readable GGUF file ({type(e).__name__}: {str(e)[:160]}); "
                           f"it may be truncated or corrupt — re-download it") from None
    size = file.stat().st_size
    for t in reader.tensors:
        if t.data_offset + int(t.n_bytes) > size:
            raise TracingError(f"{file} is truncated: tensor {t.name} ends past the end of the file "
                               f"({size} bytes); re-download it")
    return reader


#: metadata keys (after ``{arch}.``) -> config keys, as transformers' GGUF loader maps them
#: (``transformers.integrations.GGUF_CONFIG_MAPPING``; a test checks this table against it), kept here
#: so that opening a GGUF file does not import transformers
METADATA_KEYS = {"context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
                 "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
                 "rope.dimension_count": None, "rope.freq_base": "rope_theta",
                 "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
                 "attention.layer_norm_rms_epsilon": "rms_norm_eps", "vocab_size": "vocab_size"}
#: what differs from :data:`METADATA_KEYS` per config family (transformers' table's own differences)
METADATA_KEYS_OF = {
    "llama": {"rope.dimension_count": "head_dim"},
    "gemma2": {"attention.key_length": "head_dim", "attention.sliding_window": "sliding_window"},
    "gemma3": {"attention.key_length": "head_dim", "attention.sliding_window": "sliding_window"},
    "qwen2_moe": {"expert_count": "num_experts", "expert_used_count": "num_experts_per_tok"},
    "qwen3_moe": {"attention.key_length": "head_dim", "expert_count": "num_experts",
                  "expert_used_count": "num_experts_per_tok"},
}


def metadata_keys(family: str) -> dict[str, str | None]:
    """The metadata key table of one config family (a GGUF architecture, or ``qwen2_moe``/``qwen3_moe``)."""
    return {**METADATA_KEYS, **METADATA_KEYS_OF.get(family, {})}


def metadata_config(reader, file: Path) -> dict:
    """The model's config as data (a config.json-like dict) from the file's metadata, without
    importing transformers; the tokenizer arrays are only counted, not parsed, which keeps opening a
    large-vocabulary file fast. :func:`config_from_metadata` turns it into transformers' config."""
    arch = str(_field(reader, "general.architecture", ""))
    if arch not in set(GGUF_ARCH.values()):
        raise TracingError(f"{file}: GGUF architecture {arch!r} is not supported; model-tracing reads GGUF files "
                           f"of the architectures {supported()}")
    if arch not in METADATA_ARCHS:
        raise TracingError(f"{file}: the config of a GGUF {arch!r} model cannot be built from its metadata; put "
                           f"the model's config.json in a folder beside the file and give ./folder:{file.name}")
    name = str(_field(reader, "general.name", "") or "")
    model_type = METADATA_ARCHS[arch]
    if arch == "llama" and _field(reader, "llama.expert_count"):
        model_type = "mixtral"
    elif arch == "llama" and "mistral" in name.lower():
        model_type = "mistral"
    kw = {}
    for key, hf in metadata_keys(model_type if model_type.endswith("_moe") else arch).items():
        value = _field(reader, f"{arch}.{key}")
        if hf not in (None, -1) and value is not None:
            kw[hf] = value
    extra = EXTRA_KEYS + ((("expert_count", "num_local_experts"), ("expert_used_count", "num_experts_per_tok"))
                          if model_type == "mixtral" else ())
    for key, hf in extra:
        value = _field(reader, f"{arch}.{key}")
        if value is not None and hf not in kw:
            kw[hf] = value
    if arch in SHIFTED_NORM_ARCHS and "head_dim" in kw:
        kw["query_pre_attn_scalar"] = kw["head_dim"]  # llama.cpp scales queries by 1/sqrt(head_dim)
    if "vocab_size" not in kw and "tokenizer.ggml.tokens" in reader.fields:
        kw["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    for which, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        value = _field(reader, f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            kw[f"{which}_token_id"] = int(value)
    kw["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    return {"model_type": model_type, **kw}


def config_from_metadata(reader, file: Path):
    """A transformers config from the file's metadata (:func:`metadata_config`)."""
    from transformers import AutoConfig
    kw = dict(metadata_config(reader, file))
    return AutoConfig.for_model(kw.pop("model_type"), **kw)


def unpermute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row interleaving of Q or K (weights or biases)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def regroup_neox_qkv(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's regrouping of GPT-NeoX's ``query_key_value`` rows (all q, all k, all v back
    to per head q, k, v; weights or biases)."""
    return w.reshape(3, n_head, w.shape[0] // 3 // n_head, *w.shape[1:]).transpose(0, 1).reshape(w.shape)


def untile_value_heads(w: torch.Tensor, dim: int, n_key: int, per_key: int, head_dim: int) -> torch.Tensor:
    """Undo the converter's reordering of linear attention value heads along ``dim`` (tiled: value head j
    of every key head, for j = 0, 1, …; back to grouped: the value heads of key head 0, of key head 1, …)."""
    shape = list(w.shape)
    w = w.reshape(*shape[:dim], per_key, n_key, head_dim, *shape[dim + 1:])
    return w.transpose(dim, dim + 1).reshape(shape)


def join_qkvz(qkv: torch.Tensor, z: torch.Tensor, n_key: int, key_dim: int) -> torch.Tensor:
    """Qwen3-Next's ``in_proj_qkvz`` (q, k, v, z grouped per key head) from the converter's ``attn_qkv``
    (all q, all k, all v) and ``attn_gate`` (all z)."""
    d, qk = qkv.shape[-1], n_key * key_dim
    q, k, v = qkv.split([qk, qk, qkv.shape[0] - 2 * qk])
    parts = [t.reshape(n_key, -1, d) for t in (q, k, v, z)]
    return torch.cat(parts, dim=1).reshape(-1, d)


def _stored_base(gguf_arch: str, stored: str) -> tuple[str, str, int | None]:
    """``(name the table maps, suffix, expert or None)`` of a stored checkpoint tensor, as the
    converter renames it before looking it up."""
    m = _EXPERT.fullmatch(stored)
    if m:
        return f"{m['pre']}.{m['w']}", "weight", int(m["e"])
    if stored.endswith("e_score_correction_bias"):  # the converter names it ...e_score_correction.bias
        return stored[:-len("_bias")], "bias", None
    for tail, (first, _) in SPLITS.get(gguf_arch, {}).items():  # the first part (the second is read beside it)
        if stored.endswith(tail):
            return stored[:-len(tail)] + first, "weight", None
    for tail, (renamed, suffix) in {**SCALE_RENAMES.get(gguf_arch, {}), **RENAMES.get(gguf_arch, {})}.items():
        if stored.endswith(tail):
            return stored[:-len(tail)] + renamed, suffix, None
    base, _, suffix = stored.rpartition(".")
    if suffix in ("weight", "bias"):
        return base, suffix, None
    # a parameter without a .weight suffix (gpt-oss's sinks, Gemma 4's layer_scalar and stacked experts)
    return stored, "weight" if stored.endswith(".sinks") or gguf_arch in WEIGHT_SUFFIXED_ARCHS else "", None


def name_map(gguf_arch: str, arch) -> dict[str, tuple[str, int | None]]:
    """``{checkpoint tensor name: (GGUF tensor name, expert or None)}`` for every stored tensor of
    ``arch`` (gguf-py's TensorNameMap, the table llama.cpp's converter names tensors with; the experts
    of a block are stacked in one GGUF tensor per projection)."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map
    listed = gguf_arch if gguf_arch in MODEL_ARCH_NAMES.values() else NAME_TABLE_OF.get(gguf_arch, gguf_arch)
    key = next(k for k, v in MODEL_ARCH_NAMES.items() if v == listed)
    table = get_tensor_name_map(key, arch.L)
    out = {}
    for name in arch.names():
        split = _SPLIT_EXPERT.fullmatch(name) if gguf_arch in SPLIT_EXPERT_ARCHS else None
        if split:  # a role of a fused expert tensor is one expert of the converter's per-projection tensor
            g = table.get_name(f"{split['pre']}.{split['w']}_proj")
            if g is not None:
                out[name] = (g + (".bias" if split["bias"] else ".weight"), int(split["e"]))
            continue
        for stored, _ in arch.ref(name).stores[:1]:  # the on-disk layout
            base, suffix, expert = _stored_base(gguf_arch, stored)
            g = table.get_name(base)
            if g is not None:
                out[stored] = (g + (f".{suffix}" if suffix else ""), expert)
    return out


class GGUFBackend(QuantizedBackend):
    format = "gguf"

    def __init__(self, file: Path, label: str, folder: Path | None = None, reader=None):
        """``reader``: the file's header already read (a file on the hub); else the local file's."""
        self.file, self.label, self.folder = Path(file), label, folder
        self.reader = reader if reader is not None else open_reader(self.file)
        self.gguf_arch = str(_field(self.reader, "general.architecture", "?"))
        self._config = None
        self.raw_config = self._config_data()
        self.arch = arch_from_config(self.raw_config, where=str(self.file))
        self._check_arch()
        self._tensors = {t.name: t for t in self.reader.tensors}  # GGUF tensor name -> tensor
        self._stored = self._map_tensors()  # checkpoint tensor name -> (GGUF tensor, expert or None)
        self._last: tuple[str, torch.Tensor] | None = None  # one fused or stacked tensor serves several
        self._check_sizes()
        self._check_types()

    @classmethod
    def claims(cls, resolved) -> bool:
        from . import find_gguf
        return find_gguf(resolved.path, resolved.file, resolved.spec) is not None

    @classmethod
    def open(cls, resolved) -> GGUFBackend:
        from . import find_gguf
        path = resolved.path
        return cls(find_gguf(path, resolved.file, resolved.spec), resolved.spec, folder=path if path.is_dir() else None)

    # config --------------------------------------------------------------------------------
    def _folder_has_config(self) -> bool:
        return self.folder is not None and (self.folder / "config.json").is_file()

    def _config_data(self) -> dict:
        """The config as data: the folder's config.json beside the file, else the file's metadata."""
        if self._folder_has_config():
            return read_config_json(self.folder / "config.json")
        return metadata_config(self.reader, self.file)

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
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); put the model's "
                                   f"config.json beside the file and give ./folder:{self.file.name}") from None
            self._config = cfg
        return self._config

    def _check_arch(self) -> None:
        a = self.arch
        want = GGUF_ARCH.get(a.model_type)
        if want is None:
            raise TracingError(f"{self.file}: GGUF files of {a.model_type} models are not supported (GGUF is read for "
                               f"the architectures {supported()}); use the safetensors checkpoint")
        if want != self.gguf_arch:
            raise TracingError(f"{self.file}: the file's architecture is {self.gguf_arch!r} but its config says "
                               f"{a.model_type!r} (written as {want!r}); give the config.json of this model")

    # tensors -------------------------------------------------------------------------------
    def _map_tensors(self) -> dict:
        out = {stored: (self._tensors[g], e) for stored, (g, e) in name_map(self.gguf_arch, self.arch).items()
               if g in self._tensors}
        missing = [n for n in self.arch.names() if not self.has(n, out)]
        if missing:
            raise TracingError(f"{self.file}: tensors for {', '.join(missing[:3])} are missing "
                               f"({len(missing)} in all); is this a complete {self.arch.model_type} GGUF file?")
        return out

    def _check_sizes(self) -> None:
        """Every GGUF tensor holds as many values as the config gives the checkpoint tensors read from it
        (its parts and experts; with the second part of a tensor the converter split in two): a damaged
        file, or the config of another model, is one line at opening rather than an error or a wrong
        reading later."""
        want, first, seen = {}, {}, set()
        for n in self.arch.names():
            ref, stored, index, t, expert = self._find(n)
            part = (stored, repr(index), expert)  # a role of a fused tensor: a row range or a slice
            if part not in seen:
                seen.add(part)
                want[t.name] = want.get(t.name, 0) + math.prod(ref.shape)
                first.setdefault(t.name, (n, stored))
        for g, count in want.items():
            n, stored = first[g]
            have = sum(int(x.n_elements) for x in self._parts(stored))
            if have != count:
                raise TracingError(f"{self.file}: tensor {g} holds {have} values, but the config gives {n} and "
                                   f"the tensors stored with it {count}; the file is damaged or the config.json is "
                                   f"not this model's")

    def _check_types(self) -> None:
        from gguf import GGMLQuantizationType, dequantize
        seen = set()
        for t, _ in self._stored.values():
            if t.tensor_type in seen:
                continue
            seen.add(t.tensor_type)
            try:
                dequantize(self._probe(t), t.tensor_type)
            except Exception:
                kind = GGMLQuantizationType(t.tensor_type).name
                raise TracingError(f"{self.file}: tensor {t.name} uses quantization type {kind}, which the "
                                   f"installed gguf package cannot dequantize; upgrade it (pip install -U gguf) "
                                   f"or use another quantization of this model") from None

    def _ref(self, name):
        from ..models import logical_ref
        return logical_ref(self.arch, name, self.label)

    def has(self, name, stored: dict | None = None):
        stored = self._stored if stored is None else stored
        try:
            return name in stored or any(s in stored for s, _ in self._ref(name).stores)
        except TracingError:
            return False

    def tensor_types(self):
        from gguf import GGMLQuantizationType
        return {t.name: GGMLQuantizationType(t.tensor_type).name for t in self.reader.tensors}

    def weight_files(self):
        return [self.file]

    def _find(self, name):
        """``(ref, stored name, index, GGUF tensor, expert)`` of a logical tensor."""
        ref = self._ref(name)
        found = (name, None) if name in self._stored else next(((s, i) for s, i in ref.stores if s in self._stored), None)
        if found is None:
            raise TracingError(f"{self.label}: tensor {name} not found in {self.file.name}")
        stored, index = found
        return (ref, stored, index, *self._stored[stored])

    def get(self, name, dtype=torch.float32):
        from ..models import select
        ref, stored, index, t, expert = self._find(name)
        w = self._read(stored, keep=index is not None or expert is not None)
        w = select(w if expert is None else w[expert], index)
        if tuple(w.shape) != tuple(ref.shape) and w.numel() == math.prod(ref.shape):
            w = w.reshape(ref.shape)  # e.g. Qwen2-MoE's shared-expert gate, stored as a vector
        if tuple(w.shape) != tuple(ref.shape):
            raise TracingError(f"{self.file}: tensor {t.name} gives shape {tuple(w.shape)} for {name}, but the "
                               f"config expects {tuple(ref.shape)}")
        return w.to(dtype)

    def get_rows(self, name, index, dtype=torch.float32):
        """Rows alone: a GGUF quantization block never spans two rows, so only the chosen rows are
        read and dequantized (a role's rows of a fused tensor, an expert's of a stacked one). Tensors
        whose rows or values the converter changed (Llama's Q/K, GPT-NeoX's qkv, Gemma's norms) are
        read whole."""
        ref, stored, idx, t, expert = self._find(name)
        offset = self._rows_offset(ref, stored, idx)
        if offset is None or (self._last and self._last[0] == t.name):
            return super().get_rows(name, index, dtype)
        from gguf import dequantize
        rows = np.asarray(index, dtype=np.int64) + offset
        w = dequantize(self._row_data(t, expert, rows), t.tensor_type)
        return torch.from_numpy(np.array(w, dtype=np.float32, copy=True)).reshape(len(rows), ref.shape[1]).to(dtype)

    def _rows_offset(self, ref, stored: str, index) -> int | None:
        """Where a tensor's rows start in its stored tensor when :meth:`get_rows` reads them alone (a 2-D
        tensor, or a row range of a fused one, whose rows the converter left in place); None: read whole."""
        from ..rows import row_offset
        offset = row_offset(index)
        return None if offset is None or self._changes(stored) or len(ref.shape) != 2 else offset

    def _changes(self, stored: str) -> tuple[str, ...]:
        """What llama.cpp's converter changed in a stored tensor (:data:`CHANGES`; empty: nothing)."""
        return tuple(change for archs, pattern, change in CHANGES
                     if self.gguf_arch in archs and re.fullmatch(pattern, stored))

    def _read(self, stored: str, keep: bool = False) -> torch.Tensor:
        """The GGUF tensor holding ``stored``, dequantized, in its Hugging Face layout; a fused or
        stacked one (``keep``) is kept until another is read, as its parts are read one after another."""
        t, _ = self._stored[stored]
        if self._last is not None and self._last[0] == t.name:
            return self._last[1]
        self._last = None
        w = self._undo(stored, torch.from_numpy(self._dequantize(t)))
        if keep:
            self._last = (t.name, w)
        return w

    def _undo(self, stored: str, w: torch.Tensor, values: bool = True, second: torch.Tensor | None = None) -> torch.Tensor:
        """Undo the converter's changes to a stored tensor (:data:`CHANGES`, in order): its rows and columns
        always, its values (1 + w, −exp) when ``values``. ``second``: of a tensor the converter split in two,
        what goes with ``w`` from the second part (default: its dequantized values)."""
        for change in self._changes(stored):
            if values or change not in VALUE_CHANGES:
                w = self._undo_one(change, stored, w, second)
        return w

    def _undo_one(self, change: str, stored: str, w: torch.Tensor, second: torch.Tensor | None = None) -> torch.Tensor:
        a = self.arch
        if change in ("kv_b", "qkvz") and second is None:
            second = self._second_part(stored)
        if change in ("rotary_q", "rotary_k"):
            return unpermute_rotary(w, a.n_heads if change == "rotary_q" else a.n_kv_heads)
        if change == "one_plus_w":
            return w - 1
        if change == "minus_exp":
            return torch.log(-w)
        if change == "neox_qkv":
            return regroup_neox_qkv(w, a.n_heads)
        if change == "kv_b":  # MLA's kv_b_proj [H·(nope + v), r] from attn_k_b [H, r, nope] and attn_v_b [H, v, r]
            return torch.cat([w.transpose(1, 2), second], dim=1).reshape(-1, w.shape[1])
        n_key, key_dim, head_dim = (a.dim(k) for k in ("linear_num_key_heads", "linear_key_head_dim",
                                                       "linear_value_head_dim"))
        if change == "qkvz":
            return join_qkvz(w, second, n_key, key_dim)
        per_key = a.dim("linear_num_value_heads") // n_key
        if change == "tiled_v_after_qk":  # q and k rows (channels) stay, the v rows follow
            qk = 2 * n_key * key_dim
            return torch.cat([w[:qk], untile_value_heads(w[qk:], 0, n_key, per_key, head_dim)])
        if change == "tiled_v_columns":
            return untile_value_heads(w, 1, n_key, per_key, head_dim)
        return untile_value_heads(w, 0, n_key, per_key, head_dim if change == "tiled_v" else 1)

    def _second_part(self, stored: str) -> torch.Tensor:
        """The second GGUF tensor of a checkpoint tensor the converter split in two (:data:`SPLITS`), dequantized."""
        return torch.from_numpy(self._dequantize(self._parts(stored)[1]))

    def _parts(self, stored: str) -> list:
        """The GGUF tensors read for ``stored`` read whole: its own and, of a tensor the converter split in two
        (:data:`SPLITS`), the second part beside it."""
        t, _ = self._stored[stored]
        names = [t.name] + [t.name.replace(a, b) for tail, (_, (a, b)) in SPLITS.get(self.gguf_arch, {}).items()
                            if stored.endswith(tail)]
        absent = [x for x in names if x not in self._tensors]
        if absent:
            raise TracingError(f"{self.file}: {t.name} has no {absent[0]} beside it; is this a complete "
                               f"{self.arch.model_type} GGUF file?")
        return [self._tensors[x] for x in names]

    def stored_types(self, name: str) -> list[str]:
        """The GGML type names of the GGUF tensors ``name`` is read from, each once, in order: one, or two
        for a tensor the converter split in two whose parts were stored in different types."""
        from gguf import GGMLQuantizationType
        _, stored, _, _, _ = self._find(name)
        return list(dict.fromkeys(GGMLQuantizationType(p.tensor_type).name for p in self._parts(stored)))

    def stored_planes(self, name: str, planes, qtype: str | None = None) -> tuple[str, list[torch.Tensor]]:
        """``(GGML type name, arrays)``: ``planes(raw blocks, ggml type) -> [n-element float arrays]``
        computed on the stored tensors of ``name`` (e.g. their codes and per-element scales; both parts of
        a tensor the converter split in two), each put in ``name``'s Hugging Face layout as :meth:`get`
        puts the values (parts joined, rows reordered, the role's part and expert selected). ``qtype``
        (default: the first part's type): only the parts of this type are computed on, the elements of a
        part of another type are NaN."""
        from gguf import GGMLQuantizationType
        from ..models import select
        ref, stored, index, t, expert = self._find(name)
        qtype = qtype or GGMLQuantizationType(t.tensor_type).name
        parts = self._parts(stored)
        computed = [planes(np.asarray(self._data(p)), p.tensor_type)
                    if GGMLQuantizationType(p.tensor_type).name == qtype else None for p in parts]
        out = []
        for k in range(max((len(c) for c in computed if c is not None), default=0)):
            w = [torch.full(self._shape(p), float("nan"), dtype=torch.float64) if c is None else
                 torch.from_numpy(np.ascontiguousarray(c[k], dtype=np.float64).reshape(self._shape(p)))
                 for p, c in zip(parts, computed)]
            w = self._undo(stored, w[0], values=False, second=w[1] if len(w) > 1 else None)
            out.append(select(w if expert is None else w[expert], index).reshape(ref.shape))
        return qtype, out

    def _dequantize(self, t) -> np.ndarray:
        from gguf import dequantize
        data = self._data(t)
        rows = data.shape[0] if data.ndim > 1 else 1
        if t.n_elements <= CHUNK_ELEMENTS or rows == 1:
            out = dequantize(np.asarray(data), t.tensor_type)
            return np.array(out, dtype=np.float32, copy=True).reshape(self._shape(t))
        step = max(1, CHUNK_ELEMENTS * rows // int(t.n_elements))
        parts = [dequantize(np.asarray(data[a:a + step]), t.tensor_type).astype(np.float32, copy=False)
                 for a in tqdm(range(0, rows, step), desc=f"dequantize {t.name}", leave=False,
                               disable=None if t.n_elements > BAR_ELEMENTS else True)]
        return np.concatenate(parts).reshape(self._shape(t))

    # the stored bytes (a file on the hub overrides these three with range reads) --------------------
    def _data(self, t) -> np.ndarray:
        """A tensor's stored data, shaped as gguf-py shapes it (a memory map of the file)."""
        return t.data

    def _row_data(self, t, expert: int | None, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of a 2-D tensor's stored data (of one expert of a stacked one)."""
        data = t.data if expert is None else t.data[expert]
        return np.asarray(data[rows])

    def _probe(self, t) -> np.ndarray:
        """A little of a tensor's stored data, to see whether gguf-py dequantizes its type."""
        return np.asarray(t.data[:1])

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
