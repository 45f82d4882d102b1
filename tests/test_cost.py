"""A sampled test costs what it reads: what a weight-only run imports, the fast file identity of
screening (and the row store under it), the stages its timings hold, GGUF headers parsed once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from tracing import pvalues

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("transformers.modeling_utils", "transformers.configuration_utils", "scipy.stats")


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    from helpers import save_trio
    return save_trio(tmp_path_factory.mktemp("trio"))


def test_tails_equal_scipy_stats_bit_for_bit():
    """The t and chi-square tails come from scipy.special, computed as scipy.stats computes them."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        df = float(rng.integers(1, 20000)) * float(rng.uniform(0.5, 1.5))
        t = float(rng.standard_normal() * 10 ** rng.uniform(-3, 1.5))
        want = float(scipy.stats.t.logsf(t, df))
        if want > -700:  # beyond, both use arbitrary precision (scipy.stats' own value is -inf there)
            assert pvalues.t_logsf(t, df) == want
        x = abs(t) * df / 4
        want = float(scipy.stats.chi2.logsf(x, df))
        if want > -700 and x > 0:
            assert pvalues.chi2_logsf(x, df) == want


def _modules_after(body: str, env: dict) -> list[str]:
    """Run ``body`` in a fresh process; the HEAVY modules imported when it ends."""
    code = f"{body}\nimport sys, json\nprint('MODULES', json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("MODULES ")][-1]
    return json.loads(line.split(" ", 1)[1])


def _main(argv: list[str]) -> str:
    return (f"import runpy, sys\nsys.argv = ['main.py'] + {argv!r}\n"
            "try:\n    runpy.run_path('main.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n")


def test_weight_only_sampled_run_imports_no_model_machinery(trio, tmp_path):
    env = {**os.environ, "TRACING_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    argv = ["--base_model_id", trio["base"], "--ft_model_id", trio["ft"], "--stat", "cos", "--rows", "32",
            "--quiet", "--save", str(tmp_path / "r.p")]
    assert _modules_after(_main(argv), env) == []
    assert (tmp_path / "r.p").is_file()
    # the same check sees transformers' config machinery when something asks for the config object
    probe = f"from tracing.models import Checkpoint\nCheckpoint({trio['base']!r}).config"
    assert "transformers.configuration_utils" in _modules_after(probe, env)


@pytest.mark.parametrize("fmt", ["gguf", "fp8"])
def test_weight_only_sampled_run_on_quantized_files_imports_no_model_machinery(trio, tmp_path, fmt):
    """A GGUF file's config is read from its metadata, a quantized folder's config.json as data: the
    sampled run imports no transformers config or model machinery either (transformers' config object
    is built only for a forward pass)."""
    from quant_writers import write_fp8, write_gguf
    if fmt == "gguf":
        f = {n: str(write_gguf(Path(trio[n]), tmp_path / n / f"{n}.gguf", "Q8_0", with_tokenizer=False))
             for n in ("base", "ft")}
    else:
        f = {n: str(write_fp8(Path(trio[n]), tmp_path / n)) for n in ("base", "ft")}
    env = {**os.environ, "TRACING_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    argv = ["--base_model_id", f["base"], "--ft_model_id", f["ft"], "--stat", "cos", "--rows", "32",
            "--quiet", "--save", str(tmp_path / "r.p")]
    assert _modules_after(_main(argv), env) == []
    assert (tmp_path / "r.p").is_file()
    probe = f"from tracing.models import Checkpoint\nCheckpoint({f['base']!r}).config"
    assert "transformers.configuration_utils" in _modules_after(probe, env)


def _rows_of(folder, digest, store):
    from tracing.models import Checkpoint
    from tracing.rowstore import model_key, with_store
    from tracing.stats.base import sampled_rows
    ck = Checkpoint(str(folder), digest=digest)
    up = ck.arch.units(0)[0].up
    src = with_store(ck, store)
    return model_key(ck), src.get_rows(up, sampled_rows(ck.arch.h, 16, 0)), src.counts()


