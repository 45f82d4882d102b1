"""model-tracing: was language model B derived from model A? Answered with a p-value.

Main entry points: :func:`tracing.compare` (two models by id or folder) and
:func:`tracing.compare_models` (two models in memory) return a :class:`tracing.Result`;
:func:`tracing.run_pair` computes several statistics for one pair and returns their records;
:func:`tracing.verdict` is the verdict rule; :func:`tracing.results.load_results` reads a folder
of results. docs/methods.md describes the statistics and the record.
"""
__version__ = "0.1.0"

_API = ("compare", "compare_models", "run_pair", "summary", "Result")


def __getattr__(name):  # lazy: importing the package stays cheap
    if name in _API:
        from . import api
        return getattr(api, name)
    if name in ("verdict", "is_dependent"):
        from . import verdict as v
        return getattr(v, name)
    if name == "load_results":
        from .results import load_results
        return load_results
    raise AttributeError(name)


__all__ = [*_API, "verdict", "is_dependent", "load_results"]
