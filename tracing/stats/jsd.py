"""φ_JSD: Jensen–Shannon divergence of next-token distributions over the shared vocabulary
(per token ½Σ_v[p log(p/m) + q log(q/m)], averaged over tokens); reported raw, no p-value."""
import math

from . import register
from .spec import Cost


def jsd_per_token(logits_p, logits_q, n: int):
    import torch
    lp = torch.log_softmax(logits_p[..., :n].double(), dim=-1)
    lq = torch.log_softmax(logits_q[..., :n].double(), dim=-1)
    lm = torch.logaddexp(lp, lq) - math.log(2.0)
    return 0.5 * ((lp.exp() * (lp - lm)).sum(-1) + (lq.exp() * (lq - lm)).sum(-1))


def _cost(s):
    kept = 0 if s.a.L == s.b.L else s.tokens * s.Vs * 4  # θ₁'s logits, kept between the two passes
    return Cost(s.forward_mem("jsd") + s.logits_mem + kept, s.read_s + s.fwd_s("a") + s.fwd_s("b"))


@register("jsd", label="JSD", needs_data=True, pvalue="never", cost=_cost, value_name="mean Jensen–Shannon divergence (nats)",
          description="Jensen-Shannon divergence of the output distributions (no p-value)",
          meaning="Jensen–Shannon divergence (`jsd`) of the next-token distributions: smaller means more similar "
                  "outputs; there is no p-value and no verdict.")
def jsd(ctx, base, ft):
    from .base import StatResult
    n = ctx.shared_vocab(base, ft)
    ids = ctx.data()
    total, count = 0.0, 0

    def on_logits(_b, logits, _ids):
        nonlocal total, count
        j = jsd_per_token(logits[0], logits[1], n)
        total += float(j.sum())
        count += j.numel()

    a, b = base.arch, ft.arch
    if a.L == b.L:
        ctx.engine().run([base, ft], ids, on_logits=on_logits, desc="jsd: forward")
    else:  # different depths cannot run in lockstep: θ₁'s logits over the shared vocabulary are kept
        kept = {}
        ctx.engine().run([base], ids, on_logits=lambda b_, lg, _i: kept.__setitem__(b_.start, lg[0][..., :n].clone()),
                         desc="jsd: forward θ₁")
        ctx.engine().run([ft], ids, on_logits=lambda b_, lg, i_: on_logits(b_, [kept.pop(b_.start), lg[0]], i_),
                         desc="jsd: forward θ₂")
    return StatResult("jsd", total / count, None, [], {"shared_vocab": n, "num_tokens": count})
