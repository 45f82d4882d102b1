"""What the launcher prints: progress lines, the plan table and the summary table."""
from __future__ import annotations

import sys
from pathlib import Path


def say(*parts, file=None) -> None:
    """Print a line at once (the launcher's output is often piped into a log)."""
    print(*parts, file=file or sys.stdout, flush=True)


def first_line(text: str) -> str:
    """The first meaningful line of a message, whitespace collapsed (banner lines of stars skipped)."""
    for line in (text or "").splitlines():
        if line.strip() and not set(line.strip()) <= {"*"}:
            return " ".join(line.split())
    return ""


def fmt_params(info) -> str:
    """A parameter count as 6.7B / 125M / 3.2K ('?' when the config is unknown)."""
    if info is None:
        return "?"
    n = info.params
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}" if n < 100 * div else f"{n / div:.0f}{unit}"
    return str(n)


def fmt_minutes(m: int | None) -> str:
    if m is None:
        return "-"
    h, mm = divmod(int(m), 60)
    return f"{h}h{mm:02d}" if h else f"{mm}m"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def table(rows: list[list[str]], header: list[str]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def rel(p: Path) -> str:
    """``p`` relative to the working folder when it is inside it."""
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _results_cell(t) -> str:
    names = [t.paths[s].name for s in t.stats]
    d = rel(t.dir)
    return f"{d}/{names[0]}" if len(names) == 1 else f"{d}/{{{','.join(names)}}}"


def plan_table(tasks: list, network: list[str] | None = None) -> str:
    """One row per pair: statistics, parameter counts, resources, bytes fetched from the hub
    (``network``, one cell per pair, when given), result files and status."""
    rows = []
    for i, t in enumerate(tasks):
        r = t.resources
        rows.append([t.pair.label, ",".join(t.stats), f"{fmt_params(t.infos[0])} / {fmt_params(t.infos[1])}",
                     r.mem_gb if r else "-", r.gpus if r else "-", r.cpus if r else "-",
                     fmt_minutes(r.timeout_min if r else None)] + ([network[i]] if network else [])
                    + [_results_cell(t), t.plan_status()])
    text = table(rows, ["pair", "stat", "params", "mem_gb", "gpus", "cpus", "time"] + (["network"] if network else [])
                 + ["result", "status"])
    if any(None in t.infos and not t.problem for t in tasks):
        text += "\n* a config is not on this machine: resources assume a Llama-2-7B-sized model (see the notes)"
    return text


def summary_table(tasks: list) -> str:
    """One row per pair: outcome, time, job id and error."""
    rows = []
    for t in tasks:
        err = (t.error or "")
        rows.append([t.pair.label, str(t.status), fmt_seconds(t.time), t.job_id or "-",
                     (err[:117] + "...") if len(err) > 120 else err])
    return table(rows, ["pair", "status", "time", "job", "error"])
