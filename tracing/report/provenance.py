"""report.md's provenance sections: the models (weight hashes), the options, the timings."""
from __future__ import annotations

import json

import numpy as np

from ..errors import TracingError
from .mdtable import size, table
from ..results import finite

_HIDE_OPTS = {"stat", "base_model_id", "ft_model_id", "save", "device", "mem_budget_gb", "workers", "generated_dir"}


def models_section(records: dict[str, dict]) -> tuple[list[str], list[str]]:
    seen: dict[str, list[dict]] = {}
    for rec in records.values():
        for role in ("base", "ft"):
            m = (rec.get("models") or {}).get(role)
            if isinstance(m, dict) and m.get("id"):
                seen.setdefault(m["id"], []).append(m)
    rows, warnings = [], []
    for mid in sorted(seen):
        provs = seen[mid]
        sigs = {tuple((f.get("file"), f.get("sha256")) for f in p.get("files") or []) for p in provs}
        if len(sigs) > 1:
            warnings.append(f"`{mid}` was seen with {len(sigs)} different sets of weight files across the "
                            f"results; the weights changed during the run.")
        p = provs[-1]
        resolved = p.get("commit") or p.get("revision") or ""
        files = "; ".join(f"{f.get('file')} ({size(f.get('size'))}, sha256 {str(f.get('sha256') or '?')[:12]})"
                          for f in p.get("files") or []) or "—"
        rows.append([f"`{mid}`", resolved[:12] if resolved else "—", f"`{p.get('path') or ''}`", files])
    if not rows:
        return ["No provenance recorded (results from before provenance was kept, or only failures)."], warnings
    return [table(["model", "revision", "path", "weight files"], rows)], warnings


def used_options(rec: dict) -> dict:
    """The options of a record as they took effect: the data actually read replaces the requested
    ``dataset`` (a statistic that reads no data says so)."""
    args = dict(rec.get("args") or {})
    if "dataset" in args:
        data = rec.get("data")
        if isinstance(data, dict) and data.get("dataset"):
            args["dataset"] = data["dataset"]
        elif rec.get("status", "ok") == "ok" and not data:
            args["dataset"] = "(reads no data)"
    return args


def _applies(stat: str, args: dict):
    """Which options a statistic's result depends on (its ``StatSpec``; the data options too when
    ``--eval`` ran); ``None`` (all) for a statistic that is not registered here."""
    from .. import stats
    from ..stats.spec import DATA_OPTIONS
    try:
        names = set(stats.get(stat).option_names())
    except TracingError:
        return None
    return names | set(DATA_OPTIONS) if args.get("eval") else names


def options_section(records: dict[str, dict]) -> str:
    """The options table: each option's value and the statistics it applies to (an option a
    statistic does not read is not listed against it)."""
    values: dict[str, dict[str, set]] = {}
    for rec in records.values():
        stat = rec.get("stat") or "?"
        args = used_options(rec)
        reads = _applies(stat, args)
        for k, v in args.items():
            if k in _HIDE_OPTS or (reads is not None and k not in reads):
                continue
            values.setdefault(k, {}).setdefault(stat, set()).add(json.dumps(v, sort_keys=True, default=str))
    rows = []
    all_stats = {s for per in values.values() for s in per}
    for k in sorted(values):
        groups: dict[str, list[str]] = {}
        for stat, vals in values[k].items():
            groups.setdefault(", ".join(sorted(vals)), []).append(stat)
        for v, stats in sorted(groups.items(), key=lambda kv: sorted(kv[1])):
            rows.append([k, v, "all" if len(groups) == 1 and set(stats) == all_stats else ", ".join(sorted(stats))])
    return table(["option", "value", "statistics"], rows) if rows else "No options recorded."


_PAIR_STAGES = ("load", "transform", "data", "align", "eval")


def _stage_times(records: dict[str, dict]) -> tuple[dict[tuple, dict[str, float]], dict[str, list[float]]]:
    per_pair: dict[tuple, dict[str, float]] = {}
    stat_times: dict[str, list[float]] = {}
    for rec in records.values():
        if rec.get("status", "ok") != "ok":
            continue
        key = (rec.get("base_model_id"), rec.get("ft_model_id"), json.dumps(
            {k: v for k, v in (rec.get("args") or {}).items() if k not in ("stat", "save")}, sort_keys=True,
            default=str))
        t = rec.get("timings") or {}
        pp = per_pair.setdefault(key, {})
        for s in _PAIR_STAGES:
            if finite(t.get(s)):
                pp[s] = max(pp.get(s, 0.0), float(t[s]))
        if finite(rec.get("time")):
            pp["total"] = max(pp.get("total", 0.0), float(rec["time"]))
        for s in ("statistic", "aligned_statistic", "save"):
            if finite(t.get(s)):
                name = f"{s} ({rec.get('stat')})" if s != "save" else "save"
                stat_times.setdefault(name, []).append(float(t[s]))
    return per_pair, stat_times


def timings_section(records: dict[str, dict]) -> str:
    per_pair, stat_times = _stage_times(records)
    rows = []

    def add(name, xs):
        if xs:
            rows.append([name, len(xs), f"{sum(xs):.2f}", f"{float(np.median(xs)):.3f}", f"{max(xs):.3f}"])
    for s in _PAIR_STAGES:
        add(s, [pp[s] for pp in per_pair.values() if s in pp])
    for name in sorted(stat_times):
        add(name, stat_times[name])
    add("total per pair", [pp["total"] for pp in per_pair.values() if "total" in pp])
    if not rows:
        return "No timings recorded."
    return ("Seconds. Pair-level stages (load, transform, data, align, eval) are counted once per pair; "
            "the statistic stages once per result.\n\n" +
            table(["stage", "count", "total s", "median s", "max s"], rows))
