"""φ_H: as ``cos`` but on hidden activations (rows = up_proj units, columns = tokens).

When either model has mixture-of-experts blocks, each pair of MLPs chosen by
:mod:`tracing.stats.experts` is compared on its activations over every token; when their depths
differ, every block pair of the same kind is a cell of the block map, its experts paired on their
activations (:mod:`tracing.stats.expert_map`)."""
from . import register
from .spec import EXPERT_MAP, EXPERTS, Cost, Variant, has_experts, same_blocks


def _depths_differ(a, b, _options=None) -> bool:
    """Mixtures of experts of different depths: the block map of experts."""
    return has_experts(a, b) and a.L != b.L


def _check(a, b, options):
    if _depths_differ(a, b):
        from .expert_map import require_same_kind  # loads torch
        require_same_kind(a, b, "csh")
    elif has_experts(a, b):
        from ..arch import require_expert_width, require_same_depth  # loads torch
        require_same_depth(a, b, "csh")
        require_expert_width(a, b, "csh")
    else:
        same_blocks("csh")(a, b, options)


def _cost(s):
    t = s.read_s + s.fwd_s("a") + s.fwd_s("b") + s.L * (s.mm(s.h, s.h, s.tokens) + s.solve_s(s.h) / s.par)
    return Cost(s.forward_mem("csh") + s.solves * s.per_solve, t, True)


def _experts(ctx, base, ft):
    from .experts import activation_stat  # loads torch
    return activation_stat(ctx, base, ft, "csh", gated=False)


@register("csh", per_block=True, needs_data=True, default_dataset="random", check=_check, cost=_cost,
          variants=(Variant(EXPERT_MAP, _depths_differ, "tracing.stats.expert_map:csh_expert_map",
                            "tracing.stats.expert_map:activation_map_cost"), Variant(EXPERTS, has_experts, _experts)),
          description="cosine similarity of MLP up-projection activations (φ_H)",
          meaning="φ_H (`csh`): as `cos`, on hidden activations of up_proj; the p-value is exact under the null "
                  "that the two models were initialised independently.")
def csh(ctx, base, ft):
    from ..align import Matcher  # loads torch
    from .base import pairs_of, spearman_layers  # loads torch
    ids = ctx.data()
    m = Matcher(mem_budget_bytes=ctx.mem_budget_bytes)
    try:
        ctx.engine().run([base, ft], ids, on_block=lambda i, caps: m.submit(i, caps[0].up.T, caps[1].up.T),
                         desc="csh: forward")
        matched = m.results()
    finally:
        m.close()
    return spearman_layers({i: pairs_of(r) for i, r in matched.items()}, ctx, "csh")
