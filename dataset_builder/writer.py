"""Sharded, resumable, atomic parquet writing (the job engine shared by ``build`` and ``synthetic``).

Layout of an output folder::

    README.md                         dataset card (YAML metadata + counts + builder configuration)
    builder_config.json               per split: the (secret-free) configuration and its fingerprint
    data/<split>-00000-of-00012.parquet   one file per *unit* (``shard_size`` consecutive inputs)
    stats/<split>-00000-of-00012.json     counts of that unit (written just before its parquet)

Inputs are cut into units in their deterministic order; ``--shard i/N`` takes the units ``g`` with
``g % N == i`` (``g`` counts the units of all splits), so N processes or machines split a job
without talking to each other, and the result does not depend on N. A unit is written to a hidden
temporary file naming its process (``.<name>.parquet.<pid>@<host>.<token>.tmp``,
:func:`mtcolor.locks.temporary_path`), fsynced and renamed when complete: a finished unit's file
either exists whole or not at all. Re-running skips units whose file exists, so a killed run loses
only the units in flight and rows are never duplicated; the temporaries of dead processes are
removed when the folder is opened again.

One process per shard: a run holds ``.mtcolor-shard-<i>-of-<N>.lock`` in the output folder
(:func:`mtcolor.locks.lock_folder`), so a second run of the same shard on a folder a live run is
writing refuses to start (naming its pid), while the lock of a killed run is taken over. Worker
processes (``num_proc > 1``) end when the main process is gone.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mtcolor.locks import (
    FolderLock,
    atomic_write_bytes,
    exit_with_parent,
    fsync_directory,
    lock_folder,
    remove_dead_temporaries,
    temporary_path,
)

from .sources import SourceItem

logger = logging.getLogger(__name__)
COUNTER_KEYS = (
    "dropped_instances",
    "verification",
    "instance_captioners",
    "global_captioners",
    "caption_problems",
)


@dataclass(frozen=True)
class Unit:
    """A run of consecutive items of one split, written as one parquet file."""

    split: str
    index: int
    count: int
    items: tuple[SourceItem, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}"


@dataclass
class ItemResult:
    """What processing one item gave: an encoded ``row`` or a ``skip_reason`` (+ ``skip_detail``), and
    counters (keys of :data:`COUNTER_KEYS`)."""

    id: str
    row: dict | None = None
    skip_reason: str | None = None
    skip_detail: str = ""
    counters: dict[str, Counter] = field(default_factory=dict)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        index, total = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard={text!r}; expected 'i/N' with integers, e.g. 0/4.") from None
    if total < 1 or not 0 <= index < total:
        raise ValueError(f"shard={text!r}; expected 0 <= i < N.")
    return index, total


def plan_units(items_by_split: dict[str, list[SourceItem]], shard_size: int) -> list[Unit]:
    """Cut each split's items (in order) into units of ``shard_size``; splits in the given order."""
    units = []
    for split, items in items_by_split.items():
        count = max(1, -(-len(items) // shard_size)) if items else 0
        for index in range(count):
            chunk = tuple(items[index * shard_size : (index + 1) * shard_size])
            units.append(Unit(split, index, count, chunk))
    return units


def select_units(units: list[Unit], shard: tuple[int, int]) -> list[Unit]:
    """The units of process ``shard = (i, N)``: every N-th unit starting at i."""
    index, total = shard
    return [u for g, u in enumerate(units) if g % total == index]


def merge_counters(target: dict, counters: dict) -> None:
    for key, counter in counters.items():
        target.setdefault(key, Counter()).update(counter)


class DatasetWriter:
    """Files of one output folder: completion tests, atomic unit writes, configs, statistics."""

    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir)
        self.data_dir = self.root / "data"
        self.stats_dir = self.root / "stats"
        for folder in (self.root, self.data_dir, self.stats_dir):
            if folder.exists() and not folder.is_dir():
                raise ValueError(
                    f"output_dir {str(self.root)!r}: {str(folder)!r} is a file, not a folder; pass a folder "
                    "(new or written by the builder) as output_dir."
                )
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.stats_dir.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError) as error:  # a parent of output_dir is a file
            raise ValueError(
                f"output_dir {str(self.root)!r} cannot be created ({error.strerror}: {error.filename!r}); pass "
                "a folder path whose parents are folders."
            ) from None
        for folder in (self.root, self.data_dir, self.stats_dir):  # left by killed runs
            for stale in remove_dead_temporaries(folder):
                logger.info(f"removed {stale}, a temporary file of a killed run")

    def lock(self, shard: tuple[int, int] = (0, 1)) -> FolderLock:
        """Hold the lock of ``shard`` of this folder (re-entrant in one process; a context manager).

        Raises :class:`mtcolor.locks.FolderLockedError` naming the pid when a live process holds it.
        """
        index, total = shard
        return lock_folder(self.root, f".mtcolor-shard-{index}-of-{total}.lock")

    def shard_path(self, unit: Unit) -> Path:
        return self.data_dir / f"{unit.name}.parquet"

    def is_done(self, unit: Unit) -> bool:
        """A unit is done when its parquet exists, or, for a unit whose every input was skipped (no
        parquet is written: readers choke on empty files), when its stats file says 0 images."""
        if self.shard_path(unit).is_file():
            return True
        stats = self.stats_dir / f"{unit.name}.json"
        return stats.is_file() and json.loads(stats.read_text(encoding="utf-8")).get("images", -1) == 0

    def atomic_write_bytes(self, path: Path, data: bytes) -> None:
        """Write ``path`` whole or not at all (:func:`mtcolor.locks.atomic_write_bytes`)."""
        atomic_write_bytes(path, data)

    def write_unit(self, unit: Unit, rows: list[dict], stats: dict) -> Path:
        """Write ``rows`` (encoded records) of ``unit`` atomically, its stats first (a unit without
        rows is complete with its stats file alone)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from mtcolor.records import FEATURES

        self.atomic_write_bytes(
            self.stats_dir / f"{unit.name}.json", json.dumps(stats, indent=1, sort_keys=True).encode()
        )
        final = self.shard_path(unit)
        if not rows:
            return final
        tmp = temporary_path(final)
        try:
            table = pa.Table.from_pylist(rows, schema=FEATURES.arrow_schema)
            pq.write_table(table, tmp, row_group_size=64)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_directory(self.data_dir)
        remove_dead_temporaries(self.data_dir, name=final.name)  # left by killed runs of this unit
        return final

    # --------------------------------------------------------------------------- configurations
    @property
    def config_path(self) -> Path:
        return self.root / "builder_config.json"

    def read_configs(self) -> dict:
        if not self.config_path.is_file():
            return {}
        return json.loads(self.config_path.read_text(encoding="utf-8"))

    def register(self, splits: dict[str, dict], overwrite: bool = False) -> None:
        """Record each split's job description ({"fingerprint", "config", "units", "items", ...}).

        A split already recorded with a different fingerprint raises ``ValueError`` (its shards
        came from another configuration) unless ``overwrite``, which deletes that split's shards.
        """
        configs = self.read_configs()
        for split, record in splits.items():
            old = configs.get(split)
            if old is not None and old.get("fingerprint") != record["fingerprint"]:
                if not overwrite:
                    raise ValueError(
                        f"{str(self.root)!r} already holds split {split!r} built with another configuration "
                        f"(fingerprint {old.get('fingerprint')} != {record['fingerprint']}); use a new output "
                        "folder, or --overwrite to delete that split's shards and rebuild it."
                    )
                for path in list(self.data_dir.glob(f"{split}-*.parquet")) + list(
                    self.stats_dir.glob(f"{split}-*.json")
                ):
                    path.unlink()
            configs[split] = record
        self.atomic_write_bytes(
            self.config_path, json.dumps(configs, indent=1, sort_keys=True, default=str).encode()
        )

    def collect_stats(self) -> dict[str, dict]:
        """Per split: sums over finished units (a stats file counts only if its parquet exists or it
        reports 0 images)."""
        totals: dict[str, dict] = {}
        for path in sorted(self.stats_dir.glob("*.json")):
            stats = json.loads(path.read_text(encoding="utf-8"))
            if stats.get("images") != 0 and not (self.data_dir / f"{path.stem}.parquet").is_file():
                continue
            total = totals.setdefault(
                stats["split"],
                {
                    "units_done": 0,
                    "items": 0,
                    "images": 0,
                    "instances": 0,
                    "skipped": Counter(),
                    "skip_examples": [],
                    "seconds": 0.0,
                },
            )
            total["units_done"] += 1
            for key in ("items", "images", "instances", "seconds"):
                total[key] += stats.get(key, 0)
            total["skipped"].update(stats.get("skipped", {}))
            total["skip_examples"] = (total["skip_examples"] + stats.get("skip_examples", []))[:10]
            for key in COUNTER_KEYS:
                total.setdefault(key, Counter()).update(stats.get(key, {}))
        return totals


def _init_worker(
    factory: Callable[[], Callable[[SourceItem], ItemResult]], parent_pid: int | None = None
) -> None:
    """Worker start-up: end with the main process (killed or not), one torch thread, the processor."""
    global _PROCESSOR
    if parent_pid is not None:
        exit_with_parent(parent_pid)
    import torch

    torch.set_num_threads(1)
    _PROCESSOR = factory()


def _run_item(item: SourceItem) -> ItemResult:
    return _PROCESSOR(item)


_PROCESSOR = None


@contextlib.contextmanager
def _single_threaded_children():
    """One OpenMP/BLAS thread per worker process (unless the user set it): N workers on N cores
    must not each start N threads."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    added = [n for n in names if n not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _ordered(executor: ProcessPoolExecutor, items: Iterable[SourceItem], window: int) -> Iterator[ItemResult]:
    """``executor.map`` with at most ``window`` items in flight (bounded memory), results in order."""
    iterator = iter(items)
    pending = deque(executor.submit(_run_item, item) for _, item in zip(range(window), iterator))
    while pending:
        result = pending.popleft().result()
        following = next(iterator, None)
        if following is not None:
            pending.append(executor.submit(_run_item, following))
        yield result


