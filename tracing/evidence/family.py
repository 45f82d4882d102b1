"""The Holm family a verdict was adjusted over, carried into a statement and checked by verify.

A family is every p-value the correction saw: the references a scan screened (``scan --against
... --out DIR`` writes ``DIR/holm-family.json``), or a grid of pairs (a launch results folder: the
raw results of one statistic, one per unordered pair, as ``python -m tracing.lineage`` corrects
them; a launch writes it as ``holm-family.json`` when its last pair is done). The predicate's
``correction`` then holds the method, the family's size and members (each
pair and its exact log10 p), which member this result is, its Holm-adjusted log10 p and the
verdict at the level after adjustment. ``verify`` checks the arithmetic bit for bit (this result's
log10 p is its member's, the adjustment is Holm's over the members, the verdict follows) and,
when it recomputes, that this result's log10 p is what the weights give; the other members'
values are as the signer recorded them (verify those pairs' own statements to check them).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..errors import TracingError

FAMILY_FILE = "holm-family.json"


def family_doc(kind: str, description: str, members: list[tuple[str, str, float]], level: float) -> dict:
    """``members``: ``(base, ft, log10 p)`` of every test the correction saw."""
    return {"method": "holm", "kind": kind, "family": description, "level": float(level),
            "members": [{"base": str(b), "ft": str(f), "log10_pvalue": float(p)} for b, f, p in members]}


def write_family(path: str | Path, doc: dict) -> Path:
    from ..fileio import atomic_write
    return atomic_write(path, json.dumps(doc, indent=1) + "\n")


def grid_family(folder: str | Path, stat: str, level: float, results=None) -> dict:
    """The grid of ``stat`` in a results folder: its raw results, one per unordered pair
    (``results``: the folder's :func:`~tracing.results.load_results`, when already read)."""
    from ..lineage.reconstruct import plain_rows
    from ..results import load_results
    rows = plain_rows(load_results(folder) if results is None else results, stat)
    members = [(r["base"], r["ft"], float(r["log10_pvalue"])) for r in rows.values()
               if isinstance(r.get("log10_pvalue"), (int, float)) and math.isfinite(r["log10_pvalue"])]
    if not members:
        raise TracingError(f"{folder} holds no completed {stat} results; give the results folder of the grid")
    return family_doc("grid", f"the {stat} grid of {folder} ({len(members)} pairs)", members, level)


GRID_FAMILY_FILE = re.compile(r"holm-family(-.+)?\.json")  # what write_grid_families names


def write_grid_families(folder: str | Path, level: float) -> dict[str, tuple[Path, dict]]:
    """At the end of a launch: the grid of every statistic whose results ``folder`` holds with
    p-values (not only the launch's), written to ``folder/holm-family.json`` (one statistic) or
    ``folder/holm-family-<stat>.json`` (several), the family ``attest RESULT --family folder`` takes;
    a family file of the folder not written now (an earlier launch's, of another set of
    statistics) is removed, so the folder's family files describe its results. ``{stat: (file, family)}``."""
    from ..results import load_results
    results = load_results(folder)
    stats = sorted(set(results["stat"].dropna())) if "stat" in results.columns else []
    docs = {}
    for stat in stats:
        try:
            docs[stat] = grid_family(folder, stat, level, results)
        except TracingError:  # no completed result with a p-value: no family
            continue
    out = {}
    for stat, doc in docs.items():
        name = FAMILY_FILE if len(docs) == 1 else FAMILY_FILE.replace(".json", f"-{stat}.json")
        out[stat] = (write_family(Path(folder) / name, doc), doc)
    written = {p.name for p, _ in out.values()}
    for p in Path(folder).iterdir():
        if GRID_FAMILY_FILE.fullmatch(p.name) and p.name not in written and p.is_file():
            p.unlink()
    return out


def member_of(doc: dict, rec: dict) -> bool:
    """Is ``rec`` (its pair and exact log10 p) a member of the family ``doc``?"""
    try:
        correction(doc, rec, {})
    except TracingError:
        return False
    return True


def read_family(where: str | Path, rec: dict) -> dict:
    """A family file (``holm-family.json``), or the grid of ``rec``'s statistic in a results folder."""
    p = Path(where)
    level = float(rec["args"].get("significance", 0.01))
    if p.is_dir():
        return grid_family(p, rec["stat"], level)
    try:
        doc = json.loads(p.read_text())
        [float(m["log10_pvalue"]) for m in doc["members"]]  # a scan that followed nothing up: no members
        float(doc["level"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise TracingError(f"{where} is not a Holm family ({FAMILY_FILE} written by a scan, or a results folder)") from None
    return doc


def beside(result: str | Path) -> Path | None:
    """The family file next to a result (a scan's screen records), when there is one."""
    f = Path(result).parent / FAMILY_FILE
    return f if f.is_file() else None


def correction(doc: dict, rec: dict, within: dict) -> dict:
    """The predicate's ``correction`` for ``rec`` in family ``doc`` (``within``: the correction
    inside the pair, e.g. a block map's Bonferroni bound)."""
    from .. import pvalues
    from ..verdict import verdict
    from .predicate import digest
    members = doc["members"]
    pair, own = (str(rec.get("base_model_id")), str(rec.get("ft_model_id"))), rec.get("log10_pvalue")
    idx = [i for i, m in enumerate(members) if (m["base"], m["ft"]) in (pair, pair[::-1]) and m["log10_pvalue"] == own]
    if not idx:
        raise TracingError(f"this result ({pair[0]} vs {pair[1]}, log10 p {own}) is not a member of the family "
                           f"{doc.get('family')}; give the family its verdict was adjusted over")
    adjusted = float(pvalues.holm([m["log10_pvalue"] for m in members])[idx[0]])
    return {"method": "holm", "kind": doc.get("kind"), "family": doc.get("family"), "size": len(members),
            "members": members, "members_sha256": digest(members), "member": idx[0],
            "adjusted_log10_pvalue": adjusted, "level": doc["level"],
            "verdict_after_correction": verdict(adjusted, doc["level"]), "within_pair": within}


def check(corr: dict, log10_pvalue) -> list[str]:
    """Failures (one line each) of a Holm ``correction`` block against its own members and the
    result's log10 p; nothing for another method."""
    from .. import pvalues
    from ..verdict import verdict
    from .predicate import digest
    if not isinstance(corr, dict) or corr.get("method") != "holm":
        return []
    try:
        members, i = corr["members"], int(corr["member"])
        values = [float(m["log10_pvalue"]) for m in members]
        own = values[i]
    except (KeyError, TypeError, ValueError, IndexError):
        return ["correction: the Holm family is malformed (members / member)"]
    fails = []
    if corr.get("size") != len(members) or corr.get("members_sha256") != digest(members):
        fails.append(f"correction: the family's size or digest does not match its {len(members)} members")
    if own != log10_pvalue:
        fails.append(f"correction: the family's member {i} has log10 p {own!r}, the result {log10_pvalue!r}")
    adjusted = float(pvalues.holm(values)[i])
    if adjusted != corr.get("adjusted_log10_pvalue"):
        fails.append(f"correction: Holm-adjusted log10 p attested {corr.get('adjusted_log10_pvalue')!r}, "
                     f"recomputed {adjusted!r}")
    want = verdict(adjusted, float(corr.get("level", 0.01)))
    if corr.get("verdict_after_correction") != want:
        fails.append(f"correction: verdict after Holm attested {corr.get('verdict_after_correction')!r}, "
                     f"recomputed {want!r}")
    return fails
