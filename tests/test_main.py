"""main.py end to end, as a subprocess on tiny models saved to disk: result pickles and errors."""
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import finetuned, tiny_config, tiny_model

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--dataset", "random", "--num_samples", "4", "--block_size", "32", "--quiet"]
SEVEN_KEYS = ("args", "commit", "non-aligned test stat", "time")


def main(*args, env=None, check=False):
    e = dict(os.environ, **(env or {}))
    out = subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], capture_output=True, text=True,
                         env=e, cwd=ROOT, timeout=600)
    if check and out.returncode:
        raise AssertionError(out.stderr[-3000:])
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    cfg = tiny_config("llama", L=3)
    base = tiny_model(cfg, seed=1)
    base.save_pretrained(root / "base")
    finetuned(base, seed=2, noise=0.2).save_pretrained(root / "ft")
    tiny_model(cfg, seed=3).save_pretrained(root / "other")
    tiny_model(tiny_config("llama", L=2), seed=4).save_pretrained(root / "shallow")
    (root / "noweights").mkdir()
    cfg.save_pretrained(root / "noweights")
    return root


def load(p):
    with open(p, "rb") as f:
        return pickle.load(f)


def plain(x):
    if isinstance(x, dict):
        return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return all(plain(v) for v in x)
    return x is None or isinstance(x, (bool, int, float, str))


@pytest.mark.parametrize("stat", ["cos", "emb", "l2", "csh", "match", "jsd", "mode", "fixed"])
def test_every_stat_writes_a_plain_record(models, tmp_path, stat):
    out = tmp_path / f"{stat}.p"
    extra = ["--num_perm", "9"] if stat in ("l2", "mode") else []
    r = main("--base_model_id", models / "base", "--ft_model_id", models / "ft", "--stat", stat, *FAST, *extra,
             "--save", out, check=True)
    rec = load(out)
    assert plain(rec)
    for k in SEVEN_KEYS:
        assert k in rec
    assert rec["status"] == "ok" and rec["stat"] == stat
    assert rec["models"]["base"]["files"][0]["sha256"] and rec["models"]["base"]["files"][0]["size"] > 0
    if stat in ("cos", "emb", "csh", "match", "fixed"):
        assert rec["log10_pvalue"] < -6
        assert rec["verdict"] == ("dependent" if stat != "match" else "dependent (approximate test)")
        assert "1e-" in r.stdout or "e-" in r.stdout
    if stat == "l2":
        assert rec["log10_pvalue"] == pytest.approx(-1.0)  # 1/(T+1): nothing in the null is as close
    if stat == "mode":  # untrained weights: the loss is noise here; the demo family tests the verdicts
        k = 10 ** rec["log10_pvalue"] * 10
        assert abs(k - round(k)) < 1e-9
        assert {"barrier", "loss_alpha", "curve"} <= set(rec["extra"])
    if stat == "jsd":
        assert rec["log10_pvalue"] is None and rec["statistic"] > 0


def test_independent_pair_not_significant(models, tmp_path):
    out = tmp_path / "r.p"
    main("--base_model_id", models / "base", "--ft_model_id", models / "other", "--stat", "cos,match", *FAST,
         "--save", out, check=True)
    for p in (out, tmp_path / "r_match.p"):
        rec = load(p)
        assert rec["log10_pvalue"] > math.log10(0.01), rec["stat"]


def test_permute_align_recovers_cos_and_eval_unchanged(models, tmp_path):
    out = tmp_path / "p.p"
    main("--base_model_id", models / "base", "--ft_model_id", models / "ft", "--stat", "cos", "--permute",
         "--align", "--eval", *FAST, "--save", out, check=True)
    rec = load(out)
    assert rec["log10_pvalue"] > -4  # the permutation hides the lineage from plain cos (unpermuted: < -600)
    assert rec["aligned"]["log10_pvalue"] < -6  # alignment recovers it
    assert rec["aligned test stat"] == rec["aligned"]["pvalue"]
    ref = tmp_path / "ref.p"
    main("--base_model_id", models / "base", "--ft_model_id", models / "ft", "--stat", "cos", "--eval", *FAST,
         "--save", ref, check=True)
    assert rec["ft loss"] == pytest.approx(load(ref)["ft loss"], rel=1e-5)
    assert rec["base loss"] == pytest.approx(load(ref)["base loss"], rel=1e-6)


