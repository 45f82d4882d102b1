"""The ``model-tracing`` command: one entry point for every command of the toolkit.

    model-tracing compare --base_model_id A --ft_model_id B --stat cos     # = python main.py ...
    model-tracing launch config/model_list.yaml                            # = python launch.py ...
    model-tracing scan CANDIDATE --index DIR                               # = python -m tracing.scan ...
    model-tracing report results/grid                                      # = python -m tracing.report ...

Each subcommand takes exactly the arguments of the command it names; ``model-tracing SUB --help`` shows
them. Installed by ``pip install .`` (``[project.scripts]`` in pyproject.toml).
"""
from __future__ import annotations

import importlib
import sys

#: subcommand -> (module holding ``main(argv)``, the equivalent command, one line of help)
COMMANDS = {
    "compare": ("tracing.cli_compare", "python main.py", "test one pair of models"),
    "launch": ("tracing.launch.cli", "python launch.py", "every pair of a model list (Slurm or local)"),
    "scan": ("tracing.scan", "python -m tracing.scan", "one model against many references"),
    "report": ("tracing.report.__main__", "python -m tracing.report", "table, figures and report of a results folder"),
    "lineage": ("tracing.lineage.__main__", "python -m tracing.lineage", "family tree of a results folder"),
    "demo": ("tracing.demo.__main__", "python -m tracing.demo", "the offline demo model family"),
    "index": ("tracing.index.cli", "python -m tracing.index", "build and maintain a reference index"),
    "attest": ("tracing.attest", "python -m tracing.attest", "sign a result as an in-toto statement"),
    "verify": ("tracing.verify", "python -m tracing.verify", "check a statement by signature and recomputation"),
    "quantcheck": ("tracing.quantcheck", "python -m tracing.quantcheck", "is a quantized file faithful to its source"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: model-tracing COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_} ({equiv})" for name, (_, equiv, help_) in COMMANDS.items()]
    lines += ["", "model-tracing COMMAND --help shows the command's arguments."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from .cli_util import run_cli
    module = importlib.import_module(COMMANDS[name][0])
    return run_cli(module.main, rest, quick_start=name == "compare")


def entry() -> None:
    """The installed console script."""
    import os

    from .cli_util import leave
    try:
        leave(main())
    except BrokenPipeError:  # output piped into e.g. `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


if __name__ == "__main__":
    entry()
