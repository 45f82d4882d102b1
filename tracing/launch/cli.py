"""The ``launch.py`` command line: options in, :func:`tracing.launch.launch` out."""
from __future__ import annotations

import argparse

from ..options import Options, add_options
from .run import LaunchSettings, launch


def parse(argv=None):
    p = argparse.ArgumentParser(
        description="Run every pair of a model list as one job each: Slurm job arrays when a Slurm "
                    "controller answers, else a bounded number of pairs at a time on this machine.")
    p.add_argument("config", help="model list YAML: a list of models (every pair), {base_models, ft_models} "
                                  "(every base x fine-tune) or {models_1, models_2, names_1?, names_2?} (listed pairs)")
    g = p.add_argument_group("launch")
    g.add_argument("--cluster", default="auto", choices=["auto", "slurm", "local"],
                   help="auto: Slurm when a controller answers `scontrol ping`, else this machine (default)")
    g.add_argument("--out", default=None, help="results folder (default: results/<name of the model list>)")
    g.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="print the plan (pairs, resources, result files, status) and exit; no network")
    g.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's default)")
    g.add_argument("--array_parallelism", type=int, default=None,
                   help="at most this many jobs of an array run at once (Slurm; default: submitit's 256)")
    g.add_argument("--max_workers", type=int, default=None,
                   help="without Slurm: pairs at a time on this machine (default: one per two cores)")
    g.add_argument("--timeout_min", type=int, default=None, help="time limit per pair (default: estimated)")
    g.add_argument("--mem_gb", type=int, default=None, help="memory per pair (default: estimated from the configs)")
    g.add_argument("--gpus", type=int, default=None,
                   help="GPUs per pair (default: 1 for forward-pass statistics on a Slurm cluster with GPUs, else 0)")
    g.add_argument("--cpus", type=int, default=None, help="CPUs per pair on Slurm (default: 4)")
    g.add_argument("--download", action="store_true",
                   help="download hub models whole even for a sampled test (--rows), which otherwise reads only "
                        "the sampled rows of a model not in the local cache by HTTP range requests")
    g.add_argument("--no-prefetch", "--no_prefetch", dest="prefetch", action="store_false",
                   help="do not download hub models before submitting (each job fetches its own)")
    g.add_argument("--no-report", "--no_report", dest="report", action="store_false",
                   help="do not write the report at the end")
    g.add_argument("--attest-key", "--attest_key", dest="attest_key", default=None, metavar="PRIVATE.pem",
                   help="sign each pair's result as an in-toto statement beside it (<result>.intoto.json), "
                        "here, after the jobs (the key never goes to the jobs), with the grid's Holm family "
                        "(holm-family.json in the results folder)")
    add_options(p)
    # Comparison options given on the command line override the model list's; the others stay unset.
    names = set(Options.__dataclass_fields__)
    for action in p._actions:
        if action.dest in names:
            if action.help and "%(default)s" in action.help:  # argparse cannot show a suppressed default
                action.help = action.help.replace("%(default)s", str(action.default))
            action.default = argparse.SUPPRESS
    args = p.parse_args(argv)
    for name in ("array_parallelism", "max_workers", "timeout_min", "mem_gb", "cpus"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name} must be a positive integer")
    if args.gpus is not None and args.gpus < 0:
        p.error("--gpus must be 0 or more")
    return args, names


def main(argv=None):
    args, names = parse(argv)
    settings = LaunchSettings(
        config=args.config, cli_options={k: v for k, v in vars(args).items() if k in names},
        cluster=args.cluster, partition=args.partition, array_parallelism=args.array_parallelism,
        max_workers=args.max_workers, dry_run=args.dry_run, out=args.out, timeout_min=args.timeout_min,
        mem_gb=args.mem_gb, gpus=args.gpus, cpus=args.cpus, prefetch=args.prefetch, report=args.report,
        attest_key=args.attest_key, download=args.download)
    return launch(settings)
