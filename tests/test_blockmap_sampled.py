"""The sampled robust block map (``match --rows K`` on models of different depth, or ``--localized``):
θ₁'s K sampled units, the same in every block, against every unit of θ₂, each cell screened first
by the argmax agreements of its gate and |up| cosines; only cells that pass it are matched and tested,
the others get p = 1."""
import re

import numpy as np
import pytest
import torch
from scipy import stats as sps
from transformers import AutoModelForCausalLM

from tests.helpers import finetuned, save_trio, tiny_config, tiny_model
from tracing import compare_models
from tracing.stats import blockmap
from tracing.errors import TracingError

IDS = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(3))
LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _tiny(L, seed, h=128, d=32):
    return tiny_model(tiny_config(L=L, d=d, h=h, V=64), seed=seed)


def blocks_of(model, blocks):
    """A copy of ``model`` keeping ``blocks`` (block j of the copy = block blocks[j])."""
    cfg = model.config.to_dict()
    cfg["num_hidden_layers"] = len(blocks)
    out = AutoModelForCausalLM.from_config(type(model.config)(**cfg)).eval()
    sd = {}
    for name, t in model.state_dict().items():
        m = LAYER.match(name)
        if m is None:
            sd[name] = t
        elif int(m.group(1)) in blocks:
            for j in [j for j, i in enumerate(blocks) if i == int(m.group(1))]:
                sd[f"model.layers.{j}.{m.group(2)}"] = t
    out.load_state_dict(sd)
    return out


def corr_of(res) -> dict:
    return {int(j): int(i) for i, j, _lp in res["correspondence"]}


def test_removed_blocks_found_through_a_permutation():
    """A fine-tune with blocks 1 and 4 removed and every unit and residual dimension permuted: the
    sampled robust map finds the source of every remaining block, screening out most other cells."""
    base = _tiny(6, 0)
    pruned = blocks_of(finetuned(base, seed=1), [0, 2, 3, 5])
    res = compare_models(base, pruned, stat="match", tokens=IDS, rows=64, permute=True)
    assert corr_of(res) == {0: 0, 1: 2, 2: 3, 3: 5} and res.verdict.startswith("dependent")
    ex, n = res["extra"], np.array(res["extra"]["per_pair_n"])
    assert ex["rows"] == 64 and ex["rows_of"] == 128
    assert ex["screen"]["screened_out"] >= 16  # 24 cells, 4 related
    assert all(n[i, j] == 64 for j, i in corr_of(res).items())  # claimed cells were tested on all K units
    grid = np.array(res["per_pair"])
    assert ((n == 0) == (grid == 0.0)).all() and (n == 0).sum() == ex["screen"]["screened_out"]
    assert f"{ex['screen']['tested']} block pairs passed the screen and were tested" in res.summary()
    # independent control of the same shapes: nothing claimed
    other = blocks_of(_tiny(6, 9), [0, 2, 3, 5])
    ctl = compare_models(base, other, stat="match", tokens=IDS, rows=64, permute=True)
    assert ctl["correspondence"] == [] and ctl.log10_pvalue > -2


def test_trained_models_blocks_removed(tmp_path):
    """The trained demo family: a fine-tune of base-a with block 1 removed, its units and residual
    dimensions permuted, is mapped block for block with 32 sampled units; base-b's copy is not."""
    from tests.test_blockmap import DATA, derive
    from tracing import compare, demo
    demo.ensure_built(progress=False)
    pruned = derive("demo:a-docs", tmp_path / "pruned", blocks=[0, 2, 3])
    control = derive("demo:base-b", tmp_path / "control", blocks=[0, 2, 3])
    res = compare("demo:base-a", pruned, stat="match", rows=32, permute=True, **DATA)
    assert corr_of(res) == {0: 0, 1: 2, 2: 3} and res.verdict.startswith("dependent")
    assert res["extra"]["screen"]["tested"] <= 6
    ctl = compare("demo:base-a", control, stat="match", rows=32, permute=True, **DATA)
    assert ctl["correspondence"] == [] and ctl.log10_pvalue > -2


