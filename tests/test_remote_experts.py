"""The sampled experts grid (``cos --rows K``) of mixture-of-experts pairs on the hub, read by HTTP
range requests end to end: DeepSeek-V3-shaped models (experts one tensor each on disk) in bf16 and
in FP8 with block scales, gpt-oss models (experts stacked on disk) in MXFP4 — served by the real
loopback hub (tests/hub_server.py) to the real huggingface_hub client. The result equals the local
read of the same folders; the bytes sent are the dry run's plan, a few % of the files; the record
names the commit, the hub's digests and the bytes read per file; a second run with a row store
fetches headers only."""
from __future__ import annotations

import re

import pytest
import torch
from family_models import family_config, family_model, noisy
from hub_server import serving, sha256
from quant_writers import write_fp8, write_mxfp4_gpt_oss
from test_experts_sampled import _experts_moved
from test_remote import _main

from tracing.options import Options
from tracing.rows import header

K = 8  # rows per expert
#: folders of each pair: bf16 and FP8 DeepSeek-V3 shape, MXFP4 gpt-oss
PAIRS = {"bf16": ("ds-a", "ds-b"), "fp8": ("ds-a-fp8", "ds-b-fp8"), "mxfp4": ("oss-a", "oss-b")}


@pytest.fixture(scope="module")
def moe_folders(tmp_path_factory):
    """bf16 base models and noisy copies with their experts reordered (the orders in ``orders``): DeepSeek-V3
    (8 experts of width 64 and a shared expert, a dense first block of width 128) and gpt-oss (8
    experts of width 64); an independent DeepSeek-V3 model."""
    root = tmp_path_factory.mktemp("moe-range")
    out, orders = {}, {}
    for fam, tag, cfg in (("ds", "ds", family_config("deepseek_v3", d=32, h=128, E=8, L=3)),
                          ("oss", "oss", family_config("gpt_oss", d=32, h=128, E=8, L=2))):
        base = family_model(cfg, seed=11)
        moved, pi = _experts_moved(noisy(base, seed=12), seed=13)
        orders[fam] = {str(i): torch.argsort(p).tolist() for i, p in pi.items()}
        for name, model in (("a", base), ("b", moved)):
            model.to(torch.bfloat16).save_pretrained(root / f"{tag}-{name}")
            out[f"{tag}-{name}"] = root / f"{tag}-{name}"
    family_model(family_config("deepseek_v3", d=32, h=128, E=8, L=3), seed=14).to(torch.bfloat16).save_pretrained(root / "ds-i")
    out["ds-i"] = root / "ds-i"
    for name in ("a", "b"):
        out[f"ds-{name}-fp8"] = write_fp8(out[f"ds-{name}"], root / f"ds-{name}-fp8", block=(16, 16))
        out[f"oss-{name}"] = write_mxfp4_gpt_oss(out[f"oss-{name}"], root / f"oss-{name}-mxfp4")
    return out, orders


@pytest.fixture
def hub(moe_folders, tmp_path, monkeypatch):
    server = serving({f"org/{k}": f for k, f in moe_folders[0].items()}, tmp_path, monkeypatch)
    yield server
    server.close()


def sent(server, repo) -> dict:
    """Bytes the server sent of each weight file of ``repo``."""
    return {k.split("/", 2)[2]: v for k, v in server.served.items()
            if k.startswith(repo + "/") and k.endswith(".safetensors")}


def planned(a: str, b: str, rows: int = K) -> dict:
    """The dry run's plan of each model of the pair: headers plus the sampled rows (bytes)."""
    from tracing.models import Checkpoint
    from tracing.sources.cost import planned_reads
    ca, cb = Checkpoint(a, remote=True), Checkpoint(b, remote=True)
    options = Options(stat=["cos"], rows=rows)
    return {a: ca.backend.header_bytes() + planned_reads(ca, cb, options),
            b: cb.backend.header_bytes() + planned_reads(cb, ca, options)}


def _same(rec, loc):
    assert rec["log10_pvalue"] == loc["log10_pvalue"]
    assert rec["per_layer"] == loc["per_layer"]
    assert rec["extra"]["expert_matching"] == loc["extra"]["expert_matching"]


