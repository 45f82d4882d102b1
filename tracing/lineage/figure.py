"""``lineage.png``: the reconstructed families side by side, each drawn as a tree.

Edges carry their similarity; with a root they are arrows from parent to child. When the lineage
is known, wrong or reversed edges are red and known edges the tree lacks are dashed orange. A merge
hangs under one of its parents and is joined to the others by dotted blue lines.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..specs import demo_name, is_demo

from .reconstruct import Reconstruction

COLOURS = {"correct": "#2b7a3d", None: "#333333", "wrong": "#c62828", "reversed": "#c62828", "missing": "#ef8f00",
           "merge": "#1565c0"}


def short(model: str) -> str:
    """A compact label: ``demo:`` dropped, ``org/name`` on two lines; characters no installed font
    can draw transliterated (see :mod:`tracing.glyphs`)."""
    from ..glyphs import drawable
    m = drawable(str(model))
    if is_demo(m):
        return demo_name(m)
    m = m.rstrip("/")
    if m.startswith(("/", ".", "~")):
        return m.rsplit("/", 1)[-1]
    return m.replace("/", "/\n", 1)


def _layout(members: list[str], edges: list[dict], root: str | None) -> dict[str, tuple[float, float]]:
    """Tidy tree positions: leaves one unit apart, parents centred over their children, depth down."""
    adj: dict[str, list[str]] = {m: [] for m in members}
    for e in edges:
        adj[e["a"]].append(e["b"])
        adj[e["b"]].append(e["a"])
    top = root if root in adj else max(members, key=lambda m: (len(adj[m]), m == members[0]))
    pos: dict[str, tuple[float, float]] = {}
    next_x = [0.0]

    def place(node, parent, depth):
        kids = sorted(c for c in adj[node] if c != parent and c not in pos)
        pos[node] = (0.0, -depth)  # reserve
        xs = [place(k, node, depth + 1) for k in kids]
        x = sum(xs) / len(xs) if xs else next_x[0]
        if not xs:
            next_x[0] += 1.0
        pos[node] = (x, -depth)
        return x
    place(top, None, 0)
    for m in members:  # models the tree does not reach (no similarity): beside it
        if m not in pos:
            pos[m] = (next_x[0], 0.0)
            next_x[0] += 1.0
    return pos


def _label(e: dict, kind: str) -> str:
    s = e.get("similarity")
    if s is None:
        return "?"
    return f"{s:.4f}" if kind == "median_cos" else f"{-s:.3g}"


def _merge_lines(ax, e: dict, pos: dict, drawn: dict) -> None:
    """Dotted lines from a merge to its parents other than the one it hangs under."""
    if not e.get("merge_of"):
        return
    child = e["child"] if e.get("directed") else next((m for m in (e["a"], e["b"]) if m not in e["merge_of"]), e["a"])
    for p in e["merge_of"]:
        if p in pos and p not in (e["a"], e["b"]):
            (x1, y1), (x2, y2) = pos[p], pos[child]
            ax.plot([x1, x2], [y1, y2], ls=":", color=COLOURS["merge"], lw=1.4, zorder=0)
            ax.text((x1 + x2) / 2, (y1 + y2) / 2, "merge", fontsize=6, color=COLOURS["merge"], ha="center")
            drawn["merges"].append((p, child))


def draw_lineage(rec: Reconstruction, path: str | os.PathLike) -> dict:
    """Draw ``rec`` into ``path`` (PNG); returns what was drawn: ``edges`` (sorted ``(a, b)`` pairs of
    tree edges), ``arrows`` (``(parent, child)`` of the directed ones) and ``missing``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..glyphs import setup
    setup()

    # one x unit per leaf, widened so that the longest label fits
    unit = max(1.0, max(len(line) for m in rec.models for line in short(m).splitlines()) / 16)
    layouts, offset, depth = [], 0.0, 0
    for fam, root in zip(rec.families, rec.roots):
        fam_edges = [e for e in rec.edges if e["a"] in fam]
        pos = _layout(fam, fam_edges, root)
        shift = min(p[0] for p in pos.values())
        pos = {m: (offset + (x - shift) * unit, y) for m, (x, y) in pos.items()}
        layouts.append((fam, root, fam_edges, pos))
        offset = max(p[0] for p in pos.values()) + 1.4 * unit
        depth = max(depth, -min(p[1] for p in pos.values()))
    width = offset - 1.4 * unit
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * (width + unit)), max(2.6, 1.5 * (depth + 1) + 1.0)))
    drawn = {"edges": [], "arrows": [], "missing": [], "merges": []}
    for fam, root, fam_edges, pos in layouts:
        for e in fam_edges:
            colour = COLOURS.get(e.get("truth"), COLOURS[None])
            a, b = (e["parent"], e["child"]) if e.get("directed") else (e["a"], e["b"])
            if pos[a][1] < pos[b][1]:  # draw from the upper node down
                a, b = b, a
            (x1, y1), (x2, y2) = pos[a], pos[b]
            ax.annotate("", xy=(x2, y2 + 0.18), xytext=(x1, y1 - 0.18),
                        arrowprops=dict(arrowstyle="-|>" if e.get("directed") else "-", color=colour, lw=1.6,
                                        shrinkA=0, shrinkB=0))
            text = _label(e, rec.similarity)
            if e.get("truth") in ("wrong", "reversed"):
                text += f"\n({e['truth']})"
            ax.text((x1 + x2) / 2, (y1 + y2) / 2, text, fontsize=7, color=colour, ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))
            drawn["edges"].append(tuple(sorted((e["a"], e["b"]))))
            if e.get("directed"):
                drawn["arrows"].append((e["parent"], e["child"]))
            _merge_lines(ax, e, pos, drawn)
        for m, (x, y) in pos.items():
            ax.text(x, y, short(m), ha="center", va="center", fontsize=8,
                    fontweight="bold" if m == root else "normal",
                    bbox=dict(boxstyle="round,pad=0.3", fc="#e8f0fe" if m == root else "white", ec="#555555"))
    allpos = {m: xy for _, _, _, pos in layouts for m, xy in pos.items()}
    for m in rec.missing:  # known edges the tree lacks (also across families)
        if m["parent"] in allpos and m["child"] in allpos:
            (x1, y1), (x2, y2) = allpos[m["parent"]], allpos[m["child"]]
            ax.plot([x1, x2], [y1, y2], ls="--", color=COLOURS["missing"], lw=1.2, zorder=0)
            ax.text((x1 + x2) / 2, (y1 + y2) / 2 - 0.12, "missing", fontsize=6, color=COLOURS["missing"],
                    ha="center")
            drawn["missing"].append((m["parent"], m["child"]))
    keys = ([] if not (any(e.get("truth") for e in rec.edges) or rec.missing) else
            ["against the known lineage: green = known edge, red = wrong or reversed, dashed orange = known edge missing"])
    keys += ["dotted blue: a merge's other parents"] if drawn["merges"] else []
    if keys:
        import textwrap
        key = "; ".join(keys)
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap(key, max(40, int(fig.get_figwidth() * 72 / 5)))),
                 fontsize=7, color="#555555")
    what = "median matched cosine of up rows" if rec.similarity == "median_cos" else "l2 distance"
    import textwrap
    title = f"Lineage from {rec.stat} (families: Holm-significant at {rec.level:g}; edge labels: {what})"
    chars = max(30, int(fig.get_figwidth() * 72 / 6))  # about 6 points per character at 9 pt
    ax.set_title("\n".join(textwrap.wrap(title, chars)), fontsize=9)
    ax.set_xlim(-0.8 * unit, width + 0.8 * unit)
    ax.set_ylim(-depth - 0.6, 0.6)
    ax.axis("off")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    from ..fileio import atomic_open
    with atomic_open(p, "wb") as fh:
        fig.savefig(fh, dpi=130, format="png")
    plt.close(fig)
    drawn["edges"].sort()
    return drawn
