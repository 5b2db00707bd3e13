"""``python -m mtcolor.bench NAME [args]``: run one benchmark module of this package."""

import sys

from mtcolor.bench import run_benchmark

sys.exit(run_benchmark(sys.argv[1:]))
