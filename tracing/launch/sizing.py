"""How much memory, how many CPUs/GPUs and how long one pair's job asks for.

Each statistic estimates its own cost (``spec.cost(sizing)``, see :mod:`tracing.stats.cost`);
this module adds the steps that are not statistics (--align, --rotate, --eval), shares one
forward pass between the forward-pass statistics of a pair, and applies the safety margins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from ..stats.cost import GiB, Sizing, align_cost, eval_cost, rotate_cost
from ..stats.spec import Cost
from .configs import ModelInfo, reference_info

MEM_OVERHEAD_FRACTION, MEM_OVERHEAD_GB = 0.25, 2
TIME_SAFETY, TIME_FLOOR_MIN, TIME_CAP_MIN = 2.0, 30, 2880
DEFAULT_SLURM_CPUS = 4
COST_MATRICES = "cost matrices"  # the memory part of the assignment solves (sets --mem_budget_gb)


@dataclass(frozen=True)
class Resources:
    """What one pair's job asks the scheduler for."""

    mem_gb: int
    cpus: int
    gpus: int
    timeout_min: int
    partition: str | None = None
    solves: int = 1  # parallel assignment solves the job may run (sets --mem_budget_gb)
    solve_budget_gb: float | None = None  # passed to the job as mem_budget_gb

    def group_key(self) -> tuple:
        """Pairs with the same key share one job array."""
        return (self.mem_gb, self.cpus, self.gpus, self.timeout_min, self.partition)


def is_forward_stat(stat: str) -> bool:
    """Does the statistic run the models on data (block by block), rather than stream weights?"""
    from .. import stats
    return bool(stats.get(stat).forward)


def _forward_parts(s: Sizing, stat: str | None, cost: Cost) -> dict[str, int]:
    """A forward-pass cost split into the pass itself and what it holds beside it (cost matrices of
    parallel solves, or the logits); statistics of one pair run in one pass and share these parts."""
    base = s.forward_mem(stat)
    beside = COST_MATRICES if cost.parallel_solves else "outputs"
    return {"forward pass": base, beside: max(0, cost.mem_bytes - base)}


def _stat_cost(stat: str, q: Sizing) -> tuple[Cost, bool]:
    """One statistic's cost on one pair (doubled when --align recomputes it on the aligned model)
    and whether it runs forward passes."""
    from .. import stats
    spec = stats.get(stat)
    cost = spec.cost(q) if spec.cost is not None else Cost(0, q.read_s)
    if q.options.align and spec.aligned:
        cost = Cost(cost.mem_bytes, 2 * cost.seconds, cost.parallel_solves)
    return cost, bool(spec.forward)


def _option_costs(q: Sizing) -> list[tuple[Cost, bool]]:
    """What --align, --rotate and --eval add (cost, runs forward passes)."""
    o, out = q.options, []
    if o.align:
        out.append((align_cost(q), False))
    if o.rotate:
        out.append((rotate_cost(q), False))
    if o.eval:
        out.append((eval_cost(q), True))
    return out


def size_pair(a: ModelInfo | None, b: ModelInfo | None, stats: Iterable[str], options, *,
              slurm: bool, cpus: int | None = None, data_gpus: int | None = None,
              cluster_has_gpus: bool = True, overrides: dict | None = None) -> Resources:
    """Memory, CPUs, GPUs and time limit of one pair's job, from the two models and the statistics.

    Weight-only statistics (cos, emb, l2, and --align) stream one tensor at a time: two of the
    largest tensor in float32 plus the assignment cost matrices (n² × 8 bytes float64 + n² × 4
    float32 each) of the parallel solves. Forward-pass statistics (csh, match, jsd, mode, --eval)
    run block by block: both embeddings, one block per model, the hidden states of every lane,
    one block's activations, and (match, csh) the cost matrices; they ask for ``data_gpus`` GPUs
    when the cluster has any (default 1 on Slurm, 0 on this machine). Then +25 % + 2 GB, rounded
    up. The time limit scales with L, h² (products) and h³ (solves), doubled for safety, at
    least 30 min and at most 48 h. ``overrides`` (mem_gb, timeout_min, gpus, cpus, partition)
    replace the estimates. ``a``/``b`` None (config unknown): a Llama-2-7B-shaped model is assumed.
    """
    overrides = dict(overrides or {})
    stats = list(stats)
    if a is None or b is None:
        ref = reference_info()
        a, b = a or ref, b or ref
    forward = any(is_forward_stat(s) for s in stats) or options.eval
    cpus = int(overrides.get("cpus", (DEFAULT_SLURM_CPUS if slurm else 1) if cpus is None else cpus))
    if data_gpus is None:
        data_gpus = 1 if slurm else 0
    gpus = int(overrides.get("gpus", data_gpus if (forward and cluster_has_gpus) else 0))
    q = Sizing.from_infos(a, b, options, cpus=cpus, gpus=gpus)

    need, fwd_parts, seconds, solve_budget = [0], {}, 0.0, bool(options.align)
    steps = [(None, c) for c in _option_costs(q)] + [(s, _stat_cost(s, q)) for s in stats]
    for stat, (cost, forward_step) in steps:
        seconds += cost.seconds
        solve_budget = solve_budget or cost.parallel_solves
        if forward_step:
            for part, n in _forward_parts(q, stat, cost).items():
                fwd_parts[part] = max(fwd_parts.get(part, 0), n)
        else:
            need.append(cost.mem_bytes)
    if fwd_parts:
        need.append(sum(fwd_parts.values()))
    mem_gb = int(math.ceil(max(need) * (1 + MEM_OVERHEAD_FRACTION) / GiB + MEM_OVERHEAD_GB))
    timeout = int(math.ceil(seconds * TIME_SAFETY / 60))
    timeout = min(max(timeout, TIME_FLOOR_MIN), TIME_CAP_MIN)
    budget = q.solve_budget_gb if solve_budget else None
    return Resources(mem_gb=int(overrides.get("mem_gb", mem_gb)), cpus=max(1, cpus), gpus=max(0, gpus),
                     timeout_min=int(overrides.get("timeout_min", timeout)),
                     partition=overrides.get("partition"), solves=int(q.solves), solve_budget_gb=budget)
