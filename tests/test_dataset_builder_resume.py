"""dataset_builder jobs as processes: sharding without coordination, SIGKILL at chosen points and exact
resumption, one live run per shard (the folder lock), workers that end with the main process."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mtcolor.dataset_builder.build import build
from mtcolor.dataset_builder.config import BuildConfig
from mtcolor.dataset_builder.writer import plan_units, select_units

from mtcolor.records import load_records

ROOT = Path(__file__).resolve().parents[1]


def _read_rows(out_dir):
    rows = {}
    for path in sorted(Path(out_dir, "data").glob("*.parquet")):
        rows[path.name] = pq.read_table(path).to_pylist()
    return rows


# ------------------------------------------------------------------------------------ sharding
def test_shard_selection_partitions_units_exactly():
    items = {"train": [f"t{i}" for i in range(23)], "test": [f"v{i}" for i in range(7)]}
    units = plan_units(items, shard_size=4)
    for total in (1, 2, 3, 5, 11):
        parts = [select_units(units, (i, total)) for i in range(total)]
        names = [u.name for part in parts for u in part]
        assert sorted(names) == sorted(u.name for u in units) and len(names) == len(set(names))
        ids = [item for part in parts for u in part for item in u.items]
        assert sorted(ids) == sorted(items["train"] + items["test"])


def _synthetic_config(out_dir, num_images=12, shard_size=2):
    return BuildConfig.from_dict(
        {
            "output_dir": str(out_dir),
            "source": {
                "type": "synthetic",
                "num_images": num_images,
                "seed": 3,
                "config": {"image_size": 32},
            },
            "captioners": [{"type": "rule"}],
            "shard_size": shard_size,
            "test_fraction": 0.25,
        }
    )


def test_shard_runs_split_the_job_without_coordination(tmp_path):
    for i in range(3):
        report = build(_synthetic_config(tmp_path / "split"), shard=f"{i}/3", progress=False)
        assert report.units_written == report.units_assigned
    build(_synthetic_config(tmp_path / "whole"), progress=False)
    split_rows, whole_rows = _read_rows(tmp_path / "split"), _read_rows(tmp_path / "whole")
    assert split_rows == whole_rows  # same files, same rows
    ids = [r["id"] for rows in split_rows.values() for r in rows]
    assert len(ids) == len(set(ids)) == 12
    card = (tmp_path / "split" / "README.md").read_text()
    assert "Complete." in card
    # re-running never duplicates rows
    again = build(_synthetic_config(tmp_path / "split"), progress=False)
    assert again.units_written == 0 and again.units_skipped_done == again.units_total
    assert _read_rows(tmp_path / "split") == whole_rows
    with pytest.raises(ValueError, match="another configuration"):
        build(_synthetic_config(tmp_path / "split", num_images=13), progress=False)


KILL_AT = """
import os, signal, sys
from pathlib import Path

import mtcolor.dataset_builder.build as build_module

where, number = os.environ["MTCOLOR_TEST_KILL_AT"].split(":")
number, seen = int(number), {"data": 0, "stats": 0, "committed": 0}


def count_and_maybe_die(kind):
    seen[kind] += 1
    if kind == where and seen[kind] == number:
        os.kill(os.getpid(), signal.SIGKILL)


real_replace = os.replace


def replace(src, dst, *args, **kwargs):  # a unit's temporary (data/ or stats/) is complete, not renamed
    kind = Path(os.fspath(dst)).parent.name
    if kind in ("data", "stats"):
        count_and_maybe_die(kind)
    return real_replace(src, dst, *args, **kwargs)


real_write_unit = build_module.DatasetWriter.write_unit


def write_unit(self, *args, **kwargs):  # the unit is renamed into place (committed)
    path = real_write_unit(self, *args, **kwargs)
    count_and_maybe_die("committed")
    return path


os.replace = replace
build_module.DatasetWriter.write_unit = write_unit
from mtcolor.dataset_builder.__main__ import main