@pytest.mark.parametrize("digest", ["fast", "full"])
def test_rowstore_a_rewritten_file_is_a_new_key_under_either_identity(tmp_path, digest):
    import torch
    from helpers import tiny_config, tiny_model
    cfg = tiny_config(L=2, d=32, h=64)
    folder = tmp_path / "m"
    tiny_model(cfg, seed=1).save_pretrained(folder)
    key, first, _ = _rows_of(folder, digest, tmp_path / "store")
    assert _rows_of(folder, digest, tmp_path / "store")[2] == {"from_store": 1, "read": 0}
    f = folder / "model.safetensors"
    old = f.stat()
    tiny_model(cfg, seed=2).save_pretrained(folder)  # other values, the same header
    os.utime(f, ns=(old.st_atime_ns, old.st_mtime_ns))  # even with its old modification time back
    key2, again, counts = _rows_of(folder, digest, tmp_path / "store")
    assert key2 != key and counts == {"from_store": 0, "read": 1}
    assert not torch.equal(again, first)


def test_fast_identity_reads_headers_only_and_results_are_equal(trio, tmp_path, monkeypatch):
    import tracing.models
    from tracing.api import run_pair
    from tracing.options import Options
    monkeypatch.setenv("TRACING_CACHE_DIR", str(tmp_path / "cache"))
    hashed = []
    real = tracing.models.sha256_file
    monkeypatch.setattr(tracing.models, "sha256_file", lambda f, *a: hashed.append(f) or real(f, *a))
    opts = Options(stat=["cos"], rows=32)
    (fast,) = run_pair(trio["base"], trio["ft"], opts, progress=False)
    assert hashed == []  # a sampled test's default: no weight file hashed
    (full,) = run_pair(trio["base"], trio["ft"], opts, progress=False, digest="full")
    assert len(hashed) == 2
    assert fast["log10_pvalue"] == full["log10_pvalue"] and fast["per_layer"] == full["per_layer"]
    (f,) = fast["models"]["base"]["files"]
    assert "sha256" not in f and len(f["header_sha256"]) == 64 and f["size"] > 0
    assert "fast file identity" in fast["models"]["base"]["identity"]
    assert full["models"]["base"]["files"][0]["sha256_source"] == "computed"
    assert "identity" not in full["models"]["base"]
    for rec in (fast, full):
        assert {"load", "digest", "read", "statistic"} <= set(rec["timings"])
        assert 0 < rec["timings"]["read"] <= rec["timings"]["statistic"]
    # the same weights under the fast identity: the same folder, not merely the same header
    (same,) = run_pair(trio["base"], trio["base"], opts, progress=False)
    assert any("same weights" in n for n in same["notes"])
    assert not any("same weights" in n for n in fast["notes"])


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    """A tiny Llama as GGUF files of three storage types, with a tokenizer (string arrays) when the
    demo family is built."""
    from helpers import tiny_config, tiny_model
    from quant_writers import write_gguf
    root = tmp_path_factory.mktemp("gguf")
    tiny_model(tiny_config(L=2, d=64, h=128), seed=3).save_pretrained(root / "hf")
    from tracing import demo as demo_family
    demo_family.ensure_built(progress=False)
    out = {q: write_gguf(root / "hf", root / q / f"m.{q}.gguf", q) for q in ("F16", "Q8_0", "Q4_0")}
    out["tok"] = write_gguf(demo_family.resolve_demo("demo:base-a"), root / "tok" / "d.Q8_0.gguf", "Q8_0")
    return out


def test_gguf_header_equals_gguf_readers(gguf_files):
    from gguf import GGUFReader
    from tracing.sources.ggufheader import header_of
    for f in gguf_files.values():
        ours, ref = header_of(f), GGUFReader(f)
        want = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
        assert list(ours.fields) == list(want)
        for k, v in want.items():
            assert ours.fields[k].contents() == v.contents(), k
            assert len(ours.fields[k].data) == len(v.data), k
        assert len(ours.tensors) == len(ref.tensors)
        for a, b in zip(ours.tensors, ref.tensors):
            assert (a.name, a.tensor_type, a.n_elements, a.n_bytes, a.data_offset) == \
                   (b.name, b.tensor_type, b.n_elements, b.n_bytes, b.data_offset)
            assert a.shape.tolist() == b.shape.tolist()
            assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape
            assert np.array_equal(a.data, b.data)
    assert len(header_of(gguf_files["tok"]).fields["tokenizer.ggml.tokens"].data) > 100


