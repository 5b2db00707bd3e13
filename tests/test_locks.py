"""mtcolor.locks: folder locks between processes, exit with the parent, temporaries of dead runs."""

import os
import select
import signal
import socket
import subprocess
import sys
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


def read_ready(process: subprocess.Popen, count: int = 1, timeout: float = 60.0) -> list[int]:
    """The pids of the first ``count`` "ready <pid>" lines on the child's stdout (its readiness
    signal; other lines are skipped), read as soon as they are written; fails if every writer
    exits first or nothing arrives for ``timeout`` s (a bound on a hang, not a wait: the success
    path never sleeps). Reads the pipe unbuffered, so no line waits in a Python buffer."""
    fd, data = process.stdout.fileno(), b""
    while True:
        lines = data.split(b"\n")[:-1]
        pids = [int(line.split()[1]) for line in lines if line.startswith(b"ready ")]
        if len(pids) >= count:
            return pids[:count]
        ready, _, _ = select.select([fd], [], [], timeout)
        chunk = os.read(fd, 4096) if ready else None
        if not chunk:
            process.kill()
            what = "wrote nothing" if chunk is None else f"exited with {process.wait()}"
            raise AssertionError(f"child {what} (stdout {data[-500:]!r}): {process.stderr.read()[-2000:]}")
        data += chunk


def wait_for_eof(stream, timeout: float = 60.0) -> bool:
    """True when every writer of the pipe ``stream`` has exited (its end of file: a process's files
    close when it is gone), as soon as they have; False if one is still alive after ``timeout`` s."""
    while True:
        ready, _, _ = select.select([stream], [], [], timeout)
        if not ready:
            return False
        if not os.read(stream.fileno(), 4096):
            return True


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


HOLDER = """
import os, signal, sys
from mtcolor.locks import lock_folder
lock_folder(sys.argv[1], use_flock=sys.argv[2] == "flock")
print("ready", os.getpid(), flush=True)
if sys.argv[3] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()  # hold the lock until the test closes stdin
"""


def start_holder(folder: Path, mode: str, end: str = "hold") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), mode, end],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("mode", ["flock", "pidfile"])
def test_a_folder_held_by_a_live_process_is_refused_naming_its_pid(tmp_path, mode):
    folder = tmp_path / "out"
    holder = start_holder(folder, mode)
    try:
        (pid,) = read_ready(holder)
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
    holder = start_holder(folder, mode, end="die")
    out, _ = holder.communicate("")
    assert holder.returncode == -signal.SIGKILL
    dead = int(out.split()[1])
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
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stderr=subprocess.DEVNULL)
sys.stdin.read()  # wait until killed
"""

#: the child inherits the parent's stdout: once the parent is gone, the test's end of that pipe
#: reaches its end of file exactly when the child has exited
CHILD = """
import os, sys, threading
from mtcolor.locks import exit_with_parent
exit_with_parent(os.getppid(), use_prctl=sys.argv[1] == "prctl", poll_seconds=0.05)
print("ready", os.getpid(), flush=True)
threading.Event().wait()  # a busy worker: never returns by itself
"""


@pytest.mark.parametrize("mechanism", ["prctl", "watchdog"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_child_exits_when_its_parent_is_killed(mechanism, sig):
    if mechanism == "prctl" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, mechanism],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    (child,) = read_ready(parent)
    assert running(child)
    parent.send_signal(sig)
    parent.wait()
    try:
        assert wait_for_eof(parent.stdout), f"child {child} outlived its parent"
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
        "not_ours": f".train-00000-of-00001.json.tmp-{host}-{dead_pid}",
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
    assert sorted(p.name for p in removed) == [names["other_name"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["live"], names["other_host"], names["not_ours"], names["unrelated"]]
    )
    mine = temporary_path(tmp_path / "out.png")
    mine.write_bytes(b"x")
    assert remove_dead_temporaries(tmp_path) == [] and mine.exists()  # this process is alive
