"""A reference list and what names a reference, shared by the scan and the reference index: the YAML
list of references (``config/references.yaml``), a model's tokenizer digest, the file a
reference's record is written to, and the folder a scan's results go to."""
from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

from .errors import TracingError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
TABLE_FILE = "scan.csv"
RECORD_NAME = re.compile(r".+_(screen|full|rows[0-9]+)\.p")  # what record_path names a scan's tests


def read_references(path: str | Path) -> list[tuple[str, str | None]]:
    """``[(model id, family or None)]`` from a YAML list of ids or a mapping family -> ids."""
    import yaml
    p = Path(path)
    if not p.is_file():
        raise TracingError(f"reference list {path} does not exist; give a YAML file such as config/references.yaml")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise TracingError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict) and "references" in data:
        data = data["references"]
    out: list[tuple[str, str | None]] = []
    if isinstance(data, list):
        out = [(str(m), None) for m in data]
    elif isinstance(data, dict):
        for fam, ids in data.items():
            ids = ids if isinstance(ids, list) else [ids]
            out += [(str(m), str(fam)) for m in ids]
    if not out or not all(m for m, _ in out):
        raise TracingError(f"{path} lists no references; write a list of model ids, or family: [ids]")
    return list(dict.fromkeys(out))


def tokenizer_digest(ck) -> str | None:
    for name in TOKENIZER_FILES:
        f = Path(ck.path) / name
        if f.is_file():
            return hashlib.sha256(f.read_bytes()).hexdigest()
    return None


def record_path(out: Path, reference: str, name: str) -> Path:
    """``<out>/<reference>_<name>.p``, the reference named as launch.py names models (a local folder
    by its name and a digest of its path); never a file holding another reference's record."""
    from .cli_util import model_slug
    from .results import load_record
    path = out / f"{model_slug(reference)}_{name}.p"
    try:
        other = load_record(path).get("args", {}).get("base_model_id") if path.is_file() else reference
    except Exception:  # noqa: BLE001 - an unreadable file is replaced, as a rerun would
        other = reference
    if other != reference:  # two ids with one file-safe name (e.g. truncated): add the id's digest
        digest = hashlib.sha256(reference.encode()).hexdigest()[:6]
        path = out / f"{model_slug(reference)}-{digest}_{name}.p"
    return path


def is_scan_file(name: str) -> bool:
    """A file a scan writes into its ``--out`` folder: the table, the Holm family, a test's record."""
    from .evidence.family import FAMILY_FILE
    return name in (TABLE_FILE, FAMILY_FILE) or RECORD_NAME.fullmatch(name) is not None


@contextlib.contextmanager
def scan_output(out: str | Path | None):
    """The folder to write one scan's results into (None without ``--out``): when the scan succeeds
    they replace the previous scan's in ``out`` (its records not written again are removed; the
    table comes last), so ``out`` describes the latest scan only; when it fails, ``out`` is left as
    it was. The sampled-row store and other files in ``out`` are kept."""
    if out is None:
        yield None
        return
    from .evidence.family import FAMILY_FILE
    from .fileio import replacing_results
    with replacing_results(out, is_scan_file, last=(FAMILY_FILE, TABLE_FILE)) as stage:
        yield stage


def write_table(header: list, rows: list, path: Path) -> Path:
    """A scan's table as CSV, written atomically."""
    import csv
    import io

    from .fileio import atomic_write
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return atomic_write(path, buf.getvalue())
