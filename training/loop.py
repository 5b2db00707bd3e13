"""The training loop shared by every trainer of this folder (MT-Color stages 1-2, the base model,
L-CoIns), in the style of diffusers' ``examples/`` scripts with 🤗 Accelerate: the accelerator,
optimiser, lr schedule, EMA, ``prepare_training`` and ``run_training_loop``.

A trainer supplies its components, a loss ``f(batch, step, micro_position)`` and a validation
``f(step)``; the loop does the rest (gradient accumulation, clipping, mixed precision, logging,
checkpoints and exact resume, see :mod:`training.checkpoints`).

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
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtcolor.locks import exit_with_parent_if_launched
from training.checkpoints import (
    lock_output_dir,
    release_output_dir,
    resume_from_checkpoint,
    save_checkpoint,
    stop_if_orphaned,
)

logger = logging.getLogger("mtcolor.training")

#: :func:`row_seed` stream of the per-micro-batch seed of the global RNGs (trainers use 0, 1, ...)
DROPOUT_STREAM = 0xD0


@dataclass
class TrainResult:
    """What :func:`run_training_loop` (and the MT-Color ``train``) returns (on every process; ``pipeline_dir`` is written by the main one)."""

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


def weight_dtype_of(accelerator) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def _peak_memory(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def start_run(args):
    """Accelerator + logging + seed (not device-specific: fresh modules initialise identically on
    every process) + output folder + TF32."""
    from accelerate.utils import set_seed

    accelerator = make_accelerator(args)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state)
    set_seed(args.seed)
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if getattr(args, "allow_tf32", False) and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator


@contextlib.contextmanager
def training_run(args):
    """``with training_run(args) as accelerator:`` the accelerator of a run (:func:`start_run`: seed,
    output folder, its lock held by the main process); the lock is released when the block ends."""
    accelerator = start_run(args)
    try:
        yield accelerator
    finally:
        if accelerator.is_main_process:
            release_output_dir(args.output_dir)


def make_dataloader(args, dataset, collate_fn):
    """The (not yet prepared) training loader; ``accelerator.prepare`` shards it by process and
    replaces its sampler by a seeded one (the order is a function of seed and epoch)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
        drop_last=False,
        # its own generator: creating an iterator (e.g. when resuming) must not draw from the global RNG
        generator=torch.Generator().manual_seed(args.seed),
    )


def make_accelerator(args):
    """The Accelerator of a run (seedable data sampler, trackers under ``output_dir/logging_dir``).

    Also the process-safety entry of every trainer: under ``accelerate launch`` / ``torchrun`` the
    process ends when its launcher does, and the main process locks ``--output_dir``
    (:func:`lock_output_dir`; released by :func:`release_output_dir` or at exit).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    exit_with_parent_if_launched()
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"WORLD_SIZE={world} but accelerate set up a single process (no GPU found?): every process would "
            "train alone. On CPU launch with ACCELERATE_USE_CPU=1 (see docs/training.md)."
        )
    if accelerator.is_main_process:
        lock_output_dir(output_dir)
    return accelerator


def make_optimizer(args, parameters, accelerator):
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer_class = torch.optim.AdamW
    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError(
                "--use_8bit_adam needs bitsandbytes: pip install bitsandbytes (or drop the flag)."
            ) from None
        optimizer_class = bnb.optim.AdamW8bit
    return optimizer_class(
        parameters,
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def register_ema_hooks(accelerator, ema, params) -> None:
    """save_state / load_state keep the EMA as ``ema.safetensors`` + ``ema.json`` (no pickle)."""
    from safetensors.torch import load_file, save_file

    def save_hook(models, weights, folder):
        if accelerator.is_main_process:
            state = ema.state_dict()
            shadow = state.pop("shadow_params")
            tensors = {f"{i:05d}": t.detach().contiguous().cpu() for i, t in enumerate(shadow)}
            save_file(tensors, os.path.join(folder, "ema.safetensors"))
            Path(folder, "ema.json").write_text(json.dumps(state), encoding="utf-8")

    def load_hook(models, folder):
        tensors = load_file(os.path.join(folder, "ema.safetensors"))
        state = json.loads(Path(folder, "ema.json").read_text(encoding="utf-8"))
        state["shadow_params"] = [tensors[k] for k in sorted(tensors)]
        ema.load_state_dict(state)
        ema.to(params[0].device)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def make_ema(args, accelerator, params):
    """diffusers' ``EMAModel`` of ``params`` when ``--use_ema`` (checkpointed as safetensors), else None."""
    if not args.use_ema:
        return None
    from diffusers.training_utils import EMAModel

    ema = EMAModel(params, decay=args.ema_decay)
    register_ema_hooks(accelerator, ema, params)
    return ema


