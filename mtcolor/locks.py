"""Process safety shared by the CLI, the trainers and the dataset builder (standard library only).

* :func:`lock_folder` / :class:`FolderLock`: one live writer per output folder. A second run on a
  folder held by a live process is refused with :class:`FolderLockedError` naming the holder's pid;
  the lock of a dead process (killed, even with SIGKILL) is taken over. On POSIX the lock is an
  ``flock`` on ``<folder>/.mtcolor.lock`` (the kernel drops it when the holder dies), elsewhere (or
  on a file system without ``flock``) a pid file whose holder is checked with :func:`pid_alive`.
* :func:`exit_with_parent`: make a worker or trainer end when the process that started it is gone
  (Linux ``prctl(PR_SET_PDEATHSIG)`` plus a portable watchdog thread comparing ``os.getppid()``).
* :func:`temporary_path`, :func:`atomic_write_bytes` and :func:`remove_dead_temporaries`: hidden
  temporary files named after the writing process (``.<name>.<pid>@<host>.<token>.tmp``), so the
  leftovers of a killed run are recognised and removed by the next one while the temporaries of
  live runs are kept.

The library never imports ``training/`` or ``dataset_builder/``; both import this module.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path

__all__ = [
    "LOCK_NAME",
    "FolderLock",
    "FolderLockedError",
    "atomic_write_bytes",
    "exit_with_parent",
    "exit_with_parent_if_launched",
    "launched_by_launcher",
    "lock_folder",
    "parent_gone",
    "pid_alive",
    "remove_dead_temporaries",
    "temporary_path",
]

#: File name of the lock inside a locked folder.
LOCK_NAME = ".mtcolor.lock"

#: Environment variables set by ``accelerate launch`` (both launchers) and ``torchrun`` in the
#: processes they start: a process started that way ends with its launcher.
LAUNCHER_VARIABLES = ("ACCELERATE_MIXED_PRECISION", "TORCHELASTIC_RUN_ID")
#: ``MTCOLOR_EXIT_WITH_PARENT=1`` forces :func:`exit_with_parent_if_launched` on, ``=0`` off.
EXIT_WITH_PARENT_VARIABLE = "MTCOLOR_EXIT_WITH_PARENT"


def _host() -> str:
    """This machine's name, safe inside a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "localhost"


# ================================================================================================
# processes
def pid_alive(pid: int) -> bool:
    """True when process ``pid`` of this machine exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    try:  # Linux: an unreaped zombie still answers kill(pid, 0)
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        if state not in ("Z", "X"):
            return True
        # the main thread has exited; the process is gone once its other threads are too (until
        # then it still holds its files and locks)
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except (OSError, IndexError):
        return True


_PARENT: dict[str, int] = {}
_WATCHDOG_LOCK = threading.Lock()


def _set_parent_death_signal(signal_number: int) -> bool:
    """Linux: ``prctl(PR_SET_PDEATHSIG, signal_number)`` via ctypes; False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signal_number), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _exit_orphaned(parent: int) -> None:
    os.write(2, f"[mtcolor] parent process {parent} is gone; process {os.getpid()} exits\n".encode())
    os._exit(128 + signal.SIGTERM)


def _watch_parent(parent: int, poll_seconds: float) -> None:
    wait = threading.Event().wait
    while True:
        wait(poll_seconds)
        if os.getppid() != parent:
            _exit_orphaned(parent)


def exit_with_parent(
    parent_pid: int | None = None, *, use_prctl: bool = True, poll_seconds: float = 1.0
) -> bool:
    """End this process when its parent ends (call it early in a worker or trainer).

    Two mechanisms, so it also works where one is missing: on Linux the kernel sends SIGTERM when
    the parent dies (``prctl(PR_SET_PDEATHSIG)``, set through ctypes); everywhere a daemon thread
    compares ``os.getppid()`` with ``parent_pid`` every ``poll_seconds`` and exits the process when
    it changed (an orphan is re-parented to init or a subreaper). Loops can also call
    :func:`parent_gone`.

    Args:
        parent_pid: the pid of the parent to follow (default: the current parent). Pass the pid the
            parent had when it started this process, so a parent that died before this call is
            noticed at once.
        use_prctl: also arm the Linux parent-death signal.
        poll_seconds: period of the watchdog thread.

    Returns:
        True when the kernel's parent-death signal is armed, False when only the watchdog runs.
    """
    parent = os.getppid() if parent_pid is None else int(parent_pid)
    armed = _set_parent_death_signal(signal.SIGTERM) if use_prctl else False
    if os.getppid() != parent:  # the parent died before the signal was armed
        _exit_orphaned(parent)
    with _WATCHDOG_LOCK:
        if _PARENT.get("pid") != parent:
            _PARENT["pid"] = parent
            threading.Thread(
                target=_watch_parent, args=(parent, poll_seconds), name="mtcolor-parent-watchdog", daemon=True
            ).start()
    return armed


