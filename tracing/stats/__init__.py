"""Test statistics, registered by name (DESIGN §5).

Each statistic is a function ``fn(ctx, base, ft) -> StatResult`` over two weight sources.
"""
from __future__ import annotations

import importlib

from ..errors import TracingError
from .base import Context, StatResult, StatSpec

REGISTRY: dict[str, StatSpec] = {}
ALIASES: dict[str, str] = {}
_MODULES = ("cos", "emb", "l2", "csh", "match", "jsd", "mode")


def register(name: str, *, needs_data: bool, has_pvalue: bool, description: str, aliases=()):
    def deco(fn):
        REGISTRY[name] = StatSpec(name, fn, needs_data, has_pvalue, description)
        for a in aliases:
            ALIASES[a] = name
        return fn
    return deco


def _load_all():
    for m in _MODULES:  # cached by the import system after the first call
        importlib.import_module(f"{__name__}.{m}")


def known_names() -> str:
    _load_all()
    return ", ".join(list(REGISTRY) + [f"{a} (= {n})" for a, n in ALIASES.items()])


def canonical(name: str) -> str:
    _load_all()
    name = name.strip().lower()
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise TracingError(f"unknown statistic {name!r}; choose from {known_names()}")
    return name


def get(name: str) -> StatSpec:
    return REGISTRY[canonical(name)]


__all__ = ["Context", "StatResult", "StatSpec", "register", "canonical", "get", "known_names", "REGISTRY"]
