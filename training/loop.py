"""The training loop shared by every trainer of this folder (MT-Color stages 1-2, the base model,
L-CoIns), in the style of diffusers' ``examples/`` scripts with 🤗 Accelerate: ``run_training_loop``
and its reproducibility helpers (the accelerator, optimiser and the rest it runs on come from
:mod:`mtcolor.training.prepare`).

A trainer supplies its components, a loss ``f(batch, step, micro_position)`` and a validation
``f(step)``; the loop does the rest (gradient accumulation, clipping, mixed precision, logging,
checkpoints and exact resume, see :mod:`mtcolor.training.checkpoints`).

Reproducibility contract (what makes ``--resume_from_checkpoint latest`` exact):

* the data order is a function of (seed, epoch) (accelerate's seedable sampler) and every sample's
  augmentation a function of (seed, epoch, index) or of (seed, step, row) (:func:`row_seed`);
* every random draw of a training step comes from a generator seeded with (seed, step, row of the
  *global* batch), of which each process takes its own rows: the run does not depend on the global
  RNG state, and one process with batch 2B computes the same update as two processes with batch B;
* draws a model makes from the global RNG (dropout) are seeded per micro-batch by (seed, step,
  micro-batch position) (:func:`seeded_global_rng`): one process with B x 2 accumulation steps
  repeats two processes with batch B, and a resumed run repeats them;
* ``--num_train_epochs`` counts passes over the data whatever the number of processes.

Generic: no MT-Color or L-CoIns module is imported here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from mtcolor.training.checkpoints import resume_from_checkpoint, save_checkpoint, stop_if_orphaned
from torch import nn

logger = logging.getLogger("mtcolor.training")

#: :func:`row_seed` stream of the per-micro-batch seed of the global RNGs (trainers use 0, 1, ...)
DROPOUT_STREAM = 0xD0


@dataclass
class TrainResult:
    """What :func:`run_training_loop` (and the MT-Color ``train``) returns, on every process
    (``pipeline_dir`` is written by the main one)."""

    output_dir: Path
    pipeline_dir: Path | None
    global_step: int
    losses: list = field(default_factory=list)  # mean loss over processes of every optimizer step run
    train_seconds: float = 0.0  # time in training steps (no validation / checkpoint / export)
    steps_run: int = 0  # optimizer steps run by this call (after a resume: fewer than global_step)
    peak_memory_bytes: int = 0  # CUDA peak allocated, or the process's peak RSS on CPU
    trainable_parameters: int = 0
    total_parameters: int = 0
    validation: dict = field(default_factory=dict)  # {"step", "metrics"} of the last validation run

    @property
    def steps_per_second(self) -> float:
        return self.steps_run / self.train_seconds if self.train_seconds > 0 else float("nan")


def _peak_memory(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def row_seed(seed: int, step: int, row: int, stream: int = 0) -> int:
    """64-bit seed of the draws of row ``row`` of the global batch of optimizer step ``step``.

    Rows are numbered over the whole update (``micro_position * train_batch_size + i``), so a
    sample's draws depend on (seed, step, row, stream) only: not on the process count, the global
    RNG or whether the run was resumed. ``stream`` separates independent draws of one row.
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5EED, stream, int(step), int(row)])
    high, low = state.generate_state(2)
    return int(high) << 32 | int(low)


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device):
    """Inside the block the global RNGs of the CPU (and of ``device``) start from ``seed``; their
    states are restored after it. The loop runs every micro-batch's forward in it, seeded by (seed,
    step, micro-batch position), so draws a model makes from the global RNG (dropout) do not depend
    on what ran before: a resumed run repeats them, and each process draws its own."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def check_gradients(accelerator, trainable: list[tuple[str, nn.Parameter]]) -> None:
    """After the first backward: every trainable parameter must be part of the graph (else it would
    never train, and DDP would wait for its gradient forever)."""
    if accelerator.distributed_type.value == "DEEPSPEED":  # ZeRO keeps gradients in its own buffers
        return
    missing = [name for name, param in trainable if param.grad is None]
    if missing:
        raise RuntimeError(
            f"{len(missing)} trainable parameters got no gradient in the first step (e.g. {missing[:5]}); the model "
            "does not use them for this UNet / ControlNet architecture."
        )


@torch.no_grad()
def check_replicas_in_sync(accelerator, params: list[torch.Tensor]) -> None:
    """After training, every process must hold the same trainable weights (gradient sync worked)."""
    if accelerator.num_processes == 1 or accelerator.distributed_type.value == "DEEPSPEED":
        return
    checksum = torch.stack([p.detach().double().sum() for p in params]).sum()[None].to(accelerator.device)
    gathered = accelerator.gather(checksum)
    if not torch.all(gathered == gathered[0]):
        raise RuntimeError(
            f"trainable weights differ between processes after training (checksums {gathered.tolist()})."
        )
    logger.info(f"trainable weights identical on all {accelerator.num_processes} processes")


def hyperparameters(args) -> dict:
    """The flag values of a run for its model card (paths and the resume flag left out)."""
    skip = {"config", "output_dir", "logging_dir", "resume_from_checkpoint", "cache_dir"}
    return {
        k: v
        for k, v in sorted(vars(args).items())
        if k not in skip and isinstance(v, (int, float, str, bool, type(None), list, dict))
    }


@dataclass
class _Position:
    """Where a run starts: the optimizer step, its epoch and the batches of that epoch to skip."""

    global_step: int
    first_epoch: int
    skip_batches: int
    updates_per_epoch: int
    num_epochs: int


def _start_position(accelerator, args, dataloader, max_train_steps: int, run_info: dict, trained_keys: tuple):
    """Resume ``--resume_from_checkpoint`` (weights, optimiser, scheduler, RNG) and return the data
    position: the consumed batches of the resumed epoch are skipped."""
    updates_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    global_step = resume_from_checkpoint(
        accelerator, args.resume_from_checkpoint, Path(args.output_dir), run_info, trained_keys
    )
    return _Position(
        global_step=global_step,
        first_epoch=global_step // updates_per_epoch,
        skip_batches=(global_step % updates_per_epoch) * args.gradient_accumulation_steps,
        updates_per_epoch=updates_per_epoch,
        num_epochs=math.ceil(max_train_steps / updates_per_epoch),
    )


def _epoch_loader(accelerator, dataloader, dataset, epoch: int, position: _Position):
    """The loader of ``epoch`` (augmentation and order seeded by the epoch; the resumed epoch skips
    its consumed batches)."""
    if hasattr(dataset, "set_epoch"):  # augmentation seeded by (seed, epoch, index)
        dataset.set_epoch(epoch)
    dataloader.set_epoch(epoch)
    if epoch == position.first_epoch and position.skip_batches:
        return accelerator.skip_first_batches(dataloader, position.skip_batches)
    return dataloader


def _micro_batch(
    accelerator, args, model, optimizer, lr_scheduler, loss_fn, batch, step, micro_position, trainable, first
):
    """Forward (global RNGs seeded by seed, step and micro-batch position), backward (``first``: then
    :func:`check_gradients`), clipping and the optimizer step (a no-op until the gradients are
    accumulated). Returns ``(loss, logs)``."""
    with accelerator.accumulate(model), accelerator.autocast():
        with seeded_global_rng(
            row_seed(args.seed, step, micro_position, stream=DROPOUT_STREAM), accelerator.device
        ):
            loss = loss_fn(batch, step, micro_position)
        loss, logs = loss if isinstance(loss, tuple) else (loss, {})
        accelerator.backward(loss)
        if first:
            check_gradients(accelerator, trainable)
        if accelerator.sync_gradients and args.max_grad_norm > 0:
            accelerator.clip_grad_norm_([p for _, p in trainable], args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss, logs


def _checkpoint_and_validate(
    accelerator, args, result: TrainResult, run_info: dict, epoch: int, validate
) -> None:
    """Every ``--checkpointing_steps``: a checkpoint; every ``--validation_steps``: ``validate(step)``
    on the main process (kept in ``result.validation``)."""
    step = result.global_step
    if step % args.checkpointing_steps == 0:
        save_checkpoint(
            accelerator,
            Path(args.output_dir),
            step,
            args.checkpoints_total_limit,
            {**run_info, "epoch": epoch},
        )
    if validate is not None and step % args.validation_steps == 0 and accelerator.is_main_process:
        result.validation = {"step": step, "metrics": validate(step) or {}}


def run_training_loop(
    accelerator,
    args,
    *,
    model,
    optimizer,
    lr_scheduler,
    dataloader,
    dataset,
    loss_fn,
    trainable: list[tuple[str, nn.Parameter]],
    max_train_steps: int,
    run_info: dict,
    ema=None,
    validate=None,
    description: str = "training",
) -> TrainResult:
    """The optimisation loop shared by every trainer of this folder (after ``accelerator.prepare``).

    Resumes from ``--resume_from_checkpoint`` (weights, optimiser, scheduler and RNG through
    ``accelerator.load_state``; the data position by skipping the consumed batches of the epoch),
    accumulates gradients, clips, steps, updates the EMA, logs the loss, checkpoints every
    ``--checkpointing_steps`` and calls ``validate(step)`` (main process) every ``--validation_steps``.

    Args:
        loss_fn: ``f(batch, step, micro_position) -> loss`` or ``(loss, logs)`` (``logs``: more
            scalars for the trackers); ``micro_position`` is the index of this process's micro-batch
            within the optimizer step (``micro * processes + process``), so random draws can be
            made independent of the process count (its rows of the global batch start at
            ``micro_position * train_batch_size``; see :func:`row_seed`).
        trainable: ``(name, parameter)`` pairs that the optimiser updates; each must get a gradient.
        run_info: what is trained (e.g. ``{"stage": 1}``, ``{"phase": "vae"}``, the L-CoIns model and
            loss), stored in every checkpoint marker with the processes, batch and seed; resuming a
            checkpoint whose ``run_info`` differs raises, other differences are logged
            (:func:`mtcolor.training.checkpoints.resume_from_checkpoint`).
        validate: ``f(step) -> metrics`` run on the main process every ``--validation_steps``
            (the last one is kept in ``TrainResult.validation``).
    """
    from tqdm.auto import tqdm

    params = [p for _, p in trainable]
    trained_keys = tuple(run_info)  # the keys a resumed checkpoint must agree on
    run_info = {
        **run_info,
        "num_processes": accelerator.num_processes,
        "train_batch_size": args.train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "seed": args.seed,
    }
    position = _start_position(accelerator, args, dataloader, max_train_steps, run_info, trained_keys)
    _log_start(accelerator, args, description, len(dataset), max_train_steps, position)
    result = TrainResult(Path(args.output_dir), None, position.global_step)
    progress = tqdm(
        range(max_train_steps),
        initial=position.global_step,
        desc="steps",
        disable=not accelerator.is_local_main_process,
    )
    window_losses: list[torch.Tensor] = []
    tic = time.perf_counter()
    for epoch in range(position.first_epoch, position.num_epochs):
        if result.global_step >= max_train_steps:
            break
        for batch in _epoch_loader(accelerator, dataloader, dataset, epoch, position):
            micro_step = len(window_losses)
            micro_position = micro_step * accelerator.num_processes + accelerator.process_index
            first = result.steps_run == 0 and micro_step == 0
            loss, logs = _micro_batch(
                accelerator, args, model, optimizer, lr_scheduler, loss_fn, batch, result.global_step,
                micro_position, trainable, first,
            )  # fmt: skip
            window_losses.append(loss.detach())
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(params)
            _record_update(accelerator, result, window_losses, logs, lr_scheduler.get_last_lr()[0], progress)
            window_losses = []
            paused = time.perf_counter()
            _checkpoint_and_validate(accelerator, args, result, run_info, epoch, validate)
            tic += time.perf_counter() - paused
            if result.global_step >= max_train_steps:
                break
    progress.close()
    result.train_seconds = time.perf_counter() - tic
    result.peak_memory_bytes = _peak_memory(accelerator.device)
    check_replicas_in_sync(accelerator, params)
    return result


def _log_start(accelerator, args, description: str, records: int, max_train_steps: int, position) -> None:
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"***** {description}: {records} records, {max_train_steps} steps, {position.updates_per_epoch} "
        f"steps/epoch, batch {args.train_batch_size} x {accelerator.num_processes} processes x "
        f"{args.gradient_accumulation_steps} accumulation = {total_batch} *****"
    )


def _record_update(accelerator, result: TrainResult, window_losses, logs: dict, lr: float, progress) -> None:
    """After an optimizer step: the step's loss (mean over its micro-batches and processes) into
    ``result``, the trackers and the progress bar; a trainer whose launcher died stops here."""
    step_loss = accelerator.gather(torch.stack(window_losses).mean()[None]).mean().item()
    result.global_step += 1
    stop_if_orphaned()
    result.losses.append(step_loss)
    result.steps_run += 1
    progress.update(1)
    progress.set_postfix(loss=f"{step_loss:.4f}")
    accelerator.log({**logs, "loss": step_loss, "lr": lr}, step=result.global_step)


def finish_training(
    accelerator, result: TrainResult, *, ema, params, validate=None, export=None
) -> TrainResult:
    """What every trainer does after :func:`run_training_loop`: wait for every process; on the main
    process copy the EMA weights into ``params`` (when ``ema``), run the final ``validate(step)``
    (skipped when the loop's last validation ran at the final step: the same weights) and
    ``export(metrics)``; wait again. The final metrics go into ``result.validation``.

    Args:
        validate: ``f(step) -> metrics`` with the trained weights in place, or None.
        export: ``f(metrics)``: save the trained model (main process), or None.
    """
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(params)
        metrics = {}
        if validate is not None:
            if result.validation.get("step") == result.global_step:
                metrics = result.validation.get("metrics", {})
            else:
                metrics = validate(result.global_step) or {}
            result.validation = {"step": result.global_step, "metrics": metrics}
        if export is not None:
            export(metrics)
    accelerator.wait_for_everyone()
    return result