def register_folder_hooks(accelerator, save, load) -> None:
    """Make ``save_state`` / ``load_state`` store each prepared model as ``save_pretrained`` folders.

    Args:
        save: ``f(model, folder)``: write the trained parts of an unwrapped prepared model into
            subfolders of the checkpoint ``folder`` (main process only; accelerate's own copy of
            the whole model, which may hold frozen weights, is skipped).
        load: ``f(model, folder)``: load them back into the unwrapped model (not called under
            DeepSpeed, which restores its own checkpoint).
    """

    def save_hook(models, weights, folder):
        if accelerator.is_main_process:
            for item in models:
                save(accelerator.unwrap_model(item), folder)
        while weights:  # everything is saved above
            weights.pop()

    def load_hook(models, folder):
        while models:
            load(accelerator.unwrap_model(models.pop()), folder)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


@contextlib.contextmanager
def ema_weights(ema, params: list[nn.Parameter]):
    """Inside the block ``params`` hold the EMA weights (no-op when ``ema`` is None); restored after."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def freeze(modules, accelerator, dtype: torch.dtype) -> None:
    """Frozen models: no gradients, eval mode, on the accelerator's device in ``dtype`` (the
    mixed-precision dtype; trainable weights stay float32)."""
    for module in modules:
        module.requires_grad_(False)
        module.eval()
        if dtype == torch.float32:
            module.to(accelerator.device)
        else:
            module.to(accelerator.device, dtype)


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


@dataclass
class Prepared:
    """The prepared training objects of a run (what :func:`setup_training` returns)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    dataloader: torch.utils.data.DataLoader
    lr_scheduler: object
    max_train_steps: int
    ema: object = None

    def loop_arguments(self) -> dict:
        """Keyword arguments of :func:`run_training_loop`."""
        return {
            "model": self.model, "optimizer": self.optimizer, "lr_scheduler": self.lr_scheduler,
            "dataloader": self.dataloader, "max_train_steps": self.max_train_steps, "ema": self.ema,
        }  # fmt: skip


def setup_training(
    args, accelerator, model, trainable, dataset, collate_fn, default_steps: int, tracker_name: str
) -> Prepared:
    """EMA (``--use_ema``), optimiser, data loader, lr schedule, ``accelerator.prepare`` and trackers.

    Args:
        model: the module whose forward the loss calls (wrapped by DDP / DeepSpeed).
        trainable: its ``(name, parameter)`` pairs to optimise.
        dataset: the training dataset; ``collate_fn`` its batch collation.
        default_steps: the step count when neither ``--max_train_steps`` nor ``--num_train_epochs``
            is given.
    """
    params = [p for _, p in trainable]
    ema = make_ema(args, accelerator, params)
    optimizer = make_optimizer(args, params, accelerator)
    dataloader = make_dataloader(args, dataset, collate_fn)
    model, optimizer, dataloader, lr_scheduler, steps = prepare_training(
        args, accelerator, model, optimizer, dataloader, ema, default_steps, tracker_name
    )
    return Prepared(model, optimizer, dataloader, lr_scheduler, steps, ema)


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


def prepare_training(
    args, accelerator, model, optimizer, dataloader, ema, default_steps: int, tracker_name: str
):
    """Resolve the step count, build the lr schedule, ``accelerator.prepare`` the four training objects,
    move the EMA to the device and start the trackers (main process) under ``tracker_name``.

    Returns ``(model, optimizer, dataloader, lr_scheduler, max_train_steps)``.
    """
    max_train_steps = resolve_max_train_steps(args, accelerator, len(dataloader), default_steps)
    lr_scheduler = make_lr_scheduler(args, optimizer, accelerator, max_train_steps)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, dataloader, lr_scheduler
    )
    if ema is not None:
        ema.to(accelerator.device)
    if accelerator.is_main_process:
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(tracker_name, config=config)
    return model, optimizer, dataloader, lr_scheduler, max_train_steps


