"""The owners of the record, the results folder's layout, known lineage and provenance: their
contracts, on plain files (no model is loaded)."""
import dataclasses
import json
import pickle

import pytest

from tracing import provenance
from tracing.errors import TracingError
from tracing.launch.model_list import Pair
from tracing.lineage.known import KnownLineage, ancestors, demo_lineage, lineage_for, parse_lineage
from tracing.options import Options
from tracing.results import Result, load_results, record_rows, save_record
from tracing.results_folder import (KNOWN_LINEAGE, RUN_LOG, ResultName, pair_dir, pair_of, parse_result_path,
                                    planned_results, read_run_log, result_path)


def _record(**kw):
    rec = {"args": {"significance": 0.01, "base_model_id": "org/a", "ft_model_id": "org/b", "stat": "cos"},
           "stat": "cos", "base_model_id": "org/a", "ft_model_id": "org/b", "statistic": 4.0, "pvalue": 1e-30,
           "log10_pvalue": -30.0, "pvalue_kind": "exact", "verdict": "dependent", "at_floor": False,
           "per_layer": [{"layer": 0, "statistic": 0.9, "log10_pvalue": -15.0}], "extra": {}, "notes": ["n"],
           "aligned": None, "status": "ok", "time": 1.0, "commit": "c"}
    rec.update(kw)
    return rec


# ------------------------------------------------------------------------------------------
# Result and the row vocabulary
# ------------------------------------------------------------------------------------------
def test_result_is_a_frozen_dataclass_with_declared_fields():
    aligned = {"statistic": 1.0, "pvalue": 1e-40, "log10_pvalue": -40.0, "verdict": "dependent", "at_floor": True,
               "per_layer": [{"layer": 0, "statistic": 1.0}], "extra": {}}
    res = Result(_record(aligned=aligned))
    assert dataclasses.is_dataclass(res)
    declared = {f.name for f in dataclasses.fields(res)}
    assert {"stat", "statistic", "pvalue", "log10_pvalue", "verdict", "at_floor", "per_layer", "aligned",
            "record"} <= declared
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.pvalue = 0.5
    assert (res.stat, res.log10_pvalue, res.verdict, res.notes) == ("cos", -30.0, "dependent", ["n"])
    assert res["commit"] == "c" and "commit" in res and res.get("missing", 7) == 7
    assert isinstance(res.aligned, Result) and res.aligned.at_floor and res.aligned.aligned is None
    with pytest.raises(AttributeError):
        res.commit  # noqa: B018 - a record key that is not a declared field is read by res["commit"]
    assert repr(res) == "Result(stat='cos', statistic=4, pvalue=1e-30, verdict='dependent', aligned=...)"


def test_rows_read_the_floor_the_record_stores_and_compute_it_for_old_records():
    stored = record_rows(_record(at_floor=True))  # the record's own value wins
    assert [r["at_floor"] for r in stored] == [True]
    old = _record(per_layer=[{"layer": i, "statistic": 1.0} for i in range(3)])
    del old["at_floor"]  # written before the record stored it: the same rule computes it
    assert record_rows(old)[0]["at_floor"] is True
    old["per_layer"][1]["statistic"] = 0.99
    assert record_rows(old)[0]["at_floor"] is False
    failed = _record(status="failed", log10_pvalue=None, statistic=None, per_layer=[])
    del failed["at_floor"]
    assert record_rows(failed)[0]["at_floor"] is False


def test_results_are_read_back_bit_for_bit(tmp_path):
    rec = _record()
    path = save_record(rec, tmp_path / "org--a__org--b" / "cos-abc.p")
    assert pickle.loads(path.read_bytes()) == rec
    df = load_results(tmp_path)
    assert list(df["file"]) == ["org--a__org--b/cos-abc.p"] and list(df["log10_pvalue"]) == [-30.0]


# ------------------------------------------------------------------------------------------
# The results folder's layout
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base, ft", [("org/a", "org/b@v2"), ("demo:base-a", "demo:a-docs"),
                                      ("org/a", "org/a-Q4_K_M.gguf")])
def test_result_path_name_round_trip(tmp_path, base, ft):
    options = Options(stat=["cos", "match"])
    pair = Pair(base, ft)
    for stat in ("cos", "match"):
        path = result_path(tmp_path, pair, stat, options)
        assert path.parent == pair_dir(tmp_path, pair)
        name = parse_result_path(path)
        assert (name.stat, name.key) == (stat, options.key_for(stat))
        assert pair_of(path, {base, ft, "org/other"}) == (base, ft, stat)
        assert pair_of(path, {base}) is None  # the folder must name two models of the run


def test_local_folders_round_trip_by_their_hashed_names(tmp_path):
    a, b = tmp_path / "models" / "x", tmp_path / "other" / "x"  # same last component, different folders
    pair = Pair(str(a), str(b))
    path = result_path(tmp_path / "out", pair, "cos", Options(stat=["cos"]))
    assert pair_of(path, {str(a), str(b)}) == (str(a), str(b), "cos")


@pytest.mark.parametrize("name", ["cos.p", "a__b/cos-k.json", "a_b/cos-k.p", "a__b__c/cos-k.p", "__b/cos-k.p"])
def test_names_not_written_by_the_layout_are_not_parsed(tmp_path, name):
    assert parse_result_path(tmp_path / name) is None


