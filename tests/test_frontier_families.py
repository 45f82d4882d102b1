"""Frontier mixtures of experts (DeepSeek-V3, which Kimi K2 / K2.5 declare): calibration of the
experts grid, the hard negative (same architecture, independent training), the block map of
models of mixed block kinds, and bad input."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from safetensors.torch import load_file, save_file

from family_models import family_config, family_model, noisy, random_ids, save_trio
from tracing.models import Checkpoint, from_module
from tracing.options import Options
from tracing.stats import get as get_stat
from tracing.stats.base import Context

ROOT = Path(__file__).resolve().parent.parent
CALIBRATED = ("deepseek_v3", "qwen3_5_moe_text", "gpt_oss")


def run_stat(name, base, ft, tokens=None, **opts):
    return get_stat(name).fn(Context(Options(stat=[name], **opts), progress=False, tokens=tokens), base, ft)


@pytest.mark.parametrize("family", CALIBRATED)
def test_experts_grid_calibrated(family):
    """The overall p of the experts grid (experts matched per block, shared with shared, dense with
    dense) is uniform over independent pairs."""
    p = []
    for k in range(30):
        c = family_config(family, d=32, h=32, E=3)
        a, b = (from_module(family_model(c, seed=900 + 2 * k + s)) for s in (0, 1))
        res = run_stat("cos", a, b)
        assert res.extra["experts"] and res.extra["num_pairs"] > 0
        p.append(10 ** res.log10_pvalue)
    assert scipy.stats.kstest(p, "uniform").pvalue > 0.01, sorted(p)


def test_same_architecture_is_not_derivation():
    """Two DeepSeek-V3 models of identical configs, initialised independently (Kimi K2 against
    DeepSeek-V3 in miniature): no statistic calls them dependent; a noisy copy is."""
    c = family_config("deepseek_v3")
    a, b = from_module(family_model(c, seed=31)), from_module(family_model(c, seed=32))
    tokens = lambda: random_ids(c.vocab_size, n=4, T=32, seed=9)
    for stat in ("cos", "emb", "match"):
        assert run_stat(stat, a, b, tokens=tokens).log10_pvalue > math.log10(0.01), stat
    assert run_stat("cos", a, from_module(noisy(family_model(c, seed=31)))).log10_pvalue < -6


def test_gpt_oss_fused_interleaved_experts(tmp_path):
    """gpt-oss stores experts fused and transposed, gate and up interleaved: each role's view (and
    its bias) is the right slice, from disk and from memory alike."""
    c = family_config("gpt_oss")
    model = family_model(c, seed=71)
    model.save_pretrained(tmp_path / "m")
    ck, mem = Checkpoint(tmp_path / "m"), from_module(model)
    a = ck.arch
    experts = model.model.layers[1].mlp.experts
    gu, gub = experts.gate_up_proj.detach(), experts.gate_up_proj_bias.detach()
    for e in range(a.n_experts):
        for role, want in (("expert_gate", gu[e][:, 0::2].T), ("expert_up", gu[e][:, 1::2].T),
                           ("expert_down", experts.down_proj[e].detach().T), ("expert_gate_bias", gub[e, 0::2]),
                           ("expert_up_bias", gub[e, 1::2]), ("expert_down_bias", experts.down_proj_bias[e].detach())):
            name = next(r.name for r in a.block_refs(1) if r.role == role and r.name.endswith(f".{e}"))
            assert torch.equal(ck.get(name), want) and torch.equal(mem.get(name), want), (role, e)
    assert a.block_name(1, "sinks") and a.block_name(1, "router_bias")


def _drop_first_block(model):
    """The model without its first (dense) block: every later block moves up by one."""
    cfg = family_config("deepseek_v3", L=model.config.num_hidden_layers - 1)
    cfg.num_hidden_layers, cfg.first_k_dense_replace = model.config.num_hidden_layers - 1, 0
    out = family_model(cfg, seed=0)
    sd = {}
    for k, v in model.state_dict().items():
        if ".layers." in k:
            i = int(k.split(".layers.")[1].split(".")[0])
            if i == 0:
                continue
            k = k.replace(f".layers.{i}.", f".layers.{i - 1}.", 1)
        sd[k] = v
    out.load_state_dict(sd)
    return out


def test_block_map_of_a_copy_without_its_dense_block(tmp_path):
    """DeepSeek-shaped (one dense block, then three MoE blocks) against a noisy copy whose dense block
    was removed: the block map pairs blocks by kind and finds block j of the copy in block j + 1."""
    c = family_config("deepseek_v3", L=4)
    base = family_model(c, seed=41)
    base.save_pretrained(tmp_path / "base")
    _drop_first_block(noisy(base, seed=42)).save_pretrained(tmp_path / "pruned")
    _drop_first_block(family_model(c, seed=43)).save_pretrained(tmp_path / "other")
    res = run_stat("cos", Checkpoint(tmp_path / "base"), Checkpoint(tmp_path / "pruned"))
    assert res.extra["localized"] and res.extra["shape"] == [4, 3]
    assert [(i, j) for i, j, _ in res.extra["correspondence"]] == [(1, 0), (2, 1), (3, 2)]
    assert np.isnan(np.array(res.extra["per_pair"], dtype=float)[0]).all()  # the dense block has no MoE partner
    assert res.extra["expert_matching"] == {f"{j + 1},{j}": list(range(4)) for j in range(3)}  # experts in place
    assert res.log10_pvalue < -6
    indep = run_stat("cos", Checkpoint(tmp_path / "base"), Checkpoint(tmp_path / "other"))
    assert indep.log10_pvalue > math.log10(0.01) and indep.extra["correspondence"] == []


# ---- bad input through main.py ---------------------------------------------------------------
def main(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def _edit(folder, tensors=None, config=None):
    """Rewrite a saved model's weights (``tensors(state) -> state``) or config (``config(dict)``)."""
    if tensors:
        f = folder / "model.safetensors"
        save_file(tensors(load_file(f)), f, metadata={"format": "pt"})
    if config:
        cfg = json.loads((folder / "config.json").read_text())
        config(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))


