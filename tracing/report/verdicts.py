"""The one verdict rule of the report: significant when p ≤ the level."""
from __future__ import annotations

import math

#: slack of the comparison in log10 space (a p-value equal to the level is significant)
TOLERANCE = 1e-12


def finite(x) -> bool:
    import numpy as np
    return x is not None and isinstance(x, (int, float, np.floating)) and math.isfinite(float(x))


def verdict(log10p, significance: float) -> bool | None:
    """True when p ≤ ``significance``; None when there is no p-value."""
    if not finite(log10p):
        return None
    return float(log10p) <= math.log10(float(significance)) + TOLERANCE


def label(log10p, significance: float) -> str | None:
    v = verdict(log10p, significance)
    return None if v is None else ("dependent" if v else "not significant")
