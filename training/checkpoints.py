"""Checkpoints of every trainer in this folder: save, verify, resolve and resume, plus the
process-safety helpers that guard the output folder.

* :func:`save_checkpoint` writes ``accelerator.save_state`` into ``checkpoint-<step>.tmp`` and renames
  it to ``checkpoint-<step>`` only once complete, with a ``checkpoint.json`` marker written last that
  holds the run's settings, the step and the size and sha256 of every file;
* :func:`resolve_checkpoint` turns ``--resume_from_checkpoint`` into a verified folder (``latest``:
  the newest complete one whose files still match their checksums, falling back past damaged ones
  with a warning); the step to resume at is the marker's ``step``, never the folder name;
* :func:`lock_output_dir` keeps two runs from writing into one ``--output_dir`` and
  :func:`stop_if_orphaned` ends a trainer whose launcher is gone (:mod:`mtcolor.locks`).

Generic: no MT-Color or L-CoIns module is imported here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

try:
    import resource  # POSIX: the file size limit (ulimit -f)
except ImportError:  # pragma: no cover - Windows
    resource = None

from mtcolor.locks import FolderLockedError, fsync_directory, lock_folder, parent_gone, unlock_folder

logger = logging.getLogger("mtcolor.training")

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_MARKER = "checkpoint.json"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of ``output_dir``, oldest first.

    Complete = named ``checkpoint-<step>`` (renamed from ``checkpoint-<step>.tmp`` after the save)
    and holding the ``checkpoint.json`` marker written last; anything else (a ``.tmp`` folder left
    by a kill during a save, a copy in progress) is ignored.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and (path / CHECKPOINT_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(value: str | None, output_dir: str | os.PathLike) -> Path | None:
    """``--resume_from_checkpoint`` -> a verified checkpoint folder (``latest``: the newest intact one).

    ``latest`` checks the complete checkpoints newest first with :func:`verify_checkpoint`; damaged
    ones (truncated or replaced files, a deleted subfolder, an invalid marker) are skipped with a
    warning naming the folder and the file, so the run resumes from the newest intact checkpoint.
    Returns None when there is no checkpoint at all.

    Raises:
        CheckpointError: an explicit checkpoint that is not complete or fails verification, or
            ``latest`` when every checkpoint of ``output_dir`` is damaged.
    """
    if value is None:
        return None
    if value == "latest":
        damaged = []
        for path in reversed(list_checkpoints(output_dir)):
            try:
                verify_checkpoint(path)
            except CheckpointError as error:
                logger.warning(f"skipping a damaged checkpoint: {error}")
                damaged.append(str(error))
                continue
            if damaged:
                logger.warning(
                    f"resuming from {path}, the newest intact checkpoint ({len(damaged)} newer one(s) damaged)"
                )
            return path
        if damaged:
            raise CheckpointError(
                f"no intact checkpoint in {str(output_dir)!r} to resume from: {'; '.join(damaged)}. Restore the "
                "files, or delete the damaged checkpoint folders to start a new run."
            )
        return None
    path = Path(value)
    if not CHECKPOINT_PATTERN.match(path.name) or not (path / CHECKPOINT_MARKER).is_file():
        raise CheckpointError(
            f"--resume_from_checkpoint={value!r} is not a complete checkpoint (a checkpoint-<step> folder with "
            f"{CHECKPOINT_MARKER}); pick one listed by the trainer or pass 'latest'."
        )
    verify_checkpoint(path)
    return path


def resolve_checkpoint_or_fail(value: str | None, output_dir: str | os.PathLike) -> Path | None:
    """:func:`resolve_checkpoint` for a training script: a checkpoint that cannot be resumed ends the
    run with one ``error:`` line naming the folder and the file (:func:`fail`, exit status 2)."""
    try:
        return resolve_checkpoint(value, output_dir)
    except CheckpointError as error:
        fail(str(error))


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None, info: dict
) -> Path:
    """``accelerator.save_state`` into ``checkpoint-<step>.tmp``, then rename to ``checkpoint-<step>``.

    Every process must call it (processes save their RNG states; DeepSpeed shards its state). The
    marker ``checkpoint.json`` (``info`` + the step + the size and sha256 of every file, see
    :func:`checkpoint_manifest`) is written last, inside the temporary folder; files, marker and
    folder are fsynced and the rename is atomic, so a kill at any moment leaves either no
    ``checkpoint-<step>`` or a complete one, and later damage is detected at resume. Older
    checkpoints beyond ``total_limit`` are deleted after the new one is complete. ``output_dir``
    must be on a file system shared by all processes of a multi-node run.

    A write that fails for lack of storage (disk full, quota, the file size limit of ``ulimit -f``)
    ends the run with one ``error:`` line naming the file and the reason (:func:`writing_checkpoint`);
    the incomplete ``checkpoint-<step>.tmp`` is removed (a later save removes any left by a kill).
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    temporary = root / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if temporary.exists():
            shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    with writing_checkpoint(temporary):
        accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with writing_checkpoint(temporary):
            marker = {**info, "step": int(step), "files": checkpoint_manifest(temporary, fsync=True)}
            with open(temporary / CHECKPOINT_MARKER, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(marker, indent=1, default=str))
                handle.flush()
                os.fsync(handle.fileno())
            fsync_directory(temporary)
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        fsync_directory(root)
        logger.info(f"saved state to {final}")
        if total_limit is not None:
            existing = list_checkpoints(root)
            for old in existing[: max(0, len(existing) - total_limit)]:
                logger.info(f"removing old checkpoint {old} (checkpoints_total_limit={total_limit})")
                shutil.rmtree(old)
        for stale in root.glob("checkpoint-*.tmp"):  # left behind by an earlier killed save
            if stale != temporary:
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ================================================================================================
# failed writes: one line naming the file and why, instead of torch's or safetensors' traceback
#: errors of a write that ran out of storage: disk full, quota, file size limit (RLIMIT_FSIZE)
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: a file system with less free space than this after a failed write is taken to be full
LOW_SPACE_BYTES = 1 << 20


