#!/usr/bin/env python
"""Compare every pair of a model list, as Slurm job arrays (or on this machine without Slurm).

    python launch.py config/model_list.yaml --stat cos
    python launch.py config/demo.yaml                  # the offline demo family, cos + match
    python launch.py config/model_list.yaml --dry-run  # the plan: pairs, resources, result files
"""
import os
import sys

from tracing.cli_util import leave, run_cli
from tracing.launch import main

if __name__ == "__main__":
    try:
        leave(run_cli(main))
    except BrokenPipeError:  # output piped into e.g. `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
