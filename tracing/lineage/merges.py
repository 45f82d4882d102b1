"""Merge attribution: which parents a model mixes, and with what weights.

For a model M and candidate parents P₁..P_k, per block (and over the whole model) the fit is

- with a common ancestor B:   w ≥ 0 minimising ‖(M − B) − Σ w_k (P_k − B)‖²;
- without one:               w ≥ 0, Σ w_k = 1, minimising ‖M − Σ w_k P_k‖².

The weights are streamed one tensor at a time: only the k×k Gram matrix of the (differenced)
parents and their inner products with M are accumulated, per block, then the small system is
solved with ``scipy.optimize.nnls``. A linear merge is recovered exactly; TIES/DARE-style merges
give the right parents with biased weights.

When is M a merge? ``unexplained`` is the part of ‖M − B‖² (without B: of ‖M − P_nearest‖², what
the nearest parent alone leaves) that the fit leaves; ``single`` is the same for the fine-tune
hypothesis M = P_j + δ with the nearest candidate P_j (B included). M is called a merge when all of:

1. at least two parents carry at least ``min_weight`` (0.1) of the total weight;
2. together they explain at least 40% of what the nearest single parent leaves unexplained
   (``unexplained ≤ max_ratio × single``, ``max_ratio`` 0.6) — a fine-tune's own update is not
   a mix of the other parents' updates;
3. with B: the weights are a mix, summing to at most ``max_total`` (1.25) — M = P_j + (an update
   that resembles another model's update) gives P_j a weight near 1 plus the other's: a sum near 2;
4. when the lineage is known: no parent is an ancestor of another (a model between an ancestor
   and its descendant lies on one lineage).

The fit may be restricted to some tensors (``tensors``: groups of roles such as ``norms``,
``routers``, ``shared``; :data:`TENSOR_GROUPS`): a merge check of a frontier mixture of experts then
reads a few MB per tensor instead of the whole model, and a hub model not in the local cache is
read by range requests (only those tensors; :mod:`tracing.sources.remote`).

Limits: a task-arithmetic merge with full weights (M = B + τ₁ + τ₂) is called a fine-tune of
one parent by rule 3, and a fine-tune on data like another model's fine-tuning data can look
like a merge of the two; the weights are reported either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..arch import require_same_blocks
from ..errors import TracingError
from .known import ancestors, is_ancestor

MIN_WEIGHT = 0.1
MAX_RATIO = 0.6
MAX_TOTAL = 1.25
CHUNK = 1 << 22  # elements per float64 slice of a tensor

_GROUPS = {
    "norms": lambda role: "norm" in role,
    "routers": lambda role: role.startswith("router") or role == "shared_router",
    "shared": lambda role: role.startswith("shared_"),
    "embed": lambda role: role in ("embed", "lm_head"),
    "experts": lambda role: role.startswith("expert_"),
    "mlp": lambda role: role.split("_")[0] in ("gate", "up", "down"),
}
#: groups of tensor roles a merge fit may be restricted to (any role name may be given too); the
#: attention group is every role of a block in no other group
TENSOR_GROUPS = {**_GROUPS, "attention": lambda role: not any(f(role) for f in _GROUPS.values())}


def parse_tensors(text: str | None) -> list[str] | None:
    """``"norms,routers"`` -> ``["norms", "routers"]`` (None or ``"all"``: every tensor)."""
    if text is None or str(text).strip() in ("", "all"):
        return None
    return [t.strip() for t in str(text).split(",") if t.strip()]


def selected_names(arch, tensors: list[str] | None, label: str = "model") -> list[str]:
    """The tensors of ``arch`` whose role is in one of the groups (or is one of the roles) ``tensors``."""
    names = arch.names()
    if tensors is None:
        return names
    roles = {arch.role_of(n)[0] for n in names}
    unknown = [t for t in tensors if t not in TENSOR_GROUPS and t not in roles]
    if unknown:
        raise TracingError(f"merge attribution: {unknown[0]!r} is neither a tensor group "
                           f"({', '.join(TENSOR_GROUPS)}) nor a role of {label}'s tensors "
                           f"({', '.join(sorted(roles))}); give a comma-separated list of these")

    def wanted(role):
        return any(role == t or (t in TENSOR_GROUPS and TENSOR_GROUPS[t](role)) for t in tensors)
    out = [n for n in names if wanted(arch.role_of(n)[0])]
    if not out:
        raise TracingError(f"merge attribution: {label} has no tensor in {', '.join(tensors)}; choose other "
                           f"groups (its roles: {', '.join(sorted(roles))})")
    return out


@dataclass
class MergeFit:
    """Weights of one fit. ``per_block``: ``{"block": i or "other", "weights": [...], "unexplained": f}``."""

    model: str
    parents: list[str]
    base: str | None
    weights: list[float]
    unexplained: float
    single: float
    single_parent: str
    per_block: list[dict] = field(default_factory=list)
    tensors: list[str] | None = None  # the groups of tensors fitted (None: all)


@dataclass
class MergeVerdict:
    model: str
    is_merge: bool
    parents: list[str]
    weights: dict[str, float]
    reason: str
    fit: MergeFit


def _open(spec, remote: bool = False):
    """A weight source and its label; ``remote``: a hub model not in the local cache is read by
    range requests (only the tensors fitted) instead of downloaded."""
    if hasattr(spec, "get") and hasattr(spec, "arch"):
        return spec, getattr(spec, "label", "model")
    from ..models import Checkpoint
    ck = Checkpoint(str(spec), remote=remote)
    return ck, str(spec)


class _Acc:
    """Gram matrix, inner products and squared norms for one block."""

    def __init__(self, k: int):
        self.G = np.zeros((k, k))
        self.c = np.zeros(k)
        self.yy = 0.0
        self.d = np.zeros(k)  # ‖y − X_k‖² (distance to each parent, no-base form)

    def add(self, y: torch.Tensor, X: torch.Tensor) -> None:
        """``y``: [n] float64, ``X``: [k, n] float64."""
        G = (X @ X.T).numpy()
        xy = (X @ y).numpy()
        yy = float(y @ y)
        self.G += G
        self.c += xy
        self.yy += yy
        self.d += yy - 2 * xy + np.diag(G)

    def __iadd__(self, other: "_Acc"):
        self.G += other.G
        self.c += other.c
        self.yy += other.yy
        self.d += other.d
        return self


def _nnls(G: np.ndarray, c: np.ndarray, sum_to_one: bool) -> np.ndarray:
    """argmin_{w ≥ 0} wᵀGw − 2cᵀw (+ Σw = 1) via nnls on a square root of G."""
    from scipy.optimize import nnls
    s, U = np.linalg.eigh((G + G.T) / 2)
    scale = max(float(s.max()), 1e-300)
    keep = s > scale * 1e-12
    A = (np.sqrt(s[keep])[:, None] * U[:, keep].T)
    b = (U[:, keep].T @ c) / np.sqrt(s[keep])
    if sum_to_one:
        lam = np.sqrt(scale) * 1e4
        A = np.vstack([A, lam * np.ones((1, G.shape[0]))])
        b = np.append(b, lam)
    w, _ = nnls(A, b, maxiter=50 * G.shape[0] + 100)
    return w


def _residual(acc: _Acc, w: np.ndarray) -> float:
    return max(float(acc.yy - 2 * w @ acc.c + w @ acc.G @ w), 0.0)


def _solve(acc: _Acc, with_base: bool) -> tuple[np.ndarray, float, float, int]:
    """(weights, unexplained, single, index of the best single parent)."""
    w = _nnls(acc.G, acc.c, sum_to_one=not with_base)
    # the fine-tune hypothesis M = P_j + δ (unit weight): what the nearest parent leaves
    singles = list(acc.d) + ([acc.yy] if with_base else [])  # with a base, M = B + δ is one more
    ref = acc.yy if with_base else float(acc.d.min())
    j = int(np.argmin(singles))
    if ref <= 0:
        return w, 0.0, 0.0, j
    return w, _residual(acc, w) / ref, max(singles[j], 0.0) / ref, j


def _stream(model, parents, base, progress: bool, tensors: list[str] | None = None) -> tuple[dict, list]:
    """Per-block accumulators, streaming one tensor (of every model) at a time."""
    from tqdm.auto import tqdm
    M, mlabel = model
    arch = M.arch
    for src, _ in parents + ([base] if base else []):
        require_same_blocks(arch, src.arch, "merge attribution")
    k = len(parents)
    accs: dict = {}
    names = selected_names(arch, tensors, mlabel)
    for name in tqdm(names, desc=f"merge fit {mlabel}", disable=not progress, leave=False):
        role, block = arch.role_of(name)
        ts = [M.get(name)] + [p.get(name) for p, _ in parents] + ([base[0].get(name)] if base else [])
        if role in ("embed", "lm_head"):  # vocabularies may differ: the shared rows
            n = min(t.shape[0] for t in ts)
            ts = [t[:n] for t in ts]
        if any(t.shape != ts[0].shape for t in ts):
            raise TracingError(f"merge attribution: {name} has different shapes in {mlabel} and its candidate "
                               f"parents; merges are fitted on models of one architecture")
        acc = accs.setdefault(block if block is not None else "other", _Acc(k))
        flat = [t.reshape(-1) for t in ts]
        for start in range(0, flat[0].numel(), CHUNK):  # float64 in slices: bounded extra memory
            part = [f[start:start + CHUNK].to(torch.float64) for f in flat]
            y, X = part[0], torch.stack(part[1:k + 1])
            if base:
                y, X = y - part[-1], X - part[-1]
            else:  # centred on the parents' mean (Σw = 1 makes this the same fit, better conditioned)
                mean = X.mean(dim=0)
                y, X = y - mean, X - mean
            acc.add(y, X)
        del ts, flat
    return accs, names


def fit_merge(model, parents, base=None, progress: bool = False, tensors: list[str] | None = None) -> MergeFit:
    """Mixing weights of ``parents`` in ``model`` (specs such as ``demo:a-docs`` / folders, or weight
    sources with ``.arch`` and ``.get``), per block and overall; ``base``: their common ancestor, if known;
    ``tensors``: the groups of tensors fitted (:data:`TENSOR_GROUPS`; None: all)."""
    if len(parents) < 1:
        raise TracingError("merge attribution needs at least one candidate parent")
    remote = tensors is not None
    m = _open(model, remote)
    ps = [_open(p, remote) for p in parents]
    b = _open(base, remote) if base is not None else None
    accs, _ = _stream(m, ps, b, progress, tensors)
    total = _Acc(len(ps))
    per_block = []
    for key in sorted(accs, key=lambda x: (isinstance(x, str), x if not isinstance(x, str) else 0)):
        total += accs[key]
        w, un, _, _ = _solve(accs[key], b is not None)
        per_block.append({"block": key, "weights": [float(x) for x in w], "unexplained": float(un)})
    w, un, single, j = _solve(total, b is not None)
    names = [p[1] for p in ps] + ([b[1]] if b else [])
    return MergeFit(m[1], [p[1] for p in ps], b[1] if b else None, [float(x) for x in w], float(un),
                    float(single), names[j], per_block, tensors)


def judge(fit: MergeFit, parents: dict | None = None, min_weight: float = MIN_WEIGHT, max_ratio: float = MAX_RATIO,
          max_total: float = MAX_TOTAL) -> MergeVerdict:
    """Apply the merge rule (see the module docstring) to a fit; ``parents``: known or reconstructed
    ``{model: parent}`` (for the rule that parents on one lineage are not a merge)."""
    total = sum(fit.weights) or 1.0
    share = {p: w / total for p, w in zip(fit.parents, fit.weights)}
    strong = [p for p in fit.parents if share[p] >= min_weight]
    weights = {p: w for p, w in zip(fit.parents, fit.weights) if p in strong}
    near = fit.single_parent

    def no(reason):
        return MergeVerdict(fit.model, False, [near], {}, reason, fit)
    if len(strong) < 2:
        return no(f"not a mix: fewer than two candidates carry {min_weight:.0%} of the weight; the nearest "
                  f"single parent is {near}")
    if fit.single <= 0 or fit.unexplained > max_ratio * fit.single:
        gain = 1 - fit.unexplained / fit.single if fit.single > 0 else 0.0
        return no(f"a fine-tune of {near}: the other parents explain only {gain:.0%} of what {near} leaves "
                  f"unexplained (a merge needs {1 - max_ratio:.0%})")
    if fit.base is not None and sum(weights.values()) > max_total:
        heavy = max(weights, key=weights.get)
        return MergeVerdict(fit.model, False, [heavy], {}, f"its weights sum to {sum(weights.values()):.2f} "
                            f"(a mix sums to about 1): it holds {heavy} whole plus an update, a fine-tune of it", fit)
    if parents:
        for a in strong:
            for b in strong:
                if a != b and is_ancestor(a, b, parents, strict=True):
                    return no(f"its parents {a} and {b} lie on one lineage: an interpolation, not a merge")
    return MergeVerdict(fit.model, True, strong, weights,
                        f"a merge of {len(strong)} parents; they leave {fit.unexplained:.1%} unexplained, "
                        f"the nearest single parent {fit.single:.1%}", fit)


def attribute(model, candidates, base=None, parents: dict | None = None, progress: bool = False,
              min_weight: float = MIN_WEIGHT, max_ratio: float = MAX_RATIO,
              tensors: list[str] | None = None) -> MergeVerdict:
    """Fit ``model`` on ``candidates`` (``base`` left out of them) and judge whether it is a merge."""
    cands = [c for c in candidates if c != model and c != base]
    if not cands:
        raise TracingError(f"no candidate parent for {model} (other than its base)")
    return judge(fit_merge(model, cands, base=base, progress=progress, tensors=tensors), parents, min_weight,
                 max_ratio)


def lowest_common_ancestor(models: list[str], parents: dict) -> str | None:
    chains = [[m, *ancestors(parents, m)] for m in models]
    common = set(chains[0]).intersection(*map(set, chains[1:]))
    return next((a for a in chains[0] if a in common), None)


def merge_candidates(rec, model: str, parents: dict) -> list[str]:
    """Models significant against ``model`` in a reconstruction, without its descendants."""
    sig = {p["a"] if p["b"] == model else p["b"] for p in rec.pairs if p["significant"] and model in (p["a"], p["b"])}
    return sorted(m for m in sig if not is_ancestor(model, m, parents, strict=True))


def attribute_all(rec, truth: dict | None = None, progress: bool = False,
                  tensors: list[str] | None = None) -> list[MergeVerdict]:
    """Every model significant against at least two others, fitted on those (without its descendants);
    B is the candidates' lowest common ancestor in the known lineage (else the reconstructed tree)."""
    from .known import align_truth
    parents = align_truth(truth, rec.models) if truth else {}
    parents = {**{e["child"]: e["parent"] for e in rec.edges if e.get("directed")}, **parents}
    out = []
    for m in rec.models:
        cands = merge_candidates(rec, m, parents)
        if len(cands) < 2:
            continue
        base = lowest_common_ancestor(cands, parents) if parents else None
        if base == m:
            base = None
        if len([c for c in cands if c != base]) < 1:
            continue
        out.append(attribute(m, cands, base=base, parents=parents, progress=progress, tensors=tensors))
    return out


