"""Known lineage: which model each model was derived from, as one type (:class:`KnownLineage`, a
mapping ``model → parent``), read from a tree list, ``{"models": {name: {"parent", "root"}}}`` (the
demo family's ``lineage.json`` and a launch's ``known_lineage.json``) or ``{name: parent_or_null}``;
the one rule for which known lineage applies to a results folder (:func:`lineage_for`); and the one
walk up a model's ancestors (:func:`ancestors`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import TracingError
from ..results_folder import KNOWN_LINEAGE
from ..specs import demo_id, demo_name, is_demo

FORMS = "a tree list, {'models': {name: {'parent': ...}}} or {name: parent}"
TREE_HELP = ("write a list whose items are a model id or a one-key mapping 'model: [children]' "
             "(see config/llama7b_tree.yaml)")


def ancestors(parents: Mapping, model, source: str = "") -> Iterator[str]:
    """``model``'s parent, grandparent, … up to its root, in ``{model: parent}``. A cycle is an error."""
    seen, cur = {model}, parents.get(model)
    while cur is not None:
        if cur in seen:
            where = f" in {source}" if source else ""
            raise TracingError(f"the lineage{where} has a cycle through {cur!r}")
        yield cur
        seen.add(cur)
        cur = parents.get(cur)


def is_ancestor(a, b, parents: Mapping, strict: bool = False) -> bool:
    """Whether ``a`` is ``b`` or one of its ancestors in ``{model: parent}`` (``strict``: an ancestor only)."""
    if b is None:
        return False
    return (a == b and not strict) or any(x == a for x in ancestors(parents, b))


def roots_of(parents: Mapping, source: str = "") -> dict[str, str]:
    """Each model's root (the top of its chain of parents)."""
    return {m: ([m, *ancestors(parents, m, source)])[-1] for m in parents}


def parents_of(models: list[str], edges: list[tuple[str, str]]) -> dict[str, str | None]:
    parents = {m: None for m in models}
    parents.update({c: p for p, c in edges})
    return parents


def _walk(items, parent, source, models, parents):
    if items is None:
        return
    if not isinstance(items, list):
        where = f"the children of {parent!r}" if parent else "the top level"
        raise TracingError(f"{source}: {where} must be a list, not a {type(items).__name__}; {TREE_HELP}")
    for item in items:
        if isinstance(item, dict):
            if len(item) != 1:
                keys = ", ".join(repr(k) for k in item) or "no key"
                raise TracingError(f"{source}: a list item must be one model or a one-key mapping "
                                   f"'model: [children]', got a mapping with {keys}; give each model its own '- ' item")
            (name, children), = item.items()
        else:
            name, children = item, None
        if not isinstance(name, str) or not name.strip():
            under = f" under {parent!r}" if parent else ""
            raise TracingError(f"{source}: {item!r}{under} is not a model id; write each model as a string "
                               f"such as org/name, ./folder or demo:base-a")
        name = name.strip()
        if name in parents:
            if name == parent or is_ancestor(name, parent, parents):
                raise TracingError(f"{source}: {name!r} is listed under its own descendant {parent!r} (a cycle); "
                                   f"list each model once, under its parent")
            first = f"under {parents[name]!r}" if parents[name] else "at the top level"
            again = f"under {parent!r}" if parent else "at the top level"
            raise TracingError(f"{source}: {name!r} is listed twice ({first} and {again}); a model has one "
                               f"parent, so list it once")
        parents[name] = parent
        models.append(name)
        _walk(children, name, source, models, parents)


def parse_tree(obj, source: str = "<tree>") -> tuple[list[str], list[tuple[str, str]]]:
    """``(models, edges)`` of a parsed tree document: models in listing order, edges ``(parent, child)``.

    A mapping at the top level is read as the list of its items. Raises
    :class:`~tracing.errors.TracingError` (one line) for an empty tree, a non-string model, a
    model listed twice (two parents) or under its own descendant (a cycle)."""
    if isinstance(obj, dict):
        obj = [{k: v} for k, v in obj.items()]
    if obj is None or obj == []:
        raise TracingError(f"{source} is empty; {TREE_HELP}")
    if not isinstance(obj, list):
        raise TracingError(f"{source} holds a {type(obj).__name__}, not a tree; {TREE_HELP}")
    models: list[str] = []
    parents: dict[str, str | None] = {}
    _walk(obj, None, source, models, parents)
    edges = [(p, m) for m, p in parents.items() if p is not None]
    return models, edges


def yaml_data(text: str, source) -> object:
    """Parsed YAML; invalid YAML is a one-line error naming where."""
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise TracingError(f"{source} is not valid YAML{where}; fix the syntax") from None


def name_key(model, known) -> str | None:
    """The entry of ``known`` that names ``model``: exact, then without ``@revision``, ``demo:`` or the
    folder path (``./models/x`` matches ``x``)."""
    if model is None:
        return None
    m = str(model)
    cands = [m, m.split("@", 1)[0], demo_name(m) if is_demo(m) else demo_id(m), m.rstrip("/").rsplit("/", 1)[-1]]
    return next((c for c in cands if c and c in known), None)


def align_truth(truth: Mapping, models: list[str]) -> dict[str, str | None]:
    """``truth`` renamed onto the names used in ``models`` (models not in the truth are left out; an
    ancestor that was not run is skipped over)."""
    rename = {}
    for m in models:
        k = name_key(m, truth)
        if k is not None:
            rename[k] = m
    out = {}
    for k, m in rename.items():
        p = next((a for a in ancestors(truth, k) if a in rename), None)
        out[m] = rename[p] if p is not None else None
    return out