@pytest.mark.parametrize("fmt", list(PAIRS))
def test_moe_pair_by_ranges_equals_local_within_plan(hub, moe_folders, fmt):
    from tracing.api import run_pair
    folders, orders = moe_folders
    a, b = PAIRS[fmt]
    plan = planned(f"org/{a}", f"org/{b}")
    before = {repo: sum(sent(hub, repo).values()) for repo in (f"org/{a}", f"org/{b}")}
    rec = run_pair(f"org/{a}", f"org/{b}", stat="cos", rows=K, progress=False)[0]
    loc = run_pair(str(folders[a]), str(folders[b]), stat="cos", rows=K, progress=False)[0]
    _same(rec, loc)
    assert rec["extra"]["expert_matching"] == orders[a.split("-")[0]]  # every expert paired with its copy
    assert rec["log10_pvalue"] < -20 and rec["extra"]["rows"] == K
    for tag, repo in (("base", f"org/{a}"), ("ft", f"org/{b}")):
        n = sum(sent(hub, repo).values()) - before[repo]
        files = list(folders[repo[4:]].glob("*.safetensors"))
        size, heads = sum(f.stat().st_size for f in files), sum(header(f)[0] for f in files)
        assert n == plan[repo], (repo, n, plan[repo])  # the dry run's plan is what was sent
        assert n - heads < 0.1 * (size - heads), (repo, n, heads, size)  # the data: a few % of it
        m = rec["models"][tag]
        assert m["commit"] == hub.repos[repo][1]
        for f in m["files"]:
            assert f["sha256"] == sha256(folders[repo[4:]] / f["file"]) and f["sha256_source"] == "hub"
            assert f["read"] == "range-read; digest from the hub, not re-hashed"
            assert header(folders[repo[4:]] / f["file"])[0] < f["bytes_read"] == n


def test_moe_plan_counts_every_expert(hub):
    """The plan of a MoE model: K rows of every routed and shared expert and of the dense block —
    (1 + 2·9)·K rows of d bf16 values — read in at most twice as many bytes (runs a row apart merged)."""
    plan = planned("org/ds-a", "org/ds-b")
    from tracing.models import Checkpoint
    rows = plan["org/ds-a"] - Checkpoint("org/ds-a", remote=True).backend.header_bytes()
    need = (1 + 2 * 9) * K * 32 * 2
    assert need <= rows <= 2 * need


def test_moe_dry_run_is_what_the_run_sends_and_the_row_store(hub, moe_folders, tmp_path):
    """``main.py --dry-run --rows 8`` on hub ids: the bytes it gives are what the run sends; a second
    run through a row store reads headers only, with the same result."""
    from tracing.api import run_pair
    folders, _ = moe_folders
    r = _main(hub, tmp_path, "--rows", str(K), "--dry-run", "--base_model_id", "org/ds-a", "--ft_model_id", "org/ds-i")
    assert r.returncode == 0, r.stderr
    said = {}
    for line in r.stdout.splitlines():
        m = re.match(r"(\S+): range reads of ([\d.]+) kB of", line)
        assert m and line.endswith(f"; {K} rows of each of 19 expert and MLP up_projs)"), line  # 2 · (8 + 1) + 1
        said[m.group(1)] = float(m.group(2)) * 1000
    assert set(said) == {"org/ds-a", "org/ds-i"}
    before = dict(hub.served)
    store = tmp_path / "store"
    first = run_pair("org/ds-a", "org/ds-i", stat="cos", rows=K, progress=False, rows_store=store)[0]
    for repo, n in said.items():
        got = sum(v - before.get(f"{repo}/{f}", 0) for f, v in sent(hub, repo).items())
        assert abs(got - n) <= 50, (repo, got, n)  # kB rounded to 0.1
    assert first["log10_pvalue"] > -2  # independent models
    before = dict(hub.served)
    again = run_pair("org/ds-a", "org/ds-i", stat="cos", rows=K, progress=False, rows_store=store)[0]
    _same(again, first)
    grown = sum(v - before.get(k, 0) for k, v in hub.served.items() if k.endswith(".safetensors"))
    heads = sum(header(folders[n] / "model.safetensors")[0] for n in ("ds-a", "ds-i"))
    assert grown <= heads  # the rows came from the store: headers only


def test_launch_estimate_counts_every_expert():
    """A launch's estimate from a config (no network): K rows of every MLP and expert's up_proj —
    for DeepSeek-V3 671B in FP8 at K = 8: 3 dense blocks and 58 blocks of 256 + 1 experts, ≈ 0.86 GB."""
    from tracing.arch import arch_from_config
    from tracing.launch.configs import ModelInfo
    from tracing.sources.cost import model_cost
    cfg = dict(family_config("deepseek_v3", d=7168, h=18432, L=61, E=256).to_dict(), moe_intermediate_size=2048,
               first_k_dense_replace=3)
    info = ModelInfo("org/v3", arch_from_config(cfg), 1, "hub cache", weights_cached=False)
    n, how = model_cost(info, Options(stat=["cos"], rows=K))
    assert how == "range reads" and n == (3 + 58 * 257) * K * 7168
    n, _ = model_cost(info, Options(stat=["cos"], rows=4096))  # at most every row of an expert
    assert n == (3 * 4096 + 58 * 257 * 2048) * 7168


