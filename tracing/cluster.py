"""Fan every pair of a model list out as jobs: Slurm job arrays through submitit, or a bounded
pool of worker processes on this machine when there is no Slurm (DESIGN §8).

The flow of :func:`launch` (what ``python launch.py config/model_list.yaml`` runs):

1. read the model list (:func:`read_model_list`): a plain list (every unordered pair),
   ``{base_models, ft_models}`` (cross product) or ``{models_1, models_2, names_1?, names_2?}``
   (listed pairs), with optional ``stat``, ``options`` and ``resources`` keys;
2. choose where to run (:func:`choose_cluster`): Slurm only when a controller answers;
3. give every (pair, statistic) a deterministic result path (:func:`result_path`) and skip the
   pairs whose results all exist with status ok;
4. download each hub model once into the shared Hugging Face cache and build the demo family
   (:func:`prefetch`), so that jobs only read;
5. size every pair from the two configs and the statistics (:func:`size_pair`);
6. run: one job per pair (all its statistics through one ``run_pair`` call), grouped into Slurm
   job arrays by identical resources and chunked under ``MaxArraySize`` (:func:`run_slurm`), or
   at most ``max_workers`` pairs at a time in spawned worker processes (:func:`run_local`);
7. a failed pair gets a ``status: failed`` record per statistic and never stops the others; a
   timed-out or preempted Slurm job is requeued through submitit's checkpointing
   (:class:`PairJob`); a rerun retries only what is not done.

Only model ids, paths and option dicts go into a job, never tensors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Callable, Iterable

from .errors import TracingError

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30

WEIGHT_STATS = ("cos", "emb", "l2")
FORWARD_STATS = ("csh", "match", "jsd", "mode")

# Test hook: a job sleeps this many seconds before computing, on its first start only
# (so a test has time to requeue it). Never set it for real work.
TEST_SLEEP_ENV = "TRACING_TEST_SLEEP_S"


def _say(*parts, file=None) -> None:
    print(*parts, file=file or sys.stdout, flush=True)


# ==========================================================================================
# Model lists
# ==========================================================================================
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
    form: str  # "all pairs" | "base x ft" | "listed pairs"
    stat: list[str] | None = None
    options: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    source: str = "<model list>"
    notes: list[str] = field(default_factory=list)


FORMS_HELP = ("a list of models (every pair), {base_models: [...], ft_models: [...]} (every base x fine-tune), "
              "or {models_1: [...], models_2: [...]} (the listed pairs)")
RESOURCE_KEYS = {"mem_gb": int, "timeout_min": int, "gpus": int, "cpus": int, "partition": str}
TOP_KEYS = ("models", "base_models", "ft_models", "models_1", "models_2", "names_1", "names_2",
            "stat", "options", "resources")


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
    if data is None:
        raise TracingError(f"{source} is empty; write {FORMS_HELP}")
    notes: list[str] = []
    extra: dict = {}
    if isinstance(data, list):
        models, form = _model_names(data, "models", source), "all pairs"
    elif isinstance(data, dict):
        unknown = [str(k) for k in data if k not in TOP_KEYS]
        if unknown:
            raise TracingError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(TOP_KEYS)}")
        extra = data
        has = {k for k in ("models", "base_models", "ft_models", "models_1", "models_2") if k in data}
        if has == {"models"}:
            models, form = _model_names(data["models"], "models", source), "all pairs"
        elif has == {"base_models", "ft_models"}:
            form = "base x ft"
        elif has == {"models_1", "models_2"}:
            form = "listed pairs"
        else:
            got = ", ".join(sorted(has)) or "none of them"
            raise TracingError(f"{source}: cannot tell which pairs to run (model keys found: {got}); write {FORMS_HELP}")
    else:
        raise TracingError(f"{source} holds a {type(data).__name__}, not a model list; write {FORMS_HELP}")

    pairs: list[Pair] = []
    if form == "all pairs":
        dups = sorted({m for m in models if models.count(m) > 1})
        if dups:
            raise TracingError(f"{source}: {', '.join(dups)} listed more than once; list each model once")
        if len(models) < 2:
            raise TracingError(f"{source}: a plain list needs at least two models to make a pair")
        pairs = [Pair(a, b) for a, b in combinations(models, 2)]
    elif form == "base x ft":
        bases = _model_names(data["base_models"], "base_models", source)
        fts = _model_names(data["ft_models"], "ft_models", source)
        seen = set()
        for a in bases:
            for b in fts:
                if a == b:
                    notes.append(f"skipped {a} vs itself (it is in both base_models and ft_models)")
                elif (a, b) not in seen:
                    seen.add((a, b))
                    pairs.append(Pair(a, b))
        if not pairs:
            raise TracingError(f"{source}: base_models x ft_models gives no pair of two different models")
    else:
        m1 = _model_names(data["models_1"], "models_1", source)
        m2 = _model_names(data["models_2"], "models_2", source)
        if len(m1) != len(m2):
            raise TracingError(f"{source}: models_1 has {len(m1)} models but models_2 has {len(m2)}; "
                               f"the listed form pairs them by position, so give both lists the same length")
        n1 = _display_names(data.get("names_1"), "names_1", len(m1), "models_1", source)
        n2 = _display_names(data.get("names_2"), "names_2", len(m2), "models_2", source)
        seen = set()
        for a, b, x, y in zip(m1, m2, n1, n2):
            if (a, b) in seen:
                notes.append(f"skipped a repeated pair {a} vs {b}")
                continue
            seen.add((a, b))
            pairs.append(Pair(a, b, x, y))
    for k in ("names_1", "names_2"):
        if k in extra and form != "listed pairs":
            raise TracingError(f"{source}: '{k}' only goes with models_1/models_2")

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
    resources = extra.get("resources") or {}
    if not isinstance(resources, dict):
        raise TracingError(f"{source}: 'resources' must be a mapping, e.g. resources: {{mem_gb: 64, timeout_min: 600}}")
    resources = _check_resources(resources, source)
    return ModelList(pairs, form, stat, dict(options), resources, source, notes)


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


# ==========================================================================================
# Result paths
# ==========================================================================================
def _is_local_spec(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or Path(spec).expanduser().is_dir()


def model_slug(spec: str) -> str:
    """A file-name-safe, deterministic name for a model spec.

    Hub ids keep their name (``org/name@rev`` -> ``org--name@rev``); a local folder gets its last
    component plus a short hash of its absolute path, so two folders with the same name differ.
    """
    from .cli_util import slug

    spec = str(spec)
    if spec.startswith("demo:"):
        return slug(spec)
    if _is_local_spec(spec):
        full = str(Path(spec).expanduser().absolute())
        name = Path(full).name or "model"
        return f"{slug('./' + name)}-{hashlib.sha256(full.encode()).hexdigest()[:6]}"
    return slug(spec)


def pair_dir(out: str | os.PathLike, pair: Pair) -> Path:
    return Path(out) / f"{model_slug(pair.base)}__{model_slug(pair.ft)}"


def result_path(out: str | os.PathLike, pair: Pair, stat: str, options) -> Path:
    """``<out>/<slug(base)>__<slug(ft)>/<stat>-<options hash>.p`` (the hash of this statistic's options)."""
    return pair_dir(out, pair) / f"{stat}-{options.for_stat(stat).key()}.p"


# ==========================================================================================
# Model configs (no network)
# ==========================================================================================
class ConfigUnavailable(TracingError):
    """A model's config.json is not on this machine (a hub model not yet downloaded)."""

    def __init__(self, message: str, spec: str):
        super().__init__(message)
        self.spec = spec


@dataclass(frozen=True)
class ModelInfo:
    spec: str
    arch: object  # tracing.arch.Arch
    bytes_per_param: int  # as stored on disk (for read time)
    source: str  # "local" | "hub cache" | "demo"

    @property
    def params(self) -> int:
        return self.arch.num_params()


_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8}


