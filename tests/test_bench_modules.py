"""The benchmarks are modules of the ``bench`` package, run from the repository root (``python -m
bench.bench_cos``): each imports without editing ``sys.path`` and starts its children the same way."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))
#: the one deliberate edit: the demo-build benchmark measures another checkout's code (--src)
ALLOWED = {("bench_demo_build.py", "child")}


def _is_sys_path_call(node) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "path"
            and isinstance(node.func.value.value, ast.Name) and node.func.value.value.id == "sys")


def _sys_path_edits(tree: ast.Module):
    """(innermost function's name or '<module>', line) of every ``sys.path.<method>(...)`` call."""
    owner = {}
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(fn):  # outer functions first (ast.walk is breadth-first): the innermost wins
            owner[id(node)] = fn.name
    return [(owner.get(id(n), "<module>"), n.lineno) for n in ast.walk(tree) if _is_sys_path_call(n)]


@pytest.mark.parametrize("f", SCRIPTS, ids=lambda f: f.stem)
def test_no_benchmark_edits_sys_path(f):
    edits = {(f.name, name) for name, _ in _sys_path_edits(ast.parse(f.read_text(encoding="utf-8")))}
    assert edits <= ALLOWED, edits


@pytest.mark.parametrize("f", [f for f in SCRIPTS if f.stem != "__init__"], ids=lambda f: f.stem)
def test_every_benchmark_imports_as_a_module(f):
    mod = importlib.import_module(f"bench.{f.stem}")
    assert mod.__name__ == f"bench.{f.stem}"


def test_children_run_as_modules():
    from bench import common
    assert common.module_name(ROOT / "bench" / "bench_cos.py") == "bench.bench_cos"
    assert all(importlib.util.find_spec(common.module_name(f)) for f in SCRIPTS if f.stem != "__init__")
