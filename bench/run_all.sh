#!/usr/bin/env bash
# Every benchmark with its defaults, one after the other (about 3 hours on 2 cores; ~55 GB of
# synthetic checkpoints and cached cost matrices under $BENCH_WORKDIR, default /tmp/model-tracing-bench).
# Tables are printed and appended to bench/results/<name>.md (raw records: <name>.jsonl).
# Extra arguments (e.g. --cleanup, which deletes each benchmark's synthetic files at its end) go to every script.
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/bench_cos.py "$@"
python bench/bench_70b_block.py "$@"
python bench/bench_assignment.py "$@"
python bench/bench_eval.py "$@"
python bench/bench_gguf.py "$@"
python bench/bench_index.py "$@"
