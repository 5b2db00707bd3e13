"""mtcolor.locks: folder locks between processes, exit with the parent, temporaries of dead runs."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mtcolor.locks import (
    LOCK_NAME,
    FolderLockedError,
    lock_folder,
    pid_alive,
    remove_dead_temporaries,
    temporary_path,
    unlock_folder,
)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> str:
    """Bounded poll until the child wrote ``path`` (its readiness signal); fails if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text():
            return path.read_text()
        if process.poll() is not None:
            raise AssertionError(f"child exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"{path} not written within {timeout} s")


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (orphans may be reaped late in containers). A
    main thread that has exited shows as a zombie while other threads are still being torn down
    (holding the process's files and locks): that still counts as running."""
    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def wait_until_gone(pid: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.02)
    return False


HOLDER = """
import os, signal, sys
from mtcolor.locks import lock_folder
lock_folder(sys.argv[1], use_flock=sys.argv[3] == "flock")
open(sys.argv[2], "w").write(str(os.getpid()))
if sys.argv[4] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()  # hold the lock until the test closes stdin
"""


def start_holder(folder: Path, ready: Path, mode: str, end: str = "hold") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(ready), mode, end],
        env=ENV,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("mode", ["flock", "pidfile"])
def test_a_folder_held_by_a_live_process_is_refused_naming_its_pid(tmp_path, mode):
    folder = tmp_path / "out"
    holder = start_holder(folder, tmp_path / "ready", mode)
    try:
        pid = int(wait_for_file(tmp_path / "ready", holder))
        with pytest.raises(FolderLockedError) as caught:
            lock_folder(folder, use_flock=mode == "flock")
        message = str(caught.value)
        assert f"{str(folder)!r} is in use by process {pid}" in message and f"kill {pid}" in message
        assert caught.value.holder["pid"] == pid
    finally:
        holder.communicate("")  # closing stdin ends the holder normally (it releases the lock at exit)
    assert holder.returncode == 0
    assert not (folder / LOCK_NAME).exists()  # released and removed
    with lock_folder(folder, use_flock=mode == "flock") as lock:
        assert lock.took_over is None


@pytest.mark.parametrize("mode", ["flock", "pidfile"])
def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, mode):
    folder = tmp_path / "out"
    holder = start_holder(folder, tmp_path / "ready", mode, end="die")
    holder.communicate("")
    assert holder.returncode == -signal.SIGKILL
    dead = int((tmp_path / "ready").read_text())
    assert (folder / LOCK_NAME).is_file()  # left behind by the SIGKILL
    lock = lock_folder(folder, use_flock=mode == "flock")
    try:
        assert lock.took_over["pid"] == dead
    finally:
        unlock_folder(lock)
    assert not (folder / LOCK_NAME).exists()


def test_lock_is_reentrant_in_one_process_and_refuses_files(tmp_path):
    first = lock_folder(tmp_path / "out")
    second = lock_folder(tmp_path / "out")
    assert first is second and (tmp_path / "out" / LOCK_NAME).is_file()
    unlock_folder(second)
    assert (tmp_path / "out" / LOCK_NAME).is_file()  # still held once
    unlock_folder(first)
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        lock_folder(tmp_path / "file")


PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]], stderr=subprocess.DEVNULL)
sys.stdin.read()  # wait until killed
"""

CHILD = """
import os, sys, threading
from mtcolor.locks import exit_with_parent
exit_with_parent(os.getppid(), use_prctl=sys.argv[2] == "prctl", poll_seconds=0.05)
open(sys.argv[1], "w").write(str(os.getpid()))
threading.Event().wait()  # a busy worker: never returns by itself
"""


@pytest.mark.parametrize("mechanism", ["prctl", "watchdog"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_child_exits_when_its_parent_is_killed(tmp_path, mechanism, sig):
    if mechanism == "prctl" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(tmp_path / "child.pid"), mechanism],
        env=ENV,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    child = int(wait_for_file(tmp_path / "child.pid", parent))
    assert running(child)
    parent.send_signal(sig)
    parent.wait()
    try:
        assert wait_until_gone(child), f"child {child} outlived its parent"
    finally:
        if running(child):
            os.kill(child, signal.SIGKILL)


def test_remove_dead_temporaries_keeps_live_and_foreign_ones(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    assert not pid_alive(dead_pid)
    host = socket.gethostname()
    names = {
        "dead": f".out.png.{dead_pid}@{host}.00ff.tmp",
        "legacy_dead": f".train-00000-of-00001.json.tmp-{host}-{dead_pid}",
        "live": f".out.png.{os.getppid()}@{host}.00ff.tmp",
        "other_host": f".out.png.{dead_pid}@elsewhere-{host}.00ff.tmp",
        "other_name": f".other.png.{dead_pid}@{host}.00ff.tmp",
        "unrelated": ".out.png.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    removed = remove_dead_temporaries(tmp_path, name="out.png")
    assert sorted(p.name for p in removed) == [names["dead"]]
    removed = remove_dead_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["legacy_dead"], names["other_name"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["live"], names["other_host"], names["unrelated"]]
    )
    mine = temporary_path(tmp_path / "out.png")
    mine.write_bytes(b"x")
    assert remove_dead_temporaries(tmp_path) == [] and mine.exists()  # this process is alive
