"""``python -m mtcolor.bench NAME [args]``: a thin forwarder to the command line's benchmark runner
(:func:`mtcolor.cli.bench.run_benchmark`, which finds library and application benchmarks)."""

import sys

from mtcolor.cli.bench import run_benchmark

sys.exit(run_benchmark(sys.argv[1:]))