def test_only_the_sampled_units_are_kept(monkeypatch):
    """θ₁'s store holds K units per block (the same indices in every block); θ₂ runs once."""
    shapes, runs = [], []
    put = blockmap.ActivationStore.put
    monkeypatch.setattr(blockmap.ActivationStore, "put",
                        lambda self, i, g, u, k: shapes.append(tuple(g.shape)) or put(self, i, g, u, k))
    from tracing.engine import Engine
    real = Engine.run
    monkeypatch.setattr(Engine, "run", lambda self, lanes, *a, **k: runs.append(len(lanes)) or real(self, lanes, *a, **k))
    res = compare_models(_tiny(3, 1), _tiny(2, 2), stat="match", tokens=IDS, rows=48)
    assert shapes == [(IDS.numel(), 48)] * 3 and runs == [1, 1]
    assert np.array(res["extra"]["screen"]["agreements"]).shape == (3, 2)


def test_equal_to_the_full_map_when_every_cell_is_solved(monkeypatch):
    """With K = h and no screen, the sampled map is the full map, cell for cell."""
    a, b = _tiny(3, 1, h=64), _tiny(2, 2, h=64)
    full = compare_models(a, b, stat="match", tokens=IDS)
    monkeypatch.setattr(blockmap, "screen_threshold", lambda n1, n2: 0)
    every = compare_models(a, b, stat="match", tokens=IDS, rows=64)
    assert every["extra"]["screen"]["screened_out"] == 0
    assert np.array_equal(np.array(every["per_pair"]), np.array(full["per_pair"]))


def _calibration(n_pairs: int):
    cells, overall, screened = [], [], 0
    for k in range(n_pairs):
        a, b = _tiny(1, 2000 + k), _tiny(2, 7000 + k, h=96, d=24)
        res = compare_models(a, b, stat="match", tokens=IDS, rows=64)
        cells.append(10 ** res["per_pair"][0][1])
        overall.append(res.pvalue)
        screened += res["extra"]["screen"]["screened_out"]
    return cells, overall, screened


def test_calibrated_on_independent_pairs_of_different_depth():
    """30 independent pairs (1 vs 2 blocks, h 128 vs 96, d 32 vs 24): the screen leaves most cells
    untested (p = 1, never smaller than valid), no cell or overall p-value is small more often than
    its level allows."""
    cells, overall, screened = _calibration(30)
    assert screened >= 0.8 * 30 * 2
    for level in (0.05, 0.2):
        assert sps.binomtest(sum(p <= level for p in cells), 30, level, alternative="greater").pvalue > 0.01
    assert sps.binomtest(sum(p < 0.05 for p in overall), 30, 0.05, alternative="greater").pvalue > 0.01


def test_full_cells_calibrated(monkeypatch):
    """Every cell solved on all K units (no screen): a cell's p-values over 30 independent pairs are uniform."""
    monkeypatch.setattr(blockmap, "screen_threshold", lambda n1, n2: 0)
    cells, _overall, screened = _calibration(30)
    assert screened == 0 and sps.kstest(cells, "uniform").pvalue > 0.01


def test_rows_needs_the_block_map(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    paths = save_trio(tmp_path)
    out = tmp_path / "out.p"
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "main.py"), "--base_model_id",
                        paths["base"], "--ft_model_id", paths["ft"], "--stat", "match", "--rows", "32",
                        "--dataset", "random", "--save", str(out), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:") and "--localized" in r.stderr
    with pytest.raises(TracingError, match="larger than θ₁'s MLP width"):
        compare_models(_tiny(2, 1, h=64), _tiny(3, 2), stat="match", tokens=IDS, rows=96)


def test_sizing_of_the_sampled_map():
    """The 30 × 20 grid of a SmolLM2-135M shape: sampling and screening cut the estimate many-fold."""
    from types import SimpleNamespace

    from tracing.arch import arch_from_config
    from tracing.options import Options
    from tracing.stats import get
    from tracing.stats.cost import Sizing

    def info(L):
        cfg = tiny_config(L=L, d=576, h=1536, V=49152, num_attention_heads=9, num_key_value_heads=3)
        return SimpleNamespace(arch=arch_from_config(cfg), params=135 * 10**6, bytes_per_param=2)
    opts = dict(stat="match", localized=True, num_samples=8, block_size=128)
    full = get("match").cost(Sizing.from_infos(info(30), info(20), Options(**opts)))
    sampled = get("match").cost(Sizing.from_infos(info(30), info(20), Options(**opts, rows=256)))
    assert sampled.seconds < full.seconds / 5 and sampled.mem_bytes <= full.mem_bytes
