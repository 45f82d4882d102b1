"""Fine-grained upcycling whatever the partition of the dense units: a dense MLP's units shuffled,
then split among narrower experts. ``cos --align`` matches each expert's units to the dense units by
gate rows (rectangular) and tests the up-row matching against that one."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from family_models import family_config, family_model, logits, random_ids, rel_diff, upcycle
from tracing.api import compare_models
from tracing.errors import TracingError
from tracing.models import from_module
from tracing.options import Options
from tracing.stats.base import Context

ROOT = Path(__file__).resolve().parent.parent


def _aligned(dense, moe, **opts):
    res = compare_models(dense, moe, "cos", align=True, **opts)
    return res.record["aligned"]


def test_shuffling_dense_units_preserves_function():
    """The builder's shuffle is an MLP permutation of the dense model: its logits are unchanged."""
    from tracing.transforms import Permuted
    dense = family_model(family_config("mistral", h=64), seed=31)
    _, orders = upcycle(dense, E=4, seed=32, split=True, shuffle=True)
    src = from_module(dense)
    view = Permuted(src, None, {i: o for i, o in enumerate(orders)})
    ids = random_ids(dense.config.vocab_size)
    from tracing.engine import Engine
    out = []
    Engine(progress=False).run([src, view], ids, on_logits=lambda _b, lg, _i: out.append(lg))
    assert rel_diff(torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])) <= 1e-5
    assert rel_diff(logits(dense, ids), torch.cat([o[0] for o in out])) <= 1e-5


def test_gate_matching_recovers_planted_split():
    """Each expert unit's partner by gate rows is the dense unit it was split from (noise-free)."""
    from tracing.stats.experts import upcycled_matchings
    dense = family_model(family_config("mistral", h=64), seed=33)
    moe, orders = upcycle(dense, E=4, seed=34, split=True, shuffle=True, noise=0.0)
    ctx = Context(Options(stat=["cos"]), progress=False)
    pairs, gate, up = upcycled_matchings(ctx, from_module(dense), from_module(moe))
    assert len(pairs) == 2 * 4
    w = 16
    for k, pair in enumerate(pairs):
        planted = orders[pair.block][pair.b.expert * w:(pair.b.expert + 1) * w].numpy()
        for m in (gate[k], up[k]):  # dense rows (64) against expert rows (16): keyed by the expert's units
            assert np.array_equal(np.sort(m.cols), np.arange(w))
            partner = dict(zip(m.cols.tolist(), m.rows.tolist()))
            assert [partner[j] for j in range(w)] == planted.tolist()


def test_shuffled_split_found_with_align():
    """Shuffled splits: every expert significant after alignment, in either order and after
    --permute; plain cos (the identity order) does not see them."""
    dense = family_model(family_config("mistral", h=64), seed=35)
    moe, _ = upcycle(dense, E=4, seed=36, split=True, shuffle=True)
    for a, b, opts in ((dense, moe, {}), (moe, dense, {}), (dense, moe, {"permute": True})):
        rec = compare_models(a, b, "cos", align=True, **opts).record
        al = rec["aligned"]
        assert al["log10_pvalue"] < -20 and al["verdict"] == "dependent", (opts, al["log10_pvalue"])
        grid = np.array(al["extra"]["experts"], dtype=float)
        assert grid.shape == (2, 4) and np.all(grid < -6), grid
        assert len(al["per_layer"]) == 8
    assert compare_models(dense, moe, "cos").log10_pvalue > math.log10(0.01)


def test_independent_upcycled_not_dependent():
    dense = family_model(family_config("mistral", h=64), seed=37)
    other, _ = upcycle(family_model(family_config("mistral", h=64), seed=38), E=4, seed=39, split=True, shuffle=True)
    assert _aligned(dense, other)["log10_pvalue"] > math.log10(0.01)


def test_aligned_upcycling_calibrated():
    """Independent dense / narrow-expert pairs: the aligned p-values are uniform (KS over 30 pairs)."""
    p = []
    for k in range(30):
        dense = family_model(family_config("mistral", h=64), seed=800 + k)
        moe = family_model(family_config("mixtral", h=16, E=4), seed=900 + k)
        p.append(10 ** _aligned(dense, moe)["log10_pvalue"])
    ks = scipy.stats.kstest(p, "uniform").pvalue
    print(f"aligned upcycling calibration: KS p = {ks:.3f}, rejected at 0.05: {sum(x <= 0.05 for x in p)}/30")
    assert ks > 0.01, sorted(p)


@pytest.mark.parametrize("noise", [0.2, 0.5, 1.0])
def test_shuffled_split_power_over_seeds(noise):
    """Power: shuffled splits with noise up to the weights' own scale, 10 seeds each, all detected at
    0.01 after alignment (plain cos, which reads the identity order, is printed for comparison)."""
    hits = raw = 0
    for k in range(10):
        dense = family_model(family_config("mistral", h=64), seed=1000 + k)
        moe, _ = upcycle(dense, E=4, seed=1100 + k, split=True, shuffle=True, noise=noise)
        rec = compare_models(dense, moe, "cos", align=True).record
        hits += rec["aligned"]["log10_pvalue"] <= math.log10(0.01)
        raw += rec["log10_pvalue"] <= math.log10(0.01)
    print(f"shuffled splits, noise {noise}: aligned {hits}/10, plain {raw}/10 at 0.01")
    assert hits == 10


def _main(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_activation_stats_name_the_width_and_what_to_use(tmp_path):
    """csh and match pair only MLPs of equal width: one clear line naming the widths and cos --align."""
    dense = family_model(family_config("mistral", h=64), seed=40)
    moe, _ = upcycle(dense, E=4, seed=41, split=True, shuffle=True)
    with pytest.raises(TracingError, match="no expert has the dense MLP's width .h 64 vs experts 16.*cos --align"):
        compare_models(moe, dense, "match", dataset="random", num_samples=2, block_size=16)
    with pytest.raises(TracingError, match="--align between a dense model and a mixture of experts is available for cos"):
        compare_models(dense, moe, "l2", align=True, num_perm=3)
    dense.save_pretrained(tmp_path / "dense")
    moe.save_pretrained(tmp_path / "moe")
    out = tmp_path / "csh.p"
    r = _main("--base_model_id", tmp_path / "dense", "--ft_model_id", tmp_path / "moe", "--stat", "csh",
              "--dataset", "random", "--num_samples", "2", "--block_size", "16", "--quiet", "--save", out)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no expert has the dense MLP's width" in r.stderr and "cos --align" in r.stderr, r.stderr
    assert not out.exists()
