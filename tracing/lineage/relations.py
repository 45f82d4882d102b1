"""Labelled pairs: the known relation of each listed pair, and error rates per relation.

A model list of listed pairs (``models_1`` / ``models_2``) may carry, aligned with its pairs,
``relations`` (one of :data:`RELATIONS`) and ``sources`` (where each label comes from), plus an
``audit`` (labels changed from the published ones, each with its reason) and ``excluded`` (published
pairs left out, each with its reason) — the form of the published benchmarks in
``config/benchmarks``. A launch writes the labels into the results folder
(:data:`KNOWN_RELATIONS`); the report then gives, per statistic and variant, full and sampled,
the rate of pairs called dependent per relation at each level of :data:`LEVELS`: a true-positive
rate for relations that share an initialisation, a false-positive rate for the others, each with an
exact (Clopper–Pearson) 95% interval.

The null is "θ₁ and θ₂ were trained from independent random initialisations": a student distilled
only from a teacher's outputs is ``distilled`` (independent); a "distilled" model whose weights were
initialised from the other model is ``finetune`` (or ``pruned`` when layers were dropped).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import TracingError
from ..results_folder import KNOWN_RELATIONS

#: relation -> do the two models share an initialisation (dependent under the toolkit's null)?
RELATIONS = {
    "finetune": True,    # fine-tune, continued pre-training, RL, abliteration (all weights start from the parent)
    "quantized": True,   # the parent's weights, quantized (GPTQ, AWQ, bitsandbytes, GGUF)
    "merge": True,       # a merge (linear, SLERP, TIES, DARE, model stock) with the parent among its inputs
    "pruned": True,      # layers or units of the parent dropped (then possibly trained)
    "upscaled": True,    # depth or width grown from the parent's blocks
    "upcycled": True,    # a mixture of experts whose experts start from the parent's MLPs
    "adapter": True,     # the parent plus a (merged) LoRA or other adapter
    "copy": True,        # the same weights, uploaded again
    "sibling": True,     # both derived from a common ancestor (or the same random initialisation)
    "distilled": False,  # trained from its own random initialisation on another model's outputs
    "independent": False,
}
LEVELS = (1e-2, 1e-3, 1e-4)
RATES_FILE = "relation_rates.csv"
LABEL_KEYS = ("relations", "sources", "audit", "excluded", "benchmark")


def _strings(value, key: str, n: int, source: str) -> list[str]:
    if not isinstance(value, list) or len(value) != n:
        got = f"{len(value)} entries" if isinstance(value, list) else type(value).__name__
        raise TracingError(f"{source}: '{key}' must be a list with one entry per pair ({n}), got {got}")
    for i, x in enumerate(value):
        if not isinstance(x, str) or not x.strip():
            raise TracingError(f"{source}: entry {i + 1} of '{key}' is {x!r}; give a non-empty string per pair")
    return [x.strip() for x in value]


def _records(value, key: str, fields: tuple[str, ...], source: str) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TracingError(f"{source}: '{key}' must be a list of mappings with {', '.join(fields)}")
    out = []
    for i, x in enumerate(value):
        missing = [f for f in fields if not (isinstance(x, dict) and isinstance(x.get(f), str) and x[f].strip())]
        if missing:
            raise TracingError(f"{source}: entry {i + 1} of '{key}' lacks {', '.join(missing)}; "
                               f"give each entry {', '.join(fields)}")
        out.append({k: str(v).strip() if isinstance(v, str) else v for k, v in x.items()})
    return out


def parse_labels(data: dict, m1: list[str], m2: list[str], source: str) -> dict | None:
    """The labels of a listed-pairs model list (None when it has no ``relations``), checked:
    one known relation and one source per pair; every audit entry names a listed pair and agrees
    with its relation; every excluded entry has a reason and is not listed."""
    if "relations" not in data:
        extra = [k for k in ("sources", "audit", "excluded") if k in data]
        if extra:
            raise TracingError(f"{source}: '{extra[0]}' needs 'relations' (one relation per pair)")
        return None
    relations = _strings(data["relations"], "relations", len(m1), source)
    unknown = sorted({r for r in relations if r not in RELATIONS})
    if unknown:
        raise TracingError(f"{source}: unknown relation(s) {', '.join(unknown)}; known: {', '.join(RELATIONS)}")
    if "sources" not in data:
        raise TracingError(f"{source}: 'relations' needs 'sources' (where each label comes from), one per pair")
    sources = _strings(data["sources"], "sources", len(m1), source)
    pairs = [{"base": a, "ft": b, "relation": r, "dependent": RELATIONS[r], "source": s}
             for a, b, r, s in zip(m1, m2, relations, sources)]
    index = {(p["base"], p["ft"]): p for p in pairs}
    audit = _records(data.get("audit"), "audit", ("base", "ft", "published", "relation", "reason"), source)
    for e in audit:
        p = index.get((e["base"], e["ft"]))
        if p is None:
            raise TracingError(f"{source}: the audit names {e['base']} vs {e['ft']}, which is not a listed pair")
        if p["relation"] != e["relation"]:
            raise TracingError(f"{source}: the audit relabels {e['base']} vs {e['ft']} as {e['relation']} but "
                               f"'relations' says {p['relation']}; make them agree")
    excluded = _records(data.get("excluded"), "excluded", ("base", "ft", "published", "reason"), source)
    for e in excluded:
        if (e["base"], e["ft"]) in index:
            raise TracingError(f"{source}: {e['base']} vs {e['ft']} is both listed and excluded; keep one")
    return {"pairs": pairs, "audit": audit, "excluded": excluded, "benchmark": data.get("benchmark"),
            "source": source}


def read_known_relations(folder: Path) -> dict | None:
    f = Path(folder) / KNOWN_RELATIONS
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TracingError(f"cannot read {f} ({type(e).__name__}); delete it and launch the labelled list again") from None
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise TracingError(f"{f} holds no 'pairs'; delete it and launch the labelled list again")
    return data


def _mode(rows) -> str:
    try:
        k = float(rows)
    except (TypeError, ValueError):
        return "full"
    return "full" if math.isnan(k) else f"sampled (K={int(k)})"


def _labelled_rows(df, labels: dict) -> list[dict]:
    """The summary table's rows of labelled pairs, with ``relation`` and ``mode``; one row per pair,
    variant and mode: the newest when a pair was run again (sampled runs with different K both count)."""
    from ..results import flag
    index = {}
    for p in labels["pairs"]:
        index[(p["base"], p["ft"])] = p
        index.setdefault((p["ft"], p["base"]), p)
    keep: dict[tuple, dict] = {}
    for r in df.to_dict("records"):
        p = index.get((r.get("base"), r.get("ft")))
        if p is None or r.get("variant") in (None, "?"):
            continue
        r = {**r, "relation": p["relation"], "dependent": p["dependent"], "reading": _mode(r.get("rows"))}
        key = (p["base"], p["ft"], r["variant"], r["reading"])
        if key not in keep or flag(keep[key].get("superseded")) or not flag(r.get("superseded")):
            keep[key] = r
    return list(keep.values())


def relation_rates(df, labels: dict, levels=LEVELS, confidence: float = 0.95):
    """One row per variant × mode (full / sampled) × relation × level: pairs run, pairs called
    dependent (raw p-value ≤ level), their ``rate`` with ``lo`` / ``hi`` Clopper–Pearson bounds,
    ``kind`` (TPR for dependent relations, FPR for independent ones) and pairs that ``failed``.
    Rows ``all dependent`` / ``all independent`` pool the relations of each kind."""
    import pandas as pd

    from ..verdict import is_dependent
    from .rates import clopper_pearson
    from ..results import finite
    rows = _labelled_rows(df, labels)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["reading"]), []).append(r)
    out = []
    for (variant, mode), rs in sorted(groups.items()):
        by_rel: dict[str, list[dict]] = {}
        for r in rs:
            by_rel.setdefault(r["relation"], []).append(r)
            by_rel.setdefault("all dependent" if r["dependent"] else "all independent", []).append(r)
        for rel in [x for x in RELATIONS if x in by_rel] + [x for x in ("all dependent", "all independent")
                                                            if x in by_rel]:
            members = by_rel[rel]
            ok = [r for r in members if r.get("status") == "ok" and finite(r.get("log10_pvalue"))]
            dep = members[0]["dependent"]
            for level in levels:
                k = sum(bool(is_dependent(float(r["log10_pvalue"]), level)) for r in ok)
                lo, hi = clopper_pearson(k, len(ok), confidence)
                out.append({"variant": variant, "reading": mode, "relation": rel, "dependent": dep,
                            "kind": "TPR" if dep else "FPR", "level": level, "pairs": len(ok), "called": k,
                            "rate": k / len(ok) if ok else float("nan"), "lo": lo, "hi": hi,
                            "failed": len(members) - len(ok), "confidence": confidence})
    return pd.DataFrame(out)