def resolve_max_train_steps(args, accelerator, num_batches: int, default: int) -> int:
    """``--max_train_steps``, else ``--num_train_epochs`` x steps per epoch, else ``default``."""
    if args.max_train_steps is not None:
        return args.max_train_steps
    if args.num_train_epochs is not None:
        per_process = math.ceil(num_batches / accelerator.num_processes)
        return args.num_train_epochs * math.ceil(per_process / args.gradient_accumulation_steps)
    return default


def make_lr_scheduler(args, optimizer, accelerator, max_train_steps: int):
    """diffusers' ``get_scheduler``; accelerate steps it once per process per optimizer step."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
        num_cycles=args.lr_num_cycles,
        power=args.lr_power,
    )


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
            (:func:`training.checkpoints.resume_from_checkpoint`).
        validate: ``f(step) -> metrics`` run on the main process every ``--validation_steps``
            (the last one is kept in ``TrainResult.validation``).
    """
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir)
    params = [p for _, p in trainable]
    identity = tuple(run_info)
    run_info = {
        **run_info,
        "num_processes": accelerator.num_processes,
        "train_batch_size": args.train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "seed": args.seed,
    }
    updates_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    global_step = resume_from_checkpoint(
        accelerator, args.resume_from_checkpoint, output_dir, run_info, identity
    )
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"***** {description}: {len(dataset)} records, {max_train_steps} steps, {updates_per_epoch} steps/epoch, "
        f"batch {args.train_batch_size} x {accelerator.num_processes} processes x "
        f"{args.gradient_accumulation_steps} accumulation = {total_batch} *****"
    )
    result = TrainResult(output_dir, None, global_step)
    progress = tqdm(
        range(max_train_steps),
        initial=global_step,
        desc="steps",
        disable=not accelerator.is_local_main_process,
    )
    window_losses: list[torch.Tensor] = []
    micro_step = 0
    tic = time.perf_counter()
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:
            break
        if hasattr(dataset, "set_epoch"):  # augmentation seeded by (seed, epoch, index)
            dataset.set_epoch(epoch)
        dataloader.set_epoch(epoch)
        loader = dataloader
        if epoch == first_epoch and skip_batches:
            loader = accelerator.skip_first_batches(dataloader, skip_batches)
        for batch in loader:
            micro_position = micro_step * accelerator.num_processes + accelerator.process_index
            with accelerator.accumulate(model), accelerator.autocast():
                with seeded_global_rng(
                    row_seed(args.seed, global_step, micro_position, stream=DROPOUT_STREAM),
                    accelerator.device,
                ):
                    loss = loss_fn(batch, global_step, micro_position)
                loss, logs = loss if isinstance(loss, tuple) else (loss, {})
                accelerator.backward(loss)
                if result.steps_run == 0 and micro_step == 0:
                    check_gradients(accelerator, trainable)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            window_losses.append(loss.detach())
            micro_step += 1
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(params)
            step_loss = accelerator.gather(torch.stack(window_losses).mean()[None]).mean().item()
            window_losses, micro_step = [], 0
            global_step += 1
            stop_if_orphaned()
            result.losses.append(step_loss)
            result.steps_run += 1
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            logs = {**logs, "loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}
            accelerator.log(logs, step=global_step)
            paused = time.perf_counter()
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(
                    accelerator,
                    output_dir,
                    global_step,
                    args.checkpoints_total_limit,
                    {**run_info, "epoch": epoch},
                )
            if (
                validate is not None
                and global_step % args.validation_steps == 0
                and accelerator.is_main_process
            ):
                result.validation = {"step": global_step, "metrics": validate(global_step) or {}}
            tic += time.perf_counter() - paused
            if global_step >= max_train_steps:
                break
    progress.close()
    result.train_seconds = time.perf_counter() - tic
    result.global_step = global_step
    result.peak_memory_bytes = _peak_memory(accelerator.device)
    check_replicas_in_sync(accelerator, params)
    return result
