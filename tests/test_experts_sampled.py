"""Mixtures of experts on sampled rows (``cos --rows K``) and the order of experts under
``--permute`` / ``--align``: calibration over independent pairs, power on noisy copies, agreement
with the full grid when K is every row, rows read expert by expert, the block map, bad input; the
expert order drawn by ``--permute`` keeps the logits and is recovered."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from family_models import family_config, family_model, logits, noisy, random_ids, rel_diff
from test_frontier_families import _drop_first_block, main, run_stat
from tracing.align import align
from tracing.errors import TracingError
from tracing.models import Checkpoint, from_module
from tracing.transforms import Permuted, permute, transform_module

TOL = 1e-5


def _experts_moved(model, seed):
    """``model`` with only its experts reordered (as ``--permute`` draws them) and the orders drawn."""
    view = permute(from_module(model), seed=seed, mlp=False, residual=False)
    return transform_module(model, lambda s: Permuted(s, pi_x=view.pi_x)), view.pi_x


# ---- the sampled experts grid ------------------------------------------------------------------
@pytest.mark.parametrize("family", ["deepseek_v3", "qwen3_5_moe_text", "gpt_oss"])
def test_sampled_experts_grid_calibrated(family):
    """The overall p of the sampled grid is uniform over independent pairs (KS over 30 pairs)."""
    p = []
    for k in range(30):
        c = family_config(family, d=32, h=32, E=3)
        a, b = (from_module(family_model(c, seed=700 + 2 * k + s)) for s in (0, 1))
        res = run_stat("cos", a, b, rows=12, seed=k)
        assert res.extra["rows"] == 12 and res.extra["num_pairs"] > 0
        p.append(10 ** res.log10_pvalue)
    assert scipy.stats.kstest(p, "uniform").pvalue > 0.01, sorted(p)


def test_sampled_power_reads_rows_of_each_expert(tmp_path):
    """DeepSeek-shaped models on disk: a noisy copy with its experts reordered is significant on 16
    sampled rows per expert, its expert order is recovered, an independent model is not significant;
    every expert's and shared expert's up rows are read as rows, never as whole tensors."""
    c = family_config("deepseek_v3", d=32, h=64, E=6, L=3)
    base = family_model(c, seed=21)
    moved, pi_x = _experts_moved(noisy(base, seed=22), seed=23)
    for tag, m in (("base", base), ("ft", moved), ("indep", family_model(c, seed=24))):
        m.save_pretrained(tmp_path / tag)
    a, ft = Checkpoint(tmp_path / "base"), Checkpoint(tmp_path / "ft")
    whole = []
    for ck in (a, ft):
        get = ck.backend.get
        ck.backend.get = lambda name, dtype=torch.float32, get=get: (whole.append(name), get(name, dtype))[1]
    res = run_stat("cos", a, ft, rows=16)
    assert res.log10_pvalue < -20 and all(r["log10_pvalue"] < -6 for r in res.per_layer)
    assert all(r["n_pairs"] == 16 for r in res.per_layer)
    for i, p in pi_x.items():
        assert res.extra["expert_matching"][str(i)] == torch.argsort(p).tolist()
    assert not [n for n in whole if "up_proj" in n], whole
    assert res.extra["rows_of"] == 32 and res.extra["rows_of_units"] == {"dense": 64, "routed": 32, "shared": 32}
    indep = run_stat("cos", a, Checkpoint(tmp_path / "indep"), rows=16)
    assert indep.log10_pvalue > math.log10(0.01)


@pytest.mark.parametrize("family", ["qwen3_5_moe_text", "gpt_oss"])
def test_every_row_sampled_equals_the_full_grid(family):
    """K = the experts' width: the same experts paired and the same per-pair values as the full grid."""
    c = family_config(family, d=32, h=32, E=4)
    base = family_model(c, seed=31)
    moved, _ = _experts_moved(noisy(base, seed=32, noise=0.3), seed=33)
    a, b = from_module(base), from_module(moved)
    full, sampled = run_stat("cos", a, b), run_stat("cos", a, b, rows=16)
    assert sampled.extra["expert_matching"] == full.extra["expert_matching"]
    assert [(r["layer"], r["expert"], r["partner"], r["log10_pvalue"]) for r in sampled.per_layer] \
        == [(r["layer"], r["expert"], r["partner"], r["log10_pvalue"]) for r in full.per_layer]
    # the same cosines, up to float32 rounding (a transposed expert's rows are laid out differently)
    assert [r["median_cos"] for r in sampled.per_layer] == pytest.approx([r["median_cos"] for r in full.per_layer],
                                                                         rel=1e-6)
    assert sampled.log10_pvalue == full.log10_pvalue
    fewer = run_stat("cos", a, b, rows=12)
    assert all(r["n_pairs"] == 12 for r in fewer.per_layer) and fewer.log10_pvalue != full.log10_pvalue