def read_config(spec: str) -> tuple[dict, str]:
    """The config.json of a model without touching the network: local folder, the Hugging Face
    cache, or the demo family (its fixed recipe when not built yet)."""
    spec = str(spec)
    if spec.startswith("demo:"):
        from . import demo as zoo
        name = zoo.recipes._name(spec)
        root = zoo.default_root()
        if zoo.is_built(root):
            return json.loads((root / name / "config.json").read_text()), "demo"
        return {"model_type": "llama", "vocab_size": zoo.VOCAB_SIZE, **zoo.MODEL_CONFIG,
                "torch_dtype": "float32"}, "demo"
    p = Path(spec).expanduser()
    if p.is_dir():
        f = p / "config.json"
        if not f.is_file():
            raise TracingError(f"{spec} has no config.json; point to a Hugging Face model folder "
                               f"(config.json + weights)")
        try:
            return json.loads(f.read_text()), "local"
        except json.JSONDecodeError as e:
            raise TracingError(f"{f} is not valid JSON ({e.msg}); re-download or fix the file") from None
    if _is_local_spec(spec) or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?(@[\w.\-/]+)?", spec):
        raise TracingError(f"model folder {spec} does not exist; give an existing local folder, "
                           f"a hub id like org/name[@revision], or demo:<name>")
    from huggingface_hub import hf_hub_download

    repo, _, rev = spec.partition("@")
    try:
        f = hf_hub_download(repo, "config.json", revision=rev or None, local_files_only=True)
    except Exception:
        raise ConfigUnavailable(
            f"the config of {spec} is not in the local Hugging Face cache; download it with "
            f"`hf download {repo} config.json{' --revision ' + rev if rev else ''}` "
            f"(set HF_TOKEN first for gated models), or run without --dry-run to fetch the model", spec) from None
    try:
        return json.loads(Path(f).read_text()), "hub cache"
    except json.JSONDecodeError as e:
        raise TracingError(f"{f} (config of {spec}) is not valid JSON ({e.msg}); delete it and download again") from None


def model_info(spec: str) -> ModelInfo:
    from .arch import arch_from_config

    cfg, source = read_config(spec)
    arch = arch_from_config(cfg)
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").replace("torch.", "")
    return ModelInfo(spec, arch, _DTYPE_BYTES.get(dtype, 2), source)


# ==========================================================================================
# Sizing
# ==========================================================================================
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


# Reference costs on a 2-core CPU (DESIGN §9): a Llama-2-7B block (h=11008, d=4096) takes ~7 s
# for the float32 cosine product and ~16 s for an independent pair's assignment solve.
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


def _solve_s(n: int) -> float:
    return REF_SOLVE_S * (n / REF_H) ** 3


