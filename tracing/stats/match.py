"""φ_MATCH (robust): per block, Spearman(MATCH(H_gate₁, H_gate₂), MATCH_|cos|(H_up₁, H_up₂)).

Survives MLP and residual permutation, rotation, and per-unit scaling of θ₂ including sign flips.
Empirically calibrated (not exact) under independence.
"""
from ..align import Matcher
from ..errors import TracingError
from . import register
from .base import require_gated, spearman_layers


@register("match", needs_data=True, has_pvalue=True,
          description="robust matching of gate and up activations (φ_MATCH)")
def match(ctx, base, ft):
    require_gated("match", base, ft)
    if base.arch.has_experts or ft.arch.has_experts:
        from ..experts import activation_stat
        return activation_stat(ctx, base, ft, "match", gated=True)
    if base.arch.L != ft.arch.L or base.arch.h != ft.arch.h:
        raise TracingError(f"match needs the same number of blocks and MLP width here "
                           f"(L {base.arch.L} vs {ft.arch.L}, h {base.arch.h} vs {ft.arch.h})")
    ids = ctx.data()
    gate = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)
    up = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)

    def on_block(i, caps):
        gate.submit(i, caps[0].gate.T, caps[1].gate.T)
        up.submit(i, caps[0].up.T, caps[1].up.T, absolute=True)

    try:
        ctx.engine().run([base, ft], ids, on_block=on_block, desc="match: forward")
        pg, pu = gate.results(), up.results()
    finally:
        gate.close()
        up.close()
    return spearman_layers(pg, ctx, "match", reference=pu)
