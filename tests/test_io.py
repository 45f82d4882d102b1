"""Opening models and writing records: broken files, odd model ids, file modes, secrets, one loader."""
import json
import os
import pickle
import shutil
import stat as stat_mod
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import finetuned, tiny_config, tiny_model
from tracing.specs import parse_spec
from tracing.fileio import atomic_write
from tracing.results import iter_records, save_record

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--stat", "cos", "--quiet"]


def main(*args, env=None, umask=None):
    e = dict(os.environ, **(env or {}))
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], capture_output=True, text=True,
                          env=e, cwd=ROOT, timeout=600, preexec_fn=pre)


def one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("io")
    cfg = tiny_config("llama", L=2)
    base = tiny_model(cfg, seed=1)
    base.save_pretrained(root / "base")
    finetuned(base, seed=2, noise=0.2).save_pretrained(root / "ft")
    (root / "bin").mkdir()
    shutil.copy(root / "ft" / "config.json", root / "bin" / "config.json")
    torch.save({k: v.contiguous() for k, v in base.state_dict().items()}, root / "bin" / "pytorch_model.bin")
    return root


def variant(models, tmp_path, name, src="ft"):
    """A copy of a saved model to break."""
    dst = tmp_path / name
    shutil.copytree(models / src, dst)
    return dst


