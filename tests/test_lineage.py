"""Families, trees and merges reconstructed from a grid of real results on the demo family."""
from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tracing.api import run_pair
from tracing.cli_util import run_cli
from tracing.errors import TracingError
from tracing.lineage import __main__ as cli
from tracing.lineage.figure import draw_lineage
from tracing.lineage.merges import attribute, attribute_all, fit_merge, judge
from tracing.lineage.rates import clopper_pearson, edge_scores, error_rates
from tracing.lineage.reconstruct import reconstruct, write_json
from tracing.lineage.known import demo_lineage as demo_truth, parse_lineage as parse_truth
from tracing.lineage.tree import lineage_json, parse_tree, read_tree, tree_pairs
from tracing.models import Checkpoint
from tracing.options import Options
from tracing.results import load_results

ROOT = Path(__file__).resolve().parent.parent
DEMO = ["base-a", "base-b", "base-c", "a-docs", "a-docs-v2", "a-sys", "b-docs"]
D = {n: f"demo:{n}" for n in DEMO}


def run_grid(models, out: Path):
    for a, b in itertools.combinations(models, 2):
        run_pair(a, b, Options(stat=["cos"]), save=f"{out}/{Path(a).name}__{Path(b).name}/", progress=False)
    return out


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return run_grid([D[n] for n in DEMO], tmp_path_factory.mktemp("grid"))


@pytest.fixture(scope="module")
def df(grid):
    return load_results(grid)


# ------------------------------------------------------------------------------------------
# Tree form
# ------------------------------------------------------------------------------------------
NESTED = [
    {"org/root-1": ["org/child-a", {"org/child-b": [{"org/grand-b": ["org/great-b"]}]}]},
    "org/lonely-root",
    {"org/root-2": [{"org/leaf-2": None}]},
]


def test_nested_tree_parses_to_pairs_and_lineage():
    models, edges = parse_tree(NESTED)
    assert models == ["org/root-1", "org/child-a", "org/child-b", "org/grand-b", "org/great-b", "org/lonely-root",
                      "org/root-2", "org/leaf-2"]
    assert sorted(edges) == sorted([("org/root-1", "org/child-a"), ("org/root-1", "org/child-b"),
                                    ("org/child-b", "org/grand-b"), ("org/grand-b", "org/great-b"),
                                    ("org/root-2", "org/leaf-2")])
    assert len(tree_pairs(models)) == 8 * 7 // 2
    lin = lineage_json(models, edges)["models"]
    assert lin["org/great-b"] == {"parent": "org/grand-b", "root": "org/root-1"}
    assert lin["org/lonely-root"] == {"parent": None, "root": "org/lonely-root"}
    assert lin["org/leaf-2"]["root"] == "org/root-2"
    assert parse_truth(NESTED)["org/child-b"] == "org/root-1"


