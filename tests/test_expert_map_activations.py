"""match and csh between mixtures of experts of different depths: the block map of experts (cells of
the same block kind, experts paired per cell on their activations, Fisher over a cell's pairs,
Bonferroni overall p, the correspondence claimed only for a significant pair)."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from family_models import family_config, family_model, noisy, random_ids
from tracing.models import from_module
from tracing.options import Options
from tracing.stats import get as get_stat
from tracing.stats.base import Context
from tracing.stats.spec import EXPERT_MAP

ROOT = Path(__file__).resolve().parent.parent
STATS = ("match", "csh")


def run_stat(name, base, ft, tokens, **opts):
    return get_stat(name).fn(Context(Options(stat=[name], **opts), progress=False, tokens=lambda: tokens), base, ft)


def drop_blocks(model, drop):
    """The model without blocks ``drop`` (later blocks move up), its config's dense-first count adjusted."""
    c = model.config
    keep = [i for i in range(c.num_hidden_layers) if i not in drop]
    dense = sum(1 for i in keep if i < c.first_k_dense_replace)
    cfg = family_config("deepseek_v3", d=c.hidden_size, h=c.intermediate_size, E=c.n_routed_experts,
                        V=c.vocab_size, num_hidden_layers=len(keep), first_k_dense_replace=dense)
    out = family_model(cfg, seed=0)
    sd = {}
    for k, v in model.state_dict().items():
        if ".layers." in k:
            i = int(k.split(".layers.")[1].split(".")[0])
            if i not in keep:
                continue
            k = k.replace(f".layers.{i}.", f".layers.{keep.index(i)}.", 1)
        sd[k] = v
    out.load_state_dict(sd)
    return out


@pytest.fixture(scope="module")
def trio():
    """DeepSeek-shaped (a dense block, then three MoE blocks); a noisy copy without its dense block;
    an independent model without its dense block."""
    c = family_config("deepseek_v3", L=4)
    base = family_model(c, seed=41)
    return {"base": from_module(base), "pruned": from_module(drop_blocks(noisy(base, seed=42), [0])),
            "moe_pruned": from_module(drop_blocks(noisy(base, seed=44), [2])),
            "other": from_module(drop_blocks(family_model(c, seed=43), [0])),
            "tokens": random_ids(c.vocab_size, n=4, T=32, seed=9)}


@pytest.mark.parametrize("stat", STATS)
def test_copy_without_its_dense_block(trio, stat):
    """Block j of the copy is found in block j + 1; the dense block has no partner of its kind."""
    assert get_stat(stat).variant(trio["base"].arch, trio["pruned"].arch, Options(stat=[stat])).name == EXPERT_MAP
    res = run_stat(stat, trio["base"], trio["pruned"], trio["tokens"])
    assert res.extra["localized"] and res.extra["shape"] == [4, 3]
    assert [(i, j) for i, j, _ in res.extra["correspondence"]] == [(1, 0), (2, 1), (3, 2)]
    grid = np.array(res.extra["per_pair"], dtype=float)
    assert np.isnan(grid[0]).all() and not np.isnan(grid[1:]).any()
    assert res.log10_pvalue < -6
    # experts of a matched cell paired with themselves (θ₂ is a noisy copy; no expert was reordered)
    assert res.extra["expert_matching"]["1,0"] == list(range(4))


@pytest.mark.parametrize("stat", STATS)
def test_copy_with_a_moe_block_removed(trio, stat):
    """Dense with dense, MoE with MoE: 0→0, 1→1, 3→2."""
    res = run_stat(stat, trio["base"], trio["moe_pruned"], trio["tokens"])
    assert [(i, j) for i, j, _ in res.extra["correspondence"]] == [(0, 0), (1, 1), (3, 2)]
    grid = np.array(res.extra["per_pair"], dtype=float)
    assert np.isnan(grid[0, 1:]).all() and np.isnan(grid[1:, 0]).all()
    assert res.log10_pvalue < -6


@pytest.mark.parametrize("stat", STATS)
def test_independent_is_not_significant(trio, stat):
    res = run_stat(stat, trio["base"], trio["other"], trio["tokens"])
    assert res.log10_pvalue > math.log10(0.01) and res.extra["correspondence"] == []


def test_activations_spilled_to_memory_maps(trio, monkeypatch, tmp_path):
    """Beyond the budget θ₁'s activations go to float16 memory maps (deleted afterwards): the same map."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    res = run_stat("match", trio["base"], trio["pruned"], trio["tokens"], mem_budget_gb=1e-6)
    assert res.extra["activations_spilled"]
    assert [(i, j) for i, j, _ in res.extra["correspondence"]] == [(1, 0), (2, 1), (3, 2)]
    assert list(tmp_path.iterdir()) == []


def test_csh_map_calibrated():
    """Over 30 independent pairs (2 MoE blocks against 1): a fixed cell's p-value (Fisher over its
    expert pairs) is uniform, and the overall (Bonferroni) p-value is never anti-conservative."""
    overall, cells = [], []
    ca, cb = (family_config("qwen3_moe", d=16, h=64, E=2, V=64, L=L) for L in (2, 1))
    for k in range(30):
        a, b = from_module(family_model(ca, seed=3000 + k)), from_module(family_model(cb, seed=6000 + k))
        res = run_stat("csh", a, b, random_ids(64, n=2, T=32, seed=k))
        assert res.extra["shape"] == [2, 1]
        overall.append(10 ** res.log10_pvalue)
        cells.append(10 ** res.extra["per_pair"][1][0])
    assert scipy.stats.kstest(cells, "uniform").pvalue > 0.01, sorted(cells)
    assert scipy.stats.kstest(overall, "uniform", alternative="greater").pvalue > 0.01, sorted(overall)


# ---- bad input through main.py ---------------------------------------------------------------
def main(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A dense model (2 blocks) and mixtures of experts of 3 and 2 blocks (every block MoE)."""
    tmp = tmp_path_factory.mktemp("expert_map")
    for name, family, L, seed in (("dense", "qwen3", 2, 1), ("moe3", "qwen3_moe", 3, 2), ("moe2", "qwen3_moe", 2, 3)):
        family_model(family_config(family, L=L), seed=seed).save_pretrained(tmp / name)
    return tmp


@pytest.mark.parametrize("stat, pair, extra, needle", [
    ("match", ("dense", "moe3"), (), "only dense blocks and the other only mixture-of-experts blocks"),
    ("csh", ("dense", "moe3"), (), "only dense blocks and the other only mixture-of-experts blocks"),
    ("match", ("moe3", "moe2"), ("--rows", "8"), "drop --rows"),
])
def test_bad_input_is_one_line(folders, tmp_path, stat, pair, extra, needle):
    out = tmp_path / "never.p"
    r = main("--base_model_id", folders / pair[0], "--ft_model_id", folders / pair[1], "--stat", stat, "--save", out,
             "--quiet", "--dataset", "random", *extra)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("error:") and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
