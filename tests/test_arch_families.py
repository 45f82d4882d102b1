"""Every supported family on tiny random models saved to disk: function-preserving transforms
(through transformers and through the block engine), alignment, cos/match power and
independence, calibration, experts (matching, upcycling) and the error paths."""
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from family_models import (DENSE, FRONTIER, FRONTIER_MOE, GATED, MOE, POST_NORM, STACKED_ON_DISK,
                           family_config, family_model, logits, noisy, random_ids, rel_diff, save_trio, upcycle)
from tracing.align import align
from tracing.engine import Engine
from tracing.errors import TracingError
from tracing.models import Checkpoint, from_module
from tracing.options import Options
from tracing.stats import get as get_stat
from tracing.stats.base import Context
from tracing.transforms import Permuted, permute, random_permutations, rotate, transform_module

TOL = 1e-5
ROOT = Path(__file__).resolve().parent.parent
NEW = DENSE + MOE + FRONTIER


def run_stat(name, base, ft, tokens=None, **opts):
    ctx = Context(Options(stat=[name], **opts), progress=False, tokens=tokens)
    return get_stat(name).fn(ctx, base, ft)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Per family: a base model, base + 5% noise, and an independent model, saved to disk."""
    root = tmp_path_factory.mktemp("families")
    cache = {}

    def make(family):
        if family not in cache:
            cache[family] = save_trio(root / family, family)
        return cache[family]
    return make


def engine_logits(lanes, ids):
    out = []
    Engine(progress=False).run(lanes, ids, on_logits=lambda _b, lg, _i: out.append(lg))
    return [torch.cat([o[k] for o in out]) for k in range(len(lanes))]


@pytest.mark.parametrize("family", NEW)
def test_transforms_preserve_logits(saved, family):
    base, paths = saved(family)
    ids = random_ids(base.config.vocab_size)
    ref = logits(base, ids)
    makes = [lambda s: permute(s, seed=5)]
    if family not in POST_NORM:
        makes.append(lambda s: rotate(permute(s, seed=5), seed=6))
    for make in makes:
        out = transform_module(base, make)
        assert rel_diff(ref, logits(out, ids)) <= TOL
        # the transform really changed the weights
        assert any((a - b).abs().max() > 1e-3 for a, b in zip(base.parameters(), out.parameters())
                   if a.shape == b.shape)
    ck = Checkpoint(paths["base"])
    lanes = [ck] + [make(ck) for make in makes]
    for got in engine_logits(lanes, ids):
        assert rel_diff(ref, got) <= TOL


@pytest.mark.parametrize("family", POST_NORM)
def test_rotation_refused_where_not_exact(saved, family):
    _, paths = saved(family)
    with pytest.raises(TracingError, match="not function-preserving"):
        rotate(Checkpoint(paths["base"]), seed=1)


@pytest.mark.parametrize("family", NEW)
def test_planted_permutation_recovered(saved, family):
    _, paths = saved(family)
    base, ft = Checkpoint(paths["base"]), Checkpoint(paths["ft"])
    pi_e, pi_i = random_permutations(ft.arch, seed=11)
    al = align(base, Permuted(ft, pi_e, pi_i), progress=False)
    inv = lambda p: torch.argsort(p).numpy()
    assert np.array_equal(al.pi_e, inv(pi_e))
    assert set(al.pi_i) == set(pi_i)
    for key, p in pi_i.items():
        assert np.array_equal(al.pi_i[key], inv(p)), key


@pytest.mark.parametrize("family", NEW)
def test_cos_power_and_independence(saved, family):
    _, paths = saved(family)
    base = Checkpoint(paths["base"])
    dep = run_stat("cos", base, Checkpoint(paths["ft"]))
    assert math.isfinite(dep.log10_pvalue) and dep.log10_pvalue < -6
    dep_perm = run_stat("cos", base, permute(Checkpoint(paths["ft"]), seed=4))
    assert dep_perm.log10_pvalue > -2  # cos is not meant to survive a permutation ...
    al = align(base, permute(Checkpoint(paths["ft"]), seed=4), progress=False)
    assert run_stat("cos", base, al.apply(permute(Checkpoint(paths["ft"]), seed=4))).log10_pvalue < -6  # ... --align is
    indep = run_stat("cos", base, Checkpoint(paths["indep"]))
    assert indep.log10_pvalue > math.log10(0.01)


@pytest.mark.parametrize("family", [f for f in GATED if f in NEW])
def test_match_survives_permutation(saved, family):
    base, paths = saved(family)
    tokens = lambda: random_ids(base.config.vocab_size, n=4, T=32, seed=9)
    b, ft = Checkpoint(paths["base"]), Checkpoint(paths["ft"])
    res = run_stat("match", b, permute(ft, seed=3), tokens=tokens)
    assert math.isfinite(res.log10_pvalue) and res.log10_pvalue < -6
    if family not in POST_NORM:
        assert run_stat("match", b, rotate(permute(ft, seed=3), seed=4), tokens=tokens).log10_pvalue < -6


def test_fused_role_views_read_from_disk(saved):
    base, paths = saved("phi3")
    ck = Checkpoint(paths["base"])
    a = ck.arch
    qkv = base.model.layers[1].self_attn.qkv_proj.weight.detach()
    q_rows = a.n_heads * a.head_dim
    assert torch.equal(ck.get(a.block_name(1, "q")), qkv[:q_rows])
    gu = base.model.layers[1].mlp.gate_up_proj.weight.detach()
    assert torch.equal(ck.get(a.block_name(1, "up")), gu[a.h:])
    neox, npaths = saved("gpt_neox")
    ck = Checkpoint(npaths["base"])
    hd = ck.arch.head_dim
    fused = neox.gpt_neox.layers[0].attention.query_key_value.weight.detach().view(ck.arch.n_heads, 3, hd, -1)
    assert torch.equal(ck.get(ck.arch.block_name(0, "k")), fused[:, 1].reshape(-1, ck.arch.d))


@pytest.mark.parametrize("family", MOE + tuple(f for f in FRONTIER_MOE if f not in STACKED_ON_DISK))
def test_experts_on_disk_and_in_memory(saved, family):
    """save_pretrained writes one tensor per expert; the module stacks them; both read the same."""
    model, paths = saved(family)
    from safetensors import safe_open
    with safe_open(paths["base"] / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    ck, mem = Checkpoint(paths["base"]), from_module(model)
    mixtral_names = family in ("mixtral", "minimax_m2")
    moe_prefix = "block_sparse_moe" if mixtral_names else "mlp"
    i = ck.arch.moe_blocks.index(True)  # DeepSeek's first block is dense
    assert f"model.layers.{i}.{moe_prefix}.experts.3.{'w3' if mixtral_names else 'up_proj'}.weight" in keys
    assert not any("gate_up_proj" in k for k in keys)
    for name in ck.arch.names():
        assert torch.equal(ck.get(name), mem.get(name)), name
    stacked = model.model.layers[1].mlp.experts.gate_up_proj.detach()
    h = ck.arch.h_expert
    assert torch.equal(ck.get(ck.arch.block_name(1, "expert_up", expert=2)), stacked[2, h:])


def _independent_cos(family, n, **cfg):
    out = []
    for k in range(n):
        c = family_config(family, **cfg)
        a, b = from_module(family_model(c, seed=100 + 2 * k)), from_module(family_model(c, seed=101 + 2 * k))
        out.append(10 ** run_stat("cos", a, b).log10_pvalue)
    return out


@pytest.mark.parametrize("family", ["gemma2", "qwen3_moe", "gemma4_text"])
def test_cos_calibrated(family):
    p = _independent_cos(family, 30, L=2, E=3)
    assert scipy.stats.kstest(p, "uniform").pvalue > 0.01


def test_upcycled_experts_each_significant(tmp_path):
    cfg = family_config("mistral", d=32, h=64, L=2)
    dense = family_model(cfg, seed=5)
    dense.save_pretrained(tmp_path / "dense")
    family_model(cfg, seed=6).save_pretrained(tmp_path / "other")
    upcycle(dense, E=4, seed=7).save_pretrained(tmp_path / "moe")
    moe = Checkpoint(tmp_path / "moe")
    res = run_stat("cos", Checkpoint(tmp_path / "dense"), moe)
    grid = np.array(res.extra["experts"], dtype=float)
    assert grid.shape == (2, 4) and np.all(grid < -6)
    assert res.log10_pvalue < -6 and len(res.per_layer) == 8
    back = run_stat("cos", moe, Checkpoint(tmp_path / "dense"))  # either order
    assert np.all(np.array(back.extra["experts"], dtype=float) < -6)
    indep = run_stat("cos", Checkpoint(tmp_path / "other"), moe)
    assert indep.log10_pvalue > math.log10(0.01)


def _permute_experts(model, seed):
    """θ₂'s experts (and router rows) reordered within each block: the function is unchanged."""
    import copy
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    sigmas = []
    with torch.no_grad():
        for layer in out.model.layers:
            if not hasattr(layer.mlp, "experts"):  # a dense block
                sigmas.append(None)
                continue
            s = torch.randperm(layer.mlp.experts.gate_up_proj.shape[0], generator=g)
            layer.mlp.experts.gate_up_proj.copy_(layer.mlp.experts.gate_up_proj[s])
            layer.mlp.experts.down_proj.copy_(layer.mlp.experts.down_proj[s])
            layer.mlp.gate.weight.copy_(layer.mlp.gate.weight[s])
            if hasattr(layer.mlp.gate, "e_score_correction_bias"):  # DeepSeek: the correction bias follows
                layer.mlp.gate.e_score_correction_bias.copy_(layer.mlp.gate.e_score_correction_bias[s])
            sigmas.append(s)
    return out, sigmas


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3", "qwen3_5_moe_text", "glm4_moe"])
def test_expert_matching_recovers_expert_permutation(tmp_path, family):
    cfg = family_config(family, E=6)
    base = family_model(cfg, seed=8)
    ft, sigmas = _permute_experts(noisy(base, seed=9), seed=10)
    ids = random_ids(cfg.vocab_size)
    assert rel_diff(logits(noisy(base, seed=9), ids), logits(ft, ids)) <= TOL
    base.save_pretrained(tmp_path / "a")
    ft.save_pretrained(tmp_path / "b")
    res = run_stat("cos", Checkpoint(tmp_path / "a"), Checkpoint(tmp_path / "b"))
    for i, s in enumerate(sigmas):
        if s is not None:
            assert res.extra["expert_matching"][str(i)] == torch.argsort(s).tolist()
    assert all(row["log10_pvalue"] < -6 for row in res.per_layer)
    n_shared = 0 if family == "mixtral" else 1
    moe = sum(s is not None for s in sigmas)
    assert len(res.per_layer) == moe * (6 + n_shared) + (len(sigmas) - moe)


