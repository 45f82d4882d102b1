"""What one reference's index job asks for: memory, CPUs and a time limit from the reference's
own config (read through its weight format's backend, as ``launch.py`` sizes a pair), with the
same safety margins as :mod:`tracing.launch.sizing`.

An entry reads, for each of its blocks, K rows of up_proj (K · d values) and the embedding's first
``emb_tokens`` rows, projects them onto the fixed sketch and writes them; it also needs the
SHA-256 of every weight file (read whole for a local folder; the hub's recorded digest for a hub
model). Memory: the rows in float32 three times (read, compact copy, sketch), the projections,
and one up_proj decoded whole (a source that cannot slice rows of its format). Time: the bytes
read and hashed at the shared filesystem's rate, and the sketch products.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..launch.configs import ConfigUnavailable, ModelInfo, model_info, reference_info
from ..launch.sizing import (MEM_OVERHEAD_FRACTION, MEM_OVERHEAD_GB, TIME_CAP_MIN, TIME_FLOOR_MIN, TIME_SAFETY,
                             Resources)
from ..stats.cost import CPU_FLOPS_2CORES, GiB, READ_BYTES_PER_S
from .layout import Settings, block_subset


@dataclass(frozen=True)
class EntryCost:
    mem_bytes: int
    seconds: float
    bytes_read: int  # rows and embedding columns, as stored
    bytes_hashed: int  # weight files read whole for their SHA-256 (local folders)


def entry_cost(info: ModelInfo, s: Settings) -> EntryCost:
    a = info.arch
    k, blocks, tokens = min(s.rows, a.h), len(block_subset(a.L, s.blocks)), min(a.V, s.emb_tokens)
    values = blocks * k * a.d + tokens * a.d
    mem = 3 * values * 4 + (a.d + tokens) * s.sketch * 4 + a.h * a.d * 4
    read = int(values * info.bytes_per_param)
    hashed = int(info.params * info.bytes_per_param) if info.source == "local" else 0
    flops = 2.0 * (blocks * k + tokens) * a.d * s.sketch
    return EntryCost(int(mem), (read + hashed) / READ_BYTES_PER_S + flops / (CPU_FLOPS_2CORES / 2), read, hashed)


def resources(cost: EntryCost, partition: str | None = None, overrides: dict | None = None) -> Resources:
    """One CPU; memory +25 % + 2 GB, time doubled within [30 min, 48 h], as launch.py sizes a pair."""
    o = dict(overrides or {})
    mem_gb = int(math.ceil(cost.mem_bytes * (1 + MEM_OVERHEAD_FRACTION) / GiB + MEM_OVERHEAD_GB))
    timeout = min(max(int(math.ceil(cost.seconds * TIME_SAFETY / 60)), TIME_FLOOR_MIN), TIME_CAP_MIN)
    return Resources(mem_gb=int(o.get("mem_gb", mem_gb)), cpus=int(o.get("cpus", 1)), gpus=0,
                     timeout_min=int(o.get("timeout_min", timeout)), partition=o.get("partition", partition))


def reference_info_of(spec: str) -> tuple[ModelInfo | None, str]:
    """``(info, note)``: the reference's shape from its backend (a hub model not in the cache gets
    its config files fetched, not its weights); ``None`` and the reason when it cannot be read (the
    job is then sized as a Llama-2-7B-shaped model and records the error itself)."""
    from ..errors import TracingError
    try:
        return model_info(spec), "sized from its config"
    except ConfigUnavailable:
        pass
    except TracingError as e:
        return None, f"sized as Llama-2-7B ({e})"
    try:
        from ..models import resolve
        resolve(spec, remote=True)  # config files only: the entry reads its rows by range requests
        return model_info(spec), "sized from its config"
    except TracingError as e:
        return None, f"sized as Llama-2-7B (config not available: {e})"


def size_entry(spec: str, s: Settings, partition: str | None = None,
               overrides: dict | None = None) -> tuple[Resources, str]:
    info, note = reference_info_of(spec)
    return resources(entry_cost(info or reference_info(), s), partition, overrides), note
