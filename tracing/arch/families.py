"""The supported families, one :class:`~tracing.arch.family.Family` record per ``model_type``.

Adding a family: describe it here (or in a module of its own when it brings its own layout
functions) and register it with one line.  See docs/architectures.md, "Adding a family".
"""
from __future__ import annotations

from dataclasses import replace

from .family import Family, register

from .layout import (attention_fused_qkv, attention_neox, attention_refs, dense_mlp_refs, mlp_fused_gate_up,
                     mlp_neox, moe_refs)
from .deepseek import attention_mla, attention_mla_indexed, deepseek_moe_shape, indexer_dims, mla_dims
from .moe_shapes import mixtral_shape, qwen_moe_shape
from .ernie import ernie_moe, ernie_shape
from .gpt_oss import attention_sinks, gpt_oss_moe, gpt_oss_shape
from .gemma4 import (attention_gemma4, block_extra, gemma4_dims, gemma4_moe, gemma4_moe_shape, global_extra, layer_inputs,
                     mlp_gemma4)
from .llama4 import llama4_mlp, llama4_moe, llama4_shape
from .qwen_hybrid import attention_qwen3_5, attention_qwen3_next, linear_dims

#: where transformers (``model.language_model.``) and the original checkpoints
#: (``language_model.model.``) keep a vision-language model's language model
LANGUAGE_MODEL = (("model.", "model.language_model."), ("model.", "language_model.model."),
                  ("lm_head.", "language_model.lm_head."))

POST_NORMS = "its post-norms apply a gain after normalisation, which cannot be folded into a linear layer"
LAYERNORM = "LayerNorm subtracts the mean, which a rotation of the residual stream does not commute with"

#: a Llama-shaped family: split q/k/v/o, a gated MLP, pre-norms
LLAMA = Family("llama", attention=attention_refs, mlp=dense_mlp_refs, moe=moe_refs, mlp_bias=("mlp_bias", False))
_BASE = replace(LLAMA, mlp_bias=False)

register(LLAMA)
register(replace(_BASE, model_type="mistral"))
register(replace(_BASE, model_type="qwen2", qkv_bias=True, o_bias=False))
register(replace(_BASE, model_type="qwen3", qk_norm="head"))
register(replace(_BASE, model_type="gemma", gain_offset=1.0, tied_default=True, embed_scaled=True))
register(replace(_BASE, model_type="gemma2", norms="gemma2", gain_offset=1.0, tied_default=True,
                 embed_scaled=True, rotation_problem=POST_NORMS))
register(replace(_BASE, model_type="gemma3_text", norms="gemma2", gain_offset=1.0, qk_norm="head",
                 tied_default=True, embed_scaled=True, rotation_problem=POST_NORMS))
register(replace(_BASE, model_type="phi3", group="phi3", attention=attention_fused_qkv, mlp=mlp_fused_gate_up,
                 qkv_bias=False, o_bias=False))
register(replace(_BASE, model_type="olmo2", norms="olmo2", qk_norm="full", rotation_problem=POST_NORMS))
register(replace(_BASE, model_type="gpt_neox", group="gpt_neox", attention=attention_neox, mlp=mlp_neox,
                 norm_bias=True, gated=False, rotation_problem=LAYERNORM,
                 qkv_bias=("attention_bias", True), o_bias=("attention_bias", True), kv_heads_key=None,
                 layers_prefix="gpt_neox.layers", embed="gpt_neox.embed_in.weight",
                 final_norm="gpt_neox.final_layer_norm.weight", lm_head_stores=("lm_head.weight", "embed_out.weight")))
register(replace(_BASE, model_type="mixtral", group="mixtral", qkv_bias=False, o_bias=False, moe_shape=mixtral_shape,
                 expert_prefix="block_sparse_moe.", expert_files=("w1", "w3", "w2")))
register(replace(_BASE, model_type="qwen2_moe", group="qwen_moe", qkv_bias=("qkv_bias", True), o_bias=False,
                 moe_shape=qwen_moe_shape, shared_expert_key="shared_expert_intermediate_size"))
register(replace(_BASE, model_type="qwen3_moe", group="qwen_moe", qk_norm="head", moe_shape=qwen_moe_shape))

