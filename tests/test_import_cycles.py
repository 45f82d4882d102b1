"""No import cycles inside tracing/: the module import graph, built from the source with ``ast``.

An import at module level runs when the module is imported; one inside a function runs when the
function is first called (the package uses these to keep ``--help`` and the statistics registry
free of torch). Imports under ``if TYPE_CHECKING:`` never run. The graph of module-level imports
must have no cycle at all; with the function-level imports counted too, no cycle may pass
through the statistics (``tracing.stats``) or the options they declare.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "tracing"


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _targets(module: str, is_package: bool, node) -> list[str]:
    """The modules of ``tracing`` that an import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]


class _Imports(ast.NodeVisitor):
    """Import statements of one module, each with whether it runs at module level."""

    def __init__(self):
        self.found: list[tuple[ast.AST, bool]] = []
        self.depth = 0

    def _deferred(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _deferred

    def visit_If(self, node):
        test = node.test
        if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or \
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node):
        self.found.append((node, self.depth == 0))

    visit_ImportFrom = visit_Import


def import_graph(with_deferred: bool) -> nx.DiGraph:
    g = nx.DiGraph()
    for module, path in MODULES.items():
        g.add_node(module)
        v = _Imports()
        v.visit(ast.parse(path.read_text(encoding="utf-8")))
        for node, at_module_level in v.found:
            if not (at_module_level or with_deferred):
                continue
            for t in _targets(module, path.name == "__init__.py", node):
                if t in MODULES and t != module:
                    g.add_edge(module, t)
    return g


def _cycles(g: nx.DiGraph) -> list[list[str]]:
    return [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]


def test_no_import_cycle_at_module_level():
    g = import_graph(with_deferred=False)
    assert g.number_of_edges() > 100  # the graph is really built
    assert g.has_edge("tracing.stats.cos", "tracing.stats.spec")
    assert _cycles(g) == []


def test_no_cycle_through_the_statistics_even_with_function_level_imports():
    g = import_graph(with_deferred=True)
    assert g.has_edge("tracing.stats.match", "tracing.stats.experts")  # a function-level import is counted
    stats = [c for c in _cycles(g) if any(m == "tracing.options" or m.startswith("tracing.stats") for m in c)]
    assert stats == []


#: the one cycle closed by a function-level import, and why it stays: resolving ``demo:<name>`` (tracing.specs)
#: builds the demo family on first use (tracing.demo), and the demo package asks tracing.specs what a model id
#: names, as every module must; the import in ``specs.resolve`` runs only for a demo id
DECLARED = {frozenset({"tracing.specs", "tracing.demo", "tracing.demo.build", "tracing.demo.paths",
                       "tracing.demo.recipes", "tracing.demo.tokenizer", "tracing.demo.train"})}


def test_no_other_cycle_even_with_function_level_imports():
    g = import_graph(with_deferred=True)
    assert [c for c in _cycles(g) if frozenset(c) not in DECLARED] == []


def test_the_check_finds_a_cycle(tmp_path):
    pkg = tmp_path / "tracing"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import c\n"
                                      "def f():\n    from ..a import x\n")
    (pkg / "c.py").write_text("import tracing.a\n")
    global PACKAGE, MODULES
    saved = PACKAGE, MODULES
    try:
        PACKAGE = pkg
        MODULES = {_name(p): p for p in pkg.rglob("*.py")}
        assert _cycles(import_graph(with_deferred=False)) == []  # the loop closes in a function only
        assert _cycles(import_graph(with_deferred=True)) == [["tracing.a", "tracing.sub.b"]]
        (pkg / "sub" / "b.py").write_text("from .. import c\n")
        assert _cycles(import_graph(with_deferred=False)) == [["tracing.a", "tracing.c", "tracing.sub.b"]]
    finally:
        PACKAGE, MODULES = saved
