"""Localized testing (the block map) on the trained demo family, where the truth is known.

Derived models are written as real model folders (safetensors + config.json + the tokenizer):
blocks removed, MLP units pruned, the residual width pruned, blocks duplicated (depth upscaling /
passthrough stacks). θ₁ is demo:base-a; θ₂ is derived from its fine-tune demo:a-docs, and the
control from the independent demo:base-b.
"""
import json
import math
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy import stats as sps

from tracing import compare, compare_models, demo
from tracing.options import Options
from tracing.stats import get as get_spec

ROOT = Path(__file__).resolve().parents[1]
DATA = dict(dataset="demo", num_samples=4, block_size=64)
LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@pytest.fixture(scope="module")
def family():
    demo.ensure_built(progress=False)


def derive(src_spec: str, out: Path, blocks=None, keep_units: float = 1.0, keep_dims: float = 1.0,
           seed: int = 0) -> str:
    """A model folder derived from a demo model: ``blocks`` (θ₂ block j = source block blocks[j]),
    a sorted fraction of the MLP units of every block, and a sorted fraction of the residual dims."""
    src = demo.resolve_demo(src_spec)
    cfg = json.loads((src / "config.json").read_text())
    sd = load_file(str(src / "model.safetensors"))
    L, d, h = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]
    blocks = list(range(L)) if blocks is None else list(blocks)
    g = torch.Generator().manual_seed(seed)
    dims = torch.sort(torch.randperm(d, generator=g)[: int(round(keep_dims * d))]).values
    new = {}
    for name, t in sd.items():
        m = LAYER.match(name)
        if m is None:
            if name.endswith("norm.weight"):
                new[name] = t[dims]
            else:  # embed_tokens, lm_head: [V, d]
                new[name] = t[:, dims]
            continue
        for j, i in enumerate(blocks):
            if int(m.group(1)) != i:
                continue
            role = m.group(2)
            units = torch.sort(torch.randperm(h, generator=torch.Generator().manual_seed(seed + 100 + j))
                               [: int(round(keep_units * h))]).values
            if role.endswith("layernorm.weight"):
                x = t[dims]
            elif role.startswith("mlp.down_proj"):
                x = t[dims][:, units]
            elif role.startswith("mlp."):  # gate, up: [h, d]
                x = t[units][:, dims]
            elif role.startswith("self_attn.o_proj"):
                x = t[dims]
            else:  # q, k, v: [heads * head_dim, d]
                x = t[:, dims]
            new[f"model.layers.{j}.{role}"] = x.contiguous()
    cfg.update(num_hidden_layers=len(blocks), hidden_size=int(len(dims)),
               intermediate_size=int(round(keep_units * h)))
    out.mkdir(parents=True)
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg))
    for f in src.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy(f, out / f.name)
    return str(out)


def corr_of(res) -> dict:
    return {int(j): int(i) for i, j, _lp in res["correspondence"]}


@pytest.mark.parametrize("stat", ["cos", "match"])
def test_blocks_removed(family, tmp_path, stat):
    pruned = derive("demo:a-docs", tmp_path / "pruned", blocks=[0, 2, 3])
    control = derive("demo:base-b", tmp_path / "control", blocks=[0, 2, 3])
    res = compare("demo:base-a", pruned, stat=stat, **DATA)
    assert corr_of(res) == {0: 0, 1: 2, 2: 3}
    assert all(lp < -4 for _i, _j, lp in res["correspondence"])
    assert np.array(res["per_pair"]).shape == (4, 3)
    assert res.verdict.startswith("dependent") and res["matched"] >= 3
    assert any("block map" in n for n in res["notes"])  # chosen automatically, with a note
    ctl = compare("demo:base-a", control, stat=stat, **DATA)
    assert ctl["matched"] == 0 and ctl["correspondence"] == []
    assert ctl.log10_pvalue > -2