def verdict_json(v: MergeVerdict) -> dict:
    """One verdict as plain values (``lineage.json``'s ``merges`` entries)."""
    return {"model": v.model, "is_merge": v.is_merge, "parents": v.parents, "weights": v.weights,
            "reason": v.reason, "base": v.fit.base, "fit_parents": v.fit.parents, "fit_weights": v.fit.weights,
            "unexplained": v.fit.unexplained, "single": v.fit.single, "per_block": v.fit.per_block,
            "tensors": v.fit.tensors or "all"}


def reconstruct_with_merges(df, truth: dict | None = None, progress: bool = False,
                            tensors: list[str] | None = None, **kw):
    """:func:`~tracing.lineage.reconstruct.reconstruct`, then merge attribution on its families, then
    the tree again with every merge hung under its parents (never drawn as a parent). Returns the
    reconstruction and the verdicts (merges and the models found not to be merges); ``tensors``: the
    groups of tensors the fits read (None: all)."""
    from .reconstruct import reconstruct
    rec = reconstruct(df, truth=truth, **kw)
    verdicts = attribute_all(rec, truth, progress=progress, tensors=tensors)
    found = {v.model: list(v.parents) for v in verdicts if v.is_merge}
    if found:
        rec = reconstruct(df, truth=truth, merges=found, **kw)
    return rec, verdicts