def parent_gone() -> bool:
    """True when :func:`exit_with_parent` was called in this process and that parent has ended."""
    parent = _PARENT.get("pid")
    return parent is not None and os.getppid() != parent


def launched_by_launcher() -> bool:
    """True when this process was started by ``accelerate launch`` or ``torchrun`` (or when
    ``MTCOLOR_EXIT_WITH_PARENT=1``; ``=0`` turns it off)."""
    forced = os.environ.get(EXIT_WITH_PARENT_VARIABLE)
    if forced is not None and forced.strip() != "":
        return forced.strip().lower() not in ("0", "false", "no", "off")
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def exit_with_parent_if_launched() -> bool:
    """:func:`exit_with_parent` when started by a launcher (:func:`launched_by_launcher`).

    A trainer started from a shell (possibly under ``nohup``) keeps running when that shell ends; one
    started by ``accelerate launch`` / ``torchrun`` ends with the launcher (killing the launcher with
    SIGTERM or SIGKILL would otherwise leave it training on, beside any restarted run). Returns
    whether it was armed.
    """
    if not launched_by_launcher():
        return False
    exit_with_parent()
    return True


# ================================================================================================
# folder lock
class FolderLockedError(RuntimeError):
    """The folder is locked by another live process (``holder``: its pid, host, command, start time)."""

    def __init__(self, folder: str | os.PathLike, holder: dict, lock_path: str | os.PathLike):
        self.folder = str(folder)
        self.holder = holder
        self.lock_path = str(lock_path)
        pid = holder.get("pid", "?")
        where = f" on {holder['host']}" if holder.get("host") and holder.get("host") != _host() else ""
        command = f" ({holder['command']})" if holder.get("command") else ""
        since = f", since {holder['started']}" if holder.get("started") else ""
        remote = (
            f"; if that process no longer exists, delete {self.lock_path!r}"
            if where or holder.get("pid") is None
            else ""
        )
        super().__init__(
            f"{self.folder!r} is in use by process {pid}{where}{command}{since}; two runs writing one folder "
            f"would overwrite each other's files. Wait for it to finish or stop it (kill {pid}), or use "
            f"another folder{remote}."
        )


_HELD: dict[str, FolderLock] = {}
_HELD_LOCK = threading.Lock()


