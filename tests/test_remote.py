"""Hub models read by HTTP range requests: a real HTTP server on 127.0.0.1 in the hub's URL layout
(tests/hub_server.py) and the real huggingface_hub client pointed at it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import finetuned, tiny_config, tiny_model
from hub_server import HubServer, serving

from tracing.errors import TracingError
from tracing.models import Checkpoint
from tracing.rows import header

ROOT = Path(__file__).resolve().parents[1]
K = 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A base, its fine-tune (sharded) and an independent model, h = 512 so K rows are a few % of a tensor."""
    root = tmp_path_factory.mktemp("hubmodels")
    cfg = tiny_config(d=64, h=512, L=2)
    base = tiny_model(cfg, seed=0)
    out = {}
    for name, model, shard in (("base", base, None), ("ft", finetuned(base, seed=1), "100KB"),
                               ("indep", tiny_model(cfg, seed=7), None)):
        kw = {"max_shard_size": shard} if shard else {}
        model.to(torch.bfloat16).save_pretrained(root / name, **kw)
        out[name] = root / name
    return out


@pytest.fixture
def hub(folders, tmp_path, monkeypatch):
    """The server (models as org/base, org/ft, org/indep) with the client pointed at it and an empty cache."""
    server = serving({f"org/{name}": f for name, f in folders.items()}, tmp_path, monkeypatch, stall=1.5)
    yield server
    server.close()


def sample(seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(512, K, replace=False))


def weight_bytes(server, repo):
    return {k.split("/", 2)[2]: v for k, v in server.served.items()
            if k.startswith(repo + "/") and k.endswith(".safetensors")}


@pytest.mark.parametrize("name", ["base", "ft"])  # ft is sharded
def test_rows_equal_local_read_within_budget(hub, folders, name):
    remote, local = Checkpoint(f"org/{name}", remote=True), Checkpoint(folders[name])
    assert remote.resolved.remote and not any(remote.path.glob("*.safetensors"))
    idx = sample()
    for i in range(2):
        t = f"model.layers.{i}.mlp.up_proj.weight"
        a, b = remote.get_rows(t, idx), local.get_rows(t, idx)
        assert a.dtype == b.dtype and torch.equal(a, b)
    served = weight_bytes(hub, f"org/{name}")
    files = sorted(folders[name].glob("*.safetensors"))
    assert set(served) == {f.name for f in files}
    row_bytes = 64 * 2  # d bf16
    for f in files:
        start, head = header(f)
        ups = sum(1 for k in head if k.endswith("up_proj.weight"))
        budget = start + 2 * K * row_bytes * ups  # header + rows (merged runs at most double them)
        assert served[f.name] <= budget, (f.name, served[f.name], budget)
    assert sum(served.values()) < 0.1 * sum(f.stat().st_size for f in files)
    runs = np.array([0, 1, 2, 4, 7, 8, 100, 101, 103, 511])  # adjacent, a row apart (merged), apart, the last
    t = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(remote.get_rows(t, runs), local.get_rows(t, runs))


def test_named_tensor_equal_local(hub, folders):
    remote, local = Checkpoint("org/ft", remote=True), Checkpoint(folders["ft"])
    for t in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        assert torch.equal(remote.get(t), local.get(t))


