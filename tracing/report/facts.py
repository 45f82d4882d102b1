"""Every per-statistic fact the report uses, looked up in the statistics' own declarations.

The rest of the report asks these functions and never compares a statistic's name itself; a
statistic this toolkit does not know gets neutral answers.
"""
from __future__ import annotations

from ..results import stat_spec as _spec


def meaning(stat: str) -> str:
    spec = _spec(stat)
    if spec is None:
        return f"`{stat}`: see the statistic's description (`python main.py --help`)."
    return spec.meaning


def kind(stat: str) -> str:
    """``exact`` / ``approximate`` / ``no p-value`` (``unknown`` for an unknown statistic)."""
    spec = _spec(stat)
    if spec is None:
        return "unknown"
    return spec.pvalue_kind or "no p-value"


def has_pvalue(stat: str) -> bool | None:
    """From the statistic's registration; None for a statistic this toolkit does not know."""
    spec = _spec(stat)
    return None if spec is None else bool(spec.has_pvalue)


def variant_flags(stat: str) -> tuple[str, ...]:
    """Options that change what a statistic measures (they name a separate grid)."""
    spec = _spec(stat)
    return tuple(spec.variant_flags) if spec is not None else ()


def per_block_stats() -> tuple[str, ...]:
    """Statistics with a p-value per block."""
    from ..stats import get, names
    return tuple(n for n in names() if get(n).per_block)


def panel_label(stat: str, alphas: set[float]) -> str:
    """What a heatmap panel without p-values shows."""
    spec = _spec(stat)
    if spec is None:
        return "statistic"
    label = spec.label or spec.value_name
    if spec.at_alpha:
        return f"{label} at α={next(iter(alphas)):g}" if len(alphas) == 1 else f"{label} at α"
    return label
