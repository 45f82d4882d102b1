"""Model lists: the four YAML forms of a list of models, turned into the pairs to compare.

- a plain list of models (or ``{models: [...]}``) -> every unordered pair;
- a tree (a list whose items are a model or a one-key mapping ``model: [children]``, recursively;
  see :mod:`tracing.lineage.tree`) -> every unordered pair, and the tree is the known lineage;
- ``{base_models: [...], ft_models: [...]}`` -> every base x fine-tune pair;
- ``{models_1: [...], models_2: [...], names_1?, names_2?}`` -> the listed pairs, in order;

with optional ``stat``, ``options`` and ``resources`` keys. Also what kind of model a spec names
(hub id, local folder or demo model), in one place.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from ..errors import TracingError
from ..specs import parse_spec

def is_local_spec(spec: str) -> bool:
    """Does ``spec`` name a folder on this machine (a path, or an existing folder)? (:func:`tracing.specs.parse_spec`)"""
    return parse_spec(str(spec)).kind == "local"


def is_hub_id(spec: str) -> bool:
    """Is ``spec`` a hub model id ``org/name[@revision]``? (:func:`tracing.specs.parse_spec`)"""
    return parse_spec(str(spec)).kind == "hub"


@dataclass(frozen=True)
class Pair:
    """One comparison: ``base`` (θ₁) against ``ft`` (θ₂); names are for display only."""

    base: str
    ft: str
    base_name: str | None = None
    ft_name: str | None = None

    @property
    def label(self) -> str:
        return f"{self.base_name or self.base} vs {self.ft_name or self.ft}"


@dataclass
class ModelList:
    pairs: list[Pair]
    form: str  # "all pairs" | "tree" | "base x ft" | "listed pairs"
    stat: list[str] | None = None
    options: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    source: str = "<model list>"
    notes: list[str] = field(default_factory=list)
    lineage: dict | None = None  # the known lineage of a tree ({"models": {name: {"parent", "root"}}})
    labels: dict | None = None  # the known relation of each listed pair (see tracing.lineage.relations)


FORMS_HELP = ("a list of models (every pair), a tree of models (see config/llama7b_tree.yaml), "
              "{base_models: [...], ft_models: [...]} (every base x fine-tune), "
              "or {models_1: [...], models_2: [...]} (the listed pairs)")
RESOURCE_KEYS = {"mem_gb": int, "timeout_min": int, "gpus": int, "cpus": int, "partition": str}
TOP_KEYS = ("models", "base_models", "ft_models", "models_1", "models_2", "names_1", "names_2",
            "stat", "options", "resources", "relations", "sources", "audit", "excluded", "benchmark")


def read_model_list(path: str | os.PathLike) -> ModelList:
    """Read a model list YAML file; raises :class:`TracingError` with a one-line fix on any problem."""
    import yaml

    p = Path(path)
    if not p.is_file():
        hint = "it is a folder; " if p.is_dir() else ""
        raise TracingError(f"model list {p} does not exist ({hint}give a YAML file such as config/model_list.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise TracingError(f"{p} is not valid YAML{where} ({problem}); fix the syntax "
                           f"(see config/model_list.yaml for the accepted forms)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TracingError(f"cannot read model list {p} ({e}); check the file") from None
    return parse_model_list(data, source=str(p))


def _model_names(value, key: str, source: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise TracingError(f"{source}: '{key}' must be a non-empty list of models (hub ids, folders or demo:<name>)")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, str) or not m.strip():
            raise TracingError(f"{source}: entry {i + 1} of '{key}' is {m!r}, not a model id; "
                               f"write each model as a string such as org/name, ./folder or demo:base-a")
        out.append(m.strip())
    return out


def _display_names(value, key: str, n: int, models_key: str, source: str) -> list[str | None]:
    if value is None:
        return [None] * n
    if not isinstance(value, list) or not all(isinstance(x, (str, int, float)) for x in value):
        raise TracingError(f"{source}: '{key}' must be a list of names, one per entry of '{models_key}'")
    if len(value) != n:
        raise TracingError(f"{source}: '{key}' has {len(value)} names but '{models_key}' has {n} models; "
                           f"give one name per model")
    return [str(x) for x in value]


def parse_model_list(data, source: str = "<model list>") -> ModelList:
    """The pairs (and optional ``stat`` / ``options`` / ``resources``) of a parsed YAML document."""
    form, extra = _form_of(data, source)
    notes: list[str] = []
    lineage = None
    if form == "tree":
        from ..lineage.tree import lineage_json, parse_tree, tree_pairs
        models, edges = parse_tree(extra.get("models", data), source)
        if len(models) < 2:
            raise TracingError(f"{source}: a tree needs at least two models to make a pair")
        pairs = [Pair(a, b) for a, b in tree_pairs(models)]
        lineage = lineage_json(models, edges)
    elif form == "all pairs":
        pairs = _all_pairs(_model_names(extra.get("models", data), "models", source), source)
    elif form == "base x ft":
        pairs = _cross_pairs(extra, source, notes)
    else:
        pairs = _listed_pairs(extra, source, notes)
    from ..lineage.relations import LABEL_KEYS, parse_labels
    for k in ("names_1", "names_2") + LABEL_KEYS:
        if k in extra and form != "listed pairs":
            raise TracingError(f"{source}: '{k}' only goes with models_1/models_2")
    labels = (parse_labels(extra, _model_names(extra["models_1"], "models_1", source),
                           _model_names(extra["models_2"], "models_2", source), source)
              if form == "listed pairs" else None)
    stat, options = _stat_and_options(extra, source)
    resources = extra.get("resources") or {}
    if not isinstance(resources, dict):
        raise TracingError(f"{source}: 'resources' must be a mapping, e.g. resources: {{mem_gb: 64, timeout_min: 600}}")
    resources = _check_resources(resources, source)
    return ModelList(pairs, form, stat, dict(options), resources, source, notes, lineage, labels)


def _form_of(data, source: str) -> tuple[str, dict]:
    """Which of the three forms ``data`` is, and its mapping (empty for a plain list)."""
    if data is None:
        raise TracingError(f"{source} is empty; write {FORMS_HELP}")
    from ..lineage.tree import is_tree_form
    if is_tree_form(data):
        return "tree", {}
    if isinstance(data, list):
        _model_names(data, "models", source)
        return "all pairs", {}
    if not isinstance(data, dict):
        raise TracingError(f"{source} holds a {type(data).__name__}, not a model list; write {FORMS_HELP}")
    unknown = [str(k) for k in data if k not in TOP_KEYS]
    if unknown:
        raise TracingError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(TOP_KEYS)}")
    has = {k for k in ("models", "base_models", "ft_models", "models_1", "models_2") if k in data}
    if has == {"models"} and is_tree_form(data["models"]):
        return "tree", data
    if has == {"models"}:
        _model_names(data["models"], "models", source)
        return "all pairs", data
    if has == {"base_models", "ft_models"}:
        return "base x ft", data
    if has == {"models_1", "models_2"}:
        return "listed pairs", data
    got = ", ".join(sorted(has)) or "none of them"
    raise TracingError(f"{source}: cannot tell which pairs to run (model keys found: {got}); write {FORMS_HELP}")


def _all_pairs(models: list[str], source: str) -> list[Pair]:
    dups = sorted({m for m in models if models.count(m) > 1})
    if dups:
        raise TracingError(f"{source}: {', '.join(dups)} listed more than once; list each model once")
    if len(models) < 2:
        raise TracingError(f"{source}: a plain list needs at least two models to make a pair")
    return [Pair(a, b) for a, b in combinations(models, 2)]


def _cross_pairs(data: dict, source: str, notes: list[str]) -> list[Pair]:
    bases = _model_names(data["base_models"], "base_models", source)
    fts = _model_names(data["ft_models"], "ft_models", source)
    pairs, seen = [], set()
    for a in bases:
        for b in fts:
            if a == b:
                notes.append(f"skipped {a} vs itself (it is in both base_models and ft_models)")
            elif (a, b) not in seen:
                seen.add((a, b))
                pairs.append(Pair(a, b))
    if not pairs:
        raise TracingError(f"{source}: base_models x ft_models gives no pair of two different models")
    return pairs


def _listed_pairs(data: dict, source: str, notes: list[str]) -> list[Pair]:
    m1 = _model_names(data["models_1"], "models_1", source)
    m2 = _model_names(data["models_2"], "models_2", source)
    if len(m1) != len(m2):
        raise TracingError(f"{source}: models_1 has {len(m1)} models but models_2 has {len(m2)}; "
                           f"the listed form pairs them by position, so give both lists the same length")
    n1 = _display_names(data.get("names_1"), "names_1", len(m1), "models_1", source)
    n2 = _display_names(data.get("names_2"), "names_2", len(m2), "models_2", source)
    pairs, seen = [], set()
    for a, b, x, y in zip(m1, m2, n1, n2):
        if (a, b) in seen:
            notes.append(f"skipped a repeated pair {a} vs {b}")
            continue
        seen.add((a, b))
        pairs.append(Pair(a, b, x, y))
    return pairs


def _stat_and_options(extra: dict, source: str) -> tuple[list[str] | None, dict]:
    stat = extra.get("stat")
    if stat is not None:
        if isinstance(stat, str):
            stat = [s.strip() for s in stat.split(",") if s.strip()]
        elif isinstance(stat, list) and all(isinstance(s, str) for s in stat):
            stat = [s.strip() for s in stat]
        else:
            raise TracingError(f"{source}: 'stat' must be a name or a list of names, e.g. stat: cos,match")
    options = extra.get("options") or {}
    if not isinstance(options, dict):
        raise TracingError(f"{source}: 'options' must be a mapping of option names to values, e.g. options: {{align: true}}")
    if "stat" in options:
        if stat is not None:
            raise TracingError(f"{source}: give the statistics once, either as top-level 'stat' or in 'options'")
        options = dict(options)
        s = options.pop("stat")
        stat = [x.strip() for x in s.split(",")] if isinstance(s, str) else list(s)
    return stat, options


def _check_resources(res: dict, source: str) -> dict:
    out = {}
    for k, v in res.items():
        if k not in RESOURCE_KEYS:
            raise TracingError(f"{source}: unknown resource {k!r}; known: {', '.join(RESOURCE_KEYS)}")
        typ = RESOURCE_KEYS[k]
        if v is None:
            continue
        if typ is int:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k != "gpus" and v == 0):
                raise TracingError(f"{source}: resources.{k} must be a positive number, got {v!r}")
            v = int(math.ceil(v))
        else:
            v = str(v)
        out[k] = v
    return out


def build_options(model_list: ModelList, cli_options: dict):
    """Defaults < the list's ``options`` / ``stat`` < options given on the command line."""
    from ..options import Options

    merged = dict(model_list.options)
    if model_list.stat is not None:
        merged["stat"] = model_list.stat
    merged.update({k: v for k, v in cli_options.items()})
    if isinstance(merged.get("stat"), list):
        merged["stat"] = ",".join(merged["stat"])
    opts = Options.from_dict(merged)
    opts.stat = list(dict.fromkeys(opts.stat))  # a statistic once, in the order given
    return opts
