"""launch.py / tracing.launch on this machine: model lists, sizing, dry run, local runs, resume."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import save_trio, tiny_config, tiny_model
from tracing import launch
from tracing.arch import arch_from_config
from tracing.errors import TracingError
from tracing.options import Options
from tracing.results import load_record, load_results

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch.py"


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def run_launch(*args, env=None, timeout=300):
    e = dict(os.environ)
    e.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    e.update(env or {})
    return subprocess.run([sys.executable, str(LAUNCH), *map(str, args)], capture_output=True, text=True,
                          env=e, cwd=ROOT, timeout=timeout)


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def no_slurm_env(tmp_path: Path) -> dict:
    """An environment in which no Slurm controller can answer (a config pointing at a closed port)."""
    conf = tmp_path / "slurm-none.conf"
    conf.write_text("ClusterName=none\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\n")
    return {"SLURM_CONF": str(conf)}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Three tiny saved Llama models: a base, a fine-tune of it, and an independent one."""
    root = tmp_path_factory.mktemp("models")
    return save_trio(root)


def arch(d, h, L, V, heads=32, kv=None):
    return arch_from_config({"model_type": "llama", "hidden_size": d, "intermediate_size": h, "num_hidden_layers": L,
                             "vocab_size": V, "num_attention_heads": heads, "num_key_value_heads": kv or heads,
                             "tie_word_embeddings": False})


def info(d, h, L, V, **kw):
    return launch.ModelInfo("x", arch(d, h, L, V, **kw), 2, "test")


LLAMA_7B = info(4096, 11008, 32, 32000)
LLAMA_13B = info(5120, 13824, 40, 32000, heads=40)
LLAMA2_70B = info(8192, 28672, 80, 32000, heads=64, kv=8)
LLAMA3_70B = info(8192, 28672, 80, 128256, heads=64, kv=8)
TINYLLAMA = info(2048, 5632, 22, 32000, heads=32, kv=4)
SIZES = [TINYLLAMA, LLAMA_7B, LLAMA_13B, LLAMA2_70B]  # one vocabulary, growing blocks


# ------------------------------------------------------------------------------------------
# model lists
# ------------------------------------------------------------------------------------------
def test_plain_list_gives_every_unordered_pair():
    ml = launch.parse_model_list(["a/x", "b/y", "c/z"])
    assert [(p.base, p.ft) for p in ml.pairs] == [("a/x", "b/y"), ("a/x", "c/z"), ("b/y", "c/z")]
    assert ml.form == "all pairs" and ml.stat is None


def test_models_key_with_stat_and_options():
    ml = launch.parse_model_list({"models": ["demo:base-a", "demo:base-b"], "stat": "cos,match",
                                   "options": {"align": True}, "resources": {"mem_gb": 12, "partition": "gpu"}})
    assert len(ml.pairs) == 1 and ml.stat == ["cos", "match"]
    assert ml.options == {"align": True} and ml.resources == {"mem_gb": 12, "partition": "gpu"}


def test_base_ft_cross_product_skips_self_pairs():
    ml = launch.parse_model_list({"base_models": ["a/1", "a/2"], "ft_models": ["b/1", "a/1", "b/2"]})
    got = [(p.base, p.ft) for p in ml.pairs]
    assert got == [("a/1", "b/1"), ("a/1", "b/2"), ("a/2", "b/1"), ("a/2", "a/1"), ("a/2", "b/2")]
    assert any("itself" in n for n in ml.notes)


def test_listed_pairs_keep_order_and_names():
    ml = launch.parse_model_list({"models_1": ["a/1", "a/2"], "models_2": ["b/1", "b/2"],
                                   "names_1": ["A1", "A2"], "names_2": ["B1", "B2"]})
    assert [(p.base, p.ft, p.base_name, p.ft_name) for p in ml.pairs] == [
        ("a/1", "b/1", "A1", "B1"), ("a/2", "b/2", "A2", "B2")]
    assert ml.pairs[0].label == "A1 vs B1"


