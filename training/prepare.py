"""What the shared training loop (:mod:`mtcolor.training.loop`) runs on, for every trainer of this folder
(MT-Color stages 1-2, the base model, L-CoIns): the accelerator of a run (seed, output-folder lock),
the optimiser, lr schedule, EMA, data loader, ``save_state`` hooks and ``accelerator.prepare``.

A trainer builds its models, then calls :func:`setup_training` and hands the result to
:func:`mtcolor.training.loop.run_training_loop`.

Generic: no MT-Color or L-CoIns module is imported here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from mtcolor.training.checkpoints import lock_output_dir, release_output_dir
from torch import nn

from mtcolor.locks import exit_with_parent_if_launched

logger = logging.getLogger("mtcolor.training")


def weight_dtype_of(accelerator) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


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
    output folder, its lock held by the main process); when the block ends the trackers are ended
    (``accelerator.end_training``) and the lock is released."""
    accelerator = start_run(args)
    try:
        yield accelerator
    finally:
        try:
            accelerator.end_training()
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
        """Keyword arguments of :func:`mtcolor.training.loop.run_training_loop`."""
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
