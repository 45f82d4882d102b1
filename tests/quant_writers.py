"""Writers of quantized checkpoints for the tests and benchmarks, from a Hugging Face folder.

- :func:`write_gguf` lays a model out as llama.cpp's ``convert_hf_to_gguf.py`` does (tensor names
  from gguf-py's TensorNameMap, the converter's value changes: rotary permutation of Llama's Q and K
  rows, Gemma's 1 + w norm gains, GPT-NeoX's regrouped ``query_key_value``; metadata including a
  gpt2-style BPE tokenizer), quantized with ``gguf.quants.quantize``.
- :func:`write_gptq` / :func:`write_awq` pack the linear layers into int4 with group size 32 in the
  formats' own layouts (AutoGPTQ's ``qweight``/``qzeros``/``scales``/``g_idx``; AutoAWQ's GEMM
  packing with its column order), AWQ after migrating per-channel scales out of the norms.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch

#: the GGUF architecture llama.cpp's converter writes for each model_type (dense models)
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
             "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3", "olmo2": "olmo2", "gpt_neox": "gptneox",
             "mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}
EXPERT = re.compile(r"(?P<pre>.*\.experts)\.(?P<e>\d+)\.(?P<w>\w+)\.weight")


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


def gguf_namer(arch: str, n_blocks: int):
    """``hf name -> GGUF name`` with gguf-py's TensorNameMap, as the converter names tensors."""
    import gguf
    key = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    table = gguf.get_tensor_name_map(key, n_blocks)

    def name(hf: str) -> str:
        base, suffix = hf.rsplit(".", 1)
        g = table.get_name(base)
        if g is not None:
            return f"{g}.{suffix}"
        g = table.get_name(hf)  # a parameter without a suffix (A_log: ssm_a)
        if g is None:
            raise KeyError(f"no GGUF name for {hf} in {arch}")
        return g
    return name


def stack_experts(state: dict) -> dict:
    """llama.cpp's converter for mixtures of experts: the experts of a block stacked in one tensor
    per projection, named as the merged ``<prefix>.experts.<w>.weight``; other tensors unchanged."""
    out, groups = {}, {}
    for hf, t in state.items():
        m = EXPERT.fullmatch(hf)
        if m:
            groups.setdefault(f"{m['pre']}.{m['w']}.weight", {})[int(m["e"])] = t
        else:
            out[hf] = t
    for merged, by_e in groups.items():
        out[merged] = torch.stack([by_e[e] for e in sorted(by_e)])
    return out


