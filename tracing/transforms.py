"""Function-preserving transforms and interpolation, as lazy per-tensor views.

Each transform wraps a :class:`~tracing.models.WeightSource` and transforms a tensor when it is
read, so it works the same on a 70B checkpoint streamed from disk as on a tiny state dict, and
views compose (``Permuted(Rotated(ckpt))``).  Conventions: permuting by ``p`` means
``new[i] = old[p[i]]`` along the permuted axis.

- MLP permutation (one per block, over h): rows of gate/up (and their biases), columns of down.
- Residual permutation (one for the model, over d): columns of embed, q/k/v, gate/up, lm_head;
  rows of o/down (and their biases); every RMSNorm gain.
- Rotation by an orthogonal R (d×d): norm gains folded into the layers that read the normalised
  stream, gains set to 1, then embed and every reader ``W -> W R``, every writer ``W -> Rᵀ W``.
  A tied model becomes untied (the folded lm_head differs from the rotated embedding).
"""
from __future__ import annotations

import torch

from .arch import ATTN_ROLES, EMBED, LM_HEAD, MLP_ROLES, NORM_ROLES, require_same_blocks
from .models import DictSource, WeightSource, config_for, from_module, load_module

_READ_RESIDUAL = {"q", "k", "v", "gate", "up", "embed", "lm_head"}  # columns index the residual
_WRITE_RESIDUAL = {"o", "down"}  # rows index the residual
_RES_VECTORS = {"in_norm", "post_norm", "final_norm", "o_bias", "down_bias"}


class View(WeightSource):
    """Base of the transformed views: delegates everything to ``inner``."""

    def __init__(self, inner: WeightSource):
        self.inner = inner
        self.arch = inner.arch
        self.label = inner.label

    @property
    def config(self):
        cfg = self.inner.config
        return config_for(cfg, self.arch) if self.arch.tied != self.inner.arch.tied else cfg

    def release(self):
        self.inner.release()


class Permuted(View):
    """Residual permutation ``pi_e`` (or None) and per-block MLP permutations ``pi_i[i]``."""

    def __init__(self, inner: WeightSource, pi_e: torch.Tensor | None = None,
                 pi_i: dict[int, torch.Tensor] | list | None = None):
        super().__init__(inner)
        self.pi_e = None if pi_e is None else torch.as_tensor(pi_e, dtype=torch.long)
        if isinstance(pi_i, (list, tuple)):
            pi_i = dict(enumerate(pi_i))
        self.pi_i = {int(k): torch.as_tensor(v, dtype=torch.long) for k, v in (pi_i or {}).items()}

    def get(self, name, dtype=torch.float32):
        return self.apply(name, self.inner.get(name, dtype))

    def get_rows(self, name, index, dtype=torch.float32):
        """Rows of a permuted MLP reader (gate/up) come from the inner rows they were moved from."""
        role, i = self.arch.role_of(name)
        if role not in ("gate", "up"):
            return super().get_rows(name, index, dtype)
        index = torch.as_tensor(index, dtype=torch.long)
        p = self.pi_i.get(i)
        src = index if p is None else p[index]
        order = torch.argsort(src)  # read in file order, then put back
        t = self.inner.get_rows(name, src[order], dtype)[torch.argsort(order)]
        return t if self.pi_e is None else t[:, self.pi_e]

    def apply(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Permute one tensor of the inner model (usable without a source, e.g. in PERMTEST)."""
        role, i = self.arch.role_of(name)
        p = self.pi_i.get(i) if i is not None else None
        if p is not None:
            if role in ("gate", "up", "gate_bias", "up_bias"):
                t = t[p]
            elif role == "down":
                t = t[:, p]
        e = self.pi_e
        if e is not None:
            if role in _READ_RESIDUAL:
                t = t[:, e]
            elif role in _WRITE_RESIDUAL or role in _RES_VECTORS:
                t = t[e]
        return t


class Rotated(View):
    """Fold the RMSNorm gains, then rotate the residual stream by the orthogonal matrix ``R``."""

    def __init__(self, inner: WeightSource, R: torch.Tensor):
        super().__init__(inner)
        self.R = R
        self.arch = inner.arch.untied()

    def names(self):
        return self.arch.names()

    def get(self, name, dtype=torch.float32):
        role, i = self.arch.role_of(name)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        R = self.R.to(work)
        if role in NORM_ROLES or role == "final_norm":
            return torch.ones(self.arch.d, dtype=dtype)
        if role in ("o_bias", "down_bias"):
            return (self.inner.get(name, work) @ R).to(dtype)
        if role in ("o", "down"):
            return (R.T @ self.inner.get(name, work)).to(dtype)
        if role == "embed":
            return (self.inner.get(name, work) @ R).to(dtype)
        gain = {"q": "in_norm", "k": "in_norm", "v": "in_norm", "gate": "post_norm", "up": "post_norm"}.get(role)
        if gain is not None:
            g = self.inner.get(self.arch.block_name(i, gain), work)
            return ((self.inner.get(name, work) * g) @ R).to(dtype)
        if role == "lm_head":
            g = self.inner.get("model.norm.weight", work)
            return ((self.inner.get(LM_HEAD, work) * g) @ R).to(dtype)
        return self.inner.get(name, dtype)  # q/k/v and gate/up biases: unchanged


class Interpolated(View):
    """The path θ(α): MLP and norms of every block are (1−α)θ₁ + αθ₂; with ``attn`` also attention,
    with ``emb`` also embeddings, lm_head and final norm (over the shared vocabulary rows).
    Everything else is θ₁'s."""

    def __init__(self, a: WeightSource, b: WeightSource, alpha: float, attn: bool = False, emb: bool = False):
        super().__init__(a)
        require_same_blocks(a.arch, b.arch, "interpolation")
        self.b, self.alpha, self.attn, self.emb = b, float(alpha), attn, emb

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
            n = min(x.shape[0], y.shape[0])
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


def random_permutations(arch, seed: int) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """One residual permutation and an independent MLP permutation for every block."""
    g = generator(seed)
    pi_e = torch.randperm(arch.d, generator=g)
    pi_i = {i: torch.randperm(arch.h, generator=g) for i in range(arch.L)}
    return pi_e, pi_i


def random_rotation(d: int, seed: int) -> torch.Tensor:
    """A Haar-random orthogonal d×d matrix, drawn in float64, returned in float32."""
    g = generator(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q.to(torch.float32)


def permute(source: WeightSource, seed: int, mlp: bool = True, residual: bool = True) -> Permuted:
    pi_e, pi_i = random_permutations(source.arch, seed)
    return Permuted(source, pi_e if residual else None, pi_i if mlp else None)


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


def transform_state_dict(state: dict, config, make_view) -> dict[str, torch.Tensor]:
    view = make_view(DictSource(state, config))
    return view.state_dict(next(iter(state.values())).dtype)


__all__ = ["Permuted", "Rotated", "Interpolated", "random_permutations", "random_rotation", "permute",
           "rotate", "transform_module", "transform_state_dict", "EMBED"]
