"""What each statistic declares about itself (importable without torch).

A statistic is one module in ``tracing/stats/`` that calls :func:`tracing.stats.register` with a
:class:`StatSpec`; the module is found by name, nothing else lists it. Statistics defined outside
the package call the same ``register`` before their first use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import TracingError

#: options every statistic's result depends on (``fold_norms`` changes the weights every statistic reads;
#: ``significance`` only the verdict: result keys hash it at its default, see ``tracing.options.KEY_FIXED``)
COMMON_OPTIONS = ("permute", "rotate", "align", "seed", "eval", "significance", "alternative", "fold_norms")
#: options read by every statistic that runs the models on data (and by --eval)
DATA_OPTIONS = ("dataset", "generated_dir", "block_size", "batch_size", "num_samples", "dtype")


@dataclass(frozen=True)
class Cost:
    """A statistic's resource estimate for one pair: peak bytes and seconds on the job's hardware.

    ``parallel_solves``: it runs parallel assignment solves, bounded by ``--mem_budget_gb``."""

    mem_bytes: int
    seconds: float
    parallel_solves: bool = False


@dataclass
class StatSpec:
    """The facts of one statistic.

    ``fn(ctx, base, ft) -> StatResult`` computes it (imported lazily: heavy modules load only then).
    ``pvalue``: ``"always"``, ``"num_perm"`` (only with ``--num_perm`` > 0) or ``"never"``.
    ``exact``: the p-value is exact under the null (else approximate / empirically calibrated).
    ``aligned``: ``--align`` recomputes it on the aligned model; ``aligned_pvalue``: that
    recomputation carries a p-value. ``meaning``: what its p-value (or value) means, for people.
    ``reads``: the options its result depends on besides the common ones (the result key).
    ``default_num_perm``: permutation draws when ``--num_perm`` is not given.
    ``cost(sizing) -> Cost``: job sizing; ``check(base_arch, ft_arch, options)``: raises
    :class:`TracingError` when the pair cannot be compared by this statistic; ``explain(record)``:
    lines the summary adds about the statistic's extra values. ``per_block``, ``variant_flags``,
    ``label`` and ``at_alpha`` tell reports how to show it. ``localized``: it offers the block map
    (``--localized``, see :mod:`tracing.stats.blockmap`): the block shapes (of ``L``, ``d``, ``h``) whose
    difference its ordinary path cannot handle, so that the map is chosen automatically for them.
    ``aligned_upcycling(ctx, base, ft) -> StatResult``: its aligned variant when one model is dense
    and the other a mixture of experts (no single alignment of θ₂ fits every expert: each expert is
    aligned to the dense MLP on its own); without it ``--align`` is refused for such a pair.
    """

    name: str
    fn: Callable
    description: str
    meaning: str
    needs_data: bool = False
    default_dataset: str | None = None  # None: the text default (demo corpus for demo models, else wikitext)
    pvalue: str = "always"
    exact: bool = True
    aligned: bool = True
    aligned_pvalue: bool = True
    reads: tuple[str, ...] = ()
    default_num_perm: int = 0
    aliases: tuple[str, ...] = ()
    cost: Callable | None = None
    check: Callable | None = None
    forward: bool | None = None  # runs forward passes (a GPU helps); default: needs_data
    value_name: str = "statistic"  # what the statistic is, for summaries
    spearman: bool = False  # the statistic itself is one Spearman r (its floor: r = 1)
    explain: Callable | None = None  # explain(record_or_variant) -> extra summary lines
    per_block: bool = False  # records a p-value per block (per_layer)
    variant_flags: tuple[str, ...] = ()  # options that change what it measures (a separate grid)
    label: str | None = None  # short name of its value for figure panels (default: value_name)
    at_alpha: bool = False  # its value is taken at the interpolation point α (panels name the α)
    localized: tuple[str, ...] = ()  # offers the block map (--localized); shapes that need it
    aligned_upcycling: Callable | None = None  # fn(ctx, base, ft): --align for a dense model against an MoE

    def __post_init__(self):
        if self.pvalue not in ("always", "num_perm", "never"):
            raise ValueError(f"{self.name}: pvalue must be 'always', 'num_perm' or 'never'")
        if self.forward is None:
            self.forward = self.needs_data
        if self.pvalue == "never":
            self.aligned_pvalue = False
        if not set(self.localized) <= {"L", "d", "h"}:
            raise ValueError(f"{self.name}: localized names block shapes among L, d, h")

    @property
    def has_pvalue(self) -> bool:
        """Whether this statistic can give a p-value at all."""
        return self.pvalue != "never"

    @property
    def pvalue_kind(self) -> str | None:
        return None if self.pvalue == "never" else ("exact" if self.exact else "approximate")

    def num_perm(self, options) -> int:
        return self.default_num_perm if options.num_perm is None else int(options.num_perm)

    def gives_pvalue(self, options, aligned: bool = False) -> bool:
        """Whether this run yields a p-value (for the aligned variant when ``aligned``)."""
        if aligned and not (self.aligned and self.aligned_pvalue):
            return False
        if self.pvalue == "num_perm":
            return self.num_perm(options) > 0
        return self.pvalue == "always"

    def option_names(self) -> tuple[str, ...]:
        """Every option a result of this statistic depends on (hashed into result names)."""
        names = COMMON_OPTIONS + (DATA_OPTIONS if self.needs_data else ()) + tuple(self.reads)
        return tuple(dict.fromkeys(names))

    def run_check(self, base_arch, ft_arch, options) -> None:
        if self.check is not None:
            self.check(base_arch, ft_arch, options)


def same_blocks(what: str):
    """A ``check`` hook: both models need the same number of blocks and widths (L, d, h)."""
    def check(a, b, _options):
        diffs = ", ".join(f"{k} {getattr(a, k)} vs {getattr(b, k)}" for k in ("L", "d", "h")
                          if getattr(a, k) != getattr(b, k))
        if diffs:
            works = "cos, emb, match, jsd" if a.d == b.d else "match (activations, any widths), jsd"
            raise TracingError(f"{what} needs models with the same block shapes, but they differ ({diffs}); "
                               f"for this pair use --stat {works}")
    return check


def same_layout(what: str):
    """A ``check`` hook: both models need one architecture (tensors paired by name)."""
    def check(a, b, options):
        from ..arch import require_same_layout
        if getattr(a, "family", None) == getattr(b, "family", None):
            same_blocks(what)(a, b, options)  # names what works for a pair of different shapes
        require_same_layout(a, b, what)
    return check


def same_width(what: str):
    """A ``check`` hook: both models need the same residual width d."""
    def check(a, b, _options):
        if a.d != b.d:
            raise TracingError(f"{what} needs equal residual widths, got d={a.d} and d={b.d}; "
                               f"for this pair use --stat match (activations, any widths) or jsd")
    return check

