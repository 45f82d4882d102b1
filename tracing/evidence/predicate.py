"""The predicate of a tracing statement, built from a result record (the record is only read).

The predicate says what was tested and what came out, in a form a third party can check: the null
hypothesis and its scope, the statistic and whether its p-value is exact, log10 p, level and
verdict, the correction family, every recomputable value (per-block values, block map, experts
grid), the converter changes undone before testing, the sampled rows, the options and the command
that reproduces them, the toolkit's commit and package versions, and what the level's error rate
rests on.
"""
from __future__ import annotations

import hashlib
import json
import math
import shlex

from ..errors import TracingError
from ..verdict import INTERPRETATION, NULL

PREDICATE_TYPE = "https://github.com/model-tracing/model-tracing/independence-test/v1"
SCOPE = (
    "H0: the two models' weights were trained from independent random initialisations.",
    "A model distilled only from another's outputs is independent under this null.",
    "A test on weights says nothing about how much compute a modification took.",
    INTERPRETATION,
)
#: the record keys a recomputation must reproduce bit for bit (per variant: raw and aligned)
VALUE_KEYS = ("statistic", "pvalue", "log10_pvalue", "verdict", "at_floor", "per_layer", "extra",
              "per_pair", "correspondence", "matched")
EVAL_KEYS = ("base loss", "ft loss", "base ppl", "ft ppl")
#: record ``args`` that are not options of the test
NOT_OPTIONS = ("stat", "base_model_id", "ft_model_id", "save")


def plain(x):
    """JSON-safe form used for comparison and signing: tuples become lists, non-finite floats
    become the strings ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"`` (exact; JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TracingError(f"the record holds a {type(x).__name__}, not a plain value; it is not a tracing result")


def canonical(x) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces); floats as Python's shortest round-trip repr."""
    return json.dumps(plain(x), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def digest(x) -> str:
    return hashlib.sha256(canonical(x)).hexdigest()


def values(rec: dict) -> dict:
    """Everything a recomputation must reproduce bit for bit (timings and paths left out)."""
    out = {k: rec.get(k) for k in VALUE_KEYS if k in rec}
    a = rec.get("aligned")
    out["aligned"] = None if a is None else {k: a.get(k) for k in VALUE_KEYS if k in a}
    ev = rec.get("eval")
    out["eval"] = None if not ev else {k: ev.get(k) for k in EVAL_KEYS if k in ev}
    return plain(out)


def options_of(rec: dict) -> dict:
    return {k: v for k, v in rec["args"].items() if k not in NOT_OPTIONS}


def command(rec: dict) -> list[str]:
    """The ``main.py`` command line that reproduces the record (options at their default left out)."""
    from ..options import Options
    defaults = Options().to_dict()
    argv = ["python", "main.py", "--base_model_id", str(rec["base_model_id"]), "--ft_model_id",
            str(rec["ft_model_id"]), "--stat", rec["stat"]]
    for k, v in sorted(options_of(rec).items()):
        if k == "stat" or v == defaults.get(k) or v is None:
            continue
        if isinstance(v, bool):
            argv += [f"--{k}"] if v else []
        elif isinstance(v, (list, tuple)):
            argv += [f"--{k}", ",".join(str(x) for x in v)]
        else:
            argv += [f"--{k}", str(v)]
    return argv


def sampled_rows(rec: dict) -> dict | None:
    """K, the seed and the digest of the sampled unit indices (``--rows``), or None."""
    extra = rec.get("extra") or {}
    if not extra.get("rows"):
        return None
    from ..stats.base import sampled_rows as draw
    idx = draw(int(extra["rows_of"]), int(extra["rows"]), int(extra["rows_seed"]))
    return {"K": int(extra["rows"]), "seed": int(extra["rows_seed"]), "of": int(extra["rows_of"]),
            "indices_sha256": hashlib.sha256(idx.astype("<i8").tobytes()).hexdigest(),
            "indices_encoding": "sorted int64 little-endian"}


def undone(rec: dict) -> list[str]:
    """The converter changes and transforms undone or applied before the statistic, in words."""
    out = []
    for role, m in (rec.get("models") or {}).items():
        q = m.get("quantization") or {}
        fmt = str(q.get("format", "")).lower()
        if fmt == "gguf":
            out.append(f"{role}: GGUF dequantized to float32 ({q.get('types')}); llama.cpp's rotary Q/K row "
                       f"order undone for llama-architecture files; Gemma's stored 1 + w norm gains undone")
        elif fmt:
            out.append(f"{role}: {fmt.upper()} dequantized to float32 ({q.get('types')})")
    t = rec.get("transforms") or {}
    if t.get("fold_norms"):
        out.append("norm gains folded into the layers they feed (undoes AWQ's scale migration)")
    for k, what in (("permute", "a random permutation applied to the fine-tuned model (--permute)"),
                    ("rotate", "a random rotation applied to the fine-tuned model (--rotate)"),
                    ("align", "alignment of the fine-tuned model's units to the base (--align)")):
        if t.get(k):
            out.append(what)
    return out


def correction(rec: dict) -> dict:
    if rec.get("per_pair") is not None:
        grid = rec["per_pair"]
        n = len(grid) * (len(grid[0]) if grid else 0)
        return {"method": "bonferroni", "family": f"the {len(grid)}×{len(grid[0]) if grid else 0} block grid",
                "size": n}
    return {"method": "none", "family": "one pre-specified pair and statistic", "size": 1}


def calibration(rec: dict, spec) -> dict:
    level = rec["args"].get("significance")
    if rec.get("log10_pvalue") is None:
        return {"kind": None, "statement": "this statistic gives no p-value; no error rate applies"}
    if spec.exact:
        return {"kind": "exact", "false_positive_rate_at_most": level,
                "statement": "exact under H0 and the permutation model: P(p <= level) <= level for every level"}
    return {"kind": "approximate", "false_positive_rate_at_most": None,
            "statement": "empirically calibrated (independent pairs' p-values roughly uniform in the toolkit's "
                         "calibration tests); no theorem bounds the error rate"}


def build(rec: dict) -> dict:
    """The predicate for one record (raises TracingError for a failed or foreign record)."""
    from ..stats import get as get_stat
    if not isinstance(rec, dict) or "args" not in rec or "stat" not in rec:
        raise TracingError("the file is not a tracing result record (no args/stat); give a .p file written by main.py")
    if rec.get("status", "ok") != "ok":
        raise TracingError(f"the result records a failure ({rec.get('error')}); only a completed result can be attested")
    spec = get_stat(rec["stat"])
    vals = values(rec)
    a = rec.get("aligned") or {}
    return plain({
        "null": {"hypothesis": NULL, "scope": list(SCOPE)},
        "statistic": {"name": spec.name, "description": spec.description, "meaning": spec.meaning,
                      "pvalue_kind": rec.get("pvalue_kind")},
        "result": {"log10_pvalue": rec.get("log10_pvalue"), "level": rec["args"].get("significance"),
                   "verdict": rec.get("verdict"), "aligned_log10_pvalue": a.get("log10_pvalue"),
                   "aligned_verdict": a.get("verdict")},
        "correction": correction(rec),
        "values": vals,
        "values_sha256": digest(vals),
        "undone": undone(rec),
        "sampled_rows": sampled_rows(rec),
        "options": options_of(rec),
        "command": shlex.join(command(rec)),
        "toolkit": {"commit": rec.get("commit"), "versions": rec.get("versions")},
        "calibration": calibration(rec, spec),
        "notes": rec.get("notes") or [],
        "data": rec.get("data"),
    })
