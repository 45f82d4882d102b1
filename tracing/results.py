"""The record of one comparison, its one owner: building it, saving and loading it (plain-Python
dicts written atomically as pickles), iterating a folder of them, the rows the report and the
lineage read (variant, finiteness, "at the floor"), its summary text and :class:`Result`.

Pickles run code when loaded: only load results you wrote yourself.
"""
from __future__ import annotations

import math
import numbers
import os
import pickle
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import pvalues
from .errors import TracingError
from .fileio import atomic_open, check_writable
from .provenance import provenance, scrub
from .results_folder import RESULT_SUFFIXES
from .verdict import FLOOR, INTERPRETATION, NULL, verdict


def stat_spec(stat):
    """The registered facts of ``stat``; None for a statistic this toolkit does not know."""
    from .stats import get
    try:
        return get(str(stat))
    except TracingError:
        return None


# ------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------
BLOCK_MAP_KEYS = ("per_pair", "correspondence", "matched", "correspondence_note")
#: where non-finite weights are looked for (an error when found): a sampled test reads some rows only
FINITE_CHECKED = ("the tensors (rows) the statistic read; tensors and rows it did not read (e.g. gate/down for "
                  "cos, unsampled rows with --rows) were not checked")


def _variant(spec, res, significance: float) -> dict:
    """One variant (raw or aligned) of a statistic's outcome, with its verdict."""
    d = res.to_dict()
    for key in BLOCK_MAP_KEYS:  # the block map's grid and correspondence are record keys
        if key in d["extra"]:
            d[key] = d["extra"].pop(key)
    has_p = d["log10_pvalue"] is not None
    d["pvalue_kind"] = spec.pvalue_kind if has_p else None
    d["verdict"] = verdict(d["log10_pvalue"], significance, spec.exact) if has_p else None
    d["at_floor"] = at_floor(d, spec) if has_p else False
    return d


def at_floor(d: dict, spec) -> bool:
    """Every block's Spearman correlation is exactly 1 (the p-value is the test's smallest)."""
    rows = d.get("per_layer") or []
    if rows:
        return all(r.get("statistic") == 1.0 for r in rows)
    return bool(spec is not None and spec.spearman and d.get("statistic") == 1.0)


def make_record(pair, stat, result, aligned, evals, prov, models, timings, elapsed, path, notes) -> dict:
    """The plain dict written for one statistic: the legacy keys, then the structured ones."""
    o = pair.options
    spec = stat_spec(stat)
    args = {**o.for_stat(stat).to_dict(), "stat": stat, "base_model_id": pair.base_spec,
            "ft_model_id": pair.ft_spec, "save": str(path) if path else None}
    raw = _variant(spec, result, o.significance)
    alig = _variant(spec, aligned, o.significance) if aligned is not None else None
    data = pair.data_used(stat) if spec.needs_data else None
    if data and data["num_blocks"] < data["num_samples_asked"]:
        notes.append(f"used {data['num_blocks']} of the {data['num_samples_asked']} blocks asked for "
                     f"({data['dataset']} holds no more text at --block_size {data['block_size']})")
    bos = (data or {}).get("bos") or (evals or {}).get("bos")
    if bos:
        notes.append(f"each evaluation window starts with the tokenizer's BOS token {bos['token']} (id {bos['id']}; "
                     f"its config adds one), as the models saw text in training")
    notes += [str(n) for n in (result.extra.get("notes") or [])]
    rec = {
        "args": args,
        "commit": prov["commit"],
        "non-aligned test stat": result.legacy_value(),
        **({"aligned test stat": alig["pvalue"]} if alig is not None and alig["log10_pvalue"] is not None else {}),
        **({"base loss": evals["base loss"], "ft loss": evals["ft loss"]} if evals else {}),
        "time": elapsed,
        "base_model_id": pair.base_spec,
        "ft_model_id": pair.ft_spec,
        **raw,
        "has_pvalue": raw["log10_pvalue"] is not None,
        "null": NULL,
        "finite_checked": FINITE_CHECKED,
        "aligned": alig,
        "eval": evals,
        "data": data,
        "notes": notes,
        "transforms": {"permute": o.permute, "rotate": o.rotate, "align": o.align, "seed": o.seed,
                       "fold_norms": pair.fold_norms},
        "timings": timings,
        "models": models,
        **{k: prov[k] for k in ("versions", "host", "job_id")},
        "status": "ok",
        "error": None,
        "device": pair.device,
    }
    return rec