sys.exit(main(sys.argv[1:]))
"""


def _run_killed_build(config, config_path: Path, kill_at: str) -> None:
    """``python -m mtcolor.dataset_builder build`` in a child that SIGKILLs itself at ``kill_at``: ``"data:N"`` /
    ``"stats:N"`` when the N-th parquet / stats temporary is written and fsynced but not renamed,
    ``"committed:N"`` right after the N-th unit is renamed into place. Deterministic: no timing."""
    config_path.write_text(yaml.safe_dump({k: v for k, v in config.__dict__.items()}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MTCOLOR_TEST_KILL_AT": kill_at}
    done = subprocess.run(
        [sys.executable, "-c", KILL_AT, "build", "--config", str(config_path), "--no_progress"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def _files(out_dir: Path) -> dict[str, bytes | dict]:
    """data/*.parquet as bytes and stats/*.json without their wall time, by relative path."""
    files: dict[str, bytes | dict] = {}
    for path in sorted(out_dir.glob("data/*.parquet")):
        files[f"data/{path.name}"] = path.read_bytes()
    for path in sorted(out_dir.glob("stats/*.json")):
        stats = json.loads(path.read_text())
        stats.pop("seconds")
        files[f"stats/{path.name}"] = stats
    return files


@pytest.fixture(scope="module")
def clean_build(tmp_path_factory) -> dict[str, bytes | dict]:
    """The files of an uninterrupted build of the job the kill tests interrupt."""
    out = tmp_path_factory.mktemp("clean")
    build(_synthetic_config(out, num_images=12, shard_size=3), progress=False)
    return _files(out)


@pytest.mark.parametrize(
    "kill_at, parquets_left, temporary_in",
    [("committed:2", 2, None), ("data:2", 1, "data"), ("stats:2", 1, "stats")],
)
def test_kill_and_resume_gives_the_same_dataset(tmp_path, clean_build, kill_at, parquets_left, temporary_in):
    """A build killed (SIGKILL, no clean-up) after a unit is committed, or while a unit's parquet or
    stats temporary is complete but not yet renamed, resumes to byte-identical shards, writes only the
    units that were not done, and leaves no temporary behind."""
    out = tmp_path / "killed"
    config = _synthetic_config(out, num_images=12, shard_size=3)
    _run_killed_build(config, tmp_path / "config.yaml", kill_at)
    done = sorted(p.name for p in (out / "data").glob("*.parquet"))
    assert len(done) == parquets_left
    for name in done:  # whatever exists is complete
        assert pq.read_table(out / "data" / name).num_rows == 3
    hidden = [p.name for p in out.rglob(".*") if not p.name.startswith(".mtcolor-shard-")]
    assert [p.parent.name for p in out.rglob(".*.tmp")] == ([temporary_in] if temporary_in else [])
    assert len(hidden) == (1 if temporary_in else 0), hidden
    report = build(config, progress=False)  # resume
    assert report.units_total == 4 and report.units_skipped_done == len(done)
    assert report.units_written == report.units_total - len(done)
    assert _files(out) == clean_build  # byte for byte
    assert not list(out.rglob(".*"))  # the dead run's temporary and lock are gone


# ------------------------------------------------------------------------------------ process safety
BLOCKING_PLUGIN = '''
import os
import threading

from mtcolor.dataset_builder.segmenters import Segmenter


class BlockingSegmenter(Segmenter):
    """Says "ready <pid>" on stdout (the builder's, which its workers inherit), then never returns:
    a worker busy on a slow image."""

    name = "blocking"

    def segment(self, image, annotations):
        # one write per line: workers share the pipe, and print() may write its pieces separately
        os.write(1, f"ready {os.getpid()}\\n".encode())
        threading.Event().wait()
'''


def test_builder_lock_and_workers_end_with_a_killed_main_process(tmp_path, capsys):
    """A `--num_proc 2` build busy in its workers: a second run on the folder refuses to start (naming
    the live pid) instead of running beside it; SIGKILL of the main process ends both workers; the
    next run takes the dead run's lock over and finishes."""
    from mtcolor.dataset_builder.__main__ import main as builder_main
    from test_locks import read_ready, running, wait_for_eof

    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "blocking_plugin.py").write_text(BLOCKING_PLUGIN)
    out = tmp_path / "out"
    config = _synthetic_config(out, num_images=8, shard_size=2)
    blocking = {k: v for k, v in config.__dict__.items()}
    blocking["segmenter"] = {"type": "blocking_plugin:BlockingSegmenter"}
    (tmp_path / "blocking.yaml").write_text(yaml.safe_dump(blocking))
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump({k: v for k, v in config.__dict__.items()}))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path / "plugin")]),
        "OMP_NUM_THREADS": "1",
    }
    # the workers inherit stdout: its end of file says the builder and its workers are gone
    build = [sys.executable, "-m", "mtcolor.dataset_builder", "build", "--num_proc", "2", "--no_progress"]
    main = subprocess.Popen(
        [*build, "--config", str(tmp_path / "blocking.yaml")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    workers = []
    try:
        workers = read_ready(main, 2, timeout=300)
        assert main.pid not in workers and all(running(pid) for pid in workers)

        # 1. a second run (even with --overwrite, which would delete the live run's shards) is refused
        code = builder_main(
            ["build", "--config", str(tmp_path / "plain.yaml"), "--overwrite", "--no_progress"]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        (line,) = [line for line in err.splitlines() if line.startswith("error:")]
        assert f"{str(out)!r} is in use by process {main.pid}" in line

        # 2. SIGKILL of the main process ends its workers
        main.send_signal(signal.SIGKILL)
        main.wait()
        assert wait_for_eof(main.stdout), (
            f"workers {[p for p in workers if running(p)]} outlived the killed builder"
        )
    finally:
        for pid in [main.pid, *workers]:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        main.wait()
        main.stderr.close()
        main.stdout.close()

    # 3. the next run takes the dead run's lock over and completes
    code = builder_main(["build", "--config", str(tmp_path / "plain.yaml"), "--overwrite", "--no_progress"])
    assert code == 0, capsys.readouterr().err
    assert len(load_records(out, "train")) + len(load_records(out, "test")) == 8
    assert not [p for p in out.rglob(".*")]  # no lock or temporary file left


def test_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    from mtcolor.dataset_builder.__main__ import main as builder_main

    (tmp_path / "taken").write_text("a file")
    config = _synthetic_config(tmp_path / "unused")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in config.__dict__.items()}))
    for target in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        code = builder_main(["build", "--config", str(tmp_path / "config.yaml"), "--output_dir", str(target)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        (line,) = [line for line in err.splitlines() if line.startswith("error:")]
        assert f"output_dir {str(target)!r}" in line and "a folder" in line


def test_synthetic_build_refuses_a_held_shard_before_touching_the_folder(tmp_path):
    """``build_synthetic`` takes the shard lock before it records its split: with ``overwrite``,
    recording deletes the split's shards, which the live holder may be writing."""
    from mtcolor.dataset_builder.synthetic import build_synthetic

    from mtcolor.locks import FolderLockedError
    from mtcolor.synthetic import SyntheticConfig

    out = tmp_path / "synthetic"
    config = SyntheticConfig(image_size=32)
    build_synthetic(out, 4, config, seed=0, progress=False)
    before = {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "lock" not in p.name}
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from mtcolor.dataset_builder.writer import DatasetWriter\n"
                f"with DatasetWriter({str(out)!r}).lock((0, 1)):\n"
                "    print('held', flush=True); sys.stdin.read()"
            ),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"  # blocks until the child holds the lock
        with pytest.raises(FolderLockedError, match=f"process {holder.pid}"):
            build_synthetic(out, 4, config, seed=1, progress=False, overwrite=True)
    finally:
        holder.communicate("")
    after = {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "lock" not in p.name}
    assert after == before  # neither the recorded config nor a shard was touched
