"""The report of a results folder, on real runs of the offline demo family (known lineage)."""
import itertools
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tracing import demo
from tracing import pvalues
from tracing.api import run_pair
from tracing.cli_util import slug
from tracing.errors import TracingError
from tracing.options import Options
from tracing.report import heatmap_matrix, write_report
from tracing.results import failure_record, load_results, save_record

ROOT = Path(__file__).resolve().parent.parent
DATA = dict(dataset="demo", num_samples=4, block_size=64)
ALPHAS = [0, 0.25, 0.5, 0.75, 1]
MATCH_PAIRS = [("base-a", "a-docs"), ("base-a", "base-b"), ("a-docs", "b-docs"), ("base-b", "b-docs")]
MODE_PAIRS = [("base-a", "a-docs"), ("base-a", "base-b")]
FAILED = ("base-c", "a-sys", "match")
FIGURES = ("heatmap.png", "calibration.png", "mode_curves.png", "per_layer.png")


def _d(name):
    return f"demo:{name}"


def _dir(out, a, b):
    return Path(out) / f"{slug(_d(a))}__{slug(_d(b))}"


def _run(out, a, b, stat, options):
    return run_pair(_d(a), _d(b), options, save={stat: _dir(out, a, b) / f"{stat}.p"}, progress=False)[0]


def _fail(out, a, b, stat, options):
    """A real failure: the run raises, and the error is recorded as a launcher would."""
    t = time.time()
    with pytest.raises(TracingError) as err:
        run_pair(_d(a), _d(b), options, progress=False)
    rec = failure_record(_d(a), _d(b), stat, {**options.to_dict(), "stat": stat}, err.value, time.time() - t)
    save_record(rec, _dir(out, a, b) / f"{stat}.p")
    return rec


def build_demo_run(out: Path) -> list[dict]:
    """cos on all 21 pairs, cos --permute --align on one, match on four, mode with --alphas on two,
    and one match that fails (its evaluation text does not exist)."""
    recs = []
    for a, b in itertools.combinations(demo.MODEL_NAMES, 2):
        recs.append(_run(out, a, b, "cos", Options(stat=["cos"])))
    rec = run_pair(_d("base-a"), _d("a-sys"), Options(stat=["cos"], permute=True, align=True),
                   save={"cos": _dir(out, "base-a", "a-sys") / "cos-permute-align.p"}, progress=False)[0]
    recs.append(rec)
    for a, b in MATCH_PAIRS:
        recs.append(_run(out, a, b, "match", Options(stat=["match"], **DATA)))
    for a, b in MODE_PAIRS:
        recs.append(_run(out, a, b, "mode", Options(stat=["mode"], alphas=ALPHAS, **DATA)))
    a, b, stat = FAILED
    recs.append(_fail(out, a, b, stat, Options(stat=[stat], dataset=str(out / "no-such-text.txt"),
                                                num_samples=4, block_size=64)))
    return recs


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    demo.ensure_built(progress=False)
    folder = tmp_path_factory.mktemp("report") / "run"
    records = build_demo_run(folder)
    report = write_report(folder)
    return folder, records, report


@pytest.fixture(scope="session")
def summary(demo_run):
    folder, _, _ = demo_run
    return read_summary(folder)


def read_summary(folder):
    # the formatted p-values stay text (pandas would parse "5.9e-854" as the float 0.0)
    return pd.read_csv(folder / "summary.csv", dtype={"pvalue_str": str, "pvalue_adj_str": str})


# ------------------------------------------------------------------------------------------
def test_every_output_is_written(demo_run):
    folder, _, report = demo_run
    assert report == folder / "report.md"
    for name in ("summary.csv", "summary.parquet", "report.md", *FIGURES):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    import matplotlib.image
    for name in FIGURES:
        img = matplotlib.image.imread(folder / name)
        assert img.shape[0] > 200 and img.shape[1] > 200
        assert img[..., :3].std() > 0.05  # not a blank canvas


