"""A checkpoint save that runs out of storage ends with one line naming the file and the reason, leaves
nothing that looks complete and no ``.tmp``; the next save in the same folder succeeds.

The storage runs out through the file size limit (``RLIMIT_FSIZE``, ``ulimit -f``) of a child process
that ignores ``SIGXFSZ``, so writes past the limit fail with ``EFBIG``: with a small limit inside
safetensors' writer (``model.safetensors``), with a larger one inside torch's zip writer
(``optimizer.bin``: its error, ``unexpected pos``, carries no errno).
"""

import errno
import os
import subprocess
import sys

import pytest
from mtcolor.training import checkpoints

SAVE = """
import resource, signal, sys
import torch
from accelerate import Accelerator
from mtcolor.training import checkpoints

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
torch.manual_seed(0)
accelerator = Accelerator(cpu=True)
model = torch.nn.Linear(64, 64)  # model.safetensors 16.8 kB, optimizer.bin 36 kB
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
model, optimizer = accelerator.prepare(model, optimizer)
model(torch.randn(4, 64)).sum().backward()
optimizer.step()
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
checkpoints.save_checkpoint(accelerator, sys.argv[1], 2, None, {"stage": 1})
print("saved", flush=True)
"""


def _save(out, limit: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", SAVE, str(out), str(limit)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("limit, failing", [(4_000, ""), (20_000, "optimizer.bin")])
def test_file_size_limit_is_one_line_and_the_next_save_works(tmp_path, limit, failing):
    out = tmp_path / "out"
    path = out / "checkpoint-2.tmp" / failing if failing else out / "checkpoint-2.tmp"
    done = _save(out, limit)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: writing {path} failed: File too large: the file size limit "
        f"(ulimit -f) is {limit} bytes. The incomplete checkpoint {str(out / 'checkpoint-2.tmp')!r} was "
        "removed; free some space (or raise the limit) and resume with --resume_from_checkpoint latest."
    ], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "inline_container" not in done.stderr
    assert sorted(os.listdir(out)) == []  # nothing that looks complete, no .tmp
    assert checkpoints.list_checkpoints(out) == []

    again = _save(out, 0)  # the limit lifted: the same step saves and verifies
    assert again.returncode == 0 and again.stdout.strip() == "saved", again.stderr[-3000:]
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["checkpoint-2"]
    checkpoints.verify_checkpoint(out / "checkpoint-2")
    assert sorted(os.listdir(out)) == ["checkpoint-2"]


class _Accelerator:
    """The part of ``accelerate.Accelerator`` that save_checkpoint uses, saving with ``save_state``."""

    is_main_process = True

    def __init__(self, save_state):
        self.save_state = save_state

    def wait_for_everyone(self):
        pass


def test_disk_full_errno_names_the_file_and_the_reason(tmp_path, capsys):
    def full(folder):
        os.makedirs(folder)
        with open(os.path.join(folder, "optimizer.bin"), "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("could not write the state") from OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(SystemExit) as info:
        checkpoints.save_checkpoint(_Accelerator(full), tmp_path, 4, None, {})
    assert info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: writing {tmp_path / 'checkpoint-4.tmp' / 'optimizer.bin'} failed: ")
    assert "No space left on device" in line and "resume with --resume_from_checkpoint latest" in line
    assert os.listdir(tmp_path) == []


def test_other_errors_are_raised_as_they_are(tmp_path):
    def broken(folder):
        os.makedirs(folder)
        raise KeyError("a bug in a save hook")

    with pytest.raises(KeyError, match="a bug in a save hook"):
        checkpoints.save_checkpoint(_Accelerator(broken), tmp_path, 4, None, {})
    assert os.listdir(tmp_path) == []  # the incomplete folder is removed all the same
