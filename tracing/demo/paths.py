"""Where the demo family lives, and the specs that name its models (``demo:<name>``)."""
from __future__ import annotations

import json
import os
import pathlib

from ..specs import is_demo
from .recipes import _COMPLETE, ENV_DIR, SLICE_FILES, VERSION, _name, _recipe_signature



def default_root() -> pathlib.Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return pathlib.Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "model-tracing" / f"demo-{VERSION}"


def _root(root) -> pathlib.Path:
    return pathlib.Path(root).expanduser().absolute() if root is not None else default_root().absolute()


def is_built(root=None, tiny: bool = False) -> bool:
    complete = _root(root) / _COMPLETE
    try:
        return complete.read_text(encoding="utf-8").strip() == _recipe_signature(tiny)
    except OSError:
        return False


def is_demo_spec(spec: str) -> bool:
    """True for model specs of the form ``demo:<name>``."""
    return isinstance(spec, str) and is_demo(spec)


def resolve_demo(spec: str, root=None) -> pathlib.Path:
    """The local folder of demo model ``demo:<name>`` (a bare name is accepted too), building the zoo if needed."""
    name = _name(spec)
    return _ensure(root) / name


def demo_eval_text_path(root=None) -> pathlib.Path:
    """The held-out evaluation text (``--dataset demo``): one document per line, never trained on."""
    return _ensure(root) / "corpus" / SLICE_FILES["eval"]


def lineage(root=None) -> dict:
    """The contents of ``<root>/lineage.json`` (building the zoo if needed)."""
    path = _ensure(root) / "lineage.json"
    return json.loads(path.read_text(encoding="utf-8"))




def _ensure(root):
    from .build import ensure_built
    return ensure_built(root)