def failure_record(base: str, ft: str, stat: str, options: dict, error: BaseException, elapsed: float) -> dict:
    msg = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    rec = {
        "args": {**options, "base_model_id": base, "ft_model_id": ft, "stat": stat},
        "commit": None, "non-aligned test stat": None, "time": elapsed,
        "stat": stat, "base_model_id": base, "ft_model_id": ft,
        "pvalue": None, "log10_pvalue": None, "statistic": None, "per_layer": [],
        "status": "failed", "error": f"{type(error).__name__}: {msg}",
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))[-4000:],
    }
    rec.update(provenance())
    return rec


# ------------------------------------------------------------------------------------------
# Saving, loading, iterating
# ------------------------------------------------------------------------------------------
def check_plain(obj, path="record"):
    """Records hold plain Python values only (no tensors, arrays or Namespaces)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{path}: non-plain key {k!r}")
            check_plain(v, f"{path}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{path}[{i}]")
        return
    raise TypeError(f"{path}: {type(obj).__name__} is not a plain Python value")


def save_record(record: dict, path: str | os.PathLike) -> Path:
    """Write atomically: a temp file in the same folder, then rename (never a half-written result)."""
    record = scrub(record)
    check_plain(record)
    p = check_writable(path)
    with atomic_open(p, "wb") as f:
        pickle.dump(record, f, protocol=4)
    return p


def load_record(path: str | os.PathLike) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def is_done(path: str | os.PathLike) -> bool:
    """A result exists and did not fail (failed pairs are retried)."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        return load_record(p).get("status", "ok") == "ok"
    except Exception:
        return False


def iter_records(folder: str | os.PathLike):
    """Every result pickle under ``folder``, sorted: yields ``(relative path, record, error)`` with
    ``record`` a dict and ``error`` None, or ``record`` None and ``error`` a one-line reason for a
    file that cannot be read or holds no record. Hidden folders (job machinery such as
    submitit's own pickles) are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TracingError(f"results folder {folder} does not exist")
    files = sorted(f for f in folder.rglob("*") if f.suffix in RESULT_SUFFIXES and f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(folder).parts))
    for f in files:
        rel = str(f.relative_to(folder))
        try:
            rec = load_record(f)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not fatal
            yield rel, None, f"{type(e).__name__}: {str(e)[:200]}"
            continue
        if isinstance(rec, dict):
            yield rel, rec, None
        else:
            yield rel, None, f"not a result record ({type(rec).__name__})"


# ------------------------------------------------------------------------------------------
# Rows: the vocabulary the report and the lineage read
# ------------------------------------------------------------------------------------------
def finite(x) -> bool:
    """A real number that is neither NaN nor infinite (None, strings and booleans are not)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


def flag(v) -> bool:
    """A table cell read as a yes/no option (NaN, None and False are no)."""
    return bool(v) and not (isinstance(v, float) and math.isnan(v))


def variants(rec: dict) -> list[tuple[str, dict]]:
    """``(name, outcome)`` of each variant a record holds: ``raw``, then ``aligned`` when it was run."""
    out = [("raw", rec)]
    if isinstance(rec.get("aligned"), dict):
        out.append(("aligned", rec["aligned"]))
    return out


def variant_of(row) -> str:
    """The grid a row belongs to: statistic, transforms of θ₂, the options that change what it
    measures with their values (K of a sampled test: ``cos --rows 256``), raw or aligned (e.g.
    ``cos --permute [aligned]``)."""
    stat = row.get("stat")
    if stat is None or (isinstance(stat, float) and math.isnan(stat)):
        return "?"
    spec = stat_spec(stat)
    parts = [str(stat)]
    for name in ("permute", "rotate") + (tuple(spec.variant_flags) if spec is not None else ()):
        v = row.get(name)
        if flag(v):
            parts.append(f"--{name}" + _option_value(v))
    label = " ".join(parts)
    return label + " [aligned]" if flag(row.get("aligned")) else label


