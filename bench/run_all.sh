#!/usr/bin/env bash
# Every benchmark with its defaults, one after the other (about 3 hours on 2 cores; ~55 GB of
# synthetic checkpoints and cached cost matrices under $BENCH_WORKDIR, default /tmp/model-tracing-bench).
# Tables are printed and appended to bench/results/<name>.md (raw records: <name>.jsonl).
# Extra arguments (e.g. --cleanup, which deletes each benchmark's synthetic files at its end) go to every script.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m bench.bench_cos "$@"
python -m bench.bench_70b_block "$@"
python -m bench.bench_assignment "$@"
python -m bench.bench_screen "$@"
python -m bench.bench_eval "$@"
python -m bench.bench_gguf "$@"
python -m bench.bench_index "$@"
