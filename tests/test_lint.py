"""The lint configuration in pyproject.toml ([tool.ruff]) holds for the whole tree."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_passes():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "No module named ruff" not in r.stderr, "ruff is a test requirement: pip install -r requirements.txt"
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