def _errno_of(error: BaseException) -> int | None:
    """The storage errno behind ``error``: an ``OSError`` in its chain, or ``os error N`` / ``errno N``
    in a message (safetensors' Rust I/O errors); None when there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return error.errno
        match = re.search(r"(?:os error|errno)\s*(\d+)", str(error), re.IGNORECASE)
        if match and int(match.group(1)) in STORAGE_ERRNOS:
            return int(match.group(1))
        error = error.__cause__ or error.__context__
    return None


def _files_newest_first(folder: Path) -> list[Path]:
    try:
        files = [p for p in folder.rglob("*") if p.is_file()]
        return sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True)
    except OSError:
        return []


def storage_problem(error: BaseException, folder: str | os.PathLike) -> tuple[Path, str] | None:
    """(the file, the reason) when writing into ``folder`` failed for lack of storage, else None.

    The reason comes from the error's errno where it has one; torch's zip writer drops it
    (``unexpected pos ...``), so the folder is then examined: a file that reached the file size
    limit (``ulimit -f``) or a file system with less than :data:`LOW_SPACE_BYTES` free.
    """
    folder = Path(folder)
    files = _files_newest_first(folder)
    newest = files[0] if files else folder
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else -1
    limited = limit not in (-1, getattr(resource, "RLIM_INFINITY", -1))
    code = _errno_of(error)
    at_limit = [p for p in files if limited and p.stat().st_size >= limit]
    if code == errno.EFBIG or (code is None and at_limit):
        where = at_limit[0] if at_limit else newest
        detail = f": the file size limit (ulimit -f) is {limit} bytes" if limited else ""
        return where, f"{os.strerror(errno.EFBIG)}{detail}"
    try:
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        free = None
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and free is not None and free < LOW_SPACE_BYTES):
        code = code or errno.ENOSPC
        detail = f" ({free} bytes free)" if free is not None else ""
        return newest, f"{os.strerror(code)}{detail}"
    return None


@contextlib.contextmanager
def writing_checkpoint(folder: str | os.PathLike):
    """Writes into the checkpoint folder ``folder``: one that fails for lack of storage removes
    ``folder`` and ends the run with one ``error:`` line naming the file and the reason
    (:func:`storage_problem`, :func:`fail`, exit status 2); any other error is raised as it is."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - torch and safetensors raise RuntimeError / their own types
        problem = storage_problem(error, folder)
        shutil.rmtree(folder, ignore_errors=True)
        if problem is None:
            raise
        path, reason = problem
        fail(
            f"writing {path} failed: {reason}. The incomplete checkpoint {str(folder)!r} was removed; free some "
            "space (or raise the limit) and resume with --resume_from_checkpoint latest."
        )