def _option_value(v) -> str:
    """`` VALUE`` of a valued option in a variant's name (K of ``--rows``); nothing for a yes/no flag."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):  # numpy's bool is no numbers.Real
        return ""
    return f" {int(v)}" if float(v).is_integer() else f" {v:g}"


def floor_of(res: dict, stat) -> bool:
    """Whether one variant's p-value is at the floor of its test: the value the record stores (see
    :func:`at_floor`), computed by the same rule for a record written before it was stored."""
    if "at_floor" in res:
        return bool(res["at_floor"])
    return res.get("log10_pvalue") is not None and at_floor(res, stat_spec(stat))


def record_rows(rec: dict, path: str = "", per_layer: bool = False) -> list[dict]:
    base = {
        "file": path, "base": rec.get("base_model_id") or rec.get("args", {}).get("base_model_id"),
        "ft": rec.get("ft_model_id") or rec.get("args", {}).get("ft_model_id"),
        "stat": rec.get("stat") or rec.get("args", {}).get("stat"),
        "status": rec.get("status", "ok"), "error": rec.get("error"),
        "base_loss": rec.get("base loss"), "ft_loss": rec.get("ft loss"),
        "time": rec.get("time"), "commit": rec.get("commit"), "job_id": rec.get("job_id"),
        "permute": rec.get("args", {}).get("permute"), "rotate": rec.get("args", {}).get("rotate"),
        "significance": rec.get("args", {}).get("significance", 0.01),
        # options that change what a statistic measures (mode: which parts are interpolated)
        "attn": rec.get("args", {}).get("attn"), "emb": rec.get("args", {}).get("emb"),
        "num_perm": rec.get("args", {}).get("num_perm"),
        # sampled cos / emb: K units (from the sampled rows recorded when the options lack it)
        "rows": rec.get("args", {}).get("rows") or (rec.get("extra") or {}).get("rows"),
        "localized": "per_pair" in rec,  # a block map (models of different shapes)
    }
    rows = []
    for name, res in variants(rec):
        row = dict(base, aligned=(name == "aligned"), statistic=res.get("statistic"),
                   pvalue=res.get("pvalue"), log10_pvalue=res.get("log10_pvalue"),
                   at_floor=floor_of(res, base["stat"]))
        for k in ("barrier", "loss_alpha", "alpha", "median_cos"):
            if k in res.get("extra", {}) or k in res:
                row[k] = res.get(k, res.get("extra", {}).get(k))
        fixed = (res.get("extra") or {}).get("fixed_points")
        if isinstance(fixed, dict):  # cos: the fixed-point test of the same matching (partial sharing)
            row["fixed_log10_pvalue"] = fixed.get("log10_pvalue")
        lp = row["log10_pvalue"]
        row["significant"] = (lp < math.log10(row["significance"])) if finite(lp) else None
        if per_layer:
            for layer in res.get("per_layer") or []:
                rows.append({**row, **{f"layer_{k}" if k != "layer" else "layer": v for k, v in layer.items()}})
        else:
            rows.append(row)
    return rows


def load_results(folder: str | os.PathLike, per_layer: bool = False, csv: str | None = None,
                 parquet: str | None = None):
    """One tidy DataFrame row per pair × statistic (× aligned or not; × layer with ``per_layer``);
    files that hold no readable record get a row with status ``unreadable``."""
    import pandas as pd
    rows = []
    for rel, rec, error in iter_records(folder):
        if rec is None:
            rows.append({"file": rel, "status": "unreadable", "error": error})
        else:
            rows += record_rows(rec, rel, per_layer=per_layer)
    df = pd.DataFrame(rows)
    if csv:
        df.to_csv(csv, index=False)
    if parquet:
        df.to_parquet(parquet, index=False)
    return df


# ------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------
def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def _pline(d: dict, significance) -> str:
    return (f"p-value {pvalues.format_pvalue(d['log10_pvalue'])} ({d['pvalue_kind']}; log10 p = "
            f"{pvalues.format_log10(d['log10_pvalue'])}); verdict at {significance}: {d['verdict']}"
            + (f" — {FLOOR}" if d.get("at_floor") else ""))


def _value_name(rec: dict, spec) -> str:
    """The statistic's name; one taken at an interpolation point names its α (``LM loss at α = 0.5``)."""
    alpha = (rec.get("extra") or {}).get("alpha")
    return f"{spec.value_name} = {alpha:g}" if spec.at_alpha and alpha is not None else spec.value_name


