"""The store of sampled rows: a grid reads each model's rows once, with results identical to
reading the weights, keyed by the weight files (a changed file is never a stale hit)."""
import itertools
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from helpers import finetuned, tiny_config, tiny_model
from test_launch_runs import launch_env

import tracing.rows
from tracing.api import run_pair
from tracing.models import Checkpoint
from tracing.options import Options
from tracing.results import load_results
from tracing.rowstore import FOLDER, StoredRows, model_key, with_store
from tracing.stats.base import sampled_rows

ROOT = Path(__file__).resolve().parents[1]
K = 24


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Four tiny models on disk: a base, two fine-tunes of it (one in bfloat16), an independent one."""
    root = tmp_path_factory.mktemp("grid")
    cfg = tiny_config(L=3, d=32, h=96)
    base = tiny_model(cfg, seed=1)
    models = {"base": base, "ft1": finetuned(base, seed=2, noise=0.1), "ft2": finetuned(base, seed=3, noise=0.1),
              "other": tiny_model(cfg, seed=4)}
    paths = {}
    for name, m in models.items():
        if name == "ft2":
            m = m.to(torch.bfloat16)
        m.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def _count_reads(monkeypatch) -> Counter:
    reads = Counter()
    real = tracing.rows.read_rows

    def counting(path, name, index):
        reads[(str(Path(path).parent.name), name)] += 1
        return real(path, name, index)

    monkeypatch.setattr(tracing.rows, "read_rows", counting)
    return reads


def test_a_grid_reads_each_models_rows_once_and_results_are_identical(grid, tmp_path, monkeypatch):
    opts = Options(stat=["cos"], rows=K)
    plain = {pair: run_pair(grid[pair[0]], grid[pair[1]], opts, progress=False)[0]
             for pair in itertools.combinations(grid, 2)}
    reads = _count_reads(monkeypatch)
    store = tmp_path / FOLDER
    stored = {pair: run_pair(grid[pair[0]], grid[pair[1]], opts, progress=False, rows_store=store)[0]
              for pair in itertools.combinations(grid, 2)}
    L = 3
    assert len(reads) == len(grid) * L and set(reads.values()) == {1}, reads  # every tensor read once
    for pair, rec in stored.items():
        ref = plain[pair]
        assert rec["log10_pvalue"] == ref["log10_pvalue"]
        assert [r["median_cos"] for r in rec["per_layer"]] == [r["median_cos"] for r in ref["per_layer"]]
        assert [r["log10_pvalue"] for r in rec["per_layer"]] == [r["log10_pvalue"] for r in ref["per_layer"]]
        assert "rows_store" not in ref
    # the first pair reads both models, the last (ft2, other) finds both in the store
    assert stored[("base", "ft1")]["rows_store"] == {"base": {"from_store": 0, "read": L},
                                                      "ft": {"from_store": 0, "read": L}}
    assert stored[("ft2", "other")]["rows_store"] == {"base": {"from_store": L, "read": 0},
                                                       "ft": {"from_store": L, "read": 0}}
    assert plain[("base", "ft1")]["log10_pvalue"] < -6 and plain[("base", "other")]["log10_pvalue"] > -2
    assert len([d for d in store.iterdir() if d.is_dir()]) == len(grid)


def test_rows_are_kept_losslessly_in_the_smallest_exact_dtype(grid, tmp_path):
    from safetensors.torch import load_file
    for name, want in (("ft2", torch.bfloat16), ("base", torch.float32)):
        ck = Checkpoint(grid[name])
        src = with_store(ck, tmp_path)
        idx = sampled_rows(96, K, seed=0)
        up = ck.arch.units(0)[0].up
        assert torch.equal(src.get_rows(up, idx), ck.get_rows(up, idx))
        (f,) = (tmp_path / model_key(ck)).rglob("*.safetensors")
        assert load_file(f)["rows"].dtype == want
        assert torch.equal(StoredRows(ck, tmp_path, model_key(ck)).get_rows(up, idx), ck.get_rows(up, idx))


def test_changed_weights_are_a_new_key_not_a_stale_hit(tmp_path):
    cfg = tiny_config(L=2, d=32, h=96)
    folder = tmp_path / "m"
    tiny_model(cfg, seed=1).save_pretrained(folder)
    idx = sampled_rows(96, K, seed=0)
    ck = Checkpoint(str(folder))
    up = ck.arch.units(0)[0].up
    first = with_store(ck, tmp_path / "store").get_rows(up, idx)
    key = model_key(ck)
    tiny_model(cfg, seed=2).save_pretrained(folder)  # same folder, other weights
    ck2 = Checkpoint(str(folder))
    assert model_key(ck2) != key
    again = with_store(ck2, tmp_path / "store")
    assert torch.equal(again.get_rows(up, idx), ck2.get_rows(up, idx))
    assert not torch.equal(again.get_rows(up, idx), first)
    assert again.counts() == {"from_store": 1, "read": 1}


def test_an_unreadable_entry_is_read_again_from_the_weights(grid, tmp_path):
    ck = Checkpoint(grid["base"])
    idx = sampled_rows(96, K, seed=0)
    up = ck.arch.units(1)[0].up
    with_store(ck, tmp_path).get_rows(up, idx)
    (f,) = (tmp_path / model_key(ck)).rglob("*.safetensors")
    f.write_bytes(f.read_bytes()[:40])  # truncated
    src = with_store(ck, tmp_path)
    assert torch.equal(src.get_rows(up, idx), ck.get_rows(up, idx))
    assert src.counts() == {"from_store": 0, "read": 1}
    assert torch.equal(with_store(ck, tmp_path).get_rows(up, idx), ck.get_rows(up, idx))  # rewritten whole


def test_launch_keeps_sampled_rows_beside_the_results(grid, tmp_path):
    """launch.py over a model list with --rows: local workers share the store; every model's
    tensors are read from its weights exactly once over the whole grid; the report says so."""
    cfg = tmp_path / "list.yaml"
    cfg.write_text(yaml.safe_dump({"models": list(grid.values())}))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), str(cfg), "--cluster", "local", "--stat", "cos",
                        "--rows", str(K), "--max_workers", "2", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=launch_env(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"read once per model and kept in {out / FOLDER}" in r.stdout, r.stdout
    df = load_results(out)
    assert len(df) == 6 and set(df["status"]) == {"ok"}
    from tracing.results import iter_records
    recs = [rec for _, rec, _ in iter_records(out)]
    read = sum(rec["rows_store"][side]["read"] for rec in recs for side in ("base", "ft"))
    from_store = sum(rec["rows_store"][side]["from_store"] for rec in recs for side in ("base", "ft"))
    assert read == len(grid) * 3 and from_store == 6 * 2 * 3 - read
    report = (out / "report.md").read_text()
    assert "(6 result files, 6 pairs, 4 models)" in report  # nothing of the store is read as a result
    assert f"- sampled rows: {read} tensors' rows read from the weights, {from_store} from the store" in report


def test_sampled_embedding_columns_go_through_the_store_too(grid, tmp_path):
    opts = Options(stat=["emb"], rows=16)
    store = tmp_path / FOLDER
    for a, b in itertools.combinations(grid, 2):
        plain = run_pair(grid[a], grid[b], opts, progress=False)[0]
        rec = run_pair(grid[a], grid[b], opts, progress=False, rows_store=store)[0]
        assert rec["log10_pvalue"] == plain["log10_pvalue"] and rec["extra"] == plain["extra"]
    entries = sorted(store.rglob("*.safetensors"))
    assert len(entries) == len(grid)  # one embedding's 16 columns per model, read once
    assert all(f.parent.name.startswith("cols-k16-") for f in entries)
