"""Test statistics, registered by name; each declares its facts in a :class:`StatSpec`.

A statistic is one module of this package that registers itself at import::

    @register("cos", description=..., meaning=..., cost=..., check=...)
    def cos(ctx, base, ft): ...

Modules are found with :mod:`pkgutil` (a new statistic is a new file). A statistic that lives
outside this package is a module that calls :func:`register` at import: name it in the environment
variable ``TRACING_STATS`` (comma-separated module names, importable from ``PYTHONPATH``) or declare
it as an entry point of the group ``tracing.stats``, and every command (``main.py``, ``launch.py``
and its workers, the report) finds it; in a Python session, importing it is enough. This package imports no torch: statistic modules
import their heavy dependencies inside the functions. See docs/methods.md for the definitions.
"""
from __future__ import annotations

import importlib
import os
import pkgutil

from ..errors import TracingError
from .spec import COMMON_OPTIONS, DATA_OPTIONS, Cost, StatSpec  # noqa: F401 (re-exported: callers import them from here)

REGISTRY: dict[str, StatSpec] = {}
ALIASES: dict[str, str] = {}
#: modules of this package that are not statistics
_HELPERS = {"spec", "cost", "base", "blockmap", "experts", "expert_map", "experts_sampled"}
_loaded = False
PLUGINS_ENV = "TRACING_STATS"


def register(spec_or_name, **facts):
    """Register a statistic: ``register(StatSpec(...))``, or as a decorator
    ``@register(name, **facts)`` over ``fn(ctx, base, ft) -> StatResult``."""
    if isinstance(spec_or_name, StatSpec):
        spec = spec_or_name
        _check_free(spec)
        REGISTRY[spec.name] = spec
        for a in spec.aliases:
            ALIASES[a] = spec.name
        return spec

    def deco(fn):
        register(StatSpec(spec_or_name, fn, **facts))
        return fn
    return deco


def _module(spec: StatSpec) -> str:
    return getattr(spec.ordinary, "__module__", None) or "?"


def _check_free(spec: StatSpec) -> None:
    """A statistic's name and aliases must not be taken by another module's statistic (the same
    module registering again, e.g. reloaded, replaces its own)."""
    for word in (spec.name, *spec.aliases):
        owner = REGISTRY.get(ALIASES.get(word, word))
        if owner is None or _module(owner) == _module(spec):
            continue
        what = "name" if word == owner.name else f"alias of {owner.name!r}"
        raise TracingError(f"the statistic {spec.name!r} of module {_module(spec)} uses {word!r}, which is "
                           f"already the {what} registered by module {_module(owner)}; rename it in "
                           f"{_module(spec)}")


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for m in pkgutil.iter_modules(__path__):
        if m.name not in _HELPERS and not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")
    _load_plugins()


def _load_plugins() -> None:
    """Statistics defined outside this package: ``$TRACING_STATS`` and ``tracing.stats`` entry points."""
    from importlib.metadata import entry_points
    for name in filter(None, (x.strip() for x in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise TracingError(f"{PLUGINS_ENV} names the module {name!r}, which cannot be imported ({e}); "
                               f"put its folder on PYTHONPATH or fix the name") from None
    for ep in entry_points(group="tracing.stats"):
        ep.load()


def names() -> list[str]:
    """Every registered statistic, in registration order."""
    _load_all()
    return list(REGISTRY)


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


def __getattr__(name):  # the torch-using types load on first use
    if name in ("Context", "StatResult"):
        from . import base
        return getattr(base, name)
    raise AttributeError(name)


__all__ = ["Context", "Cost", "StatResult", "StatSpec", "register", "canonical", "get", "names", "known_names",
           "REGISTRY"]
