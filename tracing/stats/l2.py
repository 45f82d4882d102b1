"""φ_ℓ2: mean over tensors of the Frobenius distance, with an exact PERMTEST p-value.

The null draws T random function-preserving permutations of θ₂ (one residual permutation and one
per MLP: per block, or per expert of a mixture-of-experts block) and recomputes the distance; each
tensor pair is read once for all T draws.
"""
from . import register
from .spec import NUM_PERM, Cost, Similarity, same_layout

DEFAULT_T = 99


class PermDraws:
    """T independent random (π_e, π_i) draws, reproducible from a seed, generated block by block."""

    def __init__(self, arch, T: int, seed: int):
        import torch

        from ..transforms import generator
        self.arch, self.T, self.seed = arch, T, seed
        self.pi_e = [torch.randperm(arch.d, generator=generator(seed * 7919 + t)) for t in range(T)]
        self._block, self._pi_i = None, {}

    def view(self, source, t: int, block: int | None):
        import torch

        from ..transforms import Permuted, generator
        if block is not None and block != self._block:
            self._block = block  # every MLP of the block: its dense MLP, or each expert (k: its place)
            self._pi_i = {u.key: [torch.randperm(u.width, generator=generator(
                self.seed * 7919 + 104729 * (block + 1) + 1000003 * k + s)) for s in range(self.T)]
                for k, u in enumerate(self.arch.units(block))}
        return Permuted(source, self.pi_e[t], {key: ps[t] for key, ps in self._pi_i.items()} if block is not None
                        else None)


def _cost(s):
    T = DEFAULT_T if s.options.num_perm is None else s.options.num_perm
    from .cost import ELEMS_PER_S_2CORES
    return Cost(3 * s.largest * 4, s.read_s + (1 + T) * (s.a_params + s.b_params) / (ELEMS_PER_S_2CORES * s.speed))


@register("l2", label="mean ℓ2 distance", pvalue="num_perm", default_num_perm=DEFAULT_T, aligned_pvalue=False,
          reads=("num_perm",), check=same_layout("l2"), cost=_cost, value_name="mean Frobenius distance",
          similarity=Similarity("statistic", "-l2", sign=-1.0, shared=True), options=(NUM_PERM,),
          description="mean Frobenius distance of the weights (φ_ℓ2) with a permutation test",
          meaning="φ_ℓ2 (`l2`): mean Frobenius distance of the weights, with a permutation test (PERMTEST); the "
                  "p-value is exact under the independent-initialisation null, and can be no smaller than 1/(T+1) "
                  "for T permutations. After `--align` only the distance is reported (no p-value).")
def l2(ctx, base, ft):
    import torch
    from tqdm.auto import tqdm

    from .. import pvalues
    from ..arch import require_same_layout
    from .base import StatResult
    require_same_layout(base.arch, ft.arch, "l2")
    T = DEFAULT_T if ctx.options.num_perm is None else ctx.options.num_perm
    draws = PermDraws(ft.arch, T, ctx.options.seed + 1) if T else None
    names = base.arch.names()
    observed, null = 0.0, torch.zeros(T, dtype=torch.float64)
    for name in tqdm(names, desc="l2", disable=not ctx.progress, leave=False):
        role, block = base.arch.role_of(name)
        a, b = base.get(name), ft.get(name)
        if role in ("embed", "lm_head"):
            n = min(a.shape[0], b.shape[0])
            a, b = a[:n], b[:n]
        observed += float(torch.linalg.vector_norm(a - b))
        for t in range(T):
            bt = draws.view(ft, t, block).apply(name, b)
            null[t] += float(torch.linalg.vector_norm(a - bt))
    k = len(names)
    obs = observed / k
    extra = {"num_tensors": k, "num_perm": T}
    if not T:
        return StatResult("l2", obs, None, [], extra)
    null_mean = (null / k).tolist()
    p, lp = pvalues.permtest(obs, null_mean)
    extra["null"] = null_mean
    return StatResult("l2", obs, lp, [], extra, exact_pvalue=p)
