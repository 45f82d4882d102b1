"""Fan every pair of a model list out as jobs: Slurm job arrays through submitit, or a bounded
pool of worker processes on this machine when there is no Slurm.

The phases of :func:`launch` (what ``python launch.py config/model_list.yaml`` runs), one module each:

1. read the model list (:mod:`.model_list`): a plain list (every unordered pair),
   ``{base_models, ft_models}`` (cross product) or ``{models_1, models_2, names_1?, names_2?}``
   (listed pairs), with optional ``stat``, ``options`` and ``resources`` keys;
2. choose where to run (:mod:`.probe`): Slurm only when a controller answers;
3. plan (:mod:`.tasks`, :mod:`tracing.results_folder`): every (pair, statistic) gets a deterministic result
   path; pairs whose results all exist with status ok are skipped, and pairs another launch into
   the same folder is computing are waited for (:mod:`.claims`);
4. download each hub model once and build the demo family (:mod:`.prefetch`), so jobs only read;
5. size every pair from the two configs and the statistics (:mod:`.sizing`, :mod:`.configs`);
6. run one job per pair (:mod:`.job`): Slurm job arrays grouped by identical resources and
   chunked under ``MaxArraySize`` (:mod:`.slurm`), or at most ``max_workers`` pairs at a time in
   worker processes that die with the launcher (:mod:`.local`);
7. summarise (:mod:`.console`) and write the report. A failed pair gets a ``status: failed``
   record per statistic and never stops the others; a timed-out or preempted Slurm job is
   requeued; a rerun retries only what is not done.

Only model ids, paths and option dicts go into a job, never tensors.
"""
from .claims import Claims
from .configs import ConfigUnavailable, ModelInfo, model_info
from .job import TEST_SLEEP_ENV, PairJob
from ..cli_util import model_slug
from ..fileio import check_out_folder
from ..results_folder import pair_dir, read_run_log, result_path, write_run_log
from .local import run_local
from .model_list import ModelList, Pair, build_options, is_hub_id, is_local_spec, parse_model_list, read_model_list
from .prefetch import prefetch
from .probe import (ClusterChoice, SlurmInfo, choose_cluster, default_max_workers, local_cores, local_mem_gb,
                    probe_slurm, slurm_info)
from .run import LaunchSettings, launch
from .cli import main
from .sizing import TIME_CAP_MIN, Resources, is_forward_stat, size_pair
from .slurm import chunked, group_by_resources, run_slurm, wait_for_foreign
from .tasks import Task, TaskState, make_tasks, size_tasks

__all__ = [
    "Claims", "ClusterChoice", "main", "ConfigUnavailable", "LaunchSettings", "ModelInfo", "ModelList", "Pair", "PairJob",
    "Resources", "SlurmInfo", "TEST_SLEEP_ENV", "TIME_CAP_MIN", "Task", "TaskState", "build_options",
    "check_out_folder", "choose_cluster", "chunked", "default_max_workers", "group_by_resources", "is_forward_stat",
    "is_hub_id", "is_local_spec", "launch", "local_cores", "local_mem_gb", "make_tasks", "model_info", "model_slug",
    "pair_dir", "parse_model_list", "prefetch", "probe_slurm", "read_model_list", "read_run_log",
    "result_path", "run_local", "run_slurm", "size_pair", "size_tasks", "slurm_info", "wait_for_foreign",
    "write_run_log",
]
