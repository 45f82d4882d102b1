"""Function-preserving transforms and interpolation, as lazy per-tensor views.

Each transform wraps a :class:`~tracing.models.WeightSource` and transforms a tensor when it is
read, so it works the same on a 70B checkpoint streamed from disk as on a tiny state dict, and
views compose (``Permuted(Rotated(ckpt))``).  Conventions: permuting by ``p`` means
``new[i] = old[p[i]]`` along the permuted axis.

- MLP permutation (one per MLP: per block, or per expert of a mixture-of-experts block, over its
  hidden units): rows of gate/up (and their biases), columns of down.
- Expert order (per mixture-of-experts block, over its routed experts): expert slot e holds the
  inner expert ``p[e]`` (all its tensors and biases), the router's rows and per-expert bias and scale follow;
  shared experts are untouched. With grouped routing (DeepSeek-V3's ``n_group``) a drawn order
  moves whole groups and experts within their group, which keeps the function.
- Residual permutation (one for the model, over d): columns of embed, every reader of the stream
  (q/k/v, gate/up, routers, lm_head); rows of every writer (o/down); every norm gain and bias.
- Rotation by an orthogonal R (d×d): norm gains folded into the layers that read the normalised
  stream, gains set to 1, then embed and every reader ``W -> W R``, every writer ``W -> Rᵀ W``.
  A tied model becomes untied (the folded lm_head differs from the rotated embedding).

Sampled rows (``get_rows``) of a view are read as rows of the inner source: a permuted row axis
reads the rows they were moved from, a permuted column axis is permuted after the read, gains and
rotations apply to the rows read. Only where a transform mixes rows (a rotated writer of the
residual stream, a rotated bias) is the inner tensor read whole.
"""
from __future__ import annotations

import torch

from .arch import (ATTN_ROLES, EMBED, EXPERT_INDEXED, MLP_ROLES, NORM_ROLES, READ_RESIDUAL, READS_THROUGH, RES_VECTORS,
                   UNIT_COLS, UNIT_ROWS, WRITE_RESIDUAL, expert_slots, require_same_layout)
from .arch.moe_shapes import expert_groups
from .errors import TracingError
from .models import WeightSource, config_for, from_module, load_module


class View(WeightSource):
    """Base of the transformed views: delegates everything to ``inner``."""

    def __init__(self, inner: WeightSource):
        self.inner = inner
        self.arch = inner.arch
        self.label = inner.label

    @property
    def config(self):
        cfg = self.inner.config
        return config_for(cfg, self.arch, language_model=False) if self.arch.tied != self.inner.arch.tied else cfg

    def release(self):
        self.inner.release()


def read_in_order(source: WeightSource, name: str, index: torch.Tensor, order: torch.Tensor, dtype) -> torch.Tensor:
    """Rows ``index`` (distinct, in any order) of ``name``: read sorted (``index[order]``, file order),
    then put back in the order asked for."""
    return source.get_rows(name, index[order], dtype)[torch.argsort(order)]


def _key(k):
    """A unit key as plain Python (numpy integers from an alignment become ints)."""
    if isinstance(k, tuple):
        return tuple(x if isinstance(x, str) else int(x) for x in k)
    return int(k)


