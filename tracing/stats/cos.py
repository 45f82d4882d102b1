"""φ_U: per block, Spearman(MATCH(U₁, U₂), identity) on the rows of ``mlp.up_proj``; Fisher over blocks.

When either model has mixture-of-experts blocks, every pair of MLPs chosen by
:mod:`tracing.experts` (matched experts, or each expert against a dense MLP) is tested instead.
"""
from ..align import match_layers
from ..arch import require_same_blocks
from ..errors import TracingError
from . import register
from .base import spearman_layers


@register("cos", needs_data=False, has_pvalue=True, aliases=("csu",),
          description="cosine similarity of MLP up-projection rows (φ_U), exact p-value under independent init")
def cos(ctx, base, ft):
    if base.arch.has_experts or ft.arch.has_experts:
        return _cos_experts(ctx, base, ft)
    require_same_blocks(base.arch, ft.arch, "cos")

    def load(i):
        return base.get(base.arch.units(i)[0].up), ft.get(ft.arch.units(i)[0].up)

    perms = match_layers(range(base.arch.L), load, mem_budget_bytes=ctx.mem_budget_bytes,
                         desc="cos: match up_proj rows" if ctx.progress else None)
    return spearman_layers(perms, ctx, "cos")


def _cos_experts(ctx, base, ft):
    from ..experts import block_pairs, expert_result, expert_similarity, grid_columns
    a, b = base.arch, ft.arch
    if a.L != b.L or a.d != b.d:
        raise TracingError(f"cos needs the same number of blocks and residual width (L {a.L} vs {b.L}, "
                           f"d {a.d} vs {b.d}); compare models of the same depth and width")
    pairs, partners = [], {}
    for i in range(a.L):
        block, partners[i] = block_pairs(i, a.units(i), b.units(i),
                                         lambda ua, ub: expert_similarity(base.get(ua.up), ft.get(ub.up)))
        pairs += block
    if not pairs:
        raise TracingError("cos found no pair of MLPs of equal width to compare (experts and dense MLP differ "
                           "in width); use match on activations of models with equal widths")
    perms = match_layers(range(len(pairs)), lambda k: (base.get(pairs[k].a.up), ft.get(pairs[k].b.up)),
                         mem_budget_bytes=ctx.mem_budget_bytes,
                         desc="cos: match expert up rows" if ctx.progress else None)
    return expert_result("cos", pairs, perms, partners, a.L, grid_columns(a, b), ctx.options.alternative)