@pytest.mark.parametrize("stat", ["cos", "match"])
def test_mlp_units_pruned(family, tmp_path, stat):
    ft = derive("demo:a-docs", tmp_path / "units", keep_units=0.75)
    res = compare("demo:base-a", ft, stat=stat, localized=True, **DATA)
    assert corr_of(res) == {j: j for j in range(4)}
    if stat == "cos":  # the ordinary path: a rectangular matching per block
        plain = compare("demo:base-a", ft, stat="cos")
        assert plain.get("per_pair") is None and len(plain.per_layer) == 4
        assert all(r["n_pairs"] == 96 and r["log10_pvalue"] < -4 for r in plain.per_layer)


def test_residual_width_pruned(family, tmp_path):
    ft = derive("demo:a-docs", tmp_path / "dims", keep_dims=0.75)
    res = compare("demo:base-a", ft, stat="match", **DATA)
    assert corr_of(res) == {j: j for j in range(4)}
    assert all(lp < -4 for _i, _j, lp in res["correspondence"])


@pytest.mark.parametrize("stat", ["cos", "match"])
def test_depth_upscaling(family, tmp_path, stat):
    ft = derive("demo:a-docs", tmp_path / "up", blocks=[0, 1, 2, 1, 2, 3])
    res = compare("demo:base-a", ft, stat=stat, **DATA)
    assert corr_of(res) == {0: 0, 1: 1, 2: 2, 3: 1, 4: 2, 5: 3}


@pytest.mark.parametrize("stat", ["cos", "match"])
@pytest.mark.parametrize("ft", ["a-docs", "base-b"])
def test_diagonal_equals_per_layer(family, stat, ft):
    plain = compare("demo:base-a", f"demo:{ft}", stat=stat, **DATA)
    local = compare("demo:base-a", f"demo:{ft}", stat=stat, localized=True, **DATA)
    grid = np.array(local["per_pair"])
    diag = [r["log10_pvalue"] for r in plain.per_layer]
    assert np.allclose(np.diag(grid), diag, atol=1e-9, rtol=0)
    assert local.log10_pvalue == pytest.approx(min(0.0, math.log10(16) + np.nanmin(grid)))


def test_sampled_block_map_finds_the_removed_blocks(family, tmp_path, monkeypatch):
    """cos --rows on models of different depth: the same K rows of every block, each read once
    (θ₁'s kept for every cell), give the same correspondence as the full block map."""
    from tracing.models import Checkpoint
    pruned = derive("demo:a-docs", tmp_path / "pruned", blocks=[0, 2, 3])
    control = derive("demo:base-b", tmp_path / "control", blocks=[0, 2, 3])
    reads = []
    real = Checkpoint.get_rows
    monkeypatch.setattr(Checkpoint, "get_rows",
                        lambda self, *a, **k: reads.append((self.label, a[0])) or real(self, *a, **k))
    monkeypatch.setattr(Checkpoint, "get", lambda *a, **k: pytest.fail("a whole up_proj was read"))
    res = compare("demo:base-a", pruned, stat="cos", rows=64)
    assert len(reads) == len(set(reads)) == 4 + 3  # each block of each model read once
    assert corr_of(res) == {0: 0, 1: 2, 2: 3} and res.verdict.startswith("dependent")
    assert res["extra"]["rows"] == 64 and np.array(res["per_pair"]).shape == (4, 3)
    assert min(lp for row in res["per_pair"] for lp in row) >= -math.log10(math.factorial(64)) - 1e-6
    ctl = compare("demo:base-a", control, stat="cos", rows=64)
    assert ctl["matched"] == 0 and ctl.log10_pvalue > -2


def test_sampled_block_map_calibrated():
    """Independent pairs of different depths and widths, cos --rows 24 of h = 48: every cell's p-value
    uniform, the Bonferroni overall p-value rarely small."""
    overall, cells = [], []
    for k in range(40):
        a, b = _tiny(2, 3000 + k), _tiny(3, 9000 + k, h=48)
        res = compare_models(a, b, stat="cos", rows=24)
        assert res["extra"]["rows"] == 24
        overall.append(res.pvalue)
        cells.append(10 ** res["per_pair"][1][2])
    # Bonferroni over the cells: P(p < 0.05) ≤ 0.05, so no more rejections than a 5% rate explains
    assert sps.binomtest(sum(p < 0.05 for p in overall), len(overall), 0.05, alternative="greater").pvalue > 0.01
    assert sps.kstest(cells, "uniform").pvalue > 0.01


