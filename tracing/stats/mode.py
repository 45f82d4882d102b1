"""Mode connectivity: LM loss along the path θ(α) and its barrier.

The record names its endpoints unambiguously: ``loss_at_alpha0`` (θ(0) = θ₁) and ``loss_at_alpha1``
(θ(1), which is θ₂ only when every part is interpolated), ``path`` (which parts move) and
``barrier_endpoints`` (a sentence saying what the barrier is measured against).

Every α of the curve (and every PERMTEST draw) is a lane of one lockstep pass, so the weights of
θ₁ and θ₂ are read once per block for all of them.
"""
from . import register
from .l2 import PermDraws
from .spec import NUM_PERM, Cost, Flag, same_blocks

OPTIONS = (
    Flag("mlp_only", "{users}: interpolate only MLPs and norms (the path then ends at a hybrid, not θ₂); by "
                     "default every weight is interpolated"),
    Flag("attn", "{users}: with --mlp_only, also interpolate attention"),
    Flag("emb", "{users}: with --mlp_only, also interpolate embeddings, lm_head and final norm"),
    Flag("alpha", "{users}: interpolation weight of θ₂ (default: %(default)s)", "float"),
    Flag("alphas", "{users}: a curve, e.g. 0,0.25,0.5,0.75,1 (default: α only)", "floats"),
    NUM_PERM,
)

MAX_LANES = 8  # PERMTEST lanes per pass (bounds the hidden states held at once)


def _cost(s):
    o = s.options
    t = s.read_s + s.lanes("mode") * max(s.fwd_s("a"), s.fwd_s("b")) * (1 + (o.num_perm or 0))
    return Cost(s.forward_mem("mode") + s.logits_mem, t)


def _explain(rec):
    """The barrier at α; with ``--alphas`` the whole curve, one line per α."""
    x = rec.get("extra") or {}
    if x.get("barrier") is None:
        return []
    if (rec.get("args") or {}).get("alphas") and x.get("curve"):
        return ["curve (loss and barrier along the path):"] + [
            f"  α = {c['alpha']:g}: loss {c['loss']:.4f}, barrier {c['barrier']:.4f}" for c in x["curve"]]
    return [f"loss at α = {x['alpha']:g}: {x['loss_alpha']:.4f}, barrier {x['barrier']:.4f}"]


@register("mode", variant_flags=("attn", "emb"), label="loss", at_alpha=True, needs_data=True, pvalue="num_perm",
          aligned_pvalue=False, cost=_cost, explain=_explain,
          check=same_blocks("mode"), options=OPTIONS, lanes=lambda o: len(o.alphas or [o.alpha]),
          reads=("alpha", "alphas", "attn", "emb", "mlp_only", "num_perm"), value_name="LM loss at α",
          description="loss on the linear path between the models (mode connectivity), optional permutation test",
          meaning="mode connectivity (`mode`): LM loss at α (default 0.5) on the straight path between the models "
                  "(barrier beside it); with `--num_perm` > 0 a permutation test (PERMTEST) gives a p-value that is "
                  "exact under the independent-initialisation null (no smaller than 1/(T+1)); without it the loss "
                  "is reported raw, with no p-value. After `--align` only the loss is reported.")
def mode(ctx, base, ft):
    from .. import pvalues
    from ..evaluate import lm_losses
    from ..models import CachedSource
    from ..transforms import Interpolated
    from .base import StatResult
    o = ctx.options
    attn, emb = path_parts(o)
    alphas = sorted({0.0, 1.0, float(o.alpha), *[float(a) for a in (o.alphas or [])]})
    ids = ctx.data()
    c1, c2 = CachedSource(base), CachedSource(ft)
    n = ctx.shared_vocab(base, ft)  # embedding rows that mean the same token in both
    lanes = [Interpolated(c1, c2, a, attn=attn, emb=emb, shared=n) for a in alphas]
    losses = dict(zip(alphas, lm_losses(ctx.engine(), lanes, ids, desc="mode: path")))
    l0, l1 = losses[0.0], losses[1.0]
    curve = [{"alpha": a, "loss": losses[a], "barrier": losses[a] - ((1 - a) * l0 + a * l1)} for a in alphas]
    obs = losses[float(o.alpha)]
    extra = {"alpha": float(o.alpha), "loss_alpha": obs,
             "barrier": obs - ((1 - o.alpha) * l0 + o.alpha * l1), "curve": curve,
             "loss_at_alpha0": l0, "loss_at_alpha1": l1, "attn": attn, "emb": emb, **describe_path(attn, emb)}
    T = o.num_perm or 0
    if not T:
        return StatResult("mode", obs, None, [], extra)
    draws = PermDraws(ft.arch, T, o.seed + 1)
    null = []
    for start in range(0, T, MAX_LANES):
        ts = range(start, min(T, start + MAX_LANES))
        perm_lanes = [Interpolated(c1, _PermutedDraw(c2, draws, t), o.alpha, attn=attn, emb=emb, shared=n)
                      for t in ts]
        null += lm_losses(ctx.engine(), perm_lanes, ids, desc=f"mode: permutations {start + 1}-{ts[-1] + 1}/{T}")
    p, lp = pvalues.permtest(obs, null)
    extra["null"] = null
    extra["num_perm"] = T
    return StatResult("mode", obs, lp, [], extra, exact_pvalue=p)


def path_parts(o) -> tuple[bool, bool]:
    """(attention, embeddings) interpolated?  Both by default, so the path runs from θ₁ to θ₂;
    with ``mlp_only`` only MLPs and norms, plus whichever of ``attn`` / ``emb`` is set."""
    if not getattr(o, "mlp_only", False):
        return True, True
    return bool(o.attn), bool(o.emb)


def describe_path(attn: bool, emb: bool) -> dict:
    """``path`` (which parts move), ``barrier_endpoints`` and human ``notes`` for a record."""
    parts = ["mlp", "norms"] + (["attn"] if attn else []) + (["emb"] if emb else [])
    path = "all" if attn and emb else "+".join(parts)
    if attn and emb:
        ends = "the barrier is against the path's own endpoints: θ(0) is θ₁ and θ(1) is θ₂"
        notes = ["every weight is interpolated: the path runs from θ₁ to θ₂"]
    else:
        fixed = ", ".join(x for x, on in (("attention", attn), ("embeddings, lm_head and final norm", emb)) if not on)
        moved = "MLPs, norms and attention" if attn else "MLPs, norms and embeddings" if emb else "MLPs and norms"
        ends = ("the barrier is against the path's own endpoints: θ(0) is θ₁, but θ(1) is not θ₂ "
                f"(θ₂'s {moved} with θ₁'s {fixed})")
        notes = [f"only {moved} are interpolated and the rest ({fixed}) is θ₁'s, so α = 1 is a hybrid, not θ₂, "
                 f"and the barrier is measured against that hybrid (without --mlp_only the path runs from θ₁ to θ₂)"]
    return {"path": path, "barrier_endpoints": ends, "notes": notes}


def _PermutedDraw(inner, draws: PermDraws, t: int):
    """θ₂ under PERMTEST draw t (residual and every block's MLP permutation)."""
    import torch

    from ..transforms import View

    class PermutedDraw(View):
        def get(self, name, dtype=torch.float32):
            _, block = self.arch.role_of(name)
            return draws.view(self.inner, t, block).get(name, dtype)

    return PermutedDraw(inner)
