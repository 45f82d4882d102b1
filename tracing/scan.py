"""One model against many references: "is this upload a renamed Llama, Qwen or Mistral?"

    python -m tracing.scan CANDIDATE --against config/references.yaml [--rows 256] [--out DIR]
    python -m tracing.scan CANDIDATE --index DIR [--robust [cos|match]] [--follow-up full|rows:K|none] [--out OUT]

For each reference, before any weight is read: identical weight files (a re-upload: no test is
run), identical tokenizer files, and the shapes from the configs and safetensors headers (a
reference of another shape is listed with the reason). Every compatible reference is screened with
the sampled test (``--rows K``: K units drawn from ``--seed``, the same in both models; default 256,
or every unit of a narrower model; a given K larger than a model's width is an error); the
screening p-values are corrected with Holm across the references, and the references significant
after correction are tested in full. The ranked table goes to stdout and ``DIR/scan.csv``, one
record per test to ``DIR/<reference>_screen.p`` / ``DIR/<reference>_full.p`` (a local folder named
by its last component and a digest of its path, as launch.py names models: ``…/qwen3/base`` and
``…/phi3/base`` get two records).

The reference list (YAML) is a list of model ids, or a mapping of family name to a list of ids.

With ``--index DIR`` (built by ``python -m tracing.index``) no reference is read: the candidate's
sampled rows are tested against every compatible entry (:mod:`tracing.index.screen`); the references
dependent after Holm are then tested on their own weights, in full by default (``--follow-up``,
:mod:`tracing.index.followup`), with the result in the ``follow-up`` columns of ``scan.csv``; with
``--out``, their records and ``holm-family.json`` (the follow-up tests, Holm across them; empty when
nothing was followed up) for attest.

A scan's files in ``--out`` (``scan.csv``, ``holm-family.json``, the records) are written aside and
replace the previous scan's when it has finished (:func:`tracing.references.scan_output`): the folder
describes the latest scan only, and a scan that fails leaves it as it was.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import TracingError
from .references import (TABLE_FILE, TOKENIZER_FILES, read_references, record_path,  # noqa: F401 (re-exported)
                         scan_output, tokenizer_digest, write_table)

DEFAULT_ROWS = 256  # K of the screen when --rows is not given (all units of a narrower model)


@dataclass
class Row:
    """One reference's line of the scan table."""

    reference: str
    family: str | None = None
    status: str = "screened"  # screened | identical | incompatible | unavailable
    why: str = ""
    tokenizer: str = "unknown"  # identical | different | unknown
    k: int | None = None  # units the screen sampled
    screen_log10_p: float | None = None
    holm_log10_p: float | None = None
    full_log10_p: float | None = None
    verdict: str = ""

    def sort_key(self):
        order = {"identical": 0, "screened": 1, "incompatible": 2, "unavailable": 3}[self.status]
        p = self.full_log10_p if self.full_log10_p is not None else self.holm_log10_p
        return order, p if p is not None and not math.isnan(p) else math.inf, self.reference

    def cells(self) -> list:
        return [self.reference, self.family or "", "" if self.k is None else self.k, _fmt(self.screen_log10_p),
                _fmt(self.holm_log10_p), _fmt(self.full_log10_p), self.tokenizer, self.verdict]


HEADER = ["reference", "family", "K", "screened log10 p", "Holm log10 p", "full log10 p", "tokenizer", "verdict"]


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"





# ------------------------------------------------------------------------------------------
# pre-checks (configs, headers, hashes: no tensor data)
# ------------------------------------------------------------------------------------------
def weight_hashes(ck, digest: str | None = None) -> list | None:
    """``(file, size, digest)`` of each weight file: its SHA-256 when known, else (a checkpoint
    opened with the fast identity) its header's digest, marked as such; None when a file has neither."""
    files = ck.provenance(digest=digest).get("files") or []
    got = sorted((f.get("file"), f.get("size"), f.get("sha256") or (f.get("header_sha256") and
                                                                     "header:" + f["header_sha256"])) for f in files)
    return got if got and all(h for *_, h in got) else None


def same_weights(cand, ref, cand_hashes) -> bool:
    """Do two checkpoints hold the same weight files? When their names, sizes and header digests
    agree, a few windows of each file are compared, and only files equal there are hashed in full
    (a possible re-upload): a fine-tune saved like its base costs three small reads per file."""
    from .identity import content_probe
    if cand_hashes is None or cand_hashes != weight_hashes(ref):
        return False
    if not any(str(h).startswith("header:") for *_, h in cand_hashes):
        return True
    probes = [sorted((f.name, content_probe(f)) for f in ck.weight_files()) for ck in (cand, ref)]
    return probes[0] == probes[1] and weight_hashes(cand, "full") == weight_hashes(ref, "full")


def screening_stats() -> list[str]:
    """The statistics that screen with sampled rows (their spec's ``screens``)."""
    from .stats import get, names
    return [n for n in names() if get(n).screens]