# ================================================================================================
# checkpoint integrity: checksums recorded at save time, verified at resume
class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (the message names the folder and the file)."""


def _sha256(path: Path, fsync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if fsync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def checkpoint_manifest(folder: str | os.PathLike, fsync: bool = False) -> dict[str, dict]:
    """``{relative path: {"bytes": size, "sha256": hex}}`` of every file under ``folder`` except the
    marker (what :func:`save_checkpoint` records and :func:`verify_checkpoint` compares).

    ``fsync``: also flush every file (and folder) to disk while reading it.
    """
    root = Path(folder)
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            if fsync:
                fsync_directory(path)
            continue
        relative = path.relative_to(root).as_posix()
        if relative == CHECKPOINT_MARKER:
            continue
        files[relative] = {"bytes": path.stat().st_size, "sha256": _sha256(path, fsync)}
    return files


def read_checkpoint_marker(folder: str | os.PathLike) -> dict:
    """The parsed ``checkpoint.json`` of ``folder``; :class:`CheckpointError` when unreadable."""
    path = Path(folder) / CHECKPOINT_MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(folder)!r}: {CHECKPOINT_MARKER} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"checkpoint {str(folder)!r}: {CHECKPOINT_MARKER} is not valid JSON ({error})"
        ) from None
    if not isinstance(marker, dict) or not isinstance(marker.get("step"), int):
        raise CheckpointError(
            f"checkpoint {str(folder)!r}: {CHECKPOINT_MARKER} has no integer 'step' (got {str(marker)[:80]})"
        )
    return marker


def verify_checkpoint(folder: str | os.PathLike) -> dict:
    """Check a checkpoint against the sizes and sha256 sums recorded in its marker; returns the marker.

    Raises:
        CheckpointError: naming the folder and the first missing, truncated or changed file.
    """
    folder = Path(folder)
    marker = read_checkpoint_marker(folder)
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(
            f"checkpoint {str(folder)!r}: its marker {CHECKPOINT_MARKER} records no file sizes and checksums, "
            "so the checkpoint cannot be verified; resume from a checkpoint written by this version"
        )
    for relative, expected in sorted(files.items()):
        path = folder / relative
        where = f"checkpoint {str(folder)!r}: {relative}"
        if not path.is_file():
            raise CheckpointError(f"{where} is missing")
        size = path.stat().st_size
        if size != expected.get("bytes"):
            raise CheckpointError(
                f"{where} has {size} bytes, {expected.get('bytes')} when saved (truncated?)"
            )
        if _sha256(path) != expected.get("sha256"):
            raise CheckpointError(
                f"{where} differs from the file saved (sha256 mismatch: modified or replaced)"
            )
    return marker


def load_checkpoint_state(accelerator, checkpoint: Path, marker: dict) -> None:
    """``accelerator.load_state`` of a verified checkpoint. One written without checksums (older
    version) could still be damaged in ways the structural checks miss: its loading errors end the
    run with one line naming the folder instead of a traceback."""
    if isinstance(marker.get("files"), dict):
        accelerator.load_state(str(checkpoint))
        return
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # noqa: BLE001 - any loading error of an unverifiable checkpoint
        fail(
            f"checkpoint {str(checkpoint)!r} (written without checksums) could not be loaded: "
            f"{type(error).__name__}: {error}; resume from another checkpoint-<step> folder."
        )


# ================================================================================================
# process safety: the output-folder lock and the launcher's lifetime
def fail(message: str) -> None:
    """End a training script like ``parser.error``: one ``error:`` line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def lock_output_dir(output_dir: str | os.PathLike) -> None:
    """Hold ``output_dir`` (created if missing) for this process until :func:`release_output_dir` or
    exit. A folder held by a live run refuses the start (:func:`fail`, naming the holder's pid); the
    lock of a killed run is taken over."""
    try:
        lock = lock_folder(output_dir)
    except FolderLockedError as error:
        fail(f"--output_dir {error}")
    except (NotADirectoryError, FileExistsError) as error:
        fail(
            f"--output_dir {str(output_dir)!r} is not a folder ({error.strerror or error}); pass a folder for "
            "checkpoints and the trained model."
        )
    else:
        if lock.took_over is not None and lock.depth == 1:
            logger.info(
                f"took over the lock of {output_dir} left by process {lock.took_over.get('pid')} (gone)"
            )