def neox_qkv_regroup(a: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's GPTNeoXModel.modify_tensors: per-head (q, k, v) rows -> all q, all k, all v."""
    return a.reshape(n_head, 3, a.shape[0] // 3 // n_head, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape)


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
    (F32, F16, Q8_0, Q4_0, …, the K-quants Q2_K..Q6_K through :func:`kquantize`); norms and biases stay F32,
    ``output.weight`` gets ``output_qtype``.
    As llama.cpp's converter: Llama and Mistral are written as the ``llama`` architecture with Q/K
    rows permuted into its rotary layout, Gemma's norm gains as 1 + w, GPT-NeoX's fused
    ``query_key_value`` regrouped (all q, all k, all v); other families as they are."""
    import gguf
    from gguf.quants import quantize
    folder, out = Path(folder), Path(out)
    cfg = config or json.loads((folder / "config.json").read_text())
    state = state if state is not None else _state(folder)
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    out.parent.mkdir(parents=True, exist_ok=True)
    arch = GGUF_ARCH[cfg.get("model_type", "llama")]
    name_of = gguf_namer(arch, cfg["num_hidden_layers"])
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(folder.name)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))))
    if arch == "gptneox":
        w.add_layer_norm_eps(cfg["layer_norm_eps"])
        w.add_rope_dimension_count(int(head_dim * cfg.get("rotary_pct", 1.0)))
    else:
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_rope_dimension_count(head_dim)
    if cfg.get("head_dim"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if cfg.get("sliding_window") and arch in ("gemma2", "gemma3"):
        w.add_sliding_window(cfg["sliding_window"])
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    experts = cfg.get("num_local_experts") or cfg.get("num_experts")
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        if cfg.get("moe_intermediate_size"):
            w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
        if cfg.get("shared_expert_intermediate_size"):
            w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(int(getattr(gguf.LlamaFileType, "MOSTLY_" + qtype, gguf.LlamaFileType.ALL_F32)))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if with_tokenizer and (folder / "tokenizer.json").is_file():
        _add_tokenizer(w, folder)
    tied = cfg.get("tie_word_embeddings", False)
    for hf, t in stack_experts(state).items():
        if hf == "lm_head.weight" and tied:
            continue
        a = t.float().numpy()
        if a.ndim == 2 and a.shape[0] == 1:
            a = a[0]  # the converter squeezes (e.g. Qwen2-MoE's shared-expert gate)
        if arch == "llama" and hf.endswith(("q_proj.weight", "q_proj.bias")):
            a = rotary_permute(a, n_head, n_head)
        elif arch == "llama" and hf.endswith(("k_proj.weight", "k_proj.bias")):
            a = rotary_permute(a, n_head, n_kv)
        elif arch.startswith("gemma") and hf.endswith("norm.weight"):
            a = a + 1
        elif arch == "gptneox" and ".query_key_value." in hf:
            a = neox_qkv_regroup(a, n_head)
        name = name_of(hf)
        kind = (output_qtype or qtype) if name == "output.weight" else qtype
        if a.ndim == 1 or kind == "F32":
            w.add_tensor(name, a.astype(np.float32))
        elif kind == "F16":
            w.add_tensor(name, a.astype(np.float16))
        else:
            q = gguf.GGMLQuantizationType[kind]
            w.add_tensor(name, kquantize(a, kind) if kind in KQUANTS else quantize(a, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


# ------------------------------------------------------------------------------------------
# GPTQ / AWQ
# ------------------------------------------------------------------------------------------
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def quantize_groups(w: torch.Tensor, groups: torch.Tensor, n_groups: int, bits: int = 4):
    """Asymmetric min/max quantization of ``w`` [out, in] with input column i in group ``groups[i]``:
    integers q [out, in], scales and zeros [n_groups, out]."""
    top = (1 << bits) - 1
    w, groups = w.float().numpy(), groups.numpy()
    scales = np.empty((n_groups, w.shape[0]), np.float32)
    zeros = np.empty((n_groups, w.shape[0]), np.int32)
    q = np.empty(w.shape, np.int32)
    for g in range(n_groups):
        cols = np.flatnonzero(groups == g)
        block = w[:, cols]
        lo, hi = np.minimum(block.min(1), 0), np.maximum(block.max(1), 0)
        s = np.maximum((hi - lo) / top, 1e-8).astype(np.float16).astype(np.float32)
        z = np.clip(np.round(-lo / s), 0, top).astype(np.int32)
        q[:, cols] = np.clip(np.round(block / s[:, None]) + z[:, None], 0, top)
        scales[g], zeros[g] = s, z
    return torch.from_numpy(q), torch.from_numpy(scales).half(), torch.from_numpy(zeros)


def pack(v: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack integers in [0, 2^bits) into int32 words along ``dim``, lowest bits first."""
    per = 32 // bits
    v = v.to(torch.int64)
    if dim == 0:
        v = v.reshape(v.shape[0] // per, per, v.shape[1])
        words = sum(v[:, k] << (bits * k) for k in range(per))
    else:
        v = v.reshape(v.shape[0], v.shape[1] // per, per)
        words = sum(v[:, :, k] << (bits * k) for k in range(per))
    words = words & 0xFFFFFFFF
    return torch.where(words >= (1 << 31), words - (1 << 32), words).to(torch.int32)


ROUTERS = ("mlp.gate.weight", "block_sparse_moe.gate.weight", "shared_expert_gate.weight")


def _is_linear(name: str, t: torch.Tensor) -> bool:
    """A block's linear layer (fused ones included; never a norm or a mixture-of-experts router)."""
    return ".layers." in name and name.endswith(".weight") and t.ndim == 2 and not name.endswith(ROUTERS)


def _save_quantized(folder: Path, out: Path, tensors: dict, qcfg: dict) -> Path:
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = qcfg
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (folder / f).is_file():
            shutil.copy(folder / f, out / f)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


def gptq_groups(w: torch.Tensor, order: torch.Tensor, group_size: int, bits: int = 4, seed: int = 0):
    """GPTQ's error feedback: columns quantized in ``order``, each rounding error spread over the
    columns not yet quantized through the inverse Hessian of correlated random inputs; a group's
    scale and zero from its (updated) weights when the group starts. Returns the codes [out, in],
    scales and zeros [groups, out] as :func:`quantize_groups`."""
    top = (1 << bits) - 1
    rng = np.random.default_rng(seed)
    W = w.double().numpy()[:, order.numpy()].copy()
    n_out, n_in = W.shape
    X = rng.standard_normal((4 * n_in, n_in)) @ (0.3 * rng.standard_normal((n_in, n_in)) + np.eye(n_in))
    H = X.T @ X
    H += 0.01 * np.mean(np.diag(H)) * np.eye(n_in)
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    q = np.zeros(W.shape, np.int32)
    scales = np.empty((n_in // group_size, n_out), np.float32)
    zeros = np.empty((n_in // group_size, n_out), np.int32)
    for j in range(n_in):
        g = j // group_size
        if j % group_size == 0:
            blk = W[:, j:j + group_size]
            lo, hi = np.minimum(blk.min(1), 0), np.maximum(blk.max(1), 0)
            scales[g] = np.maximum((hi - lo) / top, 1e-8).astype(np.float16).astype(np.float32)
            zeros[g] = np.clip(np.round(-lo / scales[g]), 0, top)
        q[:, j] = np.clip(np.round(W[:, j] / scales[g]) + zeros[g], 0, top)
        err = (W[:, j] - (q[:, j] - zeros[g]) * scales[g].astype(np.float64)) / U[j, j]
        W[:, j + 1:] -= np.outer(err, U[j, j + 1:])
    out = np.empty_like(q)
    out[:, order.numpy()] = q
    return torch.from_numpy(out), torch.from_numpy(scales).half(), torch.from_numpy(zeros)


def write_gptq(folder, out, group_size: int = 32, bits: int = 4, act_order: bool = True, seed: int = 0,
               drop: str | None = None, feedback: bool = False) -> Path:
    """AutoGPTQ layout; with ``act_order`` the input columns are assigned to groups in a random
    order (as desc_act does), so ``g_idx`` matters.  ``drop`` leaves out one part (e.g. "scales");
    ``feedback``: GPTQ's error feedback (:func:`gptq_groups`), else plain rounding per group."""
    folder, out = Path(folder), Path(out)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, t in _state(folder).items():
        if not _is_linear(name, t):
            tensors[name] = t.half()
            continue
        mod = name[: -len(".weight")]
        n_out, n_in = t.shape
        order = torch.randperm(n_in, generator=gen) if act_order else torch.arange(n_in)
        g_idx = torch.empty(n_in, dtype=torch.int32)
        g_idx[order] = (torch.arange(n_in) // group_size).to(torch.int32)
        if feedback:
            q, scales, zeros = gptq_groups(t, order, group_size, bits, seed)
        else:
            q, scales, zeros = quantize_groups(t, g_idx, n_in // group_size, bits)
        tensors[f"{mod}.qweight"] = pack(q.T, bits, 0)  # [in/pack, out]
        tensors[f"{mod}.qzeros"] = pack(zeros - 1, bits, 1) if bits == 4 else pack((zeros - 1) % (1 << bits), bits, 1)
        tensors[f"{mod}.scales"] = scales
        tensors[f"{mod}.g_idx"] = g_idx
    if drop:
        tensors = {k: v for k, v in tensors.items() if not k.endswith("." + drop)}
    qcfg = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": act_order, "sym": False,
            "checkpoint_format": "gptq"}
    return _save_quantized(folder, out, tensors, qcfg)


def awq_migrate(state: dict, cfg: dict, seed: int = 0, spread: float = 1.0) -> dict:
    """AWQ's scale search result applied: per-channel scales s (log-normal, ``spread``) move out of
    each norm into the layers it feeds (norm / s, columns × s), and out of up's rows into down's
    columns (up rows / s, down columns × s).  The function is unchanged."""
    gen = torch.Generator().manual_seed(seed)
    st = {k: v.float().clone() for k, v in state.items()}
    if spread == 0:  # no migration (any family)
        return st
    d, h = cfg["hidden_size"], cfg["intermediate_size"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for norm, readers in (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                              ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))):
            s = torch.exp(spread * torch.randn(d, generator=gen))
            st[p + norm + ".weight"] /= s
            for r in readers:
                st[p + r + ".weight"] *= s
        s = torch.exp(spread * torch.randn(h, generator=gen))
        st[p + "mlp.up_proj.weight"] /= s[:, None]
        st[p + "mlp.down_proj.weight"] *= s
    return st


def write_awq(folder, out, group_size: int = 32, seed: int = 0, spread: float = 1.0) -> Path:
    """AutoAWQ GEMM layout (4 bits), after :func:`awq_migrate`."""
    folder, out = Path(folder), Path(out)
    cfg = json.loads((folder / "config.json").read_text())
    tensors = {}
    for name, t in awq_migrate(_state(folder), cfg, seed, spread).items():
        if not _is_linear(name, t):
            tensors[name] = t.half()
            continue
        mod = name[: -len(".weight")]
        n_out, n_in = t.shape
        q, scales, zeros = quantize_groups(t, torch.arange(n_in) // group_size, n_in // group_size, 4)

        def awq_pack(v):  # [rows, out] -> [rows, out/8] in AutoAWQ's column order
            v = v.reshape(v.shape[0], -1, 8)[:, :, list(AWQ_ORDER)].reshape(v.shape)
            return pack(v, 4, 1)

        tensors[f"{mod}.qweight"] = awq_pack(q.T)
        tensors[f"{mod}.qzeros"] = awq_pack(zeros)
        tensors[f"{mod}.scales"] = scales
    qcfg = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm"}
    return _save_quantized(folder, out, tensors, qcfg)


def write_linear(folder, out, quantize, qcfg: dict, rest=lambda t: t, drop: str | None = None) -> Path:
    """``folder`` with every block linear layer (routers excluded) replaced by the tensors
    ``quantize(name, weight)`` returns (a dict of stored name -> tensor) and every other tensor by
    ``rest(tensor)``; ``drop`` leaves out the stored tensors whose names end with it."""
    folder, out = Path(folder), Path(out)
    tensors = {}
    for name, t in _state(folder).items():
        tensors.update(quantize(name, t) if _is_linear(name, t) else {name: rest(t)})
    if drop:
        tensors = {k: v for k, v in tensors.items() if not k.endswith(drop)}
    return _save_quantized(folder, out, tensors, qcfg)


# ------------------------------------------------------------------------------------------
# FP8 (DeepSeek block-scaled; per-channel and per-tensor weight_scale)
# ------------------------------------------------------------------------------------------
FP8_MAX = 448.0  # largest float8_e4m3fn


def fp8_quantize(w: torch.Tensor, block: tuple[int, int] | None = None, per: str = "block"):
    """DeepSeek's weight quantization: scale = amax / 448 per ``block`` (ceil-sized at the edges), or
    per output row (``per="channel"``), or one for the tensor (``per="tensor"``); codes = W / scale
    rounded to float8_e4m3fn.  Returns (codes, scale) with W ≈ codes · scale."""
    w = w.float()
    r, c = w.shape
    if per == "tensor":
        s = (w.abs().max() / FP8_MAX).clamp_min(1e-12).reshape(1)
        return (w / s).to(torch.float8_e4m3fn), s
    if per == "channel":
        s = (w.abs().amax(1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
        return (w / s).to(torch.float8_e4m3fn), s
    b0, b1 = block
    R, C = -(-r // b0), -(-c // b1)
    s = torch.empty(R, C)
    for i in range(R):
        for j in range(C):
            s[i, j] = (w[i * b0:(i + 1) * b0, j * b1:(j + 1) * b1].abs().max() / FP8_MAX).clamp_min(1e-12)
    full = s.repeat_interleave(b0, 0)[:r].repeat_interleave(b1, 1)[:, :c]
    return (w / full).to(torch.float8_e4m3fn), s


def write_fp8(folder, out, block: tuple[int, int] | None = (16, 16), per: str = "block",
              drop: str | None = None, method: str = "fp8") -> Path:
    """Every block linear layer (routers excluded) as float8_e4m3fn codes with ``weight_scale_inv``
    per block (DeepSeek layout, ``weight_block_size``), or ``weight_scale`` per channel / tensor;
    the rest as it is.  ``drop`` leaves out the parts whose names end with it."""
    def quantize(name, t):
        codes, s = fp8_quantize(t, block, per)
        return {name: codes, name + ("_scale_inv" if per == "block" else "_scale"): s}

    qcfg = {"quant_method": method, "activation_scheme": "dynamic", "fmt": "e4m3"}
    if per == "block":
        qcfg["weight_block_size"] = list(block)
    return write_linear(folder, out, quantize, qcfg, drop=drop)


# ------------------------------------------------------------------------------------------
# MXFP4 (gpt-oss)
# ------------------------------------------------------------------------------------------
FP4_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def mxfp4_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., n] (n a multiple of 32) -> (blocks uint8 [..., n/32, 16], scales uint8 [..., n/32]):
    per group of 32 the scale is the power of two 2^ceil(log2(amax / 6)) (no value clipped, as
    triton's downcast_to_mxfp rounds it up), each value rounded to the nearest E2M1 value."""
    *lead, n = w.shape
    g = w.float().reshape(*lead, n // 32, 32)
    amax = g.abs().amax(-1).clamp_min(2.0 ** -126)
    e = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    x = g / torch.exp2(e).unsqueeze(-1)
    mag = (x.abs().unsqueeze(-1) - FP4_MAGNITUDES).abs().argmin(-1)  # nearest magnitude
    code = (mag | ((x < 0) & (mag > 0)).long() << 3).to(torch.uint8)
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)
    return blocks.contiguous(), (e + 127).to(torch.uint8)


def write_mxfp4(folder, out, drop: str | None = None) -> Path:
    """Every block linear layer (routers excluded) as MXFP4 ``<module>_blocks`` / ``<module>_scales``
    (gpt-oss's naming of its quantized tensors); the rest in bfloat16, as gpt-oss ships it."""
    def quantize(name, t):
        blocks, scales = mxfp4_quantize(t)
        base = name[: -len(".weight")]
        return {base + "_blocks": blocks, base + "_scales": scales}

    return write_linear(folder, out, quantize, {"quant_method": "mxfp4", "modules_to_not_convert": []},
                        rest=lambda t: t.bfloat16(), drop=drop)


# ------------------------------------------------------------------------------------------
# compressed-tensors (with the package's own compressors)
# ------------------------------------------------------------------------------------------
def ct_observe(w: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of ``w`` per tensor / row / group / block, as an observer records them."""
    r, c = w.shape
    if args.strategy == "tensor":
        return w.min().reshape(1), w.max().reshape(1)
    if args.strategy == "channel":
        return w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    if args.strategy == "group":
        g = w.reshape(r, c // args.group_size, args.group_size)
        return g.amin(-1), g.amax(-1)
    b0, b1 = args.block_structure
    g = w.reshape(r // b0, b0, c // b1, b1)
    return g.amin((1, 3)), g.amax((1, 3))


def ct_compress(t: torch.Tensor, fmt: str = "pack-quantized", **weights) -> dict[str, torch.Tensor]:
    """The tensors compressed-tensors' own compressor for ``fmt`` stores for the weight ``t`` (``weight_packed``
    / ``weight``, ``weight_scale``, …; names without the module) with scales from its minimum and maximum."""
    from compressed_tensors.compressors import (FloatQuantizationCompressor, IntQuantizationCompressor,
                                                NaiveQuantizationCompressor, PackedQuantizationCompressor)
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams
    compressor = {"pack-quantized": PackedQuantizationCompressor, "int-quantized": IntQuantizationCompressor,
                  "naive-quantized": NaiveQuantizationCompressor, "float-quantized": FloatQuantizationCompressor}[fmt]
    args = QuantizationArgs(**weights)
    scale, zero = calculate_qparams(*ct_observe(t.float(), args), args)
    return compressor.compress({"weight": t.float(), "weight_scale": scale, "weight_zero_point": zero},
                               QuantizationScheme(targets=["Linear"], weights=args))


def write_compressed(folder, out, fmt: str = "pack-quantized", drop: str | None = None, before=None,
                     **weights) -> Path:
    """Every block linear layer (routers excluded) compressed by compressed-tensors' own compressor
    for ``fmt`` with the weight arguments ``weights`` (num_bits, type, symmetric, strategy, …), after
    ``before(weight)`` when given."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))

    def quantize(name, t):
        parts = ct_compress(before(t.float()) if before else t, fmt, **weights)
        return {f"{name[: -len('.weight')]}.{k}": v for k, v in parts.items()}

    qcfg = {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": {**scheme.model_dump(), "format": fmt}}, "ignore": ["lm_head"]}
    return write_linear(folder, out, quantize, qcfg, drop=drop)


# ------------------------------------------------------------------------------------------
# bitsandbytes (with the package's own quantizer, on CPU)
# ------------------------------------------------------------------------------------------
def write_bnb(folder, out, quant: str = "nf4", nested: bool = True, blocksize: int = 32,
              drop: str | None = None) -> Path:
    """Every block linear layer (routers excluded) quantized by bitsandbytes on CPU and saved as
    transformers saves a bitsandbytes model: 4-bit ``weight`` + ``weight.absmax`` /
    ``weight.quant_map`` / nested keys / ``weight.quant_state.bitsandbytes__<quant>``, or
    (``quant="int8"``) int8 ``weight`` + ``SCB``."""
    import bitsandbytes.functional as F

    def quantize(name, t):
        if quant == "int8":
            q, scb, _ = F.int8_vectorwise_quant(t.float())
            return {name: q, name[: -len(".weight")] + ".SCB": scb}
        q, state = F.quantize_4bit(t.float(), blocksize=blocksize, quant_type=quant, compress_statistics=nested)
        return {name: q, **{f"{name}.{k}": v for k, v in state.as_dict(packed=True).items()}}

    qcfg = {"quant_method": "bitsandbytes", "load_in_4bit": quant != "int8", "load_in_8bit": quant == "int8",
            "bnb_4bit_quant_type": quant if quant != "int8" else "fp4", "bnb_4bit_use_double_quant": nested,
            "bnb_4bit_compute_dtype": "float32"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # its CPU kernels on tiny tensors: 20x faster without thread synchronisation
    try:
        return write_linear(folder, out, quantize, qcfg, drop=drop)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------
# GGUF K-quants (gguf-py dequantizes them but cannot quantize them): codes constructed as
# llama.cpp derives them once its scales are chosen — nearest rounding of each value under the
# stored sub-block scale (and minimum), clamped to the code range
# ------------------------------------------------------------------------------------------
#: type -> (code bits, values per sub-block, asymmetric (scale and min), scale range)
KQUANTS = {"Q2_K": (2, 16, True, 15), "Q3_K": (3, 16, False, 32), "Q4_K": (4, 32, True, 63),
           "Q5_K": (5, 32, True, 63), "Q6_K": (6, 16, False, 128)}


def _f16(a):
    return np.asarray(a, np.float32).astype(np.float16)


def _kquant_codes(xs: np.ndarray, qtype: str):
    """Super-block scales (float16), integer sub-block scales / mins and raw codes 0..2^bits-1 of
    ``xs`` [blocks, sub-blocks, values]."""
    bits, _, asym, smax = KQUANTS[qtype]
    top = (1 << bits) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        if asym:
            mn = np.minimum(xs.min(-1), 0)
            scale, m = (xs.max(-1) - mn) / top, -mn
            d, dmin = _f16(scale.max(-1) / smax), _f16(m.max(-1) / smax)
            sc = np.where(d[:, None] > 0, np.clip(np.rint(scale / d[:, None].astype(np.float32)), 0, smax), 0)
            mm = np.where(dmin[:, None] > 0, np.clip(np.rint(m / dmin[:, None].astype(np.float32)), 0, smax), 0)
            D = (d.astype(np.float32)[:, None] * sc.astype(np.float32))[..., None]
            DM = (dmin.astype(np.float32)[:, None] * mm.astype(np.float32))[..., None]
            codes = np.where(D > 0, np.clip(np.rint((xs + DM) / np.where(D > 0, D, 1)), 0, top), 0)
            return d, dmin, sc.astype(np.int64), mm.astype(np.int64), codes.astype(np.uint8)
        half = (top + 1) // 2
        v = np.take_along_axis(xs, np.abs(xs).argmax(-1)[..., None], -1)[..., 0]
        scale = v / -half  # the largest |x| maps to the lowest code
        big = np.take_along_axis(scale, np.abs(scale).argmax(-1)[:, None], -1)[:, 0]
        d = _f16(big / -smax)
        sc = np.where(d[:, None] != 0, np.clip(np.rint(scale / d[:, None].astype(np.float32)), -smax, smax - 1), 0)
        D = (d.astype(np.float32)[:, None] * sc.astype(np.float32))[..., None]
        q = np.where(D != 0, np.clip(np.rint(xs / np.where(D != 0, D, 1)), -half, half - 1), 0)
        return d, None, sc.astype(np.int64), None, (q + half).astype(np.uint8)


def _pack_bits(codes: np.ndarray, groups: int, bits: int, width: int) -> np.ndarray:
    """Codes [blocks, 256] into bytes as gguf-py unpacks them: element (g, s, l) of
    codes.reshape(groups, 8 // bits or shifts, width) sits in byte g*width + l at bit s*bits."""
    n = codes.shape[0]
    shifts = 8 // bits
    c = codes.reshape(n, groups, shifts, width).astype(np.uint16)
    out = np.zeros((n, groups, width), np.uint16)
    for s in range(shifts):
        out |= (c[:, :, s, :] & ((1 << bits) - 1)) << (s * bits)
    return out.reshape(n, groups * width).astype(np.uint8)


def _pack_k4_scales(sc: np.ndarray, mm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins into Q4_K/Q5_K's 12 bytes (the inverse of gguf-py's get_scale_min)."""
    b = np.zeros((sc.shape[0], 12), np.uint16)
    for j in range(4):
        b[:, j] = sc[:, j] | ((sc[:, j + 4] >> 4) << 6)
        b[:, 4 + j] = mm[:, j] | ((mm[:, j + 4] >> 4) << 6)
        b[:, 8 + j] = (sc[:, j + 4] & 0xF) | ((mm[:, j + 4] & 0xF) << 4)
    return b.astype(np.uint8)


def _pack_q3_scales(raw: np.ndarray) -> np.ndarray:
    raw = raw.astype(np.uint16)
    b = np.zeros((raw.shape[0], 12), np.uint16)
    for j in range(16):
        b[:, j % 8] |= (raw[:, j] & 0xF) << (4 * (j // 8))
        b[:, 8 + j % 4] |= ((raw[:, j] >> 4) & 3) << (2 * (j // 4))
    return b.astype(np.uint8)


def kquantize(a: np.ndarray, qtype: str) -> np.ndarray:
    """``a`` [..., n] (n a multiple of 256) as GGUF ``qtype`` blocks (uint8), readable by gguf-py."""
    bits, sub, _, _ = KQUANTS[qtype]
    xs = np.ascontiguousarray(a, np.float32).reshape(-1, 256 // sub, sub)
    n = xs.shape[0]
    d, dmin, sc, mm, codes = _kquant_codes(xs, qtype)
    codes = codes.reshape(n, 256)
    f16 = (lambda v: v.reshape(n, 1).view(np.uint8))
    if qtype == "Q2_K":
        parts = [(sc | (mm << 4)).astype(np.uint8), _pack_bits(codes, 2, 2, 32), f16(d), f16(dmin)]
    elif qtype == "Q3_K":
        hmask = _pack_bits(codes >> 2, 1, 1, 32)
        parts = [hmask, _pack_bits(codes & 3, 2, 2, 32), _pack_q3_scales(sc + 32), f16(d)]
    elif qtype == "Q4_K":
        parts = [f16(d), f16(dmin), _pack_k4_scales(sc, mm), _pack_bits(codes, 4, 4, 32)]
    elif qtype == "Q5_K":
        parts = [f16(d), f16(dmin), _pack_k4_scales(sc, mm), _pack_bits(codes >> 4, 1, 1, 32),
                 _pack_bits(codes & 15, 4, 4, 32)]
    else:  # Q6_K
        parts = [_pack_bits(codes & 15, 2, 4, 64), _pack_bits(codes >> 4, 2, 2, 32),
                 sc.astype(np.int8).view(np.uint8), f16(d)]
    blocks = np.concatenate(parts, axis=1)
    return blocks.reshape(*a.shape[:-1], a.shape[-1] // 256 * blocks.shape[1])
#: what gpt-oss's MXFP4 release keeps in bfloat16 (its quantization_config)
GPT_OSS_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]


def write_mxfp4_gpt_oss(folder, out, drop: str | None = None) -> Path:
    """A gpt-oss folder as openai/gpt-oss-* ships it: each block's stacked experts
    ``mlp.experts.gate_up_proj`` [E, d, 2h] and ``down_proj`` [E, h, d] stored transposed as MXFP4
    ``…_blocks`` [E, out, in/32, 16] / ``…_scales`` [E, out, in/32] (groups of 32 along the input);
    expert biases, attention, router, embeddings and head in bfloat16."""
    def quantize(name, t):
        if not re.search(r"\.mlp\.experts\.(gate_up_proj|down_proj)$", name):
            return {name: t.bfloat16()}
        blocks, scales = mxfp4_quantize(t.transpose(1, 2))
        return {name + "_blocks": blocks, name + "_scales": scales}

    folder, out = Path(folder), Path(out)
    tensors = {}
    for name, t in _state(folder).items():
        tensors.update(quantize(name, t))
    if drop:
        tensors = {k: v for k, v in tensors.items() if not k.endswith(drop)}
    return _save_quantized(folder, out, tensors, {"quant_method": "mxfp4",
                                                   "modules_to_not_convert": GPT_OSS_NOT_CONVERTED})


# ------------------------------------------------------------------------------------------
# compressed-tensors sparse bitmasks (the package's sparse compressors, which it no longer ships,
# written out; checked against their output in tests/data/ct_sparse.safetensors)
# ------------------------------------------------------------------------------------------
def mask_24(t: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' ``get_24_bytemasks``: the two largest magnitudes of every 4 values (float8
    codes compared as their int8 bytes, as the package does)."""
    v = t.view(torch.int8) if t.dtype == torch.float8_e4m3fn else t
    top = v.reshape(-1, 4).abs().topk(2, dim=1).indices
    return torch.zeros(v.numel() // 4, 4, dtype=torch.bool).scatter_(1, top, True).reshape(t.shape)


def sparse_compress(t: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """``shape`` / ``compressed`` / ``bitmask`` (/ ``row_offsets``) of a 2-D tensor, as compressed-tensors'
    ``Sparse24BitMaskTensor`` (``sparse-24-bitmask``) or ``BitmaskTensor`` (``sparse-bitmask``) write it."""
    r, c = t.shape
    mask = mask_24(t) if fmt == "sparse-24-bitmask" else t != 0
    raw = t.view(torch.int8) if t.dtype == torch.float8_e4m3fn else t
    values = raw[mask].view(t.dtype)
    out = {"bitmask": torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))}
    if fmt == "sparse-24-bitmask":
        return {"shape": torch.tensor([r, c]).reshape(-1, 1), "compressed": values.reshape(r, c // 2), **out}
    counts = mask.sum(-1)
    return {"shape": torch.tensor([r, c]), "compressed": values, **out, "row_offsets": torch.cumsum(counts, 0) - counts}


def prune(t: torch.Tensor, fmt: str) -> torch.Tensor:
    """2:4 magnitude pruning (``sparse-24-bitmask``), or of the smaller half of each row."""
    if fmt == "sparse-24-bitmask":
        return t * mask_24(t)
    return t * (t.abs() >= t.abs().median(-1, keepdim=True).values)


def write_sparse(folder, out, sparsity: str = "sparse-24-bitmask", fmt: str | None = None, drop: str | None = None,
                 **weights) -> Path:
    """Every block linear layer (routers excluded) pruned (:func:`prune`), quantized by compressed-tensors'
    own compressor for ``fmt`` with the weight arguments ``weights`` when ``fmt`` is given (else kept in
    bfloat16), and its weight (or codes) stored sparse in ``sparsity``, as llm-compressor saves a
    sparse model; ``drop`` leaves out the stored tensors whose names end with it.  The package's sparse
    compressor compresses ``<module>.weight`` only: ``pack-quantized`` layers (``weight_packed``) keep
    their packed codes, with no bitmask, as it saves them (tests/data/ct_sparse_packed.safetensors)."""
    qcfg = {"quant_method": "compressed-tensors", "quantization_status": "compressed",
            "sparsity_config": {"format": sparsity, "targets": ["Linear"], "ignore": ["lm_head"],
                                "sparsity_structure": "2:4" if sparsity == "sparse-24-bitmask" else "unstructured"}}
    if fmt:
        ref = Path(out).with_name(Path(out).name + ".dense")
        quantized = write_compressed(folder, ref, fmt, before=lambda t: prune(t, sparsity), **weights)
        qcfg.update({k: v for k, v in json.loads((quantized / "config.json").read_text())["quantization_config"].items()
                     if k != "quantization_status"})
        state, folder = _state(quantized), quantized
    else:
        state = {k: prune(v, sparsity).bfloat16() if _is_linear(k, v) else v for k, v in _state(folder).items()}
    tensors = {}
    for name, t in state.items():
        mod = name[: -len(".weight")]
        if name.endswith(".weight") and ".layers." in name and t.ndim == 2 and not name.endswith(ROUTERS):
            tensors.update({f"{mod}.{k}": v for k, v in sparse_compress(t, sparsity).items()})
        else:
            tensors[name] = t
    if drop:
        tensors = {k: v for k, v in tensors.items() if not k.endswith(drop)}
    out = _save_quantized(folder, Path(out), tensors, qcfg)
    if fmt:
        shutil.rmtree(folder)
    return out
