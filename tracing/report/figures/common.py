"""Shared by the figures: matplotlib without a display, labels, line styles."""
from __future__ import annotations

from pathlib import Path

from ...specs import demo_name, is_demo

#: colour scale of −log10 p stops here (p ≤ 1e-50 all look the same)
CAP = 50.0


def plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot
    from ...glyphs import setup
    setup()
    return pyplot


def short_name(model: str) -> str:
    """A compact label: ``demo:a-docs`` → ``a-docs``; a local folder → its name; hub ids unchanged;
    characters no installed font can draw transliterated (see :mod:`tracing.glyphs`)."""
    from ...glyphs import drawable
    m = str(model)
    if is_demo(m):
        return drawable(demo_name(m))
    if m.startswith(("/", ".", "~")):
        return drawable(Path(m.rstrip("/")).name or m)
    return drawable(m)


def pair_label(a, b) -> str:
    return f"{short_name(a)} vs {short_name(b)}"


def dep_style(dep) -> tuple[str, str]:
    if dep is True:
        return "-", "dependent"
    if dep is False:
        return "--", "independent"
    return ":", ""


def family_breaks(models: list[str], lineage) -> list[int]:
    if lineage is None:
        return []
    roots = [lineage.root(m) for m in models]
    return [i for i in range(1, len(models)) if roots[i] != roots[i - 1]]


def pvalue_ticks(cb, compact: bool = False) -> None:
    if compact:
        cb.set_ticks([2, 20, 50], labels=["0.01", "1e-20", "≤1e-50"])
    else:
        cb.set_ticks([0, 2, 10, 20, 30, 40, 50], labels=["1", "0.01", "1e-10", "1e-20", "1e-30", "1e-40", "≤1e-50"])
