"""The single-pair workflow as a Python API (``main.py`` is a thin wrapper around it).

>>> from tracing import compare
>>> rec = compare("demo:base-a", "demo:a-docs", stat="cos")
>>> rec["log10_pvalue"] < -6
True
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from . import pvalues
from .align import align
from .data import default_dataset, token_blocks, tokenizers_compatible
from .errors import TracingError
from .evaluate import lm_losses, perplexity
from .models import Checkpoint, default_device, resolve_dtype
from .options import Options
from .results import check_writable, provenance, save_record
from .stats import Context
from .stats import get as get_stat
from .transforms import fold_norms, permute, rotate


# emb's matching *is* the residual alignment, so an aligned emb would manufacture evidence (DESIGN §4).
NO_ALIGNED_VARIANT = {"emb"}
# PERMTEST compares against random permutations of θ₂; after alignment that null no longer holds.
NO_ALIGNED_PVALUE = {"l2", "mode"}


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


class _Pair:
    """The two opened models and everything computed once per pair (data, alignment, eval)."""

    def __init__(self, base_spec: str, ft_spec: str, options: Options, progress: bool):
        self.base_spec, self.ft_spec, self.options, self.progress = base_spec, ft_spec, options, progress
        self.timings: dict[str, float] = {}
        t = time.time()
        self.base_ckpt = Checkpoint(base_spec)
        self.ft_ckpt = Checkpoint(ft_spec)
        self.timings["load"] = time.time() - t
        self.fold_norms = options.fold_norms
        if self.fold_norms is None:  # AWQ moves scales between norms and layers: undo that in both models
            self.fold_norms = any(getattr(c.quantized, "format", None) == "awq" for c in (self.base_ckpt, self.ft_ckpt))
        self.base = fold_norms(self.base_ckpt) if self.fold_norms else self.base_ckpt
        self.device = options.device or default_device()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise TracingError("--device cuda was given but no GPU is visible; use --device cpu")
        self.dtype = resolve_dtype(options.dtype, self.device)
        t = time.time()
        ft = fold_norms(self.ft_ckpt) if self.fold_norms else self.ft_ckpt
        if options.permute:
            ft = permute(ft, seed=options.seed)
        if options.rotate:
            ft = rotate(ft, seed=options.seed + 1)
        self.ft = ft
        self.timings["transform"] = time.time() - t
        self._tokens: dict[str, torch.Tensor] = {}
        self._alignment = None
        self._tok_checked = False

    @property
    def is_demo(self) -> bool:
        return self.base_spec.startswith("demo:")

    def tokens(self, dataset: str) -> torch.Tensor:
        if dataset not in self._tokens:
            t = time.time()
            shared = min(self.base.arch.V, self.ft_ckpt.arch.V)
            tok = self.base_ckpt.tokenizer()
            if not self._tok_checked:
                ok, why = tokenizers_compatible(tok, self.ft_ckpt.tokenizer(), shared)
                if not ok:
                    raise TracingError(f"the tokenizers of {self.base_spec} and {self.ft_spec} are not compatible "
                                       f"({why}); data statistics need the same ids for the same text — use a weight "
                                       f"statistic (cos, emb, l2) for this pair")
                self._tok_checked = True
            o = self.options
            self._tokens[dataset] = token_blocks(dataset, tokenizer=tok, shared_vocab=shared,
                                                 block_size=o.block_size, num_samples=o.num_samples, seed=o.seed,
                                                 base_spec=self.base_spec, ft_spec=self.ft_spec,
                                                 generated_dir=o.generated_dir)
            self.timings["data"] = self.timings.get("data", 0.0) + time.time() - t
        return self._tokens[dataset]

    def dataset_for(self, stat: str) -> str:
        return self.options.dataset or default_dataset(stat, self.is_demo)

    def context(self, stat: str | None) -> Context:
        opts = self.options.for_stat(stat) if stat else self.options
        return Context(opts, self.device, self.dtype, self.progress,
                       tokens=lambda: self.tokens(self.dataset_for(stat or "eval")))

    def aligned_ft(self):
        if self._alignment is None:
            t = time.time()
            self._alignment = align(self.base, self.ft, progress=self.progress)
            self.timings["align"] = time.time() - t
        return self._alignment.apply(self.ft)

    def eval_losses(self) -> dict:
        ctx = self.context(None)
        dataset = self.dataset_for("eval")
        t = time.time()
        lb, lf = lm_losses(ctx.engine(), [self.base, self.ft], self.tokens(dataset), desc="eval")
        self.timings["eval"] = time.time() - t
        return {"dataset": dataset, "base loss": lb, "ft loss": lf, "base ppl": perplexity(lb), "ft ppl": perplexity(lf)}


def run_pair(base: str, ft: str, options: Options | None = None, save=None, progress: bool = True,
             **kwargs) -> list[dict]:
    """Compute every statistic of ``options.stat`` for one pair; write and return the records.

    ``save``: a file (first statistic; the others get ``_<stat>`` appended), a folder, or a dict
    ``{stat: path}``.  Raises :class:`~tracing.errors.TracingError` on bad input — before any
    result file is written.
    """
    start = time.time()
    options = options or Options(**kwargs)
    paths = save_paths(save, options.stat)
    for p in paths.values():
        check_writable(p)
    pair = _Pair(str(base), str(ft), options, progress)
    prov_models = {"base": pair.base_ckpt.provenance(), "ft": pair.ft_ckpt.provenance()}
    evals = pair.eval_losses() if options.eval else None
    prov = provenance()
    records = []
    for stat in options.stat:
        spec = get_stat(stat)
        t = time.time()
        ctx = pair.context(stat)
        result = spec.fn(ctx, pair.base, pair.ft)
        timings = dict(pair.timings, statistic=time.time() - t)
        aligned = None
        if options.align and stat not in NO_ALIGNED_VARIANT:
            t = time.time()
            aligned = spec.fn(ctx, pair.base, pair.aligned_ft())
            if stat in NO_ALIGNED_PVALUE and aligned.log10_pvalue is not None:
                aligned.log10_pvalue = None
                aligned.extra["note"] = ("no p-value after alignment: the permutation test's null would need "
                                         "every permuted copy re-aligned; the statistic is reported raw")
            timings["aligned_statistic"] = time.time() - t
        rec = make_record(pair, stat, result, aligned, evals, prov, prov_models, timings,
                          time.time() - start, paths.get(stat))
        if stat in paths:
            t = time.time()
            save_record(rec, paths[stat])
            rec["timings"]["save"] = time.time() - t
        records.append(rec)
    return records


def make_record(pair: _Pair, stat, result, aligned, evals, prov, models, timings, elapsed, path) -> dict:
    o = pair.options
    args = {**o.for_stat(stat).to_dict(), "stat": stat, "base_model_id": pair.base_spec,
            "ft_model_id": pair.ft_spec, "save": str(path) if path else None}
    spec = get_stat(stat)
    rec = {
        "args": args,
        "commit": prov["commit"],
        "non-aligned test stat": result.legacy_value(),
        **({"aligned test stat": aligned.legacy_value()} if aligned is not None else {}),
        **({"base loss": evals["base loss"], "ft loss": evals["ft loss"]} if evals else {}),
        "time": elapsed,
        "base_model_id": pair.base_spec,
        "ft_model_id": pair.ft_spec,
        **result.to_dict(),
        "has_pvalue": spec.has_pvalue,
        "aligned": aligned.to_dict() if aligned is not None else None,
        "eval": evals,
        "data": ({"dataset": pair.dataset_for(stat), "num_blocks": int(pair._tokens[pair.dataset_for(stat)].shape[0]),
                  "block_size": o.block_size} if spec.needs_data and pair.dataset_for(stat) in pair._tokens else None),
        "transforms": {"permute": o.permute, "rotate": o.rotate, "align": o.align, "seed": o.seed,
                       "fold_norms": pair.fold_norms},
        "timings": timings,
        "models": models,
        **{k: prov[k] for k in ("versions", "host", "job_id")},
        "status": "ok",
        "error": None,
        "device": pair.device,
    }
    rec["verdict"] = verdict(rec.get("log10_pvalue"), o.significance)
    return rec


def verdict(log10p, significance: float) -> str | None:
    if log10p is None or not math.isfinite(log10p):
        return None
    return "dependent" if log10p < math.log10(significance) else "not significant"


def compare(base: str, ft: str, stat: str = "cos", save=None, progress: bool = False, **options) -> dict:
    """One statistic for one pair; returns the result record (see DESIGN §7)."""
    return run_pair(base, ft, Options(stat=[stat], **options), save=save, progress=progress)[0]


def summary(rec: dict) -> str:
    """A one-paragraph human summary of a record."""
    o = rec["args"]
    lines = [f"{rec['stat']}: {rec['base_model_id']} vs {rec['ft_model_id']}"]
    if rec.get("log10_pvalue") is not None:
        lines.append(f"  p-value {pvalues.format_pvalue(rec['log10_pvalue'])} (log10 p = {rec['log10_pvalue']:.4g}); "
                     f"verdict at {o['significance']}: {rec['verdict']}")
    else:
        lines.append(f"  statistic {rec['statistic']:.6g} (no p-value)")
    if rec.get("extra", {}).get("barrier") is not None:
        x = rec["extra"]
        lines.append(f"  loss at α={x['alpha']}: {x['loss_alpha']:.4f}, barrier {x['barrier']:.4f}")
    if rec.get("aligned"):
        a = rec["aligned"]
        if a.get("log10_pvalue") is not None:
            lines.append(f"  after alignment: p-value {pvalues.format_pvalue(a['log10_pvalue'])}")
        else:
            lines.append(f"  after alignment: statistic {a['statistic']:.6g}")
    if rec.get("eval"):
        e = rec["eval"]
        lines.append(f"  loss base {e['base loss']:.4f} (ppl {e['base ppl']:.2f}), ft {e['ft loss']:.4f} "
                     f"(ppl {e['ft ppl']:.2f}) on {e['dataset']}")
    lines.append(f"  time {rec['time']:.1f} s; commit {rec['commit']}")
    return "\n".join(lines)