@dataclass(frozen=True, eq=False)
class KnownLineage(Mapping):
    """Known lineage as a mapping ``model → parent`` (None for a root), with where it came from.
    ``roots`` and ``depth`` give each model's root and its distance from it; a root the source
    states (``"root"`` entries) wins over the top of the chain."""

    parents: dict[str, str | None]
    source: str = "<lineage>"
    stated_roots: dict[str, str] = field(default_factory=dict)
    roots: dict[str, str] = field(init=False)
    depth: dict[str, int] = field(init=False)

    def __post_init__(self):
        chains = {m: [m, *ancestors(self.parents, m, self.source)] for m in self.parents}
        roots = {m: chain[-1] for m, chain in chains.items()}
        roots.update(self.stated_roots)
        object.__setattr__(self, "roots", roots)
        object.__setattr__(self, "depth", {m: len(chains[m]) - 1 if m in chains else int(m != r)
                                           for m, r in roots.items()})

    def __getitem__(self, model):
        return self.parents[model]

    def __iter__(self):
        return iter(self.parents)

    def __len__(self) -> int:
        return len(self.parents)

    def root(self, model) -> str | None:
        k = name_key(model, self.roots)
        return None if k is None else self.roots[k]

    def dependent(self, a, b) -> bool | None:
        """Whether two models share a root; None when either is not in the lineage."""
        ra, rb = self.root(a), self.root(b)
        return None if ra is None or rb is None else ra == rb

    def order_key(self, model):
        """Sorts models by family, then by depth under the root."""
        k = name_key(model, self.roots)
        if k is None:
            return (1, "", 0, str(model))
        return (0, self.roots[k], self.depth.get(k, 0), str(model))


def _entries(data: dict, source: str) -> tuple[dict, dict]:
    entries = data["models"] if isinstance(data.get("models"), dict) else data
    parents, roots = {}, {}
    for name, info in entries.items():
        if isinstance(info, dict):
            p = info.get("parent")
            if info.get("root"):
                roots[str(name)] = str(info["root"])
        elif info is None or isinstance(info, str):
            p = info
        else:
            raise TracingError(f"the lineage in {source}: entry {name!r} must be a parent name, null, or "
                               f"{{'parent': ..., 'root': ...}}")
        if p is not None and not isinstance(p, str):
            raise TracingError(f"the lineage in {source}: the parent of {name!r} must be a model name or null")
        parents[str(name)] = p
    for p in list(parents.values()):
        if p is not None:
            parents.setdefault(p, None)
    return parents, roots


def parse_lineage(data, source: str = "<lineage>") -> KnownLineage:
    """Known lineage from a tree list, ``{"models": {...}}`` or ``{name: parent}`` (see the module)."""
    if isinstance(data, KnownLineage):
        return data
    if isinstance(data, list) or (isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values())):
        return KnownLineage(parents_of(*parse_tree(data, source)), source)
    if not isinstance(data, dict) or not data:
        raise TracingError(f"the lineage in {source} must be {FORMS}")
    parents, roots = _entries(data, source)
    return KnownLineage(parents, source, roots)


def read_lineage(path: str | os.PathLike) -> KnownLineage:
    """:func:`parse_lineage` of a JSON or YAML file (one-line errors for a missing, binary or invalid file)."""
    p = Path(path)
    if not p.is_file():
        raise TracingError(f"lineage file {p} does not exist; give a tree YAML or a lineage JSON file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TracingError(f"the lineage file {p} is not text (UTF-8); give a JSON or YAML file of "
                           f"model → parent") from None
    except OSError as e:
        raise TracingError(f"cannot read the lineage file {p} ({e.strerror or e})") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        data = yaml_data(text, p)
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise TracingError(f"cannot read the lineage file {p}: {type(e).__name__}: {str(e).splitlines()[0]}; "
                               f"give valid JSON") from None
    return parse_lineage(data, str(p))


def demo_lineage() -> KnownLineage:
    """The demo family's lineage, named ``demo:<name>`` (from its recipes; nothing is built)."""
    from .. import demo
    return KnownLineage({demo_id(n): (demo_id(demo.RECIPES[n].parent) if demo.RECIPES[n].parent else None)
                         for n in demo.MODEL_NAMES}, "the demo family")


def lineage_for(lineage, folder, models) -> KnownLineage | None:
    """The one rule for which known lineage applies to a results folder (the report and
    ``python -m tracing.lineage`` both use it): ``lineage`` (a file, a mapping or a tree list) when
    given, else the folder's ``known_lineage.json`` (written by a launch of a tree), else the demo
    family's when every model is ``demo:*``; else None."""
    if isinstance(lineage, (str, os.PathLike)):
        return read_lineage(lineage)
    if isinstance(lineage, (Mapping, list)):
        return parse_lineage(lineage, "the given lineage")
    if lineage is None and folder is not None and (Path(folder) / KNOWN_LINEAGE).is_file():
        return replace(read_lineage(Path(folder) / KNOWN_LINEAGE), source=KNOWN_LINEAGE)
    if lineage is None and models and all(isinstance(m, str) and is_demo(m) for m in models):
        return demo_lineage()
    return None