# ---- errors through main.py ---------------------------------------------------------------
def main(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_error_paths(saved, tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    _, g2 = saved("gemma2")
    _, nx = saved("gpt_neox")
    _, mx = saved("mixtral")
    fast = ["--dataset", "random", "--num_samples", "2", "--block_size", "16", "--quiet"]
    cases = [
        ([bert, g2["base"], "--stat", "cos"], "unsupported architecture 'bert'"),
        ([g2["base"], g2["ft"], "--stat", "cos", "--rotate"], "not function-preserving"),
        ([nx["base"], nx["ft"], "--stat", "cos", "--rotate"], "not function-preserving"),
        ([nx["base"], nx["ft"], "--stat", "match", *fast], "use csh"),
        ([g2["base"], mx["base"], "--stat", "l2"], "same architecture"),
    ]
    for (a, b, *rest), needle in cases:
        out = tmp_path / "never.p"
        r = main("--base_model_id", a, "--ft_model_id", b, *rest, "--save", out)
        assert r.returncode == 2, (rest, r.stderr[-2000:])
        assert needle in r.stderr and r.stderr.startswith("error:"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists()


@pytest.mark.parametrize("stat", ["csh", "match"])
def test_activation_stats_on_experts(saved, stat):
    """csh and match on MoE pairs: each expert's activations over every token, experts paired
    (match survives a permutation of θ₂; csh, like cos, reads the unit order)."""
    model, paths = saved("qwen2_moe")
    tokens = lambda: random_ids(model.config.vocab_size, n=4, T=32, seed=9)
    base, ft = Checkpoint(paths["base"]), Checkpoint(paths["ft"])
    view = permute(ft, seed=2) if stat == "match" else Permuted(ft)
    res = run_stat(stat, base, view, tokens=tokens)
    assert res.log10_pvalue < -6
    # θ₁'s expert e is in the slot of θ₂ where --permute moved it (the shared expert stays)
    slot = {(i, int(e)): int(s) for i, p in view.pi_x.items() for s, e in enumerate(p)}
    assert all(row["partner"] == slot.get((row["layer"], row["expert"]), row["expert"]) for row in res.per_layer)
    assert np.all(np.array(res.extra["experts"], dtype=float) < -2)
    indep = run_stat(stat, base, Checkpoint(paths["indep"]), tokens=tokens)
    assert indep.log10_pvalue > math.log10(0.01)


def test_record_of_moe_pair_is_plain(saved, tmp_path):
    _, mx = saved("mixtral")
    out = tmp_path / "r.p"
    r = main("--base_model_id", mx["base"], "--ft_model_id", mx["ft"], "--stat", "cos", "--save", out, "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    with open(out, "rb") as f:
        rec = pickle.load(f)
    assert rec["log10_pvalue"] < -6 and len(rec["extra"]["experts"]) == 2


@pytest.mark.parametrize("family", NEW)
def test_every_statistic_runs_or_refuses(saved, family):
    """Each statistic gives a finite result on each family, or the documented one-line refusal."""
    model, paths = saved(family)
    tokens = lambda: random_ids(model.config.vocab_size, n=2, T=16, seed=4)
    base, ft = Checkpoint(paths["base"]), Checkpoint(paths["ft"])
    for stat in ("emb", "l2", "csh", "match", "jsd", "mode"):
        if stat == "match" and family == "gpt_neox":
            with pytest.raises(TracingError, match="use csh"):
                run_stat(stat, base, ft, tokens=tokens)
            continue
        res = run_stat(stat, base, ft, tokens=tokens, num_perm=2 if stat in ("l2", "mode") else None)
        value = res.log10_pvalue if res.log10_pvalue is not None else res.statistic
        assert math.isfinite(value), (stat, res)
        if stat == "mode":
            assert res.extra["loss_at_alpha0"] == pytest.approx(res.extra["curve"][0]["loss"])


def test_tied_gemma_rotation(tmp_path):
    """Gemma ties lm_head to the embedding and scales embeddings by √d: rotation unties it exactly."""
    cfg = family_config("gemma", tie_word_embeddings=True)
    model = family_model(cfg, seed=2)
    model.tie_weights()
    model.save_pretrained(tmp_path / "g")
    ids = random_ids(cfg.vocab_size)
    ref = logits(model, ids)
    make = lambda s: rotate(permute(s, seed=1), seed=2)
    out = transform_module(model, make)
    assert out.config.tie_word_embeddings is False
    assert rel_diff(ref, logits(out, ids)) <= TOL
    ck = Checkpoint(tmp_path / "g")
    assert ck.arch.tied
    for got in engine_logits([ck, make(ck)], ids):
        assert rel_diff(ref, got) <= TOL


def test_config_checked_against_fused_tensors(saved, tmp_path):
    """A config whose sizes disagree with a fused tensor's rows is a one-line error naming that tensor."""
    import shutil
    _, paths = saved("phi3")
    bad = tmp_path / "phi3"
    shutil.copytree(paths["base"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_key_value_heads"] = 1  # the q/k/v rows of qkv_proj no longer add up to the stored tensor
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TracingError, match=r"does not match the weights: tensor .*qkv_proj\.weight") as e:
        Checkpoint(bad)
    assert "\n" not in str(e.value)


def test_launch_over_mixed_families_records_what_cannot_be_compared(saved, tmp_path):
    """A model list mixing families: same-family pairs are computed; a pair whose layouts cannot be
    compared by a statistic ends as a failed pair with a one-line reason, and the others go on."""
    import yaml
    _, llama = saved("llama")
    _, neox = saved("gpt_neox")
    cfg = tmp_path / "mixed.yaml"
    cfg.write_text(yaml.safe_dump({"models": [str(llama["base"]), str(llama["ft"]), str(neox["base"])],
                                   "stat": "l2"}))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "launch.py", str(cfg), "--cluster", "local", "--max_workers", "1",
                        "--out", str(out), "--no-report"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1, r.stdout + r.stderr  # some pairs failed, none stopped the others
    recs = [pickle.loads(p.read_bytes()) for p in out.rglob("l2-*.p")]
    assert len(recs) == 3
    ok = [x for x in recs if x["status"] == "ok"]
    failed = [x for x in recs if x["status"] != "ok"]
    assert len(ok) == 1 and {ok[0]["base_model_id"], ok[0]["ft_model_id"]} == {str(llama["base"]), str(llama["ft"])}
    assert ok[0]["verdict"] == "dependent" and ok[0]["pvalue"] == 0.01  # the floor 1/(T+1), T = 99
    assert len(failed) == 2
    for x in failed:
        assert "\n" not in x["error"] and "architecture" in x["error"], x["error"]


@pytest.mark.parametrize("family", MOE + FRONTIER_MOE)
def test_l2_null_permutes_every_experts_units(saved, family):
    """The l2 permutation test draws a permutation of each expert's units (not only of the residual
    stream): the null copies are the function-preserving permutations of the whole model."""
    from tracing.stats.l2 import PermDraws
    _, paths = saved(family)
    base, ft, indep = (Checkpoint(paths[k]) for k in ("base", "ft", "indep"))
    draws = PermDraws(ft.arch, 3, seed=1)
    i = next(i for i in range(ft.arch.L) if ft.arch.is_moe_block(i))
    for t in range(3):
        view = draws.view(ft, t, i)
        units = ft.arch.units(i)
        assert set(view.pi_i) == {u.key for u in units} and len(units) > 1
        for u in units:
            w = ft.get(u.up)
            assert torch.equal(view.apply(u.up, w), w[view.pi_i[u.key]][:, draws.pi_e[t]])
            assert not torch.equal(view.pi_i[u.key], torch.arange(u.width))
    T = 19
    assert run_stat("l2", base, ft, num_perm=T).log10_pvalue == pytest.approx(math.log10(1 / (T + 1)))
    assert run_stat("l2", base, indep, num_perm=T).log10_pvalue > math.log10(0.05)


def test_l2_draws_of_dense_models_are_unchanged():
    """A dense model's null draws are what they always were (results stay reproducible)."""
    from tracing.stats.l2 import PermDraws
    from tracing.transforms import generator
    src = from_module(family_model(family_config("llama"), seed=0))
    arch = src.arch
    draws = PermDraws(arch, 4, seed=5)
    view = draws.view(src, 2, 1)
    old = torch.randperm(arch.h, generator=generator(5 * 7919 + 104729 * 2 + 2))
    assert torch.equal(view.pi_i[1], old)


def test_fine_grained_upcycling_found_by_rectangular_matching():
    """Experts narrower than the dense MLP they were split from: cos matches each expert's units into
    the dense MLP's (rectangular) and every expert is significant; an independent MoE is not."""
    dense = family_model(family_config("mistral", h=64), seed=21)
    moe = upcycle(dense, E=4, seed=22, split=True)
    res = run_stat("cos", from_module(dense), from_module(moe))
    assert res.extra["num_pairs"] == 2 * 4
    assert all(p is not None and p < -6 for row in res.extra["experts"] for p in row[:4]), res.extra["experts"]
    other = upcycle(family_model(family_config("mistral", h=64), seed=23), E=4, seed=24, split=True)
    assert run_stat("cos", from_module(dense), from_module(other)).log10_pvalue > math.log10(0.01)


def test_cos_calibrated_dense_against_narrower_experts():
    p = []
    for k in range(30):
        dense = family_model(family_config("mistral", h=64), seed=600 + k)
        moe = family_model(family_config("mixtral", h=16, E=4), seed=700 + k)
        p.append(10 ** run_stat("cos", from_module(dense), from_module(moe)).log10_pvalue)
    assert scipy.stats.kstest(p, "uniform").pvalue > 0.01, sorted(p)


def test_skipped_expert_pairs_name_the_moe_expert_in_either_order():
    """A pair left with too few rows is listed as [block, expert of the MoE side] whichever model is
    the dense one (it used to be [block, None] when θ₁ was dense)."""
    dense = family_model(family_config("mistral", h=64), seed=31)
    moe = family_model(family_config("mixtral", h=64, E=4), seed=32)
    with torch.no_grad():
        moe.model.layers[1].mlp.experts.gate_up_proj[2, 64 + 4:] = 0  # expert 2 of block 1 keeps 4 up rows
    a, b = from_module(dense), from_module(moe)
    for res in (run_stat("cos", a, b), run_stat("cos", b, a)):
        assert res.extra["skipped_pairs"] == [[1, 2]]
