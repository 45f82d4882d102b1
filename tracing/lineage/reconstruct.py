"""Families and trees reconstructed from a grid of pairwise results.

1. **Families**: connected components of the graph whose edges are the pairs significant after
   Holm's correction across the grid of one statistic (raw, untransformed results).
2. **Tree within a family**: from a similarity that does not saturate — the mean over blocks of
   the median matched cosine of up-projection rows (``median_cos`` of ``cos`` records), else the
   negated ``l2`` distance. p-values all sit at the floor for related models and cannot order them.
   Without a root: the maximum spanning tree, undirected. With a root, the tree grows outward from
   it: models in order of similarity to the root, each attached to the most similar model already
   placed — a parent lies between the root and its child (fine-tuning drifts away from the root).
3. **Root** of a family: ``--root``; else the known lineage (its topmost member in the family);
   else hub metadata (``base_model`` in a locally cached model card); else none, and the edges
   stay undirected (said in the notes).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from .. import pvalues
from ..errors import TracingError
from ..results import finite, flag
from ..specs import is_demo
from ..stats import REGISTRY, names
from ..verdict import is_dependent
from .known import align_truth, ancestors, name_key


@dataclass
class Reconstruction:
    """What :func:`reconstruct` found. ``edges``: one dict per tree edge with ``a``, ``b`` (the pair),
    ``similarity``, ``directed`` and, when directed, ``parent`` / ``child`` / ``runner_up`` (the next
    most similar candidate parent and its similarity); with a known lineage, ``truth`` is
    ``correct`` / ``reversed`` / ``wrong``. ``missing``: known edges the tree lacks."""

    stat: str
    similarity: str
    level: float
    models: list[str]
    families: list[list[str]]
    roots: list[str | None]
    root_sources: list[str | None]
    edges: list[dict]
    pairs: list[dict]
    missing: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def family_of(self, model: str) -> int:
        return next(i for i, f in enumerate(self.families) if model in f)

    def to_json(self) -> dict:
        out = asdict(self)
        out["families"] = [{"models": f, "root": r, "root_source": s}
                           for f, r, s in zip(self.families, self.roots, self.root_sources)]
        del out["roots"], out["root_sources"]
        return out


# ------------------------------------------------------------------------------------------
# The grid
# ------------------------------------------------------------------------------------------
def plain_rows(df, stat: str) -> dict[frozenset, dict]:
    """The successful raw results of ``stat`` (not aligned, no permute/rotate), one per unordered pair
    (the last one when a pair was run twice)."""
    out: dict[frozenset, dict] = {}
    if df is None or df.empty or "stat" not in df.columns:
        return out
    for r in df.to_dict("records"):
        if r.get("stat") != stat or r.get("status", "ok") != "ok":
            continue
        if flag(r.get("aligned")) or flag(r.get("permute")) or flag(r.get("rotate")):
            continue
        a, b = r.get("base"), r.get("ft")
        if isinstance(a, str) and isinstance(b, str) and a != b:
            out[frozenset((a, b))] = r
    return out


def grid_level(rows: dict, level: float | None) -> float:
    if level is not None:
        if not 0.0 < float(level) < 1.0:
            raise TracingError(f"--significance {level} must be in (0, 1), e.g. 0.01")
        return float(level)
    levels = {float(r["significance"]) for r in rows.values() if finite(r.get("significance"))}
    return levels.pop() if len(levels) == 1 else 0.01


def significance_table(rows: dict, level: float) -> list[dict]:
    """Per pair: log10 p, Holm-adjusted log10 p across the grid, and whether it is significant."""
    keys = [k for k in rows if finite(rows[k].get("log10_pvalue"))]
    lp = np.array([float(rows[k]["log10_pvalue"]) for k in keys], dtype=float)
    adj = pvalues.holm(lp) if len(keys) else lp
    out = []
    for k, p, q in zip(keys, lp, adj):
        a, b = sorted(k)
        out.append({"a": a, "b": b, "log10_pvalue": float(p), "log10_pvalue_holm": float(q),
                    "significant": bool(is_dependent(q, level))})
    return out


def similarity_table(df, stat: str) -> tuple[dict[frozenset, float], str]:
    """Pair → similarity (larger = closer) and what it is: the similarity ``stat`` declares
    (``StatSpec.similarity``, e.g. ``median_cos``) when its records carry it, else a similarity another
    statistic shares (``-l2``, the negated distance of ``l2`` records)."""
    own = REGISTRY[stat].similarity if stat in names() else None
    shared = [(n, s.similarity) for n, s in REGISTRY.items() if n != stat and s.similarity and s.similarity.shared]
    for name, s in ([(stat, own)] if own else []) + shared:
        rows = plain_rows(df, name)
        sim = {k: s.sign * float(r[s.column]) for k, r in rows.items() if finite(r.get(s.column))}
        if sim:
            return sim, s.name
    have = own.column if own else "similarity"
    others = " or ".join(n for n, _ in shared) or "other"
    raise TracingError(f"no similarity to build trees from: the {stat} results carry no {have} and there are "
                       f"no {others} results; re-run cos with this version of the toolkit, or add --stat "
                       f"{shared[0][0] if shared else 'cos'} to the run")


# ------------------------------------------------------------------------------------------
# Trees
# ------------------------------------------------------------------------------------------
def max_spanning_edges(members: list[str], sim: dict) -> list[tuple[str, str, float]]:
    g = nx.Graph()
    g.add_nodes_from(members)
    for i, a in enumerate(members):
        for b in members[i + 1:]:
            s = sim.get(frozenset((a, b)))
            if s is not None:
                g.add_edge(a, b, weight=s)
    t = nx.maximum_spanning_tree(g, weight="weight", algorithm="kruskal")
    return sorted((min(a, b), max(a, b), d["weight"]) for a, b, d in t.edges(data=True))


def rooted_edges(members: list[str], sim: dict, root: str, merges: dict | None = None,
                 reshaped: set | None = None) -> list[dict]:
    """Grow the tree from ``root``: models by decreasing similarity to the root, each attached to the
    most similar model already placed; models whose pair with the root is a block map (``reshaped``:
    pruned or upscaled) come after those of the root's shape. ``merges`` (merged model → its parents) are placed last and
    never become parents: each hangs under its most similar parent. Returns ``{parent, child,
    similarity, runner_up, runner_up_similarity}`` (and ``merge_of`` for a merge)."""
    def s(a, b):
        return sim.get(frozenset((a, b)))
    merges = {m: ps for m, ps in (merges or {}).items() if m in members and m != root}
    rest = [m for m in members if m != root and m not in merges]
    # models of another shape than the root (block maps: pruned, upscaled) after those of its shape
    rest.sort(key=lambda m: (frozenset((root, m)) in (reshaped or ()), s(root, m) is None, -(s(root, m) or 0.0), m))
    placed, out = [root], []
    for m in rest + sorted(merges):
        pool = [p for p in merges.get(m, ()) if p in placed] or placed
        cands = sorted(((s(m, p), p) for p in pool if s(m, p) is not None), key=lambda x: -x[0])
        if not cands:  # no similarity links it to the tree: left unplaced (reconstruct says why)
            continue
        ru = cands[1] if len(cands) > 1 else (None, None)
        e = {"parent": cands[0][1], "child": m, "similarity": cands[0][0], "runner_up": ru[1],
             "runner_up_similarity": ru[0]}
        if m in merges:
            e["merge_of"] = list(merges[m])
        out.append(e)
        if m not in merges:
            placed.append(m)
    return out


def spanning_edges(members: list[str], sim: dict, merges: dict | None = None) -> list[dict]:
    """The maximum spanning tree (undirected) over the models that are not merges; each merge is
    then joined to its most similar parent (``merge_of`` names all its parents)."""
    merges = {m: ps for m, ps in (merges or {}).items() if m in members}
    core = [m for m in members if m not in merges]
    merges = {m: ps for m, ps in merges.items() if any(frozenset((m, p)) in sim for p in core)}
    out = [{"a": a, "b": b, "similarity": s, "directed": False} for a, b, s in max_spanning_edges(core, sim)]
    for m in sorted(merges):
        linked = [p for p in core if frozenset((m, p)) in sim]
        best = max([p for p in linked if p in merges[m]] or linked, key=lambda p: sim[frozenset((m, p))])
        a, b = sorted((m, best))
        out.append({"a": a, "b": b, "similarity": sim.get(frozenset((m, best))), "directed": False,
                    "merge_of": list(merges[m])})
    return out


# ------------------------------------------------------------------------------------------
# Roots
# ------------------------------------------------------------------------------------------
def card_base_models(model: str) -> list[str]:
    """``base_model`` of a model's card (README.md YAML front matter) when it is on disk: a local
    folder's README.md or the Hugging Face cache (never the network)."""
    import yaml
    text = None
    p = Path(model).expanduser()
    if p.is_dir():
        f = p / "README.md"
        text = f.read_text(encoding="utf-8", errors="replace") if f.is_file() else None
    elif "/" in model and not is_demo(model) and not model.startswith((".", "/", "~")):
        try:
            from huggingface_hub import try_to_load_from_cache
            repo, _, rev = model.partition("@")
            f = try_to_load_from_cache(repo, "README.md", revision=rev or None)
            text = Path(f).read_text(encoding="utf-8", errors="replace") if isinstance(f, str) else None
        except Exception:  # noqa: BLE001 - no cache, odd id: no metadata
            text = None
    if not text or not text.startswith("---"):
        return []
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return []
    bm = meta.get("base_model") if isinstance(meta, dict) else None
    if isinstance(bm, str):
        return [bm]
    return [x for x in bm if isinstance(x, str)] if isinstance(bm, list) else []


