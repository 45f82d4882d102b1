"""python -m tracing.scan: one candidate against a reference list (demo family, offline)."""
import csv
import math

from helpers import tiny_config, tiny_model

from tracing import scan
from tracing.cli_util import run_cli
from tracing.results import load_record

DEMO_REFS = "config/references-demo.yaml"


def test_scan_ranks_the_true_base_first(tmp_path, capsys):
    out = tmp_path / "scan"
    assert run_cli(scan.main, ["demo:a-docs-v2", "--against", DEMO_REFS, "--rows", "64", "--out", str(out),
                               "--quiet"]) == 0
    printed = capsys.readouterr().out
    with open(out / "scan.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["reference"] for r in rows][0] == "demo:base-a" and "demo:base-a" in printed
    first, others = rows[0], rows[1:]
    assert first["verdict"] == "dependent" and float(first["full log10 p"]) < -100
    assert float(first["Holm log10 p"]) < math.log10(0.01)
    assert len(others) == 2 and all(r["verdict"] == "not significant" and r["full log10 p"] == "" for r in others)
    screen = load_record(out / "demo-base-a_screen.p")
    assert screen["extra"]["rows"] == 64 and screen["extra"]["rows_seed"] == 0
    assert "rows" not in load_record(out / "demo-base-a_full.p")["extra"]
    assert not (out / "demo-base-b_full.p").exists()


def test_scan_of_a_model_against_itself_short_circuits(capsys):
    rows = scan.scan("demo:base-b", scan.read_references(DEMO_REFS), rows=32)
    assert rows[0].reference == "demo:base-b" and rows[0].status == "identical"
    assert rows[0].screen_log10_p is None and "re-upload" in rows[0].verdict
    assert all(r.status == "screened" for r in rows[1:])


def test_scan_lists_incompatible_and_missing_references(tmp_path):
    tiny_model(tiny_config(L=4, d=32, h=128), seed=3).save_pretrained(tmp_path / "narrow")
    refs = [(str(tmp_path / "narrow"), "other"), (str(tmp_path / "missing"), None), ("demo:base-a", "demo")]
    rows = scan.scan("demo:a-sys", refs, rows=32)
    by = {r.reference: r for r in rows}
    narrow = by[str(tmp_path / "narrow")]
    assert narrow.status == "incompatible" and "d=32 vs 64" in narrow.why and "--localized" in narrow.why
    assert by[str(tmp_path / "missing")].status == "unavailable"
    assert rows[0].reference == "demo:base-a" and rows[0].verdict == "dependent"


def test_scan_bad_rows_and_statistic(capsys):
    assert run_cli(scan.main, ["demo:a-sys", "--against", DEMO_REFS, "--rows", "0"]) == 2
    assert run_cli(scan.main, ["demo:a-sys", "--against", DEMO_REFS, "--stat", "l2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error:") for line in err)


def test_scans_into_one_folder_read_each_models_rows_once(tmp_path):
    """With --out the sampled rows go to the store beside the results: the candidate is read once for
    all references, and a later scan of another candidate finds the references there."""
    from tracing.rowstore import FOLDER
    out = tmp_path / "scan"
    refs = scan.read_references(DEMO_REFS)
    first = {r.reference: r for r in scan.scan("demo:a-docs-v2", refs, rows=32, out=out)}
    L = len(load_record(out / "demo-base-a_screen.p")["per_layer"])  # one up_proj per block
    counts = [load_record(out / f"{scan_name(r)}_screen.p")["rows_store"] for r in ("demo:base-a", "demo:base-b",
                                                                                   "demo:base-c")]
    assert [c["base"] for c in counts] == [{"from_store": 0, "read": L}] * 3  # each reference read once
    assert sum(c["ft"]["read"] for c in counts) == L  # the candidate read once for all three
    second = {r.reference: r for r in scan.scan("demo:a-sys", refs, rows=32, out=out)}
    again = [load_record(out / f"{scan_name(r)}_screen.p")["rows_store"] for r in ("demo:base-a", "demo:base-b",
                                                                                   "demo:base-c")]
    assert [c["base"] for c in again] == [{"from_store": L, "read": 0}] * 3  # the references from the store
    assert len([d for d in (out / FOLDER).iterdir() if d.is_dir()]) == 5  # 3 references + 2 candidates
    assert first["demo:base-a"].verdict == second["demo:base-a"].verdict == "dependent"
    plain = {r.reference: r for r in scan.scan("demo:a-sys", refs, rows=32)}  # no store: same screens
    assert all(plain[k].screen_log10_p == second[k].screen_log10_p for k in plain)


def scan_name(ref: str) -> str:
    from tracing.cli_util import slug
    return slug(ref)


def test_a_model_in_memory_keeps_its_rows():
    """Without --out the candidate's sampled rows are kept in memory for the whole scan."""
    from tracing.models import Checkpoint
    from tracing.rowstore import with_store
    from tracing.stats.base import sampled_rows
    ck = Checkpoint("demo:base-a")
    kept = with_store(ck, None, memory=True)
    idx = sampled_rows(ck.arch.h, 16, 0)
    up = ck.arch.units(0)[0].up
    assert torch_equal(kept.get_rows(up, idx), ck.get_rows(up, idx))
    assert torch_equal(kept.get_rows(up, idx), ck.get_rows(up, idx))
    assert kept.counts() == {"from_store": 1, "read": 1}
    assert with_store(ck, None) is ck  # no store asked for: the checkpoint itself


def torch_equal(a, b) -> bool:
    import torch
    return torch.equal(a, b)


def test_references_sharing_a_folder_name_keep_their_own_records(tmp_path):
    """References ``…/qwen3/base``, ``…/gemma2/base``, ``…/phi3/base``: one record each, named by a
    digest of the path (as launch.py names pair folders), each holding its own reference's test."""
    from helpers import finetuned
    refs, models = [], {}
    for k, fam in enumerate(("qwen3", "gemma2", "phi3")):
        models[fam] = tiny_model(tiny_config(L=2, d=32, h=64), seed=20 + k)
        models[fam].save_pretrained(tmp_path / fam / "base")
        refs.append(str(tmp_path / fam / "base"))
    finetuned(models["gemma2"], seed=5).save_pretrained(tmp_path / "cand")
    out = tmp_path / "scan"
    rows = scan.scan(str(tmp_path / "cand"), refs, rows=32, out=out)
    assert rows[0].reference == refs[1] and rows[0].verdict == "dependent"
    screens = sorted(out.glob("*_screen.p"))
    assert len(screens) == 3
    tested = {load_record(p)["args"]["base_model_id"] for p in screens}
    assert tested == {str(tmp_path / fam / "base") for fam in ("qwen3", "gemma2", "phi3")}
    full = list(out.glob("*_full.p"))
    assert len(full) == 1 and load_record(full[0])["args"]["base_model_id"] == refs[1]


def test_a_record_of_another_reference_is_never_replaced(tmp_path):
    """Two ids with one file-safe name (cut at 120 characters): the second gets its own file."""
    from tracing.results import save_record
    first, second = "org/" + "m" * 120 + "-1", "org/" + "m" * 120 + "-2"
    taken = scan.record_path(tmp_path, first, "screen")
    save_record({"args": {"base_model_id": first}, "stat": "cos"}, taken)
    assert scan.record_path(tmp_path, first, "screen") == taken  # its own record: rewritten in place
    other = scan.record_path(tmp_path, second, "screen")
    assert other != taken and other.name.endswith("_screen.p")


def test_rows_larger_than_the_width_is_an_error_as_in_main(tmp_path, capsys):
    """An explicit --rows beyond a reference's MLP width is one line and exit 2 (as main.py), before
    any test runs; only the default K = 256 shrinks to the width of smaller models."""
    out = tmp_path / "scan"
    assert run_cli(scan.main, ["demo:a-sys", "--against", DEMO_REFS, "--rows", "99999", "--out", str(out),
                               "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --rows 99999 is larger than the MLP width h=128"), err
    assert not list(out.glob("*.p")) and not (out / "scan.csv").exists()
    rows = scan.scan("demo:a-sys", scan.read_references(DEMO_REFS))  # default K: all 128 units of the demo models
    assert {r.k for r in rows} == {128}


def results_in(out) -> dict:
    """The scan's files in ``out`` (not the sampled-row store), name -> bytes."""
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_a_later_scan_into_the_same_folder_replaces_the_earlier_results(tmp_path):
    """OUT describes the latest scan only: the earlier scan's records (here a full test of a
    reference the later scan does not list) are gone, the Holm family is the later scan's; the
    sampled-row store and files the scan did not write are kept."""
    import json
    from tracing.rowstore import FOLDER
    out = tmp_path / "scan"
    scan.scan("demo:a-docs-v2", scan.read_references(DEMO_REFS), rows=32, out=out)
    assert (out / "demo-base-a_full.p").is_file()
    (out / "notes.txt").write_text("mine\n")
    rows = scan.scan("demo:a-sys", ["demo:base-b", "demo:base-c"], rows=32, out=out)
    assert all(r.verdict == "not significant" for r in rows)
    assert sorted(p.name for p in out.glob("*.p")) == ["demo-base-b_screen.p", "demo-base-c_screen.p"]
    assert all(load_record(p)["args"]["ft_model_id"] == "demo:a-sys" for p in out.glob("*.p"))
    family = json.loads((out / "holm-family.json").read_text())
    assert {(m["base"], m["ft"]) for m in family["members"]} == {("demo:base-b", "demo:a-sys"),
                                                                 ("demo:base-c", "demo:a-sys")}
    with open(out / "scan.csv") as f:
        assert [r["reference"] for r in csv.DictReader(f)] == [r.reference for r in rows]
    assert (out / "notes.txt").read_text() == "mine\n"
    assert len([d for d in (out / FOLDER).iterdir() if d.is_dir()]) == 5  # 3 references + 2 candidates


def test_a_scan_that_fails_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    """A scan stopped after some of its records were written (here by a failure of the full test)
    leaves no record of its own in OUT: the earlier scan's results stay, unchanged and whole."""
    import pytest
    out = tmp_path / "scan"
    scan.scan("demo:a-sys", ["demo:base-b", "demo:base-c"], rows=32, out=out)
    before = results_in(out)
    real = scan._test

    def failing(ref_ck, cand_ck, options, where, name, progress):
        if name == "full":
            raise RuntimeError("the machine went down")
        return real(ref_ck, cand_ck, options, where, name, progress)
    monkeypatch.setattr(scan, "_test", failing)
    with pytest.raises(RuntimeError):
        scan.scan("demo:a-docs-v2", scan.read_references(DEMO_REFS), rows=32, out=out)
    assert results_in(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".sampled-rows"]
