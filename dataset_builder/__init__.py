"""dataset_builder: GPT-Color-style instance colorization data from image collections.

Stages (each a plain function or class, with ``python -m mtcolor.dataset_builder`` around them): sources
(:mod:`.sources`) -> segmenters (:mod:`.segmenters`) -> colour measurement (:mod:`.colors`) ->
captioners and their fallback chain (:mod:`.captioners`) -> verification (:mod:`.verification`) ->
sharded, resumable parquet writing (:mod:`.writer`, :mod:`.build`) and the dataset card
(:mod:`.card`). :mod:`.synthetic` generates scenes with exact masks and known colours; :mod:`.stats`
summarises a dataset. The record format is :mod:`mtcolor.records`; see ``docs/dataset.md``.
"""