def test_record_provenance_and_store(hub, folders, tmp_path):
    from tracing.api import run_pair
    store = tmp_path / "store"
    rec = run_pair("org/base", "org/ft", stat="cos", rows=K, progress=False, rows_store=store)[0]
    loc = run_pair(str(folders["base"]), str(folders["ft"]), stat="cos", rows=K, progress=False)[0]
    assert rec["log10_pvalue"] == loc["log10_pvalue"] and rec["per_layer"] == loc["per_layer"]
    m = rec["models"]["base"] if "base" in rec["models"] else rec["models"][0]
    assert m["commit"] == hub.repos["org/base"][1]
    from hub_server import sha256
    for f in m["files"]:
        assert f["sha256"] == sha256(folders["base"] / f["file"]) and f["sha256_source"] == "hub"
        assert f["read"] == "range-read; digest from the hub, not re-hashed"
        assert header(folders["base"] / f["file"])[0] < f["bytes_read"] < 0.1 * f["size"]  # headers + rows
    before = dict(hub.served)
    again = run_pair("org/base", "org/ft", stat="cos", rows=K, progress=False, rows_store=store)[0]
    assert again["log10_pvalue"] == rec["log10_pvalue"]
    grown = {k: hub.served[k] - before.get(k, 0) for k in hub.served if k.endswith(".safetensors")}
    headers = sum(header(f)[0] for n in ("base", "ft") for f in folders[n].glob("*.safetensors"))
    assert sum(grown.values()) <= headers  # the rows came from the store: headers only


def _fail_first(kind, n=1, only=".safetensors"):
    seen = {"n": 0}

    def fault(path, method, rng):
        if method == "GET" and path.endswith(only) and rng and not rng.startswith("bytes=0-") \
                and seen["n"] < n:
            seen["n"] += 1
            return kind
        return None
    return fault


@pytest.mark.parametrize("kind", ["drop", "500", "stall"])
def test_transient_faults_are_retried(hub, folders, kind, monkeypatch):
    if kind == "stall":  # the answer comes after the server's stall (1.5 s): the reader gives up first
        monkeypatch.setenv("TRACING_HUB_TIMEOUT", "0.5")
    hub.faults.append(_fail_first(kind, n=2))
    idx = sample(1)
    t = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(Checkpoint("org/base", remote=True).get_rows(t, idx), Checkpoint(folders["base"]).get_rows(t, idx))


@pytest.mark.parametrize("kind, words", [("drop", "after 4 tries"), ("500", "after 4 tries (HTTP 500)"),
                                         ("416", "HTTP 416"), ("short", "bytes asked"),
                                         (("etag", "ab" * 32), "changed on the hub"), ("401", "HF_TOKEN")])
