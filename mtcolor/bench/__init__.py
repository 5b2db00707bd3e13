"""Library-only benchmarks and the timing helpers every benchmark shares.

Each benchmark module defines ``main(argv) -> int`` and prints ratios measured in one run (never
asserted in tests). The ones here time library code only (``attention``: the masked attention
kernels, ``step``: one denoising step with the adapter installed); benchmarks that run pipelines,
trainers or the dataset builder live in the top-level ``benchmarks`` package (``ablations``,
``sampling``, ``lcoins``, ``training``, ``dataset``). Run any of them with
``python -m mtcolor.bench NAME`` or ``mtcolor bench NAME`` (the command line finds both packages:
:mod:`mtcolor.cli.bench`).
"""

from __future__ import annotations

import resource
import statistics
import time

import torch


def median_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def machine_line() -> str:
    """``torch <version>, <threads> threads, device cpu``: the line each report starts with."""
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu"
