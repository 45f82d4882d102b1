"""model-tracing: was language model B derived from model A? Answered with a p-value.

Main entry points: :func:`tracing.compare` / :func:`tracing.run_pair` for one pair,
:func:`tracing.results.load_results` for a folder of results.
"""
__version__ = "0.1.0"


def __getattr__(name):  # lazy: importing the package stays cheap
    if name in ("compare", "run_pair", "summary"):
        from . import api
        return getattr(api, name)
    if name == "load_results":
        from .results import load_results
        return load_results
    raise AttributeError(name)
