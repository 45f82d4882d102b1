"""GGUF files of the frontier families laid out as llama.cpp's converter writes them (gguf-py's
name table, experts stacked per projection, the router's correction bias as ``exp_probs_b.bias``,
DeepSeek's MLA ``kv_b_proj`` split into ``attn_k_b`` (transposed) and ``attn_v_b``, gpt-oss's and Llama 4's
fused experts split per projection, Gemma 4's renamed scales), read back
through the GGUF backend: every tensor as saved, cos finds the copy and not the independent model;
a family whose GGUF layout is not read is refused in one line."""
import json
import math
import shutil

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from family_models import family_config, family_model, save_trio
from quant_writers import gguf_namer, stack_experts
from tracing.errors import TracingError
from tracing.models import Checkpoint
from tracing.options import Options
from tracing.stats import get as get_stat
from tracing.stats.base import Context

#: model_type -> the GGUF architecture llama.cpp's converter writes
CONVERTED = {"deepseek_v3": "deepseek2", "qwen3_moe": "qwen3moe", "olmoe": "olmoe", "glm4_moe": "glm4moe",
             "minimax_m2": "minimax-m2", "ernie4_5_moe": "ernie4_5-moe", "gpt_oss": "gpt-oss", "llama4_text": "llama4",
             "gemma4_text": "gemma4"}
#: (family, config) pairs tested: every family above, and Gemma 4 with experts beside its dense MLPs
CASES = [(f, {}) for f in CONVERTED] + [("gemma4_text", dict(h=32, enable_moe_block=True, num_experts=4, top_k_experts=2,
                                                             moe_intermediate_size=16))]


def _split_kv_b(hf: str, t: torch.Tensor, cfg: dict) -> dict:
    """The converter's DeepseekV2Model: kv_b_proj [H·(nope + v), r] -> k_b [H, r, nope] and v_b [H, v, r]."""
    H, nope, v = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    k_b, v_b = torch.split(t.view(H, nope + v, t.shape[-1]), [nope, v], dim=1)
    return {hf.replace("kv_b_proj", "k_b_proj"): k_b.transpose(1, 2), hf.replace("kv_b_proj", "v_b_proj"): v_b}


def _split_gpt_oss(hf: str, t: torch.Tensor) -> dict:
    """The converter's GptOssModel (float experts): gate_up_proj [E, d, 2h] transposed and split into
    gate (even rows) and up (odd rows), down_proj transposed, biases split alike; sinks get .weight."""
    if hf.endswith(".sinks"):
        return {f"{hf}.weight": t}
    if hf.endswith("experts.down_proj"):
        return {f"{hf}.weight": t.transpose(-1, -2)}
    if hf.endswith("experts.down_proj_bias"):
        return {hf.replace("down_proj_bias", "down_proj.bias"): t}
    if hf.endswith("experts.gate_up_proj"):
        t = t.transpose(-1, -2)
        return {hf.replace("gate_up_proj", "gate_proj.weight"): t[:, ::2], hf.replace("gate_up_proj", "up_proj.weight"): t[:, 1::2]}
    if hf.endswith("experts.gate_up_proj_bias"):
        return {hf.replace("gate_up_proj_bias", "gate_proj.bias"): t[..., ::2],
                hf.replace("gate_up_proj_bias", "up_proj.bias"): t[..., 1::2]}
    return {hf: t}


def _split_llama4(hf: str, t: torch.Tensor) -> dict:
    """The converter's Llama4Model: gate_up_proj [E, d, 2h] transposed and split in halves (gate, up),
    down_proj transposed."""
    if hf.endswith("experts.gate_up_proj"):
        gate, up = t.transpose(-1, -2).split(t.shape[-1] // 2, dim=-2)
        return {hf.replace("gate_up_proj", "gate_proj.weight"): gate, hf.replace("gate_up_proj", "up_proj.weight"): up}
    if hf.endswith("experts.down_proj"):
        return {f"{hf}.weight": t.transpose(-1, -2)}
    return {hf: t}


def _gemma4_names(hf: str, t: torch.Tensor) -> dict:
    """The converter's Gemma4Model: .weight appended to the block scalar and the stacked experts, the
    router's gain and per-expert scale stored as ffn_gate_inp.scale and ffn_down_exps.scale."""
    if hf.endswith("router.scale"):
        return {hf.replace("router.scale", "router.proj.scale"): t}
    if hf.endswith("router.per_expert_scale"):
        return {hf.replace("router.per_expert_scale", "experts.down_proj.scale"): t}
    return {hf + ".weight" if hf.endswith(("layer_scalar", "experts.gate_up_proj", "experts.down_proj")) else hf: t}


CONVERTERS = {"gpt-oss": _split_gpt_oss, "llama4": _split_llama4, "gemma4": _gemma4_names}


def write_converted(folder, out_dir, arch: str):
    """``folder`` (a saved float model) as a float32 GGUF laid out as the converter lays out ``arch``,
    with the model's config.json beside it."""
    cfg = json.loads((folder / "config.json").read_text())
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    out_dir.mkdir(parents=True)
    w = gguf.GGUFWriter(str(out_dir / "model.gguf"), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_embedding_length(cfg["hidden_size"])
    name = gguf_namer(arch, cfg["num_hidden_layers"])
    for hf, t in stack_experts(state).items():
        hf = hf.replace("e_score_correction_bias", "e_score_correction.bias")
        parts = (_split_kv_b(hf, t, cfg) if hf.endswith("kv_b_proj.weight") else
                 CONVERTERS[arch](hf, t) if arch in CONVERTERS else {hf: t})
        for key, part in parts.items():
            w.add_tensor(name(key), np.ascontiguousarray(part.float().numpy()))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shutil.copy(folder / "config.json", out_dir / "config.json")
    return out_dir


def run_cos(a, b):
    return get_stat("cos").fn(Context(Options(stat=["cos"]), progress=False), a, b)


@pytest.mark.parametrize("family, config", CASES, ids=[f + ("_moe" if c else "") for f, c in CASES])
def test_converted_gguf_reads_every_tensor(tmp_path, family, config):
    _, paths = save_trio(tmp_path / "hf", family, **config)
    ggufs = {tag: Checkpoint(write_converted(paths[tag], tmp_path / f"gguf-{tag}", CONVERTED[family]))
             for tag in ("base", "ft")}
    ref, g = Checkpoint(paths["base"]), ggufs["base"]
    assert g.backend.format == "gguf"
    names = ref.arch.names()
    assert any("kv_b_proj" in n for n in names) == (family == "deepseek_v3")
    for n in names:
        assert torch.equal(g.get(n), ref.get(n)), n
    assert run_cos(ref, ggufs["ft"]).log10_pvalue < -6
    assert run_cos(Checkpoint(paths["indep"]), g).log10_pvalue > math.log10(0.01)


def test_gguf_of_an_unread_layout_is_refused(tmp_path):
    """Qwen3-Next GGUF files (the converter rewrites the linear attention's decay, among others) are not
    read yet: one line naming the way out."""
    model = family_model(family_config("qwen3_next"), seed=3)
    model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "g"
    out.mkdir()
    w = gguf.GGUFWriter(str(out / "model.gguf"), "qwen3next")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shutil.copy(tmp_path / "hf" / "config.json", out / "config.json")
    with pytest.raises(TracingError, match="GGUF files of qwen3_next models are not supported") as e:
        Checkpoint(out)
    assert "\n" not in str(e.value) and "safetensors" in str(e.value)