def shape_problem(stat: str, cand, ref) -> str | None:
    """Why ``ref`` cannot be tested against ``cand`` by ``stat`` (None when it can)."""
    from .stats import get
    a, b = ref.arch, cand.arch
    if getattr(a, "has_experts", False) or getattr(b, "has_experts", False):
        return (f"mixture-of-experts blocks: the sampled screen reads dense MLPs only; test this pair in full "
                f"with `main.py --stat {stat}`")
    if a.d != b.d:
        return (f"different residual width (d={a.d} vs {b.d}): {stat} needs equal d; compare the MLP units of "
                f"every block pair with `main.py --stat match --localized`")
    if get(stat).sampled == "units" and a.L != b.L:
        return (f"different depth (L={a.L} vs {b.L}): cos compares block i with block i; use "
                f"`main.py --stat match --localized` for a block map")
    return None


def precheck(stat: str, cand, ref, cand_hashes, cand_tok) -> tuple[str, str, str]:
    """``(status, why, tokenizer)`` of one reference against the candidate."""
    ref_tok = tokenizer_digest(ref)
    tok = "unknown" if cand_tok is None or ref_tok is None else ("identical" if cand_tok == ref_tok else "different")
    if same_weights(cand, ref, cand_hashes):
        return "identical", "identical weight files (SHA-256): a re-upload of the same weights, no test run", tok
    problem = shape_problem(stat, cand, ref)
    if problem:
        return "incompatible", problem, tok
    return "screened", "", tok


# ------------------------------------------------------------------------------------------
# the scan
# ------------------------------------------------------------------------------------------
def _open(spec: str, store: Path | None = None, memory: bool = False):
    """A checkpoint whose sampled rows are read once: kept in ``store`` (beside the results, for
    this and later scans), else in memory when ``memory`` (the candidate, tested against every reference).
    A hub model not in the local cache is read by range requests (:mod:`tracing.sources.remote`);
    local weight files are named by their fast identity (:mod:`tracing.identity`)."""
    from .models import Checkpoint
    from .rowstore import with_store
    return with_store(Checkpoint(spec, remote=True, digest="fast"), store, memory=memory)


def _test(ref_ck, cand_ck, options, out: Path | None, name: str, progress: bool) -> dict:
    from .api import run_opened
    save = {options.stat[0]: record_path(out, ref_ck.label, name)} if out is not None else None
    return run_opened(ref_ck, cand_ck, options, save=save, progress=progress)[0]


def screen_rows(stat: str, rows: int | None, cand, ref, options) -> int:
    """K of one reference's screen: ``rows`` as given — more than the width sampled from is an
    error, as in main.py — else :data:`DEFAULT_ROWS`, or every unit of a narrower model."""
    from .stats import get
    width = ref.arch.d if get(stat).sampled == "residual" else min(ref.arch.h, cand.arch.h)
    if rows is None:
        return min(DEFAULT_ROWS, width)
    options.replace(rows=rows).check_pair(ref.arch, cand.arch, [stat], None)
    return rows


def scan(candidate: str, references, stat: str = "cos", rows: int | None = None, out: str | Path | None = None,
         progress: bool = False, **options) -> list[Row]:
    """Screen ``candidate`` against every reference (``[(id, family)]`` or ids); return the rows,
    ranked: identical weights first, then by p-value (full test when run, else Holm-corrected screen).
    ``rows``: K sampled units (default :data:`DEFAULT_ROWS`, or all units of a narrower model); more
    than a reference's width is a :class:`TracingError` raised before any test."""
    from . import pvalues
    from .options import Options
    from .verdict import is_dependent
    if stat not in screening_stats():
        raise TracingError(f"scan screens with a sampled statistic; use --stat {' or '.join(screening_stats())}")
    full_opts = Options(stat=[stat], **options)
    screen_opts = full_opts.replace(rows=rows)
    out = Path(out) if out is not None else None
    refs = [(r, None) if isinstance(r, str) else tuple(r) for r in references]
    from .rowstore import FOLDER
    store = out / FOLDER if out is not None else None
    cand = _open(candidate, store, memory=True)
    cand_hashes, cand_tok = weight_hashes(cand), tokenizer_digest(cand)
    rows_out, opened = [], {}
    for ref_id, fam in refs:  # configs, headers and hashes only: a bad --rows stops here, before any test
        row = Row(ref_id, fam)
        rows_out.append(row)
        try:
            opened[ref_id] = ref = _open(ref_id, store)
        except TracingError as e:
            row.status, row.why, row.verdict = "unavailable", str(e), f"unavailable: {e}"
            continue
        row.status, row.why, row.tokenizer = precheck(stat, cand, ref, cand_hashes, cand_tok)
        if row.status == "screened":
            row.k = screen_rows(stat, rows, cand, ref, screen_opts)
        else:
            row.verdict = "re-upload: identical weights" if row.status == "identical" else row.why
    with scan_output(out) as stage:  # the records, family and table replace the previous scan's in out
        for row in rows_out:
            if row.status == "screened":
                try:
                    rec = _test(opened[row.reference], cand, screen_opts.replace(rows=row.k), stage, "screen", progress)
                    row.screen_log10_p = rec["log10_pvalue"]
                except TracingError as e:  # e.g. a tensor layout this statistic cannot compare
                    row.status, row.why, row.verdict, row.k = "unavailable", str(e), f"failed: {e}", None
        screened = [r for r in rows_out if r.status == "screened"]
        for r, adj in zip(screened, pvalues.holm([r.screen_log10_p for r in screened])):
            r.holm_log10_p = float(adj)
            if is_dependent(adj, full_opts.significance):
                rec = _test(opened[r.reference], cand, full_opts, stage, "full", progress)
                r.full_log10_p = rec["log10_pvalue"]
                dep = is_dependent(r.full_log10_p, full_opts.significance)
                r.verdict = "dependent" if dep else "screen significant, full test not significant"
            else:
                r.verdict = "not significant"
        rows_out.sort(key=Row.sort_key)
        if stage is not None:
            from .evidence.family import FAMILY_FILE, family_doc, write_family
            members = [(r.reference, candidate, r.screen_log10_p) for r in screened if not math.isnan(r.screen_log10_p)]
            write_family(stage / FAMILY_FILE, family_doc("scan", f"the {stat} screen of {candidate} against "
                                                                 f"{len(members)} references", members,
                                                         full_opts.significance))
            write_csv(rows_out, stage / TABLE_FILE)
    return rows_out