def test_summary_table_holds_every_result_and_a_valid_correction(demo_run, summary):
    folder, records, _ = demo_run
    # one row per record, plus one for the aligned variant
    assert len(summary) == len(records) + sum(1 for r in records if r.get("aligned"))
    assert summary.equals(read_summary(folder))
    pq = pd.read_parquet(folder / "summary.parquet")
    assert len(pq) == len(summary) and list(pq.columns) == list(summary.columns)
    assert set(summary["correction"]) == {"Holm"}
    # corrected p-values: never below the raw ones; computed in log10 space per grid
    ok = summary[summary["log10_pvalue"].notna()]
    assert (ok["log10_pvalue_adj"] >= ok["log10_pvalue"] - 1e-12).all()
    assert (ok["log10_pvalue_adj"] <= 0).all()
    for variant, sub in ok.groupby("variant"):
        np.testing.assert_allclose(sub["log10_pvalue_adj"], pvalues.holm(sub["log10_pvalue"].to_numpy()))
    assert set(ok["variant"]) == {"cos", "cos --permute", "cos --permute [aligned]", "match"}
    # the strongest evidence underflows as a float; the log10 columns keep it
    tiny = ok[ok["log10_pvalue"] < -400]
    assert len(tiny) and (tiny["pvalue"] == 0).all() and tiny["pvalue_str"].str.match(r"^\d(\.\d)?e-\d+$").all()
    # lineage from the demo family, and the verdicts agree with it for cos
    for _, r in summary[summary["status"] == "ok"].iterrows():
        assert r["lineage_dependent"] == demo.are_dependent(r["base"], r["ft"])
    cos = summary[summary["variant"] == "cos"]
    assert len(cos) == 21
    assert ((cos["verdict_adj"] == "dependent") == cos["lineage_dependent"]).all()
    assert (cos["significant_adj"] == cos["lineage_dependent"]).all()
    # an approximate test's verdict says so wherever it says "dependent"
    match = summary[summary["variant"] == "match"]
    sig = match[match["significant"] == True]  # noqa: E712
    assert len(sig) and (sig["verdict"] == "dependent (approximate test)").all()
    assert not match["verdict"].eq("dependent").any() and not match["verdict_adj"].eq("dependent").any()
    # mode without a permutation test: statistic only
    mode = summary[summary["stat"] == "mode"]
    assert len(mode) == 2 and mode["log10_pvalue"].isna().all() and (mode["verdict"] == "no p-value").all()
    assert mode["barrier"].notna().all()
    # the failure is a row, left out of the correction
    bad = summary[summary["status"] == "failed"]
    assert len(bad) == 1
    assert (bad.iloc[0]["base"], bad.iloc[0]["ft"], bad.iloc[0]["stat"]) == (_d(FAILED[0]), _d(FAILED[1]), FAILED[2])
    assert bad.iloc[0]["verdict"] == "failed" and math.isnan(bad.iloc[0]["log10_pvalue_adj"])
    assert "no-such-text.txt" in bad.iloc[0]["error"]


