"""What reading a pair will cost on the network, before any weight is read (``main.py --dry-run``).

A model in the local cache or folder costs nothing; a hub model read by range requests costs its
files' headers and the requests its sampled rows (or named tensors) need, computed exactly from
the headers and the sampled indices; a download costs the weight files whole."""
from __future__ import annotations

from ..stats import get as get_stat


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def planned_reads(ckpt, other, options) -> int:
    """Bytes the statistics of ``options`` read from ``ckpt`` (a range-read checkpoint) when tested
    against ``other``: the sampled up_proj rows of every block (``cos``), the embedding (``emb``
    samples its columns: the tensor is read whole)."""
    from ..stats.base import sampled_rows
    b, total = ckpt.backend, 0
    for stat in options.stat:
        if get_stat(stat).sampled == "residual":
            total += b.planned_bytes(ckpt.arch.embed)
        elif get_stat(stat).sampled == "units":
            S = sampled_rows(min(ckpt.arch.h, other.arch.h), options.rows, options.seed)
            total += sum(b.planned_bytes(ckpt.arch.units(i)[0].up, S) for i in range(ckpt.arch.L))
    return total


def dry_run_lines(base: str, ft: str, options, download: bool = False) -> list[str]:
    """One line per model: where its weights come from and the bytes that will cost. Opening a hub
    model here fetches its config files and reads its weight files' headers, nothing more."""
    from ..models import Checkpoint
    b, f = Checkpoint(base, remote=True), Checkpoint(ft, remote=True)
    lines = []
    for ckpt, other in ((b, f), (f, b)):
        r = ckpt.resolved
        if not r.remote:
            where = "local folder" if r.repo_id is None else "local Hugging Face cache"
            lines.append(f"{r.spec}: read from the {where}; no network")
            continue
        total, at = ckpt.backend.total_bytes(), f"{r.repo_id} at commit {r.commit[:12]}"
        if download or options.rows is None:
            lines.append(f"{r.spec}: download {_size(total)} ({at})")
            continue
        n = ckpt.backend.header_bytes() + planned_reads(ckpt, other, options)
        lines.append(f"{r.spec}: range reads of {_size(n)} of {_size(total)} ({100 * n / max(total, 1):.2f}%; "
                     f"{at}, headers included)")
    return lines


def estimate_line(info, options) -> str | None:
    """For a launch's dry run (configs only, no network): what a sampled test (``cos --rows K``)
    reads of a hub model, against its whole size; None for other tests and local models."""
    sampled = {get_stat(s).sampled for s in options.stat if get_stat(s).screens}
    if options.rows is None or info is None or info.source not in ("hub cache",) or "units" not in sampled:
        return None
    a, bpp = info.arch, info.bytes_per_param
    rows = a.L * min(options.rows, a.h) * a.d * bpp
    emb = a.V * a.d * bpp if "residual" in sampled else 0
    total = info.params * bpp
    return (f"{info.spec}: a sampled test reads ≈ {_size(rows + emb)} of ≈ {_size(total)} when its weights are not "
            f"in the local cache (range requests; `main.py --dry-run` gives the exact bytes)")