def test_several_stats_in_a_folder(models, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    main("--base_model_id", models / "base", "--ft_model_id", models / "ft", "--stat", "cos,emb,csu", *FAST,
         "--save", folder, check=True)
    assert sorted(p.name for p in folder.iterdir()) == ["cos.p", "emb.p"]


def test_hf_token_never_stored_or_logged(models, tmp_path):
    secret = "hf_SeCrEtToKeN1234567890"
    out = tmp_path / "t.p"
    r = main("--base_model_id", models / "base", "--ft_model_id", models / "ft", "--stat", "cos", "--save", out,
             "--quiet", env={"HF_TOKEN": secret}, check=True)
    assert secret not in out.read_bytes().decode("latin-1")
    assert secret not in r.stdout + r.stderr


@pytest.mark.parametrize("args,needle", [
    (["--stat", "nope"], "unknown statistic"),
    (["--alpha", "2"], "outside [0, 1]"),
    (["--num_perm", "-1"], "negative"),
    (["--block_size", "0"], "positive"),
    (["--significance", "3"], "significance"),
])
def test_bad_options_one_line_error(models, tmp_path, args, needle):
    out = tmp_path / "never.p"
    r = main("--base_model_id", models / "base", "--ft_model_id", models / "ft", *args, "--save", out)
    assert r.returncode != 0
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_bad_inputs_one_line_error(models, tmp_path):
    cases = [
        (["--ft_model_id", tmp_path / "missing"], "does not exist"),
        (["--ft_model_id", models / "noweights"], "no weights"),
        (["--ft_model_id", models / "shallow", "--stat", "l2"], "same block shapes"),
        (["--ft_model_id", models / "ft", "--stat", "match", "--dataset", tmp_path / "empty.txt"], "holds no text"),
        (["--ft_model_id", models / "ft", "--stat", "match", "--dataset", tmp_path / "absent.txt"], "does not exist"),
        (["--ft_model_id", "no-org/no-model"], "cannot fetch"),
    ]
    (tmp_path / "empty.txt").write_text("  \n")
    for args, needle in cases:
        out = tmp_path / "never.p"
        r = main("--base_model_id", models / "base", *args, "--save", out, "--quiet", env={"HF_HUB_OFFLINE": "1"})
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr, (needle, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists()


def test_unwritable_save_path(models, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = main("--base_model_id", models / "base", "--ft_model_id", models / "ft", "--save", blocker / "sub" / "r.p")
    assert r.returncode == 2 and "cannot create" in r.stderr


def test_non_numeric_option(models):
    r = main("--base_model_id", models / "base", "--ft_model_id", models / "ft", "--alpha", "half")
    assert r.returncode != 0 and "invalid float value" in r.stderr


def test_every_statistic_checked_before_any_is_computed(models, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    r = main("--base_model_id", models / "base", "--ft_model_id", models / "shallow", "--stat", "emb,cos,l2",
             "--save", folder, "--quiet")
    assert r.returncode == 2 and "same block shapes" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and list(folder.iterdir()) == []


def test_unknown_device_and_overlong_block_are_one_line_errors(models, tmp_path):
    out = tmp_path / "never.p"
    for args, needle in ((["--device", "tpu"], "unknown --device 'tpu'"),
                         (["--stat", "csh", "--block_size", "1024"], "longer than the models' context of 256")):
        r = main("--base_model_id", models / "base", "--ft_model_id", models / "ft", *args, "--save", out, "--quiet")
        assert r.returncode == 2 and needle in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_default_block_fits_the_context_and_same_model_is_noted(models, tmp_path):
    out = tmp_path / "same.p"
    r = main("--base_model_id", models / "base", "--ft_model_id", models / "base", "--stat", "csh",
             "--num_samples", "2", "--save", out, "--quiet", check=True)
    rec = load(out)
    assert rec["args"]["block_size"] == 256 and rec["data"]["block_size"] == 256  # min(512, 256 positions)
    assert "same weights" in r.stdout and "floor" in r.stdout
    assert rec["verdict"] == "dependent" and rec["pvalue_kind"] == "exact"
