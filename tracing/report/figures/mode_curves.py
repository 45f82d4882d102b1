"""mode_curves.png: loss and barrier along the interpolation path (runs with ``--alphas``)."""
from __future__ import annotations

import math
from pathlib import Path

from ...fileio import atomic_open
from .. import facts
from .common import dep_style, pair_label, plt


def mode_curve_records(records: dict[str, dict]) -> list[tuple[str, dict]]:
    """Successful records with a loss curve of more than 3 points."""
    out = []
    for f, rec in records.items():
        if rec.get("status", "ok") == "ok":
            curve = (rec.get("extra") or {}).get("curve") or []
            if len(curve) > 3:
                out.append((f, rec))
    return out


def plot_mode_curves(items: list[tuple[str, dict]], path: Path, lineage) -> None:
    fig, (a1, a2) = plt().subplots(1, 2, figsize=(12, 4.8))
    cmap = plt().get_cmap("tab10" if len(items) <= 10 else "tab20")
    for k, (_, rec) in enumerate(items):
        curve = sorted(rec["extra"]["curve"], key=lambda c: c["alpha"])
        al = [c["alpha"] for c in curve]
        dep = lineage.dependent(rec["base_model_id"], rec["ft_model_id"]) if lineage else None
        ls, dl = dep_style(dep)
        names = facts.variant_flags(str(rec.get("stat"))) + ("permute", "rotate")
        flags = "".join(f" --{f}" for f in names if (rec.get("args") or {}).get(f))
        label = pair_label(rec["base_model_id"], rec["ft_model_id"]) + flags + (f" ({dl})" if dl else "")
        color = cmap(k % cmap.N)
        a1.plot(al, [c["loss"] for c in curve], ls, marker="o", ms=3.5, color=color, label=label)
        a2.plot(al, [c["barrier"] for c in curve], ls, marker="o", ms=3.5, color=color, label=label)
        alpha = rec["extra"].get("alpha")
        if alpha is not None:
            a1.plot([alpha], [rec["extra"]["loss_alpha"]], marker="D", ms=7, color=color, mfc="none")
    a1.set_title("Loss along the path θ(α)")
    a1.set_ylabel("LM loss (nats/token)")
    a2.set_title("Barrier: loss − linear interpolation of the endpoints")
    a2.set_ylabel("barrier (nats/token)")
    a2.axhline(0, color="grey", linewidth=0.8)
    for ax in (a1, a2):
        ax.set_xlabel("α (0 = base θ₁, 1 = fine-tuned θ₂ in the interpolated parts)")
        ax.grid(alpha=0.3)
    handles, labels = a1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)
    fig.text(0.5, 0.995, "◇ marks the loss at the tested α (the statistic); solid: dependent, dashed: independent "
             "(lineage)" if lineage else "◇ marks the loss at the tested α (the statistic)",
             ha="center", va="top", fontsize=8, color="#333333")
    rows = math.ceil(len(labels) / 3)
    fig.tight_layout(rect=(0, min(0.45, 0.06 + 0.045 * rows), 1, 0.96))
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, dpi=110, format="png")
    plt().close(fig)