@pytest.mark.parametrize("data, message", [
    ({"models_1": ["a/1", "a/2"], "models_2": ["b/1"]}, "same length"),
    ({"models_1": ["a/1"], "models_2": ["b/1"], "names_1": ["x", "y"]}, "one name per model"),
    ({"base_models": ["a/1"]}, "cannot tell which pairs"),
    ({"foo": ["a/1"]}, "unknown key"),
    (["a/1"], "at least two models"),
    (["a/1", "a/1", "b/2"], "more than once"),
    (["a/1", 3], "not a model id"),
    ("just text", "not a model list"),
    (None, "is empty"),
    ({"models": ["a/1", "b/1"], "resources": {"mem_gb": -3}}, "positive"),
    ({"models": ["a/1", "b/1"], "resources": {"ram": 3}}, "unknown resource"),
])
def test_bad_model_lists_are_one_line_errors(data, message):
    with pytest.raises(TracingError, match=message) as e:
        launch.parse_model_list(data, source="x.yaml")
    assert "\n" not in str(e.value)


def test_read_model_list_file_errors(tmp_path):
    with pytest.raises(TracingError, match="does not exist"):
        launch.read_model_list(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [a/1, b/2\n  - c\n")
    with pytest.raises(TracingError, match=r"not valid YAML at line \d+"):
        launch.read_model_list(bad)


def test_cli_errors_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models_1: [a/1, a/2]\nmodels_2: [b/1]\n")
    for cfg in (bad, tmp_path / "missing.yaml"):
        r = run_launch(cfg, "--dry-run", "--cluster", "local")
        assert r.returncode == 2, r.stderr
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    r = run_launch(write_yaml(tmp_path / "ok.yaml", ["a/1", "b/1"]), "--dry-run", "--cluster", "local",
                   "--stat", "nonsense")
    assert r.returncode == 2 and "unknown statistic" in r.stderr


def test_options_precedence(tmp_path):
    ml = launch.parse_model_list({"models": ["a/1", "b/1"], "stat": "cos,match", "options": {"num_samples": 5}})
    o = launch.build_options(ml, {})
    assert o.stat == ["cos", "match"] and o.num_samples == 5
    o = launch.build_options(ml, {"stat": "l2", "num_samples": 7})
    assert o.stat == ["l2"] and o.num_samples == 7
    o = launch.build_options(launch.parse_model_list(["a/1", "b/1"]), {})
    assert o.stat == ["cos"]


def test_result_paths_are_deterministic_per_pair_stat_and_options(tmp_path):
    p = launch.Pair("meta-llama/Llama-2-7b-hf", "lmsys/vicuna-7b-v1.5@main")
    o = Options(stat=["cos", "match"])
    a = launch.result_path(tmp_path, p, "cos", o)
    assert a == launch.result_path(tmp_path, p, "cos", Options(stat=["cos"]))  # other stats do not matter
    assert a.parent.name == "meta-llama--Llama-2-7b-hf__lmsys--vicuna-7b-v1.5@main"
    assert a.name == f"cos-{Options(stat=['cos']).key_for('cos')}.p"
    assert launch.result_path(tmp_path, p, "cos", Options(stat=["cos"], align=True)) != a
    # two local folders with the same name do not collide
    assert launch.model_slug("/x/model") != launch.model_slug("/y/model")
    assert launch.model_slug("/x/model") == launch.model_slug("/x/model/")


# ------------------------------------------------------------------------------------------
# sizing
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stat", ["cos", "emb", "l2", "csh", "match", "jsd", "mode"])
def test_sizing_is_monotone_in_model_size(stat):
    o = Options(stat=[stat])
    res = [launch.size_pair(m, m, [stat], o, slurm=True) for m in SIZES]
    mems = [r.mem_gb for r in res]
    times = [r.timeout_min for r in res]
    assert mems == sorted(mems) and times == sorted(times), (mems, times)
    assert mems[-1] > mems[0]


def test_sizing_is_sane_at_7b_and_70b():
    cos = Options(stat=["cos"])
    r7 = launch.size_pair(LLAMA_7B, LLAMA_7B, ["cos"], cos, slurm=True)
    assert 4 <= r7.mem_gb <= 16 and r7.gpus == 0 and 30 <= r7.timeout_min <= 240
    for big in (LLAMA2_70B, LLAMA3_70B):
        r70 = launch.size_pair(big, big, ["cos"], cos, slurm=True)
        assert 8 <= r70.mem_gb < 32, r70  # streamed: never the 280 GB of two bf16 70B models
        assert r70.gpus == 0 and r70.solves == 1
        assert r7.timeout_min < r70.timeout_min <= launch.TIME_CAP_MIN
        assert r70.solve_budget_gb is not None and r70.solve_budget_gb < 16
    # forward-pass statistics ask for a GPU on a Slurm cluster that has GPUs, not locally
    m = Options(stat=["match"])
    assert launch.size_pair(LLAMA3_70B, LLAMA3_70B, ["match"], m, slurm=True, cluster_has_gpus=True).gpus == 1
    assert launch.size_pair(LLAMA3_70B, LLAMA3_70B, ["match"], m, slurm=True, cluster_has_gpus=False).gpus == 0
    assert launch.size_pair(LLAMA_7B, LLAMA_7B, ["match"], m, slurm=False).gpus == 0
    assert launch.size_pair(LLAMA_7B, LLAMA_7B, ["cos"], cos, slurm=True, data_gpus=2).gpus == 0
    assert launch.size_pair(LLAMA_7B, LLAMA_7B, ["match"], m, slurm=True, data_gpus=2).gpus == 2
    m70 = launch.size_pair(LLAMA3_70B, LLAMA3_70B, ["match"], m, slurm=True)
    assert m70.mem_gb < 128
    # eval and mode curves need more than the plain statistic
    assert launch.size_pair(LLAMA_7B, LLAMA_7B, ["mode"], Options(stat=["mode"], alphas=[0, .25, .5, .75, 1]),
                             slurm=True).mem_gb >= launch.size_pair(LLAMA_7B, LLAMA_7B, ["mode"],
                                                                     Options(stat=["mode"]), slurm=True).mem_gb


def test_sizing_overrides_and_unknown_configs():
    o = Options(stat=["cos"])
    r = launch.size_pair(LLAMA_7B, LLAMA_7B, ["cos"], o, slurm=True,
                          overrides={"mem_gb": 99, "timeout_min": 7, "gpus": 1, "cpus": 3, "partition": "big"})
    assert (r.mem_gb, r.timeout_min, r.gpus, r.cpus, r.partition) == (99, 7, 1, 3, "big")
    assumed = launch.size_pair(None, None, ["cos"], o, slurm=True)
    assert assumed == launch.size_pair(LLAMA_7B, LLAMA_7B, ["cos"], o, slurm=True)


# ------------------------------------------------------------------------------------------
# where to run
# ------------------------------------------------------------------------------------------
def test_auto_picks_local_without_slurm_commands(tmp_path):
    choice = launch.choose_cluster("auto", env={"PATH": str(tmp_path)})
    assert choice.kind == "local" and "no Slurm commands" in choice.reason
    with pytest.raises(TracingError, match="--cluster local"):
        launch.choose_cluster("slurm", env={"PATH": str(tmp_path)})


def test_auto_picks_local_when_no_controller_answers(tmp_path):
    env = {**os.environ, **no_slurm_env(tmp_path)}
    choice = launch.choose_cluster("auto", env=env)
    assert choice.kind == "local"
    assert "no Slurm controller answered" in choice.reason or "no Slurm commands" in choice.reason
    # a SLURM_CONF that does not exist is reported as such (scontrol would retry for a minute)
    missing = {**os.environ, "SLURM_CONF": str(tmp_path / "missing.conf")}
    if shutil.which("scontrol") or shutil.which("sinfo"):
        assert "does not exist" in launch.choose_cluster("auto", env=missing).reason


# ------------------------------------------------------------------------------------------
# dry run
# ------------------------------------------------------------------------------------------
def test_dry_run_prints_every_pair_without_network(tmp_path, tiny_models):
    cfg = write_yaml(tmp_path / "list.yaml", {"models": [tiny_models["base"], tiny_models["ft"],
                                                         "nobody-org/not-cached-model"], "stat": "cos,match"})
    env = {**no_slurm_env(tmp_path), "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    r = run_launch(cfg, "--dry-run", "--out", tmp_path / "out", env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "cluster: local" in out
    assert "pair" in out and "mem_gb" in out and "gpus" in out and "cpus" in out and "time" in out
    lines = [line for line in out.splitlines() if " vs " in line]
    assert len(lines) == 3, out
    local = [line for line in lines if "not-cached" not in line]
    assert all("todo" in line and "cos-" in line and "match-" in line for line in local), out
    assert all("?" not in line.split("cos")[0] for line in local)  # params known for the local pair
    assert "config of nobody-org/not-cached-model is not in the local Hugging Face cache" in out
    assert "hf download nobody-org/not-cached-model config.json" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_dry_run_reports_broken_paths_and_done_pairs(tmp_path, tiny_models):
    cfg = write_yaml(tmp_path / "list.yaml", {"models_1": [tiny_models["base"], tiny_models["base"]],
                                              "models_2": [tiny_models["ft"], str(tmp_path / "missing")]})
    r = run_launch(cfg, "--dry-run", "--cluster", "local", "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr  # the plan has an error: a real run would record a failed pair
    assert "error" in r.stdout and "does not exist" in r.stdout


def test_an_option_no_pair_can_take_stops_the_launch_before_any_job(tmp_path, tiny_models):
    """--rows larger than every pair's MLP width: one line and exit 2, as main.py does, before any job
    starts and without writing anything; the dry run says the same and exits 2."""
    cfg = write_yaml(tmp_path / "list.yaml", [tiny_models["base"], tiny_models["ft"], tiny_models["indep"]])
    out = tmp_path / "out"
    r = run_launch(cfg, "--stat", "cos", "--rows", "9999", "--out", out, env=no_slurm_env(tmp_path))
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.stdout, r.stderr)
    assert "--rows 9999 is larger than the MLP width h=128" in lines[0] and "every pair" in lines[0]
    assert not out.exists()
    r = run_launch(cfg, "--stat", "cos", "--rows", "9999", "--out", out, "--dry-run", env=no_slurm_env(tmp_path))
    assert r.returncode == 2 and "--rows 9999 is larger" in r.stdout + r.stderr
    assert not out.exists()


def test_dry_run_exit_code_says_whether_the_plan_has_errors(tmp_path, tiny_models):
    """0 when every pair can run, 1 when some pair cannot (a real run would record it as failed)."""
    good = write_yaml(tmp_path / "good.yaml", [tiny_models["base"], tiny_models["ft"]])
    r = run_launch(good, "--dry-run", "--cluster", "local", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stdout + r.stderr
    narrow = tmp_path / "narrow"
    tiny_model(tiny_config(d=32), seed=4).save_pretrained(narrow)
    mixed = write_yaml(tmp_path / "mixed.yaml", {"models_1": [tiny_models["base"], tiny_models["base"]],
                                                 "models_2": [tiny_models["ft"], str(narrow)]})
    r = run_launch(mixed, "--dry-run", "--cluster", "local", "--out", tmp_path / "out")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error: " in r.stdout and "d=64 and d=32" in r.stdout
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# local runs
# ------------------------------------------------------------------------------------------
def test_local_run_bounded_then_rerun_skips(tmp_path, tiny_models):
    cfg = write_yaml(tmp_path / "list.yaml", [tiny_models["base"], tiny_models["ft"], tiny_models["indep"]])
    out = tmp_path / "out"
    r = run_launch(cfg, "--stat", "cos", "--max_workers", "2", "--out", out, "--no-report",
                   env=no_slurm_env(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cluster: local" in r.stdout and "at most 2 at a time" in r.stdout
    pickles = sorted(out.rglob("cos-*.p"))
    assert len(pickles) == 3
    df = load_results(out)
    assert len(df) == 3 and set(df["status"]) == {"ok"} and set(df["stat"]) == {"cos"}
    by_pair = {(Path(b).name, Path(f).name): lp for b, f, lp in zip(df["base"], df["ft"], df["log10_pvalue"])}
    assert by_pair[("base", "ft")] < -5  # the fine-tune is found
    assert by_pair[("base", "indep")] > -2  # the independent model is not
    # never more than --max_workers pairs at once
    log = json.loads((out / "launch.json").read_text())
    spans = [(p["start"], p["end"]) for p in log["pairs"]]
    assert all(s and e for s, e in spans)
    most = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert 1 <= most <= 2
    assert "done 3, failed 0, skipped 0" in r.stdout

    mtimes = {p: p.stat().st_mtime_ns for p in pickles}
    r2 = run_launch(cfg, "--stat", "cos", "--max_workers", "2", "--out", out, "--no-report",
                    env=no_slurm_env(tmp_path))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "nothing to do" in r2.stdout and "done 0, failed 0, skipped 3" in r2.stdout
    assert {p: p.stat().st_mtime_ns for p in pickles} == mtimes


def test_a_rerun_with_fewer_statistics_leaves_no_stale_holm_family(tmp_path, tiny_models):
    """cos and emb on one pair, then cos only on three: each family file is its grid in the folder now."""
    out = tmp_path / "out"
    for models, stats in (([tiny_models["base"], tiny_models["ft"]], ["cos", "emb"]),
                          ([tiny_models["base"], tiny_models["ft"], tiny_models["indep"]], ["cos"])):
        cfg = write_yaml(tmp_path / "list.yaml", models)
        r = run_launch(cfg, "--stat", ",".join(stats), "--out", out, "--no-report", env=no_slurm_env(tmp_path))
        assert r.returncode == 0, r.stdout + r.stderr
    families = {p.name: json.loads(p.read_text()) for p in out.glob("holm-family*.json")}
    assert sorted(families) == ["holm-family-cos.json", "holm-family-emb.json"]
    assert [len(families[f"holm-family-{s}.json"]["members"]) for s in ("cos", "emb")] == [3, 1]
    assert "Holm family of the cos grid (3 pairs)" in r.stdout


def test_broken_pairs_fail_alone_and_rerun_retries(tmp_path, tiny_models):
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((Path(tiny_models["base"]) / "config.json").read_text())
    missing = tmp_path / "missing_model"
    cfg = write_yaml(tmp_path / "list.yaml", {
        "models_1": [tiny_models["base"], tiny_models["base"], tiny_models["base"]],
        "models_2": [tiny_models["ft"], str(missing), str(no_weights)],
        "names_1": ["base", "base", "base"], "names_2": ["ft", "missing", "no-weights"]})
    out = tmp_path / "out"
    r = run_launch(cfg, "--stat", "cos", "--out", out, "--no-report", "--cluster", "local")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "done 1, failed 2, skipped 0" in r.stdout
    df = load_results(out).set_index("ft")
    assert df.loc[tiny_models["ft"], "status"] == "ok"
    assert df.loc[str(missing), "status"] == "failed" and "does not exist" in df.loc[str(missing), "error"]
    assert df.loc[str(no_weights), "status"] == "failed" and "no weights" in df.loc[str(no_weights), "error"]
    rec = load_record(next((out / launch.pair_dir(out, launch.Pair(tiny_models["base"], str(missing))).name)
                           .glob("cos-*.p")))
    assert rec["status"] == "failed" and rec["error"] and rec["stat"] == "cos"

    # fix one model; a rerun retries only the failed pairs
    (no_weights / "config.json").unlink()
    no_weights.rmdir()
    tiny_model(tiny_config(), seed=3).save_pretrained(no_weights)
    r2 = run_launch(cfg, "--stat", "cos", "--out", out, "--no-report", "--cluster", "local")
    assert r2.returncode == 1
    assert "done 1, failed 1, skipped 1" in r2.stdout
    df = load_results(out).set_index("ft")
    assert df.loc[str(no_weights), "status"] == "ok" and df.loc[str(missing), "status"] == "failed"


def test_plan_statuses(tmp_path, tiny_models):
    from tracing.results import failure_record, save_record
    o = Options(stat=["cos", "l2"])
    pairs = [launch.Pair(tiny_models["base"], tiny_models["ft"]), launch.Pair(tiny_models["base"], tiny_models["indep"])]
    tasks = launch.make_tasks(pairs, o, tmp_path)
    assert [t.status for t in tasks] == ["todo", "todo"] and tasks[0].todo == ["cos", "l2"]
    save_record(failure_record(pairs[0].base, pairs[0].ft, "cos", {}, RuntimeError("x"), 1.0), tasks[0].paths["cos"])
    tasks = launch.make_tasks(pairs, o, tmp_path)
    assert tasks[0].status == "failed-before" and tasks[0].todo == ["cos", "l2"]


# Result keys written by earlier versions (the level was part of the key then): never change them.
KEYS_AT_001 = {"cos": "9ccfca3407", "match": "a0d483bdba", "l2": "e866fdcf60"}
KEYS_AT_005 = {"cos": "c9d2bc6654", "match": "ec42e258a7", "l2": "59d9eabb74"}


def test_the_level_is_not_part_of_the_result_key():
    """--significance changes only the verdict: every level finds the result of the default level,
    whose key is the one earlier versions wrote."""
    for stat, key in KEYS_AT_001.items():
        assert Options(stat=[stat]).key_for(stat) == key
        assert Options(stat=[stat], significance=0.05).key_for(stat) == key
        assert Options(stat=[stat], significance=1e-6).key_for(stat) == key


def test_a_result_written_at_another_level_by_an_earlier_version_is_found(tmp_path, tiny_models):
    from tracing.results import save_record
    pair = launch.Pair(tiny_models["base"], tiny_models["ft"])
    old = launch.pair_dir(tmp_path, pair) / f"cos-{KEYS_AT_005['cos']}.p"
    save_record({"stat": "cos", "status": "ok", "log10_pvalue": -3.0, "args": {"significance": 0.05}}, old)
    (task,) = launch.make_tasks([pair], Options(stat=["cos"], significance=0.05), tmp_path)
    assert task.status == "done" and task.paths["cos"] == old
    (task,) = launch.make_tasks([pair], Options(stat=["cos"]), tmp_path)  # another level: the new key
    assert task.status == "todo" and task.paths["cos"].name == f"cos-{KEYS_AT_001['cos']}.p"


def readme_names_every_file_in(out: Path) -> None:
    """The Quick start's list of what the first command writes is complete."""
    import re
    written = {p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert {"report.md", "summary.csv", "launch.json"} <= written
    readme = (ROOT / "README.md").read_text()
    listed = readme[readme.index("The first command writes"):]
    listed = listed[:listed.index("\n\n")]
    named = set(re.findall(r"`([^`]+)`", listed))
    assert written <= named, sorted(written - named)


def test_a_rerun_at_another_level_reuses_every_result(tmp_path, tiny_models):
    """The verdicts of the rerun come from the stored p-values at the new level. (The first run, three
    models and a weight statistic, writes the report with its lineage section: the README's Quick
    start names every file it writes.)"""
    cfg = write_yaml(tmp_path / "list.yaml", [tiny_models["base"], tiny_models["ft"], tiny_models["indep"]])
    out = tmp_path / "out"
    r = run_launch(cfg, "--stat", "cos", "--out", out, "--cluster", "local")
    assert r.returncode == 0, r.stdout + r.stderr
    readme_names_every_file_in(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("cos-*.p")}
    r = run_launch(cfg, "--stat", "cos", "--out", out, "--cluster", "local", "--significance", "0.5")
    assert r.returncode == 0 and "done 0, failed 0, skipped 3" in r.stdout, r.stdout + r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("cos-*.p")} == mtimes
    import pandas as pd
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["significance"]) == {0.5}


def test_chunking_and_grouping():
    assert [len(c) for c in launch.chunked(list(range(2500)), 1001)] == [1001, 1001, 498]
    r1 = launch.Resources(8, 4, 0, 30)
    r2 = launch.Resources(16, 4, 1, 60)
    ts = [launch.Task(launch.Pair(f"a/{i}", "b/x"), ["cos"], {"cos": Path(f"/x/{i}.p")}, {},
                       resources=r1 if i % 2 else r2) for i in range(5)]
    groups = launch.group_by_resources(ts)
    assert [len(g) for g in groups.values()] == [3, 2]


def test_report_problem_is_a_printed_warning(tmp_path, capsys):
    from tracing.launch.console import say
    from tracing.launch.run import write_report_for

    write_report_for(tmp_path / "missing", say)  # the report raises; the run must not
    err = capsys.readouterr().err
    assert err.startswith("warning: could not write the report (TracingError: results folder") and "missing" in err


@pytest.mark.parametrize("script", ["launch.py", "generate.py", "main.py"])
def test_every_command_prints_its_help(script):
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, script, "--help"], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage:" in r.stdout and not r.stderr, r.stderr
    if script != "generate.py":
        assert "--block_size" in r.stdout and "--seed" in r.stdout


# ------------------------------------------------------------------------------------------
# quantized files are models like any other: the launcher sizes them through their backend
# ------------------------------------------------------------------------------------------
def _fake_hub_cache(tmp_path: Path, repo: str, files) -> Path:
    """A Hugging Face cache holding ``files`` in one snapshot of ``repo`` (no network)."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "hf" / "hub"
    folder = root / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / sha
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(sha)
    for f in files:
        shutil.copy(f, snap)
    return root


def test_launcher_sizes_gguf_files_and_gptq_folders_like_other_models(tmp_path, tiny_models, monkeypatch):
    from quant_writers import write_gguf, write_gptq
    gguf_file = write_gguf(tiny_models["ft"], tmp_path / "q" / "ft.Q8_0.gguf", "Q8_0", with_tokenizer=False)
    gptq = write_gptq(tiny_models["indep"], tmp_path / "gptq-indep")
    folder = launch.model_info(tiny_models["base"])
    for spec in (str(gguf_file), f"{gguf_file.parent}:{gguf_file.name}", str(gptq)):
        got = launch.model_info(spec)
        assert got.arch == folder.arch and got.params == folder.params, spec
    hub = _fake_hub_cache(tmp_path, "org/tiny-GGUF", [gguf_file])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert launch.model_info(f"org/tiny-GGUF:{gguf_file.name}").arch == folder.arch
    with pytest.raises(launch.ConfigUnavailable) as e:
        launch.model_info("org/absent-GGUF:model-Q4_K_M.gguf")
    assert "hf download org/absent-GGUF model-Q4_K_M.gguf" in str(e.value) and "config.json" not in str(e.value)

    cfg = write_yaml(tmp_path / "mixed.yaml", {"models": [str(gguf_file), str(gptq), tiny_models["base"]],
                                               "stat": "cos"})
    r = run_launch(cfg, "--dry-run", "--cluster", "local", "--out", tmp_path / "out", env=no_slurm_env(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if " vs " in line]
    assert len(lines) == 3 and all("todo" in line and "?" not in line.split("cos")[0] for line in lines), r.stdout
    assert "does not exist" not in r.stdout + r.stderr

    # and it runs on this machine; the report and the lineage read its results
    out = tmp_path / "out"
    r = run_launch(cfg, "--cluster", "local", "--max_workers", "1", "--out", out, env=no_slurm_env(tmp_path))
    assert r.returncode == 0 and "done 3, failed 0" in r.stdout, r.stdout + r.stderr
    df = load_results(out)
    assert len(df) == 3 and set(df["status"]) == {"ok"}
    lp = {(Path(b).name, Path(f).name): v for b, f, v in zip(df["base"], df["ft"], df["log10_pvalue"])}
    assert lp[(gguf_file.name, "gptq-indep")] > -2 and lp[(gguf_file.name, "base")] < -5, lp  # ft of base: found
    assert "cos" in (out / "report.md").read_text()
    r = subprocess.run([sys.executable, "-m", "tracing.lineage", str(out), "--no-hub"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(json.loads((out / "lineage.json").read_text())["families"]) == 2


def test_a_corrupt_cached_config_is_an_error_not_a_missing_one(tmp_path, tiny_models, monkeypatch):
    cfg = tmp_path / "config.json"
    cfg.write_text("{not json")
    hub = _fake_hub_cache(tmp_path, "org/broken", [cfg])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TracingError, match="not valid JSON") as e:
        launch.model_info("org/broken")
    assert not isinstance(e.value, launch.ConfigUnavailable)
    (tmp_path / "README.md").write_text("a model card only")
    _fake_hub_cache(tmp_path / "other", "org/card-only", [tmp_path / "README.md"])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "other" / "hf" / "hub"))
    with pytest.raises(launch.ConfigUnavailable, match="hf download org/card-only config.json"):
        launch.model_info("org/card-only")