def _value_lines(rec: dict, spec) -> list[str]:
    lines = []
    if rec.get("log10_pvalue") is not None:
        lines.append("  " + _pline(rec, rec["args"]["significance"]))
        if spec.value_name != "statistic":
            lines.append(f"  {_value_name(rec, spec)}: {_fmt(rec['statistic'])}")
    else:
        lines.append(f"  {_value_name(rec, spec)}: {_fmt(rec['statistic'])} (no p-value)")
    if rec.get("per_pair") is not None:
        from .stats.blockmap import explain
        lines += explain(rec)
    return lines + [f"  {line}" for line in (spec.explain(rec) if spec.explain else [])]


def summary(rec) -> str:
    """A short human summary of a record (or :class:`Result`)."""
    rec = rec.record if isinstance(rec, Result) else rec
    spec = stat_spec(rec["stat"])
    lines = [f"{rec['stat']}: {rec['base_model_id']} vs {rec['ft_model_id']}"]
    lines += _value_lines(rec, spec)
    a = rec.get("aligned")
    if a:
        if a.get("log10_pvalue") is not None:
            lines.append("  after alignment: " + _pline(a, rec["args"]["significance"]))
        else:
            lines.append(f"  after alignment: {_value_name(a, spec)}: {_fmt(a['statistic'])} (no p-value)")
    if rec.get("eval"):
        e = rec["eval"]
        lines.append(f"  loss base {e['base loss']:.4f} (ppl {e['base ppl']:.2f}), ft {e['ft loss']:.4f} "
                     f"(ppl {e['ft ppl']:.2f}) on {e['dataset']}")
    for n in rec.get("notes") or []:
        lines.append(f"  note: {n}")
    lines.append(f"  null hypothesis: {NULL}. {INTERPRETATION}")
    lines.append(f"  time {rec['time']:.1f} s; commit {rec['commit']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Result
# ------------------------------------------------------------------------------------------
#: the record keys a :class:`Result` declares as attributes (any key is read by ``result["key"]``)
RESULT_FIELDS = ("stat", "statistic", "pvalue", "log10_pvalue", "pvalue_kind", "verdict", "at_floor",
                 "has_pvalue", "per_layer", "extra", "notes")


@dataclass(frozen=True, eq=False, repr=False)
class Result:
    """One statistic's outcome, scipy-style: ``statistic``, ``pvalue``, ``log10_pvalue`` (authoritative),
    ``per_layer``, ``verdict``, ``pvalue_kind``, ``at_floor``, ``aligned`` (a :class:`Result` or None)
    and ``record`` (the plain dict that is pickled). ``result["key"]`` reads any key of the record."""

    record: dict
    parent: "Result | None" = field(default=None, compare=False)
    stat: str | None = field(init=False)
    statistic: object = field(init=False)
    pvalue: float | None = field(init=False)
    log10_pvalue: float | None = field(init=False)
    pvalue_kind: str | None = field(init=False)
    verdict: str | None = field(init=False)
    at_floor: bool | None = field(init=False)
    has_pvalue: bool | None = field(init=False)
    per_layer: list | None = field(init=False)
    extra: dict | None = field(init=False)
    notes: list | None = field(init=False)
    aligned: "Result | None" = field(init=False)

    def __post_init__(self):
        for name in RESULT_FIELDS:
            object.__setattr__(self, name, self.record.get(name))
        a = self.record.get("aligned")
        object.__setattr__(self, "aligned", None if a is None or self.parent is not None else Result(a, self))

    def __getitem__(self, key):
        return self.record[key]

    def __contains__(self, key) -> bool:
        return key in self.record

    def get(self, key, default=None):
        return self.record.get(key, default)

    def summary(self) -> str:
        if self.parent is not None:
            return _pline(self.record, self.parent.record["args"]["significance"]) \
                if self.record.get("log10_pvalue") is not None else f"statistic {_fmt(self.record['statistic'])}"
        return summary(self.record)

    def __repr__(self) -> str:
        r = self.record
        p = "None" if r.get("log10_pvalue") is None else pvalues.format_pvalue(r["log10_pvalue"])
        stat = r.get("statistic")
        s = "None" if stat is None or (isinstance(stat, float) and math.isnan(stat)) else f"{stat:.6g}"
        al = "" if self.parent is not None else f", aligned={'None' if r.get('aligned') is None else '...'}"
        return (f"Result(stat={r.get('stat')!r}, statistic={s}, pvalue={p}, "
                f"verdict={r.get('verdict')!r}{al})")