def _topmost(members: list[str], parents: dict) -> str | None:
    """The member that is an ancestor of most members, among those with no ancestor in the family."""
    fam = set(members)
    above = {m: list(ancestors(parents, m)) for m in members}
    tops = [m for m in members if not any(a in fam for a in above[m])]
    if not tops or not any(parents.get(m) in fam for m in members):
        return None
    count = {t: sum(t in above[m] for m in members) for t in tops}
    return max(tops, key=lambda t: (count[t], t == members[0]))


def choose_root(members, root, truth, use_hub: bool) -> tuple[str | None, str | None]:
    if len(members) == 1:
        return members[0], "single model"
    if root is not None and root in members:
        return root, "given"
    if truth:
        r = _topmost(members, truth)
        if r is not None:
            return r, "lineage"
    if use_hub:
        meta = {}
        tails = {str(x).rstrip("/").rsplit("/", 1)[-1]: x for x in members}
        for m in members:
            for b in card_base_models(m):
                k = name_key(b, members) or tails.get(b.rstrip("/").rsplit("/", 1)[-1])
                if k is not None and k != m:
                    meta[m] = k
                    break
        r = _topmost(members, meta)
        if r is not None:
            return r, "model card base_model"
    return None, None


# ------------------------------------------------------------------------------------------
# Reconstruction
# ------------------------------------------------------------------------------------------
def _check_edge(e: dict, truth: dict | None) -> None:
    if not truth:
        return
    a, b = e["a"], e["b"]
    if a not in truth or b not in truth:
        e["truth"] = None
    elif e["directed"]:
        p, c = e["parent"], e["child"]
        e["truth"] = ("correct" if truth.get(c) == p else "reversed" if truth.get(p) == c else "wrong")
    else:
        e["truth"] = "correct" if truth.get(a) == b or truth.get(b) == a else "wrong"