def test_gguf_is_parsed_once_per_file_and_sampled_results_unchanged(gguf_files, monkeypatch):
    import tracing.sources.ggufheader as gh
    from tracing.api import run_pair
    from tracing.options import Options
    calls = []
    real = gh.parse
    monkeypatch.setattr(gh, "parse", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    monkeypatch.setattr(gh, "_CACHE", {})
    f = str(gguf_files["Q8_0"])
    (same,) = run_pair(f, f, Options(stat=["cos"], rows=32), progress=False)
    assert len(calls) == 1  # both sides, the record's identity: one parse
    (other,) = run_pair(f, str(gguf_files["Q4_0"]), Options(stat=["cos"], rows=32), progress=False)
    assert len(calls) == 2
    assert other["log10_pvalue"] < -20 and same["models"]["base"]["files"][0]["header_sha256"]
    # a rewritten file is parsed again
    p = gguf_files["Q4_0"]
    p.write_bytes(p.read_bytes())
    run_pair(f, str(p), Options(stat=["cos"], rows=32), progress=False)
    assert len(calls) == 3


@pytest.fixture(scope="module")
def hub_ggufs(tmp_path_factory):
    """A base and its fine-tune as Q8_0 GGUF files, h = 1024 (so K rows are a few % of a tensor),
    each alone in a repository folder (no config.json: the config comes from the metadata)."""
    from helpers import finetuned, tiny_config, tiny_model
    from quant_writers import write_gguf
    root = tmp_path_factory.mktemp("hubgguf")
    base = tiny_model(tiny_config(d=256, h=1024, L=2), seed=0)
    out = {}
    for name, model in (("base", base), ("ft", finetuned(base, seed=1))):
        model.save_pretrained(root / "hf" / name)
        out[name] = write_gguf(root / "hf" / name, root / name / f"{name}.Q8_0.gguf", "Q8_0", with_tokenizer=False)
    return out


@pytest.fixture
def hub(hub_ggufs, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from hub_server import HubServer
    server = HubServer(stall=1.5)
    for name, f in hub_ggufs.items():
        server.add(f"org/{name}", f.parent)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield server
    server.close()


def test_gguf_on_the_hub_reads_sampled_rows_by_ranges_equal_to_local(hub, hub_ggufs):
    import torch
    from tracing.api import run_pair
    from tracing.models import Checkpoint
    from tracing.options import Options
    from tracing.stats.base import sampled_rows
    remote, local = Checkpoint("org/base", remote=True), Checkpoint(str(hub_ggufs["base"]))
    assert type(remote.backend).__name__ == "RemoteGGUFBackend" and not any(remote.path.glob("*.gguf"))
    idx = sampled_rows(1024, 16, 0)
    for i in range(2):
        up = remote.arch.units(i)[0].up
        a, b = remote.get_rows(up, idx), local.get_rows(up, idx)
        assert a.dtype == b.dtype and torch.equal(a, b)
    size = hub_ggufs["base"].stat().st_size
    served = hub.served["org/base/base.Q8_0.gguf"]
    row = 256 // 32 * 34  # a Q8_0 row of d = 256: eight blocks of 34 bytes
    assert served <= (1 << 16) + 2 * 16 * 2 * row  # the header's first read, then the rows (and gaps of a row)
    assert served < 0.1 * size
    planned = sum(remote.backend.planned_bytes(remote.arch.units(i)[0].up, idx) for i in range(2))
    assert planned == served - min(size, 1 << 16)  # --dry-run's figure is what the rows cost
    from tracing.sources.cost import dry_run_lines
    assert any("org/ft" in line for line in dry_run_lines("org/base", "org/ft", Options(stat=["cos"], rows=16)))
    opts = Options(stat=["cos"], rows=16)
    (r,) = run_pair("org/base", "org/ft", opts, progress=False)
    (l,) = run_pair(str(hub_ggufs["base"]), str(hub_ggufs["ft"]), opts, progress=False)
    assert r["log10_pvalue"] == l["log10_pvalue"] and r["per_layer"] == l["per_layer"]
    (f,) = r["models"]["ft"]["files"]
    assert f["sha256_source"] == "hub" and f["read"].startswith("range-read") and 0 < f["bytes_read"] < size


def test_gguf_on_the_hub_reads_whole_tensors_equal_to_local(hub, hub_ggufs):
    """Whole tensors by range requests too: a projection, Llama's rotary-permuted Q rows, a norm."""
    import torch
    from tracing.models import Checkpoint
    remote, local = Checkpoint("org/base", remote=True), Checkpoint(str(hub_ggufs["base"]))
    names = [n for n in remote.arch.names() if ".layers.0." in n and n.endswith(("q_proj.weight", "norm.weight"))]
    for n in [remote.arch.units(0)[0].up] + names:
        assert torch.equal(remote.get(n), local.get(n)), n


def test_scan_hashes_in_full_only_a_possible_reupload(trio, tmp_path, monkeypatch):
    import shutil
    import tracing.models
    from tracing import scan
    monkeypatch.setenv("TRACING_CACHE_DIR", str(tmp_path / "cache"))
    hashed = []
    real = tracing.models.sha256_file
    monkeypatch.setattr(tracing.models, "sha256_file", lambda f, *a: hashed.append(Path(f).parent.name) or real(f, *a))
    copy = tmp_path / "copy"
    shutil.copytree(trio["base"], copy)
    cand = scan._open(trio["base"], None, memory=True)
    hashes = scan.weight_hashes(cand)
    ft = scan._open(trio["ft"])
    assert hashes == scan.weight_hashes(ft)  # a fine-tune saved like its base: the same header
    assert not scan.same_weights(cand, ft, hashes) and hashed == []  # told apart without hashing
    assert scan.same_weights(cand, scan._open(str(copy)), hashes) and sorted(hashed) == ["base", "copy"]




def _collector_state():
    import gc
    return gc.isenabled(), gc.get_freeze_count()


def test_quick_start_pauses_the_collector_until_work_begins_and_restores_it():
    """run_cli(quick_start=True): the collector is off while the command starts, on (with the start-up
    frozen out of its walks) once its work begins, and as before (on, nothing frozen) when it returns,
    whether it returned, failed with a user error, or raised."""
    from tracing.cli_util import run_cli, work_begins
    from tracing.errors import TracingError
    seen = []

    def command(argv):
        seen.append(_collector_state())
        work_begins()
        seen.append(_collector_state())
        if argv == ["fail"]:
            raise TracingError("bad input")
        if argv == ["crash"]:
            raise RuntimeError("bug")
        return 0

    before = _collector_state()
    assert before == (True, 0)
    assert run_cli(command, [], quick_start=True) == 0
    assert seen[0] == (False, 0) and seen[1][0] is True and seen[1][1] > 1000
    assert _collector_state() == before
    assert run_cli(command, ["fail"], quick_start=True) == 2
    assert _collector_state() == before
    with pytest.raises(RuntimeError):
        run_cli(command, ["crash"], quick_start=True)
    assert _collector_state() == before
    seen.clear()  # without quick_start nothing changes, and work_begins is a no-op
    assert run_cli(command, []) == 0
    assert seen == [(True, 0), (True, 0)]


def test_a_compare_run_computes_with_the_collector_on(trio, tmp_path, monkeypatch):
    """main.py's command starts with the collector paused; its statistic runs with it on (a long run's
    garbage cycles are collected), and the collector is as before when the command returns."""
    import tracing.api as api
    import tracing.stats.cos as cos
    from tracing.cli_compare import main
    from tracing.cli_util import run_cli
    seen = {}

    def spy(module, name, key):
        real = getattr(module, name)

        def wrapper(*a, **k):
            seen.setdefault(key, _collector_state())
            return real(*a, **k)
        monkeypatch.setattr(module, name, wrapper)
    spy(api, "get_stat", "starting")  # looked up as the statistic's computation begins
    spy(cos, "up_matchings", "computing")
    argv = ["--base_model_id", trio["base"], "--ft_model_id", trio["ft"], "--stat", "cos", "--quiet",
            "--save", str(tmp_path / "r.p")]
    assert run_cli(main, argv, quick_start=True) == 0
    assert seen["starting"] == (False, 0)  # paused through the start-up
    assert seen["computing"][0] is True and seen["computing"][1] > 0
    assert _collector_state() == (True, 0)
    assert (tmp_path / "r.p").is_file()


def test_main_py_exits_with_its_code_and_its_output(trio, tmp_path):
    """main.py leaves through cli_util.leave (the live objects frozen before the interpreter's last
    collections): the exit code, the printed summary and the saved record are all there."""
    env = {**os.environ, "TRACING_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "main.py", "--base_model_id", trio["base"], "--ft_model_id", trio["ft"],
                         "--stat", "cos", "--rows", "32", "--save", str(tmp_path / "r.p")], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "p-value" in ok.stdout and (tmp_path / "r.p").is_file()
    bad = subprocess.run([sys.executable, "main.py", "--base_model_id", str(tmp_path / "missing"), "--ft_model_id",
                          trio["ft"], "--stat", "cos"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