def test_sampled_block_map_of_a_copy_without_its_dense_block(tmp_path):
    c = family_config("deepseek_v3", L=4)
    base = family_model(c, seed=41)
    base.save_pretrained(tmp_path / "base")
    _drop_first_block(noisy(base, seed=42)).save_pretrained(tmp_path / "pruned")
    _drop_first_block(family_model(c, seed=43)).save_pretrained(tmp_path / "other")
    res = run_stat("cos", Checkpoint(tmp_path / "base"), Checkpoint(tmp_path / "pruned"), rows=16)
    assert [(i, j) for i, j, _ in res.extra["correspondence"]] == [(1, 0), (2, 1), (3, 2)]
    assert res.log10_pvalue < -6 and res.extra["rows"] == 16
    indep = run_stat("cos", Checkpoint(tmp_path / "base"), Checkpoint(tmp_path / "other"), rows=16)
    assert indep.log10_pvalue > math.log10(0.01) and indep.extra["correspondence"] == []


def test_rows_wider_than_an_expert_is_one_line(tmp_path):
    c = family_config("deepseek_v3")  # routed and shared experts of width 32, a dense block of 64
    with pytest.raises(TracingError, match="narrowest MLP or expert"):
        run_stat("cos", from_module(family_model(c, seed=1)), from_module(family_model(c, seed=2)), rows=33)
    family_model(c, seed=51).save_pretrained(tmp_path / "a")
    family_model(c, seed=52).save_pretrained(tmp_path / "b")
    out = tmp_path / "never.p"
    r = main("--base_model_id", tmp_path / "a", "--ft_model_id", tmp_path / "b", "--stat", "cos", "--rows", "33",
             "--save", out, "--quiet")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "--rows 33" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


# ---- the order of experts under --permute and --align -------------------------------------------
GROUPED = dict(n_group=2, topk_group=1)  # DeepSeek's grouped routing: 2 groups, the best one chosen


@pytest.mark.parametrize("family, extra", [("deepseek_v3", GROUPED), ("glm4_moe", GROUPED), ("qwen3_5_moe_text", {}),
                                           ("gpt_oss", {}), ("llama4_text", {}), ("ernie4_5_moe", {}),
                                           ("minimax_m2", {})])
def test_permuted_expert_order_preserves_logits(family, extra):
    c = family_config(family, E=4, **extra)
    model = family_model(c, seed=61)
    ids = random_ids(c.vocab_size)
    view = permute(from_module(model), seed=5)
    assert view.pi_x and any(not torch.equal(p, torch.arange(4)) for p in view.pi_x.values())
    assert rel_diff(logits(model, ids), logits(transform_module(model, lambda s: permute(s, seed=5)), ids)) <= TOL
    if extra:  # the draw moves whole groups: an order that mixes the groups changes the function
        mixed = {i: torch.tensor([0, 2, 1, 3]) for i in view.pi_x}
        out = transform_module(model, lambda s: Permuted(s, pi_x=mixed))
        assert rel_diff(logits(model, ids), logits(out, ids)) > 1e-3


@pytest.mark.parametrize("family", ["deepseek_v3", "qwen3_5_moe_text", "gpt_oss"])
def test_align_recovers_the_expert_order(family):
    """--align undoes the whole --permute draw (residual, expert order, each expert's units), and
    cos is significant after it; the experts grid alone recovers an expert order."""
    c = family_config(family, E=4)
    base = family_model(c, seed=71)
    a, ft = from_module(base), from_module(noisy(base, seed=72))
    hidden = permute(ft, seed=73)
    al = align(a, hidden, progress=False)
    inv = lambda p: torch.argsort(p).numpy()
    assert np.array_equal(al.pi_e, inv(hidden.pi_e))
    for i, p in hidden.pi_x.items():
        assert np.array_equal(al.pi_x[i], inv(p)), i
        for e in range(len(p)):  # the expert in slot e is the hidden expert inv(p)[e], its units undone
            assert np.array_equal(al.pi_i[i, e], inv(hidden.pi_i[i, int(inv(p)[e])])), (i, e)
    assert run_stat("cos", a, al.apply(hidden)).log10_pvalue < -6
    moved = permute(ft, seed=73, mlp=False, residual=False)
    for rows in (None, 8):
        res = run_stat("cos", a, moved, rows=rows)
        assert all(res.extra["expert_matching"][str(i)] == torch.argsort(p).tolist() for i, p in moved.pi_x.items())


def test_permuted_expert_rows_match_the_full_view():
    """Sampled rows of a view whose experts were reordered are the rows of the full view."""
    from tracing.stats.base import sampled_rows
    c = family_config("deepseek_v3", E=4)
    view = permute(from_module(family_model(c, seed=81)), seed=9)
    idx = sampled_rows(32, 12, seed=2)
    for u in view.arch.units(1):
        for name in (u.up, u.gate):
            assert torch.equal(view.get_rows(name, idx), view.get(name)[torch.from_numpy(idx)]), name
