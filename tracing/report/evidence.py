"""The report's evidence section: each pair's signed statement (``<result>.intoto.json``, written by
``python -m tracing.attest`` or ``launch.py --attest-key``), linked with its digest."""
from __future__ import annotations

import hashlib

from .mdtable import rel_link, table


def evidence_section(c) -> list[str]:
    rows = []
    for rel, rec in sorted(c.records.items()):
        st = (c.folder / rel).with_suffix(".intoto.json")
        if not st.is_file() or not isinstance(rec, dict):
            continue
        sha = hashlib.sha256(st.read_bytes()).hexdigest()
        rows.append([rec.get("stat"), rec.get("base_model_id"), rec.get("ft_model_id"), rec.get("verdict"),
                     f"[{st.name}]({rel_link(st, c.out)})", f"`{sha[:16]}…`"])
    if not rows:
        return []
    return ["## Evidence", "",
            "Signed in-toto statements of the results; check one with "
            "`python -m tracing.verify STATEMENT --key PUBLIC.pem` (signature, model digests, recomputation).", "",
            table(["stat", "base", "ft", "verdict", "statement", "sha256"], rows), ""]
