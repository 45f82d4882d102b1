"""How much memory, how many CPUs/GPUs and how long one pair's job asks for.

Everything a statistic contributes goes through two small functions, :func:`is_forward_stat`
and :func:`_stat_cost`; the quantities they share are computed once in :class:`SizingInputs`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from .configs import ModelInfo, reference_info

GiB = 1 << 30

# Reference costs on a 2-core CPU: a Llama-2-7B block (h=11008, d=4096) takes ~7 s for the
# float32 cosine product and ~16 s for an independent pair's assignment solve.
REF_H, REF_D = 11008, 4096
REF_MATMUL_S, REF_SOLVE_S = 7.0, 16.0
CPU_FLOPS_2CORES = 2.0 * REF_H * REF_H * REF_D / REF_MATMUL_S  # ~1.4e11 flop/s
GPU_FLOPS = 2e13  # conservative effective rate of one data-centre GPU
READ_BYTES_PER_S = 200e6  # weights streamed from a shared filesystem
ELEMS_PER_S_2CORES = 5e8  # element-wise passes over weights (l2 distances)
SOLVE_MEM_BUDGET = 16 * GiB  # at most this much for cost matrices held by parallel solves
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
    return stat in ("csh", "match", "jsd", "mode")


@dataclass
class SizingInputs:
    """The quantities every statistic's cost is made of, for one pair on one kind of node."""

    a: ModelInfo
    b: ModelInfo
    options: object  # tracing.options.Options
    cpus: int
    gpus: int
    per_solve: int = field(init=False)  # bytes of one assignment solve: float64 cost + float32 cosines
    solves: int = field(init=False)  # parallel solves that fit the memory budget
    speed: float = field(init=False)  # products use every core given
    flops: float = field(init=False)
    largest: int = field(init=False)  # elements of the largest tensor of either model
    tokens: int = field(init=False)

    def __post_init__(self):
        self.per_solve = self.h * self.h * 12
        self.solves = max(1, min(self.cpus, SOLVE_MEM_BUDGET // self.per_solve))
        self.speed = max(1.0, min(self.cpus, 16) / 2.0)
        self.flops = CPU_FLOPS_2CORES * self.speed
        self.largest = max(self.a.arch.largest_tensor_numel(), self.b.arch.largest_tensor_numel())
        self.tokens = self.options.num_samples * self.options.block_size

    d = property(lambda s: max(s.a.arch.d, s.b.arch.d))
    h = property(lambda s: max(s.a.arch.h, s.b.arch.h))
    L = property(lambda s: max(s.a.arch.L, s.b.arch.L))
    V = property(lambda s: max(s.a.arch.V, s.b.arch.V))
    Vs = property(lambda s: min(s.a.arch.V, s.b.arch.V))  # shared vocabulary
    weight_stream = property(lambda s: 2 * s.largest * 4)  # two of the largest tensor in float32
    par = property(lambda s: max(1, min(s.solves, s.cpus)))
    fwd_flops = property(lambda s: GPU_FLOPS if s.gpus > 0 else s.flops)
    mode_lanes = property(lambda s: 2 + len(s.options.alphas or [s.options.alpha]))

    @property
    def read_s(self) -> float:
        return (self.a.params * self.a.bytes_per_param + self.b.params * self.b.bytes_per_param) / READ_BYTES_PER_S

    def mm(self, m, n, k) -> float:
        return 2.0 * m * n * k / self.flops

    def fwd_s(self, info: ModelInfo) -> float:
        return 2.0 * info.params * self.tokens / self.fwd_flops

    @staticmethod
    def solve_s(n: int) -> float:
        return REF_SOLVE_S * (n / REF_H) ** 3

    @property
    def block_match(self) -> float:
        return self.mm(self.h, self.h, self.d) + self.solve_s(self.h) / self.par

    @property
    def logits(self) -> int:
        o = self.options
        return 2 * o.batch_size * o.block_size * self.V * 4 * 2  # logits + log-softmax

    def forward_pass(self, lanes: int) -> dict[str, int]:
        """Memory of running both models block by block with ``lanes`` hidden states each."""
        A, B = self.a.arch, self.b.arch
        return {"embeddings and blocks": (A.V * A.d + B.V * B.d) * 4 + (A.block_numel() + B.block_numel()) * 4,
                "hidden states": lanes * self.tokens * self.d * 4,
                "activations": 2 * self.tokens * self.h * 4 * 2}  # one block's, per model


def _stat_cost(stat: str, q: SizingInputs) -> tuple[dict[str, int], float]:
    """Memory (named parts, bytes) and seconds of one statistic on one pair.

    Weight-only statistics stream one tensor at a time; forward-pass statistics of a pair run
    in one pass, so parts of the same name are shared between them.
    """
    o, a, b = q.options, q.a, q.b
    t = q.read_s
    if stat == "cos":
        mem = {"weights": q.weight_stream, COST_MATRICES: q.solves * q.per_solve}
        t += q.L * q.block_match
    elif stat == "emb":
        mem = {"weights": q.weight_stream, "embedding cost matrices": min(q.solves, 2) * q.d * q.d * 12}
        t += q.mm(q.d, q.d, q.Vs) + q.solve_s(q.d)
    elif stat == "l2":
        mem = {"weights": 3 * q.largest * 4}
        t += (1 + (99 if o.num_perm is None else o.num_perm)) * (a.params + b.params) \
            / (ELEMS_PER_S_2CORES * q.speed)
    elif stat in ("csh", "match"):
        mem = {**q.forward_pass(2), COST_MATRICES: q.solves * q.per_solve}
        t += q.fwd_s(a) + q.fwd_s(b) + q.L * (2 if stat == "match" else 1) * (
            q.mm(q.h, q.h, q.tokens) + q.solve_s(q.h) / q.par)
    elif stat == "jsd":
        mem = {**q.forward_pass(2), "logits": q.logits}
        t += q.fwd_s(a) + q.fwd_s(b)
    elif stat == "mode":
        mem = {**q.forward_pass(q.mode_lanes), "logits": q.logits}
        t += q.mode_lanes * max(q.fwd_s(a), q.fwd_s(b)) * (1 + (o.num_perm or 0))
    else:
        mem = {}
    if o.align and stat != "emb":
        t *= 2  # the statistic is recomputed on the aligned model
    return mem, t


def _option_costs(q: SizingInputs) -> tuple[list[int], dict[str, int], list[float]]:
    """What --align, --rotate and --eval add: streamed memory needs, forward-pass parts, seconds."""
    o, streamed, forward, seconds = q.options, [], {}, []
    if o.align:
        streamed.append(q.weight_stream + q.solves * q.per_solve)
        seconds.append(q.read_s + q.mm(q.d, q.d, q.Vs) + q.solve_s(q.d) + q.L * q.block_match)
    if o.rotate:
        streamed.append(q.weight_stream + 2 * q.d * q.d * 8)
        seconds.append(2.0 * q.b.params * q.d / q.flops)
    if o.eval:
        forward = {**q.forward_pass(2), "logits": q.logits}
        seconds.append(q.read_s + q.fwd_s(q.a) + q.fwd_s(q.b))
    return streamed, forward, seconds


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
    q = SizingInputs(a, b, options, cpus, gpus)

    need, fwd_parts, option_seconds = _option_costs(q)
    need, solve_budget, seconds = [0, *need], options.align, 0.0
    for s in stats:
        mem, t = _stat_cost(s, q)
        seconds += t
        solve_budget = solve_budget or COST_MATRICES in mem
        if is_forward_stat(s):
            for part, n in mem.items():
                fwd_parts[part] = max(fwd_parts.get(part, 0), n)
        else:
            need.append(sum(mem.values()))
    if fwd_parts:
        need.append(sum(fwd_parts.values()))
    mem_gb = int(math.ceil(max(need) * (1 + MEM_OVERHEAD_FRACTION) / GiB + MEM_OVERHEAD_GB))
    for t in option_seconds:
        seconds += t
    timeout = int(math.ceil(seconds * TIME_SAFETY / 60))
    timeout = min(max(timeout, TIME_FLOOR_MIN), TIME_CAP_MIN)
    # the engine counts 16 bytes per cost entry (float64 + scipy's working copy)
    budget = round(q.solves * q.h * q.h * 16 / GiB + 0.05, 2) if solve_budget else None
    return Resources(mem_gb=int(overrides.get("mem_gb", mem_gb)), cpus=max(1, cpus), gpus=max(0, gpus),
                     timeout_min=int(overrides.get("timeout_min", timeout)),
                     partition=overrides.get("partition"), solves=int(q.solves), solve_budget_gb=budget)
