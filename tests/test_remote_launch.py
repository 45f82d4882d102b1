"""launch.py with hub models: ``--dry-run`` says what each pair will cost on the network (from the
configs, no network), ``--download`` fetches the models whole instead of reading their rows by range
requests — against the real loopback hub (tests/hub_server.py) with the real huggingface_hub client."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from test_remote import K, folders, hub  # noqa: F401 (fixtures)

from tracing.rows import header
from tracing.sources.cost import _size

ROOT = Path(__file__).resolve().parents[1]


def _launch(cfg, tmp_path, env, *args):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), str(cfg), "--stat", "cos", "--cluster", "local",
                           "--max_workers", "1", "--out", str(tmp_path / "out"), "--no-report", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def _tensor_bytes(folder) -> int:
    total = 0
    for f in folder.glob("*.safetensors"):
        total += f.stat().st_size - header(f)[0]
    return total


def test_launch_dry_run_prints_each_pairs_bytes(hub, folders, tmp_path, monkeypatch, capsys):
    """Configs in the cache, weights not (offline): per pair the sampled rows of both models, with
    --download their weights; a local model costs nothing."""
    from huggingface_hub import constants, snapshot_download

    from tracing.launch import main
    for n in ("base", "ft"):
        snapshot_download(f"org/{n}", endpoint=hub.url, allow_patterns=["*.json"])
    cfg = tmp_path / "list.yaml"
    cfg.write_text(yaml.safe_dump({"base_models": ["org/base"], "ft_models": ["org/ft", str(folders["indep"])]}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    n = len(hub.requests)
    common = [str(cfg), "--stat", "cos", "--cluster", "local", "--out", str(tmp_path / "out"), "--rows", str(K),
              "--dry-run"]
    assert main(common) == 0
    out = capsys.readouterr().out
    rows = 2 * K * 64 * 2  # L · K · d · 2 bytes per model
    table = [line for line in out.splitlines() if " vs " in line]
    assert len(table) == 2 and "network" in out, out
    ft_row = next(line for line in table if "org/ft" in line)
    indep_row = next(line for line in table if line is not ft_row)
    assert f"≈ {_size(2 * rows)} " in ft_row and f"≈ {_size(rows)} " in indep_row  # the local model costs nothing
    assert f"network: ≈ {_size(2 * rows)} in all, each model once (range reads" in out
    assert main(common + ["--download"]) == 0
    out = capsys.readouterr().out
    whole = {n: _tensor_bytes(folders[n]) for n in ("base", "ft")}
    assert f"network: ≈ {_size(whole['base'] + whole['ft'])} in all, each model once (downloads" in out, out
    assert "a sampled test reads" not in out
    assert len(hub.requests) == n  # no network


def test_launch_download_fetches_whole_models(hub, folders, tmp_path):
    cfg = tmp_path / "list.yaml"
    cfg.write_text(yaml.safe_dump(["org/base", "org/ft"]))
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
           "TOKENIZERS_PARALLELISM": "false"}
    r = _launch(cfg, tmp_path, env, "--rows", str(K), "--download")
    assert r.returncode == 0, r.stdout + r.stderr
    for n in ("base", "ft"):
        for f in folders[n].glob("*.safetensors"):
            assert hub.served[f"org/{n}/{f.name}"] >= f.stat().st_size  # whole, as downloads are
    from tracing.results import load_record
    rec = load_record(next((tmp_path / "out").rglob("*.p")))
    assert rec["log10_pvalue"] is not None and rec["status"] == "ok"
    assert all("read" not in f for f in rec["models"]["base"]["files"])  # not range-read
