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
    samples its columns: the tensor is read whole); with mixtures of experts, K rows of every expert's
    up_proj (:func:`tracing.stats.experts_sampled.planned_rows`)."""
    from ..stats.base import sampled_rows
    from ..stats.experts_sampled import planned_rows
    b, total = ckpt.backend, 0
    a, o = ckpt.arch, other.arch
    for stat in options.stat:
        if get_stat(stat).sampled == "residual":
            total += b.planned_bytes(a.embed)
        elif get_stat(stat).sampled == "units" and (a.has_experts or o.has_experts):
            total += sum(b.planned_bytes(name, sampled_rows(n, options.rows, options.seed))
                         for name, n in sorted(planned_rows(a, o, options.localized)))
        elif get_stat(stat).sampled == "units":
            S = sampled_rows(min(a.h, o.h), options.rows, options.seed)
            total += sum(b.planned_bytes(a.units(i)[0].up, S) for i in range(a.L))
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
                     f"{at}, headers included{_experts_note(ckpt, other, options)})")
    return lines


def _experts_note(ckpt, other, options) -> str:
    """What a sampled experts grid reads of a mixture of experts: K rows of how many up_projs."""
    from ..stats.experts_sampled import planned_rows
    if not (ckpt.arch.has_experts or other.arch.has_experts) \
            or not any(get_stat(s).sampled == "units" for s in options.stat):
        return ""
    return f"; {options.rows} rows of each of {len(planned_rows(ckpt.arch, other.arch, options.localized))} expert and MLP up_projs"


def _sampled_bytes(info, options) -> int:
    """≈ bytes a sampled test reads of a model (from its config): K rows of every up_proj (of every
    expert and shared expert of a mixture of experts), and the embedding when a statistic that samples
    the residual stream (``emb``) is asked for."""
    a, bpp = info.arch, info.bytes_per_param
    rows = sum(min(options.rows, u.width) for i in range(a.L) for u in a.units(i)) * a.d * bpp
    return rows + (a.V * a.d * bpp if any(get_stat(s).sampled == "residual" for s in options.stat) else 0)


def estimate_line(info, options) -> str | None:
    """For a launch's dry run (configs only, no network): what a sampled test (``cos --rows K``)
    reads of a hub model, against its whole size; None for other tests and local models."""
    sampled = {get_stat(s).sampled for s in options.stat if get_stat(s).screens}
    if options.rows is None or info is None or info.source not in ("hub cache",) or "units" not in sampled:
        return None
    total = info.params * info.bytes_per_param
    return (f"{info.spec}: a sampled test reads ≈ {_size(_sampled_bytes(info, options))} of ≈ {_size(total)} when its "
            f"weights are not in the local cache (range requests; `main.py --dry-run` gives the exact bytes)")


def model_cost(info, options, download: bool = False) -> tuple[int | None, str]:
    """``(≈ bytes, how)`` a model will cost on the network, from its config (no network): nothing for
    a local model or one whose weights are in the Hugging Face cache, its weights for a download,
    its sampled rows for range reads; ``(None, why)`` when its config is not on this machine."""
    if info is None:
        return None, "config not on this machine"
    if info.source != "hub cache" or info.weights_cached:
        return 0, "local"
    total = info.params * info.bytes_per_param
    if download or options.rows is None:
        return total, "download"
    if any(get_stat(s).sampled is None for s in options.stat):  # a statistic of whole tensors, by range requests
        return total, "range reads"
    return _sampled_bytes(info, options), "range reads"


def pair_cost(infos, options, download: bool = False) -> str:
    """The network cell of a pair in a launch's plan: ≈ bytes of both models (``none`` when both
    are local or cached; ``+ ?`` for a model whose config is not on this machine)."""
    costs = [model_cost(info, options, download) for info in infos or (None, None)]
    if all(n == 0 for n, _ in costs):
        return "none"
    known = sum(n for n, _ in costs if n)
    if not known:
        return "?"
    return f"≈ {_size(known)}" + (" + ?" if any(n is None for n, _ in costs) else "")


def total_cost_line(tasks, options, download: bool = False) -> str | None:
    """For a launch's dry run: the network cost of all pairs with each model read once (a download
    is cached; sampled rows are kept in the launch's row store); None when nothing is fetched."""
    once = {}
    for t in tasks:
        for spec, info in zip((t.pair.base, t.pair.ft), t.infos or (None, None)):
            once[spec] = model_cost(info, options, download)
    if all(n == 0 for n, _ in once.values()):
        return None
    how = "downloads" if download or options.rows is None else "range reads"
    unknown = [s for s, (n, _) in once.items() if n is None]
    return (f"network: ≈ {_size(sum(n for n, _ in once.values() if n))} in all, each model once ({how} of the hub "
            f"models not in the local cache, from their configs; `main.py --dry-run` gives a pair's exact bytes)"
            + (f"; more for {len(unknown)} model(s) whose config is not on this machine" if unknown else ""))