def release_output_dir(output_dir: str | os.PathLike) -> None:
    """Undo one :func:`lock_output_dir` of this process (no-op when it holds no lock)."""
    unlock_folder(output_dir)


def stop_if_orphaned() -> None:
    """In the training loop: end the run when the launcher that started it is gone (the portable
    fallback of the parent-death signal armed by :func:`mtcolor.training.prepare.make_accelerator`)."""
    if parent_gone():
        logger.error("the launcher of this run is gone; stopping")
        raise SystemExit(128 + 15)


def resume_from_checkpoint(
    accelerator, value: str | None, output_dir, run_info: dict, identity: tuple
) -> int:
    """Restore the run named by ``--resume_from_checkpoint`` ``value``; returns the step to go on from.

    The step is the marker's ``step`` (a renamed or copied folder cannot shift it). ``run_info`` is
    what this run would write into its markers; a checkpoint whose value of one of the ``identity``
    keys differs (another stage, phase or trainer, another model or loss) is refused, any other
    difference (processes, batch, seed) is logged: the data position is then only approximate.
    Returns 0 (a fresh start) when ``value`` is None or ``latest`` finds no checkpoint.

    Raises:
        ValueError: the checkpoint was written with other ``identity`` settings.
    """
    checkpoint = resolve_checkpoint_or_fail(value, output_dir)
    if checkpoint is None:
        if value:
            logger.info(f"no complete checkpoint in {output_dir}; starting a new run")
        return 0
    marker = read_checkpoint_marker(checkpoint)
    saved = json.loads(json.dumps({k: marker.get(k) for k in run_info}, default=str))
    current = json.loads(json.dumps(run_info, default=str))  # compared as written (tuples -> lists)
    changed = {k: (saved[k], v) for k, v in current.items() if saved[k] != v}
    refused = {k: change for k, change in changed.items() if k in identity}
    if refused:
        details = "; ".join(f"{k}={old!r}, this run has {k}={new!r}" for k, (old, new) in refused.items())
        raise ValueError(
            f"{checkpoint} was written with {details}. Resume with the settings it was written with, or pass "
            "another --output_dir to start a new run."
        )
    if changed:
        logger.warning(f"resuming with changed settings {changed}: the data position is only approximate")
    load_checkpoint_state(accelerator, checkpoint, marker)
    step = int(marker["step"])
    logger.info(f"resumed from {checkpoint} at step {step}")
    return step
