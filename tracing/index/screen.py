"""Screening one candidate against every reference of an index.

The candidate's sampled rows are read once (the same rows, projection and blocks as every entry of
its shape); each compatible reference is tested with the sampled ``cos`` test on the stored
sketches (MATCH per block, SPEARMAN, Fisher over blocks) and the p-values are corrected with Holm
across the references. Two statements come out:

- **dependent after Holm**: the probability that this set holds a reference independent of the
  candidate is at most α (exact: the sampled test is exact under the null, and Holm controls the
  family-wise error);
- **cannot be ruled out**: references this screen has no power against, each with its reason
  (another shape, a damaged entry, a candidate whose units look permuted against it).

Every other reference is "not significant": the screen found no evidence, which does not prove
independence. ``robust=True`` adds a second tier for references of the same architecture
(``cos --align`` or ``match`` against the reference's weights), Holm across that tier.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import TracingError
from ..references import TABLE_FILE, scan_output, write_table
from .entry import SKETCH_FILE, features, shape_problem
from .followup import FOLLOW_UP_HEADER, FollowUp, parse_follow_up, reference_spec, run_follow_up
from .layout import read_manifest

PERMUTED_LEVEL = 1e-6  # Bonferroni level of the "units look permuted" flag (random directions)
HEADER = ["reference", "family", "K", "screened log10 p", "Holm log10 p", "robust log10 p", "robust Holm log10 p",
          "verdict", "reason", *FOLLOW_UP_HEADER]
NOT_AVAILABLE = "cannot rule out: reference weights not available for the robust tier"


@dataclass
class Line:
    """One reference's line of ``scan.csv``."""

    reference: str
    family: str | None = None
    k: int | None = None
    screen_log10_p: float | None = None
    holm_log10_p: float | None = None
    robust_log10_p: float | None = None
    robust_holm_log10_p: float | None = None
    verdict: str = ""
    reason: str = ""
    model_type: str | None = None
    flagged: str = ""  # why the candidate's units look permuted against this reference
    follow_up: str = ""  # the test run on the reference's weights after the screen (full, rows:K)
    follow_up_log10_p: float | None = None
    follow_up_verdict: str = ""

    def cells(self) -> list:
        f = (lambda x: "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}")
        return [self.reference, self.family or "", "" if self.k is None else self.k, f(self.screen_log10_p),
                f(self.holm_log10_p), f(self.robust_log10_p), f(self.robust_holm_log10_p), self.verdict, self.reason,
                self.follow_up, f(self.follow_up_log10_p), self.follow_up_verdict]

    def sort_key(self):
        order = {"dependent": 0, "cannot": 1, "not": 2}.get(self.verdict.split(" ")[0], 3)
        p = self.robust_holm_log10_p if self.verdict.endswith("(robust tier)") else self.holm_log10_p
        return order, p if p is not None and not math.isnan(p) else math.inf, self.reference


def _permuted_p(c: float, n: int, tests: int) -> float:
    """Bonferroni bound of a largest |cos| ``c`` among ``tests`` cosines of independent random
    directions in n dimensions (cos² ~ Beta(1/2, (n−1)/2))."""
    from scipy.stats import beta
    return min(1.0, tests * float(beta.sf(min(c * c, 1.0), 0.5, (n - 1) / 2)))


def _pairs(R: np.ndarray, X: np.ndarray, C: np.ndarray) -> tuple:
    """MATCH of two sets of unit-norm rows with cosine matrix ``C``: the row-wise argmax when it is
    a permutation (then it is the optimum), else the assignment; with a zero (degenerate) row, the
    toolkit's general matcher, which drops it."""
    from scipy.optimize import linear_sum_assignment

    from ..align import match_pairs
    if not (R.any(1).all() and X.any(1).all()):
        res = match_pairs(torch.from_numpy(R), torch.from_numpy(X))
        return res.rows, res.cols
    am = C.argmax(1)
    if np.unique(am).size == am.size:
        return np.arange(am.size), am
    np.negative(C, out=C)
    return linear_sum_assignment(C)


