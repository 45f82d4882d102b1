"""Attesting a sampled record (``--rows``: local weight files named by their fast identity): the
statement's subjects get full SHA-256 digests, computed at attest time only after the fast identity
still matches; a file changed since the run is refused."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_evidence import cli, one_line, payload, write_keys
from helpers import save_trio
from tracing import attest as attest_cli
from tracing import verify as verify_cli
from tracing.api import run_pair
from tracing.results import load_record

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("attest_sampled")
    return {"root": root, **save_trio(root), "key": write_keys(root)}


def sampled(models, folder, ft=None):
    result = folder / "rows.p"
    run_pair(models["base"], ft or models["ft"], stat=["cos"], rows=32, save=result, progress=False)
    return result


def test_sampled_record_attested_later_gets_full_sha256_subjects(models, tmp_path, capsys):
    result = sampled(models, tmp_path)
    rec = load_record(result)
    for role in ("base", "ft"):  # the run named its weights by the fast identity only
        (entry,) = rec["models"][role]["files"]
        assert "sha256" not in entry and entry["header_sha256"]
    out = tmp_path / "s.json"
    assert cli(attest_cli, result, "--key", models["key"][0], "--out", out) == 0
    stmt = payload(out)
    for sub, role in zip(stmt["subject"], ("base", "ft")):
        files = {f["name"]: f for f in sub["annotations"]["files"]}
        want = hashlib.sha256((Path(models[role]) / WEIGHTS).read_bytes()).hexdigest()
        assert files[WEIGHTS]["sha256"] == want
        assert files[WEIGHTS]["sha256_source"] == "computed at attest time (fast identity checked)"
        assert sub["annotations"]["computed_at_attest"] == [WEIGHTS]
    capsys.readouterr()
    assert cli(verify_cli, out, "--key", models["key"][1], "--no-recompute") == 0
    line = one_line(capsys, "verified")
    assert f"hashed at attest time: base {WEIGHTS}, ft {WEIGHTS}" in line


def test_file_changed_after_sampled_run_is_refused_even_with_its_mtime_restored(models, tmp_path, capsys):
    ft = tmp_path / "ft"
    shutil.copytree(models["ft"], ft)
    result = sampled(models, tmp_path, str(ft))
    f = ft / WEIGHTS
    st = f.stat()
    blob = bytearray(f.read_bytes())
    blob[-8:] = bytes(8)  # the values of the last tensor: same size, same header
    f.write_bytes(bytes(blob))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    out = tmp_path / "s.json"
    capsys.readouterr()
    assert cli(attest_cli, result, "--key", models["key"][0], "--out", out) == 2
    line = one_line(capsys, "error:")
    assert WEIGHTS in line and "changed since the result was computed" in line and "again" in line
    assert not out.exists()


def test_launch_attest_of_a_sampled_run_names_full_digests(models, tmp_path):
    import yaml
    cfg = tmp_path / "list.yaml"
    cfg.write_text(yaml.safe_dump({"base_models": [models["base"]], "ft_models": [models["ft"]]}))
    conf = tmp_path / "slurm-none.conf"
    conf.write_text("ClusterName=none\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\n")
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), str(cfg), "--stat", "cos", "--rows", "32",
                        "--out", str(tmp_path / "out"), "--no-report", "--attest-key", str(models["key"][0])],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "SLURM_CONF": str(conf)})
    assert r.returncode == 0, r.stdout + r.stderr
    (result,) = sorted((tmp_path / "out").rglob("cos-*.p"))
    assert "header_sha256" in json.dumps(load_record(result)["models"], default=str)
    stmt = payload(result.with_suffix(".intoto.json"))
    for sub, role in zip(stmt["subject"], ("base", "ft")):
        files = {f["name"]: f for f in sub["annotations"]["files"]}
        assert files[WEIGHTS]["sha256"] == hashlib.sha256((Path(models[role]) / WEIGHTS).read_bytes()).hexdigest()
        assert sub["annotations"]["computed_at_attest"] == [WEIGHTS]


@pytest.fixture
def hub(models, tmp_path, monkeypatch):
    """The tiny models served as org/base and org/ft by the test hub, the client pointed at it, an empty cache."""
    from hub_server import serving
    server = serving({f"org/{name}": models[name] for name in ("base", "ft")}, tmp_path, monkeypatch, stall=1.5)
    yield server
    server.close()


def test_range_read_record_keeps_the_hub_digest_and_verifies(models, hub, tmp_path, capsys):
    result = tmp_path / "remote.p"
    run_pair("org/base", "org/ft", stat=["cos"], rows=32, save=result, progress=False)
    rec = load_record(result)
    assert all(f["sha256_source"] == "hub" for r in ("base", "ft") for f in rec["models"][r]["files"])
    assert not any(Path(rec["models"]["ft"]["path"]).glob("*.safetensors"))  # range-read: not on this machine
    out = tmp_path / "s.json"
    assert cli(attest_cli, result, "--key", models["key"][0], "--out", out) == 0
    stmt = payload(out)
    for sub, role in zip(stmt["subject"], ("base", "ft")):
        files = {f["name"]: f for f in sub["annotations"]["files"]}
        assert files[WEIGHTS]["sha256"] == hashlib.sha256((Path(models[role]) / WEIGHTS).read_bytes()).hexdigest()
        assert files[WEIGHTS]["sha256_source"].startswith("hub (range-read")
        assert sub["annotations"]["computed_at_attest"] == [] and "config.json" in files
    capsys.readouterr()
    # verify fetches the models named by the subjects and finds the same root digests
    assert cli(verify_cli, out, "--key", models["key"][1], "--no-recompute") == 0, capsys.readouterr()


def test_index_follow_up_names_the_models_as_a_sampled_run_and_attests_with_full_digests(models, tmp_path):
    """The index screen reads the candidate's sampled rows without hashing it; its ``rows:K``
    follow-up record names both models by the fast identity (as main.py --rows and the scan do), and
    attesting that record hashes them then."""
    from tracing.index import Settings, screen
    from tracing.index.build import build
    idx = tmp_path / "index"
    assert [o["status"] for o in build([(models["base"], "tiny"), (models["indep"], "tiny")], idx,
                                       Settings(rows=64), workers=0)] == ["built", "built"]
    lines = {x.reference: x for x in screen(models["ft"], idx, follow_up="rows:32", out=tmp_path / "scan")}
    assert lines[models["base"]].follow_up_verdict == "dependent"
    (result,) = (tmp_path / "scan").glob("*_rows32.p")
    rec = load_record(result)
    for role in ("base", "ft"):
        (entry,) = rec["models"][role]["files"]
        assert "sha256" not in entry and entry["header_sha256"]
    out = tmp_path / "s.json"
    assert cli(attest_cli, result, "--key", models["key"][0], "--out", out) == 0
    for sub, role in zip(payload(out)["subject"], ("base", "ft")):
        files = {f["name"]: f for f in sub["annotations"]["files"]}
        assert files[WEIGHTS]["sha256"] == hashlib.sha256((Path(models[role]) / WEIGHTS).read_bytes()).hexdigest()
        assert sub["annotations"]["computed_at_attest"] == [WEIGHTS]
