"""``mtcolor bench NAME [args]``: run a benchmark from :mod:`mtcolor.bench`."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help="run a benchmark (prints ratios measured in one run)")
    parser.add_argument("name", help="benchmark module name in mtcolor.bench")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    return parser


def run(args: argparse.Namespace) -> int:
    from mtcolor.bench import run_benchmark

    return run_benchmark([args.name, *args.rest])
