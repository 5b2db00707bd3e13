"""Resume from damaged checkpoints: checksums recorded at save time, verified at resume, fall back to
the newest intact checkpoint (mtcolor.training.checkpoints, on a tiny Accelerator with a Linear model)."""

import json
import logging
import os
import shutil

import pytest
import torch
from mtcolor.training import checkpoints
from safetensors.torch import save_file


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def saved(tmp_path):
    """checkpoint-2 and checkpoint-4 of a Linear + AdamW run whose save hook also writes an
    ``adapter/`` folder (as the MT-Color trainers do)."""
    from accelerate import Accelerator

    _reset_accelerate()
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)

    def save_hook(models, weights, folder):
        os.makedirs(os.path.join(folder, "adapter"), exist_ok=True)
        state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(models[0]).state_dict().items()}
        save_file(state, os.path.join(folder, "adapter", "diffusion_pytorch_model.safetensors"))

    accelerator.register_save_state_pre_hook(save_hook)
    out = tmp_path / "out"
    for step in (2, 4):
        loss = model(torch.randn(4, 3)).square().mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        checkpoints.save_checkpoint(accelerator, out, step, None, {"stage": 1})
    yield accelerator, model, out
    _reset_accelerate()


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES = {
    "truncated model.safetensors": ("model.safetensors", _truncate),
    "truncated optimizer.bin": ("optimizer.bin", _truncate),
    "truncated adapter weights": ("adapter/diffusion_pytorch_model.safetensors", _truncate),
    "deleted adapter/": ("adapter/diffusion_pytorch_model.safetensors", lambda p: shutil.rmtree(p.parent)),
    "invalid checkpoint.json": ("checkpoint.json", lambda p: p.write_text('{"step": 4, "fil')),
    "zero-byte random_states_0.pkl": ("random_states_0.pkl", lambda p: p.write_bytes(b"")),
    "replaced random_states_0.pkl": (
        "random_states_0.pkl",
        lambda p: shutil.copyfile(p.parents[1] / "checkpoint-2" / "random_states_0.pkl", p),
    ),
}


def test_marker_records_size_and_sha256_of_every_file(saved):
    _, _, out = saved
    marker = json.loads((out / "checkpoint-4" / checkpoints.CHECKPOINT_MARKER).read_text())
    on_disk = sorted(
        p.relative_to(out / "checkpoint-4").as_posix()
        for p in (out / "checkpoint-4").rglob("*")
        if p.is_file() and p.name != checkpoints.CHECKPOINT_MARKER
    )
    assert sorted(marker["files"]) == on_disk
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(on_disk)
    assert "adapter/diffusion_pytorch_model.safetensors" in on_disk
    assert all(len(entry["sha256"]) == 64 and entry["bytes"] > 0 for entry in marker["files"].values())
    assert checkpoints.resolve_checkpoint("latest", out) == out / "checkpoint-4"


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_latest_falls_back_to_the_newest_intact_checkpoint(saved, caplog, damage):
    accelerator, model, out = saved
    name, apply = DAMAGES[damage]
    apply(out / "checkpoint-4" / name)
    with caplog.at_level(logging.WARNING, logger="mtcolor.training"):
        resolved = checkpoints.resolve_checkpoint("latest", out)
    assert resolved == out / "checkpoint-2"
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"checkpoint {str(out / 'checkpoint-4')!r}: " in warning
    assert name.split("/")[0] in warning  # names the damaged file (or the folder it was in)
    assert "resuming from" in warning and "checkpoint-2" in warning
    accelerator.load_state(str(resolved))  # the fallback loads


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_explicit_checkpoint_is_refused_naming_folder_and_file(saved, damage):
    _, _, out = saved
    name, apply = DAMAGES[damage]
    apply(out / "checkpoint-4" / name)
    with pytest.raises(checkpoints.CheckpointError) as caught:
        checkpoints.resolve_checkpoint(str(out / "checkpoint-4"), out)
    assert f"checkpoint {str(out / 'checkpoint-4')!r}: {name.split('/')[0]}" in str(caught.value)


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(saved):
    _, _, out = saved
    for step in (2, 4):
        _truncate(out / f"checkpoint-{step}" / "optimizer.bin")
    with pytest.raises(checkpoints.CheckpointError, match="no intact checkpoint in .* to resume from"):
        checkpoints.resolve_checkpoint("latest", out)


def test_checkpoint_without_checksums_is_refused(saved, caplog):
    """A marker without the file sizes and checksums cannot be verified: skipped by ``latest`` with a
    warning, refused when named."""
    _, _, out = saved
    marker_path = out / "checkpoint-4" / checkpoints.CHECKPOINT_MARKER
    marker = json.loads(marker_path.read_text())
    del marker["files"]
    marker_path.write_text(json.dumps(marker))
    with caplog.at_level(logging.WARNING):
        assert checkpoints.resolve_checkpoint("latest", out) == out / "checkpoint-2"
    assert "records no file sizes and checksums" in caplog.text
    with pytest.raises(checkpoints.CheckpointError, match="records no file sizes and checksums"):
        checkpoints.resolve_checkpoint(str(out / "checkpoint-4"), out)


def test_resolve_or_fail_is_one_error_line_with_exit_status_2(saved, capsys):
    """What the trainers (stage 1/2, base, L-CoIns) call: no traceback, the folder and the file named."""
    _, _, out = saved
    (out / "checkpoint-4" / "optimizer.bin").write_bytes(b"")
    assert checkpoints.resolve_checkpoint_or_fail("latest", out) == out / "checkpoint-2"
    with pytest.raises(SystemExit) as caught:
        checkpoints.resolve_checkpoint_or_fail(str(out / "checkpoint-4"), out)
    assert caught.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line.startswith("error: checkpoint ")
        and "checkpoint-4'" in line
        and "optimizer.bin has 0 bytes" in line
    )