DEEPSEEK_V3 = replace(_BASE, model_type="deepseek_v3", group="deepseek", attention=attention_mla, dims=mla_dims,
                      qkv_bias=False, o_bias=False, moe_shape=deepseek_moe_shape, shared_prefix="mlp.shared_experts.",
                      shared_gate=None, router_bias="gate.e_score_correction_bias")
register(DEEPSEEK_V3)
register(replace(DEEPSEEK_V3, model_type="deepseek_v32", attention=attention_mla_indexed, dims=indexer_dims,
                 layer_types=frozenset({"indexed_attention", "full_attention"}), explicit_mask=True))
register(Family("kimi_k25", text_of="text_config", wrapped=LANGUAGE_MODEL))  # Kimi K2.5: a DeepSeek-V3 text model

HYBRID = frozenset({"linear_attention", "full_attention"})
QWEN3_5 = replace(_BASE, model_type="qwen3_5_text", group="qwen3_5", attention=attention_qwen3_5, dims=linear_dims,
                  layer_types=HYBRID, gain_offset=1.0, qk_norm="head", q_gated=True)
QWEN3_5_MOE = replace(QWEN3_5, model_type="qwen3_5_moe_text", moe_shape=qwen_moe_shape,
                      shared_expert_key="shared_expert_intermediate_size")
register(QWEN3_5)
register(QWEN3_5_MOE)
register(replace(QWEN3_5_MOE, model_type="qwen3_next", group="qwen3_next", attention=attention_qwen3_next))
register(Family("qwen3_5", text_of="text_config", wrapped=LANGUAGE_MODEL))  # Qwen3.5 vision-language
register(Family("qwen3_5_moe", text_of="text_config", wrapped=LANGUAGE_MODEL))
register(replace(_BASE, model_type="gpt_oss", group="gpt_oss", attention=attention_sinks, moe=gpt_oss_moe,
                 moe_shape=gpt_oss_shape, qkv_bias=True, o_bias=True, eager=True))
register(replace(_BASE, model_type="olmoe", group="olmoe", qk_norm="full", moe_shape=mixtral_shape))
register(replace(_BASE, model_type="glm4_moe", group="glm4_moe", qk_norm=("use_qk_norm", "head"), o_bias=False,
                 moe_shape=deepseek_moe_shape, shared_prefix="mlp.shared_experts.", shared_gate=None,
                 router_bias="gate.e_score_correction_bias"))
register(replace(_BASE, model_type="minimax_m2", group="minimax_m2", qk_norm="full", moe_shape=mixtral_shape,
                 expert_prefix="block_sparse_moe.", expert_files=("w1", "w3", "w2"), router_bias="e_score_correction_bias"))
register(replace(_BASE, model_type="llama4_text", group="llama4", mlp=llama4_mlp, moe=llama4_moe, moe_shape=llama4_shape,
                 dense_width="intermediate_size_mlp", mlp_module="feed_forward",
                 layer_types=frozenset({"chunked_attention", "full_attention"})))
register(replace(_BASE, model_type="ernie4_5_moe", group="ernie4_5_moe", moe=ernie_moe, moe_shape=ernie_shape,
                 qkv_bias=False, o_bias=False, shared_prefix="mlp.shared_experts.", shared_gate=None))
register(Family("llama4", text_of="text_config", wrapped=LANGUAGE_MODEL))  # Llama 4 vision-language
# Gemma 4: post-norms x̂·w (no 1 + w), per-block head sizes, shared keys and values, per-layer embeddings
register(replace(_BASE, model_type="gemma4_text", group="gemma4", norms="gemma2", tied_default=True, embed_scaled=True,
                 rotation_problem=POST_NORMS, attention=attention_gemma4, mlp=mlp_gemma4, dims=gemma4_dims,
                 moe=gemma4_moe, moe_shape=gemma4_moe_shape, experts_module="experts",
                 block_extra=block_extra, global_extra=global_extra, layer_inputs=layer_inputs))
register(Family("gemma4", text_of="text_config", wrapped=LANGUAGE_MODEL))  # Gemma 4 vision-language
