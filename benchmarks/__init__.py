"""Benchmarks that run pipelines, trainers or the dataset builder (the application layer).

``ablations`` (the papers' ablation table on held-out synthetic scenes; trains the retrained rows
through ``mtcolor.training.recipes`` on demand), ``sampling`` (multi-instance sampling cost), ``lcoins``
(L-CoIns training step and inference), ``training`` (both MT-Color stages through the real
trainers) and ``dataset`` (dataset-builder throughput). Each module defines ``main(argv) -> int``
and prints ratios measured in one run. Run with ``python -m mtcolor.bench NAME``,
``mtcolor bench NAME`` or ``python -m mtcolor.benchmarks NAME``; library-only benchmarks (``attention``,
``step``) are in :mod:`mtcolor.bench`.
"""