@pytest.mark.parametrize("bad, words", [
    ([], "empty"),
    (None, "empty"),
    ([{"a": ["b"]}, {"c": ["b"]}], "listed twice"),
    ([{"a": [{"b": ["a"]}]}], "cycle"),
    ([{"a": [1]}], "not a model id"),
    ([{"a": ["b"], "c": ["d"]}], "one-key mapping"),
    ("just-a-string", "not a tree"),
])
def test_malformed_trees_are_one_line_errors(bad, words):
    with pytest.raises(TracingError) as e:
        parse_tree(bad)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_malformed_tree_through_the_cli_exits_2(grid, tmp_path, capsys):
    bad = tmp_path / "tree.yaml"
    bad.write_text("- a:\n    - b\n- c:\n    - b\n")
    out = tmp_path / "out"
    assert run_cli(cli.main, [str(grid), "--lineage", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "listed twice" in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_shipped_llama7b_tree():
    models, edges = read_tree(ROOT / "config" / "llama7b_tree.yaml")
    assert len(models) == 21 and len(set(models)) == 21
    parents = dict((c, p) for p, c in edges)
    assert parents["EleutherAI/llemma_7b_muinstruct_camelmath"] == "EleutherAI/llemma_7b"
    assert parents["EleutherAI/llemma_7b"] == "codellama/CodeLlama-7b-hf"
    assert parents["codellama/CodeLlama-7b-hf"] == "meta-llama/Llama-2-7b-hf"
    assert parents["lmsys/vicuna-7b-v1.1"] == "yahma/llama-7b-hf"
    roots = {m for m in models if m not in parents}
    assert {"LLM360/Amber", "openlm-research/open_llama_7b", "meta-llama/Llama-2-7b-hf"} <= roots


# ------------------------------------------------------------------------------------------
# Reconstruction, rates, figure
# ------------------------------------------------------------------------------------------
FAMILIES = [{"base-a", "a-docs", "a-docs-v2", "a-sys"}, {"base-b", "b-docs"}, {"base-c"}]
EDGES = {frozenset(("base-a", "a-docs")), frozenset(("a-docs", "a-docs-v2")), frozenset(("base-a", "a-sys")),
         frozenset(("base-b", "b-docs"))}


def _bare(names):
    return {n.split(":", 1)[1] for n in names}


def test_demo_family_reconstructs_with_its_lineage(df):
    assert "median_cos" in df.columns and df["median_cos"].notna().all()
    truth = demo_truth()
    rec = reconstruct(df, "cos", truth=truth, use_hub=False)
    assert rec.similarity == "median_cos"
    assert sorted(map(_bare, rec.families), key=len, reverse=True) == FAMILIES
    assert {frozenset(_bare((e["a"], e["b"]))) for e in rec.edges} == EDGES
    for e in rec.edges:
        assert e["directed"] and e["truth"] == "correct"
        assert truth[e["child"]] == e["parent"]
    assert rec.missing == []
    assert edge_scores(rec.edges, truth, rec.models) == {
        "edges_predicted": 4, "edges_true": 4, "edges_correct": 4, "precision": 1.0, "recall": 1.0,
        "directed_edges": 4, "directed_correct": 4}


def test_without_a_root_the_edges_stay_undirected(df):
    rec = reconstruct(df, "cos", use_hub=False)
    assert sorted(map(_bare, rec.families), key=len, reverse=True) == FAMILIES
    assert all(not e["directed"] for e in rec.edges) and len(rec.edges) == 4
    assert any("undirected" in n for n in rec.notes)
    rooted = reconstruct(df, "cos", root="demo:base-b", use_hub=False)
    fam_b = rooted.families[rooted.family_of("demo:base-b")]
    assert rooted.roots[rooted.family_of("demo:base-b")] == "demo:base-b" and len(fam_b) == 2
    with pytest.raises(TracingError, match="--root"):
        reconstruct(df, "cos", root="demo:nope", use_hub=False)


def test_error_rates_with_exact_intervals(df):
    rates = error_rates(df, demo_truth())
    row = rates[(rates["grid"] == "cos") & (rates["basis"] == "holm")].iloc[0]
    assert (row["independent_pairs"], row["dependent_pairs"]) == (14, 7)
    assert row["false_positives"] == 0 and row["true_positives"] == 7
    # k = 0 and k = n have closed forms: upper 1 - (α/2)^(1/n), lower (α/2)^(1/n)
    assert row["fpr"] == 0 and math.isclose(row["fpr_hi"], 1 - 0.025 ** (1 / 14), rel_tol=1e-6)
    assert row["tpr"] == 1 and math.isclose(row["tpr_lo"], 0.025 ** (1 / 7), rel_tol=1e-6)
    assert set(rates["basis"]) == {"raw", "holm"}


def test_clopper_pearson_and_edge_scores():
    lo, hi = clopper_pearson(3, 10)
    assert 0.0667 < lo < 0.0668 and 0.6524 < hi < 0.6525
    assert all(math.isnan(x) for x in clopper_pearson(0, 0))
    s = edge_scores([("a", "b"), ("b", "c")], {"a": None, "b": "a", "c": "a"})
    assert (s["edges_correct"], s["precision"], s["recall"]) == (1, 0.5, 0.5)


def test_figure_draws_the_edges_of_lineage_json(df, tmp_path):
    for truth in (demo_truth(), None):
        rec = reconstruct(df, "cos", truth=truth, use_hub=False)
        data = json.loads(write_json(rec, tmp_path / "lineage.json").read_text())
        drawn = draw_lineage(rec, tmp_path / "lineage.png")
        assert drawn["edges"] == sorted(tuple(sorted((e["a"], e["b"]))) for e in data["edges"])
        assert sorted(drawn["arrows"]) == sorted((e["parent"], e["child"]) for e in data["edges"] if e["directed"])
        assert (tmp_path / "lineage.png").stat().st_size > 5000


def test_missing_edges_are_marked(df, tmp_path):
    # without roots the maximum spanning tree is scored against the truth; whatever it gets wrong is
    # reported as a wrong edge plus a missing one, and both are drawn
    rec = reconstruct(df, "cos", truth=demo_truth(), use_hub=False, root_from_truth=False)
    wrong = [e for e in rec.edges if e["truth"] == "wrong"]
    assert len(wrong) == len(rec.missing)
    drawn = draw_lineage(rec, tmp_path / "lineage.png")
    assert sorted(drawn["missing"]) == sorted((m["parent"], m["child"]) for m in rec.missing)


def test_cli_writes_lineage_files(grid, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(cli.main, [str(grid), "--out", str(out), "--no-hub"]) == 0
    data = json.loads((out / "lineage.json").read_text())
    assert {frozenset(_bare((e["a"], e["b"]))) for e in data["edges"]} == EDGES
    assert data["edge_scores"]["precision"] == 1.0 and (out / "lineage.png").is_file()
    assert (out / "lineage_rates.csv").is_file()
    assert "precision 1" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# Merges
# ------------------------------------------------------------------------------------------
def _save_like(template: Checkpoint, tensors: dict, out: Path) -> str:
    out.mkdir(parents=True)
    for f in template.path.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, out / f.name)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    return str(out)


def linear_merge(specs, weights, out: Path) -> str:
    cks = [Checkpoint(s) for s in specs]
    names = cks[0].arch.names()
    return _save_like(cks[0], {n: sum(w * c.get(n) for w, c in zip(weights, cks)) for n in names}, out)


def ties_merge(base, specs, out: Path, density: float = 0.2) -> str:
    """TIES: trim each task vector to its top ``density`` by magnitude, elect signs, mean of agreeing values."""
    B, cks = Checkpoint(base), [Checkpoint(s) for s in specs]
    tensors = {}
    for n in B.arch.names():
        b = B.get(n)
        taus = []
        for c in cks:
            tau = c.get(n) - b
            keep = max(1, int(round(density * tau.numel())))
            thr = tau.abs().reshape(-1).kthvalue(tau.numel() - keep + 1).values
            taus.append(torch.where(tau.abs() >= thr, tau, torch.zeros_like(tau)))
        T = torch.stack(taus)
        agree = (torch.sign(T) == torch.sign(T.sum(0))) & (T != 0)
        tensors[n] = b + (T * agree).sum(0) / agree.sum(0).clamp_min(1)
    return _save_like(B, tensors, out)


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merges")
    return {"linear": linear_merge([D["a-docs"], D["a-sys"]], [0.3, 0.7], tmp / "linear"),
            "linear-uneven": linear_merge([D["a-docs"], D["a-sys"]], [0.85, 0.15], tmp / "linear-uneven"),
            "ties": ties_merge(D["base-a"], [D["a-docs"], D["a-sys"]], tmp / "ties")}


FAMILY_A = [D["base-a"], D["a-docs"], D["a-docs-v2"], D["a-sys"]]


@pytest.mark.parametrize("base", [None, D["base-a"]])
@pytest.mark.parametrize("which, wd, ws", [("linear", 0.3, 0.7), ("linear-uneven", 0.85, 0.15)])
def test_linear_merge_recovers_parents_and_weights(merged, base, which, wd, ws):
    v = attribute(merged[which], FAMILY_A, base=base)
    assert v.is_merge, v.reason
    assert set(v.parents) == {D["a-docs"], D["a-sys"]}
    assert abs(v.weights[D["a-docs"]] - wd) < 0.02 and abs(v.weights[D["a-sys"]] - ws) < 0.02
    assert v.fit.unexplained < 1e-6
    assert len(v.fit.per_block) == 5  # 4 blocks and the rest
    for b in v.fit.per_block:
        w = dict(zip(v.fit.parents, b["weights"]))
        assert abs(w[D["a-docs"]] - wd) < 0.02 and abs(w[D["a-sys"]] - ws) < 0.02


@pytest.mark.parametrize("base", [None, D["base-a"]])
def test_ties_merge_is_attributed_to_its_parents(merged, base):
    v = attribute(merged["ties"], FAMILY_A, base=base)
    assert v.is_merge, v.reason
    assert set(v.parents) == {D["a-docs"], D["a-sys"]}


def test_sequential_fine_tune_is_not_a_merge():
    # a-docs-v2 is a-docs fine-tuned on the slice a-sys was tuned on: its update resembles a-sys's, so
    # a mix explains much of it, but it holds a-docs whole (weights summing well above 1)
    v = attribute(D["a-docs-v2"], FAMILY_A, base=D["base-a"])
    assert not v.is_merge and "sum" in v.reason and sum(v.fit.weights) > 1.5


def test_plain_fine_tune_is_not_a_merge():
    # a-docs is base-a fine-tuned on one slice; its candidates are the models significant against
    # it that are not its descendants
    for base in (None, D["base-a"]):
        v = attribute(D["a-docs"], [D["base-a"], D["a-sys"]], base=base)
        assert not v.is_merge, v.reason
    v = attribute(D["a-sys"], FAMILY_A, base=None, parents={m: p for m, p in demo_truth().items()})
    assert not v.is_merge, v.reason


def test_merge_fit_checks_its_rule_on_weights():
    fit = fit_merge(D["a-docs"], [D["base-a"], D["a-sys"]])
    assert abs(sum(fit.weights) - 1) < 1e-3 and all(w >= 0 for w in fit.weights)
    assert fit.single_parent == D["base-a"]
    assert judge(fit, max_ratio=1.0).is_merge  # the ratio rule is what rejects it


def test_attribute_all_finds_the_merge_in_a_grid(merged, tmp_path):
    grid = run_grid([D["base-a"], D["a-docs"], D["a-sys"], D["base-c"], merged["linear"]], tmp_path / "grid")
    rec = reconstruct(load_results(grid), "cos", truth=demo_truth(), use_hub=False)
    verdicts = {v.model: v for v in attribute_all(rec, demo_truth())}
    v = verdicts[merged["linear"]]
    assert v.is_merge and set(v.parents) == {D["a-docs"], D["a-sys"]}
    assert v.fit.base == D["base-a"]
    assert [m for m, x in verdicts.items() if x.is_merge] == [merged["linear"]]


def test_root_from_model_card_base_model(tmp_path):
    from tracing.lineage.reconstruct import card_base_models, choose_root
    folders = {}
    for name, card in (("llama-base", "---\nlicense: mit\n---\n# a base\n"),
                       ("chat", "---\nbase_model: org/llama-base\n---\n"),
                       ("chat-v2", "---\nbase_model:\n  - org/chat\n---\n"),
                       ("no-card", None)):
        (tmp_path / name).mkdir()
        if card:
            (tmp_path / name / "README.md").write_text(card)
        folders[name] = str(tmp_path / name)
    assert card_base_models(folders["chat-v2"]) == ["org/chat"]
    assert card_base_models(folders["llama-base"]) == [] and card_base_models(folders["no-card"]) == []
    members = sorted(folders.values())
    assert choose_root(members, None, None, True) == (folders["llama-base"], "model card base_model")
    assert choose_root(members, None, None, False) == (None, None)


def test_merge_fit_is_the_same_in_slices(merged, monkeypatch):
    from tracing.lineage import merges
    whole = fit_merge(merged["ties"], [D["a-docs"], D["a-sys"]], base=D["base-a"])
    monkeypatch.setattr(merges, "CHUNK", 9999)
    sliced = fit_merge(merged["ties"], [D["a-docs"], D["a-sys"]], base=D["base-a"])
    assert sliced.weights == pytest.approx(whole.weights, rel=1e-9)
    assert sliced.unexplained == pytest.approx(whole.unexplained, rel=1e-9)


# ------------------------------------------------------------------------------------------
# One rule for the known lineage; the command never replaces the report's files
# ------------------------------------------------------------------------------------------
def test_lineage_command_keeps_the_reports_files_and_its_lineage(grid, tmp_path, capsys):
    from tracing.report import write_report
    folder = tmp_path / "run"
    shutil.copytree(grid, folder)
    # a launch of a tree list wrote its lineage beside the results; here (unlike the demo family's)
    # a-docs is the root of its family, so the rule that picks the lineage shows in the tree
    known = {D["a-docs"]: None, D["base-a"]: D["a-docs"], D["a-sys"]: D["a-docs"], D["a-docs-v2"]: D["a-docs"],
             D["base-b"]: None, D["b-docs"]: D["base-b"], D["base-c"]: None}
    (folder / "known_lineage.json").write_text(json.dumps(known))
    write_report(folder)
    report_files = {n: (folder / n).read_bytes() for n in ("lineage.json", "lineage.png", "report.md")}
    rep = json.loads(report_files["lineage.json"])
    assert rep["families"][0]["root"] == D["a-docs"]
    assert run_cli(cli.main, [str(folder), "--no-hub"]) == 0
    assert {n: (folder / n).read_bytes() for n in report_files} == report_files
    own = json.loads((folder / "lineage" / "lineage.json").read_text())
    assert (folder / "lineage" / "lineage.png").is_file()
    # the same rule and the same known lineage: the same directed tree as the report's
    assert own["families"] == rep["families"] and own["edges"] == rep["edges"]
    assert "lineage: known_lineage.json" in own["notes"]
    # writing into the report's own folder would replace its files: one clear line, nothing written
    capsys.readouterr()
    assert run_cli(cli.main, [str(folder), "--no-hub", "--out", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--out" in err[0]
    assert {n: (folder / n).read_bytes() for n in report_files} == report_files


def test_report_shows_merges_and_never_draws_a_merge_as_a_parent(merged, tmp_path):
    from tracing.lineage.merges import reconstruct_with_merges
    from tracing.report import write_report
    m = merged["linear"]  # 0.3 a-docs + 0.7 a-sys
    folder = run_grid([D["base-a"], D["a-docs"], D["a-sys"], D["base-c"], m], tmp_path / "grid")
    text = write_report(folder, lineage=demo_truth(), merges=True).read_text()
    data = json.loads((folder / "lineage.json").read_text())
    # the merge sits nearer the root than either source, yet it is never their parent
    assert all(e.get("parent") != m for e in data["edges"])
    parents = {e["child"]: e["parent"] for e in data["edges"]}
    assert parents[D["a-docs"]] == D["base-a"] and parents[D["a-sys"]] == D["base-a"]
    (edge,) = [e for e in data["edges"] if m in (e["a"], e["b"])]
    assert edge["child"] == m and edge["parent"] in (D["a-docs"], D["a-sys"])
    assert set(edge["merge_of"]) == {D["a-docs"], D["a-sys"]}
    found = [v for v in data["merges"] if v["is_merge"]]
    assert [v["model"] for v in found] == [m]
    assert found[0]["weights"] == pytest.approx({D["a-docs"]: 0.3, D["a-sys"]: 0.7}, abs=0.02)
    # report.md: the merge with its parents and weights, the models that are not merges, weights per block
    assert "### Merges" in text and f"| `{m}` | merge |" in text
    assert f"`{D['a-docs']}` 0.3" in text and f"`{D['a-sys']}` 0.7" in text
    assert all(f"| `{v['model']}` | not a merge |" in text for v in data["merges"] if not v["is_merge"])
    assert len(data["merges"]) > 1 and f"Weights of `{m}` per block" in text
    # the figure joins the merge to its other parent
    rec, _ = reconstruct_with_merges(load_results(folder), demo_truth(), stat="cos", use_hub=False)
    other = ({D["a-docs"], D["a-sys"]} - {edge["parent"]}).pop()
    assert draw_lineage(rec, tmp_path / "l.png")["merges"] == [(other, m)]