def reconstruct(df, stat: str = "cos", truth: dict | None = None, root: str | None = None,
                level: float | None = None, use_hub: bool = True, root_from_truth: bool = True,
                merges: dict | None = None) -> Reconstruction:
    """Families, trees and their directions from a :func:`tracing.results.load_results` table.

    ``truth``: known lineage ``{model: parent}`` (see :func:`tracing.lineage.known.parse_lineage`); its
    names are matched to the results' names. ``root``: the root of the family that contains it.
    ``root_from_truth=False`` scores the edges against ``truth`` without taking roots from it.
    ``merges``: merged model → its parents (see :mod:`tracing.lineage.merges`); a merge is never
    drawn as a parent."""
    rows = plain_rows(df, stat)
    if not rows:
        raise TracingError(f"no successful {stat} results in the table; run --stat {stat} on the model list "
                           f"first, or choose --stat among the statistics that were run")
    lvl = grid_level(rows, level)
    pairs = significance_table(rows, lvl)
    if not pairs:
        raise TracingError(f"the {stat} results carry no p-values; families need a statistic with p-values (cos)")
    models = sorted({m for k in rows for m in k})
    if root is not None:
        k = name_key(root, models)
        if k is None:
            raise TracingError(f"--root {root} is not one of the models in the results ({len(models)} models)")
        root = k
    sim, kind = similarity_table(df, stat)
    reshaped = {k for k, row in rows.items() if flag(row.get("localized"))}
    truth = align_truth(truth, models) if truth else None
    notes: list[str] = []
    g = nx.Graph()
    g.add_nodes_from(models)
    g.add_edges_from((p["a"], p["b"]) for p in pairs if p["significant"])
    fams = sorted((sorted(c) for c in nx.connected_components(g)), key=lambda f: (-len(f), f))
    edges: list[dict] = []
    roots, sources = [], []
    for fam in fams:
        r, src = choose_root(fam, root, truth if root_from_truth else None, use_hub)
        if len(fam) == 1:
            roots.append(r)
            sources.append(src)
            continue
        if r is None:
            notes.append(f"no root known for the family of {fam[0]} ({len(fam)} models): its edges are undirected "
                         f"(give --root, a lineage file, or models whose cards name their base_model)")
            edges += spanning_edges(fam, sim, merges)
        else:
            for e in rooted_edges(fam, sim, r, merges, reshaped):
                a, b = sorted((e["parent"], e["child"]))
                edges.append({"a": a, "b": b, "directed": True, **e})
        roots.append(r)
        sources.append(src)
    placed = {m for e in edges for m in (e["a"], e["b"])}
    for fam in fams:
        for m in (m for m in fam if len(fam) > 1 and m not in placed):
            notes.append(f"{m} is not placed in the tree: none of its {stat} results with its family carries a "
                         f"similarity ({kind}); a block map (cos --localized) that matched no block has none, and "
                         f"results of older versions lack median_cos (re-run {stat})")
    for e in edges:
        _check_edge(e, truth)
    missing = []
    if truth:
        have = {frozenset((e["a"], e["b"])) for e in edges}
        missing = [{"parent": p, "child": c} for c, p in sorted(truth.items())
                   if p is not None and frozenset((p, c)) not in have]
        unknown = [m for m in models if m not in truth]
        if unknown:
            notes.append(f"not in the lineage file: {', '.join(unknown)}")
    return Reconstruction(stat, kind, lvl, models, fams, roots, sources, edges, pairs, missing, notes)


def _json_safe(x):
    """NaN and infinities become null (strict JSON)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(rec: Reconstruction, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``lineage.json`` atomically (never a half-written file); ``extra`` keys are added."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    from ..fileio import atomic_write
    atomic_write(p, json.dumps(_json_safe({**rec.to_json(), **(extra or {})}), indent=2, default=str))
    return p
