"""Which models share an ancestor: read from a file, a mapping, or the demo family's recipes."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import TracingError
from ..specs import demo_name, is_demo


@dataclass
class Lineage:
    """Which models share a root. ``roots`` maps a model name to its root; ``depth`` to its distance
    from the root (for ordering)."""

    roots: dict[str, str]
    depth: dict[str, int]
    source: str

    def _key(self, model: str) -> str | None:
        if model is None:
            return None
        m = str(model)
        for cand in (m, m.split("@", 1)[0], demo_name(m),
                     m.rstrip("/").rsplit("/", 1)[-1]):
            if cand and cand in self.roots:
                return cand
        return None

    def root(self, model: str) -> str | None:
        k = self._key(model)
        return None if k is None else self.roots[k]

    def dependent(self, a: str, b: str) -> bool | None:
        ra, rb = self.root(a), self.root(b)
        if ra is None or rb is None:
            return None
        return ra == rb

    def order_key(self, model: str):
        k = self._key(model)
        if k is None:
            return (1, "", 0, str(model))
        return (0, self.roots[k], self.depth.get(k, 0), str(model))


def _lineage_from_parents(parents: dict[str, str | None], roots: dict[str, str] | None, source: str) -> Lineage:
    roots = dict(roots or {})
    depth: dict[str, int] = {}
    for name in parents:
        seen, cur, d = {name}, name, 0
        while parents.get(cur):
            cur = parents[cur]
            d += 1
            if cur in seen:
                raise TracingError(f"the lineage in {source} has a cycle through {cur!r}")
            seen.add(cur)
        roots.setdefault(name, cur)
        depth[name] = d
    for name, r in roots.items():
        depth.setdefault(name, 0 if name == r else 1)
    return Lineage(roots, depth, source)


def parse_lineage(data, source: str = "<lineage>") -> Lineage:
    """A tree list, ``{"models": {name: {"parent", "root"}}}`` or ``{name: parent_or_null}`` → :class:`Lineage`."""
    if isinstance(data, Lineage):
        return data
    if isinstance(data, list):  # a tree (see tracing.lineage.tree)
        from ..lineage.tree import parse_truth
        return _lineage_from_parents(parse_truth(data, source), None, source)
    if not isinstance(data, dict):
        raise TracingError(f"the lineage in {source} must be a mapping of model → parent")
    models = data.get("models", data) if isinstance(data.get("models"), dict) else data
    parents, roots = {}, {}
    for name, info in models.items():
        if isinstance(info, dict):
            parents[str(name)] = info.get("parent")
            if info.get("root"):
                roots[str(name)] = str(info["root"])
        elif info is None or isinstance(info, str):
            parents[str(name)] = info
        else:
            raise TracingError(f"the lineage in {source}: entry {name!r} must be a parent name, null, or "
                               f"{{'parent': ..., 'root': ...}}")
    return _lineage_from_parents(parents, roots, source)


def read_lineage(path: str | os.PathLike) -> Lineage:
    p = Path(path)
    if not p.is_file():
        raise TracingError(f"lineage file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TracingError(f"the lineage file {p} is not text (UTF-8); give a JSON or YAML file of "
                           f"model → parent") from None
    except OSError as e:
        raise TracingError(f"cannot read the lineage file {p} ({e.strerror or e})") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001
        raise TracingError(f"cannot read the lineage file {p}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return parse_lineage(data, str(p))


def demo_lineage() -> Lineage:
    """The demo family's lineage (from the recipes; the family need not be built)."""
    from .. import demo
    parents = {n: demo.RECIPES[n].parent for n in demo.MODEL_NAMES}
    return _lineage_from_parents(parents, {n: demo.root_of(n) for n in demo.MODEL_NAMES}, "the demo family")


def resolve_lineage(lineage, models: list[str]) -> Lineage | None:
    if lineage is not None and lineage is not False:
        if isinstance(lineage, (str, os.PathLike)):
            return read_lineage(lineage)
        return parse_lineage(lineage)
    if models and all(isinstance(m, str) and is_demo(m) for m in models):
        try:
            return demo_lineage()
        except TracingError:
            return None
    return None
