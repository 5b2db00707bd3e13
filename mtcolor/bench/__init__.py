"""Benchmarks. Each module ``mtcolor.bench.<name>`` defines ``main(argv) -> int`` and prints ratios
measured in one run (never asserted in tests). Run with ``python -m mtcolor.bench <name>`` or
``mtcolor bench <name>``."""

from __future__ import annotations

import importlib
import pkgutil


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run_benchmark(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] not in names:
        print(f"usage: python -m mtcolor.bench NAME [args]; NAME is one of: {', '.join(names)}")
        return 2
    module = importlib.import_module(f"{__name__}.{argv[0]}")
    return int(module.main(argv[1:]) or 0)
