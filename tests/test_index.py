"""python -m tracing.index and tracing.scan --index: a reference index of tiny models (offline)."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy.stats import binomtest, kstest

from helpers import finetuned, tiny_config, tiny_model
from tracing import scan
from tracing.api import compare
from tracing.cli_util import run_cli
from tracing.index import Settings, screen
from tracing.index import cli as index_cli
from tracing.index.build import build
from tracing.index.entry import ROWS_FILE, SKETCH_FILE
from tracing.models import from_module
from tracing.results import load_record
from tracing.transforms import permute, transform_module

ROOT = Path(__file__).resolve().parent.parent
CFG = dict(d=32, h=64, L=2, V=96)
N_REFS = 8


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """Eight independent tiny references in folders, and an index of them (built in this process)."""
    root = tmp_path_factory.mktemp("index-refs")
    paths = []
    for i in range(N_REFS):
        tiny_model(tiny_config(**CFG), seed=100 + i).save_pretrained(root / f"ref{i}")
        paths.append(str(root / f"ref{i}"))
    idx = root / "index"
    out = build([(p, "tiny") for p in paths], idx, Settings(rows=64), workers=0)
    assert [o["status"] for o in out] == ["built"] * N_REFS
    return {"paths": paths, "index": idx, "root": root}


def test_calibration_family_wise_false_positives(refs):
    """120 candidates independent of every reference: family-wise false positives at α = 0.01 within
    the Clopper–Pearson interval, and every screened p-value uniform (KS)."""
    n, alpha, hits, pvals = 120, 0.01, 0, []
    for i in range(n):
        cand = from_module(tiny_model(tiny_config(**CFG), seed=5000 + i))
        lines = screen(cand, refs["index"], significance=alpha)
        assert len(lines) == N_REFS and all(x.k == 64 for x in lines)
        hits += any(x.verdict.startswith("dependent") for x in lines)
        assert not any(x.verdict == "cannot rule out" for x in lines)  # no false "looks permuted"
        pvals += [10 ** x.screen_log10_p for x in lines]
    ci = binomtest(hits, n).proportion_ci(0.95, method="exact")
    assert ci.low <= alpha, (hits, n)
    assert kstest(pvals, "uniform").pvalue > 0.01


def test_projected_sketch_calibrated_and_powerful(refs, tmp_path):
    """With d above the sketch width the rows are matched through the fixed random projection: the
    screen stays exact (60 unrelated candidates: screened p-values uniform, family-wise false
    positives within Clopper–Pearson) and a fine-tune is still found."""
    idx = tmp_path / "projected"
    s = Settings(rows=64, sketch=16)
    build([(p, "tiny") for p in refs["paths"]], idx, s, workers=0)
    hits, pvals = 0, []
    for i in range(60):
        lines = screen(from_module(tiny_model(tiny_config(**CFG), seed=7000 + i)), idx)
        hits += any(x.verdict.startswith("dependent") for x in lines)
        pvals += [10 ** x.screen_log10_p for x in lines]
    assert binomtest(hits, 60).proportion_ci(0.95, method="exact").low <= 0.01
    assert kstest(pvals, "uniform").pvalue > 0.01
    child = from_module(finetuned(tiny_model(tiny_config(**CFG), seed=104), seed=9, noise=0.05))
    lines = {x.reference: x for x in screen(child, idx)}
    assert lines[refs["paths"][4]].verdict == "dependent after Holm"
    assert sum(x.verdict.startswith("dependent") for x in lines.values()) == 1


def test_planted_relative_is_dependent_after_holm(refs, tmp_path, capsys):
    child = tmp_path / "child"
    finetuned(tiny_model(tiny_config(**CFG), seed=103), seed=9, noise=0.05).save_pretrained(child)
    out = tmp_path / "scan"
    assert run_cli(scan.main, [str(child), "--index", str(refs["index"]), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    with open(out / "scan.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["reference", "family", "K", "screened log10 p", "Holm log10 p", "robust log10 p",
                             "robust Holm log10 p", "verdict", "reason", "follow-up", "follow-up log10 p",
                             "follow-up verdict"]
    assert len(rows) == N_REFS and rows[0]["reference"] == refs["paths"][3]
    assert rows[0]["verdict"] == "dependent after Holm" and float(rows[0]["Holm log10 p"]) < -20
    assert all(r["verdict"] != "dependent after Holm" for r in rows[1:])
    assert f"dependent after Holm at α = 0.01: {refs['paths'][3]} (the probability" in printed
    assert "cannot be ruled out (0;" in printed
    # the follow-up (default: the full cos test on the reference's weights), its record beside scan.csv
    full = compare(refs["paths"][3], str(child), stat="cos")
    assert rows[0]["follow-up"] == "full" and rows[0]["follow-up verdict"] == "dependent"
    assert float(rows[0]["follow-up log10 p"]) == pytest.approx(full.log10_pvalue, rel=1e-3)
    assert all(r["follow-up"] == "" and r["follow-up log10 p"] == "" for r in rows[1:])
    (rec,) = out.glob("*_full.p")
    assert load_record(rec)["log10_pvalue"] == full.log10_pvalue
    assert f"follow-up (full cos on the reference's weights) of {refs['paths'][3]}: dependent" in printed
    # the Holm family of the follow-up, beside its record: attest --family takes it and verify checks it
    family = json.loads((out / "holm-family.json").read_text())
    assert family["method"] == "holm" and [(m["base"], m["log10_pvalue"]) for m in family["members"]] == [
        (refs["paths"][3], full.log10_pvalue)]
    from test_evidence import payload, write_keys
    from tracing import attest, verify
    key, pub = write_keys(tmp_path)
    stmt = tmp_path / "full.json"
    assert run_cli(attest.main, [str(rec), "--key", str(key), "--out", str(stmt), "--family", str(out / "holm-family.json")]) == 0
    corr = payload(stmt)["predicate"]["correction"]
    assert corr["method"] == "holm" and corr["size"] == 1 and corr["verdict_after_correction"] == "dependent"
    capsys.readouterr()
    assert run_cli(verify.main, [str(stmt), "--key", str(pub)]) == 0
    assert capsys.readouterr().out.startswith("verified")


def test_follow_up_with_more_rows_and_none(refs, tmp_path, capsys):
    """``--follow-up rows:K`` runs the sampled test with K rows on the reference's weights (the same
    value as main.py --rows K); ``none`` runs nothing and says how to; bad values are one line."""
    child = tmp_path / "child"
    finetuned(tiny_model(tiny_config(**CFG), seed=102), seed=9, noise=0.05).save_pretrained(child)
    lines = {x.reference: x for x in screen(str(child), refs["index"], follow_up="rows:48")}
    rel = lines[refs["paths"][2]]
    want = compare(refs["paths"][2], str(child), stat="cos", rows=48)
    assert rel.follow_up == "rows:48" and rel.follow_up_log10_p == want.log10_pvalue
    assert rel.follow_up_verdict == "dependent"
    assert all(not x.follow_up for k, x in lines.items() if k != refs["paths"][2])
    assert run_cli(scan.main, [str(child), "--index", str(refs["index"]), "--follow-up", "none", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "follow-up (" not in printed and "--follow-up full" in printed
    assert run_cli(scan.main, [str(child), "--index", str(refs["index"]), "--follow-up", "rows:x"]) == 2
    err = capsys.readouterr()
    assert "--follow-up 'rows:x' is not understood; give full, none or rows:K" in err.out + err.err


def test_follow_up_of_a_reference_whose_weights_are_gone(refs, tmp_path):
    """The screen's verdict stands; the follow-up line says it could not run and why."""
    import shutil
    moved = tmp_path / "ref1"
    shutil.copytree(refs["paths"][1], moved)
    idx = tmp_path / "index"
    build([(str(moved), "tiny")], idx, Settings(rows=64), workers=0)
    shutil.rmtree(moved)
    child = from_module(finetuned(tiny_model(tiny_config(**CFG), seed=101), seed=9, noise=0.05))
    (line,) = screen(child, idx, follow_up="full")
    assert line.verdict == "dependent after Holm" and line.follow_up == "full"
    assert line.follow_up_log10_p is None and line.follow_up_verdict.startswith("not run: ")