@dataclass
class JobReport:
    """What one ``run_units`` call did."""

    units_total: int
    units_assigned: int
    units_skipped_done: int
    units_written: int
    images: int
    skipped: Counter
    seconds: float
    startup_seconds: float = 0.0  # until the first result (includes starting the workers)


def run_units(
    writer: DatasetWriter,
    units: list[Unit],
    factory: Callable[[], Callable[[SourceItem], ItemResult]],
    shard: tuple[int, int] = (0, 1),
    num_proc: int = 1,
    progress: bool = True,
    description: str = "building",
) -> JobReport:
    """Process and write the units of ``shard`` that are not finished yet.

    Args:
        factory: picklable callable returning the per-item processor (called once per worker
            process, or once in this process when ``num_proc == 1``).
        num_proc: worker processes (spawned, one torch thread each) for the per-item work; rows stay
            in input order, so the output does not depend on ``num_proc``; they end when this
            process does.

    Holds the shard's lock (:meth:`DatasetWriter.lock`) while it runs.
    """
    if num_proc < 1:
        raise ValueError(f"num_proc={num_proc}; expected >= 1.")
    with writer.lock(shard):
        return _run_units(writer, units, factory, shard, num_proc, progress, description)


def _run_units(writer, units, factory, shard, num_proc, progress, description) -> JobReport:
    """:func:`run_units` while holding the shard's lock."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    mine = select_units(units, shard)
    todo = [u for u in mine if not writer.is_done(u)]
    report = JobReport(len(units), len(mine), len(mine) - len(todo), 0, 0, Counter(), 0.0)
    if not todo:
        report.seconds = time.perf_counter() - start
        return report
    items = [item for unit in todo for item in unit.items]
    bar = tqdm(total=len(items), desc=description, unit="img", disable=not progress, dynamic_ncols=True)
    executor = None
    try:
        if num_proc == 1:
            processor = factory()
            results: Iterator[ItemResult] = map(processor, items)
        else:
            import multiprocessing

            executor = ProcessPoolExecutor(
                num_proc,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(factory, os.getpid()),
            )
            ordered = _ordered(executor, items, window=4 * num_proc)
            with _single_threaded_children():  # workers start with the first submissions
                first = next(ordered)
            results = itertools.chain([first], ordered)
        for unit in todo:
            unit_start = time.perf_counter()
            rows, skipped, examples, counters = [], Counter(), [], {}
            for _ in unit.items:
                result = next(results)
                if not report.startup_seconds:
                    report.startup_seconds = time.perf_counter() - start
                if result.row is not None:
                    rows.append(result.row)
                else:
                    skipped[result.skip_reason] += 1
                    if len(examples) < 5:
                        examples.append([result.id, result.skip_reason, result.skip_detail[:300]])
                merge_counters(counters, result.counters)
                bar.update(1)
                if skipped:
                    bar.set_postfix(
                        skipped=sum(skipped.values()) + sum(report.skipped.values()), refresh=False
                    )
            stats = {
                "unit": unit.name,
                "split": unit.split,
                "items": len(unit.items),
                "images": len(rows),
                "instances": sum(len(r["masks"]) for r in rows),
                "skipped": dict(skipped),
                "skip_examples": examples,
                "seconds": round(time.perf_counter() - unit_start, 3),
                **{k: dict(v) for k, v in counters.items()},
            }
            writer.write_unit(unit, rows, stats)
            report.units_written += 1
            report.images += len(rows)
            report.skipped.update(skipped)
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    report.seconds = time.perf_counter() - start
    return report
