"""The result of one comparison: the plain record that is pickled, and :class:`Result` around it."""
from __future__ import annotations

import math

from . import pvalues
from .stats import get as get_stat
from .verdict import FLOOR, INTERPRETATION, NULL, verdict


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
    return spec.spearman and d.get("statistic") == 1.0


def make_record(pair, stat, result, aligned, evals, prov, models, timings, elapsed, path, notes) -> dict:
    """The plain dict written for one statistic: the legacy keys, then the structured ones."""
    o = pair.options
    spec = get_stat(stat)
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
    spec = get_stat(rec["stat"])
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


class Result:
    """One statistic's outcome, scipy-style: ``statistic``, ``pvalue``, ``log10_pvalue`` (authoritative),
    ``per_layer``, ``verdict``, ``pvalue_kind``, ``aligned`` (a :class:`Result` or None) and
    ``record`` (the plain dict that is pickled). ``result["key"]`` reads the record."""

    def __init__(self, record: dict, parent: "Result | None" = None):
        self.record, self._parent = record, parent

    def __getattr__(self, name):
        if name.startswith("_") or name == "record":
            raise AttributeError(name)
        try:
            return self.record[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        return self.record[key]

    def __contains__(self, key) -> bool:
        return key in self.record

    def get(self, key, default=None):
        return self.record.get(key, default)

    @property
    def aligned(self) -> "Result | None":
        a = self.record.get("aligned")
        return None if a is None or self._parent is not None else Result(a, parent=self)

    def summary(self) -> str:
        if self._parent is not None:
            return _pline(self.record, self._parent.record["args"]["significance"]) \
                if self.record.get("log10_pvalue") is not None else f"statistic {_fmt(self.record['statistic'])}"
        return summary(self.record)

    def __repr__(self) -> str:
        r = self.record
        p = "None" if r.get("log10_pvalue") is None else pvalues.format_pvalue(r["log10_pvalue"])
        stat = r.get("statistic")
        s = "None" if stat is None or (isinstance(stat, float) and math.isnan(stat)) else f"{stat:.6g}"
        al = "" if self._parent is not None else f", aligned={'None' if r.get('aligned') is None else '...'}"
        return (f"Result(stat={r.get('stat')!r}, statistic={s}, pvalue={p}, "
                f"verdict={r.get('verdict')!r}{al})")
