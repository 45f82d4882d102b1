"""The options of one comparison, shared by ``main.py``, ``launch.py`` and the Python API."""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from .errors import TracingError

DATA_STATS = {"csh", "match", "jsd", "mode"}


@dataclass
class Options:
    stat: list[str] = field(default_factory=lambda: ["cos"])
    permute: bool = False
    rotate: bool = False
    align: bool = False
    attn: bool = False
    emb: bool = False
    alpha: float = 0.5
    alphas: list[float] | None = None
    num_perm: int | None = None  # PERMTEST draws; default 99 for l2, 0 (off) for mode
    eval: bool = False
    dataset: str | None = None  # default per statistic (DESIGN §6)
    generated_dir: str = "results/generated"
    block_size: int = 512
    batch_size: int = 4
    num_samples: int = 20
    dtype: str = "auto"
    device: str | None = None
    seed: int = 0
    significance: float = 0.01
    alternative: str = "greater"
    mem_budget_gb: float | None = None
    fold_norms: bool | None = None  # None: fold when either model is AWQ

    def __post_init__(self):
        from .stats import canonical, known_names
        if isinstance(self.stat, str):
            self.stat = [s for s in self.stat.split(",") if s]
        if not self.stat:
            raise TracingError(f"no statistic given; use --stat with one or more of {known_names()}")
        self.stat = [canonical(s) for s in self.stat]
        if not 0.0 <= self.alpha <= 1.0:
            raise TracingError(f"--alpha {self.alpha} is outside [0, 1]; it is the interpolation weight of θ₂")
        for a in self.alphas or []:
            if not 0.0 <= a <= 1.0:
                raise TracingError(f"--alphas value {a} is outside [0, 1]")
        if self.num_perm is not None and self.num_perm < 0:
            raise TracingError(f"--num_perm {self.num_perm} is negative; give 0 (off) or a positive count such as 99")
        for name in ("block_size", "batch_size", "num_samples"):
            if getattr(self, name) < 1:
                raise TracingError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if self.block_size < 2:
            raise TracingError("--block_size must be at least 2 tokens")
        if not 0.0 < self.significance < 1.0:
            raise TracingError(f"--significance {self.significance} must be in (0, 1), e.g. 0.01")
        if self.alternative not in ("greater", "two-sided"):
            raise TracingError(f"--alternative must be 'greater' or 'two-sided', got {self.alternative!r}")
        if self.mem_budget_gb is not None and self.mem_budget_gb <= 0:
            raise TracingError("--mem_budget_gb must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    def for_stat(self, stat: str) -> "Options":
        d = self.to_dict()
        d["stat"] = [stat]
        return Options(**d)

    def key(self) -> str:
        """A short hash of every option that changes a result (for result file names)."""
        d = self.to_dict()
        d.pop("device", None)
        d.pop("mem_budget_gb", None)
        if d.get("fold_norms") is None:  # the default leaves earlier keys unchanged
            d.pop("fold_norms", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

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
    from .stats import known_names
    d = Options.__dataclass_fields__
    g = p.add_argument_group("comparison")
    g.add_argument("--stat", default="cos",
                   help=f"statistic(s), comma-separated: {known_names()} (default: cos)")
    g.add_argument("--permute", action="store_true", help="randomly permute the fine-tuned model first (function-preserving)")
    g.add_argument("--rotate", action="store_true", help="randomly rotate the fine-tuned model first (function-preserving)")
    g.add_argument("--align", action="store_true", help="also align the fine-tuned model to the base and recompute")
    g.add_argument("--attn", action="store_true", help="mode: also interpolate attention")
    g.add_argument("--emb", action="store_true", help="mode: also interpolate embeddings, lm_head and final norm")
    g.add_argument("--alpha", type=float, default=d["alpha"].default, help="mode: interpolation weight of θ₂ (default 0.5)")
    g.add_argument("--alphas", type=_float_list, default=None, help="mode: a curve, e.g. 0,0.25,0.5,0.75,1")
    g.add_argument("--num_perm", type=int, default=None, help="PERMTEST draws (default 99 for l2, 0 for mode)")
    g.add_argument("--eval", action="store_true", help="also report each model's loss and perplexity")
    g.add_argument("--dataset", "--dataset_id", dest="dataset", default=None,
                   help="wikitext | random | generated | demo | path to .txt/.jsonl/.json (default per statistic)")
    g.add_argument("--generated_dir", default=d["generated_dir"].default, help="where generate.py wrote its samples")
    g.add_argument("--block_size", type=int, default=d["block_size"].default)
    g.add_argument("--batch_size", type=int, default=d["batch_size"].default)
    g.add_argument("--num_samples", type=int, default=d["num_samples"].default, help="number of token blocks")
    g.add_argument("--dtype", default="auto", help="forward-pass dtype: auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--significance", type=float, default=d["significance"].default, help="level for the verdict (default 0.01)")
    g.add_argument("--alternative", default="greater", choices=["greater", "two-sided"], help="Spearman test side")
    g.add_argument("--fold_norms", action=argparse.BooleanOptionalAction, default=None,
                   help="fold every norm gain into the layers it feeds before comparing (default: only when "
                        "either model is AWQ-quantized, whose scales move between norms and layers)")
    g.add_argument("--mem_budget_gb", type=float, default=None, help="memory for parallel assignment solves (default: half of free RAM)")


def options_from_args(args: argparse.Namespace) -> Options:
    names = {f.name for f in fields(Options)}
    return Options(**{k: v for k, v in vars(args).items() if k in names})
