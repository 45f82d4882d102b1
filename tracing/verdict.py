"""The toolkit's one verdict rule (importable without torch).

A pair is called *dependent* at level α when p ≤ α, compared in log space with a tolerance of 1e-12
so that a permutation test's p = 1/(T+1) reaches α = 1/(T+1) (e.g. 0.01 with T = 99).
"""
from __future__ import annotations

import math

TOLERANCE = 1e-12  # in log10 units

NULL = "θ₁ and θ₂ were trained from independent random initialisations"
INTERPRETATION = ("A small p-value says the weights share an initialisation (fine-tune, continued pre-training, "
                  "pruning, merge, or quantization of a common ancestor); a large one does not prove "
                  "independence, and a model distilled only from another's outputs is independent under this null.")
FLOOR = "at the floor of this test (perfect match in every block)"


def is_dependent(log10_pvalue, significance: float = 0.01) -> bool | None:
    """p ≤ significance (log space, tolerance 1e-12); None when there is no p-value."""
    if log10_pvalue is None:
        return None
    lp = float(log10_pvalue)
    if math.isnan(lp):
        return None
    return lp <= math.log10(significance) + TOLERANCE


def verdict(log10_pvalue, significance: float = 0.01, exact: bool = True) -> str | None:
    """``"dependent"`` or ``"not significant"`` (None without a p-value); an approximate test's
    verdict says so: ``"dependent (approximate test)"``."""
    dep = is_dependent(log10_pvalue, significance)
    if dep is None:
        return None
    word = "dependent" if dep else "not significant"
    return word if exact else f"{word} (approximate test)"
