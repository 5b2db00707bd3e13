"""``run.sh``'s environment handling with a stand-in venv (no real install): the editable install is
re-pointed only when another checkout used the venv last (concurrent runs then find nothing to do
once the first has set up: the set-up runs under ``flock <venv>.lock``)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fake_venv(tmp_path: Path) -> Path:
    """A venv folder marked ready whose ``python`` records its arguments instead of running pip."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".ready").touch()
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls.log"}\n')
    python.chmod(0o755)
    return venv


def run(venv: Path, *command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MTCOLOR_VENV": str(venv)}
    return subprocess.run(["bash", str(ROOT / "run.sh"), *command], env=env, capture_output=True, text=True)


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.is_file() else []


def test_editable_install_is_repointed_only_for_another_checkout(tmp_path):
    venv = fake_venv(tmp_path)
    assert run(venv, "true").returncode == 0
    assert len(calls(tmp_path)) == 1 and "install" in calls(tmp_path)[0] and "-e ." in calls(tmp_path)[0]
    assert (venv / ".checkout").read_text().strip() == str(ROOT)
    assert run(venv, "true").returncode == 0
    assert len(calls(tmp_path)) == 1  # same checkout: no pip at all
    (venv / ".checkout").write_text("/elsewhere/mtcolor\n")  # another clone used the venv last
    assert run(venv, "true").returncode == 0
    assert len(calls(tmp_path)) == 2 and (venv / ".checkout").read_text().strip() == str(ROOT)
