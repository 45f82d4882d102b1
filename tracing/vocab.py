"""Two vocabularies mapped by token string, and transplanted tokens.

Token strings are compared as the bytes they stand for: byte-level BPE spellings (``Ġ`` for a
space, ``Ċ`` for a newline, the whole GPT-2 byte alphabet) are decoded to their bytes,
SentencePiece's ``▁`` becomes a space and its byte-fallback tokens ``<0x41>`` become the byte they
name. Special tokens match only special tokens of the same text.

The map depends on the two tokenizers only, never on weights, so a statistic computed over the
shared tokens' rows keeps its exact null (the rows of θ₂ are exchangeable whatever rows are chosen by
token string).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

SPM_SPACE = "\u2581"
SPECIAL = b"\x00special:"


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable character → the byte it stands for."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def is_byte_level(tokens) -> bool:
    """Whether a vocabulary is spelled in the byte-level alphabet (every token inside it, and the
    space marker ``Ġ`` used)."""
    alphabet = _byte_decoder()
    tokens = list(tokens)
    return any("Ġ" in t for t in tokens) and all(all(c in alphabet for c in t) for t in tokens)


def token_key(token: str, byte_level: bool) -> bytes:
    """The bytes a (non-special) token stands for."""
    if byte_level:
        dec = _byte_decoder()
        return bytes(dec[c] for c in token)
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass
    return token.replace(SPM_SPACE, " ").encode("utf-8")


def id_keys(tokenizer, rows: int) -> dict[int, bytes]:
    """Id → normalised token, for the ids below ``rows`` (the model's embedding rows)."""
    vocab = {t: i for t, i in tokenizer.get_vocab().items() if 0 <= i < rows}
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    special |= {str(t) for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values()
                if getattr(t, "special", False)}
    byte_level = is_byte_level(t for t in vocab if t not in special)
    return {i: SPECIAL + t.encode("utf-8") if t in special else token_key(t, byte_level) for t, i in vocab.items()}


def vocab_keys(tokenizer, rows: int) -> dict[bytes, int]:
    """Normalised token → id, for the ids below ``rows``. Where two tokens of one vocabulary stand
    for the same bytes (e.g. ``A`` and ``<0x41>``) the lower id is kept."""
    out: dict[bytes, int] = {}
    for i, k in sorted(id_keys(tokenizer, rows).items()):
        out.setdefault(k, i)
    return out


@dataclass
class VocabMap:
    """The tokens both models have: row ``base_ids[j]`` of θ₁ and row ``ft_ids[j]`` of θ₂ are one
    token (``keys[j]``), in θ₁'s id order. ``ft_only``: θ₂'s ids of tokens θ₁ lacks.
    ``by_id``: the tokenizers agree on the ids both models have (θ₂ only adds tokens), so rows
    are compared by id over the first min(V₁, V₂) ids, exactly as with identical tokenizers."""

    base_ids: np.ndarray
    ft_ids: np.ndarray
    keys: list[bytes]
    base_vocab: int
    ft_vocab: int
    ft_only: np.ndarray
    ft_only_keys: list[bytes]
    by_id: bool = False

    @property
    def shared(self) -> int:
        return min(self.base_vocab, self.ft_vocab) if self.by_id else int(self.base_ids.size)

    def record(self) -> dict:
        return {"matched_by": "token id" if self.by_id else "token string", "shared_tokens": self.shared, "base_vocab": self.base_vocab,
                "ft_vocab": self.ft_vocab, "shared_fraction_base": self.shared / max(self.base_vocab, 1),
                "shared_fraction_ft": self.shared / max(self.ft_vocab, 1), "ft_only_tokens": int(self.ft_only.size)}

    def orders(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each model's vocabulary relabelled with the shared tokens first, in the same order (ids
        ``0..shared-1`` then mean the same token in both), then its other ids in id order."""
        def order(ids, V):
            rest = np.setdiff1d(np.arange(V), ids)
            return torch.from_numpy(np.concatenate([ids, rest]))
        return order(self.base_ids, self.base_vocab), order(self.ft_ids, self.ft_vocab)

    def describe(self) -> str:
        return (f"{self.shared} tokens shared ({100 * self.shared / max(self.base_vocab, 1):.1f}% of the base's "
                f"{self.base_vocab}, {100 * self.shared / max(self.ft_vocab, 1):.1f}% of the other's {self.ft_vocab})")


def vocab_map(tok1, V1: int, tok2, V2: int) -> VocabMap:
    """Map θ₁'s and θ₂'s vocabularies (their first ``V1`` / ``V2`` ids) by normalised token string."""
    k1, k2 = vocab_keys(tok1, V1), vocab_keys(tok2, V2)
    shared = sorted((i, k2[k], k) for k, i in k1.items() if k in k2)
    only = sorted((i, k) for k, i in k2.items() if k not in k1)
    return VocabMap(base_ids=np.array([s[0] for s in shared], dtype=np.int64),
                    ft_ids=np.array([s[1] for s in shared], dtype=np.int64), keys=[s[2] for s in shared],
                    base_vocab=V1, ft_vocab=V2, ft_only=np.array([o[0] for o in only], dtype=np.int64),
                    ft_only_keys=[o[1] for o in only])


def show_key(k: bytes) -> str:
    if k.startswith(SPECIAL):
        return k[len(SPECIAL):].decode("utf-8", "replace")
    return k.decode("utf-8", "backslashreplace")


def _unit_rows(D: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The rows of ``D`` scaled to unit norm (computed in float64, kept in float32), ``chunk`` rows at
    a time so that no float64 copy of the whole dictionary is held."""
    out = torch.empty(D.shape, dtype=torch.float32)
    for i in range(0, D.shape[0], chunk):
        Dc = D[i:i + chunk].double()
        out[i:i + chunk] = Dc / Dc.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return out


def omp_residuals(D: torch.Tensor, Y: torch.Tensor, k: int, chunk: int = 64) -> np.ndarray:
    """Relative residual ‖y − D_S w‖ / ‖y‖ of orthogonal matching pursuit with ``k`` atoms, for each
    row y of ``Y`` against the rows of ``D`` (the dictionary); ``chunk`` rows of ``Y`` at a time, each
    step one product with the dictionary (float32, to choose the atom) and a batched least-squares
    fit (float64, over the chosen atoms' rows only)."""
    Dn = _unit_rows(D)  # choosing atoms needs no float64
    DnT = Dn.T
    out = []
    for Yc in Y.double().split(chunk):
        n, steps = Yc.shape[0], min(k, D.shape[0])
        R, S = Yc.clone(), torch.empty(n, 0, dtype=torch.long)
        C = torch.empty(n, D.shape[0], dtype=torch.float32)
        A = torch.empty(n, steps, D.shape[1], dtype=torch.float64)  # the chosen atoms' rows
        b = torch.empty(n, steps, 1, dtype=torch.float64)  # their products with y
        for j in range(steps):
            torch.matmul(R.float(), DnT, out=C).abs_()
            C.scatter_(1, S, -1.0)  # an atom is chosen once
            S = torch.cat([S, C.argmax(1, keepdim=True)], 1)
            A[:, j] = D[S[:, j]]
            a = A[:, j:j + 1]
            Aj = A[:, :j + 1]
            Gj = Aj @ Aj.transpose(1, 2)
            b[:, j:j + 1] = a @ Yc.unsqueeze(2)  # least squares by the normal equations (a tiny ridge keeps them solvable)
            Gj = Gj + 1e-12 * Gj.diagonal(dim1=1, dim2=2).sum(1)[:, None, None] * torch.eye(j + 1, dtype=Gj.dtype)
            w = torch.linalg.solve(Gj, b[:, :j + 1])
            R = Yc - (A[:, :j + 1].transpose(1, 2) @ w).squeeze(2)
        ny = Yc.norm(dim=1)
        out.append(torch.where(ny > 0, R.norm(dim=1) / ny.clamp_min(1e-300), torch.nan))
    return torch.cat(out).numpy() if out else np.empty(0)


TRANSPLANT_RESIDUAL = 0.05
MAX_LISTED = 50
MAX_CHECKED = 128  # tokens only θ₂ has, evenly spaced over its ids, when it has more
MIN_CHECKED = 16  # the automatic mode checks at least this many (when θ₂ has them)
#: the automatic mode's budget: checked tokens × atoms × shared tokens × d multiply-adds in the
#: products that choose the atoms (about half the full check at 32000 × 1024)
AUTO_BUDGET = 1.2e11


def checked_count(vm: VocabMap, d: int, k: int, mode: bool | None) -> int:
    """How many of θ₂'s own tokens the check looks at: ``mode`` True every one up to
    ``MAX_CHECKED``, None (automatic) as many as ``AUTO_BUDGET`` allows but at least
    ``MIN_CHECKED``, False none. A function of the shapes and the vocabularies only."""
    n = min(MAX_CHECKED, int(vm.ft_only.size)) if vm.shared else 0
    if mode is False:
        return 0
    if mode is None:
        per_token = max(1, min(k, vm.shared)) * vm.shared * d
        n = min(n, max(MIN_CHECKED, int(AUTO_BUDGET // per_token)))
    return n


def transplant_check(E2: torch.Tensor | None, vm: VocabMap, k: int | None = None, mode: bool | None = True) -> dict:
    """Which of θ₂'s own tokens have embedding rows that are sparse combinations (``k`` atoms, by
    default min(64, d/2)) of θ₂'s rows of the shared tokens: a relative OMP residual below
    ``TRANSPLANT_RESIDUAL``, over tokens evenly spaced among θ₂'s own (their number:
    :func:`checked_count` for ``mode``). Rows that are zero are left out. ``ran``: whether the
    check ran; ``setting``: ``forced``, ``auto`` or ``off``."""
    label = {True: "forced", None: "auto", False: "off"}[mode]
    if mode is False:
        return {"ran": False, "setting": label, "checked": 0, "count": 0, "tokens": []}
    d = E2.shape[1]
    k = k or max(1, min(64, d // 2))
    m = checked_count(vm, d, k, mode)
    if m == 0:
        return {"ran": True, "setting": label, "checked": 0, "count": 0, "tokens": [], "atoms": k, "threshold": TRANSPLANT_RESIDUAL}
    pick = np.unique(np.linspace(0, vm.ft_only.size - 1, m).round().astype(int))
    Y = E2[torch.from_numpy(vm.ft_only[pick])]
    nz = (Y.norm(dim=1) > 0).numpy()
    res = omp_residuals(E2[torch.from_numpy(vm.ft_ids)], Y[torch.from_numpy(nz)], k)
    keys = [vm.ft_only_keys[j] for j, z in zip(pick, nz) if z]
    hits = [show_key(key) for key, r in zip(keys, res) if r < TRANSPLANT_RESIDUAL]
    return {"ran": True, "setting": label, "checked": int(nz.sum()), "ft_only": int(vm.ft_only.size), "count": len(hits),
            "tokens": hits[:MAX_LISTED], "atoms": k, "threshold": TRANSPLANT_RESIDUAL,
            "median_residual": float(np.median(res)) if res.size else None}


def transplant_meaning(t: dict) -> str:
    if t and t.get("ran") is False:
        return "the transplant check was switched off (--no-transplant)"
    if not t or not t.get("checked"):
        return ""
    return _transplant_finding(t) + _budget_note(t)


def _budget_note(t: dict) -> str:
    most = min(MAX_CHECKED, t.get("ft_only", 0))
    if t.get("setting") != "auto" or t["checked"] >= most:
        return ""
    return (f" (the automatic budget checked {t['checked']} of the {t['ft_only']} tokens only the second model has; "
            f"--transplant checks {most})")


def _transplant_finding(t: dict) -> str:
    if t["count"] == 0:
        return (f"none of the {t['checked']} tokens only the second model has is a sparse combination of the "
                f"shared tokens' rows (median OMP residual {t['median_residual']:.2f}): no sign of a tokenizer "
                f"transplant")
    shown = ", ".join(repr(s) for s in t["tokens"][:10])
    return (f"{t['count']} of the {t['checked']} tokens only the second model has are sparse combinations "
            f"({t['atoms']} atoms) of its shared tokens' rows (OMP residual < {t['threshold']}), e.g. {shown}: "
            f"the signature of a tokenizer transplant (mergekit's tokensurgeon builds new rows this way), "
            f"evidence that these rows were derived from the shared ones, not of independence")