def test_heatmap_matrix_is_the_table(demo_run, summary):
    g = heatmap_matrix(summary, "cos")
    names = [m.removeprefix("demo:") for m in g.models]
    # families together, each root first
    assert names == ["base-a", "a-docs", "a-sys", "a-docs-v2", "base-b", "b-docs", "base-c"]
    pos = {m: i for i, m in enumerate(g.models)}
    cos = summary[summary["variant"] == "cos"]
    for _, r in cos.iterrows():
        i, j = pos[r["base"]], pos[r["ft"]]
        assert g.value[i, j] == pytest.approx(-r["log10_pvalue"], rel=1e-12)
        assert g.state[j, i] == "reverse" and np.isnan(g.value[j, i])  # run one way round only: not mirrored
        assert g.text[i, j] == pvalues.format_pvalue(r["log10_pvalue"], digits=1)
        assert g.significant[i, j] == (r["log10_pvalue_adj"] < math.log10(0.01))
    assert (np.diag(g.state) == "self").all()
    off = ~np.eye(len(g.models), dtype=bool)
    assert (g.state == "ok").sum() == 21 and set(g.state[off]) == {"ok", "reverse"}
    assert np.isfinite(g.value[g.state == "ok"]).all() and np.isnan(g.value[g.state == "reverse"]).all()

    m = heatmap_matrix(summary, "match")
    pos = {x: i for i, x in enumerate(m.models)}
    a, b, _ = FAILED
    assert m.state[pos[_d(a)], pos[_d(b)]] == "failed" and m.state[pos[_d(b)], pos[_d(a)]] == "reverse"
    assert m.text[pos[_d(a)], pos[_d(b)]] == "failed"
    assert m.state[pos[_d("base-a")], pos[_d("base-c")]] == "missing"  # never run: marked, not blank
    assert m.text[pos[_d("base-a")], pos[_d("base-c")]] == "not run"
    for a, b in MATCH_PAIRS:
        row = summary[(summary["variant"] == "match") & (summary["base"] == _d(a)) & (summary["ft"] == _d(b))]
        assert m.value[pos[_d(a)], pos[_d(b)]] == pytest.approx(-row["log10_pvalue"].iloc[0])

    mode = heatmap_matrix(summary, "mode")  # no p-values: the raw statistic (loss at α)
    assert mode.kind == "statistic"
    for a, b in MODE_PAIRS:
        row = summary[(summary["stat"] == "mode") & (summary["base"] == _d(a)) & (summary["ft"] == _d(b))]
        assert mode.value[mode.models.index(_d(a)), mode.models.index(_d(b))] == pytest.approx(row["statistic"].iloc[0])
    # the plain load_results table gives the same matrix
    raw = heatmap_matrix(load_results(demo_run[0]), "cos")
    assert sorted(raw.models) == sorted(g.models)
    np.testing.assert_array_equal(heatmap_matrix(load_results(demo_run[0]), "cos", models=g.models).value, g.value)


def test_report_lists_runs_pairs_failures_and_figures(demo_run, summary):
    folder, records, report = demo_run
    text = report.read_text()
    # every pair of every grid, by full model id
    for _, r in summary[summary["status"] == "ok"].iterrows():
        assert f"| `{r['base']}` | `{r['ft']}` |" in text
    # failures with their error
    section = text.split("## Failures", 1)[1].split("\n## ", 1)[0]
    bad = summary[summary["status"] == "failed"].iloc[0]
    assert f"`{bad['base']}`" in section and bad["error"] in section
    # provenance: models, abbreviated weight hashes, commit, options
    for rec in records:
        for m in (rec.get("models") or {}).values():
            assert f"`{m['id']}`" in text
            for f in m["files"]:
                assert f["sha256"][:12] in text and f["sha256"] not in text
    assert records[0]["commit"] in text
    assert "| alphas |" in text and "| significance | 0.01 |" in text
    # figures: relative links to files that exist
    for name in FIGURES:
        assert f"]({name})" in text
    # timings and meanings
    assert "| load |" in text and "| statistic (cos) |" in text and "| statistic (match) |" in text
    assert "exact under the null" in text and "calibrated empirically" in text
    assert "independent pairs flagged" in text
    assert "| cos | 7/7 | 7/7 | 0/14 | 0/14 |" in text


def test_calibration_and_layers_match_the_records(demo_run, summary):
    from tracing.report import calibration_data, demo_lineage, load_records, per_layer_data
    folder, records, _ = demo_run
    cal = calibration_data(summary)
    cos = summary[(summary["variant"] == "cos") & (summary["lineage_dependent"] == False)]  # noqa: E712
    np.testing.assert_allclose(np.sort(cal["cos"]), np.sort(10.0 ** cos["log10_pvalue"].to_numpy()))
    assert len(cal["cos"]) == 14
    pl = per_layer_data(load_records(folder), demo_lineage())
    assert len(pl["cos"]) == 21 and len(pl["match"]) == len(MATCH_PAIRS)
    rec = next(r for r in records if r["stat"] == "cos")
    row = next(t for t in pl["cos"] if (t[0], t[1]) == (rec["base_model_id"], rec["ft_model_id"]))
    assert row[3] == [-x["log10_pvalue"] for x in rec["per_layer"]]