class FolderLock:
    """An exclusive, re-entrant (within one process) lock on a folder; use :func:`lock_folder`."""

    def __init__(self, folder: str | os.PathLike, name: str = LOCK_NAME, use_flock: bool | None = None):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.use_flock = _has_flock() if use_flock is None else use_flock
        self.owner_pid = os.getpid()
        self.depth = 0
        self.took_over: dict | None = None  # the holder record of a dead process replaced by this lock
        self._fd: int | None = None

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> FolderLock:
        """Take the lock (creating the folder); raises :class:`FolderLockedError` if a live process
        holds it, ``NotADirectoryError`` if ``folder`` is not a folder."""
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(self.folder))
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.use_flock:
            try:
                self._acquire_flock()
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                self.use_flock = False  # e.g. a network file system without flock
        if not self.use_flock:
            self._acquire_pid_file()
        self.owner_pid = os.getpid()
        return self

    def _record(self) -> bytes:
        return json.dumps(
            {
                "pid": os.getpid(),
                "host": _host(),
                "command": " ".join(sys.argv)[:300],
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        ).encode()

    def _acquire_flock(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_record(fd)
                os.close(fd)
                raise FolderLockedError(self.folder, holder, self.path) from None
            except OSError:
                os.close(fd)
                raise
            try:  # the file may have been unlinked by a releasing holder in between: retry on the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_record(fd)
            if previous.get("pid") is not None:
                self.took_over = previous
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._record(), 0)
            self._fd = fd
            return

    def _acquire_pid_file(self) -> None:
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    with open(self.path, "rb") as handle:
                        holder = _parse_record(handle.read())
                except FileNotFoundError:
                    continue
                pid = holder.get("pid")
                if holder.get("host") == _host() and isinstance(pid, int) and not pid_alive(pid):
                    self.took_over = holder
                    try:  # a stale lock of a dead process: take it over
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise FolderLockedError(self.folder, holder, self.path) from None
            try:
                os.write(fd, self._record())
            finally:
                os.close(fd)
            return
        raise FolderLockedError(self.folder, {}, self.path)

    def release(self) -> None:
        """Drop the lock and delete the lock file (only in the process that took it)."""
        if os.getpid() != self.owner_pid:  # a forked child must not release its parent's lock
            return
        if self.use_flock:
            if self._fd is None:
                return
            try:
                os.unlink(self.path)  # while still holding it; waiting processes then retry
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        else:
            try:
                with open(self.path, "rb") as handle:
                    mine = _parse_record(handle.read()).get("pid") == os.getpid()
                if mine:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        unlock_folder(self)


def _has_flock() -> bool:
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return False
    return True


def _parse_record(data: bytes) -> dict:
    try:
        record = json.loads(data.decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _read_record(fd: int) -> dict:
    try:
        return _parse_record(os.pread(fd, 4096, 0))
    except OSError:
        return {}


def lock_folder(
    folder: str | os.PathLike, name: str = LOCK_NAME, *, use_flock: bool | None = None
) -> FolderLock:
    """Lock ``folder`` (created if missing) for this process until :func:`unlock_folder` or exit.

    Re-entrant: locking a folder this process already holds returns the same lock (each
    :func:`unlock_folder` undoes one :func:`lock_folder`). Usable as a context manager::

        with lock_folder(out):
            ...  # the only process writing `out`

    Raises:
        FolderLockedError: a live process holds the lock (the message names the folder and pid).
        NotADirectoryError: ``folder`` exists and is not a folder.
    """
    lock = FolderLock(folder, name, use_flock)
    key = os.path.realpath(lock.path)
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None and held.owner_pid == os.getpid():
            held.depth += 1
            return held
        lock.acquire()
        lock.depth = 1
        _HELD[key] = lock
    return lock


def unlock_folder(lock: FolderLock | str | os.PathLike, name: str = LOCK_NAME) -> None:
    """Undo one :func:`lock_folder` (a lock object or the folder); the last one releases the lock."""
    path = lock.path if isinstance(lock, FolderLock) else Path(lock) / name
    key = os.path.realpath(path)
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is None or held.owner_pid != os.getpid():
            return
        held.depth -= 1
        if held.depth <= 0:
            del _HELD[key]
            held.release()


@atexit.register
def _release_all() -> None:
    with _HELD_LOCK:
        for lock in list(_HELD.values()):
            lock.release()
        _HELD.clear()


# ================================================================================================
# temporary files
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>.+)\.(?P<token>[0-9a-f]+)\.tmp$")


def temporary_path(path: str | os.PathLike) -> Path:
    """A hidden sibling of ``path`` naming this process: ``.<name>.<pid>@<host>.<token>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}@{_host()}.{secrets.token_hex(4)}.tmp")


def temporary_owner(path: str | os.PathLike) -> tuple[str, int, str] | None:
    """``(name, pid, host)`` of a file named by :func:`temporary_path`, else None."""
    file_name = Path(path).name
    match = _TEMPORARY.match(file_name)
    if match is None:
        return None
    return match.group("name"), int(match.group("pid")), match.group("host")


def remove_dead_temporaries(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporary files in ``directory`` left by dead processes of this machine.

    Only files named by :func:`temporary_path` whose pid is not a
    live process on this host are removed; temporaries of live runs and of other machines (a
    shared folder) are kept. ``name``: only temporaries of that final file name. Returns the
    removed paths.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    host = _host()
    for entry in directory.iterdir():
        owner = temporary_owner(entry)
        if owner is None or (name is not None and owner[0] != name):
            continue
        _, pid, owner_host = owner
        if owner_host != host or pid == os.getpid() or pid_alive(pid):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                import shutil

                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    return removed


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to a :func:`temporary_path` beside ``path``, fsync it and rename it onto ``path``:
    ``path`` holds either its old content or all of ``data``, never a part."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_directory(path.parent)
    return path
