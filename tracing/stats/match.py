"""φ_MATCH (robust): per block, Spearman(MATCH(H_gate₁, H_gate₂), MATCH_|cos|(H_up₁, H_up₂)).

Survives MLP and residual permutation, rotation, and per-unit scaling of θ₂ including sign flips.
Empirically calibrated (not exact) under independence.

Models whose depth or widths differ are compared block pair by block pair (the block map,
:mod:`tracing.stats.blockmap`; also with ``--localized``); with ``--rows K`` the block map tests K sampled
units of θ₁ (the same in every block) against every unit of θ₂, each cell screened first.

Degenerate units and how the pairs are formed: a hidden unit of either model is dropped when its
gate or its up activation row (over the evaluation tokens) is zero or holds a non-finite value,
or is an exact copy of an earlier kept unit's gate row or (up to sign) up row (a copied unit ties
with its original in every cosine); it is then left out of *both* matchings, so the two matchings
see the same kept units.  Let n₁ and n₂ be the kept units of θ₁ and θ₂.  If n₁ ≤ n₂, every kept
unit i of θ₁ has a partner g(i) in the gate matching and u(i) in the up matching, and the pairs are
(g(i), u(i)), indices of θ₂'s units.
If n₁ > n₂, every kept unit j of θ₂ has partners g⁻¹(j) and u⁻¹(j) among θ₁'s units, and the
pairs are (g⁻¹(j), u⁻¹(j)).  SPEARMAN is the rank correlation of the two sequences of a pair; with
equal widths and no degenerate unit this is Spearman(π_gate, π_up) over all h units.

When either model has mixture-of-experts blocks, each pair of MLPs chosen by
:mod:`tracing.stats.experts` is compared in the same way on its activations over every token; when
their depths differ (or with ``--localized``), every block pair of the same kind is a cell of the
block map, its experts paired on their activations (:mod:`tracing.stats.expert_map`).
"""
from ..errors import TracingError
from . import register
from .spec import EXPERT_MAP, EXPERTS, LOCALIZED, ROWS, Cost, Variant, block_map, expert_block_map, has_experts


def _check(a, b, options):
    from ..arch import require_expert_width, require_gated, require_same_depth  # loads torch
    require_gated(a, b, "match")
    if has_experts(a, b) and getattr(options, "rows", None) is not None:
        raise TracingError("--rows with match samples units of dense blocks only; between mixtures of experts match "
                           "reads every unit of every expert: drop --rows")
    if expert_block_map(a, b, options):
        from .expert_map import require_same_kind  # loads torch
        require_same_kind(a, b, "match")
    elif has_experts(a, b):
        require_same_depth(a, b, "match")  # other widths: the block map of experts (--localized)
        require_expert_width(a, b, "match")
    if getattr(options, "rows", None) is None:
        return
    if not _MAP.applies(a, b, options):
        raise TracingError("--rows with match samples θ₁'s units of the block map; add --localized "
                           "(or drop --rows: the per-layer match reads every unit)")
    if options.rows > a.h:
        raise TracingError(f"--rows {options.rows} is larger than θ₁'s MLP width h={a.h}; give at most {a.h} "
                           f"(or leave --rows out for the full block map)")


def _cost(s):
    t = s.read_s + s.fwd_s("a") + s.fwd_s("b") + s.L * 2 * (s.mm(s.h, s.h, s.tokens) + s.solve_s(s.h) / s.par)
    return Cost(s.forward_mem("match") + s.solves * s.per_solve, t, True)


def _experts(ctx, base, ft):
    from .experts import activation_stat  # loads torch
    return activation_stat(ctx, base, ft, "match", gated=True)


_EXPERT_MAP = Variant(EXPERT_MAP, expert_block_map, "tracing.stats.expert_map:match_expert_map",
                      "tracing.stats.expert_map:activation_map_cost")
_MAP = block_map(("L", "d", "h"), "tracing.stats.blockmap:match_map", "tracing.stats.blockmap:match_cost")


@register("match", per_block=True, needs_data=True, exact=False, check=_check, cost=_cost,
          variants=(_EXPERT_MAP, Variant(EXPERTS, has_experts, _experts), _MAP), sampled="units", robust="raw",
          reads=("localized", "rows"), options=(LOCALIZED, ROWS), variant_flags=("rows",),
          description="robust matching of gate and up activations (φ_MATCH)",
          meaning="φ_MATCH (`match`): gate activations matched against |up| activations per block, Fisher over "
                  "blocks; its p-value is approximate — calibrated empirically (independent models give roughly "
                  "uniform p-values in experiments), not guaranteed by a theorem.")
def match(ctx, base, ft):
    from ..align import Matcher, kept_units  # loads torch
    from .base import gate_up_pairs, spearman_layers  # loads torch
    ids = ctx.data()
    gate = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)
    up = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)

    def on_block(i, caps):
        G1, G2, U1, U2 = caps[0].gate.T, caps[1].gate.T, caps[0].up.T, caps[1].up.T
        ok1, ok2 = kept_units(G1, U1), kept_units(G2, U2)
        gate.submit(i, G1, G2, keep1=ok1, keep2=ok2)
        up.submit(i, U1, U2, absolute=True, keep1=ok1, keep2=ok2)

    try:
        ctx.engine().run([base, ft], ids, on_block=on_block, desc="match: forward")
        pg, pu = gate.results(), up.results()
    finally:
        gate.close()
        up.close()
    return spearman_layers({i: gate_up_pairs(pg[i], pu[i]) for i in pg}, ctx, "match")
