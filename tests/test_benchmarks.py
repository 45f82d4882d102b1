"""Published benchmarks as labelled model lists: the audit against the files, the dry-run of every list
without the hub, and rates per relation on a labelled results folder of tiny models."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy.stats import binomtest

from tracing.errors import TracingError
from tracing.launch.model_list import parse_model_list, read_model_list
from tracing.results_folder import write_known_relations
from tracing.lineage.relations import KNOWN_RELATIONS, LEVELS, RATES_FILE, RELATIONS

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "config" / "benchmarks"
LISTS = sorted(BENCH.glob("*.yaml"))


def _raw(f: Path) -> dict:
    return yaml.safe_load(f.read_text(encoding="utf-8"))


def test_there_are_benchmark_lists():
    assert {f.name for f in LISTS} >= {"awm.yaml", "cisco_benchmark_all.yaml", "leafbench.yaml", "nikolic_bench_a.yaml",
                                       "nikolic_bench_b.yaml"}


@pytest.mark.parametrize("f", LISTS, ids=lambda f: f.stem)
def test_every_label_has_a_source_and_the_audit_is_documented(f):
    ml = read_model_list(f)
    data, readme = _raw(f), (BENCH / "README.md").read_text(encoding="utf-8")
    bench = data["benchmark"]
    assert all(bench.get(k) for k in ("name", "repository", "file", "commit"))
    published_file = Path(bench["file"]).name
    labels = ml.labels
    assert len(labels["pairs"]) == len(ml.pairs) > 0
    for p in labels["pairs"]:
        assert p["relation"] in RELATIONS and p["dependent"] == RELATIONS[p["relation"]]
        assert published_file in p["source"], p  # every label names the published file it comes from
    assert {p["relation"] for p in labels["pairs"]} & {"independent", "distilled"}
    assert any(p["dependent"] for p in labels["pairs"])
    if "published_pairs" in bench:  # every published pair is listed or excluded, none twice
        assert len(labels["pairs"]) + len(labels["excluded"]) == bench["published_pairs"]
    if "published_true_pairs" in bench:  # every published true pair is listed or excluded
        n_true = sum(p["dependent"] for p in labels["pairs"])
        assert n_true + len(labels["excluded"]) == bench["published_true_pairs"]
    lines = readme.splitlines()
    section = readme.split(f"— `{f.name}`", 1)[1].split("\n### ", 1)[0]
    for e in labels["audit"] + labels["excluded"]:
        row = [ln for ln in section.splitlines() if f"`{e['base']}`" in ln and f"`{e['ft']}`" in ln
               and e.get("relation", "") in ln and e["reason"] in ln]
        assert row, f"{f.name}: {e['base']} vs {e['ft']} is not in the README's audit"
    n_rows = sum(1 for ln in section.splitlines() if ln.startswith("| `"))
    assert n_rows == len(labels["audit"]) + len(labels["excluded"])  # nothing in the README that the file lacks
    assert lines  # the README exists and is not empty


def test_the_audit_applies_its_rules():
    labels = {f.stem: read_model_list(f).labels for f in LISTS}
    rel = {(p["base"], p["ft"]): p["relation"] for lab in labels.values() for p in lab["pairs"]}
    # distillation from the teacher's layers is derived; a student from its own initialisation is not
    assert rel[("google-bert/bert-base-uncased", "distilbert/distilbert-base-uncased")] == "pruned"
    assert rel[("google-bert/bert-base-uncased", "huawei-noah/TinyBERT_General_4L_312D")] == "distilled"
    # LeaFBench's "distillation" students start from the family model: no pair there is left independent
    # of its own family's pretrained model
    leaf_distill = [e for e in labels["leafbench"]["audit"] if e["published"] == "distillation"]
    assert len(leaf_distill) == 7 and all(e["relation"] == "finetune" for e in leaf_distill)
    # siblings and same-seed runs are dependent under this null
    assert rel[("EleutherAI/pythia-1.4b", "EleutherAI/pythia-1.4b-deduped")] == "sibling"
    # a child larger than its parent is not a plain fine-tune
    assert rel[("Qwen/Qwen2.5-1.5B-Instruct", "win10/Qwen2.5-2B-Instruct")] == "upscaled"
    assert ("microsoft/phi-1_5", "microsoft/phi-2") not in rel
    # reversed entries are swapped: the parent comes first
    assert ("meta-llama/Meta-Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct") in rel
    # AWM's hub ids: the transformers format of Meta's checkpoints, a misspelt id corrected, and the
    # pruned Llama 3.2 models against the Llama 3.1 8B they were pruned from
    awm = {m for p in labels["awm"]["pairs"] for m in (p["base"], p["ft"])}
    assert "meta-llama/Llama-2-7b-hf" in awm and "meta-llama/Llama-2-7b" not in awm
    assert "baichuan-inc/Baichuan-13B-Base" in awm and "baichuan-inc/Baichuan13B-Base" not in awm
    assert rel[("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.2-1B")] == "pruned"
    # Bench-A's false pairs never pair two models that share an initialisation
    llama32 = {"meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct"}
    true_parent = {p["ft"]: p["base"] for p in labels["nikolic_bench_a"]["pairs"] if p["dependent"]}
    for p in labels["nikolic_bench_a"]["pairs"]:
        if not p["dependent"]:
            assert p["base"] != true_parent[p["ft"]]
            assert not {p["base"], true_parent[p["ft"]]} <= llama32
    # Bench-B: no false pair puts a GPT-2-family parent against a child of another GPT-2-family parent,
    # no candidate without a published parent is listed, and a parent listed as its own child's child is swapped
    gpt2 = {"openai-community/gpt2", "distilbert/distilgpt2", "microsoft/DialoGPT-small", "microsoft/DialoGPT-medium",
            "openai-community/gpt2-medium", "openai-community/gpt2-large", "robowaifudev/megatron-gpt2-345m"}
    b = labels["nikolic_bench_b"]["pairs"]
    linked: dict[str, set] = {}  # the models each model has a dependent pair with
    for p in b:
        if p["dependent"]:
            linked.setdefault(p["ft"], set()).add(p["base"])
            linked.setdefault(p["base"], set()).add(p["ft"])
    for p in b:
        if not p["dependent"]:
            assert p["base"] not in linked[p["ft"]]
            assert not (p["base"] in gpt2 and linked[p["ft"]] & gpt2), p
    assert "postbot/distilgpt2-emailgen-V2" not in {p["ft"] for p in b}
    assert rel[("KBlueLeaf/DanTagGen-delta", "KBlueLeaf/DanTagGen-delta-rev2")] == "finetune"
    assert rel[("HuggingFaceTB/SmolLM-360M-Instruct", "dmariko/SmolLM-360M-Instruct_qlora_nf4_merged")] == "adapter"


@pytest.mark.parametrize("f", LISTS, ids=lambda f: f.stem)
def test_dry_run_of_every_benchmark_list_needs_no_hub(f, tmp_path, monkeypatch):
    from tracing.launch.run import LaunchSettings, launch
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # an empty cache: no config is on this machine, whatever the machine's own cache holds
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    said: list[str] = []
    out = tmp_path / "out"
    rc = launch(LaunchSettings(str(f), cli_options={"stat": ["cos"]}, cluster="local", dry_run=True, out=str(out)),
                say=lambda *a, **k: said.append(" ".join(str(x) for x in a)))
    text = "\n".join(said)
    n = len(read_model_list(f).pairs)
    assert rc == 0
    assert f"{n} pair(s) from {f}" in text
    assert f"labels: {n} labelled pair(s)" in text
    assert "sized as Llama-2-7B" in text and text.count("note: ") == 1  # one line for the missing configs
    assert not any(ln.startswith("error:") for ln in text.splitlines())
    assert not out.exists()  # a dry-run writes nothing


def _listed(**extra) -> dict:
    return {"models_1": ["a/x", "a/x"], "models_2": ["b/y", "c/z"], **extra}


@pytest.mark.parametrize("extra, msg", [
    ({"relations": ["finetune", "cousin"], "sources": ["s", "s"]}, "unknown relation(s) cousin"),
    ({"relations": ["finetune", "independent"]}, "needs 'sources'"),
    ({"relations": ["finetune"], "sources": ["s"]}, "one entry per pair (2)"),
    ({"relations": ["finetune", "independent"], "sources": ["s", ""]}, "entry 2 of 'sources'"),
    ({"sources": ["s", "s"]}, "needs 'relations'"),
    ({"relations": ["finetune", "independent"], "sources": ["s", "s"],
      "audit": [{"base": "a/x", "ft": "b/y", "published": "p", "relation": "merge", "reason": "r"}]}, "make them agree"),
    ({"relations": ["finetune", "independent"], "sources": ["s", "s"],
      "audit": [{"base": "a/x", "ft": "q/q", "published": "p", "relation": "merge", "reason": "r"}]}, "not a listed pair"),
    ({"relations": ["finetune", "independent"], "sources": ["s", "s"],
      "excluded": [{"base": "a/x", "ft": "b/y", "published": "p", "reason": "r"}]}, "both listed and excluded"),
    ({"relations": ["finetune", "independent"], "sources": ["s", "s"],
      "excluded": [{"base": "a/x", "ft": "q/q", "published": "p"}]}, "lacks reason"),
])
def test_bad_labels_are_one_clear_error(extra, msg):
    with pytest.raises(TracingError) as e:
        parse_model_list(_listed(**extra), source="list.yaml")
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_labels_only_go_with_listed_pairs():
    with pytest.raises(TracingError, match="'relations' only goes with models_1/models_2"):
        parse_model_list({"models": ["a/x", "b/y"], "relations": ["finetune"], "sources": ["s"]}, source="l.yaml")


# ------------------------------------------------------------------------------------------------
# rates per relation on a labelled results folder of tiny models
# ------------------------------------------------------------------------------------------------
def _quantized(model, levels: int = 16):
    """Round every weight to ``levels`` steps of its row's range (what a 4-bit quantizer does)."""
    import copy

    import torch
    q = copy.deepcopy(model)
    with torch.no_grad():
        for p in q.parameters():
            if p.dim() == 2:
                lo, hi = p.min(dim=1, keepdim=True).values, p.max(dim=1, keepdim=True).values
                step = (hi - lo) / (levels - 1)
                p.copy_(lo + torch.round((p - lo) / step) * step)
    return q


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    from helpers import finetuned, tiny_config, tiny_model

    from tracing.api import run_pair
    from tracing.options import Options
    from tracing.results import failure_record, save_record

    root = tmp_path_factory.mktemp("labelled")
    base = tiny_model(tiny_config(), seed=0)
    models = {"base": base, "ft1": finetuned(base, seed=1), "ft2": finetuned(base, seed=2, noise=0.05),
              "quant": _quantized(base), "i7": tiny_model(tiny_config(), seed=7),
              "i8": tiny_model(tiny_config(), seed=8), "i9": tiny_model(tiny_config(), seed=9)}
    for name, m in models.items():
        m.save_pretrained(root / name)
    d = lambda n: str(root / n)  # noqa: E731
    pairs = [("base", "ft1", "finetune"), ("base", "ft2", "finetune"), ("base", "quant", "quantized"),
             ("base", "i7", "independent"), ("base", "i8", "independent"), ("ft1", "i9", "independent"),
             ("i7", "i8", "distilled"), ("base", "gone", "pruned")]
    data = {"models_1": [d(a) for a, _, _ in pairs], "models_2": [d(b) for _, b, _ in pairs],
            "relations": [r for _, _, r in pairs], "sources": [f"synthetic pair {i}" for i in range(len(pairs))],
            "benchmark": {"name": "tiny labelled family"}}
    labels = parse_model_list(data, source="tiny.yaml").labels
    folder = root / "results"
    write_known_relations(folder, labels)
    for i, (a, b, _) in enumerate(pairs):
        for mode, opts in (("full", {}), ("sampled", {"rows": 32})):
            save = folder / f"pair{i}" / f"cos-{mode}.p"
            if b == "gone":  # a pair whose job failed
                rec = failure_record(d(a), d(b), "cos", {"stat": "cos", **opts}, FileNotFoundError("no such model"), 0.0)
                save_record(rec, save)
                continue
            run_pair(d(a), d(b), Options(stat=["cos"], **opts), save={"cos": save}, progress=False)
    return folder, labels


