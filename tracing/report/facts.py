"""Every per-statistic fact the report uses, looked up in the statistics' own declarations.

The rest of the report asks these functions and never compares a statistic's name itself; a
statistic this toolkit does not know gets neutral answers.
"""
from __future__ import annotations

import math


def _spec(stat: str):
    """The registered facts of ``stat``; None for a statistic this toolkit does not know."""
    from ..errors import TracingError
    from ..stats import get
    try:
        return get(str(stat))
    except TracingError:
        return None


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


def spearman_floor_units(log10p: float, tol: float = 1e-9) -> int | None:
    """h when ``log10p`` is −log10(h!), the smallest p-value of a Spearman test on h units (a perfect
    match); else None."""
    if not (isinstance(log10p, (int, float)) and math.isfinite(log10p)) or log10p >= 0:
        return None
    target = -float(log10p) * math.log(10)
    lo, hi = 1, 2
    while math.lgamma(hi + 1) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if math.lgamma(mid + 1) < target else (lo, mid)
    for h in (lo, hi):
        if abs(math.lgamma(h + 1) - target) <= tol * max(1.0, target):
            return h
    return None


def at_floor(per_layer) -> bool:
    """Every block's p-value is the floor of its Spearman test (a perfect match in every block)."""
    lps = [x.get("log10_pvalue") for x in per_layer or [] if isinstance(x, dict)]
    return bool(lps) and all(spearman_floor_units(lp) is not None for lp in lps)
