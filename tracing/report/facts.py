"""Every per-statistic fact the report uses, in one place.

The rest of the report asks these functions and never compares a statistic's name itself.
"""
from __future__ import annotations

import math

#: what one statistic's p-value means (report.md)
MEANING = {
    "cos": "φ_U (`cos`): up_proj rows matched per block, Spearman against the identity, Fisher over blocks; the "
           "p-value is exact under the null that the two models were initialised independently, whatever "
           "training followed.",
    "csh": "φ_H (`csh`): as `cos`, on hidden activations of up_proj; the p-value is exact under the null that the "
           "two models were initialised independently.",
    "l2": "φ_ℓ2 (`l2`): mean Frobenius distance of the weights, with a permutation test (the distance compared "
          "with the distances after random permutations of the hidden units); the p-value is exact under the "
          "independent-initialisation null, and can be no smaller than 1/(T+1) for T permutations.",
    "mode": "mode connectivity (`mode`): LM loss at α (default 0.5) on the straight path between the models "
            "(barrier beside it); with `--num_perm` > 0 a permutation test (the loss compared with the losses "
            "after random permutations of the hidden units) gives a p-value that is exact under the "
            "independent-initialisation null (no smaller than 1/(T+1)); without it the loss is reported raw, "
            "with no p-value.",
    "emb": "embeddings (`emb`): embedding dimensions matched over the shared vocabulary, Spearman against the "
           "identity; the p-value is exact under the null that the two embedding matrices were initialised "
           "independently.",
    "match": "φ_MATCH (`match`): gate activations matched against |up| activations per block, Fisher over blocks; "
             "its p-value is calibrated empirically (independent models give roughly uniform p-values in "
             "experiments), not guaranteed by a theorem.",
    "jsd": "Jensen–Shannon divergence (`jsd`) of the next-token distributions: smaller means more similar "
           "outputs; there is no p-value and no verdict.",
}

#: whether the p-value is exact under the null or only calibrated empirically
KIND = {"cos": "exact", "csh": "exact", "l2": "exact", "mode": "exact", "emb": "exact", "match": "approximate"}

#: options that change what a statistic measures (they name a separate grid)
VARIANT_FLAGS = {"mode": ("attn", "emb")}

#: what the heatmap shows for a statistic without p-values
PANEL_LABEL = {"jsd": "JSD", "l2": "mean ℓ2 distance"}

#: statistics with a p-value per block (named where the per-block figure has nothing to show)
PER_BLOCK = ("cos", "csh", "match")

#: statistics whose value is a loss at an interpolation point α (the panel names the α)
LOSS_AT_ALPHA = ("mode",)


def meaning(stat: str) -> str:
    return MEANING.get(stat, f"`{stat}`: see the statistic's description (`python main.py --help`).")


def kind(stat: str) -> str:
    """``exact`` / ``approximate`` / ``no p-value``."""
    if stat in KIND:
        return KIND[stat]
    return "no p-value" if has_pvalue(stat) is False else "unknown"


def has_pvalue(stat: str) -> bool | None:
    """From the statistic's registration; None for a statistic this toolkit does not know."""
    try:
        from ..stats import get
        return bool(get(stat).has_pvalue)
    except Exception:  # noqa: BLE001 - an unknown statistic
        return None


def variant_flags(stat: str) -> tuple[str, ...]:
    return VARIANT_FLAGS.get(stat, ())


def panel_label(stat: str, alphas: set[float]) -> str:
    """What a heatmap panel without p-values shows."""
    if stat in LOSS_AT_ALPHA:
        return f"loss at α={next(iter(alphas)):g}" if len(alphas) == 1 else "loss at α"
    return PANEL_LABEL.get(stat, "statistic")


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