def test_a_result_named_by_hand_names_its_statistic(tmp_path):
    assert parse_result_path(tmp_path / "a__b" / "cos.p") == ResultName("a", "b", "cos", None)
    assert parse_result_path(tmp_path / "a__b" / "match-k.pkl") == ResultName("a", "b", "match", "k")


def test_planned_results_follow_a_moved_folder(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    pair = Pair("org/a", "org/b")
    written = result_path(old, pair, "cos", Options(stat=["cos"]))
    missing = result_path(old, pair, "match", Options(stat=["match"]))
    log = {"pairs": [{"base": "org/a", "ft": "org/b", "dir": written.parent.name, "stats": ["cos", "match"],
                      "results": [str(written), str(missing)], "status": "done", "error": None}]}
    (new / written.parent.name).mkdir(parents=True)
    (new / written.parent.name / written.name).write_bytes(b"x")
    (new / RUN_LOG).write_text(json.dumps(log))
    assert read_run_log(new) == log
    cos, match = planned_results(new)
    assert cos.exists() and cos.path == new / written.parent.name / written.name
    assert cos.names(written) and cos.names(cos.path) and not cos.names(missing)
    assert not match.exists() and (match.base, match.ft, match.stat, match.status) == ("org/a", "org/b", "match",
                                                                                          "done")
    (new / RUN_LOG).write_text("[1, 2]")  # not a launch log: nothing planned
    assert read_run_log(new) == {} and planned_results(new) == []


# ------------------------------------------------------------------------------------------
# Known lineage
# ------------------------------------------------------------------------------------------
def test_every_form_of_known_lineage_is_one_type():
    tree = [{"r": [{"c": ["g"]}, "d"]}, "lonely"]
    forms = [tree, {"r": None, "c": "r", "g": "c", "d": "r", "lonely": None},
             {"models": {m: {"parent": p} for m, p in {"r": None, "c": "r", "g": "c", "d": "r",
                                                          "lonely": None}.items()}}]
    for data in forms:
        lin = parse_lineage(data, "here")
        assert isinstance(lin, KnownLineage) and lin.source == "here"
        assert dict(lin) == {"r": None, "c": "r", "g": "c", "d": "r", "lonely": None}
        assert lin.roots["g"] == "r" and lin.depth["g"] == 2 and lin.depth["lonely"] == 0
        assert lin.dependent("g", "./models/d") is True and lin.dependent("g", "lonely") is False
        assert lin.dependent("g", "unknown") is None
        assert list(ancestors(lin, "g")) == ["c", "r"]
    assert parse_lineage({"models": {"x": {"parent": None, "root": "y"}}}).root("x") == "y"  # a stated root
    with pytest.raises(TracingError, match="cycle through"):
        parse_lineage({"a": "b", "b": "a"})


def test_one_rule_picks_the_lineage_of_a_folder(tmp_path):
    demo = ["demo:base-a", "demo:a-docs"]
    assert lineage_for(None, tmp_path, demo).source == "the demo family"
    assert lineage_for(None, tmp_path, ["org/a", "demo:base-a"]) is None
    (tmp_path / KNOWN_LINEAGE).write_text(json.dumps({"demo:a-docs": None, "demo:base-a": "demo:a-docs"}))
    known = lineage_for(None, tmp_path, demo)  # the folder's own lineage wins over the demo family's
    assert known.source == KNOWN_LINEAGE and known.root("demo:base-a") == "demo:a-docs"
    given = lineage_for({"demo:base-a": None, "demo:a-docs": "demo:base-a"}, tmp_path, demo)  # the given one wins
    assert given.source == "the given lineage" and given.root("demo:a-docs") == "demo:base-a"
    f = tmp_path / "lin.json"
    f.write_text(json.dumps({"a": None}))
    assert lineage_for(f, tmp_path, demo).source == str(f)
    assert demo_lineage().root("demo:a-docs") == "demo:base-a"


# ------------------------------------------------------------------------------------------
# Provenance: one job-id rule
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"SLURM_JOB_ID": "7"}, "7"),
    ({"SLURM_JOB_ID": "8", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3"}, "5_3"),
    ({"SLURM_JOB_ID": "8", "SLURM_ARRAY_JOB_ID": "5"}, "8"),  # no task id: the job itself
    ({"SLURM_JOB_ID": "8", "SLURM_ARRAY_TASK_ID": "3"}, "8"),  # a task id without its array is no array
])
def test_one_job_id_rule(monkeypatch, env, expected):
    for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert provenance.job_id() == expected
    assert provenance.provenance()["job_id"] == expected
    from tracing.index.build import Outcome
    from tracing.launch import job
    assert Outcome("m", None, "built").job_id == expected  # index builds and launched pairs: the same rule
    assert job.job_id is provenance.job_id


# ------------------------------------------------------------------------------------------
# IO: one writability check for the launcher's and the report's --out
# ------------------------------------------------------------------------------------------
def test_one_out_folder_check(tmp_path):
    from tracing.fileio import check_out_folder
    from tracing.report.write import check_out
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(TracingError, match="is a file, not a folder; give a folder for the results"):
        check_out_folder(blocker)
    with pytest.raises(TracingError, match="is a file, not a folder; give a folder for the report"):
        check_out(blocker)
    with pytest.raises(TracingError, match="cannot be created because"):
        check_out(blocker / "sub")
    assert blocker.read_text() == "x" and check_out_folder(tmp_path / "new") == tmp_path / "new"
    assert not (tmp_path / "new").exists()