def _tiny(L, seed, h=64, d=32):
    from tests.helpers import tiny_config, tiny_model
    return tiny_model(tiny_config(L=L, d=d, h=h, V=64), seed=seed)


def test_calibration_overall_and_rectangular_cells():
    overall, cells = [], []
    for k in range(40):
        a, b = _tiny(2, 1000 + k), _tiny(3, 5000 + k, h=48)
        res = compare_models(a, b, stat="cos")
        overall.append(res.pvalue)
        cells.append(10 ** res["per_pair"][0][0])
    assert sum(p < 0.05 for p in overall) <= 2
    assert sps.kstest(cells, "uniform").pvalue > 0.01


def test_calibration_match_different_depths():
    overall, cells = [], []
    ids = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(3))
    for k in range(40):
        a, b = _tiny(2, 2000 + k), _tiny(3, 7000 + k, h=48, d=24)
        res = compare_models(a, b, stat="match", tokens=ids)
        overall.append(res.pvalue)
        cells.append(10 ** res["per_pair"][1][2])
    assert sum(p < 0.05 for p in overall) <= 2
    assert sps.kstest(cells, "uniform").pvalue > 0.01


def _main(args, tmp_path):
    out = tmp_path / "out.p"
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), *args, "--save", str(out), "--quiet"],
                       capture_output=True, text=True)
    return r, out


def test_localized_needs_a_block_map(tmp_path):
    from tracing.errors import TracingError
    with pytest.raises(TracingError, match="l2 has no block map; use --stat cos, match"):
        Options(stat="l2", localized=True)
    r, out = _main(["--base_model_id", "demo:base-a", "--ft_model_id", "demo:a-docs", "--stat", "l2",
                    "--localized"], tmp_path)
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:") and "no block map" in r.stderr


def test_cos_with_different_width_points_to_match(family, tmp_path):
    ft = derive("demo:a-docs", tmp_path / "dims", keep_dims=0.75)
    r, out = _main(["--base_model_id", "demo:base-a", "--ft_model_id", ft, "--stat", "cos", "--localized"], tmp_path)
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.strip().count("\n") == 0 and "--stat match" in r.stderr


def test_eval_jsd_emb_accept_depth_pruned(family, tmp_path):
    ft = derive("demo:a-docs", tmp_path / "pruned", blocks=[0, 2, 3])
    res = compare("demo:base-a", ft, stat="emb", eval=True, **DATA)
    assert res.verdict == "dependent" and res["eval"]["ft loss"] > 0
    same = compare("demo:base-a", "demo:a-docs", stat="emb", eval=True, **DATA)
    assert same["eval"]["base loss"] == pytest.approx(res["eval"]["base loss"], abs=1e-6)
    j = compare("demo:base-a", ft, stat="jsd", **DATA)
    assert 0 < j.statistic < math.log(2)
    l2 = None
    with pytest.raises(Exception, match="for this pair use --stat cos, emb, match, jsd"):
        l2 = compare("demo:base-a", ft, stat="l2")
    assert l2 is None


def test_record_keys_pickled(family, tmp_path):
    ft = derive("demo:a-docs", tmp_path / "pruned", blocks=[0, 2, 3])
    r, out = _main(["--base_model_id", "demo:base-a", "--ft_model_id", ft, "--stat", "cos"], tmp_path)
    assert r.returncode == 0, r.stderr
    rec = pickle.load(open(out, "rb"))
    assert [tuple(c[:2]) for c in rec["correspondence"]] == [(0, 0), (2, 1), (3, 2)]
    assert len(rec["per_pair"]) == 4 and rec["matched"] >= 3 and rec["log10_pvalue"] < -4
    assert "per_pair" not in rec["extra"]


