#!/usr/bin/env python
"""Text samples from each model of a list, usable as evaluation data (--dataset generated).

    python generate.py config/model_list.yaml --num_samples 10 --max_new_tokens 512
    python generate.py --model_id demo:base-a --num_samples 4 --max_new_tokens 64
"""
import argparse
import sys

from tracing.cli_util import run_cli
from tracing.errors import TracingError


def parse(argv=None):
    p = argparse.ArgumentParser(description="Sample text from models (seeded) and save it as JSON.")
    p.add_argument("model_list", nargs="?", help="YAML model list (every model in it is sampled once)")
    p.add_argument("--model_id", action="append", default=[], help="a model (repeatable), instead of or besides a list")
    p.add_argument("--num_samples", type=int, default=10)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--out_dir", default="results/generated", help="where the JSON files go (default results/generated)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    from tracing.generation import generate_samples, save_samples
    models = list(args.model_id)
    if args.model_list:
        from tracing.launch import read_model_list
        for pair in read_model_list(args.model_list).pairs:
            models += [pair.base, pair.ft]
    models = list(dict.fromkeys(models))
    if not models:
        raise TracingError("no models given; pass a YAML model list or --model_id")
    for spec in models:
        samples = generate_samples(spec, args.num_samples, args.max_new_tokens, seed=args.seed,
                                   temperature=args.temperature, top_p=args.top_p, device=args.device,
                                   dtype=args.dtype, batch_size=args.batch_size, progress=not args.quiet)
        path = save_samples(samples, args.out_dir)
        print(f"{spec}: {len(samples['samples'])} samples in {samples['time']:.1f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
