"""A sampled test costs what it reads: what a weight-only run imports, the fast file identity of
screening (and the row store under it), the stages its timings hold, GGUF headers parsed once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from tracing import pvalues

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("transformers.modeling_utils", "transformers.configuration_utils", "scipy.stats")


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    from helpers import save_trio
    return save_trio(tmp_path_factory.mktemp("trio"))


def test_tails_equal_scipy_stats_bit_for_bit():
    """The t and chi-square tails come from scipy.special, computed as scipy.stats computes them."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        df = float(rng.integers(1, 20000)) * float(rng.uniform(0.5, 1.5))
        t = float(rng.standard_normal() * 10 ** rng.uniform(-3, 1.5))
        want = float(scipy.stats.t.logsf(t, df))
        if want > -700:  # beyond, both use arbitrary precision (scipy.stats' own value is -inf there)
            assert pvalues.t_logsf(t, df) == want
        x = abs(t) * df / 4
        want = float(scipy.stats.chi2.logsf(x, df))
        if want > -700 and x > 0:
            assert pvalues.chi2_logsf(x, df) == want


def _modules_after(body: str, env: dict) -> list[str]:
    """Run ``body`` in a fresh process; the HEAVY modules imported when it ends."""
    code = f"{body}\nimport sys, json\nprint('MODULES', json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("MODULES ")][-1]
    return json.loads(line.split(" ", 1)[1])


def _main(argv: list[str]) -> str:
    return (f"import runpy, sys\nsys.argv = ['main.py'] + {argv!r}\n"
            "try:\n    runpy.run_path('main.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n")


def test_weight_only_sampled_run_imports_no_model_machinery(trio, tmp_path):
    env = {**os.environ, "TRACING_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    argv = ["--base_model_id", trio["base"], "--ft_model_id", trio["ft"], "--stat", "cos", "--rows", "32",
            "--quiet", "--save", str(tmp_path / "r.p")]
    assert _modules_after(_main(argv), env) == []
    assert (tmp_path / "r.p").is_file()
    # the same check sees transformers' config machinery when something asks for the config object
    probe = f"from tracing.models import Checkpoint\nCheckpoint({trio['base']!r}).config"
    assert "transformers.configuration_utils" in _modules_after(probe, env)
