"""The ``model-tracing`` console script: declared in pyproject.toml, dispatching to the same ``main`` as
``python main.py`` / ``python launch.py`` / ``python -m tracing.X``."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tracing import cli

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {"compare", "launch", "scan", "report", "lineage", "demo"}


def _scripts() -> dict:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, flags=re.M))


def test_pyproject_declares_the_console_script_and_it_resolves():
    scripts = _scripts()
    assert set(scripts) == {"model-tracing"}
    module, func = scripts["model-tracing"].split(":")
    assert getattr(importlib.import_module(module), func) is cli.entry
    assert EXPECTED <= set(cli.COMMANDS)


def _help(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_subcommand_takes_the_commands_own_arguments(name, capsys):
    module = importlib.import_module(cli.COMMANDS[name][0])
    own = _help(module.main, ["--help"], capsys)
    via = _help(cli.main, [name, "--help"], capsys)
    assert via == own and "usage:" in via


def test_main_py_and_launch_py_are_the_same_commands():
    import launch  # noqa: F401  (top-level scripts import their main from the package)
    import main
    from tracing import cli_compare
    from tracing.launch import cli as launch_cli
    assert main.main is cli_compare.main and launch.main is launch_cli.main


def test_the_compare_command_leaves_the_api_function_alone():
    import tracing
    import tracing.cli_compare  # noqa: F401
    assert callable(tracing.compare)  # the public tracing.compare(base, ft, ...) is not shadowed by a module


def test_a_subcommand_runs_like_the_module(tmp_path):
    via = subprocess.run([sys.executable, "-m", "tracing.cli", "demo", "list"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    own = subprocess.run([sys.executable, "-m", "tracing.demo", "list"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert via.returncode == own.returncode == 0 and via.stdout == own.stdout and "base-a" in via.stdout


def test_no_command_or_unknown_command_is_one_line_and_exit_2(capsys):
    assert cli.main([]) == 2 and "usage: model-tracing" in capsys.readouterr().out
    assert cli.main(["compair"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown command 'compair'" in err and "compare" in err
    assert cli.main(["--help"]) == 0


def test_errors_go_through_the_one_line_rule(capsys):
    code = cli.main(["compare", "--base_model_id", str(ROOT / "no-such-folder"), "--ft_model_id", "demo:base-a"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:")
