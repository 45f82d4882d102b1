"""φ_U: per block, Spearman(MATCH(U₁, U₂), identity) on the rows of ``mlp.up_proj``; Fisher over blocks."""
from ..align import match_layers
from ..arch import require_same_blocks
from . import register
from .base import spearman_layers


@register("cos", needs_data=False, has_pvalue=True, aliases=("csu",),
          description="cosine similarity of MLP up-projection rows (φ_U), exact p-value under independent init")
def cos(ctx, base, ft):
    require_same_blocks(base.arch, ft.arch, "cos")

    def load(i):
        name = base.arch.block_name(i, "up")
        return base.get(name), ft.get(name)

    perms = match_layers(range(base.arch.L), load, mem_budget_bytes=ctx.mem_budget_bytes,
                         desc="cos: match up_proj rows" if ctx.progress else None)
    return spearman_layers(perms, ctx, "cos")
