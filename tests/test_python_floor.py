"""The package keeps the Python version it promises (``requires-python`` in pyproject.toml): under
the lowest claimed Python, when one is installed here, every module compiles and every
standard-library name it imports exists."""
from __future__ import annotations

import glob
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def floor_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'requires-python\s*=\s*">=\s*(\d+\.\d+)', text)
    assert m, "pyproject.toml states no requires-python floor"
    return m.group(1)


def floor_python(version: str) -> str | None:
    """An interpreter of exactly that version (on PATH or installed by pyenv)."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / f"{version}.*" / "bin" / f"python{version}")))
    candidates += sorted(glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python{version}"))
    for c in filter(None, candidates):
        r = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                           text=True)
        if r.returncode == 0 and r.stdout.strip() == version:
            return c
    return None


def test_the_package_keeps_its_python_floor():
    version = floor_version()
    python = floor_python(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter installed here to check the promise against")
    targets = [ROOT / "tracing", ROOT / "main.py", ROOT / "launch.py", ROOT / "generate.py"]
    r = subprocess.run([python, str(ROOT / "tests" / "floor_check.py"), *map(str, targets)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"Python {version} ({python}):\n{r.stdout}{r.stderr}"
    assert "files ok" in r.stdout


def test_task_states_read_the_same_under_the_python_3_10_enum():
    """Python 3.10 has no ``enum.StrEnum``; the task states built on the replacement print, compare and
    serialise exactly as on newer Pythons."""
    import enum
    import json

    from tracing.launch import tasks

    Old = tasks._StrEnum("Old", {m.name: m.value for m in tasks.TaskState})
    for new in tasks.TaskState:
        old = Old[new.name]
        assert str(old) == str(new) == new.value and f"{old}" == f"{new}" == new.value
        assert old == new.value and isinstance(old, str) and json.dumps(old) == json.dumps(new)
        assert f"{old:>20}" == f"{new:>20}"
    assert tasks.StrEnum is getattr(enum, "StrEnum", tasks._StrEnum)
