"""``mtcolor bench NAME [args]``: run a benchmark.

Benchmarks are the modules of :mod:`mtcolor.bench` (library code only: ``attention``, ``step``) and
of the top-level ``benchmarks`` package (pipelines, trainers, the dataset builder: ``ablations``,
``sampling``, ``lcoins``, ``training``, ``dataset``); each defines ``main(argv) -> int``.
``python -m mtcolor.bench NAME`` forwards here. The command line may reach up to ``benchmarks``
(inside functions; ``tests/test_import_contract.py``).
"""

from __future__ import annotations

import argparse

#: packages searched for benchmark modules, in order
BENCHMARK_PACKAGES = ("mtcolor.bench", "mtcolor.benchmarks")


def available() -> dict[str, str]:
    """``{benchmark name: module path}`` over :data:`BENCHMARK_PACKAGES`, sorted by name."""
    import importlib
    import pkgutil

    found: dict[str, str] = {}
    for package in BENCHMARK_PACKAGES:
        try:
            module = importlib.import_module(package)
        except ModuleNotFoundError as error:
            if error.name != package:
                raise
            continue
        for info in pkgutil.iter_modules(module.__path__):
            if not info.name.startswith("_"):
                found.setdefault(info.name, f"{package}.{info.name}")
    return dict(sorted(found.items()))


def run_benchmark(argv: list[str]) -> int:
    """Run ``argv[0]``'s ``main(argv[1:])``; print the usage (exit 2) for an unknown name."""
    import importlib

    names = available()
    if not argv or argv[0] not in names:
        print(f"usage: python -m mtcolor.bench NAME [args]; NAME is one of: {', '.join(names)}")
        return 2
    module = importlib.import_module(names[argv[0]])
    return int(module.main(argv[1:]) or 0)


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help="run a benchmark (prints ratios measured in one run)")
    parser.add_argument("name", help="benchmark name (a module of mtcolor.bench or benchmarks)")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    return parser


def run(args: argparse.Namespace) -> int:
    return run_benchmark([args.name, *args.rest])
