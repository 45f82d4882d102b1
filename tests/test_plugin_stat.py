"""A statistic defined in one new file, outside the package, runs end to end: main.py, launch.py
with local workers, and the report — without touching any module of the toolkit."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TOY = textwrap.dedent('''
    """upnorm: per block, Spearman between the row norms of the two up-projections (unit by unit);
    Fisher over blocks. Exact under the null when θ₂'s units are in random order."""
    from tracing.stats import Cost, register


    def _cost(s):
        return Cost(2 * s.weight_stream, s.read_s)


    @register("upnorm", description="Spearman of the up-projection row norms",
              meaning="upnorm: rank correlation of the up_proj row norms, unit by unit; exact under the null.",
              cost=_cost, per_block=True)
    def upnorm(ctx, base, ft):
        from tracing import pvalues
        from tracing.stats.base import StatResult
        rows = []
        for i in range(base.arch.L):
            name = base.arch.block_name(i, "up")
            r, lp = pvalues.spearman_pairs(base.get(name).norm(dim=1).numpy(), ft.get(name).norm(dim=1).numpy())
            rows.append({"layer": i, "statistic": float(r), "log10_pvalue": float(lp)})
        X, lp = pvalues.fisher([row["log10_pvalue"] for row in rows])
        return StatResult("upnorm", float(X), float(lp), rows, {"combine": "fisher"})
''')


def _env(plugin_dir: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_dir), str(ROOT), env.get("PYTHONPATH", "")])
    env["TRACING_STATS"] = "toy_upnorm"
    return env


def _run(args, env, timeout=900):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_statistic_in_one_new_file_runs_through_main_launch_and_report(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "toy_upnorm.py").write_text(TOY)
    env = _env(plugins)

    r = _run(["main.py", "--help"], env)
    assert r.returncode == 0 and "upnorm" in r.stdout

    out = tmp_path / "one.p"
    r = _run(["main.py", "--base_model_id", "demo:base-a", "--ft_model_id", "demo:a-docs", "--stat", "upnorm",
              "--save", str(out)], env)
    assert r.returncode == 0, r.stderr
    rec = pickle.loads(out.read_bytes())
    assert rec["stat"] == "upnorm" and rec["log10_pvalue"] < -6 and rec["verdict"] == "dependent"
    assert len(rec["per_layer"]) == 4

    cfg = tmp_path / "three.yaml"
    cfg.write_text("models:\n  - demo:base-a\n  - demo:a-docs\n  - demo:base-b\nstat: upnorm\n")
    res = tmp_path / "grid"
    r = _run(["launch.py", str(cfg), "--cluster", "local", "--max_workers", "2", "--out", str(res)], env)
    assert r.returncode == 0, r.stdout + r.stderr
    recs = [pickle.loads(p.read_bytes()) for p in res.rglob("upnorm-*.p")]
    assert len(recs) == 3 and all(x["status"] == "ok" for x in recs)
    by_pair = {(x["base_model_id"], x["ft_model_id"]): x for x in recs}
    assert by_pair[("demo:base-a", "demo:a-docs")]["verdict"] == "dependent"
    report = (res / "report.md").read_text()
    assert "upnorm" in report and "rank correlation of the up_proj row norms" in report
    assert (res / "heatmap.png").stat().st_size > 0

    # without the plugin the same command names the problem instead of failing obscurely
    env.pop("TRACING_STATS")
    r = _run(["main.py", "--base_model_id", "demo:base-a", "--ft_model_id", "demo:a-docs", "--stat", "upnorm"], env)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown statistic" in r.stderr


# ------------------------------------------------------------------------------------------
# a name or alias already taken is an error naming both modules
# ------------------------------------------------------------------------------------------
def _spec(name, module, aliases=()):
    from tracing.stats import StatSpec

    def fn(ctx, base, ft):  # pragma: no cover - never run
        return None
    fn.__module__ = module
    return StatSpec(name, fn, description="toy", meaning="toy", aliases=aliases)


def _isolated_registry(monkeypatch):
    from tracing import stats
    stats.names()  # the built-in statistics first
    monkeypatch.setattr(stats, "REGISTRY", dict(stats.REGISTRY))
    monkeypatch.setattr(stats, "ALIASES", dict(stats.ALIASES))
    return stats


def test_a_plugin_taking_a_builtin_name_is_an_error_naming_both_modules(monkeypatch):
    from tracing.errors import TracingError
    stats = _isolated_registry(monkeypatch)
    before = stats.REGISTRY["cos"]
    for spec in (_spec("cos", "my_plugin"), _spec("cosine2", "my_plugin", aliases=("cos",)),
                 _spec("csu", "my_plugin"), _spec("cosine3", "my_plugin", aliases=("csu",))):
        with pytest.raises(TracingError) as e:
            stats.register(spec)
        msg = str(e.value)
        assert "my_plugin" in msg and "tracing.stats.cos" in msg and "\n" not in msg
        assert stats.REGISTRY["cos"] is before and stats.ALIASES["csu"] == "cos"
        assert spec.name not in stats.REGISTRY or spec.name == "cos"
    # the same module registering again (e.g. reloaded) replaces its own statistic
    mine = stats.register(_spec("mine", "my_plugin", aliases=("mi",)))
    again = stats.register(_spec("mine", "my_plugin", aliases=("mi",)))
    assert stats.REGISTRY["mine"] is again is not mine and stats.ALIASES["mi"] == "mine"


def test_a_plugin_module_taking_cos_stops_main_with_one_line(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "evil_cos.py").write_text(textwrap.dedent('''
        from tracing.stats import register

        @register("cos", description="not the real cos", meaning="replaced")
        def cos(ctx, base, ft):
            raise AssertionError("never called")
    '''))
    env = _env(plugins)
    env["TRACING_STATS"] = "evil_cos"
    out = tmp_path / "x.p"
    r = _run(["main.py", "--base_model_id", "demo:base-a", "--ft_model_id", "demo:a-docs", "--stat", "cos",
              "--save", str(out)], env)
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert "evil_cos" in line and "tracing.stats.cos" in line and not out.exists()
