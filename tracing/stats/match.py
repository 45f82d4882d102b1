"""φ_MATCH (robust): per block, Spearman(MATCH(H_gate₁, H_gate₂), MATCH_|cos|(H_up₁, H_up₂)).

Survives MLP and residual permutation, rotation, and per-unit scaling of θ₂ including sign flips.
Empirically calibrated (not exact) under independence.
"""
from ..errors import TracingError
from . import register
from .spec import Cost


def _check(a, b, _options):
    if a.L != b.L or a.h != b.h:
        raise TracingError(f"match needs the same number of blocks and MLP width here "
                           f"(L {a.L} vs {b.L}, h {a.h} vs {b.h}); compare models of one shape")


def _cost(s):
    t = s.read_s + s.fwd_s("a") + s.fwd_s("b") + s.L * 2 * (s.mm(s.h, s.h, s.tokens) + s.solve_s(s.h) / s.par)
    return Cost(s.forward_mem("match") + s.solves * s.per_solve, t, True)


@register("match", needs_data=True, exact=False, check=_check, cost=_cost,
          description="robust matching of gate and up activations (φ_MATCH)",
          meaning="φ_MATCH (`match`): gate activations matched against |up| activations per block, Fisher over "
                  "blocks; its p-value is approximate — calibrated empirically (independent models give roughly "
                  "uniform p-values in experiments), not guaranteed by a theorem.")
def match(ctx, base, ft):
    from ..align import Matcher
    from .base import spearman_layers
    _check(base.arch, ft.arch, ctx.options)
    ids = ctx.data()
    gate = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)
    up = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)

    def on_block(i, caps):
        gate.submit(i, caps[0].gate.T, caps[1].gate.T)
        up.submit(i, caps[0].up.T, caps[1].up.T, absolute=True)

    try:
        ctx.engine().run([base, ft], ids, on_block=on_block, desc="match: forward")
        pg = {i: r.cols for i, r in gate.results().items()}
        pu = {i: r.cols for i, r in up.results().items()}
    finally:
        gate.close()
        up.close()
    return spearman_layers(pg, ctx, "match", reference=pu)
