"""``python -m mtcolor.benchmarks NAME [args]``: the same runner as ``mtcolor bench`` / ``python -m mtcolor.bench``."""

import sys

from mtcolor.cli.bench import run_benchmark

sys.exit(run_benchmark(sys.argv[1:]))
