"""The nested tree form of a model family, and known lineage in general.

A tree file is a YAML list; each item is a model id (a model without listed children) or a
one-key mapping ``model: [children...]`` whose children follow the same rule, recursively::

    - meta-llama/Llama-2-7b-hf:
        - lmsys/vicuna-7b-v1.5
        - codellama/CodeLlama-7b-hf:
            - codellama/CodeLlama-7b-Python-hf
    - openlm-research/open_llama_7b

It names a model list (every pair of the models in it) and the ground-truth lineage at once
(each model's parent is the model it is listed under; top-level models are roots).

Known lineage is also read from ``{"models": {name: {"parent": p}}}`` (the demo family's
``lineage.json``) or ``{name: parent_or_null}``; :func:`read_truth` accepts all three.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import TracingError
from ..specs import demo_id, demo_name, is_demo

#: the known lineage a launch of a tree writes into its results folder (read by the report)
KNOWN_LINEAGE = "known_lineage.json"

TREE_HELP = ("write a list whose items are a model id or a one-key mapping 'model: [children]' "
             "(see config/llama7b_tree.yaml)")


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


def is_ancestor(a, b, parents: dict, strict: bool = False) -> bool:
    """Whether ``a`` is ``b`` or one of its ancestors in ``{model: parent}`` (``strict``: an ancestor only)."""
    if strict:
        b = parents.get(b)
    seen = set()
    while b is not None and b not in seen:
        if b == a:
            return True
        seen.add(b)
        b = parents.get(b)
    return False


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


def is_tree_form(data) -> bool:
    """True when a parsed model list is in the nested tree form (a list with a ``model: [children]`` item)."""
    return isinstance(data, list) and any(isinstance(x, dict) for x in data)


def read_yaml(path: str | os.PathLike):
    import yaml
    p = Path(path)
    if not p.is_file():
        raise TracingError(f"{p} does not exist; give a tree YAML file such as config/llama7b_tree.yaml")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise TracingError(f"{p} is not valid YAML{where}; fix the syntax") from None


def read_tree(path: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """:func:`parse_tree` of a YAML file."""
    return parse_tree(read_yaml(path), source=str(path))


def tree_pairs(models: list[str]) -> list[tuple[str, str]]:
    """Every unordered pair of the models, in listing order."""
    return [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]


def parents_of(models: list[str], edges: list[tuple[str, str]]) -> dict[str, str | None]:
    parents = {m: None for m in models}
    parents.update({c: p for p, c in edges})
    return parents


def roots_of(parents: dict[str, str | None]) -> dict[str, str]:
    """Each model's root (the top of its chain of parents)."""
    out = {}
    for m in parents:
        cur, seen = m, {m}
        while parents.get(cur) is not None:
            cur = parents[cur]
            if cur in seen:
                raise TracingError(f"the lineage has a cycle through {cur!r}")
            seen.add(cur)
        out[m] = cur
    return out


def lineage_json(models: list[str], edges: list[tuple[str, str]]) -> dict:
    """The lineage as ``{"models": {name: {"parent": p, "root": r}}}`` (the demo family's format)."""
    parents = parents_of(models, edges)
    roots = roots_of(parents)
    return {"models": {m: {"parent": parents[m], "root": roots[m]} for m in models}}


def parse_truth(data, source: str = "<lineage>") -> dict[str, str | None]:
    """Known lineage as ``{model: parent_or_None}`` from a tree, a ``{"models": {...}}`` file or ``{name: parent}``."""
    if isinstance(data, list) or (isinstance(data, dict) and data and all(
            isinstance(v, list) for v in data.values())):
        return parents_of(*parse_tree(data, source))
    if not isinstance(data, dict) or not data:
        raise TracingError(f"the lineage in {source} must be a tree list, {{'models': {{name: {{'parent': ...}}}}}} "
                           f"or {{name: parent}}")
    entries = data["models"] if isinstance(data.get("models"), dict) else data
    parents: dict[str, str | None] = {}
    for name, info in entries.items():
        p = info.get("parent") if isinstance(info, dict) else info
        if p is not None and not isinstance(p, str):
            raise TracingError(f"the lineage in {source}: the parent of {name!r} must be a model name or null")
        parents[str(name)] = p
    for p in list(parents.values()):
        if p is not None:
            parents.setdefault(p, None)
    roots_of(parents)  # rejects cycles
    return parents


def read_truth(path: str | os.PathLike) -> dict[str, str | None]:
    """:func:`parse_truth` of a JSON or YAML file."""
    p = Path(path)
    if not p.is_file():
        raise TracingError(f"lineage file {p} does not exist; give a tree YAML or a lineage JSON file")
    if p.suffix.lower() in (".yaml", ".yml"):
        data = read_yaml(p)
    else:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise TracingError(f"cannot read the lineage file {p} ({type(e).__name__}); give valid JSON") from None
    return parse_truth(data, str(p))


def demo_truth() -> dict[str, str | None]:
    """The demo family's lineage, named ``demo:<name>`` (from its recipes; nothing is built)."""
    from .. import demo
    return {demo_id(n): (demo_id(demo.RECIPES[n].parent) if demo.RECIPES[n].parent else None)
            for n in demo.MODEL_NAMES}


def name_key(model: str, known) -> str | None:
    """The entry of ``known`` that names ``model``: exact, then without ``@revision``, ``demo:`` or the
    folder path (``./models/x`` matches ``x``)."""
    m = str(model)
    cands = [m, m.split("@", 1)[0]]
    if is_demo(m):
        cands.append(demo_name(m))
    else:
        cands.append(demo_id(m))
    cands.append(m.rstrip("/").rsplit("/", 1)[-1])
    for c in cands:
        if c in known:
            return c
    return None


def align_truth(truth: dict[str, str | None], models: list[str]) -> dict[str, str | None]:
    """``truth`` renamed onto the names used in ``models`` (models not in the truth are left out)."""
    rename = {}
    for m in models:
        k = name_key(m, truth)
        if k is not None:
            rename[k] = m
    out = {}
    for k, m in rename.items():
        p = truth[k]
        while p is not None and p not in rename:  # skip ancestors that were not run
            p = truth.get(p)
        out[m] = rename.get(p) if p is not None else None
    return out


def known_truth(lineage, folder, models: list[str]) -> tuple[dict | None, str | None]:
    """The one rule for which known lineage applies to a results folder (the report and
    ``python -m tracing.lineage`` both use it): ``lineage`` (a file or a mapping) when given, else the
    folder's ``known_lineage.json`` (written by a launch of a tree), else the demo family's when every
    model is ``demo:*``. Returns ``{model: parent}`` and where it came from (or ``(None, None)``)."""
    folder = Path(folder)
    if isinstance(lineage, (str, os.PathLike)):
        return read_truth(lineage), str(lineage)
    if isinstance(lineage, (dict, list)):
        return parse_truth(lineage), "the given lineage"
    if lineage is None and (folder / KNOWN_LINEAGE).is_file():
        return read_truth(folder / KNOWN_LINEAGE), KNOWN_LINEAGE
    if lineage is None and models and all(is_demo(m) for m in models):
        return demo_truth(), "the demo family"
    return None, None