class Permuted(View):
    """Residual permutation ``pi_e`` (or None), per-block MLP permutations ``pi_i[i]`` (per expert:
    ``pi_i[(i, e)]``, over the units of the expert in slot e) and per-block expert orders ``pi_x[i]``."""

    def __init__(self, inner: WeightSource, pi_e: torch.Tensor | None = None,
                 pi_i: dict[int, torch.Tensor] | list | None = None, pi_x: dict | None = None):
        super().__init__(inner)
        self.pi_e = None if pi_e is None else torch.as_tensor(pi_e, dtype=torch.long)
        if isinstance(pi_i, (list, tuple)):
            pi_i = dict(enumerate(pi_i))
        self.pi_i = {_key(k): torch.as_tensor(v, dtype=torch.long) for k, v in (pi_i or {}).items()}
        self.pi_x = {int(k): torch.as_tensor(v, dtype=torch.long) for k, v in (pi_x or {}).items()}

    def _source(self, ref) -> str:
        """The inner tensor a tensor of the view is read from (another expert's when experts move)."""
        p = self.pi_x.get(ref.block) if self.pi_x and ref.block is not None else None
        if p is None:
            return ref.name
        slot = expert_slots(self.arch, ref.block).get(ref.name)
        return ref.name if slot is None else expert_slots(self.arch, ref.block)[slot[0], int(p[slot[1]])]

    def get(self, name, dtype=torch.float32):
        ref = self.arch.ref(name)
        return self.apply(name, self._experts_moved(ref, self.inner.get(self._source(ref), dtype)))

    def _experts_moved(self, ref, t: torch.Tensor) -> torch.Tensor:
        """A router's rows (or per-expert bias or scale) in the view's expert order."""
        p = self.pi_x.get(ref.block) if ref.role in EXPERT_INDEXED else None
        if p is None:
            return t
        return t[p] if ref.role == "router" else t[..., p]

    def get_rows(self, name, index, dtype=torch.float32):
        """Rows ``index`` of a tensor of the view, read as rows of the inner tensor: the inner rows they
        were moved from (a permuted row axis), then their columns permuted (a permuted column axis)."""
        ref = self.arch.ref(name)
        index = torch.as_tensor(index, dtype=torch.long)
        rows, cols = self._row_map(ref)
        src = index
        for p in reversed(rows):  # the last permutation applied is undone first
            src = p[src]
        order = torch.argsort(src)  # read in file order, then put back
        t = read_in_order(self.inner, self._source(ref), src, order, dtype)
        for p in cols:
            t = t[:, p]
        return t

    def _row_map(self, ref) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The permutations :meth:`get` applies to the rows and to the columns of ``ref``, in the
        order it applies them (expert order, then MLP units, then the residual stream)."""
        rows, cols = [], []
        role = ref.role
        x = self.pi_x.get(ref.block) if role in EXPERT_INDEXED else None
        if x is not None:
            (rows if role == "router" or len(ref.shape) == 1 else cols).append(x)
        p = self.pi_i.get(ref.unit) if ref.unit is not None else None
        if p is not None:
            if role in UNIT_ROWS:
                rows.append(p)
            elif role in UNIT_COLS:
                cols.append(p)
        e = self.pi_e
        if e is not None:
            if role in READ_RESIDUAL:
                cols.append(e)
            elif role in WRITE_RESIDUAL or role in RES_VECTORS:
                rows.append(e)
        return rows, cols

    def apply(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Permute one tensor of the inner model (usable without a source, e.g. in PERMTEST)."""
        ref = self.arch.ref(name)
        role = ref.role
        p = self.pi_i.get(ref.unit) if ref.unit is not None else None
        if p is not None:
            if role in UNIT_ROWS:
                t = t[p]
            elif role in UNIT_COLS:
                t = t[:, p]
        e = self.pi_e
        if e is not None:
            if role in READ_RESIDUAL:
                t = t[:, e]
            elif role in WRITE_RESIDUAL or role in RES_VECTORS:
                t = t[e]
        return t


class VocabOrder(View):
    """The same model with its token ids relabelled: row k of the embedding and of the lm_head is
    the inner row ``order[k]`` (a permutation of the vocabulary). Function-preserving: on ids k it
    computes what the inner model computes on ids ``order[k]``, its logits relabelled the same way."""

    def __init__(self, inner: WeightSource, order: torch.Tensor):
        super().__init__(inner)
        self.order = torch.as_tensor(order, dtype=torch.long)
        if not torch.equal(torch.sort(self.order).values, torch.arange(inner.arch.V)):
            raise ValueError("a vocabulary order must be a permutation of the model's token ids")
        self._names = {inner.arch.embed, inner.arch.lm_head}

    def get(self, name, dtype=torch.float32):
        t = self.inner.get(name, dtype)
        return t[self.order] if name in self._names else t

    def get_rows(self, name, index, dtype=torch.float32):
        if name not in self._names:
            return self.inner.get_rows(name, index, dtype)
        src = self.order[torch.as_tensor(index, dtype=torch.long)]
        return read_in_order(self.inner, name, src, torch.argsort(src), dtype)


class _FoldingView(View):
    """A view that folds norm gains into the layers reading the normalised stream (untied output)."""

    def names(self):
        return self.arch.names()

    def _gain(self, role: str, i, work) -> torch.Tensor:
        name = self.arch.final_norm if role == "final_norm" else self.arch.block_name(i, role)
        return self.inner.get(name, work) + self.arch.gain_offset


