"""How the launcher and the report use the statistics' facts, the one model-id parser, the one result
reader, tree model lists and the report's lineage section."""
from __future__ import annotations

import ast
import json
import math
import os
import pickle
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from helpers import save_trio
from tracing import launch, stats
from tracing.launch.configs import reference_info
from tracing.launch.model_list import is_hub_id, is_local_spec, parse_model_list
from tracing.options import Options
from tracing.report import facts
from tracing.specs import parse_spec
from tracing.stats.cost import GiB, Sizing
from tracing.stats.spec import Cost

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch.py"


def run_launch(*args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(LAUNCH), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return save_trio(tmp_path_factory.mktemp("models"))


# ------------------------------------------------------------------------------------------
# nothing outside tracing/stats names a statistic
# ------------------------------------------------------------------------------------------
def _copies_option(key: ast.Constant, value: ast.AST) -> bool:
    """``{"emb": args.get("emb")}``: a mapping key that names a command-line option (mode's ``--emb``
    shares the name of the statistic ``emb``) and whose value reads that same option."""
    return key.value in OPTION_NAMES and any(isinstance(c, ast.Constant) and c.value == key.value
                                             for c in ast.walk(value))


OPTION_NAMES = {f.name for f in fields(Options)}


def _branching_names(path: Path, names: set[str]) -> list[str]:
    """Statistic names used as string literals in comparisons or as mapping keys."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        consts = []
        if isinstance(node, ast.Compare):
            for x in [node.left, *node.comparators]:
                consts += [x] + (list(x.elts) if isinstance(x, (ast.Tuple, ast.List, ast.Set)) else [])
        elif isinstance(node, ast.Dict):
            consts += [k for k, v in zip(node.keys, node.values) if k is not None and
                       not (isinstance(k, ast.Constant) and _copies_option(k, v))]
        found += [f"{path}:{c.lineno}: {c.value!r}" for c in consts
                  if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value in names]
    return found


def test_no_statistic_name_outside_stats_is_used_for_branching():
    names = set(stats.names()) | set(stats.ALIASES)
    package = ROOT / "tracing"
    files = [p for p in package.rglob("*.py") if p.relative_to(package).parts[0] != "stats"]
    assert package / "scan.py" in files and package / "index" / "screen.py" in files
    bad = [hit for f in files for hit in _branching_names(f, names)]
    assert not bad, bad
    # the scan itself finds such a literal, and an option copied under its own name is not one
    probe = ROOT / "tests" / "_probe_branching.py"
    try:
        probe.write_text('def f(stat, args):\n    return stat == "cos" or stat in ("mode",) or {"jsd": 1} or '
                         '{"emb": args.get("emb")} or {"emb": 2}\n')
        assert len(_branching_names(probe, names)) == 4
    finally:
        probe.unlink()


# ------------------------------------------------------------------------------------------
# the launcher and the report ask the statistics
# ------------------------------------------------------------------------------------------
@pytest.fixture
def toy_stat():
    """A statistic registered from outside the package, with its own cost and facts."""
    def cost(s):
        return Cost(40 * GiB, 3600.0)
    spec = stats.register(stats.StatSpec("toyfwd", fn=lambda ctx, a, b: None, description="toy", meaning="toy meaning",
                                         needs_data=True, exact=False, cost=cost, per_block=True,
                                         variant_flags=("attn",), label="toy value"))
    yield spec
    stats.REGISTRY.pop("toyfwd", None)


def test_launcher_sizes_a_statistic_by_its_own_cost(toy_stat):
    info = launch.ModelInfo("x", reference_info().arch, 2, "test")
    o = Options(stat=["toyfwd"], block_size=512)
    r = launch.size_pair(info, info, ["toyfwd"], o, slurm=True)
    assert launch.is_forward_stat("toyfwd") and not launch.is_forward_stat("cos")
    assert r.gpus == 1  # a forward-pass statistic asks for a GPU on Slurm
    assert r.mem_gb == math.ceil(40 * 1.25 + 2)
    assert r.timeout_min == math.ceil(3600 * 2 / 60)
    # a built-in statistic: the estimate is its spec's cost plus the launcher's margins
    oc = Options(stat=["cos"], block_size=512)
    cos = launch.size_pair(info, info, ["cos"], oc, slurm=True)
    c = stats.get("cos").cost(Sizing.from_infos(info, info, oc, cpus=cos.cpus))
    assert cos.mem_gb == math.ceil(c.mem_bytes * 1.25 / GiB + 2)


def test_report_facts_come_from_the_specs(toy_stat):
    assert facts.meaning("toyfwd") == "toy meaning" and facts.kind("toyfwd") == "approximate"
    assert "toyfwd" in facts.per_block_stats() and facts.variant_flags("toyfwd") == ("attn",)
    assert facts.panel_label("toyfwd", {0.5}) == "toy value"
    assert facts.kind("jsd") == "no p-value" and facts.kind("nosuchstat") == "unknown"
    assert facts.panel_label("mode", {0.5}) == "loss at α=0.5"


def test_model_ids_use_the_one_parser(tmp_path):
    for s in ("org/name", "org/name@refs/pr/3", "a/b/c", "./x", str(tmp_path), "demo:base-a", "bare"):
        kind = parse_spec(s).kind
        assert is_hub_id(s) == (kind == "hub") and is_local_spec(s) == (kind == "local")


# ------------------------------------------------------------------------------------------
# result keys
# ------------------------------------------------------------------------------------------
def test_result_path_depends_only_on_options_the_statistic_reads(tmp_path, trio):
    pair = launch.Pair(trio["base"], trio["ft"])
    a = launch.result_path(tmp_path, pair, "cos", Options(stat=["cos"]))
    assert a == launch.result_path(tmp_path, pair, "cos", Options(stat=["cos", "csh"], num_samples=7))
    assert a != launch.result_path(tmp_path, pair, "cos", Options(stat=["cos"], align=True))
    assert not hasattr(Options, "key")
    cfg = tmp_path / "list.yaml"
    cfg.write_text(yaml.safe_dump([trio["base"], trio["ft"]]))
    out = tmp_path / "out"
    r = run_launch(cfg, "--stat", "cos", "--cluster", "local", "--out", out, "--no-report")
    assert r.returncode == 0, r.stdout + r.stderr
    (p,) = list(out.rglob("cos-*.p"))
    t = p.stat().st_mtime_ns
    r2 = run_launch(cfg, "--stat", "cos", "--num_samples", "7", "--cluster", "local", "--out", out, "--no-report")
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "nothing to do" in r2.stdout and p.stat().st_mtime_ns == t


# ------------------------------------------------------------------------------------------
# tree model lists
# ------------------------------------------------------------------------------------------
def test_tree_model_list_gives_every_pair_and_the_lineage():
    ml = parse_model_list([{"a/root": ["a/child", {"a/mid": ["a/leaf"]}]}, "b/other"], "t.yaml")
    assert ml.form == "tree" and len(ml.pairs) == 10
    assert ml.lineage["models"]["a/leaf"] == {"parent": "a/mid", "root": "a/root"}
    assert ml.lineage["models"]["b/other"]["parent"] is None
    ml2 = parse_model_list({"models": [{"x/a": ["x/b"]}, "x/c"], "stat": "cos"}, "t.yaml")
    assert ml2.form == "tree" and ml2.stat == ["cos"] and len(ml2.pairs) == 3


def test_paper_tree_dry_run_works_offline():
    r = run_launch("config/llama7b_tree.yaml", "--stat", "cos", "--dry-run", "--out", "/tmp/never-written-tree")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "210 pair(s)" in r.stdout and "(tree)" in r.stdout
    assert "not in the local Hugging Face cache" in r.stdout + r.stderr
    assert not Path("/tmp/never-written-tree").exists()


@pytest.mark.parametrize("doc,needle", [
    ([{"a/x": ["a/y"]}, {"a/y": None}], "listed twice"),
    ([{"a/x": ["a/y"], "a/z": None}], "one-key mapping"),
    ([{"a/x": "a/y"}], "must be a list"),
])
def test_malformed_tree_is_one_line_exit_2(tmp_path, doc, needle):
    cfg = tmp_path / "tree.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    r = run_launch(cfg, "--stat", "cos", "--dry-run")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def test_tree_launch_keeps_the_lineage_and_the_report_scores_it(tmp_path, trio):
    cfg = tmp_path / "tree.yaml"
    cfg.write_text(yaml.safe_dump([{trio["base"]: [trio["ft"]]}, trio["indep"]]))
    out = tmp_path / "out"
    r = run_launch(cfg, "--stat", "cos", "--cluster", "local", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    known = json.loads((out / "known_lineage.json").read_text())
    assert known["models"][trio["ft"]]["parent"] == trio["base"]
    text = (out / "report.md").read_text()
    assert "## Lineage" in text and (out / "lineage.png").is_file()
    rec = json.loads((out / "lineage.json").read_text())
    assert sorted(sorted(f["models"]) for f in rec["families"]) == sorted([sorted([trio["base"], trio["ft"]]),
                                                                             [trio["indep"]]])
    (edge,) = rec["edges"]
    assert (edge["parent"], edge["child"]) == (trio["base"], trio["ft"])
    import pandas as pd
    rates = pd.read_csv(out / "rates.csv")
    raw = rates[(rates["grid"] == "cos") & (rates["basis"] == "raw")].iloc[0]
    assert (raw["independent_pairs"], raw["false_positives"], raw["dependent_pairs"], raw["true_positives"]) \
        == (2, 0, 1, 1)
    assert 0 < raw["fpr_hi"] < 1 and 0 < raw["tpr_lo"] < 1
    assert "FPR (independent pairs)" in text and "0/2" in text and "1/1" in text
    # one loader: a pickle that is not a result is listed as unreadable, the rest still reported
    with open(out / "junk.p", "wb") as f:
        pickle.dump([1, 2], f)
    from tracing.report import write_report
    write_report(out, out=tmp_path / "rep")
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert "unreadable" in set(summary["status"]) and (summary["status"] == "ok").sum() == 3


# ------------------------------------------------------------------------------------------
# the demo family end to end
# ------------------------------------------------------------------------------------------
def test_demo_family_report_reconstructs_the_lineage(tmp_path):
    out = tmp_path / "demo"
    r = run_launch("config/demo.yaml", "--cluster", "local", "--out", out, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    rec = json.loads((out / "lineage.json").read_text())
    fams = sorted(sorted(f["models"]) for f in rec["families"])
    d = lambda *n: sorted(f"demo:{x}" for x in n)  # noqa: E731
    assert fams == sorted([d("base-a", "a-docs", "a-docs-v2", "a-sys"), d("base-b", "b-docs"), d("base-c")])
    arrows = {(e["parent"], e["child"]) for e in rec["edges"] if e["directed"]}
    assert arrows == {("demo:base-a", "demo:a-docs"), ("demo:a-docs", "demo:a-docs-v2"),
                      ("demo:base-a", "demo:a-sys"), ("demo:base-b", "demo:b-docs")}
    text = (out / "report.md").read_text()
    assert "## Lineage" in text and "FPR (independent pairs)" in text and "[" in text
    assert (out / "rates.csv").is_file() and (out / "lineage.png").is_file()