def test_rates_per_relation_full_and_sampled(labelled_run):
    from tracing.report import write_report
    from tracing.results import load_results

    folder, labels = labelled_run
    assert (folder / KNOWN_RELATIONS).is_file()
    report = write_report(folder).read_text()
    rates = pd.read_csv(folder / RATES_FILE)
    assert set(rates["reading"]) == {"full", "sampled (K=32)"} and set(rates["variant"]) == {"cos", "cos --rows 32"}
    assert sorted(rates["level"].unique()) == sorted(LEVELS)
    rel_of = {(p["base"], p["ft"]): p["relation"] for p in labels["pairs"]}
    df = load_results(folder)
    for r in rates.to_dict("records"):
        mode = "full" if r["reading"] == "full" else "sampled"
        rows = df[[m == mode for m in ("sampled" if isinstance(x, (int, float)) and not math.isnan(x) else "full"
                                       for x in df["rows"])]]
        members = [x for x in rows.to_dict("records")
                   if (r["relation"] == rel_of.get((x["base"], x["ft"])))
                   or (r["relation"] == "all dependent" and RELATIONS.get(rel_of.get((x["base"], x["ft"])), False))
                   or (r["relation"] == "all independent"
                       and RELATIONS.get(rel_of.get((x["base"], x["ft"])), True) is False)]
        ok = [x for x in members if x["status"] == "ok"]
        k = sum(x["log10_pvalue"] <= math.log10(r["level"]) for x in ok)
        assert (r["pairs"], r["called"], r["failed"]) == (len(ok), k, len(members) - len(ok)), r
        assert r["kind"] == ("TPR" if RELATIONS.get(r["relation"], r["relation"] == "all dependent") else "FPR")
        if ok:
            ci = binomtest(k, len(ok)).proportion_ci(0.95, method="exact")
            assert (r["lo"], r["hi"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    # power: every fine-tune and the quantized copy is called dependent at every level, full and sampled
    dep = rates[rates["relation"].isin(["finetune", "quantized"])]
    assert (dep["rate"] == 1.0).all() and (dep["pairs"] > 0).all()
    # the failed pair is counted as failed, not as a miss
    pruned = rates[rates["relation"] == "pruned"]
    assert (pruned["pairs"] == 0).all() and (pruned["failed"] == 1).all()
    indep = rates[rates["relation"] == "all independent"]
    assert (indep["pairs"] == 4).all()
    assert "## Rates per relation" in report and "tiny labelled family" in report
    assert "sampled (K=32)" in report and "α = 0.0001" in report


def test_a_launch_of_a_labelled_list_writes_the_labels_and_the_rates(tmp_path):
    """End to end on this machine: the launch keeps the labels beside the results, the report scores them."""
    import subprocess
    import sys

    from helpers import save_trio
    paths = save_trio(tmp_path)
    cfg = tmp_path / "labelled.yaml"
    cfg.write_text(yaml.safe_dump({"models_1": [paths["base"], paths["base"]], "models_2": [paths["ft"], paths["indep"]],
                                   "relations": ["finetune", "independent"], "sources": ["a fine-tune", "seed 7"],
                                   "stat": "cos"}))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), str(cfg), "--cluster", "local", "--max_workers", "1",
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / KNOWN_RELATIONS).is_file()
    rates = pd.read_csv(out / RATES_FILE)
    fin = rates[(rates["relation"] == "finetune")]
    assert list(fin["called"]) == [1, 1, 1] and list(fin["pairs"]) == [1, 1, 1]
    assert set(rates["relation"]) == {"finetune", "independent", "all dependent", "all independent"}
    assert "## Rates per relation" in (out / "report.md").read_text()