def test_sizing_counts_block_pairs():
    from types import SimpleNamespace

    from tests.helpers import tiny_config
    from tracing.arch import arch_from_config
    from tracing.stats import get
    from tracing.stats.cost import Sizing

    def info(L):
        return SimpleNamespace(arch=arch_from_config(tiny_config(L=L, d=512, h=2048)), params=10**8, bytes_per_param=4)
    opts = Options(stat="cos,match", num_samples=20, block_size=512)
    same = Sizing.from_infos(info(8), info(8), opts)
    deep = Sizing.from_infos(info(8), info(16), opts)
    for stat in ("cos", "match"):
        c1, c2 = get(stat).cost(same), get(stat).cost(deep)
        assert c2.seconds > 1.5 * c1.seconds
    assert get("match").cost(deep).mem_bytes > get("match").cost(same).mem_bytes
    sampled = Sizing.from_infos(info(8), info(16), Options(stat="cos", rows=128))
    assert get("cos").cost(sampled).seconds < get("cos").cost(deep).seconds / 20  # (K/h)² of every cell


def test_activations_spilled_to_a_memory_map(family, tmp_path):
    import tempfile
    ft = derive("demo:a-docs", tmp_path / "up", blocks=[0, 1, 2, 1, 2, 3])
    before = set(Path(tempfile.gettempdir()).glob("tracing-blockmap-*"))
    ram = compare("demo:base-a", ft, stat="match", **DATA)
    spilled = compare("demo:base-a", ft, stat="match", mem_budget_gb=1e-6, **DATA)
    assert spilled["extra"]["activations_spilled"] and not ram["extra"]["activations_spilled"]
    assert corr_of(spilled) == corr_of(ram) == {0: 0, 1: 1, 2: 2, 3: 1, 4: 2, 5: 3}
    assert set(Path(tempfile.gettempdir()).glob("tracing-blockmap-*")) == before  # the spill file is gone


def test_result_keys_unchanged_without_localized(monkeypatch):
    plain, local = Options(stat="cos,match"), Options(stat="cos,match", localized=True)
    keys = {stat: plain.key_for(stat) for stat in ("cos", "match")}
    for stat in ("cos", "match"):
        assert local.key_for(stat) != keys[stat]
        spec = get_spec(stat)  # the key as it was before the statistic read --localized
        monkeypatch.setattr(spec, "reads", tuple(r for r in spec.reads if r != "localized"))
        assert plain.key_for(stat) == keys[stat]


@pytest.mark.parametrize("stat", ["l2", "csh", "mode"])
def test_equal_shape_statistics_name_what_works(family, tmp_path, stat):
    ft = derive("demo:a-docs", tmp_path / "dims", keep_dims=0.75)
    r, out = _main(["--base_model_id", "demo:base-a", "--ft_model_id", ft, "--stat", stat, "--eval"], tmp_path)
    assert r.returncode == 2 and not out.exists() and r.stderr.strip().count("\n") == 0
    assert "for this pair use --stat match (activations, any widths), jsd" in r.stderr


def test_report_draws_the_block_map(family, tmp_path):
    from tracing.report import write_report
    ft = derive("demo:a-docs", tmp_path / "pruned", blocks=[0, 2, 3])
    folder = tmp_path / "results"
    folder.mkdir()
    compare("demo:base-a", ft, stat="cos", save=folder / "pruned_cos.p")
    compare("demo:base-a", "demo:a-docs", stat="cos", save=folder / "same_cos.p")  # no block map
    report = write_report(folder)
    text = report.read_text()
    assert (report.parent / "blockmap.png").stat().st_size > 0
    assert "![blockmap]" in text
    assert f"`cos` demo:base-a vs {ft} (4×3 blocks" in text and ": 0→0, 2→1, 3→2" in text