def _without_expert(state, e=3):
    return {k: v for k, v in state.items() if f".experts.{e}." not in k}


def _wide_router(state):
    return {k: (torch.cat([v, v[:1]]) if k.endswith("mlp.gate.weight") else v) for k, v in state.items()}


def _layer_type(name):
    def edit(cfg):
        cfg["layer_types"] = [name] + ["full_attention"] * (cfg["num_hidden_layers"] - 1)
    return edit


@pytest.mark.parametrize("family, edit, needle", [
    ("deepseek_v3", dict(tensors=_without_expert), "experts.3.up_proj.weight not found"),
    ("deepseek_v3", dict(tensors=_wide_router), "mlp.gate.weight"),
    ("gemma3_text", dict(config=_layer_type("mystery_attention")), "mystery_attention"),  # unknown to transformers
    ("gemma3_text", dict(config=_layer_type("linear_attention")), "'linear_attention' that gemma3_text"),
    ("qwen3_5_moe_text", dict(config=_layer_type("sliding_attention")), "'sliding_attention' that qwen3_5_moe_text"),
    ("gemma4_text", dict(config=lambda cfg: cfg.update(enable_moe_block=True, num_experts=4, top_k_experts=2,
                                                       moe_intermediate_size=16)), "experts.gate_up_proj not found"),
])
def test_bad_input_is_one_line(tmp_path, family, edit, needle):
    c = family_config(family)
    family_model(c, seed=51).save_pretrained(tmp_path / "a")
    family_model(c, seed=52).save_pretrained(tmp_path / "b")
    _edit(tmp_path / "b", **edit)
    out = tmp_path / "never.p"
    r = main("--base_model_id", tmp_path / "a", "--ft_model_id", tmp_path / "b", "--stat", "cos", "--save", out,
             "--quiet")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("error:") and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


# ---- vision-language wrappers ------------------------------------------------------------------
#: wrapper -> (its language model's family, a tiny vision tower, the published names of the language model)
WRAPPERS = {
    "kimi_k25": ("deepseek_v3", dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64),
                 ("language_model.model.", "language_model.lm_head.")),
    "qwen3_5_moe": ("qwen3_5_moe_text", dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64,
                                             out_hidden_size=32), ("model.language_model.", "lm_head.")),
    "llama4": ("llama4_text", dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                   vision_output_dim=32, projector_input_dim=32, projector_output_dim=32,
                                   image_size=28, patch_size=14), ("language_model.model.", "language_model.lm_head.")),
    "gemma4": ("gemma4_text", dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                                   head_dim=16, intermediate_size=64), ("model.language_model.", "lm_head.")),
}
#: where transformers' vision-language modules hold the language model (text model prefix, lm_head)
IN_MEMORY = (("model.language_model.", "lm_head."), ("language_model.model.", "language_model.lm_head."))


