"""The options of one comparison, shared by ``main.py``, ``launch.py`` and the Python API."""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace

from .errors import TracingError

DEFAULT_BLOCK_SIZE = 512
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
#: options left out of result keys while they hold this value (keys of earlier results stay valid)
KEY_OMITTED_AT_DEFAULT = {"localized": False, "rows": None, "transplant": None}
#: options that change only the verdict, not the result: hashed at this value whatever they hold, so
#: every level finds the same result (the keys earlier versions wrote at the default level)
KEY_FIXED = {"significance": 0.01}


@dataclass
class Options:
    stat: list[str] = field(default_factory=lambda: ["cos"])
    permute: bool = False
    rotate: bool = False
    align: bool = False
    attn: bool = False
    emb: bool = False
    mlp_only: bool = False  # mode: interpolate only MLPs and norms (plus attn / emb when set)
    alpha: float = 0.5
    alphas: list[float] | None = None
    num_perm: int | None = None  # PERMTEST draws; default per statistic
    eval: bool = False
    dataset: str | None = None  # default per statistic
    generated_dir: str = "results/generated"
    block_size: int | None = None  # default: min(512, the smaller model's context length)
    batch_size: int = 4
    num_samples: int = 20
    dtype: str = "auto"
    device: str | None = None
    seed: int = 0
    significance: float = 0.01
    alternative: str = "greater"
    mem_budget_gb: float | None = None
    workers: int | None = None  # blocks of the sampled experts grid matched at once (default: from cores and memory)
    rows: int | None = None  # sampled test: K unit indices drawn from the seed, the same in both models
    localized: bool = False  # block map: every block pair tested (cos, match)
    fold_norms: bool | None = None  # None: fold when either model is AWQ
    transplant: bool | None = None  # emb's transplant check: None sized to a budget, True every sampled token, False off

    def __post_init__(self):
        from .stats import canonical, known_names
        if isinstance(self.stat, str):
            self.stat = [s for s in self.stat.split(",") if s]
        if not self.stat:
            raise TracingError(f"no statistic given; use --stat with one or more of {known_names()}")
        self.stat = list(dict.fromkeys(canonical(s) for s in self.stat))  # --stat cos,csu,cos -> [cos]
        if not 0.0 <= self.alpha <= 1.0:
            raise TracingError(f"--alpha {self.alpha} is outside [0, 1]; it is the interpolation weight of θ₂")
        for a in self.alphas or []:
            if not 0.0 <= a <= 1.0:
                raise TracingError(f"--alphas value {a} is outside [0, 1]")
        if self.num_perm is not None and self.num_perm < 0:
            raise TracingError(f"--num_perm {self.num_perm} is negative; give 0 (off) or a positive count such as 99")
        for name in ("block_size", "batch_size", "num_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TracingError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if self.block_size is not None and self.block_size < 2:
            raise TracingError("--block_size must be at least 2 tokens")
        if self.device is not None and not DEVICE_PATTERN.match(str(self.device)):
            raise TracingError(f"unknown --device {self.device!r}; use cpu, cuda, cuda:<index> or mps")
        if not 0.0 < self.significance < 1.0:
            raise TracingError(f"--significance {self.significance} must be in (0, 1), e.g. 0.01")
        if self.alternative not in ("greater", "two-sided"):
            raise TracingError(f"--alternative must be 'greater' or 'two-sided', got {self.alternative!r}")
        if self.mem_budget_gb is not None and self.mem_budget_gb <= 0:
            raise TracingError("--mem_budget_gb must be positive")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise TracingError(f"--workers must be a positive number of blocks matched at once, e.g. 2, got {self.workers!r}")
        self._check_rows()
        self._check_localized()

    def _check_rows(self) -> None:
        if self.rows is None:
            return
        from .stats import REGISTRY
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
            raise TracingError(f"--rows must be a positive number of sampled units, e.g. 256, got {self.rows!r}")
        sampled = [s for s in self.stat if "rows" in REGISTRY[s].reads]
        if len(sampled) != len(self.stat):
            have = ", ".join(s.name for s in REGISTRY.values() if "rows" in s.reads)
            other = ", ".join(s for s in self.stat if s not in sampled)
            raise TracingError(f"--rows: {other} has no sampled form; only {have} can be sampled — drop --rows "
                               f"or use --stat {have.split(', ')[0]}")

    def _check_localized(self) -> None:
        if self.localized:
            from .stats import REGISTRY
            lacking = [s for s in self.stat if not REGISTRY[s].localized]
            if lacking:
                offer = ", ".join(n for n, sp in REGISTRY.items() if sp.localized)
                raise TracingError(f"--localized: {', '.join(lacking)} has no block map; use --stat {offer}")

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "Options":
        return replace(self, **changes)

    def for_stat(self, stat: str) -> "Options":
        d = self.to_dict()
        d["stat"] = [stat]
        return Options(**d)

    def key_for(self, stat: str, with_level: bool = False) -> str:
        """A short hash of the options ``stat``'s result depends on (for result file names):
        changing an option the statistic does not read, or ``--significance`` (the verdict's level,
        applied to the stored p-value), keeps the key. ``with_level``: the key earlier versions gave
        a result computed at another level (for finding it)."""
        from .stats import DATA_OPTIONS, get
        spec = get(stat)
        names = spec.option_names() + (DATA_OPTIONS if self.eval else ())
        d = {"stat": spec.name, **{k: getattr(self, k) for k in sorted(set(names))
                                   if not (k in KEY_OMITTED_AT_DEFAULT and getattr(self, k) == KEY_OMITTED_AT_DEFAULT[k])}}
        if not with_level:
            d.update({k: v for k, v in KEY_FIXED.items() if k in d})
        if d.get("fold_norms") is None:  # the default (AWQ only) leaves earlier keys unchanged
            d.pop("fold_norms", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def block_size_for(self, max_positions: int | None) -> int:
        """The forward passes' block size: ``--block_size``, else min(512, ``max_positions``).
        A block longer than the models' context is an error."""
        if self.block_size is None:
            return min(DEFAULT_BLOCK_SIZE, max_positions or DEFAULT_BLOCK_SIZE)
        if max_positions and self.block_size > max_positions:
            raise TracingError(f"--block_size {self.block_size} is longer than the models' context of "
                               f"{max_positions} positions; use --block_size {max_positions} or less")
        return self.block_size

    def check_pair(self, a, b, stats, ctx_len: int | None) -> int:
        """Every check of these options against two models' shapes ``a``, ``b`` (archs: configs
        suffice, no weight is read), made by ``main.py`` and ``launch.py`` alike before anything is
        computed. Returns the forward passes' block size; raises :class:`TracingError` naming the fix."""
        from .stats import get, names
        if self.align and a.has_experts != b.has_experts:  # upcycling: only statistics that align each expert
            no = [s for s in stats if get(s).aligned and get(s).aligned_upcycling is None]
            if no:
                have = ", ".join(n for n in names() if get(n).aligned_upcycling is not None)
                raise TracingError(f"--align between a dense model and a mixture of experts is available for {have} "
                                   f"only (each expert aligned to the dense MLP on its own), not for "
                                   f"{', '.join(no)}; drop --align or use --stat {have}")
        elif self.align and (a.L, a.d, a.h) != (b.L, b.d, b.h):
            from .stats.spec import shapes
            raise TracingError(f"--align needs models with the same block shapes, but they differ "
                               f"({shapes(a, b)}); drop --align (match is unchanged by permutation and rotation)")
        for s in stats:
            get(s).run_check(a, b, self)
        if self.eval or any(get(s).needs_data for s in stats):
            return self.block_size_for(ctx_len)
        return self.block_size or self.block_size_for(ctx_len)

    @classmethod
    def from_dict(cls, d: dict) -> "Options":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TracingError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**d)


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def add_options(p: argparse.ArgumentParser) -> None:
    """Every comparison option, as command-line flags (defaults from :class:`Options`)."""
    from .stats import REGISTRY, known_names, names
    names()  # load every statistic
    d = Options.__dataclass_fields__
    data = "; ".join(f"{s.default_dataset} for {s.name}" for s in REGISTRY.values() if s.default_dataset)
    g = p.add_argument_group("comparison")
    g.add_argument("--stat", default="cos",
                   help=f"statistic(s), comma-separated: {known_names()} (default: %(default)s)")
    g.add_argument("--permute", action="store_true", help="randomly permute the fine-tuned model first (function-preserving)")
    g.add_argument("--rotate", action="store_true", help="randomly rotate the fine-tuned model first (function-preserving)")
    g.add_argument("--align", action="store_true", help="also align the fine-tuned model to the base and recompute")
    add_stat_options(g)
    g.add_argument("--eval", action="store_true", help="also report each model's loss and perplexity")
    g.add_argument("--dataset", "--dataset_id", dest="dataset", default=None,
                   help=f"wikitext | random | generated | demo | path to .txt/.jsonl/.json (default: {data}; "
                        f"otherwise the demo corpus for demo models, else wikitext)")
    g.add_argument("--generated_dir", default=d["generated_dir"].default,
                   help="where generate.py wrote its samples (default: %(default)s)")
    g.add_argument("--block_size", type=int, default=None,
                   help=f"tokens per evaluation block (default: {DEFAULT_BLOCK_SIZE}, or the models' context "
                        f"length when shorter)")
    g.add_argument("--batch_size", type=int, default=d["batch_size"].default,
                   help="blocks per forward pass (default: %(default)s)")
    g.add_argument("--num_samples", type=int, default=d["num_samples"].default,
                   help="number of evaluation blocks (default: %(default)s)")
    g.add_argument("--dtype", default=d["dtype"].default, help="forward-pass dtype: auto (float32 on CPU, bfloat16 "
                   "on GPU), float32, bfloat16, float16 (default: %(default)s)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:<index> or mps (default: cuda when available, else cpu)")
    g.add_argument("--seed", type=int, default=d["seed"].default,
                   help="seed of --permute/--rotate, random data and permutation tests (default: %(default)s)")
    g.add_argument("--significance", type=float, default=d["significance"].default,
                   help="level of the verdict: dependent when p <= this (default: %(default)s)")
    g.add_argument("--alternative", default=d["alternative"].default, choices=["greater", "two-sided"],
                   help="side of the Spearman test (default: %(default)s)")
    g.add_argument("--fold_norms", action=argparse.BooleanOptionalAction, default=None,
                   help="fold every norm gain into the layers it feeds before comparing (default: only when "
                        "either model is AWQ-quantized, whose scales move between norms and layers)")
    g.add_argument("--mem_budget_gb", type=float, default=None,
                   help="memory for parallel assignment solves (default: half of the free RAM)")
    g.add_argument("--workers", type=int, default=None,
                   help="blocks of a mixture of experts matched at once by cos --rows, on threads (default: the "
                        "cores, as many as half of the free RAM holds; 1: one block after the other)")


#: how a statistic's option of each kind is read from the command line
_KINDS = {"flag": {"action": "store_true"}, "int": {"type": int}, "float": {"type": float},
          "floats": {"type": _float_list}, "switch": {"action": argparse.BooleanOptionalAction}}


def add_stat_options(g) -> None:
    """The statistics' own options (``StatSpec.options``) as flags on the parser or group ``g``: one
    flag per name, its help naming every statistic that declares it, its default that of :class:`Options`."""
    from .stats import REGISTRY, names
    names()  # load every statistic
    declared: dict[str, list] = {}
    for spec in REGISTRY.values():
        for flag in spec.options:
            declared.setdefault(flag.name, [flag, []])[1].append(spec)
    defaults = Options.__dataclass_fields__
    for name, (flag, specs) in declared.items():
        if name not in defaults or flag.kind not in _KINDS:
            raise TracingError(f"the statistic {specs[0].name!r} declares the option --{name} of kind {flag.kind!r}, "
                               f"which is not an Options field of kind {', '.join(_KINDS)}; fix its declaration")
        kw = dict(_KINDS[flag.kind])
        if flag.kind != "flag":
            kw["default"] = defaults[name].default
        g.add_argument(f"--{name}", help=flag.text(specs), **kw)


def options_from_args(args: argparse.Namespace) -> Options:
    names = {f.name for f in fields(Options)}
    return Options(**{k: v for k, v in vars(args).items() if k in names})