def test_sampled_block_map_rows_16_within_level():
    """cos --rows 16 (the exact law of a 16-pair Spearman in every cell) on independent 6- and
    8-block pairs: the Bonferroni overall p-value stays within its level (exact 99% interval of the
    rejection rate at 0.05), every cell's p-value uniform.  The heavy version (24 × 32 blocks, 300
    pairs) is bench/bench_spearman_law.py --blockmap."""
    from tracing.lineage.rates import clopper_pearson
    overall, cells = [], []
    for k in range(60):
        res = compare_models(_tiny(6, 20_000 + k, h=32, d=16), _tiny(8, 30_000 + k, h=32, d=16), stat="cos", rows=16)
        overall.append(res.pvalue)
        cells.append(10 ** res["per_pair"][2][5])
    lo, _ = clopper_pearson(sum(p <= 0.05 for p in overall), len(overall), confidence=0.99)
    assert lo <= 0.05
    assert sps.kstest(cells, "uniform").pvalue > 0.01


def test_pruned_model_placed_in_the_tree_by_its_matched_cosines(family, tmp_path):
    """A pruned model's cos result is a block map: its similarity for the tree is the mean median
    cosine of the matched blocks, so it hangs under the model it was pruned from."""
    import itertools
    from tracing.lineage.reconstruct import reconstruct
    from tracing.results import load_results
    pruned = derive("demo:a-docs", tmp_path / "pruned", blocks=[0, 2, 3])
    folder = tmp_path / "grid"
    models = ["demo:base-a", "demo:a-docs", "demo:a-sys", "demo:base-b", pruned]
    for i, (a, b) in enumerate(itertools.combinations(models, 2)):
        compare(a, b, stat="cos", save=folder / f"{i}_cos.p")
    rec_pruned = compare("demo:a-docs", pruned, stat="cos").record
    med, corr = rec_pruned["extra"]["per_pair_median_cos"], rec_pruned["correspondence"]
    assert rec_pruned["extra"]["median_cos"] == pytest.approx(np.mean([med[i][j] for i, j, _ in corr]))
    truth = {"base-a": None, "a-docs": "base-a", "a-sys": "base-a", "base-b": None, pruned: "a-docs"}
    df = load_results(folder)
    rec = reconstruct(df, "cos", truth=truth, use_hub=False)
    (e,) = [e for e in rec.edges if pruned in (e["a"], e["b"])]
    assert e["parent"] == "demo:a-docs" and e["child"] == pruned and e["truth"] == "correct"
    assert e["similarity"] == pytest.approx(rec_pruned["extra"]["median_cos"])
    # a result without a similarity (e.g. a block map that matched no block): left unplaced, and why
    df.loc[(df["base"] == pruned) | (df["ft"] == pruned), "median_cos"] = float("nan")
    rec = reconstruct(df, "cos", truth=truth, use_hub=False)
    assert not [e for e in rec.edges if pruned in (e["a"], e["b"])]
    assert any(n.startswith(f"{pruned} is not placed") and "similarity" in n for n in rec.notes)


def test_report_explains_the_block_maps_statistic_cell(family, tmp_path):
    from tracing.report import write_report
    ft = derive("demo:a-docs", tmp_path / "pruned", blocks=[0, 2, 3])
    folder = tmp_path / "results"
    folder.mkdir()
    res = compare("demo:base-a", ft, stat="cos", save=folder / "pruned_cos.p")
    assert res.statistic == 1.0  # the Spearman r of the best block pair: not a statistic of the pair
    compare("demo:base-a", "demo:a-docs", stat="cos", save=folder / "same_cos.p")
    text = write_report(folder).read_text()
    (row,) = [x for x in text.splitlines() if x.startswith("| `demo:base-a` |") and f"`{ft}`" in x]
    cell = row.split("|")[3].strip()
    assert cell == f"(block map; median cos {res.extra['median_cos']:.3g})"
    (same,) = [x for x in text.splitlines() if x.startswith("| `demo:base-a` | `demo:a-docs` |")]
    assert same.split("|")[3].strip().startswith(f"{res_same_stat(folder):.4g}")
    assert "A block map has no single statistic" in text


def res_same_stat(folder):
    return pickle.load(open(folder / "same_cos.p", "rb"))["statistic"]