def test_a_rerun_replaces_the_older_result_of_a_pair():
    """The newest result of a pair counts (an older failure does not), and sampled runs at two K both count."""
    import numpy as np

    from tracing.lineage.relations import relation_rates
    labels = parse_model_list({"models_1": ["a/x"], "models_2": ["b/y"], "relations": ["finetune"],
                               "sources": ["s"]}, source="l.yaml").labels
    row = {"base": "a/x", "ft": "b/y", "variant": "cos", "status": "ok", "log10_pvalue": -50.0, "rows": np.nan}
    df = pd.DataFrame([{**row, "superseded": False},
                       {**row, "status": "failed", "log10_pvalue": np.nan, "superseded": True},
                       {**row, "variant": "cos --rows 64", "rows": 64, "superseded": True, "log10_pvalue": -1.0},
                       {**row, "variant": "cos --rows 256", "rows": 256, "superseded": False}])
    rates = relation_rates(df, labels)
    fin = rates[(rates["relation"] == "finetune") & (rates["level"] == 1e-2)].set_index("reading")
    assert fin.loc["full", ["pairs", "called", "failed"]].tolist() == [1, 1, 0]
    assert fin.loc["sampled (K=64)", ["pairs", "called"]].tolist() == [1, 0]
    assert fin.loc["sampled (K=256)", ["pairs", "called"]].tolist() == [1, 1]
