import sys

from ..cli_util import run_cli
from .cli import main

sys.exit(run_cli(main))
