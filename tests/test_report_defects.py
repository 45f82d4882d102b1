"""The report's handling of awkward folders: bad arguments, one-way pairs, unreadable files, reruns,
p-values at the floor of their test, and what report.md says about the null hypothesis."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tracing import demo
from tracing.api import run_pair
from tracing.cli_util import slug
from tracing.options import Options
from tracing.report import heatmap_matrix, verdict, write_report

ROOT = Path(__file__).resolve().parent.parent
TINY_DATA = dict(num_samples=2, block_size=32)


def _d(name):
    return f"demo:{name}"


def _save(folder, a, b, name, options):
    path = Path(folder) / f"{slug(_d(a))}__{slug(_d(b))}" / name
    run_pair(_d(a), _d(b), options, save={options.stat[0]: path}, progress=False)
    return path


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """cos on (base-a, a-docs) and (a-docs, base-b), run one way round only; match on one pair; a
    corrupt cos result for (base-a, base-b) in the folder named after that pair."""
    demo.ensure_built(progress=False)
    folder = tmp_path_factory.mktemp("defects") / "run"
    _save(folder, "base-a", "a-docs", "cos.p", Options(stat=["cos"]))
    _save(folder, "a-docs", "base-b", "cos.p", Options(stat=["cos"]))
    _save(folder, "base-a", "a-docs", "match.p", Options(stat=["match"], **TINY_DATA))
    bad = folder / f"{slug(_d('base-a'))}__{slug(_d('base-b'))}" / "cos.p"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00 not a pickle")
    report = write_report(folder)
    return folder, report, report.read_text()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tracing.report", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def _one_line_error(r):
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_unwritable_out_and_binary_lineage_are_one_line_errors(small_run, tmp_path):
    folder, _, _ = small_run
    before = sorted(p.name for p in folder.iterdir())
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):  # a file, and a folder under a file
        r = _cli(folder, "--out", out)
        _one_line_error(r)
        assert "--out" in r.stderr or str(out) in r.stderr
        assert blocker.read_text() == "x"
    binary = tmp_path / "lineage.json"
    binary.write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "rep"
    r = _cli(folder, "--lineage", binary, "--out", out)
    _one_line_error(r)
    assert "lineage" in r.stderr and "UnicodeDecodeError" not in r.stderr
    assert not out.exists()
    r = _cli(folder, "--lineage", binary)  # into the results folder: nothing new there either
    _one_line_error(r)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_heatmap_draws_only_the_direction_that_was_run(small_run):
    folder, _, text = small_run
    df = pd.read_csv(folder / "summary.csv")
    g = heatmap_matrix(df, "cos")
    pos = {m: i for i, m in enumerate(g.models)}
    a, ad, b = pos[_d("base-a")], pos[_d("a-docs")], pos[_d("base-b")]
    for i, j in ((a, ad), (ad, b)):  # run as (row, column)
        assert g.state[i, j] == "ok" and np.isfinite(g.value[i, j])
        assert g.state[j, i] == "reverse" and np.isnan(g.value[j, i]) and g.text[j, i] != g.text[i, j]
    # the corrupt file sits in the folder of (base-a, base-b): shown as unreadable there, not as "not run"
    assert g.state[a, b] == "unreadable" and g.text[a, b] == "unreadable"
    assert g.state[b, a] == "reverse"
    caption = text.split("### heatmap", 1)[1].split("###", 1)[0]
    assert "run only with the roles swapped" in caption and "rows: base model θ₁" in caption
    assert "1 unreadable result file(s)" in text


def test_options_table_shows_the_data_used(small_run):
    _, _, text = small_run
    rows = [line for line in text.splitlines() if line.startswith("| dataset |")]
    assert rows and not any("null" in line for line in rows), rows
    assert '| dataset | "demo" | match |' in text


def test_floor_p_values_are_explained(small_run):
    folder, _, text = small_run
    floor = -math.lgamma(demo.MODEL_CONFIG["intermediate_size"] + 1) / math.log(10)  # −log10(h!)
    df = pd.read_csv(folder / "summary.csv", dtype={"pvalue_str": str})
    ok = df[df["status"] == "ok"]
    related = ok[(ok["base"] == _d("base-a")) & (ok["ft"] == _d("a-docs"))]
    assert related["at_floor"].all()
    for f in related["file"]:  # every block at −log10(h!): the record's own per-block p-values
        from tracing.results import load_record
        blocks = [x["log10_pvalue"] for x in load_record(folder / f)["per_layer"]]
        assert len(blocks) == 4 and blocks == pytest.approx([floor] * 4, rel=1e-12)
    assert not ok[ok["ft"] == _d("base-b")]["at_floor"].any()
    assert "at the floor of this test (perfect match in every block)" in text
    assert f"| `{_d('base-a')}` | `{_d('a-docs')}` | " in text and "(floor) |" in text
    unrelated = next(line for line in text.splitlines() if line.startswith(f"| `{_d('a-docs')}` | `{_d('base-b')}`"))
    assert "(floor)" not in unrelated


def test_null_and_test_kind_are_stated(small_run):
    _, _, text = small_run
    assert "θ₁ and θ₂ were trained from independent random initialisations" in text
    for words in ("fine-tune", "continued pre-training", "pruning", "merge", "quantization",
                  "does not prove independence", "distilled only from another's outputs"):
        assert words in text, words
    assert "| cos | 1/1 | 1/1 | 0/1 | 0/1 | exact |" in text
    assert "| match | 1/1 | 1/1 | 0/0 | 0/0 | approximate |" in text
    assert "DESIGN" not in text and "§" not in text


def test_no_development_references_in_the_report_code():
    files = list((ROOT / "tracing" / "report").rglob("*.py"))
    assert len(files) > 5
    for p in files:
        assert "DESIGN" not in p.read_text(), p


def test_reruns_count_once_newest_first(tmp_path):
    demo.ensure_built(progress=False)
    run = tmp_path / "rerun"
    pairs = [("base-a", "a-docs"), ("base-a", "base-b")]
    for k, (a, b) in enumerate(pairs):
        old = _save(run, a, b, "cos-0a1b.p", Options(stat=["cos"], seed=1))
        new = _save(run, a, b, "cos-9f8e.p", Options(stat=["cos"]))
        os.utime(old, (1_000_000_000, 1_000_000_000))
        os.utime(new, (1_000_000_100 + k, 1_000_000_100 + k))
    text = write_report(run).read_text()
    df = pd.read_csv(run / "summary.csv")
    assert df["superseded"].sum() == 2
    assert set(df.loc[df["superseded"], "file"].map(lambda f: Path(f).name)) == {"cos-0a1b.p"}
    assert (df.loc[df["superseded"], "verdict"] == "superseded").all()
    assert df.loc[df["superseded"], "log10_pvalue_adj"].isna().all()
    assert "| cos | 1/1 | 1/1 | 0/1 | 0/1 | exact |" in text
    assert "2 result(s) superseded" in text
    assert text.count(f"| `{_d('base-a')}` | `{_d('base-b')}` |") == 1
    g = heatmap_matrix(df, "cos")
    assert (g.state == "ok").sum() == 2


def test_verdict_is_p_at_or_below_the_level():
    assert verdict(math.log10(0.01), 0.01) is True
    assert verdict(math.log10(0.01) + 1e-13, 0.01) is True
    assert verdict(math.log10(0.01) + 1e-9, 0.01) is False
    assert verdict(None, 0.01) is None and verdict(float("nan"), 0.01) is None


def test_demo_base_a_resolves_to_the_cached_files():
    from tracing.models import resolve
    root = demo.default_root()
    if not os.environ.get(demo.ENV_DIR):
        assert root.name == "demo-v2"  # the cache folder of the built family: never rebuilt
    assert demo.is_built(root)
    path = demo.resolve_demo("demo:base-a")
    assert path == root.absolute() / "base-a"
    assert (path / "model.safetensors").is_file()
    resolved = resolve("demo:base-a")
    assert Path(resolved.path) == path


def test_unreadable_file_listed_in_launch_json_is_placed_on_its_pair(small_run, tmp_path):
    import shutil
    folder, _, _ = small_run
    run = tmp_path / "copy"
    shutil.copytree(folder, run, ignore=shutil.ignore_patterns("*.png", "*.md", "summary.*"))
    bad = run / "odd-name" / "cos-1234.p"
    bad.parent.mkdir()
    bad.write_bytes(b"truncated")
    pairs = [{"base": _d("a-docs"), "ft": _d("base-a"), "dir": "odd-name", "stats": ["cos"], "results": [str(bad)],
              "status": "done", "error": None}]
    (run / "launch.json").write_text(json.dumps({"cluster": "local", "time": "now", "pairs": pairs}))
    text = write_report(run).read_text()
    g = heatmap_matrix(pd.read_csv(run / "summary.csv"), "cos")
    pos = {m: i for i, m in enumerate(g.models)}
    assert g.state[pos[_d("a-docs")], pos[_d("base-a")]] == "unreadable"
    assert g.state[pos[_d("base-a")], pos[_d("a-docs")]] == "ok"
    assert "2 unreadable result file(s)" in text


def test_cjk_model_names_draw_without_glyph_warnings(tmp_path):
    """Model names in a script the default font lacks: figures are written, stderr stays empty, and
    each label is drawable (a font with the glyphs when one is installed, else a transliteration)."""
    import shutil
    from tracing import glyphs
    demo.ensure_built(progress=False)
    names = {"base-a": "基础模型", "a-docs": "微调-文档", "base-b": "独立模型"}
    models = {}
    for src, name in names.items():
        models[src] = str(tmp_path / name)
        shutil.copytree(demo.resolve_demo(_d(src)), models[src])
    folder = tmp_path / "run"
    for a, b in (("base-a", "a-docs"), ("base-a", "base-b"), ("a-docs", "base-b")):
        run_pair(models[a], models[b], Options(stat=["cos"]), save=f"{folder}/{slug(models[a])}__{slug(models[b])}/",
                 progress=False)
    r = _cli(folder)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr == ""  # no "Glyph … missing from font(s)" warnings
    for f in ("heatmap.png", "per_layer.png", "lineage.png"):
        assert (folder / f).stat().st_size > 0
    label = glyphs.drawable("基础模型")
    assert label == "基础模型" if glyphs.covered("基础模型") else label.isascii() and label
    assert glyphs.drawable("a-docs") == "a-docs" and glyphs.drawable("Ωmega") == "Ωmega"  # DejaVu has Greek


def test_options_table_names_the_statistics_each_option_applies_to(small_run):
    """cos and match in one folder: an option only match reads is marked match, one neither reads
    (alpha, the interpolation weight of mode) is not listed as applying to them."""
    from tracing import stats
    _, _, text = small_run
    rows = [r for r in text.split("### Options", 1)[1].split("\n\n", 2)[1].splitlines()[2:]]
    applies = {r.split("|")[1].strip(): r.split("|")[3].strip() for r in rows}
    assert "alpha" not in applies and "num_perm" not in applies
    assert applies["num_samples"] == "match" and applies["block_size"] == "match"
    assert applies["seed"] == "all" and applies["significance"] == "all"
    for opt, where in applies.items():  # every row agrees with the statistics' own facts
        names = ("cos", "match") if where == "all" else where.split(", ")
        assert all(opt in stats.get(s).option_names() for s in names), (opt, where)
