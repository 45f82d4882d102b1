"""End to end on the offline demo family, whose lineage is known: the statistics' verdicts."""
import itertools
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tracing import demo
from tracing.api import run_pair
from tracing.options import Options

ROOT = Path(__file__).resolve().parent.parent
SIG = math.log10(0.01)
DATA = dict(dataset="demo", num_samples=8, block_size=128)


@pytest.fixture(scope="module", autouse=True)
def demo_family():
    return demo.ensure_built(progress=False)


def test_cos_and_match_classify_every_pair():
    """The README's main job (default data: 20 blocks of 512 tokens of held-out demo text).

    cos is exact under the null, so its raw p-values must classify every pair.  match is only
    empirically calibrated: the demo bases share their training text and tokenizer, and some of
    their units learn the same features, so independent pairs' raw p-values skew small; the
    report's verdicts use Holm's correction across the grid, and those must be right."""
    from tracing.pvalues import holm
    pairs = list(itertools.combinations(demo.MODEL_NAMES, 2))
    lp = {"cos": [], "match": []}
    for a, b in pairs:
        for rec in run_pair(f"demo:{a}", f"demo:{b}", Options(stat="cos,match", dataset="demo"), progress=False):
            lp[rec["stat"]].append(rec["log10_pvalue"])
    truth = [demo.are_dependent(a, b) for a, b in pairs]
    assert [x < SIG for x in lp["cos"]] == truth
    assert [x < SIG for x in holm(lp["match"])] == truth
    assert [x < SIG for x in holm(lp["cos"])] == truth
    # the dependent pairs are not borderline: both statistics reach the exact floor region
    assert max(x for x, t in zip(lp["match"], truth) if t) < -100


def _mode(b, **kw):
    return run_pair("demo:base-a", f"demo:{b}", Options(stat="mode", **DATA, **kw), progress=False)[0]


def test_mode_connectivity_on_trained_models():
    dep, ind = _mode("a-docs"), _mode("base-b")
    assert dep["extra"]["loss_alpha"] < ind["extra"]["loss_alpha"] - 0.2
    # permuting the fine-tune breaks the path; aligning it restores it
    pa = _mode("a-docs", permute=True, align=True)
    assert pa["extra"]["loss_alpha"] > dep["extra"]["loss_alpha"] + 0.2
    assert pa["aligned"]["extra"]["loss_alpha"] == pytest.approx(dep["extra"]["loss_alpha"], rel=1e-5)
    # the full path (attention and embeddings too): flat for a dependent pair, a barrier otherwise
    dep_full, ind_full = _mode("a-docs", attn=True, emb=True), _mode("base-b", attn=True, emb=True)
    assert abs(dep_full["extra"]["barrier"]) < 0.25
    assert ind_full["extra"]["barrier"] > 0.75
    assert ind_full["extra"]["barrier"] > dep_full["extra"]["barrier"] + 0.75


def test_mode_permutation_test_and_curve():
    rec = _mode("a-docs", num_perm=9, alphas=[0, 0.25, 0.5, 0.75, 1])
    assert rec["log10_pvalue"] == pytest.approx(-1.0)  # 1/(T+1): every permuted path is worse
    assert [c["alpha"] for c in rec["extra"]["curve"]] == [0, 0.25, 0.5, 0.75, 1]
    assert rec["extra"]["curve"][0]["barrier"] == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("stat", ["cos", "emb", "l2", "csh", "match", "jsd", "mode"])
def test_main_on_demo_family(tmp_path, stat):
    out = tmp_path / "r.p"
    res = {}
    for ft in ("a-docs-v2", "b-docs"):
        args = [sys.executable, str(ROOT / "main.py"), "--base_model_id", "demo:base-a", "--ft_model_id", f"demo:{ft}",
                "--stat", stat, "--num_samples", "4", "--block_size", "64", "--save", out, "--quiet"]
        if stat in ("l2", "mode"):
            args += ["--num_perm", "19"]
        if stat == "mode":
            args += ["--attn", "--emb"]
        r = subprocess.run(list(map(str, args)), capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        with open(out, "rb") as f:
            res[ft] = pickle.load(f)
        assert res[ft]["models"]["base"]["id"] == "demo:base-a"
    dep, ind = res["a-docs-v2"], res["b-docs"]
    if stat == "jsd":
        assert dep["statistic"] < ind["statistic"]
    elif stat in ("l2", "mode"):
        assert dep["log10_pvalue"] == pytest.approx(math.log10(1 / 20))
        assert ind["log10_pvalue"] > SIG
    else:
        assert dep["log10_pvalue"] < -6 and ind["log10_pvalue"] > SIG


def test_tokenizers_with_other_ids_match_by_token_string(tmp_path):
    """Different ids for the same strings: data statistics read the text both split the same way,
    as shared-vocabulary ids (before token-string matching this was an error)."""
    import json
    import pickle
    import shutil
    src = demo.resolve_demo("demo:a-docs")
    dst = tmp_path / "a-docs-othertok"
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["a"], vocab["e"] = vocab["e"], vocab["a"]  # same model, different ids for the same text
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    base = ["--base_model_id", "demo:base-a", "--ft_model_id", dst, "--quiet", "--num_samples", "2", "--block_size", "32"]
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, base), "--stat", "match",
                        "--save", tmp_path / "m.p"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    data = pickle.loads((tmp_path / "m.p").read_bytes())["data"]
    assert data["vocab"]["matched_by"] == "token string" and data["samples_qualified"] > 0
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, base), "--stat", "cos",
                        "--save", tmp_path / "c.p"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0 and (tmp_path / "c.p").exists()


def test_generate_then_use_as_dataset(tmp_path):
    gen = tmp_path / "gen"
    r = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--model_id", "demo:base-a", "--model_id",
                        "demo:a-sys", "--num_samples", "2", "--max_new_tokens", "48", "--out_dir", str(gen), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    files = sorted(p.name for p in gen.iterdir())
    assert files == ["demo-a-sys.json", "demo-base-a.json"]
    again = tmp_path / "gen2"
    subprocess.run([sys.executable, str(ROOT / "generate.py"), "--model_id", "demo:base-a", "--num_samples", "2",
                    "--max_new_tokens", "48", "--out_dir", str(again), "--quiet"], check=True, cwd=ROOT, timeout=600,
                   capture_output=True)
    import json
    assert json.loads((gen / "demo-base-a.json").read_text())["samples"] == \
        json.loads((again / "demo-base-a.json").read_text())["samples"]  # seeded sampling
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--base_model_id", "demo:base-a", "--ft_model_id",
                        "demo:a-sys", "--stat", "jsd", "--dataset", "generated", "--generated_dir", str(gen),
                        "--block_size", "32", "--save", str(tmp_path / "j.p"), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / "j.p", "rb") as f:
        rec = pickle.load(f)
    assert rec["data"]["dataset"] == "generated" and rec["data"]["num_blocks"] >= 2


def test_mode_permutation_test_reaches_one_percent():
    rec = run_pair("demo:base-a", "demo:a-docs", Options(stat="mode", dataset="demo", num_perm=99, block_size=256,
                                                         num_samples=4), progress=False)[0]
    assert rec["pvalue"] == 0.01 and rec["verdict"] == "dependent"


def test_less_data_than_asked_is_reported(tmp_path):
    txt = tmp_path / "short.txt"
    txt.write_text("def f(x):\n    return x + 1\n" * 12)
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--base_model_id", "demo:base-a", "--ft_model_id",
                        "demo:a-docs", "--stat", "jsd", "--dataset", str(txt), "--block_size", "64", "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "of the 20 blocks asked for" in r.stdout