class Rotated(_FoldingView):
    """Fold the norm gains, then rotate the residual stream by the orthogonal matrix ``R``."""

    def __init__(self, inner: WeightSource, R: torch.Tensor):
        super().__init__(inner)
        why = inner.arch.rotation_problem()
        if why is not None:
            raise TracingError(f"--rotate is not function-preserving for {inner.arch.model_type}: {why}; "
                               f"use --permute to test robustness on this family")
        self.R = R
        self.arch = inner.arch.untied()

    def get(self, name, dtype=torch.float32):
        ref = self.arch.ref(name)
        role, i = ref.role, ref.block
        work = torch.float64 if dtype == torch.float64 else torch.float32
        R = self.R.to(work)
        if role in NORM_ROLES or role == "final_norm":  # gain 1 (Gemma stores it as w = 0)
            return torch.full((self.arch.d,), 1.0 - self.arch.gain_offset, dtype=dtype)
        if role in ("o_bias", "down_bias", "expert_down_bias"):
            return (self.inner.get(name, work) @ R).to(dtype)
        if role in WRITE_RESIDUAL:
            return (R.T @ self.inner.get(name, work)).to(dtype)
        if role == "embed":
            return (self.inner.get(name, work) @ R).to(dtype)
        if role in READS_THROUGH:
            g = self._gain(READS_THROUGH[role], i, work)
            return ((self.inner.get(name, work) * g) @ R).to(dtype)
        if role == "lm_head":
            g = self._gain("final_norm", None, work)
            return ((self.inner.get(self.arch.lm_head, work) * g) @ R).to(dtype)
        return self.inner.get(name, dtype)  # q/k/v and gate/up biases, q/k norms: unchanged

    def get_rows(self, name, index, dtype=torch.float32):
        """Rows of a reader of the stream (and the embedding) are the inner rows, scaled by the gain and
        rotated; a writer's rows (and a vector over the stream) mix every inner row: read whole."""
        ref = self.arch.ref(name)
        role, i = ref.role, ref.block
        index = torch.as_tensor(index, dtype=torch.long)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        if role in NORM_ROLES or role == "final_norm":
            return torch.full((index.numel(),), 1.0 - self.arch.gain_offset, dtype=dtype)
        if role in ("o_bias", "down_bias", "expert_down_bias") or role in WRITE_RESIDUAL:
            return self.get(name, dtype)[index]
        R = self.R.to(work)
        if role == "embed":
            return (self.inner.get_rows(name, index, work) @ R).to(dtype)
        if role in READS_THROUGH:
            g = self._gain(READS_THROUGH[role], i, work)
            return ((self.inner.get_rows(name, index, work) * g) @ R).to(dtype)
        if role == "lm_head":
            g = self._gain("final_norm", None, work)
            return ((self.inner.get_rows(self.arch.lm_head, index, work) * g) @ R).to(dtype)
        return self.inner.get_rows(name, index, dtype)


class NormsFolded(_FoldingView):
    """Every norm gain that feeds a layer folded into the columns of that layer (q/k/v after the
    input norm; gate/up, routers and experts after the norm before the MLP; lm_head after the final
    norm), those gains set to 1.  Post-norms on a sublayer's output and q/k norms are left as they are.

    Function-preserving and a function of one model alone; it makes weight statistics invariant to
    per-channel scales moved between a norm and its readers (as AWQ quantization does).
    """

    def __init__(self, inner: WeightSource):
        super().__init__(inner)
        if inner.arch.norm_bias:
            raise TracingError(f"--fold_norms is not function-preserving for {inner.arch.model_type}: its "
                               f"LayerNorms add a bias after the gain; run without --fold_norms")
        if any(r.role == "experts_in_norm" for r in inner.arch.block_refs(0)):
            raise TracingError(f"--fold_norms is not function-preserving for {inner.arch.model_type} mixtures of "
                               f"experts: the experts and the router read norms of their own; run without --fold_norms")
        self.arch = inner.arch.untied()

    def get(self, name, dtype=torch.float32):
        ref = self.arch.ref(name)
        role, i = ref.role, ref.block
        if role in _FOLDED_NORMS:  # gain 1 (Gemma stores it as w = 0)
            return torch.full((self.arch.d,), 1.0 - self.arch.gain_offset, dtype=dtype)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        if role in READS_THROUGH:
            g = self._gain(READS_THROUGH[role], i, work)
            return (self.inner.get(name, work) * g).to(dtype)
        if role == "lm_head":
            g = self._gain("final_norm", None, work)
            return (self.inner.get(self.arch.lm_head, work) * g).to(dtype)
        return self.inner.get(name, dtype)

    def get_rows(self, name, index, dtype=torch.float32):
        """The inner rows, scaled by the gain folded into their columns."""
        ref = self.arch.ref(name)
        role, i = ref.role, ref.block
        index = torch.as_tensor(index, dtype=torch.long)
        if role in _FOLDED_NORMS:
            return torch.full((index.numel(),), 1.0 - self.arch.gain_offset, dtype=dtype)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        if role in READS_THROUGH:
            g = self._gain(READS_THROUGH[role], i, work)
            return (self.inner.get_rows(name, index, work) * g).to(dtype)
        if role == "lm_head":
            g = self._gain("final_norm", None, work)
            return (self.inner.get_rows(self.arch.lm_head, index, work) * g).to(dtype)
        return self.inner.get_rows(name, index, dtype)


