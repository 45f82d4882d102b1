"""Resource estimates for job sizing: the shared quantities every statistic's ``cost`` reads.

Reference costs on a 2-core CPU: a Llama-2-7B block (h=11008, d=4096) takes ~7 s for the float32
cosine product and ~16 s for an independent pair's assignment solve. Importable without torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import REGISTRY, names
from .spec import Cost

GiB = 1 << 30
REF_H, REF_D = 11008, 4096
REF_MATMUL_S, REF_SOLVE_S = 7.0, 16.0
CPU_FLOPS_2CORES = 2.0 * REF_H * REF_H * REF_D / REF_MATMUL_S  # ~1.4e11 flop/s
GPU_FLOPS = 2e13  # conservative effective rate of one data-centre GPU
READ_BYTES_PER_S = 200e6  # weights streamed from a shared filesystem
ELEMS_PER_S_2CORES = 5e8  # element-wise passes over weights (l2 distances)
SOLVE_MEM_BUDGET = 16 * GiB  # at most this much for cost matrices held by parallel solves


def solve_s(n: int) -> float:
    """Seconds of one n × n assignment solve (independent pair, 2 cores)."""
    return REF_SOLVE_S * (n / REF_H) ** 3


@dataclass
class Sizing:
    """Shapes, data and hardware of one pair's job, as the cost models see them.

    ``a``/``b``: the two models' architectures (:class:`tracing.arch.Arch`); ``a_params``/``b_params``
    their parameter counts and ``a_bytes``/``b_bytes`` bytes per parameter on disk; ``options``: the
    run's :class:`tracing.options.Options` with ``block_size`` resolved; ``cpus``/``gpus``: what the
    job gets. Build it with :meth:`from_infos` from two objects with ``arch``, ``params`` and
    ``bytes_per_param``.
    """

    a: object
    b: object
    a_params: int
    b_params: int
    a_bytes: float
    b_bytes: float
    options: object
    cpus: int = 1
    gpus: int = 0

    @classmethod
    def from_infos(cls, a, b, options, *, cpus: int = 1, gpus: int = 0) -> "Sizing":
        return cls(a.arch, b.arch, a.params, b.params, a.bytes_per_param, b.bytes_per_param, options, cpus, gpus)

    # shapes -------------------------------------------------------------------------------
    @property
    def d(self) -> int:
        return max(self.a.d, self.b.d)

    @property
    def h(self) -> int:
        return max(self.a.h, self.b.h)

    @property
    def L(self) -> int:
        return max(self.a.L, self.b.L)

    @property
    def V(self) -> int:
        return max(self.a.V, self.b.V)

    @property
    def Vs(self) -> int:
        """The shared vocabulary."""
        return min(self.a.V, self.b.V)

    @property
    def largest(self) -> int:
        return max(self.a.largest_tensor_numel(), self.b.largest_tensor_numel())

    @property
    def block_size(self) -> int:
        return int(self.options.block_size or 512)

    @property
    def tokens(self) -> int:
        return self.options.num_samples * self.block_size

    def lanes(self, stat: str | None = None) -> int:
        """Hidden-state lanes of a forward pass: 2 models, plus those the statistic declares
        (``StatSpec.lanes``, e.g. one per α for mode's path)."""
        spec = REGISTRY.get(stat) if stat is not None and stat in names() else None
        return 2 + (spec.extra_lanes(self.options) if spec is not None else 0)

    # memory -------------------------------------------------------------------------------
    @property
    def per_solve(self) -> int:
        return self.h * self.h * 12  # float64 cost + float32 cosines

    @property
    def solves(self) -> int:
        """Assignment solves held at once."""
        return max(1, min(self.cpus, SOLVE_MEM_BUDGET // self.per_solve))

    @property
    def solve_budget_gb(self) -> float:
        """The ``--mem_budget_gb`` a launch gives a job of parallel solves when none is given: the cost
        matrices of its solves (16 bytes per entry: float64 and scipy's working copy)."""
        return round(self.solves * self.h * self.h * 16 / GiB + 0.05, 2)

    @property
    def budget_bytes(self) -> int:
        """The memory budget the job runs with (``--mem_budget_gb``, else :attr:`solve_budget_gb`), in bytes."""
        gb = getattr(self.options, "mem_budget_gb", None)
        return int((self.solve_budget_gb if gb is None else gb) * GiB)

    @property
    def weight_stream(self) -> int:
        return 2 * self.largest * 4

    def forward_mem(self, stat: str | None = None) -> int:
        """Both embeddings, one block per model, the lanes' hidden states, one block's activations."""
        A, B = self.a, self.b
        m = (A.V * A.d + B.V * B.d) * 4 + (A.block_numel() + B.block_numel()) * 4
        m += self.lanes(stat) * self.tokens * self.d * 4
        return m + 2 * self.tokens * self.h * 4 * 2

    @property
    def logits_mem(self) -> int:
        o = self.options
        return 2 * o.batch_size * self.block_size * self.V * 4 * 2  # logits + log-softmax

    # time ---------------------------------------------------------------------------------
    @property
    def speed(self) -> float:
        return max(1.0, min(self.cpus, 16) / 2.0)  # products use every core given

    @property
    def flops(self) -> float:
        return CPU_FLOPS_2CORES * self.speed

    @property
    def fwd_flops(self) -> float:
        return GPU_FLOPS if self.gpus > 0 else self.flops

    @property
    def par(self) -> int:
        return max(1, min(self.solves, self.cpus))

    def mm(self, m, n, k) -> float:
        return 2.0 * m * n * k / self.flops

    @staticmethod
    def solve_s(n: int) -> float:
        return solve_s(n)

    def fwd_s(self, which: str) -> float:
        """Seconds of one model's forward pass over the tokens (``which``: "a" or "b")."""
        params = self.a_params if which == "a" else self.b_params
        return 2.0 * params * self.tokens / self.fwd_flops

    @property
    def read_s(self) -> float:
        return (self.a_params * self.a_bytes + self.b_params * self.b_bytes) / READ_BYTES_PER_S

    @property
    def block_match_s(self) -> float:
        """One block's cosine product and assignment."""
        return self.mm(self.h, self.h, self.d) + solve_s(self.h) / self.par


# costs of the steps that are not statistics ---------------------------------------------
def align_cost(s: Sizing) -> Cost:
    """``--align``: embedding matching, then one gate_proj matching per block."""
    return Cost(s.weight_stream + s.solves * s.per_solve,
                s.read_s + s.mm(s.d, s.d, s.Vs) + solve_s(s.d) + s.L * s.block_match_s, True)


def rotate_cost(s: Sizing) -> Cost:
    return Cost(s.weight_stream + 2 * s.d * s.d * 8, 2.0 * s.b_params * s.d / s.flops)


def eval_cost(s: Sizing) -> Cost:
    return Cost(s.forward_mem("eval") + s.logits_mem, s.read_s + s.fwd_s("a") + s.fwd_s("b"))