def write_csv(rows: list[Row], path: Path) -> Path:
    return write_table(HEADER, [r.cells() for r in rows], path)


def table(rows: list[Row]) -> str:
    from .cli_util import text_table
    return text_table([HEADER] + [r.cells() for r in rows])


def robust_stats() -> list[str]:
    """The statistics that survive a permutation of the candidate's units (their spec's ``robust``)."""
    from .stats import get, names
    return [n for n in names() if get(n).robust]


def parse(argv=None):
    from .options import add_options
    p = argparse.ArgumentParser(prog="python -m tracing.scan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidate", help="the model to screen: hub id[@revision], local folder, or demo:<name>")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--against", help="YAML list of reference models (e.g. config/references.yaml)")
    src.add_argument("--index", help="a reference index built with `python -m tracing.index build`")
    p.add_argument("--robust", nargs="?", const="cos", choices=robust_stats(), default=None,
                   help="with --index: a second tier against same-architecture references' weights, for "
                        "candidates whose units were permuted (cos --align, or match)")
    p.add_argument("--follow-up", default="full", dest="follow_up", metavar="{full,rows:K,none}",
                   help="with --index: test the references dependent after Holm again on their weights, in full "
                        "(default), with K sampled rows (rows:K), or not (none)")
    p.add_argument("--out", default=None, help="folder for scan.csv and one record per test (default: not saved)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_options(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    from .options import options_from_args
    from .fileio import check_writable
    from .provenance import scrub
    args = parse(argv)
    if args.index:
        return _index_main(args)
    refs = read_references(args.against)
    opts = options_from_args(args).to_dict()
    stat = opts.pop("stat")
    if len(stat) != 1:
        raise TracingError(f"scan takes one statistic, got {', '.join(stat)}; use --stat cos or --stat emb")
    rows = opts.pop("rows")
    if args.out:
        check_writable(Path(args.out) / "scan.csv")
    result = scan(args.candidate, refs, stat=stat[0], rows=rows, out=args.out, progress=not args.quiet, **opts)
    k = f"K = {rows}" if rows is not None else f"K = {DEFAULT_ROWS} (all units when fewer)"
    print(scrub(f"scan of {args.candidate}: {stat[0]} on {k} sampled units, Holm across "
                f"{sum(r.status == 'screened' for r in result)} screened references, then the full test"))
    print(scrub(table(result)))
    for r in result:
        if r.status == "identical":
            print(scrub(f"{r.reference}: {r.why}"))
    if args.out:
        print(scrub(f"saved {Path(args.out) / 'scan.csv'}"))
    return 0


def _index_main(args) -> int:
    from .index import screen as _  # noqa: F401  (the package; the module is below)
    from .index.followup import parse_follow_up
    index_screen = sys.modules["tracing.index.screen"]
    from .fileio import check_writable
    from .provenance import scrub
    how = parse_follow_up(args.follow_up)
    if args.out:
        check_writable(Path(args.out) / "scan.csv")
    lines = index_screen.screen(args.candidate, args.index, robust=args.robust, significance=args.significance,
                                progress=not args.quiet, follow_up=how, out=args.out)
    then = f", then the {how.name} cos test of each reference dependent after Holm" if how.enabled else ""
    print(scrub(f"scan of {args.candidate} against the index {args.index}: sampled cos, Holm across "
                f"{sum(x.screen_log10_p is not None for x in lines)} screened references{then}"))
    cells = [index_screen.HEADER] + [x.cells() for x in lines]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(index_screen.HEADER))]
    print(scrub("\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)))
    for line in index_screen.summary(lines, args.significance, args.robust):
        print(scrub(line))
    if args.out:
        print(scrub(f"saved {Path(args.out) / TABLE_FILE}"))
    return 0


if __name__ == "__main__":
    from .cli_util import run_cli
    sys.exit(run_cli(main))