_FOLDED_NORMS = frozenset(READS_THROUGH.values()) | {"final_norm"}


def fold_norms(source: WeightSource) -> NormsFolded:
    return NormsFolded(source)


class Interpolated(View):
    """The path θ(α): MLP and norms of every block are (1−α)θ₁ + αθ₂; with ``attn`` also attention,
    with ``emb`` also embeddings, lm_head and final norm (over the shared vocabulary rows: the first
    min(V₁, V₂), or the first ``shared`` when given). Everything else is θ₁'s."""

    def __init__(self, a: WeightSource, b: WeightSource, alpha: float, attn: bool = False, emb: bool = False,
                 shared: int | None = None):
        super().__init__(a)
        require_same_layout(a.arch, b.arch, "interpolation")
        self.b, self.alpha, self.attn, self.emb, self.shared = b, float(alpha), attn, emb, shared

    def release(self):
        self.inner.release()
        self.b.release()

    def _mixes(self, role: str) -> bool:
        if role in MLP_ROLES or role in NORM_ROLES:
            return True
        if role in ATTN_ROLES:
            return self.attn
        return self.emb  # embed, lm_head, final_norm

    def get(self, name, dtype=torch.float32):
        role, _ = self.arch.role_of(name)
        x = self.inner.get(name, dtype)
        if not self._mixes(role) or self.alpha == 0.0:
            return x
        y = self.b.get(name, dtype)
        if role in ("embed", "lm_head"):
            n = min(x.shape[0], y.shape[0], self.shared or x.shape[0])
            out = x.clone()
            out[:n] = torch.lerp(x[:n], y[:n], self.alpha)
            return out
        return torch.lerp(x, y, self.alpha)


# ------------------------------------------------------------------------------------------
# Random draws
# ------------------------------------------------------------------------------------------
def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def random_permutations(arch, seed: int) -> tuple[torch.Tensor, dict]:
    """One residual permutation and an independent permutation of every MLP's hidden units
    (keyed by block for a dense MLP, by (block, expert) for an expert)."""
    return _draws(arch, seed)[:2]


def _draws(arch, seed: int, groups: int = 1) -> tuple[torch.Tensor, dict, dict]:
    """:func:`random_permutations` and then, from the same generator, every MoE block's expert order
    (whole groups of ``n_experts / groups`` consecutive experts moved, and experts within them)."""
    g = generator(seed)
    pi_e = torch.randperm(arch.d, generator=g)
    pi_i = {u.key: torch.randperm(u.width, generator=g) for i in range(arch.L) for u in arch.units(i)}
    E = arch.n_experts
    if not E or E % groups:
        return pi_e, pi_i, {}
    size = E // groups
    pi_x = {}
    for i in range(arch.L):
        if arch.is_moe_block(i):
            slots = torch.randperm(groups, generator=g)
            pi_x[i] = torch.cat([int(q) * size + torch.randperm(size, generator=g) for q in slots])
    return pi_e, pi_i, pi_x


def random_rotation(d: int, seed: int) -> torch.Tensor:
    """A Haar-random orthogonal d×d matrix, drawn in float64, returned in float32."""
    g = generator(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q.to(torch.float32)


def permute(source: WeightSource, seed: int, mlp: bool = True, residual: bool = True,
            experts: bool = True) -> Permuted:
    """A random function-preserving permutation of ``source``: residual stream, every MLP's units
    and (``experts``) the order of every MoE block's routed experts."""
    pi_e, pi_i, pi_x = _draws(source.arch, seed, expert_groups(source.config) if experts else 1)
    return Permuted(source, pi_e if residual else None, pi_i if mlp else None, pi_x if experts else None)


def rotate(source: WeightSource, seed: int) -> Rotated:
    return Rotated(source, random_rotation(source.arch.d, seed))


# ------------------------------------------------------------------------------------------
# Convenience on loaded modules and state dicts
# ------------------------------------------------------------------------------------------
def transform_module(model: torch.nn.Module, make_view) -> torch.nn.Module:
    """A new module whose weights are ``make_view(source_of_model)``; the input is untouched."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    return load_module(make_view(from_module(model)), dtype=dtype, device=str(device))


__all__ = ["Permuted", "Rotated", "NormsFolded", "fold_norms", "Interpolated", "random_permutations", "random_rotation", "permute",
           "rotate", "transform_module", "EMBED"]