def test_a_later_scan_into_the_same_folder_leaves_nothing_of_the_earlier_one(refs, tmp_path, capsys):
    """OUT describes the latest scan only: a rescan that follows nothing up (``--follow-up none``, or
    nothing dependent) leaves no follow-up record and an empty Holm family, one with another follow-up
    only its own record; files the scan did not write are kept. A record of the earlier scan
    is not a member of the later family, and attest says so."""
    from tracing import attest
    child, other = tmp_path / "child", tmp_path / "unrelated"
    finetuned(tiny_model(tiny_config(**CFG), seed=103), seed=9, noise=0.05).save_pretrained(child)
    tiny_model(tiny_config(**CFG), seed=4242).save_pretrained(other)
    out = tmp_path / "scan"

    def run(cand, *extra):
        assert run_cli(scan.main, [str(cand), "--index", str(refs["index"]), "--out", str(out), "--quiet", *extra]) == 0
        with open(out / "scan.csv") as f:
            followed = [r["reference"] for r in csv.DictReader(f) if r["follow-up"]]
        family = json.loads((out / "holm-family.json").read_text())
        records = {p.name: load_record(p) for p in out.glob("*.p")}
        assert [(m["base"], m["ft"], m["log10_pvalue"]) for m in family["members"]] == [
            (r["args"]["base_model_id"], r["args"]["ft_model_id"], r["log10_pvalue"]) for r in records.values()]
        assert [r["args"]["base_model_id"] for r in records.values()] == followed
        return sorted(records), family

    names, family = run(child)
    assert len(names) == 1 and names[0].endswith("_full.p") and len(family["members"]) == 1
    earlier = tmp_path / names[0]
    earlier.write_bytes((out / names[0]).read_bytes())
    (out / "notes.txt").write_text("mine\n")
    names, family = run(child, "--follow-up", "none")
    assert names == [] and family["members"] == [] and family["family"].startswith("no follow-up")
    names, family = run(child, "--follow-up", "rows:48")
    assert len(names) == 1 and names[0].endswith("_rows48.p") and len(family["members"]) == 1
    run(child)
    names, family = run(other)  # nothing dependent after Holm: nothing followed up
    assert names == [] and family["members"] == []
    assert (out / "notes.txt").read_text() == "mine\n"
    from test_evidence import write_keys
    key, _ = write_keys(tmp_path)
    capsys.readouterr()
    assert run_cli(attest.main, [str(earlier), "--key", str(key), "--out", str(tmp_path / "s.json"),
                                 "--family", str(out / "holm-family.json")]) == 2
    assert "is not a member of the family" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_a_scan_that_fails_leaves_the_folder_as_it_was(refs, tmp_path, monkeypatch):
    """A follow-up stopped after its record was written: OUT keeps the earlier scan's results, whole."""
    import tracing.api
    child, other = tmp_path / "child", tmp_path / "unrelated"
    finetuned(tiny_model(tiny_config(**CFG), seed=103), seed=9, noise=0.05).save_pretrained(child)
    tiny_model(tiny_config(**CFG), seed=4242).save_pretrained(other)
    out = tmp_path / "scan"
    assert run_cli(scan.main, [str(other), "--index", str(refs["index"]), "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "scan.csv" in before
    real = tracing.api.run_opened

    def failing(*args, **kw):
        real(*args, **kw)
        raise RuntimeError("the machine went down")
    monkeypatch.setattr(tracing.api, "run_opened", failing)
    with pytest.raises(RuntimeError):
        run_cli(scan.main, [str(child), "--index", str(refs["index"]), "--out", str(out), "--quiet"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.fixture(scope="module")
def permuted_child(refs):
    """A fine-tune of reference 5 with its MLP units and residual stream permuted (same function)."""
    ft = finetuned(tiny_model(tiny_config(**CFG), seed=105), seed=9, noise=0.05)
    folder = refs["root"] / "permuted-child"
    transform_module(ft, lambda s: permute(s, seed=3)).save_pretrained(folder)
    return str(folder)


def test_permuted_relative_cannot_be_ruled_out_without_robust(refs, permuted_child):
    lines = {x.reference: x for x in screen(permuted_child, refs["index"])}
    rel = lines[refs["paths"][5]]
    assert rel.verdict == "cannot rule out" and "look permuted" in rel.reason and "--robust" in rel.reason
    assert not any(x.verdict.startswith("dependent") for x in lines.values())
    assert sum(x.verdict == "cannot rule out" for x in lines.values()) == 1


def test_permuted_relative_found_with_robust(refs, permuted_child):
    lines = {x.reference: x for x in screen(permuted_child, refs["index"], robust="cos")}
    rel = lines[refs["paths"][5]]
    assert rel.verdict == "dependent after Holm (robust tier)" and rel.robust_holm_log10_p < -10
    others = [x for k, x in lines.items() if k != refs["paths"][5]]
    assert all(x.verdict == "not significant" and x.robust_log10_p is not None for x in others)


def test_robust_tier_without_reference_weights(refs, permuted_child, tmp_path):
    """An index whose references are gone: the robust tier says it cannot rule them out."""
    import shutil
    moved = tmp_path / "ref5"
    shutil.copytree(refs["paths"][5], moved)
    idx = tmp_path / "index"
    build([(str(moved), "tiny")], idx, Settings(rows=64), workers=0)
    shutil.rmtree(moved)
    (line,) = screen(permuted_child, idx, robust="cos")
    assert line.verdict == "cannot rule out"
    assert line.reason == "cannot rule out: reference weights not available for the robust tier"


def test_entry_files_and_manifest(refs):
    manifest = json.loads((refs["index"] / "manifest.json").read_text())
    assert {k: manifest[k] for k in ("format_version", "seed", "rows", "blocks")} == \
        {"format_version": 1, "seed": 0, "rows": 64, "blocks": 8}
    assert "toolkit_version" in manifest
    entry = refs["index"] / "entries" / "ref0"
    assert sorted(p.name for p in entry.iterdir()) == ["entry.json", ROWS_FILE, SKETCH_FILE]
    meta = json.loads((entry / "entry.json").read_text())
    assert meta["blocks"] == [0, 1] and meta["shape"]["h"] == 64 and meta["weight_files"][0]["sha256"]
    assert meta["config_sha256"] and meta["model"] == refs["paths"][0]
    from safetensors.torch import load_file
    from tracing.index.layout import row_index
    from tracing.models import Checkpoint
    rows = load_file(entry / ROWS_FILE)
    S = row_index(64, Settings(rows=64))
    assert torch.equal(rows["up.1"].float(), Checkpoint(refs["paths"][0]).get_rows("model.layers.1.mlp.up_proj.weight", S))


def test_7b_shaped_entry_fits_in_10_mib(tmp_path):
    """At the defaults a 7B-shaped reference (d 4096, h 11008, 32 blocks, V 32000, bf16) takes ≤ 10 MiB."""
    from tracing.index.entry import features, write_entry
    src = SyntheticSource(dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                               vocab_size=32000, num_attention_heads=32, num_key_value_heads=32))
    s = Settings()
    folder = write_entry(tmp_path, "seven-b", {"model": "synthetic", "shape": {}}, features(src, s), s)
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert 8 << 20 < size <= 10 << 20


class SyntheticSource:
    """Random bf16 weights of any shape, generated on demand (a 7B model cannot be kept here)."""

    def __init__(self, config: dict, seed: int = 0):
        from tracing.arch import arch_from_config
        self.arch, self.seed, self.label = arch_from_config(config), seed, "synthetic"

    def _rows(self, name, n, width):
        g = torch.Generator().manual_seed(hash((self.seed, name)) % (1 << 31))
        return (0.02 * torch.randn(n, width, generator=g)).to(torch.bfloat16).float()

    def get_rows(self, name, index, dtype=torch.float32):
        return self._rows(name, len(index), self.arch.d).to(dtype)


def _index_cmd(*args):
    return [sys.executable, "-m", "tracing.index", *map(str, args)]


def test_concurrent_builds_into_one_index_lose_nothing(refs, tmp_path):
    idx = tmp_path / "index"
    a, b = refs["paths"][:5], refs["paths"][3:]  # overlapping: both write ref3 and ref4
    procs = [subprocess.Popen(_index_cmd("add", *ms, "--out", idx, "--rows", 64, "--workers", 0), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for ms in (a, b)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
    r = subprocess.run(_index_cmd("verify", idx), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and f"{N_REFS} good entries, 0 damaged" in r.stdout, r.stdout + r.stderr
    for key in ("ref0", "ref7"):  # bit for bit what a single build wrote
        for f in (ROWS_FILE, SKETCH_FILE):
            assert (idx / "entries" / key / f).read_bytes() == (refs["index"] / "entries" / key / f).read_bytes()


def test_local_workers_build_what_one_process_builds_and_rerun_skips(refs, tmp_path, capsys):
    idx = tmp_path / "index"
    args = ["add", *refs["paths"][:2], "--out", str(idx), "--rows", "64", "--workers", "2", "--cluster", "local"]
    assert run_cli(index_cli.main, args) == 0
    for key in ("ref0", "ref1"):
        for f in (ROWS_FILE, SKETCH_FILE):
            assert (idx / "entries" / key / f).read_bytes() == (refs["index"] / "entries" / key / f).read_bytes()
    capsys.readouterr()
    assert run_cli(index_cli.main, args[:-4] + ["--workers", "0"]) == 0
    assert capsys.readouterr().out.count("skipped ") == 2


def test_index_jobs_sized_from_each_reference_config(refs, tmp_path, capsys):
    """Each reference's job is sized from its own config, as launch.py sizes a pair: a local folder
    is hashed whole (its files' bytes count), a hub model reads only its rows; memory and time grow
    with the shape; the local executor runs the jobs under a memory limit smaller than one job."""
    from tracing.index.sizing import entry_cost, resources, size_entry
    from tracing.launch.configs import ModelInfo, model_info, reference_info
    from tracing.arch import arch_from_config
    s = Settings(rows=64)
    info = model_info(refs["paths"][0])
    files = sum(f.stat().st_size for f in Path(refs["paths"][0]).glob("*.safetensors"))
    cost = entry_cost(info, s)
    assert info.params * info.bytes_per_param <= files < info.params * info.bytes_per_param + 1 << 16
    assert cost.bytes_hashed == info.params * info.bytes_per_param
    assert cost.bytes_read == (2 * 64 * CFG["d"] + CFG["V"] * CFG["d"]) * info.bytes_per_param
    big = arch_from_config({"model_type": "llama", "hidden_size": 16384, "intermediate_size": 53248,
                            "num_hidden_layers": 126, "vocab_size": 128256, "num_attention_heads": 128,
                            "num_key_value_heads": 8})
    local, hub = ModelInfo("405b", big, 2, "local"), ModelInfo("405b", big, 2, "hub cache")
    r7, r405, r405hub = (resources(entry_cost(i, Settings())) for i in (reference_info(), local, hub))
    assert r405.mem_gb > r7.mem_gb and r405.timeout_min > r405hub.timeout_min == r7.timeout_min == 30
    assert entry_cost(hub, Settings()).bytes_read == (8 * 128 + 2048) * 16384 * 2  # rows + embedding, bf16
    idx = tmp_path / "index"
    out = build([(p, "tiny") for p in refs["paths"][:2]], idx, s, cluster="local", workers=2, mem_limit_gb=1)
    for o, p in zip(out, refs["paths"][:2]):
        res, note = size_entry(p, s)
        assert o["status"] == "built" and note == "sized from its config"
        assert (o["mem_gb"], o["timeout_min"], o["cpus"], o["sizing"]) == (res.mem_gb, res.timeout_min, 1, note)
    assert run_cli(index_cli.main, ["add", refs["paths"][0], "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    res, _ = size_entry(refs["paths"][0], s)
    assert f"{res.mem_gb} GB, 1 CPU, {res.timeout_min} min (sized from its config)" in capsys.readouterr().out
    assert not (tmp_path / "dry").exists()


def test_failed_reference_is_recorded_and_retried(refs, tmp_path, capsys):
    import shutil
    idx, late = tmp_path / "index", tmp_path / "late"
    args = ["add", refs["paths"][0], str(late), "--out", str(idx), "--rows", "64", "--workers", "0"]
    assert run_cli(index_cli.main, args) == 1
    out = capsys.readouterr().out
    assert "failed   " in out and "1 of 2 references indexed" in out and "rerun" in out
    assert run_cli(index_cli.main, ["list", str(idx)]) == 0
    assert f"failed:  {late}" in capsys.readouterr().out
    shutil.copytree(refs["paths"][1], late)
    assert run_cli(index_cli.main, args) == 0
    out = capsys.readouterr().out
    assert f"built    {late}" in out and f"skipped  {refs['paths'][0]}" in out
    assert not list((idx / "failed").iterdir())


@pytest.mark.parametrize("damage", ["truncate-sketch", "truncate-rows", "entry-json"])
def test_damaged_entry_is_named_and_the_rest_still_screen(refs, tmp_path, damage, capsys):
    import shutil
    idx = tmp_path / "index"
    shutil.copytree(refs["index"], idx)
    entry = idx / "entries" / "ref2"
    target = {"truncate-sketch": SKETCH_FILE, "truncate-rows": ROWS_FILE, "entry-json": "entry.json"}[damage]
    blob = (entry / target).read_bytes()
    (entry / target).write_bytes(blob[: len(blob) // 2] if damage != "entry-json" else blob.replace(b'"h": 64', b'"h": 65'))
    assert run_cli(index_cli.main, ["verify", str(idx)]) == 1
    out = capsys.readouterr().out.splitlines()
    damaged = [x for x in out if x.startswith("damaged:")]
    assert len(damaged) == 1 and "index entry ref2" in damaged[0] and "rebuild" in damaged[0]
    assert f"{N_REFS - 1} good entries, 1 damaged" in out[-1]
    lines = screen(from_module(tiny_model(tiny_config(**CFG), seed=77)), idx)
    bad = [x for x in lines if x.reference == "ref2" or x.reference == refs["paths"][2]]
    if damage == "truncate-rows":  # the screen reads the sketches only: still screened
        assert bad[0].screen_log10_p is not None
    else:
        assert bad[0].verdict == "cannot rule out" and "index entry ref2" in bad[0].reason
    assert sum(x.screen_log10_p is not None for x in lines) == N_REFS - (damage != "truncate-rows")


def test_other_settings_are_refused_with_the_reason(refs, tmp_path, capsys):
    args = ["add", refs["paths"][0], "--out", str(refs["index"]), "--rows", "32", "--workers", "0"]
    assert run_cli(index_cli.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "other settings (rows 64 vs 32)" in err[0]
    other = tmp_path / "other"
    build([(refs["paths"][0], None)], other, Settings(rows=32, seed=1), workers=0)
    assert run_cli(index_cli.main, ["merge", str(other), "--out", str(refs["index"])]) == 2
    err = capsys.readouterr().err
    assert "seed 0 vs 1" in err and "rows 64 vs 32" in err
    # an entry copied in from an index of other settings is named and refused, the rest still screen
    import shutil
    mixed = tmp_path / "mixed"
    shutil.copytree(refs["index"], mixed)
    shutil.copytree(other / "entries" / "ref0", mixed / "entries" / "stray")
    lines = screen(from_module(tiny_model(tiny_config(**CFG), seed=78)), mixed)
    (stray,) = [x for x in lines if x.reference == "stray"]
    assert stray.verdict == "cannot rule out" and "other settings (seed 1 vs 0, rows 32 vs 64)" in stray.reason


def test_merge_of_same_settings_unites_entries(refs, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    build([(p, None) for p in refs["paths"][:3]], a, Settings(rows=64), workers=0)
    build([(p, None) for p in refs["paths"][2:4]], b, Settings(rows=64), workers=0)
    assert run_cli(index_cli.main, ["merge", str(b), "--out", str(a)]) == 0
    assert "merged 1 entries" in capsys.readouterr().out
    assert sorted(p.name for p in (a / "entries").iterdir()) == ["ref0", "ref1", "ref2", "ref3"]


def test_other_shape_and_bad_input(refs, tmp_path, capsys):
    wide = tmp_path / "wide"
    tiny_model(tiny_config(d=48, h=64, L=2, V=96), seed=1).save_pretrained(wide)
    capsys.readouterr()
    lines = screen(str(wide), refs["index"])
    assert all(x.verdict == "cannot rule out" and "other shape (d, h, L = 32, 64, 2 vs 48, 64, 2)" in x.reason
               for x in lines)
    assert run_cli(scan.main, [str(wide), "--index", str(tmp_path / "nothing")]) == 2
    assert run_cli(index_cli.main, ["build", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(x.startswith("error: ") for x in err)
    assert "not a reference index" in err[0] and "missing.yaml does not exist" in err[1]
    assert not (tmp_path / "i").exists()


def test_mixture_of_experts_refused_with_the_reason_and_what_to_run(refs, tmp_path):
    """An MoE reference is recorded as failed with one line naming the experts grid; an MoE
    candidate is listed as "cannot rule out" against every reference, with the same reason."""
    from family_models import family_config, family_model
    moe = tmp_path / "moe"
    family_model(family_config("mixtral", d=32, h=64, L=2, V=96), seed=1).save_pretrained(moe)
    (o,) = build([(str(moe), "moe")], tmp_path / "index", Settings(rows=64), workers=0)
    assert o["status"] == "failed" and "\n" not in o["error"]
    for text in (o["error"], *(x.reason for x in screen(str(moe), refs["index"]))):
        assert "mixture-of-experts blocks" in text and "reordering of the experts" in text
        assert "--stat cos" in text
    assert all(x.verdict == "cannot rule out" for x in screen(str(moe), refs["index"]))
