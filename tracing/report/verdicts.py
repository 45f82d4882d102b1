"""The report's verdicts: the toolkit's one rule (:mod:`tracing.verdict`), significant when p ≤ the level."""
from __future__ import annotations

from ..results import finite
from ..verdict import TOLERANCE as _TOL
from ..verdict import is_dependent
from ..verdict import verdict as _verdict

#: slack of the comparison in log10 space (a p-value equal to the level is significant)
TOLERANCE = _TOL


def verdict(log10p, significance: float) -> bool | None:
    """True when p ≤ ``significance``; None when there is no (finite) p-value."""
    if not finite(log10p):
        return None
    return is_dependent(log10p, float(significance))


def label(log10p, significance: float, exact: bool = True) -> str | None:
    """The verdict in words; an approximate test's "dependent" says so."""
    return _verdict(log10p, float(significance), exact=exact) if finite(log10p) else None
