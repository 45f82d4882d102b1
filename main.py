#!/usr/bin/env python
"""Compare one pair of models: python main.py --base_model_id A --ft_model_id B --stat cos --save results/x.p

The same command is installed as ``model-tracing compare`` (tracing/cli_compare.py).
"""

from tracing.cli_util import leave, run_cli
from tracing.cli_compare import main

if __name__ == "__main__":
    leave(run_cli(main, quick_start=True))
