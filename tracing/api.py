"""The single-pair workflow as a Python API (``main.py`` is a thin wrapper around it).

>>> import tracing
>>> res = tracing.compare("demo:base-a", "demo:a-docs", stat="cos")
>>> res.verdict
'dependent'

See docs/methods.md for what each statistic tests and what its record holds.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .machine import use_device
from .models import Checkpoint, DictSource, WeightSource, from_module
from .options import Options
from .pair import Pair
from .cli_util import work_begins
from .fileio import check_writable
from .provenance import provenance
from .results import Result, make_record, save_record, summary
from .stats import get as get_stat

__all__ = ["compare", "compare_models", "run_pair", "run_opened", "summary", "Result", "save_paths"]


def save_paths(save: str | os.PathLike | dict | None, stats: list[str]) -> dict[str, Path]:
    """Where each statistic's record goes: ``x.p`` for the first, ``x_<stat>.p`` for the others;
    a folder (existing, or ending in ``/``) gets ``<stat>.p`` files."""
    if save is None:
        return {}
    if isinstance(save, dict):
        return {s: Path(save[s]) for s in stats}
    p = Path(save)
    if p.is_dir() or str(save).endswith(os.sep):
        return {s: p / f"{s}.p" for s in stats}
    suffix = p.suffix or ".p"
    return {s: (p if k == 0 else p.with_name(f"{p.stem}_{s}{suffix}")) for k, s in enumerate(stats)}


def run_pair(base: str, ft: str, options: Options | None = None, save=None, progress: bool = True,
             rows_store: str | os.PathLike | None = None, download: bool = False, digest: str | None = None,
             **kwargs) -> list[dict]:
    """Compute every statistic of ``options.stat`` for one pair of models given by id or folder;
    write and return the records (plain dicts; wrap one in :class:`Result` for attribute access).

    ``save``: a file (first statistic; the others get ``_<stat>`` appended), a folder, or a dict
    ``{stat: path}``. Raises :class:`~tracing.errors.TracingError` on bad input — before any
    result file is written and before any statistic is computed.

    ``rows_store``: a folder where sampled rows (``--rows``) are kept per model and read from by
    later pairs (:mod:`tracing.rowstore`); results are identical with or without it.

    A sampled test (``options.rows``) of a hub model that is not in the local cache reads only the
    sampled rows by HTTP range requests (:mod:`tracing.sources.remote`); ``download`` fetches the
    whole model first instead.

    ``digest``: how the record identifies local weight files (:mod:`tracing.identity`): ``"full"``
    (SHA-256, the default of a full test) or ``"fast"`` (size, modification time and a digest of the
    header; the default of a sampled test, which then reads no more than its rows).
    """
    start = time.time()
    options = options or Options(**kwargs)
    paths = save_paths(save, options.stat)
    for p in paths.values():
        check_writable(p)
    t = time.time()
    remote = options.rows is not None and not download
    digest = digest or ("fast" if options.rows is not None else "full")
    b, f = Checkpoint(str(base), remote=remote, digest=digest), Checkpoint(str(ft), remote=remote, digest=digest)
    if rows_store is not None and options.rows is not None:
        from .rowstore import with_store
        b, f = with_store(b, rows_store), with_store(f, rows_store)
    return run_opened(b, f, options, save, progress, timings={"load": time.time() - t}, start=start,
                      labels=(str(base), str(ft)))


def run_opened(b: Checkpoint, f: Checkpoint, options: Options, save=None, progress: bool = True,
               timings: dict | None = None, start: float | None = None, labels=None) -> list[dict]:
    """:func:`run_pair` on two checkpoints already opened (e.g. screened first)."""
    start = time.time() if start is None else start
    paths = save_paths(save, options.stat)
    for p in paths.values():
        check_writable(p)
    bl, fl = labels or (b.label, f.label)
    pair = Pair(b, f, options, progress, base_label=bl, ft_label=fl, timings=timings)
    t = time.time()
    models = {"base": b.provenance(), "ft": f.provenance()}
    pair.timings["digest"] = time.time() - t  # the weight files' identity (hashing, when full)
    return _run(pair, models, paths, start)


def compare(base: str, ft: str, stat: str = "cos", save=None, progress: bool = False, **options) -> Result:
    """One statistic for one pair of models given by id or folder (``demo:<name>``, hub id, folder)."""
    return Result(run_pair(base, ft, Options(stat=[stat], **options), save=save, progress=progress)[0])


def compare_models(base, ft, stat: str = "cos", *, base_config=None, ft_config=None, tokenizer=None, tokens=None,
                   save=None, progress: bool = False, base_label: str = "base", ft_label: str = "ft",
                   **options) -> Result:
    """One statistic for two models already in memory.

    ``base``/``ft``: transformers models (``nn.Module``), state dicts (then give ``base_config`` /
    ``ft_config``, a transformers config or its dict), or weight sources of :mod:`tracing.models`.
    Data statistics read ``tokens`` (token ids ``[n, T]``) when given, else ``--dataset`` options
    (``dataset="random"`` needs no tokenizer; text needs ``tokenizer``, the base model's).
    """
    start = time.time()
    opts = Options(stat=[stat], **options)
    paths = save_paths(save, opts.stat)
    for p in paths.values():
        check_writable(p)
    srcs = []
    for m, cfg, label in ((base, base_config, base_label), (ft, ft_config, ft_label)):
        src = srcs[0] if srcs and m is base else _source(m, cfg, label)
        if tokenizer is not None:
            src.tokenizer = tokenizer
        srcs.append(src)
    pair = Pair(srcs[0], srcs[1], opts, progress, base_label=base_label, ft_label=ft_label, tokens=tokens)
    models = {"base": {"id": base_label, "in_memory": True}, "ft": {"id": ft_label, "in_memory": True}}
    return Result(_run(pair, models, paths, start)[0])


def _source(m, config, label: str):
    if isinstance(m, WeightSource):  # an opened checkpoint or a view: streamed tensor by tensor
        return m
    if hasattr(m, "state_dict") and hasattr(m, "config"):
        return from_module(m, label)
    if isinstance(m, dict):
        if config is None:
            raise TypeError(f"{label}: a state dict needs its config (base_config= / ft_config=)")
        if isinstance(config, dict):
            from transformers import AutoConfig
            config = AutoConfig.for_model(**config)
        return DictSource(m, config, label)
    if hasattr(m, "get") and hasattr(m, "arch"):  # a weight source of another kind
        return m
    raise TypeError(f"{label}: expected a transformers model, a state dict with its config, or a weight source")


def _with_bytes_read(pair: Pair, models: dict) -> dict:
    """``models`` with the bytes read so far from each weight file of a model read by range
    requests (:mod:`tracing.sources.remote`)."""
    import copy
    out = copy.deepcopy(models)
    for side, src in (("base", pair.base_ckpt), ("ft", pair.ft_ckpt)):
        counts = getattr(getattr(getattr(src, "backend", None), "hub", None), "bytes_read", None)
        for f in out.get(side, {}).get("files") or [] if counts is not None else []:
            if "bytes_read" in f:
                f["bytes_read"] = counts.get(f["file"], 0)
    return out


def _run(pair: Pair, models: dict, paths: dict, start: float) -> list[dict]:
    with use_device(pair.device):  # the options' device for every tensor product of this pair
        return _run_on_device(pair, models, paths, start)


def _run_on_device(pair: Pair, models: dict, paths: dict, start: float) -> list[dict]:
    options = pair.options
    pair.check(options.stat)
    for stat in options.stat:  # data problems (tokenizers, empty text) surface before any statistic runs
        if get_stat(stat).needs_data:
            pair.tokens(pair.dataset_for(stat))
    notes = _pair_notes(pair, models)
    evals = pair.eval_losses() if options.eval else None
    prov = provenance()
    records = []
    for stat in options.stat:
        before = _store_counts(pair)
        result, aligned, timings = _compute(pair, stat)
        rec = make_record(pair, stat, result, aligned, evals, prov, _with_bytes_read(pair, models), timings,
                          time.time() - start,
                          paths.get(stat), list(notes))
        used = {side: {k: n - before[side][k] for k, n in c.items()} for side, c in _store_counts(pair).items()}
        if any(sum(c.values()) for c in used.values()):
            rec["rows_store"] = used  # tensors of sampled rows read from the store / from the weights
        if stat in paths:
            t = time.time()
            save_record(rec, paths[stat])
            rec["timings"]["save"] = time.time() - t
        records.append(rec)
    return records


def _store_counts(pair: Pair) -> dict:
    """``{side: {"from_store": n, "read": n}}`` of the sides reading sampled rows through a store."""
    return {side: src.counts() for side, src in (("base", pair.base_ckpt), ("ft", pair.ft_ckpt))
            if hasattr(src, "counts")}


def _compute(pair: Pair, stat: str):
    """The statistic, and its aligned variant when asked (without a permutation test whose
    p-value would be dropped)."""
    spec = get_stat(stat)
    work_begins()
    t, read0 = time.time(), _read_s(pair)
    opts = pair.options.for_stat(stat)
    result = spec.fn(pair.context(stat, opts), *pair.lanes(stat))
    timings = dict(pair.timings, statistic=time.time() - t)
    timings["read"] = _read_s(pair) - read0  # of the statistic's time, reading the weight files
    aligned = None
    if pair.options.align and spec.aligned:
        t = time.time()
        if not spec.gives_pvalue(opts, aligned=True) and spec.pvalue == "num_perm":
            opts = opts.replace(num_perm=0)
        if pair.upcycling:  # dense against MoE: the statistic aligns each expert to the dense MLP
            aligned = spec.aligned_upcycling(pair.context(stat, opts), pair.base, pair.ft)
        else:
            aligned = spec.fn(pair.context(stat, opts), *pair.lanes(stat, pair.aligned_ft()))
        if not spec.aligned_pvalue and spec.has_pvalue:
            aligned.log10_pvalue, aligned.exact_pvalue = None, None
            aligned.extra["note"] = ("no p-value after alignment: the permutation test's null would need every "
                                     "permuted copy re-aligned; the statistic is reported raw")
        timings["aligned_statistic"] = time.time() - t
    return result, aligned, timings


def _read_s(pair: Pair) -> float:
    """Seconds both opened checkpoints have spent reading weights so far."""
    return sum(getattr(src, "read_s", 0.0) for src in {id(s): s for s in (pair.base_ckpt, pair.ft_ckpt)}.values())


def _pair_notes(pair: Pair, models: dict) -> list[str]:
    from .identity import file_identity

    def weights(m):
        files = [file_identity(f, m.get("path")) for f in m.get("files", [])]
        return sorted(files) if files and all(files) else None

    notes = [f"{ck.label}: the language model of a {ck.arch.wrapper} checkpoint ({ck.arch.model_type}) was read; "
             f"its vision tower is ignored" for ck in (pair.base_ckpt, pair.ft_ckpt) if ck.arch.wrapper]
    a, b = weights(models["base"]), weights(models["ft"])
    same = (a is not None and a == b) or pair.base_ckpt is pair.ft_ckpt
    if not same:
        return notes
    o = pair.options
    if o.permute or o.rotate:
        return notes + ["the fine-tuned model is the base itself, transformed by --permute/--rotate"]
    return notes + ["the base and the fine-tuned model are the same weights: every p-value sits at its floor"]