def test_fewer_rows_than_the_spearman_test_takes_is_one_line(moe_folders, tmp_path, capsys):
    """``--rows 4``: one line naming the fewest rows (8) before anything is read; no result file."""
    from tracing.cli_compare import main
    from tracing.cli_util import run_cli
    folders, _ = moe_folders
    out = tmp_path / "never.p"
    rc = run_cli(main, ["--base_model_id", str(folders["ds-a"]), "--ft_model_id", str(folders["ds-i"]), "--stat", "cos",
                        "--rows", "4", "--save", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --rows 4 ") and "--rows 8" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_the_hub_stand_in_hashes_sparse_files_as_read_whole(tmp_path):
    """The digest the loopback hub reports for a sparse file (holes hashed from memory, as the
    benchmarks' frontier-shaped files need) is the SHA-256 of its bytes."""
    import os

    from hub_server import sparse_sha256
    f = tmp_path / "sparse.safetensors"
    with open(f, "wb") as fh:
        fh.write(b"head" * 1000)
        fh.truncate(3_000_000)
        fh.seek(1_000_000)
        fh.write(os.urandom(5000))
        fh.seek(2_999_990)
        fh.write(b"tail")
    whole = tmp_path / "hole"
    whole.write_bytes(b"")
    os.truncate(whole, 100_000)
    for p in (f, whole):
        assert sparse_sha256(p) == sparse_sha256(p, chunk=4096) == sha256(p)


def _requests_in(server, repo: str, folder, names: set) -> dict:
    """How many range requests the server answered for each stored tensor of ``names`` (by where the
    asked range starts) of the single weight file of ``repo`` (a ``folder`` copy of it)."""
    f = next(folder.glob("*.safetensors"))
    start, head = header(f)
    spans = {k: (start + head[k]["data_offsets"][0], start + head[k]["data_offsets"][1]) for k in names}
    out = dict.fromkeys(names, 0)
    for method, path, headers in server.requests:
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", headers.get("Range", headers.get("range", "")))
        if method == "GET" and path.startswith(f"/{repo}/resolve/") and path.endswith(f.name) and m:
            for k, (a, b) in spans.items():
                out[k] += a <= int(m.group(1)) < b
    return out


def test_small_scale_tensor_read_whole_in_one_request(moe_folders, tmp_path, monkeypatch):
    """FP8 block scales of 8 × 8 blocks: an expert's up_proj scale tensor (8 × 4 float32, 128 bytes) is
    read in one request for the whole tensor, not one per run of scale rows; the rows equal the
    local read's and the bytes sent are the dry run's plan."""
    from tracing.models import Checkpoint
    from tracing.stats.base import sampled_rows
    folder = write_fp8(moe_folders[0]["ds-a"], tmp_path / "fp8-8", block=(8, 8))
    server = serving({"org/fp8-8": folder}, tmp_path, monkeypatch)
    try:
        remote, local = Checkpoint("org/fp8-8", remote=True), Checkpoint(folder)
        ups = [u.up for u in remote.arch.units(1)]
        idx = sampled_rows(64, K, 0)
        planned = remote.backend.header_bytes() + sum(remote.backend.planned_bytes(t, idx) for t in ups)
        for t in ups:
            assert torch.equal(remote.get_rows(t, idx), local.get_rows(t, idx)), t
        assert sum(sent(server, "org/fp8-8").values()) == planned
        scales = {t.removesuffix(".weight") + ".weight_scale_inv" for t in ups}
        assert _requests_in(server, "org/fp8-8", folder, scales) == dict.fromkeys(scales, 1)
    finally:
        server.close()


def test_recorded_reads_fetched_ahead_are_served_from_memory(hub, moe_folders):
    """Reads recorded (zeros given, nothing sent), then fetched ahead all at once: the same reads made
    next send no request and give the file's bytes."""
    from tracing.sources.hubhttp import HubFiles
    folder = moe_folders[0]["ds-a"]
    data = (folder / "model.safetensors").read_bytes()
    h = HubFiles("org/ds-a", hub.repos["org/ds-a"][1], {}, "ds-a", progress=False)
    ranges = [(1000 + 300 * i, 100 + i) for i in range(40)]
    before = len(hub.requests)
    with h.record() as asked:
        assert h.read_many("model.safetensors", ranges) == [bytes(n) for _, n in ranges]
    assert len(hub.requests) == before and len(asked) == len(ranges)
    h.fetch_ahead(asked)
    assert len(hub.requests) == before + len(ranges)
    got = h.read_many("model.safetensors", ranges)
    assert len(hub.requests) == before + len(ranges)  # from memory
    assert got == [data[s:s + n] for s, n in ranges]
    assert h.read_many("model.safetensors", ranges[:2]) == [data[s:s + n] for s, n in ranges[:2]]
    assert len(hub.requests) == before + len(ranges) + 2  # used once: read again from the hub