def test_faults_give_one_line(hub, kind, words, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    ckpt = Checkpoint("org/base", remote=True)  # opened (headers read), then the rows fail
    hub.faults.append(_fail_first(kind, n=100))
    with pytest.raises(TracingError) as e:
        ckpt.get_rows("model.layers.0.mlp.up_proj.weight", sample())
    msg = str(e.value)
    assert words in msg and "\n" not in msg and "hf_secret" not in msg
    if kind in ("drop", "500"):
        assert "model.safetensors bytes " in msg


def test_token_goes_to_the_hub_host_only(hub, folders, monkeypatch):
    other = HubServer()
    other.add("org/base", folders["base"], commit=hub.repos["org/base"][1])
    try:
        monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
        hub.faults.append(lambda path, method, rng: ("redirect", other.url + f"/org/base/resolve/x/{path.split('/', 2)[2]}")
                          if method == "GET" and path.endswith(".safetensors") else None)
        idx = sample()
        t = "model.layers.0.mlp.up_proj.weight"
        assert torch.equal(Checkpoint("org/base", remote=True).get_rows(t, idx),
                           Checkpoint(folders["base"]).get_rows(t, idx))
        assert other.served  # the bytes came from the redirect target
        auth = [{k.lower(): v for k, v in h.items()}.get("authorization") for _, _, h in hub.requests]
        assert "Bearer hf_secret_token_value" in auth  # the hub got the token
        assert not any("authorization" in {k.lower() for k in h} for _, _, h in other.requests)
    finally:
        other.close()


def test_cached_model_is_read_locally(hub, folders):
    from huggingface_hub import snapshot_download
    snapshot_download("org/indep", endpoint=hub.url)
    n = len(hub.requests)
    ckpt = Checkpoint("org/indep", remote=True)
    assert not ckpt.resolved.remote
    ckpt.get_rows("model.layers.0.mlp.up_proj.weight", sample())
    assert not any(".safetensors" in p for _, p, _ in hub.requests[n:])


def test_offline_is_cached_only(hub, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    n = len(hub.requests)
    with pytest.raises(TracingError, match="HF_HUB_OFFLINE"):
        Checkpoint("org/base", remote=True)
    assert len(hub.requests) == n


def _main(hub, tmp_path, *args):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "--base_model_id", "org/base", "--ft_model_id",
                           "org/ft", "--stat", "cos", "--quiet", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def test_main_reads_ranges_or_downloads(hub, folders, tmp_path):
    r = _main(hub, tmp_path, "--rows", str(K), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert [line.split(":")[0] for line in r.stdout.splitlines()] == ["org/base", "org/ft"]
    assert all("range reads of" in line for line in r.stdout.splitlines())
    heads = {f"org/{n}/{f.name}": header(f)[0] for n in ("base", "ft") for f in folders[n].glob("*.safetensors")}
    assert {k: v for k, v in hub.served.items() if k in heads} == heads  # headers only
    r = _main(hub, tmp_path, "--rows", str(K), "--save", str(tmp_path / "r.p"))
    assert r.returncode == 0, r.stderr
    sizes = {f"org/{n}/{f.name}": f.stat().st_size for n in ("base", "ft") for f in folders[n].glob("*.safetensors")}
    assert all(hub.served[k] < 0.1 * v for k, v in sizes.items())
    r = _main(hub, tmp_path, "--rows", str(K), "--download")
    assert r.returncode == 0, r.stderr
    assert all(hub.served[k] >= v for k, v in sizes.items())  # the whole files, as before


def test_main_fault_is_one_line_exit_2(hub, tmp_path):
    hub.faults.append(_fail_first("500", n=1000))
    r = _main(hub, tmp_path, "--rows", str(K), "--save", str(tmp_path / "r.p"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.p").exists()


def test_dry_run_prints_the_exact_cost(hub, folders, tmp_path):
    from tracing.options import Options
    from tracing.sources.cost import dry_run_lines
    o = Options(stat=["cos"], rows=K)
    lines = dry_run_lines("org/base", str(folders["ft"]), o)
    assert "range reads of" in lines[0] and "no network" in lines[1]
    before = dict(hub.served)
    from tracing.api import run_pair
    rec = run_pair("org/base", str(folders["ft"]), o, progress=False)[0]
    read = sum(f["bytes_read"] for f in rec["models"]["base"]["files"])
    from tracing.sources.cost import _size
    assert f"range reads of {_size(read)}" in lines[0]  # headers (read at opening) + the rows' requests
    assert hub.served["org/base/model.safetensors"] - before["org/base/model.safetensors"] == read  # what was sent
    assert "download" in dry_run_lines("org/base", "org/ft", o, download=True)[0]


def test_scan_reads_ranges_and_equals_local(hub, folders, tmp_path):
    from tracing.scan import scan
    got = scan("org/ft", ["org/base", "org/indep"], rows=K, out=tmp_path / "hub")
    ref = scan(str(folders["ft"]), [str(folders["base"]), str(folders["indep"])], rows=K, out=tmp_path / "loc")
    assert [(r.status, r.screen_log10_p, r.full_log10_p) for r in got] == \
        [(r.status, r.screen_log10_p, r.full_log10_p) for r in ref]
    assert got[0].reference == "org/base" and got[0].verdict == ref[0].verdict
    assert got[0].full_log10_p is not None  # the hit's full test read whole tensors by range requests


def test_launch_reads_ranges(hub, folders, tmp_path):
    """A sampled grid of hub models: prefetch fetches config files only, every pair reads rows by
    range requests, the row store reads each model's rows once."""
    import yaml
    cfg = tmp_path / "list.yaml"
    cfg.write_text(yaml.safe_dump(["org/base", "org/ft", "org/indep"]))
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
           "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), str(cfg), "--stat", "cos", "--rows", str(K),
                        "--cluster", "local", "--max_workers", "1", "--out", str(tmp_path / "out"), "--no-report"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    from tracing.results import load_record
    recs = [load_record(f) for f in (tmp_path / "out").rglob("*.p")]
    assert len(recs) == 3 and all(rec["log10_pvalue"] is not None for rec in recs)
    assert sum(c["read"] for rec in recs for c in rec["rows_store"].values()) == 3 * 2  # each model's rows once
    for n in ("base", "ft", "indep"):
        for f in folders[n].glob("*.safetensors"):
            served = hub.served[f"org/{n}/{f.name}"]
            assert served < 0.1 * f.stat().st_size, (n, f.name, served)


def test_launch_dry_run_says_what_sampled_tests_read(hub, tmp_path):
    """Configs in the cache (fetched for range reads), weights not: the dry run estimates from the config."""
    import yaml
    from huggingface_hub import constants, snapshot_download
    for n in ("base", "ft"):
        snapshot_download(f"org/{n}", endpoint=hub.url, allow_patterns=["*.json"])  # configs, no weights
    cfg = tmp_path / "list.yaml"
    cfg.write_text(yaml.safe_dump(["org/base", "org/ft"]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": constants.HF_HUB_CACHE}
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), str(cfg), "--stat", "cos", "--rows", str(K),
                        "--cluster", "local", "--dry-run", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if "a sampled test reads" in line]
    rows = 2 * K * 64 * 2  # L · K · d · 2 bytes
    assert len(lines) == 2 and all(f"≈ {rows / 1000:.1f} kB of" in line for line in lines), r.stdout


def test_offline_after_opening_is_one_line(hub, monkeypatch):
    from huggingface_hub import constants
    ckpt = Checkpoint("org/base", remote=True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TracingError, match="HF_HUB_OFFLINE=0"):
        ckpt.get_rows("model.layers.0.mlp.up_proj.weight", sample())


def test_a_quantized_hub_model_is_read_by_its_format_by_ranges(hub, folders, tmp_path):
    """An FP8 folder on the hub (float8 codes + scales) is read by its format's reader, its bytes by
    range requests (tests/test_remote_quantized.py: every format), equal to the local folder."""
    from quant_writers import write_fp8
    fp8 = write_fp8(folders["base"], tmp_path / "base-fp8")
    hub.add("org/base-fp8", fp8)
    remote, local = Checkpoint("org/base-fp8", remote=True), Checkpoint(fp8)
    assert remote.resolved.remote and remote.backend.format == local.backend.format == "fp8"
    idx, t = sample(), "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(remote.get_rows(t, idx), local.get_rows(t, idx))


def test_an_index_entry_of_a_hub_model_reads_only_its_rows(hub, folders, tmp_path):
    """python -m tracing.index build on a hub model downloads nothing whole: the entry's rows come by
    range requests (under 10% of every weight file) and equal those of an entry of the local folder."""
    from tracing.index.build import build_entry
    from tracing.index.entry import read_entry
    from tracing.index.layout import Settings, open_or_create
    s = Settings(rows=16, emb_tokens=64)
    remote_root, local_root = tmp_path / "idx-hub", tmp_path / "idx-local"
    for root in (remote_root, local_root):
        open_or_create(root, s)
    assert build_entry("org/base", "tiny", remote_root, s).status == "built"
    assert build_entry(str(folders["base"]), "tiny", local_root, s).status == "built"
    for f, n in weight_bytes(hub, "org/base").items():
        assert n < 0.1 * (folders["base"] / f).stat().st_size
    a = read_entry(next(p for p in remote_root.rglob("entry.json")).parent, s)
    b = read_entry(next(p for p in local_root.rglob("entry.json")).parent, s)
    for f in a.meta["files"]:
        ta, tb = a.tensors(f), b.tensors(f)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
