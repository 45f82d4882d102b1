"""The follow-up of an index screen: every reference found dependent after Holm is tested again
against its own weights, in full (``full``, the default) or with more sampled rows (``rows:K``),
as a scan with ``--against`` does; ``none`` skips it.

The screen's guarantee (the set dependent after Holm holds an independent reference with
probability at most α) does not depend on the follow-up; the follow-up adds the full test's
p-value and verdict to each of those references (``follow-up`` columns of ``scan.csv``) and, with
``--out``, its record. References found by the robust tier were already tested on their weights
and get no second test.

The follow-up verdicts are Holm-adjusted across the references followed up, and with ``--out`` that
family (each follow-up test's exact log10 p) is written to ``holm-family.json`` beside the records,
so ``attest`` of a follow-up record carries it. This is the family of the tests whose records are
kept: the screen that chose them ran on stored sketches (no record to attest), and its own
guarantee already bounds by α the probability that any independent reference is followed up at
all, so an independent reference is called dependent after both steps with probability at most α
whatever the follow-up's correction; Holm across the follow-ups only makes the verdict stricter.
With a single reference followed up it changes nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import TracingError

FOLLOW_UP_HEADER = ["follow-up", "follow-up log10 p", "follow-up verdict"]
DEFAULT = "full"


@dataclass(frozen=True)
class FollowUp:
    """What the follow-up runs: the full ``cos`` test (rows None) or ``cos --rows K``."""

    rows: int | None = None
    enabled: bool = True

    @property
    def name(self) -> str:
        return "none" if not self.enabled else ("full" if self.rows is None else f"rows:{self.rows}")

    @property
    def record_name(self) -> str:
        return "full" if self.rows is None else f"rows{self.rows}"


def screen_stat() -> str:
    """The statistic an index entry's rows are screened with, and followed up with: the one that screens with
    sampled MLP units (``StatSpec.screens``, ``sampled == "units"``: ``cos``)."""
    from ..stats import get, names
    return next(name for name in names() if get(name).screens and get(name).sampled == "units")


def parse_follow_up(text: str) -> FollowUp:
    """``full``, ``none`` or ``rows:K`` (K a positive integer)."""
    t = str(text).strip().lower()
    if t in ("full", "none"):
        return FollowUp(enabled=t == "full")
    if t.startswith("rows:") and t[5:].isdigit() and int(t[5:]) > 0:
        return FollowUp(rows=int(t[5:]))
    raise TracingError(f"--follow-up {text!r} is not understood; give full, none or rows:K (e.g. rows:1024)")


def reference_spec(meta: dict) -> str:
    """The reference as indexed: a hub id pinned to the commit the entry was read at."""
    spec, commit = str(meta["model"]), meta.get("commit")
    from ..specs import parse_spec
    if commit and "@" not in spec and parse_spec(spec).kind == "hub":
        return f"{spec}@{commit}"
    return spec


def run_follow_up(cand, lines: list, specs: dict[str, str], how: FollowUp, significance: float,
                  out: Path | None = None, progress: bool = False) -> list[tuple[str, str, float]]:
    """Test each line dependent after Holm (screen tier) again with ``how``; fills the lines'
    ``follow_up*`` fields. A reference whose weights cannot be read says so in its line. The
    follow-up verdicts are Holm-adjusted across the references followed up; returns that family,
    ``(base, ft, log10 p)`` of each follow-up test with a p-value, as its records name the models."""
    from .. import pvalues
    from ..api import run_opened
    from ..models import Checkpoint
    from ..options import Options
    from ..references import record_path
    from ..verdict import is_dependent
    if not how.enabled:
        return []
    stat = screen_stat()
    opts = Options(stat=[stat], rows=how.rows, significance=significance)
    tested = []
    for line in lines:
        if line.verdict != "dependent after Holm":
            continue
        line.follow_up = how.name
        try:
            sampled = how.rows is not None  # named as main.py names them: fast identity for a sampled test
            ref = Checkpoint(specs[line.reference], remote=sampled, digest="fast" if sampled else "full")
            if how.rows is not None:
                opts.check_pair(ref.arch, cand.arch, [stat], None)
            save = {stat: record_path(out, line.reference, how.record_name)} if out is not None else None
            rec = run_opened(ref, cand, opts, save=save, progress=progress)[0]
        except TracingError as e:
            line.follow_up_verdict = f"not run: {e}"
            continue
        line.follow_up_log10_p = float(rec["log10_pvalue"])
        if math.isnan(line.follow_up_log10_p):
            line.follow_up_verdict = "screen significant, follow-up not significant"
        else:
            tested.append((line, rec))
    adjusted = pvalues.holm([line.follow_up_log10_p for line, _ in tested]) if tested else []
    for (line, _), adj in zip(tested, adjusted):
        dep = is_dependent(float(adj), significance)
        line.follow_up_verdict = "dependent" if dep else "screen significant, follow-up not significant"
    return [(str(rec["base_model_id"]), str(rec["ft_model_id"]), line.follow_up_log10_p) for line, rec in tested]