def compare(refs: list[dict], cand: dict, blocks: list[int], alternative: str = "greater") -> list[tuple]:
    """``(log10 p, flag p)`` of each reference's sketches against the candidate's: the sampled cos
    test over the blocks, and the bound that the largest |cos| between any two sampled rows comes
    from independent random directions (small: the candidate's units meet the reference's at other
    positions). The cosines of one block are one matrix product over all references; the
    assignments run in threads (scipy releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from .. import pvalues
    lps = np.zeros((len(refs), len(blocks)))
    cmax = np.zeros(len(refs))
    workers = max(1, min(os.cpu_count() or 1, torch.get_num_threads()))
    chunks = np.array_split(np.arange(len(refs)), workers)
    with ThreadPoolExecutor(workers) as pool:
        for j, b in enumerate(blocks):
            X = cand[f"sketch.{b}"].float()
            stack = _stack([r[f"sketch.{b}"] for r in refs])
            C_all = torch.matmul(stack, X.T).numpy()  # unit rows: the cosines, [references, K, K]
            np.maximum(cmax, np.abs(C_all).max(axis=(1, 2)), out=cmax)
            Xn, S = X.numpy(), stack.numpy()

            def run(idx, j=j, Xn=Xn, S=S, C_all=C_all):
                for i in idx:
                    lps[i, j] = pvalues.spearman_pairs(*_pairs(S[i], Xn, C_all[i]), alternative=alternative)[1]
            list(pool.map(run, chunks))
    k, n = cand[f"sketch.{blocks[0]}"].shape
    return [(float(pvalues.fisher(lps[i])[1]), _permuted_p(float(cmax[i]), n, k * k * len(blocks)))
            for i in range(len(refs))]


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    """float32 stack of equally shaped tensors, converted one at a time (no float16 copy of the whole)."""
    out = torch.empty((len(ts), *ts[0].shape), dtype=torch.float32)
    for i, t in enumerate(ts):
        out[i].copy_(t)
    return out


def _emb_flags(refs: list[dict], cand: dict) -> np.ndarray:
    """Per reference, the bound of :func:`_permuted_p` for the largest |cos| between the candidate's
    sampled embedding columns (centred) and the reference's: small when the candidate's residual
    stream meets the reference's at other positions."""
    X = cand["sketch.emb"].float()
    cmax = np.abs(torch.matmul(_stack([r["sketch.emb"] for r in refs]), X.T).numpy()).max(axis=(1, 2))
    k, n = X.shape
    return np.array([_permuted_p(float(c), n, k * k) for c in cmax])


def screen(candidate, root, robust: str | None = None, significance: float = 0.01,
           progress: bool = False, follow_up: FollowUp | str | None = None, out=None) -> list[Line]:
    """Every reference of the index at ``root`` against ``candidate`` (an id or folder, or an opened
    weight source); ``robust``: None, "cos" (cos
    --align) or "match" for the second tier; ``follow_up``: ``full`` / ``rows:K`` tests the references
    dependent after Holm again on their weights (:mod:`.followup`), None or ``none`` does not. With
    ``out``, the scan's results go there (:func:`~tracing.references.scan_output`: ``scan.csv``, the
    follow-up records and their Holm family, empty when nothing was followed up), replacing the previous
    scan's. Lines ranked: dependent, cannot rule out, the rest."""
    from .. import pvalues
    from ..models import Checkpoint
    from ..rowstore import with_store
    from ..verdict import is_dependent
    from .store import entries
    s = read_manifest(root)
    how = parse_follow_up(follow_up) if isinstance(follow_up, str) else (follow_up or FollowUp(enabled=False))
    good, bad = entries(root, s)
    lines = [Line(k, verdict="cannot rule out", reason=why) for k, why in bad]
    # named by the fast identity, as by the scan: the screen reads rows, and attesting a record hashes the files
    opened = (Checkpoint(candidate, remote=True, digest="fast") if isinstance(candidate, (str, os.PathLike))
              else candidate)
    cand = with_store(opened, None, memory=True)
    a = cand.arch
    problem = shape_problem(a)
    feats = None if problem else features(cand, s)
    screened, loaded = [], []
    for e in good:
        sh, line = e.shape, Line(e.meta["model"], e.meta.get("family"), model_type=e.shape["model_type"])
        lines.append(line)
        mine = (a.d, a.h, a.L)
        if problem or (sh["d"], sh["h"], sh["L"]) != mine:
            line.verdict = "cannot rule out"
            line.reason = problem or (f"other shape (d, h, L = {sh['d']}, {sh['h']}, {sh['L']} vs {mine[0]}, {mine[1]}, "
                                      f"{mine[2]}): the screen compares equal shapes; test this pair with "
                                      f"`main.py --stat match --localized`")
            continue
        try:
            loaded.append((e, line, e.tensors(SKETCH_FILE)))
        except TracingError as err:
            line.verdict, line.reason = "cannot rule out", str(err)
    if loaded:
        blocks, sketches = loaded[0][0].meta["blocks"], [t for *_, t in loaded]
        emb = _emb_flags(sketches, feats)
        for (e, line, _), (lp, flag), flag_emb in zip(loaded, compare(sketches, feats, blocks), emb):
            line.screen_log10_p, line.k = lp, int(feats[f"sketch.{blocks[0]}"].shape[0])
            line.flagged = ", ".join(what for what, p in (("MLP units", flag), ("residual stream", flag_emb))
                                     if p < PERMUTED_LEVEL)
            screened.append(line)
    for line, adj in zip(screened, pvalues.holm([x.screen_log10_p for x in screened])):
        line.holm_log10_p = float(adj)
        if math.isnan(line.screen_log10_p):
            line.verdict = "cannot rule out"
            line.reason = "no block has enough nonzero sampled rows for the test; test this pair in full with main.py"
        elif is_dependent(adj, significance):
            line.verdict = "dependent after Holm"
        elif line.flagged:
            line.verdict = "cannot rule out"
            line.reason = (f"the candidate's sampled rows meet this reference's at other positions ({line.flagged} look "
                           f"permuted): the sampled screen has no power against a permuted copy; run --robust")
        else:
            line.verdict = "not significant"
    with scan_output(out) as stage:  # the records, family and table replace the previous scan's in out
        members = run_follow_up(cand, screened, {e.meta["model"]: reference_spec(e.meta) for e in good}, how,
                                significance, stage, progress)
        if robust:
            _robust_tier(cand, [x for x in screened if not x.verdict.startswith("dependent")
                                and x.model_type == a.model_type], robust, significance, progress)
        lines.sort(key=Line.sort_key)
        if stage is not None:
            from ..evidence.family import FAMILY_FILE, family_doc, write_family
            of = f"the sampled screen of {cand.label} against {len(screened)} references of the index {root}"
            what = (f"the {how.name} cos follow-up of the {len(members)} references dependent after Holm in {of}"
                    if how.enabled else f"no follow-up (--follow-up none) of {of}")
            write_family(stage / FAMILY_FILE, family_doc("scan", what, members, significance))
            write_table(HEADER, [x.cells() for x in lines], stage / TABLE_FILE)
    return lines