def _wrapped(wrapper, seed):
    """A tiny vision-language model whose language model is initialised as ``family_model`` would,
    and that language model alone."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    family, vision, _ = WRAPPERS[wrapper]
    text_cfg = family_config(family)
    cfg = AutoConfig.for_model(wrapper, text_config=text_cfg.to_dict(), vision_config=vision,
                               tie_word_embeddings=False, **({"projection_hidden_size": 32} if wrapper == "kimi_k25" else {}))
    text = family_model(text_cfg, seed=seed)
    vlm = AutoModelForImageTextToText.from_config(cfg).eval()
    sd = vlm.state_dict()
    model, head = next(m for m in IN_MEMORY if f"{m[0]}embed_tokens.weight" in sd)
    for k, v in text.state_dict().items():
        sd[model + k[len("model."):] if k.startswith("model.") else k.replace("lm_head.", head, 1)] = v
    vlm.load_state_dict(sd)
    return vlm, text


def _save_hub_layout(vlm, wrapper, folder):
    """Saved as the published checkpoints name the language model's tensors."""
    _, _, (model, head) = WRAPPERS[wrapper]
    folder.mkdir()
    vlm.config.save_pretrained(folder)
    mem_model, mem_head = next(m for m in IN_MEMORY if any(k.startswith(m[0]) for k in vlm.state_dict()))
    sd = {k.replace(mem_model, model, 1).replace(mem_head, head, 1): v.contiguous()
          for k, v in vlm.state_dict().items()}
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_vision_language_wrapper_reads_its_language_model(tmp_path, wrapper):
    from tracing.engine import Engine
    from tracing.transforms import permute
    vlm, text = _wrapped(wrapper, seed=61)
    _save_hub_layout(vlm, wrapper, tmp_path / "vlm")
    noisy(text, seed=62).save_pretrained(tmp_path / "text_ft")
    ck = Checkpoint(tmp_path / "vlm")
    assert ck.arch.wrapper == wrapper and ck.arch.model_type == WRAPPERS[wrapper][0]
    ids = random_ids(text.config.vocab_size)
    with torch.no_grad():
        ref = vlm(input_ids=ids).logits.float()
    out = []
    Engine(progress=False).run([ck, permute(ck, seed=3), from_module(vlm)], ids,
                               on_logits=lambda _b, lg, _i: out.append(lg))
    for k in range(3):  # the published layout, permuted, and transformers' in-memory layout
        got = torch.cat([o[k] for o in out])
        assert (got - ref).abs().max() / ref.abs().max() <= 1e-5
    rec = tmp_path / "r.p"
    r = main("--base_model_id", tmp_path / "text_ft", "--ft_model_id", tmp_path / "vlm", "--stat", "cos",
             "--save", rec, "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    import pickle
    res = pickle.loads(rec.read_bytes())
    assert res["log10_pvalue"] < -6
    assert any(wrapper in n and "vision tower is ignored" in n for n in res["notes"]), res["notes"]


def test_gemma4_tied_wrapper_norms_folded(tmp_path):
    """A Gemma 4 wrapper tied as published (its own tie_word_embeddings), saved by transformers, its norms
    folded: the view is untied and still a wrapper; its logits (transformers' module, and the block engine
    as match runs it) are the language model's; match with --fold_norms runs through main.py. --rotate is
    refused in one line (Gemma 4's post-norms), not with a failure on the wrapper's config."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    from family_models import logits, rel_diff
    from tracing.engine import Engine
    from tracing.errors import TracingError
    from tracing.models import load_module
    from tracing.transforms import NormsFolded, rotate
    family, vision, _ = WRAPPERS["gemma4"]
    text_cfg = family_config(family, tie_word_embeddings=True)
    text = family_model(text_cfg, seed=5)
    text.tie_weights()
    cfg = AutoConfig.for_model("gemma4", text_config=text_cfg.to_dict(), vision_config=vision, tie_word_embeddings=True)
    vlm = AutoModelForImageTextToText.from_config(cfg).eval()
    sd = vlm.state_dict()
    for k, v in text.state_dict().items():
        key = "model.language_model." + k[len("model."):] if k.startswith("model.") else k
        assert key in sd, key
        sd[key] = v
    vlm.load_state_dict(sd)
    vlm.save_pretrained(tmp_path / "vlm")
    ck = Checkpoint(tmp_path / "vlm")
    assert ck.arch.wrapper == "gemma4" and ck.arch.tied and "lm_head.weight" not in ck.names()
    ids = random_ids(text_cfg.vocab_size)
    ref = logits(text, ids)
    view = NormsFolded(ck)
    assert not view.arch.tied and view.arch.wrapper == "gemma4"
    assert not view.config.tie_word_embeddings and not view.config.text_config.tie_word_embeddings
    assert rel_diff(logits(load_module(view), ids), ref) <= 1e-5
    out = []
    Engine(progress=False).run([view], ids, on_logits=lambda _b, lg, _i: out.append(lg))
    assert rel_diff(torch.cat([o[0] for o in out]), ref) <= 1e-5
    with pytest.raises(TracingError, match="not function-preserving for gemma4_text"):
        rotate(ck, seed=6)
    fast = ["--stat", "match", "--dataset", "random", "--num_samples", "2", "--block_size", "16", "--quiet"]
    rec = tmp_path / "r.p"
    r = main("--base_model_id", tmp_path / "vlm", "--ft_model_id", tmp_path / "vlm", "--fold_norms", *fast, "--save", rec)
    assert r.returncode == 0 and rec.exists(), r.stderr[-2000:]
    never = tmp_path / "never.p"
    r = main("--base_model_id", tmp_path / "vlm", "--ft_model_id", tmp_path / "vlm", "--rotate", *fast, "--save", never)
    assert r.returncode == 2 and not never.exists(), r.stderr[-2000:]
    assert r.stderr.startswith("error:") and "not function-preserving" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_gemma4_embedding_distance_and_activation_statistics(tmp_path):
    """Gemma 4 (per-layer embeddings, shared keys and values, double-width MLPs): emb, l2 and csh find
    the noisy copy and not the independent model."""
    base, paths = save_trio(tmp_path, "gemma4_text")
    tokens = lambda: random_ids(base.config.vocab_size, n=4, T=32, seed=9)
    a = Checkpoint(paths["base"])
    for stat, level in (("emb", -6), ("l2", math.log10(0.02)), ("csh", -6)):
        assert run_stat(stat, a, Checkpoint(paths["ft"]), tokens=tokens).log10_pvalue < level, stat
        assert run_stat(stat, a, Checkpoint(paths["indep"]), tokens=tokens).log10_pvalue > math.log10(0.01), stat


# ---- Gemma 4 mixtures of experts (enable_moe_block: routed experts beside the dense MLP) ----------------
GEMMA4_MOE = dict(h=32, enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=16)


def test_gemma4_experts_permutation_alignment_and_power(tmp_path):
    """The dense MLP is the block's shared expert; the experts read their own norm. --permute preserves
    the logits (transformers and the block engine), --align recovers planted permutations, cos and match
    find the noisy copy expert by expert and not the independent model."""
    from tracing.align import align
    from tracing.engine import Engine
    from tracing.transforms import Permuted, permute, random_permutations, transform_module
    from family_models import logits, rel_diff
    base, paths = save_trio(tmp_path, "gemma4_text", **GEMMA4_MOE)
    ck, ids = Checkpoint(paths["base"]), random_ids(base.config.vocab_size)
    ref = logits(base, ids)
    assert rel_diff(ref, logits(transform_module(base, lambda s: permute(s, seed=5)), ids)) <= 1e-5
    out = []
    Engine(progress=False).run([permute(ck, seed=3)], ids, on_logits=lambda _b, lg, _i: out.append(lg))
    assert rel_diff(ref, torch.cat([o[0] for o in out])) <= 1e-5
    ft = Checkpoint(paths["ft"])
    pi_e, pi_i = random_permutations(ft.arch, seed=11)
    assert any(k[1] == "shared" for k in pi_i) and any(k[1] == 3 for k in pi_i)
    al = align(ck, Permuted(ft, pi_e, pi_i), progress=False)
    assert np.array_equal(al.pi_e, torch.argsort(pi_e).numpy())
    assert all(np.array_equal(al.pi_i[k], torch.argsort(p).numpy()) for k, p in pi_i.items())
    tokens = lambda: random_ids(base.config.vocab_size, n=4, T=32, seed=9)
    for stat, view in (("cos", lambda c: c), ("match", lambda c: permute(c, seed=3))):
        dep = run_stat(stat, ck, view(Checkpoint(paths["ft"])), tokens=tokens)
        assert dep.extra["experts"] and dep.log10_pvalue < -6, stat
        assert run_stat(stat, ck, view(Checkpoint(paths["indep"])), tokens=tokens).log10_pvalue > math.log10(0.01), stat


def test_gemma4_experts_grid_calibrated():
    p = []
    for k in range(30):
        c = family_config("gemma4_text", d=32, E=3, **GEMMA4_MOE)
        a, b = (from_module(family_model(c, seed=700 + 2 * k + s)) for s in (0, 1))
        p.append(10 ** run_stat("cos", a, b).log10_pvalue)
    assert scipy.stats.kstest(p, "uniform").pvalue > 0.01, sorted(p)


def test_gemma4_experts_refuse_norm_folding():
    from tracing.errors import TracingError
    from tracing.transforms import fold_norms
    model = from_module(family_model(family_config("gemma4_text", **GEMMA4_MOE), seed=1))
    with pytest.raises(TracingError, match="read norms of their own"):
        fold_norms(model)
