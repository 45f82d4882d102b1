"""Benchmarks of model-tracing; run each from the repository root as a module, e.g. ``python -m bench.bench_cos``
(bench/README.md lists them)."""