def _robust_tier(cand, lines: list[Line], stat: str, significance: float, progress: bool) -> None:
    """``cos --align`` or ``match`` against each reference's own weights; Holm across the tier."""
    from .. import pvalues
    from ..api import run_opened
    from ..models import Checkpoint
    from ..options import Options
    from ..stats import get
    from ..verdict import is_dependent
    aligned = get(stat).robust == "aligned"  # robust after --align: its aligned variant is read
    opts = Options(stat=[stat], align=aligned, significance=significance)
    tested = []
    for line in lines:
        try:
            ref = Checkpoint(line.reference)
        except TracingError:
            line.verdict, line.reason = "cannot rule out", NOT_AVAILABLE
            continue
        try:
            rec = run_opened(ref, cand, opts, progress=progress)[0]
        except TracingError as e:
            line.verdict, line.reason = "cannot rule out", f"robust tier failed: {e}"
            continue
        v = rec.get("aligned") if aligned else rec
        line.robust_log10_p = float(v["log10_pvalue"])
        tested.append(line)
    for line, adj in zip(tested, pvalues.holm([x.robust_log10_p for x in tested])):
        line.robust_holm_log10_p = float(adj)
        if is_dependent(adj, significance):
            line.verdict, line.reason = "dependent after Holm (robust tier)", f"{stat}{' --align' if aligned else ''}"
        elif line.verdict == "cannot rule out":
            line.verdict, line.reason = "not significant", f"not significant in the robust tier ({stat})"


def summary(lines: list[Line], significance: float, robust: str | None) -> list[str]:
    """The two guarantees, in words."""
    dep = [x.reference for x in lines if x.verdict.startswith("dependent")]
    cannot = [x for x in lines if x.verdict == "cannot rule out"]
    rest = sum(x.verdict == "not significant" for x in lines)
    tiers = " (in each tier)" if robust else ""
    out = [f"dependent after Holm at α = {significance:g}{tiers}: {', '.join(dep) if dep else 'none'} "
           f"(the probability that this set holds a reference independent of the candidate is at most {significance:g})",
           f"cannot be ruled out ({len(cannot)}; the screen has no power against them):"]
    out += [f"  {x.reference}: {x.reason}" for x in cannot] or ["  none"]
    out.append(f"not significant: {rest} reference(s) (no evidence of dependence; this does not prove independence)")
    followed = [x for x in lines if x.follow_up]
    for x in followed:
        p = "" if x.follow_up_log10_p is None else f", log10 p = {x.follow_up_log10_p:.4g}"
        out.append(f"follow-up ({x.follow_up} cos on the reference's weights) of {x.reference}: {x.follow_up_verdict}{p}")
    if dep and not followed and any(x.verdict == "dependent after Holm" for x in lines):
        out.append("test the dependent references in full (or with more rows): --follow-up full, or main.py "
                   "--base_model_id REFERENCE --ft_model_id CANDIDATE --stat cos")
    out.append("null: the candidate and the reference were trained from independent random initialisations")
    return out