# ---- broken weight files ------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "random", "truncated"])
def test_corrupt_safetensors(models, tmp_path, damage):
    m = variant(models, tmp_path, damage)
    f = m / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"empty": b"", "random": os.urandom(4096), "truncated": data[: len(data) // 2]}[damage])
    out = tmp_path / "never.p"
    r = main("--base_model_id", models / "base", "--ft_model_id", m, *QUICK, "--save", out)
    one_line_error(r, "model.safetensors", "corrupt or incomplete", "download")
    assert not out.exists()


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_corrupt_pytorch_bin(models, tmp_path, damage):
    m = variant(models, tmp_path, damage, src="bin")
    f = m / "pytorch_model.bin"
    data = f.read_bytes()
    f.write_bytes(os.urandom(4096) if damage == "random" else data[: len(data) // 2])
    out = tmp_path / "never.p"
    r = main("--base_model_id", models / "base", "--ft_model_id", m, *QUICK, "--save", out)
    one_line_error(r, "pytorch_model.bin", "corrupt or incomplete", "download")
    assert not out.exists()


@pytest.mark.parametrize("damage", ["not json", "no weight_map", "missing shard"])
def test_bad_index_json(models, tmp_path, damage):
    m = variant(models, tmp_path, damage.replace(" ", "_"))
    idx = m / "model.safetensors.index.json"
    weight_map = {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}
    idx.write_text({"not json": "{\"weight_map\": {",
                    "no weight_map": json.dumps({"metadata": {}}),
                    "missing shard": json.dumps({"weight_map": weight_map})}[damage])
    out = tmp_path / "never.p"
    r = main("--base_model_id", models / "base", "--ft_model_id", m, *QUICK, "--save", out)
    line = one_line_error(r, "model.safetensors.index.json")
    assert "download" in line
    assert not out.exists()


# ---- configs that do not describe the weights ---------------------------------------------
@pytest.mark.parametrize("key", ["hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"])
def test_config_missing_size(models, tmp_path, key):
    m = variant(models, tmp_path, key)
    cfg = json.loads((m / "config.json").read_text())
    del cfg[key]
    (m / "config.json").write_text(json.dumps(cfg))
    r = main("--base_model_id", models / "base", "--ft_model_id", m, *QUICK)
    one_line_error(r, key, "config.json")


def test_config_sizes_disagree_with_weights(models, tmp_path):
    m = variant(models, tmp_path, "h96")
    cfg = json.loads((m / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (m / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "never.p"
    r = main("--base_model_id", models / "base", "--ft_model_id", m, *QUICK, "--save", out)
    one_line_error(r, "model.layers.0.mlp.", "(96, 64)", "(128, 64)", "config.json")
    assert not out.exists()


def test_config_check_reads_no_tensor_data(models, monkeypatch):
    """The shape check uses the safetensors headers only: no tensor is read when a model is opened."""
    import safetensors
    from tracing.models import Checkpoint
    real, calls = safetensors.safe_open, []

    class Spy:
        def __init__(self, *a, **k):
            self.h = real(*a, **k)

        def __enter__(self):
            self.h.__enter__()
            return self

        def __exit__(self, *exc):
            return self.h.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.h, name)

        def get_tensor(self, name):
            calls.append(name)
            return self.h.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    ck = Checkpoint(models / "base")
    assert calls == []
    ck.get("model.norm.weight")  # the spy sees real reads
    assert calls == ["model.norm.weight"]


# ---- model ids and paths ------------------------------------------------------------------
def test_path_component_too_long(models, tmp_path):
    long = tmp_path / ("x" * 300)
    r = main("--base_model_id", models / "base", "--ft_model_id", long, *QUICK)
    one_line_error(r, "too long")
    r = main("--base_model_id", models / "base", "--ft_model_id", models / "ft", *QUICK, "--save", long / "r.p")
    one_line_error(r, "too long")
    r = main("--base_model_id", models / "base", "--ft_model_id", models / "ft", *QUICK, "--save", tmp_path / ("y" * 300 + ".p"))
    one_line_error(r, "too long")


@pytest.mark.parametrize("text,kind,repo,rev", [
    ("org/name", "hub", "org/name", None),
    ("gpt2", "hub", "gpt2", None),
    ("org/name@main", "hub", "org/name", "main"),
    ("org/name@refs/pr/1", "hub", "org/name", "refs/pr/1"),
    ("meta-llama/Llama-2-7b-hf@01c7f73d771dfac7d292323805ebc428287df4f9", "hub", "meta-llama/Llama-2-7b-hf",
     "01c7f73d771dfac7d292323805ebc428287df4f9"),
    ("demo:base-a", "demo", None, None),
    ("/abs/path/model", "local", None, None),
    ("./rel", "local", None, None),
    ("a/b/c", "local", None, None),
    ("~/m", "local", None, None),
])
def test_parse_spec(text, kind, repo, rev):
    s = parse_spec(text)
    assert (s.kind, s.repo_id, s.revision) == (kind, repo, rev)
    if kind == "demo":
        assert s.name == "base-a"
    if kind == "local":
        assert s.path == Path(text).expanduser()


def test_existing_folder_wins_over_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_spec("org/name").kind == "local"


def test_hub_revision_with_slash_is_a_hub_id(models):
    r = main("--base_model_id", models / "base", "--ft_model_id", "no-org/no-model@refs/pr/1", *QUICK,
             env={"HF_HUB_OFFLINE": "1"})
    line = one_line_error(r, "cannot fetch", "no-org/no-model@refs/pr/1")
    assert "does not exist" not in line


def test_offline_error_does_not_advise_offline(models):
    r = main("--base_model_id", models / "base", "--ft_model_id", "no-org/no-model", *QUICK,
             env={"HF_HUB_OFFLINE": "1"})
    line = one_line_error(r, "cannot fetch")
    assert "HF_HUB_OFFLINE" in line and "set HF_HUB_OFFLINE" not in line


# ---- records on disk ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def record(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "r.p"
    r = main("--base_model_id", models / "base", "--ft_model_id", models / "ft", *QUICK, "--save", out, umask=0o022)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_record_loads_without_torch(record):
    code = f"""
import sys, pickle
sys.modules['torch'] = None  # any attempt to import torch fails
with open({str(record)!r}, 'rb') as f:
    rec = pickle.load(f)
assert 'torch' not in sys.modules or sys.modules['torch'] is None
print(type(rec['versions']['torch']).__name__, rec['stat'])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["str", "cos"]


def test_files_respect_umask(record, tmp_path):
    assert stat_mod.S_IMODE(record.stat().st_mode) == 0o644
    old = os.umask(0o027)
    try:
        p = save_record({"stat": "cos", "x": 1}, tmp_path / "a.p")
        from tracing.generation import save_samples
        g = save_samples({"model": "org/name", "samples": [{"text": "hi"}]}, tmp_path / "gen")
    finally:
        os.umask(old)
    assert stat_mod.S_IMODE(p.stat().st_mode) == 0o640
    assert stat_mod.S_IMODE(g.stat().st_mode) == 0o640
    assert json.loads(g.read_text())["samples"] == [{"text": "hi"}]


def test_atomic_write_cleans_up_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write(target, "old")
    with pytest.raises(TypeError):
        atomic_write(target, object())
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    atomic_write(target, b"\x00new")
    assert target.read_bytes() == b"\x00new"


def _clean(rec):
    """The parts of a record that do not depend on timing."""
    drop = {"time", "timings", "host", "job_id"}
    return {k: v for k, v in rec.items() if k not in drop}


@pytest.mark.parametrize("token", ["a", "0"])
def test_short_token_leaves_record_intact(models, record, tmp_path, token):
    out = tmp_path / "t.p"
    r = main("--base_model_id", models / "base", "--ft_model_id", models / "ft", *QUICK, "--save", out,
             env={"HF_TOKEN": token})
    assert r.returncode == 0, r.stderr[-2000:]
    raw = out.read_bytes()
    assert b"redacted" not in raw
    with open(record, "rb") as f:
        ref = pickle.load(f)
    with open(out, "rb") as f:
        rec = pickle.load(f)
    ref_args, rec_args = ref.pop("args"), rec.pop("args")
    assert {k: v for k, v in rec_args.items() if k != "save"} == {k: v for k, v in ref_args.items() if k != "save"}
    assert _clean(rec) == _clean(ref)


def test_realistic_token_never_written(models, tmp_path):
    secret = "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ012345"
    folder = tmp_path / f"copy_{secret}"
    shutil.copytree(models / "ft", folder)
    out = tmp_path / "t.p"
    r = main("--base_model_id", models / "base", "--ft_model_id", folder, *QUICK, "--save", out,
             env={"HF_TOKEN": secret})
    assert r.returncode == 0, r.stderr[-2000:]
    assert secret.encode() not in out.read_bytes()
    assert secret not in r.stdout + r.stderr
    with open(out, "rb") as f:
        rec = pickle.load(f)
    assert rec["log10_pvalue"] < -6 and rec["models"]["ft"]["files"][0]["sha256"]


def test_iter_records_one_set_of_rules(tmp_path):
    save_record({"stat": "cos", "status": "ok"}, tmp_path / "a" / "cos.p")
    save_record({"stat": "emb", "status": "ok"}, tmp_path / "b.pkl")
    save_record({"stat": "hidden"}, tmp_path / ".submitit" / "x.p")
    (tmp_path / "bad.p").write_bytes(b"not a pickle")
    (tmp_path / "list.p").write_bytes(pickle.dumps([1, 2]))
    got = {rel: (rec, err) for rel, rec, err in iter_records(tmp_path)}
    assert set(got) == {os.path.join("a", "cos.p"), "b.pkl", "bad.p", "list.p"}
    assert got[os.path.join("a", "cos.p")][0]["stat"] == "cos" and got["b.pkl"][1] is None
    assert got["bad.p"][0] is None and "UnpicklingError" in got["bad.p"][1]
    assert got["list.p"][0] is None and "not a result record" in got["list.p"][1]
    from tracing.results import load_results
    df = load_results(tmp_path)
    assert sorted(df["status"]) == ["ok", "ok", "unreadable", "unreadable"]


# ---- the forward path ---------------------------------------------------------------------
def test_demo_match_run_has_no_future_warning(tmp_path):
    r = main("--base_model_id", "demo:base-a", "--ft_model_id", "demo:a-docs", "--stat", "match",
             "--num_samples", "2", "--block_size", "32", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "FutureWarning" not in r.stderr and "deprecated" not in r.stderr, r.stderr[-2000:]
