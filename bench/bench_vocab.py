"""The transplant check of ``emb`` across vocabularies (:func:`tracing.vocab.transplant_check`) on
synthetic embeddings: before (the earlier implementation, kept here verbatim as the baseline) and
after, forced (``--transplant``: up to 128 tokens), automatic (the default budget) and off.

    python -m bench.bench_vocab                                 # 32000 x 1024 and 128256 x 4096
    python -m bench.bench_vocab --sizes 32000x1024 --checked 128

Every variant runs in its own process: θ₂'s embedding [V × d] float32 (random; the last 10% of its
ids are its own tokens, half of them sparse combinations of 4 shared rows), θ₂ sharing 90% of θ₁'s
tokens, built outside the timed region. ``data`` builds them and stops: the baseline of peak RSS.
``--checked`` caps the tokens the before / forced variants look at (their work is linear in it;
default 128 at the first size, 16 at larger ones, so the 4096-wide runs take minutes, not an hour).
Wall time and the process's peak RSS (VmHWM); the records' counts and median residuals must agree.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench import common
from bench.common import Timer, emit


def old_omp_residuals(D, Y, k: int, chunk: int = 64) -> np.ndarray:
    """The implementation before this benchmark's change, verbatim (the baseline)."""
    import torch
    D = D.double()
    Dn = (D / D.norm(dim=1, keepdim=True).clamp_min(1e-300)).float()
    out = []
    for Yc in Y.double().split(chunk):
        R, S = Yc.clone(), torch.empty(Yc.shape[0], 0, dtype=torch.long)
        for _ in range(min(k, D.shape[0])):
            C = (R.float() @ Dn.T).abs()
            C.scatter_(1, S, -1.0)
            S = torch.cat([S, C.argmax(1, keepdim=True)], 1)
            A = D[S]
            G = A @ A.transpose(1, 2)
            G = G + 1e-12 * G.diagonal(dim1=1, dim2=2).sum(1)[:, None, None] * torch.eye(G.shape[1], dtype=G.dtype)
            w = torch.linalg.solve(G, A @ Yc.unsqueeze(2))
            R = Yc - (A.transpose(1, 2) @ w).squeeze(2)
        ny = Yc.norm(dim=1)
        out.append(torch.where(ny > 0, R.norm(dim=1) / ny.clamp_min(1e-300), torch.nan))
    return torch.cat(out).numpy() if out else np.empty(0)


def synthetic(V: int, d: int, seed: int = 0):
    import torch

    from tracing.vocab import VocabMap
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(V, d, generator=g)
    n_own = V // 10
    shared = V - n_own
    for j in range(0, n_own, 2):  # every other own token: a sparse combination of 4 shared rows
        idx = torch.randint(0, shared, (4,), generator=g)
        E[shared + j] = torch.randn(4, generator=g) @ E[idx]
    ids = np.arange(shared, dtype=np.int64)
    own = np.arange(shared, V, dtype=np.int64)
    vm = VocabMap(base_ids=ids, ft_ids=ids, keys=[b""] * shared, base_vocab=V, ft_vocab=V, ft_only=own,
                  ft_only_keys=[b"t%d" % i for i in own])
    return E, vm


def child(variant: str, V: int, d: int, checked: int) -> None:
    import tracing.vocab as vocab
    E, vm = synthetic(V, d)
    rec = {"variant": variant, "V": V, "d": d}
    if variant != "data":
        if variant in ("before", "forced"):
            vocab.MAX_CHECKED = checked
        if variant == "before":
            vocab.omp_residuals = old_omp_residuals
        mode = {"before": True, "forced": True, "auto": None, "off": False}[variant]
        with Timer() as t:
            r = vocab.transplant_check(None if mode is False else E, vm, mode=mode)
        rec.update(t.fields(), checked=r["checked"], count=r["count"], median_residual=r.get("median_residual"))
    emit(rec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="32000x1024,128256x4096", help="V x d, comma-separated")
    ap.add_argument("--checked", type=int, default=None, help="tokens the before/forced variants check")
    ap.add_argument("--variants", default="data,before,forced,auto,off")
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    ap.add_argument("--child", nargs=4, metavar=("VARIANT", "V", "D", "CHECKED"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], int(a.child[1]), int(a.child[2]), int(a.child[3]))
    records, rows = [], []
    with open(common.log_path(a.workdir, "bench_vocab"), "a") as log:
        for i, size in enumerate(a.sizes.split(",")):
            V, d = (int(x) for x in size.lower().split("x"))
            checked = a.checked or (128 if i == 0 else 16)
            got = {}
            for v in a.variants.split(","):
                rec = run = common.run_child(__file__, ["--child", v, str(V), str(d), str(checked)], log=log)
                if "error" in run:
                    print(f"{v} {size}: {run['error']}", file=sys.stderr)
                got[v] = rec
                records.append({**rec, "variant": v, "size": size})
            base, data = got.get("before", {}), got.get("data", {})
            for v, r in got.items():
                if v == "data" or "error" in r:
                    continue
                rows.append([f"{V} × {d}", v, r.get("checked"), r.get("count"), common.fmt_s(r.get("wall_s")),
                             common.fmt_ratio(r.get("wall_s"), base.get("wall_s")), common.fmt_gb(r.get("peak_rss")),
                             common.fmt_gb((r.get("peak_rss") or 0) - (data.get("peak_rss") or 0)),
                             "—" if r.get("median_residual") is None else f"{r['median_residual']:.6f}"])
    table = markdown_table(rows)
    print(common.machine_line())
    print(table)
    common.save_results(common.ROOT / "bench" / "results", "bench_vocab", records, common.machine_line() + "\n\n" + table)


def markdown_table(rows) -> str:
    return common.markdown_table(["V × d", "variant", "tokens checked", "transplants found", "wall s", "vs before",
                                  "peak RSS GB", "above data GB", "median residual"], rows)


if __name__ == "__main__":
    main()