def size_pair(a: ModelInfo | None, b: ModelInfo | None, stats: Iterable[str], options, *,
              slurm: bool, cpus: int | None = None, data_gpus: int | None = None,
              cluster_has_gpus: bool = True, overrides: dict | None = None) -> Resources:
    """Memory, CPUs, GPUs and time limit of one pair's job, from the two models and the statistics.

    The single place where resources are estimated. Weight-only statistics (cos, emb, l2, and
    --align) stream one tensor at a time: two of the largest tensor in float32 plus the
    assignment cost matrices (n² × 8 bytes float64 + n² × 4 float32 each) of the parallel solves.
    Forward-pass statistics (csh, match, jsd, mode, --eval) run block by block: both embeddings,
    one block per model, the hidden states of every lane, one block's activations, and (match,
    csh) the cost matrices; they ask for ``data_gpus`` GPUs when the cluster has any (default 1
    on Slurm, 0 on this machine). Then +25 % + 2 GB, rounded up. The time limit scales with L,
    h² (products) and h³ (solves), doubled for safety, at least 30 min and at most 48 h.
    ``overrides`` (mem_gb, timeout_min, gpus, cpus, partition) replace the estimates.
    ``a``/``b`` None (config unknown): a Llama-2-7B-shaped model is assumed.
    """
    overrides = dict(overrides or {})
    stats = list(stats)
    if a is None or b is None:
        ref = _reference_info()
        a, b = a or ref, b or ref
    A, B = a.arch, b.arch
    forward = [s for s in stats if s in FORWARD_STATS] + (["eval"] if options.eval else [])
    if cpus is None:
        cpus = DEFAULT_SLURM_CPUS if slurm else 1
    cpus = int(overrides.get("cpus", cpus))
    if data_gpus is None:
        data_gpus = 1 if slurm else 0
    gpus = data_gpus if (forward and cluster_has_gpus) else 0
    gpus = int(overrides.get("gpus", gpus))

    d, h, L = max(A.d, B.d), max(A.h, B.h), max(A.L, B.L)
    V = max(A.V, B.V)
    Vs = min(A.V, B.V)
    largest = max(A.largest_tensor_numel(), B.largest_tensor_numel())
    tokens = options.num_samples * options.block_size
    lanes = 2 + len(options.alphas or [options.alpha]) if "mode" in stats else 2

    # memory ------------------------------------------------------------------------------
    per_solve = h * h * 12  # float64 cost + float32 cosines
    solves = max(1, min(cpus, SOLVE_MEM_BUDGET // per_solve))
    weight_stream = 2 * largest * 4
    need: list[int] = [0]
    for s in stats:
        if s == "cos":
            need.append(weight_stream + solves * per_solve)
        elif s == "emb":
            need.append(weight_stream + min(solves, 2) * d * d * 12)
        elif s == "l2":
            need.append(3 * largest * 4)
    if options.align:
        need.append(weight_stream + solves * per_solve)
    if options.rotate:
        need.append(weight_stream + 2 * d * d * 8)
    if forward:
        fwd = (A.V * A.d + B.V * B.d) * 4 + (A.block_numel() + B.block_numel()) * 4
        fwd += lanes * tokens * d * 4  # hidden states per lane
        fwd += 2 * tokens * h * 4 * 2  # one block's activations, per model
        if any(s in ("csh", "match") for s in forward):
            fwd += solves * per_solve
        if any(s in ("jsd", "mode", "eval") for s in forward):
            fwd += 2 * options.batch_size * options.block_size * V * 4 * 2  # logits + log-softmax
        need.append(fwd)
    mem_gb = int(math.ceil(max(need) * (1 + MEM_OVERHEAD_FRACTION) / GiB + MEM_OVERHEAD_GB))

    # time ---------------------------------------------------------------------------------
    speed = max(1.0, min(cpus, 16) / 2.0)  # products use every core given
    flops = CPU_FLOPS_2CORES * speed
    fwd_flops = GPU_FLOPS if gpus > 0 else flops
    par = max(1, min(solves, cpus))

    def mm(m, n, k):
        return 2.0 * m * n * k / flops

    def fwd_s(info):
        return 2.0 * info.params * tokens / fwd_flops

    read_s = (a.params * a.bytes_per_param + b.params * b.bytes_per_param) / READ_BYTES_PER_S
    block_match = mm(h, h, d) + _solve_s(h) / par
    seconds = 0.0
    for s in stats:
        t = read_s
        if s == "cos":
            t += L * block_match
        elif s == "emb":
            t += mm(d, d, Vs) + _solve_s(d)
        elif s == "l2":
            t += (1 + (99 if options.num_perm is None else options.num_perm)) * (a.params + b.params) \
                / (ELEMS_PER_S_2CORES * speed)
        elif s in ("csh", "match"):
            t += fwd_s(a) + fwd_s(b) + L * (2 if s == "match" else 1) * (mm(h, h, tokens) + _solve_s(h) / par)
        elif s == "jsd":
            t += fwd_s(a) + fwd_s(b)
        elif s == "mode":
            t += lanes * max(fwd_s(a), fwd_s(b)) * (1 + (options.num_perm or 0))
        if options.align and s != "emb":
            t *= 2  # the statistic is recomputed on the aligned model
        seconds += t
    if options.align:
        seconds += read_s + mm(d, d, Vs) + _solve_s(d) + L * block_match
    if options.rotate:
        seconds += 2.0 * b.params * d / flops
    if options.eval:
        seconds += read_s + fwd_s(a) + fwd_s(b)
    timeout = int(math.ceil(seconds * TIME_SAFETY / 60))
    timeout = min(max(timeout, TIME_FLOOR_MIN), TIME_CAP_MIN)

    budget = None
    if any(s in ("cos", "csh", "match") for s in stats) or options.align:
        # the engine counts 16 bytes per cost entry (float64 + scipy's working copy)
        budget = round(solves * h * h * 16 / GiB + 0.05, 2)
    return Resources(mem_gb=int(overrides.get("mem_gb", mem_gb)), cpus=max(1, cpus), gpus=max(0, gpus),
                     timeout_min=int(overrides.get("timeout_min", timeout)),
                     partition=overrides.get("partition"), solves=int(solves), solve_budget_gb=budget)


def _reference_info() -> ModelInfo:
    from .arch import arch_from_config

    cfg = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "vocab_size": 32000, "num_attention_heads": 32, "num_key_value_heads": 32, "tie_word_embeddings": False}
    return ModelInfo("<assumed 7B>", arch_from_config(cfg), 2, "assumed")


# ==========================================================================================
# Where to run
# ==========================================================================================
@dataclass
class ClusterChoice:
    kind: str  # "slurm" | "local"
    reason: str


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip() and not set(line.strip()) <= {"*"}:
            return " ".join(line.split())
    return ""


def probe_slurm(env: dict | None = None, timeout: float = 10.0) -> tuple[bool, str]:
    """Does a Slurm controller answer? ``(True, why)`` only when ``scontrol ping`` says UP
    (or, without scontrol, when ``sinfo`` works); having ``srun`` on PATH is not enough."""
    env = dict(os.environ if env is None else env)
    path = env.get("PATH", os.defpath)
    scontrol, sinfo = shutil.which("scontrol", path=path), shutil.which("sinfo", path=path)
    if not scontrol and not sinfo:
        return False, "no Slurm commands (scontrol, sinfo) on PATH"
    conf = env.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        return False, f"SLURM_CONF={conf} does not exist"
    cmd = [scontrol, "ping"] if scontrol else [sinfo, "-h", "-o", "%P"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return False, f"`{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}` got no answer within {timeout:.0f} s"
    except OSError as e:
        return False, f"cannot run {cmd[0]} ({e.strerror})"
    out = _first_line(r.stdout) or _first_line(r.stderr)
    name = "scontrol ping" if scontrol else "sinfo"
    if r.returncode == 0 and (not scontrol or " UP" in r.stdout):
        return True, f"a Slurm controller answered `{name}`" + (f" ({out})" if out else "")
    return False, f"no Slurm controller answered `{name}`" + (f" ({out})" if out else f" (exit code {r.returncode})")


def choose_cluster(requested: str = "auto", env: dict | None = None) -> ClusterChoice:
    if requested not in ("auto", "slurm", "local"):
        raise TracingError(f"--cluster must be auto, slurm or local, got {requested!r}")
    if requested == "local":
        return ClusterChoice("local", "--cluster local was given")
    ok, why = probe_slurm(env)
    if requested == "slurm":
        if not ok:
            raise TracingError(f"--cluster slurm was given but {why}; start the Slurm controller "
                               f"(or export SLURM_CONF) or use --cluster local")
        return ClusterChoice("slurm", why)
    return ClusterChoice("slurm", why) if ok else ClusterChoice("local", why)


@dataclass
class SlurmInfo:
    max_array_size: int = 1001
    node_cpus: int | None = None
    node_mem_gb: float | None = None
    has_gpus: bool = False


def slurm_info(partition: str | None = None) -> SlurmInfo:
    """Limits of the cluster: ``MaxArraySize`` (``scontrol show config``), the largest node's
    CPUs and memory and whether any node has GPUs (``sinfo``)."""
    info = SlurmInfo()
    try:
        r = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
        m = re.search(r"^MaxArraySize\s*=\s*(\d+)", r.stdout, re.M)
        if m:
            info.max_array_size = max(1, int(m.group(1)))
    except (OSError, subprocess.SubprocessError):
        pass
    cmd = ["sinfo", "-h", "-N", "-o", "%c|%m|%G"] + (["-p", partition] if partition else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        for line in r.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 3:
                continue
            c, m, g = parts
            if c.strip().isdigit():
                info.node_cpus = max(info.node_cpus or 0, int(c))
            if re.fullmatch(r"\d+\+?", m.strip()):
                info.node_mem_gb = max(info.node_mem_gb or 0.0, int(m.strip("+ ")) / 1024)
            if "gpu" in g.lower():
                info.has_gpus = True
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def local_mem_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8.0


def default_max_workers(cores: int | None = None) -> int:
    """One pair per two cores, at least one."""
    return max(1, (cores or local_cores()) // 2)


# ==========================================================================================
# The plan
# ==========================================================================================
@dataclass
class Task:
    """One pair's job: its statistics, result files, resources and outcome."""

    pair: Pair
    stats: list[str]
    paths: dict[str, Path]  # stat -> result pickle
    options: dict  # Options.to_dict() for the statistics still to compute
    status: str = "todo"  # before: todo | done | failed-before; after: done | skipped | failed
    todo: list[str] = field(default_factory=list)
    resources: Resources | None = None
    infos: tuple = (None, None)  # ModelInfo of base, ft
    problem: TracingError | None = None  # why the pair cannot run (found before running)
    error: str | None = None
    time: float | None = None
    job_id: str | None = None
    restarts: int = 0
    started: float = 0.0
    start: float | None = None  # wall-clock start and end of the computation (epoch seconds)
    end: float | None = None
    log: str | None = None

    @property
    def dir(self) -> Path:
        return next(iter(self.paths.values())).parent


def _stat_status(path: Path) -> str:
    from .results import load_record

    if not path.is_file():
        return "missing"
    try:
        rec = load_record(path)
    except Exception:
        return "unreadable"
    return rec.get("status", "ok") if isinstance(rec, dict) else "unreadable"


def make_tasks(pairs: list[Pair], options, out: Path) -> list[Task]:
    """One task per pair; ``status`` from the result files already there."""
    tasks = []
    for pair in pairs:
        paths = {s: result_path(out, pair, s, options) for s in options.stat}
        states = {s: _stat_status(p) for s, p in paths.items()}
        todo = [s for s, st in states.items() if st != "ok"]
        if not todo:
            status = "done"
        elif any(st == "failed" for st in states.values()):
            status = "failed-before"
        else:
            status = "todo"
        tasks.append(Task(pair, list(options.stat), paths, {}, status, todo))
    return tasks


def size_tasks(tasks: list[Task], options, *, slurm: bool, cpus: int | None, data_gpus: int | None,
               cluster_has_gpus: bool, overrides: dict, configs: dict | None = None) -> list[ConfigUnavailable]:
    """Read both configs of every pair (no network) and size it; returns the models whose
    config is not on this machine (their pairs are sized as Llama-2-7B)."""
    notes: list[str] = []
    configs = {} if configs is None else configs

    def info_of(spec):
        if spec not in configs:
            try:
                configs[spec] = model_info(spec)
            except TracingError as e:
                configs[spec] = e
        return configs[spec]

    for t in tasks:
        ia, ib = info_of(t.pair.base), info_of(t.pair.ft)
        errs = [x for x in (ia, ib) if isinstance(x, Exception)]
        hard = [e for e in errs if not isinstance(e, ConfigUnavailable)]
        t.infos = tuple(None if isinstance(x, Exception) else x for x in (ia, ib))
        if hard:
            t.problem, t.resources = hard[0], None
            continue
        stats = t.todo or t.stats
        t.resources = size_pair(t.infos[0], t.infos[1], stats, options, slurm=slurm, cpus=cpus,
                                data_gpus=data_gpus, cluster_has_gpus=cluster_has_gpus, overrides=overrides)
        opts = options.for_stat(stats[0]).to_dict()
        opts["stat"] = list(stats)
        if opts.get("mem_budget_gb") is None and t.resources.solve_budget_gb is not None:
            opts["mem_budget_gb"] = t.resources.solve_budget_gb
        t.options = opts
    for spec, x in configs.items():
        if isinstance(x, ConfigUnavailable):
            notes.append(x)
    return notes


# ==========================================================================================
# The job
# ==========================================================================================
class PairJob:
    """Compute every statistic of one pair (one ``run_pair`` call) and write its records.

    A plain callable class, pickled by submitit with nothing but ids, paths and option dicts.
    ``checkpoint`` makes a timed-out or preempted Slurm job requeue itself with the same
    arguments; statistics already written are not recomputed on the restart. Any error becomes
    a ``status: failed`` record for each statistic not done, so the launcher (and a rerun) see it.
    """

    def __init__(self, threads: int | None = None, progress: bool = False):
        self.threads = threads
        self.progress = progress

    def __call__(self, base: str, ft: str, options: dict, save: dict) -> dict:
        start = time.time()
        if self.threads:
            _limit_threads(self.threads)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        sleep_s = float(os.environ.get(TEST_SLEEP_ENV) or 0)
        if sleep_s > 0 and restarts == 0:
            print(f"{TEST_SLEEP_ENV}: sleeping {sleep_s:g} s before computing", flush=True)
            time.sleep(sleep_s)
        from .options import Options
        from .results import failure_record, is_done, save_record

        todo = {s: p for s, p in save.items() if not is_done(p)}
        error = None
        if todo:
            opts = Options.from_dict({**options, "stat": list(todo)})
            try:
                from .api import run_pair
                run_pair(base, ft, opts, save=todo, progress=self.progress)
            except Exception as e:  # noqa: BLE001 - every failure is recorded, never raised
                error = f"{type(e).__name__}: {_first_line(str(e)) or type(e).__name__}"
                for s, p in todo.items():
                    if not is_done(p):
                        save_record(failure_record(base, ft, s, opts.for_stat(s).to_dict(), e,
                                                   time.time() - start), p)
        failed = [s for s, p in save.items() if not is_done(p)]
        if failed and error is None:
            error = f"no result written for {', '.join(failed)}"
        return {"status": "failed" if failed else "ok", "error": error, "time": time.time() - start,
                "start": start, "end": time.time(), "restarts": restarts, "job_id": _job_id(),
                "host": os.uname().nodename}

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _job_id() -> str | None:
    arr, job, task = (os.environ.get(k) for k in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID"))
    if arr and task:
        return f"{arr}_{task}"
    return job


def _limit_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch
    torch.set_num_threads(n)


class PairFailed(Exception):
    """Why a pair ended without a result when the job itself could not say (e.g. it was killed)."""


def _mark_failed(task: Task, error: str | BaseException, elapsed: float = 0.0) -> None:
    """Write a failed record for every statistic of the task not done yet."""
    from .results import failure_record, is_done, save_record

    exc = error if isinstance(error, BaseException) else PairFailed(error)
    task.status, task.time = "failed", elapsed
    task.error = f"{type(exc).__name__}: {_first_line(str(exc))}" if isinstance(error, BaseException) else error
    task.end = time.time()
    task.start = task.end - elapsed
    for s in task.todo or task.stats:
        p = task.paths[s]
        if not is_done(p):
            opts = {**task.options, "stat": s}
            try:
                save_record(failure_record(task.pair.base, task.pair.ft, s, opts, exc, elapsed), p)
            except Exception as e:  # noqa: BLE001
                _say(f"warning: could not write the failure record {p}: {e}", file=sys.stderr)


def _apply_summary(task: Task, summary: dict) -> None:
    task.time = summary.get("time")
    task.start, task.end = summary.get("start"), summary.get("end")
    task.job_id = summary.get("job_id") or task.job_id
    task.restarts = int(summary.get("restarts") or 0)
    if summary.get("status") == "ok":
        task.status, task.error = "done", None
    else:
        task.status, task.error = "failed", summary.get("error") or "failed"


# ==========================================================================================
# Running on this machine
# ==========================================================================================
def _local_init(threads: int) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _limit_threads(threads)


def _local_call(job: PairJob, base: str, ft: str, options: dict, save: dict) -> dict:
    return job(base, ft, options, save)


def run_local(tasks: list[Task], max_workers: int, threads: int, on_done: Callable[[Task], None] | None = None,
              mem_limit_gb: float | None = None) -> None:
    """At most ``max_workers`` pairs at a time (and no more than fits in memory), each in a
    spawned worker process limited to ``threads`` torch threads."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    mem_limit_gb = local_mem_gb() if mem_limit_gb is None else mem_limit_gb
    queue = list(tasks)
    ctx = mp.get_context("spawn")  # fork after torch is imported is unsafe
    job = PairJob(threads=threads)
    while queue:
        pool = ProcessPoolExecutor(max_workers=max_workers, mp_context=ctx, initializer=_local_init,
                                   initargs=(threads,))
        running: dict = {}
        broken = False
        try:
            while (queue or running) and not broken:
                while queue and len(running) < max_workers:
                    used = sum(t.resources.mem_gb for t in running.values())
                    nxt = queue[0]
                    if running and used + nxt.resources.mem_gb > mem_limit_gb:
                        break
                    queue.pop(0)
                    nxt.status, nxt.started = "running", time.time()
                    fut = pool.submit(_local_call, job, nxt.pair.base, nxt.pair.ft, nxt.options,
                                      {s: str(nxt.paths[s]) for s in nxt.todo})
                    running[fut] = nxt
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    task = running.pop(fut)
                    try:
                        _apply_summary(task, fut.result())
                    except BrokenProcessPool:
                        broken = True
                        _mark_failed(task, "the worker process died (out of memory or killed?)",
                                     time.time() - task.started)
                    except Exception as e:  # noqa: BLE001
                        _mark_failed(task, f"{type(e).__name__}: {_first_line(str(e))}", time.time() - task.started)
                    if on_done:
                        on_done(task)
            if broken:  # every pair that was running in the dead pool is recorded as failed
                for fut, task in list(running.items()):
                    _mark_failed(task, "the worker pool broke while this pair ran (another worker died); rerun to retry",
                                 time.time() - task.started)
                    if on_done:
                        on_done(task)
                running.clear()
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)


# ==========================================================================================
# Running on Slurm
# ==========================================================================================
def chunked(items: list, size: int) -> list[list]:
    size = max(1, int(size))
    return [items[i:i + size] for i in range(0, len(items), size)]


def group_by_resources(tasks: list[Task]) -> "OrderedDict[tuple, list[Task]]":
    groups: OrderedDict = OrderedDict()
    for t in tasks:
        groups.setdefault(t.resources.group_key(), []).append(t)
    return groups


def active_slurm_jobs() -> set[str] | None:
    """Ids (``123`` and ``123_4``) of jobs Slurm still knows as pending or running; None if unknown."""
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%A"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    ids = set()
    for line in r.stdout.split():
        for part in line.split("|"):
            if part:
                ids.add(part)
    return ids


def run_slurm(tasks: list[Task], out: Path, *, array_parallelism: int | None, info: SlurmInfo,
              job_name: str, on_submit: Callable[[list[Task], str], None] | None = None,
              on_done: Callable[[Task], None] | None = None, poll_s: float = 1.0) -> None:
    """Submit the tasks as job arrays (one per group of identical resources, chunked under
    MaxArraySize) and wait for every job."""
    import submitit

    pythonpath = f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"
    pending: dict = {}
    for key, group in group_by_resources(tasks).items():
        res = group[0].resources
        for chunk in chunked(group, info.max_array_size):
            params = dict(timeout_min=res.timeout_min, mem_gb=res.mem_gb, cpus_per_task=res.cpus,
                          name=job_name, slurm_setup=[pythonpath],
                          slurm_signal_delay_s=int(min(120, max(10, res.timeout_min * 60 // 10))))
            if res.gpus:
                params["gpus_per_node"] = res.gpus
            if res.partition:
                params["slurm_partition"] = res.partition
            if array_parallelism:
                params["slurm_array_parallelism"] = int(array_parallelism)
            # a fresh executor per array: no parameter of another group carries over
            executor = submitit.AutoExecutor(folder=out / ".submitit" / "%j", cluster="slurm",
                                             slurm_max_num_timeout=3)
            executor.update_parameters(**params)
            job_fn = PairJob(threads=res.cpus)
            try:
                jobs = executor.map_array(
                    job_fn, [t.pair.base for t in chunk], [t.pair.ft for t in chunk], [t.options for t in chunk],
                    [{s: str(t.paths[s]) for s in t.todo} for t in chunk])
            except Exception as e:  # noqa: BLE001 - e.g. sbatch rejects the request
                msg = f"submission failed: {_first_line(str(e)) or type(e).__name__}"
                for t in chunk:
                    _mark_failed(t, msg)
                    if on_done:
                        on_done(t)
                continue
            for t, j in zip(chunk, jobs):
                t.job_id, t.status, t.started = j.job_id, "running", time.time()
                t.log = str(j.paths.stderr)
                pending[j] = t
            if on_submit:
                on_submit(chunk, str(jobs[0].job_id).split("_")[0])
    try:
        while pending:
            for j in list(pending):
                if not j.done():
                    continue
                t = pending.pop(j)
                try:
                    _apply_summary(t, j.result())
                except Exception as e:  # noqa: BLE001 - killed, out of memory, timed out too often, ...
                    state = ""
                    try:
                        state = j.get_info(mode="cache").get("State", "")
                    except Exception:  # noqa: BLE001
                        pass
                    why = _first_line(str(e).split("has failed with ")[-1]) if str(e) else type(e).__name__
                    _mark_failed(t, f"job {j.job_id} ended {state or 'abnormally'}: {why[:200]} (log: {j.paths.stderr})",
                                 time.time() - t.started)
                if on_done:
                    on_done(t)
            if pending:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        ids = sorted({str(j.job_id).split("_")[0] for j in pending})
        _say(f"\ninterrupted: {len(pending)} job(s) keep running on Slurm (job ids {', '.join(ids)}); "
             f"rerun the same command to wait for them, or `scancel {' '.join(ids)}` to stop them", file=sys.stderr)
        raise


def wait_for_foreign(tasks: list[Task], poll_s: float = 2.0, on_done: Callable[[Task], None] | None = None) -> None:
    """Wait for pairs whose jobs an earlier launch submitted and Slurm still runs."""
    from .results import is_done

    pending = list(tasks)
    while pending:
        active = active_slurm_jobs() or set()
        for t in list(pending):
            if t.job_id not in active:
                pending.remove(t)
                if all(is_done(t.paths[s]) for s in t.stats):
                    t.status, t.error = "done", None
                else:
                    t.status = "failed"
                    t.error = f"job {t.job_id} (from an earlier launch) ended without a result"
                if on_done:
                    on_done(t)
        if pending:
            time.sleep(poll_s)


# ==========================================================================================
# Prefetch
# ==========================================================================================
def prefetch(tasks: list[Task], say: Callable = _say) -> dict[str, str]:
    """Download every distinct hub model once into the shared cache and build the demo family;
    returns ``{spec: error}`` for the models that could not be fetched."""
    from .models import resolve

    specs: list[str] = []
    for t in tasks:
        for s in (t.pair.base, t.pair.ft):
            if s not in specs:
                specs.append(s)
    errors: dict[str, str] = {}
    if any(s.startswith("demo:") for s in specs):
        from . import demo as zoo
        if not zoo.is_built():
            say("building the demo model family once (1-2 minutes) ...")
        try:
            zoo.ensure_built(progress=False)
        except TracingError as e:
            for s in specs:
                if s.startswith("demo:"):
                    errors[s] = str(e)
    hub = [s for s in specs if not s.startswith("demo:") and not Path(s).expanduser().is_dir()
           and not _is_local_spec(s)]
    for i, s in enumerate(hub, 1):
        say(f"fetching {s} ({i}/{len(hub)}) into the Hugging Face cache ...")
        try:
            resolve(s)
        except TracingError as e:
            errors[s] = str(e)
            say(f"  cannot fetch {s}: {e}")
    return errors


# ==========================================================================================
# Output
# ==========================================================================================
def fmt_params(info: ModelInfo | None) -> str:
    if info is None:
        return "?"
    n = info.params
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}" if n < 100 * div else f"{n / div:.0f}{unit}"
    return str(n)


def fmt_minutes(m: int | None) -> str:
    if m is None:
        return "-"
    h, mm = divmod(int(m), 60)
    return f"{h}h{mm:02d}" if h else f"{mm}m"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def table(rows: list[list[str]], header: list[str]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _results_cell(t: Task) -> str:
    names = [t.paths[s].name for s in t.stats]
    d = _rel(t.dir)
    return f"{d}/{names[0]}" if len(names) == 1 else f"{d}/{{{','.join(names)}}}"


def plan_table(tasks: list[Task]) -> str:
    rows = []
    for t in tasks:
        r = t.resources
        status = t.status
        if t.problem:
            status = "error"
        elif None in t.infos:
            status += " *"
        elif t.status == "todo" and len(t.todo) < len(t.stats):
            status = f"todo ({len(t.stats) - len(t.todo)}/{len(t.stats)} done)"
        rows.append([t.pair.label, ",".join(t.stats), f"{fmt_params(t.infos[0])} / {fmt_params(t.infos[1])}",
                     r.mem_gb if r else "-", r.gpus if r else "-", r.cpus if r else "-",
                     fmt_minutes(r.timeout_min if r else None), _results_cell(t), status])
    text = table(rows, ["pair", "stat", "params", "mem_gb", "gpus", "cpus", "time", "result", "status"])
    if any(None in t.infos and not t.problem for t in tasks):
        text += "\n* a config is not on this machine: resources assume a Llama-2-7B-sized model (see the notes)"
    return text


def summary_table(tasks: list[Task]) -> str:
    rows = []
    for t in tasks:
        err = (t.error or "")
        rows.append([t.pair.label, t.status, fmt_seconds(t.time), t.job_id or "-",
                     (err[:117] + "...") if len(err) > 120 else err])
    return table(rows, ["pair", "status", "time", "job", "error"])


def write_run_log(out: Path, tasks: list[Task], cluster: str, arrays: list[dict]) -> None:
    """``<out>/launch.json``: what ran where (job ids let a rerun find still-running jobs)."""
    doc = {"cluster": cluster, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "arrays": arrays,
           "pairs": [{"base": t.pair.base, "ft": t.pair.ft, "dir": t.dir.name, "stats": t.stats,
                      "results": [str(t.paths[x]) for x in t.stats],
                      "status": t.status, "job_id": t.job_id, "time": t.time, "error": t.error,
                      "restarts": t.restarts, "start": t.start, "end": t.end,
                      "resources": dataclasses.asdict(t.resources) if t.resources else None} for t in tasks]}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".launch.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, out / "launch.json")


def read_run_log(out: Path) -> dict:
    try:
        return json.loads((out / "launch.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# ==========================================================================================
# Entry point
# ==========================================================================================
@dataclass
class LaunchSettings:
    config: str
    cli_options: dict = field(default_factory=dict)  # comparison options given on the command line
    cluster: str = "auto"
    partition: str | None = None
    array_parallelism: int | None = None
    max_workers: int | None = None
    dry_run: bool = False
    out: str | None = None
    timeout_min: int | None = None
    mem_gb: int | None = None
    gpus: int | None = None
    cpus: int | None = None
    prefetch: bool = True
    report: bool = True


def build_options(model_list: ModelList, cli_options: dict):
    """Defaults < the list's ``options`` / ``stat`` < options given on the command line."""
    from .options import Options

    merged = dict(model_list.options)
    if model_list.stat is not None:
        merged["stat"] = model_list.stat
    merged.update({k: v for k, v in cli_options.items()})
    if isinstance(merged.get("stat"), list):
        merged["stat"] = ",".join(merged["stat"])
    opts = Options.from_dict(merged)
    opts.stat = list(dict.fromkeys(opts.stat))  # a statistic once, in the order given
    return opts


def launch(s: LaunchSettings, say: Callable = _say) -> int:
    """Run (or with ``dry_run`` print) the plan; returns the exit code (0 ok, 1 a pair failed)."""
    model_list = read_model_list(s.config)
    options = build_options(model_list, s.cli_options)
    out = Path(s.out) if s.out else Path("results") / Path(s.config).stem
    out = out.expanduser().absolute()
    for n in model_list.notes:
        say(f"note: {n}")

    choice = choose_cluster(s.cluster)
    slurm = choice.kind == "slurm"
    say(f"cluster: {choice.kind} ({choice.reason})")
    info = slurm_info(s.partition) if slurm else None

    overrides = dict(model_list.resources)
    for k in ("mem_gb", "timeout_min", "gpus", "cpus", "partition"):
        v = getattr(s, k)
        if v is not None:
            overrides[k] = v
    max_workers = max(1, s.max_workers or default_max_workers())
    if slurm:
        cpus = DEFAULT_SLURM_CPUS
        if info.node_cpus and "cpus" not in overrides:
            cpus = min(cpus, info.node_cpus)
        data_gpus, has_gpus = None, info.has_gpus
    else:
        cpus = max(1, local_cores() // max_workers)
        overrides.pop("partition", None)
        data_gpus, has_gpus = 0, False
        if "cpus" in overrides:  # locally the worker count decides the threads
            overrides.pop("cpus")

    tasks = make_tasks(model_list.pairs, options, out)
    n_done = sum(t.status == "done" for t in tasks)
    say(f"{len(tasks)} pair(s) from {model_list.source} ({model_list.form}), statistics {','.join(options.stat)}; "
        f"results in {_rel(out)}; {n_done} already done")

    size_kw = dict(slurm=slurm, cpus=cpus, data_gpus=data_gpus, cluster_has_gpus=has_gpus, overrides=overrides)
    if s.dry_run:
        notes = size_tasks(tasks, options, **size_kw)
        say(plan_table(tasks))
        for t in tasks:
            if t.problem:
                say(f"error: {t.pair.label}: {t.problem}")
        for n in notes:
            say(f"note: {n}")
        _resource_warnings(tasks, slurm, info, say)
        if slurm:
            groups = group_by_resources([t for t in tasks if t.status != "done" and not t.problem])
            n_arrays = sum(len(chunked(g, info.max_array_size)) for g in groups.values())
            say(f"would submit {n_arrays} job array(s) (MaxArraySize {info.max_array_size})")
        return 0

    todo = [t for t in tasks if t.status != "done"]
    for t in tasks:
        if t.status == "done":
            t.status = "skipped"
    arrays: list[dict] = []
    foreign: list[Task] = []
    if slurm and todo:  # pairs still running from an earlier launch are waited for, not resubmitted
        previous = {(p.get("base"), p.get("ft"), tuple(p.get("results") or ())): p.get("job_id")
                    for p in read_run_log(out).get("pairs", [])}
        active = active_slurm_jobs() or set()
        for t in todo:
            jid = previous.get((t.pair.base, t.pair.ft, tuple(str(t.paths[x]) for x in t.stats)))
            if jid and jid in active:
                t.job_id, t.status = jid, "running"
                foreign.append(t)
        todo = [t for t in todo if t not in foreign]
        if foreign:
            say(f"{len(foreign)} pair(s) still running from an earlier launch (jobs "
                f"{', '.join(sorted({str(t.job_id).split('_')[0] for t in foreign}))}): waiting for them")

    if s.prefetch and todo:
        errors = prefetch(todo, say)
        for t in todo:
            bad = [errors[m] for m in (t.pair.base, t.pair.ft) if m in errors]
            if bad:
                t.problem = TracingError(bad[0])
    elif todo and any(m.startswith("demo:") for t in todo for m in (t.pair.base, t.pair.ft)):
        from . import demo as zoo
        zoo.ensure_built(progress=False)
    configs: dict = {}
    notes = size_tasks([t for t in todo if not t.problem], options, configs=configs, **size_kw)
    for n in notes:
        say(f"note: the config of {n.spec} is not cached (--no-prefetch): its jobs fetch the model "
            f"themselves, and its resources assume a Llama-2-7B-sized model")

    finished: list[Task] = []

    def on_done(t: Task) -> None:
        finished.append(t)
        extra = f" ({t.error})" if t.error else ""
        say(f"[{len(finished)}/{len(todo) + len(foreign)}] {t.pair.label}: {t.status} in {fmt_seconds(t.time)}{extra}")

    runnable = []
    for t in todo:
        if t.problem:
            _mark_failed(t, t.problem)
            on_done(t)
        else:
            runnable.append(t)
    _resource_warnings(runnable, slurm, info, say)

    start = time.time()
    if runnable:
        if slurm:
            def on_submit(chunk, array_id):
                r = chunk[0].resources
                arrays.append({"job_id": array_id, "tasks": len(chunk), **dataclasses.asdict(r)})
                say(f"submitted Slurm job {array_id}: {len(chunk)} pair(s), {r.mem_gb} GB, {r.cpus} CPU(s), "
                    f"{r.gpus} GPU(s), {fmt_minutes(r.timeout_min)} each"
                    + (f", at most {s.array_parallelism} at once" if s.array_parallelism else ""))
                write_run_log(out, tasks, choice.kind, arrays)

            run_slurm(runnable, out, array_parallelism=s.array_parallelism, info=info,
                      job_name=f"tracing-{out.name}"[:64], on_submit=on_submit, on_done=on_done)
        else:
            threads = max(1, local_cores() // max_workers)
            say(f"running {len(runnable)} pair(s) here, at most {max_workers} at a time, {threads} thread(s) each")
            run_local(runnable, max_workers, threads, on_done=on_done)
    if foreign:
        wait_for_foreign(foreign, on_done=on_done)
    elif not runnable and not any(t.status == "failed" for t in tasks):
        say("nothing to do: every result already exists (delete a result file to recompute it)")

    write_run_log(out, tasks, choice.kind, arrays)
    counts = {k: sum(t.status == k for t in tasks) for k in ("done", "failed", "skipped")}
    say("")
    say(summary_table(tasks))
    say(f"done {counts['done']}, failed {counts['failed']}, skipped {counts['skipped']} "
        f"(already done) in {fmt_seconds(time.time() - start)}; results in {_rel(out)}")
    if counts["failed"]:
        say("rerun the same command to retry the failed pairs (their errors are in the result files)")
    if s.report:
        _write_report(out, say)
    return 1 if counts["failed"] else 0


def _resource_warnings(tasks: list[Task], slurm: bool, info: SlurmInfo | None, say: Callable) -> None:
    if slurm and info:
        if info.node_mem_gb:
            big = [t for t in tasks if t.resources and t.resources.mem_gb > info.node_mem_gb]
            if big:
                say(f"warning: {len(big)} pair(s) need more memory than the largest node ({info.node_mem_gb:.0f} GB); "
                    f"Slurm will refuse them: use a partition with bigger nodes (--partition) or lower --mem_gb")
        if not info.has_gpus and any(t.resources and any(s in FORWARD_STATS for s in t.stats) for t in tasks):
            say("note: the cluster reports no GPUs; forward-pass statistics will run on CPUs")
    elif not slurm:
        limit = local_mem_gb()
        big = [t for t in tasks if t.resources and t.resources.mem_gb > limit]
        if big:
            say(f"warning: {len(big)} pair(s) are estimated to need more than this machine's {limit:.0f} GB; "
                f"they may run out of memory (first: {big[0].pair.label}, {big[0].resources.mem_gb} GB)")


def _write_report(out: Path, say: Callable) -> None:
    try:
        from . import report
        report.write_report(out)
        say(f"report: {_rel(out)}")
    except Exception as e:  # noqa: BLE001 - a report problem never fails the run
        say(f"warning: could not write the report ({type(e).__name__}: {_first_line(str(e))[:200]})")
