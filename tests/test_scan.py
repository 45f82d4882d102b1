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
