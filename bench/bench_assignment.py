"""The assignment step of MATCH alone, from a float32 cosine matrix C (n × n) to the permutation.

    python -m bench.bench_assignment                         # n = 4096, 11008, 28672
    python -m bench.bench_assignment --sizes 4096,11008 --kinds indep --layers 2

Cost matrices: C = cos(rows of W₁, rows of W₂) with W ~ N(0, 1) of shape n × d (d = 4096, or
8192 for n > 16384): ``ft`` has W₂ = W₁ + 0.1·N(0, 1) (fine-tune-like: the row argmax is the
identity), ``indep`` has W₂ independent.  Each C is computed once and cached as a float32 .npy
under the work directory; every variant then runs in its own process:

  shortcut   tracing.align.argmax_shortcut(C) alone (the row argmax and its injectivity check)
  ours       what tracing.align.match does after the cosine product: C lives in the first half of
             a float64 buffer; shortcut, else C widened in place into the negated float64 cost
             matrix, minimised by scipy (``solve``)
  negated-copy  shortcut, else ``negated_cost(C)`` (a float64 copy; C dropped once it exists), then
             ``solve`` — the public helpers as ``emb`` uses them
  naive      ``linear_sum_assignment(C, maximize=True)`` on C as it is (float32 → scipy converts)
  serial     ``--layers`` different problems (row-permuted copies of C) solved one after the other
             by the solver (no shortcut, so that the solver itself is measured)
  threads    the same problems solved in a thread pool of ``--layers`` workers (scipy releases the GIL)

Peak RSS includes the input (C itself, 4n² bytes; for serial/threads the float64 problems, built
chunk-wise from the cache file): the "input GiB" column is the RSS right after loading it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import common  # noqa: E402
from bench.common import Timer, emit  # noqa: E402


def width_for(n: int) -> int:
    return 8192 if n > 16384 else 4096


def cache_file(workdir: Path, n: int, kind: str) -> Path:
    return workdir / "assignment" / f"C-{kind}-{n}.npy"


# ------------------------------------------------------------------------------------------
# children
# ------------------------------------------------------------------------------------------
def prepare(path: Path, n: int, kind: str) -> dict:
    import numpy as np
    import torch
    from tracing.align import cosine_matrix
    if path.is_file():
        return {"cached": True}
    d = width_for(n)
    g = torch.Generator().manual_seed(n)
    W1 = torch.randn(n, d, generator=g)
    W2 = W1 + 0.1 * torch.randn(n, d, generator=g) if kind == "ft" else torch.randn(n, d, generator=g)
    with Timer() as t:
        C = cosine_matrix(W1, W2, device="cpu")
    del W1, W2
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, C.numpy())
    tmp.rename(path)
    return {"cached": False, "cosine_s": t.wall, "d": d}


def _read_C(path: Path, into_cost_buffer: bool):
    """C from the cache file, read straight into its final memory (no temporary copy).

    ``into_cost_buffer``: as tracing.align.match holds it — C in the first half of a float64
    buffer of its shape (the second half untouched); returns (C tensor, buffer or None)."""
    import numpy as np
    import torch
    arr = np.load(path, mmap_mode="r")
    (n, m), offset = arr.shape, arr.offset
    del arr
    if into_cost_buffer:
        buf = np.empty((n, m), dtype=np.float64)
        c32 = buf.reshape(-1).view(np.float32)[: n * m].reshape(n, m)
    else:
        buf, c32 = None, np.empty((n, m), dtype=np.float32)
    with open(path, "rb") as f:
        f.seek(offset)
        f.readinto(memoryview(c32.reshape(-1)).cast("B"))
    return torch.from_numpy(c32), buf


def _problems(path: Path, k: int):
    """``k`` float64 negated cost matrices, each C with its rows permuted by a different seed
    (the same difficulty, a different problem), built chunk-wise without holding C."""
    import numpy as np
    arr = np.load(path, mmap_mode="r")
    n, offset = arr.shape[0], arr.offset
    del arr
    out = []
    for j in range(k):
        perm = np.random.default_rng(j).permutation(n) if j else np.arange(n)
        cost = np.empty((n, n), dtype=np.float64)
        with open(path, "rb") as f:
            row = np.empty(n, dtype=np.float32)
            for i in range(n):
                f.seek(offset + 4 * n * int(perm[i]))
                f.readinto(row)
                np.negative(row, out=cost[i])
        out.append(cost)
    return out


def _check(perm, kind: str) -> bool:
    import numpy as np
    perm = np.asarray(perm)
    if len(np.unique(perm)) != len(perm):
        return False
    return bool((perm == np.arange(len(perm))).all()) if kind == "ft" else True


def run_variant(variant: str, path: Path, kind: str, layers: int) -> dict:
    import numpy as np
    from scipy.optimize import linear_sum_assignment
    from tracing.align import _negate_widen, argmax_shortcut, negated_cost, solve

    if variant in ("serial", "threads"):
        costs = _problems(path, layers)
        input_rss = common.rss_bytes()
        with Timer() as t:
            if variant == "serial":
                perms = [solve(c) for c in costs]
            else:
                from concurrent.futures import ThreadPoolExecutor
                with ThreadPoolExecutor(max_workers=layers) as pool:
                    perms = list(pool.map(solve, costs))
        ok = all(len(np.unique(p)) == len(p) for p in perms) and (kind != "ft" or _check(perms[0], kind))
        return {**t.fields(), "input_rss": input_rss, "ok": ok, "used": "solver", "layers": layers}

    C, buf = _read_C(path, into_cost_buffer=(variant == "ours"))
    input_rss = common.rss_bytes()
    used = None
    with Timer() as t:
        if variant == "shortcut":
            perm = argmax_shortcut(C)
            used = "shortcut" if perm is not None else "shortcut failed"
        elif variant == "ours":  # tracing.align.match after its cosine product
            perm = argmax_shortcut(C)
            used = "shortcut"
            if perm is None:
                del C
                perm = solve(_negate_widen(buf))
                used = "solver"
            del buf
        elif variant == "negated-copy":  # the public negated_cost: a float64 copy, then C dropped
            perm = argmax_shortcut(C)
            used = "shortcut"
            if perm is None:
                cost = negated_cost(C)
                del C
                perm = solve(cost)
                del cost
                used = "solver"
        elif variant == "naive":
            perm = linear_sum_assignment(C.numpy(), maximize=True)[1]
            used = "solver (maximize=True)"
        else:
            raise ValueError(variant)
    ok = perm is None or _check(perm, kind)
    return {**t.fields(), "input_rss": input_rss, "ok": ok, "used": used}


VARIANTS = ("shortcut", "ours", "negated-copy", "naive", "serial", "threads")


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4096,11008,28672")
    ap.add_argument("--kinds", default="ft,indep")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--layers", type=int, default=2, help="problems for serial/threads (default 2 = the cores)")
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    ap.add_argument("--out", type=Path, default=common.ROOT / "bench" / "results")
    ap.add_argument("--cleanup", action="store_true", help="delete the cached cost matrices at the end")
    ap.add_argument("--variant")
    ap.add_argument("--n", type=int)
    ap.add_argument("--kind")
    a = ap.parse_args(argv)

    if a.variant:
        path = cache_file(a.workdir, a.n, a.kind)
        res = prepare(path, a.n, a.kind) if a.variant == "prepare" else run_variant(a.variant, path, a.kind, a.layers)
        emit({"variant": a.variant, **res})
        return

    sizes = [int(s) for s in a.sizes.split(",") if s]
    kinds = [k for k in a.kinds.split(",") if k]
    variants = [v for v in a.variants.split(",") if v]
    records = []
    a.out.mkdir(parents=True, exist_ok=True)
    with open(common.log_path(a.workdir, "bench_assignment"), "a") as log:
        for n in sizes:
            for kind in kinds:
                common_args = ["--n", str(n), "--kind", kind, "--workdir", str(a.workdir), "--layers", str(a.layers)]
                prep = common.run_child(__file__, ["--variant", "prepare", *common_args], log=log)
                if "error" in prep:
                    print(prep["error"], file=sys.stderr)
                    continue
                for v in variants:
                    rec = common.run_child(__file__, ["--variant", v, *common_args], log=log)
                    rec.update(n=n, kind=kind, variant=v)
                    records.append(rec)
                    print(json.dumps(rec), file=sys.stderr, flush=True)
                if a.cleanup:
                    cache_file(a.workdir, n, kind).unlink(missing_ok=True)

    table = make_table(records)
    header = f"bench_assignment — {common.machine_line()}"
    print(f"\n{header}\n\n{table}")
    common.save_results(a.out, "bench_assignment", records, f"{header}\n\n{table}")


def make_table(records: list[dict]) -> str:
    by = {(r["n"], r["kind"], r["variant"]): r for r in records}
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["n"], r["kind"], r["variant"], "failed: " + r["error"].splitlines()[-1][:80]] + [""] * 7)
            continue
        naive = by.get((r["n"], r["kind"], "naive"), {})
        serial = by.get((r["n"], r["kind"], "serial"), {})
        ref = serial if r["variant"] in ("serial", "threads") else naive
        extra = r["peak_rss"] - r["input_rss"]
        rows.append([r["n"], r["kind"], r["variant"], r.get("used", ""), common.fmt_s(r["wall_s"]),
                     f"{r['load_start']:.1f}/{r['load_end']:.1f}", common.fmt_gb(r["input_rss"]),
                     common.fmt_gb(r["peak_rss"]), common.fmt_gb(extra),
                     common.fmt_ratio(r["wall_s"], ref.get("wall_s")) + " / " +
                     common.fmt_ratio(extra, ref.get("peak_rss", 0) - ref.get("input_rss", 0) if ref else None),
                     "yes" if r.get("ok") else "NO"])
    return common.markdown_table(
        ["n", "C", "variant", "path taken", "wall s", "load avg start/end", "input GiB", "peak RSS GiB",
         "peak − input GiB", "vs naive (serial for threads): wall / extra mem", "valid"], rows)


if __name__ == "__main__":
    main()