def test_cli_writes_elsewhere_with_bh(demo_run, tmp_path):
    folder, _, _ = demo_run
    out = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "tracing.report", str(folder), "--out", str(out),
                        "--correction", "bh", "--significance", "0.05"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == str(out / "report.md")
    df = pd.read_csv(out / "summary.csv")
    assert set(df["correction"]) == {"Benjamini–Hochberg"} and (df["significance"] == 0.05).all()
    ok = df[df["log10_pvalue"].notna()]
    for _, sub in ok.groupby("variant"):
        np.testing.assert_allclose(sub["log10_pvalue_adj"], pvalues.benjamini_hochberg(sub["log10_pvalue"].to_numpy()))
    text = (out / "report.md").read_text()
    assert "level 0.05" in text and "Benjamini–Hochberg" in text
    for name in FIGURES:
        assert (out / name).is_file() and f"]({name})" in text
    assert not list(out.rglob("*.p"))  # the results stay where they were


def test_cli_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in ([str(tmp_path / "nope")], [str(empty)], [str(empty), "--significance", "2"]):
        r = subprocess.run([sys.executable, "-m", "tracing.report", *args], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
        assert r.returncode == 2, args
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_explicit_lineage_file(demo_run, tmp_path):
    folder, _, _ = demo_run
    # pretend a-docs is its own root: its pairs with base-a become "independent"
    lin = {"models": {n: {"parent": demo.RECIPES[n].parent} for n in demo.MODEL_NAMES}}
    lin["models"]["a-docs"]["parent"] = None
    lin["models"]["a-docs-v2"]["parent"] = "a-docs"
    (tmp_path / "lineage.json").write_text(json.dumps(lin))
    write_report(folder, out=tmp_path / "rep", lineage=tmp_path / "lineage.json")
    df = pd.read_csv(tmp_path / "rep" / "summary.csv")
    r = df[(df["variant"] == "cos") & (df["base"] == "demo:base-a") & (df["ft"] == "demo:a-docs")].iloc[0]
    assert not r["lineage_dependent"]
    r = df[(df["variant"] == "cos") & (df["base"] == "demo:a-docs") & (df["ft"] == "demo:a-docs-v2")].iloc[0]
    assert r["lineage_dependent"]
    assert "lineage.json" in (tmp_path / "rep" / "report.md").read_text()


def test_partly_failed_run(demo_run, tmp_path):
    """Some pairs failed, one statistic failed everywhere, no mode curve: the report still works."""
    folder, _, _ = demo_run
    run = tmp_path / "partial"
    for a, b in [("base-a", "a-docs"), ("base-a", "base-b"), ("base-b", "b-docs")]:
        shutil.copytree(_dir(folder, a, b), _dir(run, a, b), ignore=shutil.ignore_patterns("mode.p", "match.p",
                                                                                            "*permute*"))
    _fail(run, "base-c", "b-docs", "cos", Options(stat=["cos"], dtype="int3"))
    _fail(run, "base-a", "base-b", "csh", Options(stat=["csh"], dtype="int3"))
    (run / "base-a__junk").mkdir()
    (run / "base-a__junk" / "cos.p").write_bytes(b"not a pickle")
    report = write_report(run)
    text = report.read_text()
    assert (run / "heatmap.png").is_file() and (run / "per_layer.png").is_file()
    assert not (run / "mode_curves.png").exists()
    assert "Not drawn: no successful `mode` result" in text
    df = pd.read_csv(run / "summary.csv")
    assert set(df["status"]) == {"ok", "failed", "unreadable"}
    section = text.split("## Failures", 1)[1].split("\n## ", 1)[0]
    assert section.count("| failed |") == 2 and "| unreadable |" in section and "base-a__junk/cos.p" in section
    g = heatmap_matrix(df[df["status"] != "unreadable"], "cos")
    i, j = g.models.index("demo:base-c"), g.models.index("demo:b-docs")
    assert g.state[i, j] == "failed"
    assert g.state[g.models.index("demo:a-docs"), g.models.index("demo:base-b")] == "missing"
    csh = heatmap_matrix(df, "csh")
    assert csh.state[0, 1] == "failed" and csh.state[1, 0] == "reverse"


def test_single_pair_run(tmp_path):
    demo.ensure_built(progress=False)
    run = tmp_path / "one"
    _run(run, "base-a", "a-docs", "cos", Options(stat=["cos"]))
    report = write_report(run)
    text = report.read_text()
    g = heatmap_matrix(pd.read_csv(run / "summary.csv"), "cos")
    assert g.models == ["demo:base-a", "demo:a-docs"] and g.state[0, 1] == "ok" and g.state[1, 0] == "reverse"
    assert (run / "heatmap.png").is_file() and (run / "per_layer.png").is_file()
    assert not (run / "calibration.png").exists() and not (run / "mode_curves.png").exists()
    assert "Not drawn: no successful p-value of a pair known to be independent." in text
    assert "None: every result succeeded." in text


def test_all_failed_run(tmp_path):
    run = tmp_path / "bad"
    _fail(run, "base-a", "a-docs", "cos", Options(stat=["cos"], dtype="int3"))
    text = write_report(run).read_text()
    assert "int3" in text
    assert not any((run / f).exists() for f in ("calibration.png", "mode_curves.png", "per_layer.png"))
    assert (run / "heatmap.png").is_file()  # the failed cell itself is shown


def test_planned_results_without_a_file_are_listed(tmp_path):
    """launch.json names every planned result; one whose file never appeared is reported."""
    demo.ensure_built(progress=False)
    run = tmp_path / "planned"
    _run(run, "base-a", "b-docs", "cos", Options(stat=["cos"]))
    pairs = [{"base": _d(a), "ft": _d(b), "dir": _dir(run, a, b).name, "stats": ["cos"],
              "results": [str(_dir(run, a, b) / "cos.p")], "status": st, "error": None}
             for a, b, st in [("base-a", "b-docs", "done"), ("base-a", "base-c", "todo")]]
    (run / "launch.json").write_text(json.dumps({"cluster": "local", "time": "now", "pairs": pairs}))
    text = write_report(run).read_text()
    assert "1 planned result(s) (launch.json) have no result file" in text
    assert "| `demo:base-a` | `demo:base-c` | cos | todo |" in text
    assert "launched on: local" in text


def test_sampled_runs_at_two_k_are_two_variants(tmp_path):
    """Two records of one pair differing only in K (``--rows``): two variants named by K, neither
    superseded by the other, each its own table in the report; a record whose options lack ``rows``
    (as older records do) gets K from the sampled rows it records."""
    from helpers import save_trio
    from tracing.report import summary_table
    from tracing.results import load_record
    m = save_trio(tmp_path / "models")
    run = tmp_path / "run"
    for k in (16, 32):
        run_pair(m["base"], m["ft"], Options(stat=["cos"], rows=k), save={"cos": run / f"k{k}.p"}, progress=False)
    old = load_record(run / "k32.p")
    old["args"].pop("rows")
    old["ft_model_id"] = old["args"]["ft_model_id"] = m["indep"]
    save_record(old, run / "old" / "k32.p")
    df = summary_table(load_results(run))
    assert sorted(zip(df["ft"], df["variant"])) == [(m["ft"], "cos --rows 16"), (m["ft"], "cos --rows 32"),
                                                   (m["indep"], "cos --rows 32")]
    assert not df["superseded"].any()
    text = write_report(run).read_text()
    assert "### cos --rows 16" in text and "### cos --rows 32" in text
