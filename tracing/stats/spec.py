"""What each statistic declares about itself (importable without torch).

A statistic is one module in ``tracing/stats/`` that calls :func:`tracing.stats.register` with a
:class:`StatSpec`; the module is found by name, nothing else lists it. Statistics defined outside
the package call the same ``register`` before their first use.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
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


#: names of the usual variants (a record's form follows from the pair, see :meth:`StatSpec.variant`)
BLOCK_MAP, EXPERTS, EXPERT_MAP = "block map", "experts", "expert block map"


def _resolve(fn):
    """A callable, or ``"module:function"`` imported on first use (heavy modules load only then)."""
    if not isinstance(fn, str):
        return fn
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Variant:
    """A form of a statistic for the pairs its ordinary path does not handle.

    ``applies(a, b, options)`` (two architectures; configs suffice, no weight is read) says when
    it is used; the first variant of a statistic that applies is. ``fn(ctx, base, ft)`` computes
    it and ``cost(sizing)`` sizes its job (default: the statistic's); either may be given as
    ``"module:function"``, imported when first called. ``shapes``: for a block map, the block
    shapes (of ``L``, ``d``, ``h``) whose difference chooses it."""

    name: str
    applies: Callable
    fn: Callable | str
    cost: Callable | str | None = None
    shapes: tuple[str, ...] = ()


def has_experts(a, b, _options=None) -> bool:
    """Either model has mixture-of-experts blocks."""
    return bool(getattr(a, "has_experts", False) or getattr(b, "has_experts", False))


def shapes(a, b) -> str:
    """The block shapes that differ, e.g. ``"L 4 vs 3, h 128 vs 96"`` (empty when equal)."""
    return ", ".join(f"{k} {getattr(a, k)} vs {getattr(b, k)}" for k in ("L", "d", "h") if getattr(a, k) != getattr(b, k))


def block_map(differ: tuple[str, ...], fn, cost=None) -> Variant:
    """The block map (every block pair tested): asked for with ``--localized``, or needed when one of
    the block shapes ``differ`` differs; never for mixtures of experts (compared expert by expert)."""
    if not set(differ) <= {"L", "d", "h"}:
        raise ValueError("a block map names block shapes among L, d, h")

    def applies(a, b, options) -> bool:
        if has_experts(a, b):
            return False
        return bool(getattr(options, "localized", False)) or any(getattr(a, k) != getattr(b, k) for k in differ)
    return Variant(BLOCK_MAP, applies, fn, cost, tuple(differ))


def expert_block_map(a, b, options) -> bool:
    """Mixtures of experts of different depths (or ``--localized``): every block pair of the same kind."""
    return has_experts(a, b) and (a.L != b.L or bool(getattr(options, "localized", False)))


@dataclass(frozen=True)
class Flag:
    """One of a statistic's own command-line options, ``--<name>``, held in ``Options.<name>``
    (:func:`tracing.options.add_stat_options` turns every statistic's into flags, one per name).

    ``kind``: ``"flag"`` (on/off), ``"switch"`` (``--<name>`` / ``--no-<name>``, default: automatic),
    ``"int"``, ``"float"`` or ``"floats"`` (comma-separated).
    ``help``: its text, where ``{users}`` names the statistics that declare it; or
    ``help(specs) -> str`` given their specs."""

    name: str
    help: str | Callable
    kind: str = "flag"

    def text(self, specs: list) -> str:
        if callable(self.help):
            return self.help(specs)
        return self.help.replace("{users}", "/".join(s.name for s in specs))


#: options several statistics declare
ROWS = Flag("rows", "{users}: sampled test on K units drawn from --seed, the same in both models (reads K/h of the "
                    "rows; per-layer p-value floor -log10(K!)); match's block map: K units of θ₁ against every unit "
                    "of θ₂, cells screened first; default: every unit", "int")
LOCALIZED = Flag("localized", "{users}: test every block pair (block map: grid of p-values, the inferred block "
                              "correspondence, Bonferroni overall p); chosen automatically when the models' depths "
                              "or widths differ")
NUM_PERM = Flag("num_perm", lambda specs: "permutation-test draws (default: " + ", ".join(
    f"{s.default_num_perm or '0 = no test'} for {s.name}" for s in specs) + ")", "int")


@dataclass(frozen=True)
class Similarity:
    """A pair's similarity that does not saturate (larger = closer), which orders related models in
    lineage trees: ``sign`` × the record row's ``column``, called ``name`` in the lineage record.
    ``shared``: trees built from another statistic's p-values use it when that statistic's own
    results carry no similarity."""

    column: str
    name: str
    sign: float = 1.0
    shared: bool = False


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
    ``label`` and ``at_alpha`` tell reports how to show it. ``variants``: its other forms
    (:class:`Variant`: the block map, the experts grid, …); ``fn`` then computes the first that
    applies to the pair, else the ordinary form (kept as ``ordinary``), after ``check``; ``cost``
    likewise. ``localized``: it offers the block map (``--localized``, see
    :mod:`tracing.stats.blockmap`): the block shapes (of ``L``, ``d``, ``h``) whose difference its
    ordinary path cannot handle (default: those of its block-map variant).
    ``aligned_upcycling(ctx, base, ft) -> StatResult``: its aligned variant when one model is dense
    and the other a mixture of experts (no single alignment of θ₂ fits every expert: each expert is
    aligned to the dense MLP on its own); without it ``--align`` is refused for such a pair.
    ``sampled``: what its sampled form (``--rows K``) draws: ``"units"`` (the MLP units of every
    block, the same K in both models, block i against block i) or ``"residual"`` (residual
    dimensions: the embedding's columns, the tensor read whole). ``screens``: the scan and the
    reference index may screen with its sampled form. ``robust``: how it survives a permutation of
    θ₂'s units: ``"raw"`` (its p-value is unchanged) or ``"aligned"`` (its ``--align`` variant);
    None: not at all. ``lanes(options)``: hidden-state lanes its forward passes carry beyond the
    two models' (job sizing). ``similarity``: a :class:`Similarity` for lineage trees.
    ``options``: its own command-line options (:class:`Flag`), among those it ``reads``.
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
    variants: tuple[Variant, ...] = ()
    sampled: str | None = None  # what --rows samples: "units" (MLP units of every block) or "residual"
    screens: bool = False  # the scan and the index screen with its sampled form
    robust: str | None = None  # survives a permutation of θ₂'s units: "raw" or "aligned" (after --align)
    lanes: Callable | None = None  # lanes(options) -> extra hidden-state lanes of its forward passes
    similarity: Similarity | None = None  # orders related models in lineage trees
    options: tuple[Flag, ...] = ()  # its own command-line options
    ordinary: Callable | None = field(default=None, init=False, repr=False)  # fn without the variants
    ordinary_cost: Callable | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.pvalue not in ("always", "num_perm", "never"):
            raise ValueError(f"{self.name}: pvalue must be 'always', 'num_perm' or 'never'")
        if self.forward is None:
            self.forward = self.needs_data
        if self.pvalue == "never":
            self.aligned_pvalue = False
        if not set(self.localized) <= {"L", "d", "h"}:
            raise ValueError(f"{self.name}: localized names block shapes among L, d, h")
        if self.sampled not in (None, "units", "residual"):
            raise ValueError(f"{self.name}: sampled must be 'units', 'residual' or None")
        if self.robust not in (None, "raw", "aligned"):
            raise ValueError(f"{self.name}: robust must be 'raw', 'aligned' or None")
        undeclared = [f.name for f in self.options if f.name not in self.reads]
        if undeclared:
            raise ValueError(f"{self.name}: its options {', '.join(undeclared)} must be among the options it reads")
        if not self.localized:
            self.localized = next((v.shapes for v in self.variants if v.name == BLOCK_MAP), ())
        self.ordinary, self.ordinary_cost = self.fn, self.cost
        if self.variants:
            self.fn = self.compute
            if self.cost is not None:
                self.cost = self.estimate

    def variant(self, a, b, options) -> Variant | None:
        """The variant that computes this pair (``a``, ``b``: architectures), or None: the ordinary form."""
        return next((v for v in self.variants if v.applies(a, b, options)), None)

    def compute(self, ctx, base, ft):
        """The statistic of one pair: its check, then the variant that applies, else the ordinary form."""
        self.run_check(base.arch, ft.arch, ctx.options)
        v = self.variant(base.arch, ft.arch, ctx.options)
        return _resolve(v.fn if v is not None else self.ordinary)(ctx, base, ft)

    def estimate(self, sizing):
        """The job's :class:`Cost`: the applying variant's own cost, else the ordinary one."""
        v = self.variant(sizing.a, sizing.b, sizing.options)
        return _resolve(v.cost if v is not None and v.cost is not None else self.ordinary_cost)(sizing)

    def extra_lanes(self, options) -> int:
        return int(self.lanes(options)) if self.lanes is not None else 0

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
        diffs = shapes(a, b)
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

