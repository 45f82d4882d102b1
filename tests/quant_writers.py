"""Writers of quantized checkpoints for the tests and benchmarks, from a Hugging Face folder.

- :func:`write_gguf` lays a Llama model out as llama.cpp's ``convert_hf_to_gguf.py`` does (tensor
  names, rotary permutation of Q and K rows, metadata including a gpt2-style BPE tokenizer),
  quantized with ``gguf.quants.quantize``.
- :func:`write_gptq` / :func:`write_awq` pack the linear layers into int4 with group size 32 in the
  formats' own layouts (AutoGPTQ's ``qweight``/``qzeros``/``scales``/``g_idx``; AutoAWQ's GEMM
  packing with its column order), AWQ after migrating per-channel scales out of the norms.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

GGUF_BLOCK = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def rotary_permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)
    module, _, kind = rest.rpartition(".")
    return f"blk.{i}.{GGUF_BLOCK[module]}.{kind}"


def _add_tokenizer(w, folder: Path) -> None:
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    specials = {t["id"]: t["content"] for t in tok.get("added_tokens", []) if t.get("special")}
    tokens = [None] * (max(vocab.values()) + 1)
    for s, i in vocab.items():
        tokens[i] = s
    for i, s in specials.items():
        tokens[i] = s
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])  # CONTROL / NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_token_merges(merges)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    ids = {s: i for i, s in specials.items()}
    for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                     ("unk_token", w.add_unk_token_id), ("pad_token", w.add_pad_token_id)):
        if cfg.get(key) in ids:
            add(ids[cfg[key]])
    w.add_add_bos_token(True)


def write_gguf(folder, out, qtype: str = "Q8_0", output_qtype: str | None = None,
               with_tokenizer: bool = True, state: dict | None = None, config: dict | None = None) -> Path:
    """``folder`` (config.json + safetensors [+ tokenizer.json]) as a GGUF file of type ``qtype``
    (F32, F16, Q8_0, Q4_0, …); norms stay F32, ``output.weight`` gets ``output_qtype``."""
    import gguf
    from gguf.quants import quantize
    folder, out = Path(folder), Path(out)
    cfg = config or json.loads((folder / "config.json").read_text())
    state = state if state is not None else _state(folder)
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(folder.name)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(int(getattr(gguf.LlamaFileType, "MOSTLY_" + qtype, gguf.LlamaFileType.ALL_F32)))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if with_tokenizer and (folder / "tokenizer.json").is_file():
        _add_tokenizer(w, folder)
    tied = cfg.get("tie_word_embeddings", False)
    for hf, t in state.items():
        if hf == "lm_head.weight" and tied:
            continue
        a = t.float().numpy()
        if hf.endswith(("q_proj.weight", "q_proj.bias")):
            a = rotary_permute(a, n_head, n_head)
        elif hf.endswith(("k_proj.weight", "k_proj.bias")):
            a = rotary_permute(a, n_head, n_kv)
        name = gguf_name(hf)
        kind = (output_qtype or qtype) if name == "output.weight" else qtype
        if a.ndim == 1 or kind == "F32":
            w.add_tensor(name, a.astype(np.float32))
        elif kind == "F16":
            w.add_tensor(name, a.astype(np.float16))
        else:
            q = gguf.GGMLQuantizationType[kind]
            w.add_tensor(name, quantize(a, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
