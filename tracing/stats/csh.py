"""φ_H: as ``cos`` but on hidden activations (rows = up_proj units, columns = tokens)."""
from ..align import Matcher
from ..arch import require_same_blocks
from . import register
from .base import spearman_layers


@register("csh", needs_data=True, has_pvalue=True,
          description="cosine similarity of MLP up-projection activations (φ_H)")
def csh(ctx, base, ft):
    if base.arch.has_experts or ft.arch.has_experts:
        from ..experts import activation_stat
        return activation_stat(ctx, base, ft, "csh", gated=False)
    require_same_blocks(base.arch, ft.arch, "csh")
    ids = ctx.data()
    m = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)
    try:
        ctx.engine().run([base, ft], ids, on_block=lambda i, caps: m.submit(i, caps[0].up.T, caps[1].up.T),
                         desc="csh: forward")
        perms = m.results()
    finally:
        m.close()
    return spearman_layers(perms, ctx, "csh")
