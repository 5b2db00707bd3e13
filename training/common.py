"""Shared machinery of the MT-Color trainers (``training/stage1.py``, ``training/stage2.py``).

In the style of diffusers' ``examples/controlnet/train_controlnet.py``: ``parse_args`` (YAML
``--config`` + flags, validated) -> ``main(args)`` with 🤗 Accelerate (gradient accumulation, mixed
precision with fp32 trainable weights, gradient checkpointing, trackers, ``save_state``
checkpoints, resume, validation images, a ``save_pretrained`` pipeline with a model card).

Reproducibility contract (what makes ``--resume_from_checkpoint latest`` exact):

* the data order is a function of (seed, epoch) (accelerate's seedable sampler) and every sample's
  augmentation a function of (seed, epoch, index) (:mod:`training.mtcolor_data`);
* every random draw of a training step (VAE posterior sample, noise, timesteps) comes from a
  generator seeded with (seed, step, micro-batch), drawn for the *global* batch, of which each
  process takes its own rows: the run does not depend on the global RNG state, and one process
  with batch 2B computes the same update as two processes with batch B;
* checkpoints are written to ``checkpoint-<step>.tmp`` and renamed to ``checkpoint-<step>`` only
  once complete (with a ``checkpoint.json`` marker written last, holding the size and sha256 of
  every file); ``latest`` only considers complete, renamed folders whose files still match their
  checksums, and falls back to the newest intact one with a warning (a damaged explicit checkpoint
  ends the run with one line naming the folder and the file).

Process safety: the main process holds a lock on ``--output_dir`` for the whole run (a second run
on the same folder refuses to start, naming the holder's pid; the lock of a killed run is taken
over), and a trainer started by ``accelerate launch`` / ``torchrun`` ends when its launcher does
(:mod:`mtcolor.locks`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from mtcolor.locks import (
    FolderLockedError,
    exit_with_parent_if_launched,
    fsync_directory,
    lock_folder,
    parent_gone,
    unlock_folder,
)
from training.mtcolor_data import AugmentConfig, InstanceColorizationDataset, collate, load_training_records
from training.mtcolor_export import export_pipeline, log_validation, validation_records
from training.mtcolor_model import (
    MTColorTrainingModel,
    check_resolution,
    compute_loss,
    configure_trainable,
    draw_step,
    latent_shape,
)

logger = logging.getLogger("mtcolor.training")

#: MT section IV.A.2: AdamW, lr linearly warmed up to 5e-5 over 500 iterations, 50% null condition,
#: 25k (stage 1) + 20k (stage 2) iterations on 4x A40.
PAPER_LEARNING_RATE = 5e-5
PAPER_WARMUP_STEPS = 500
PAPER_INSTANCE_DROPOUT = 0.5
PAPER_STEPS = {1: 25_000, 2: 20_000}

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_MARKER = "checkpoint.json"
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


# ================================================================================================
# arguments
def build_parser(description: str, stage: int) -> argparse.ArgumentParser:
    """The flags every MT-Color trainer shares; stage scripts add their own groups."""
    parser = new_parser(description)
    add_model_arguments(parser)
    add_data_arguments(parser, instances=True)
    add_training_arguments(
        parser,
        output_dir=f"mtcolor-stage{stage}",
        project=f"mtcolor_stage{stage}",
        steps_help=f"the paper's {PAPER_STEPS[stage]}",
    )
    return parser


def new_parser(description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with ``--config`` (a YAML file of flag values)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config",
        type=str,
        default=None,
        help="YAML file whose keys are flag names; command-line flags override it.",
    )
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the SD-1.5-layout base model comes from, and the masked attention options."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="SD-1.5-layout folder or hub id (vae/, text_encoder/, tokenizer/, unet/, scheduler/).",
    )
    group.add_argument("--revision", type=str, default=None, help="Revision of the hub model.")
    group.add_argument("--variant", type=str, default=None, help="Weight variant to load, e.g. fp16.")
    group.add_argument(
        "--attention_mode",
        default=None,
        choices=["renormalized", "paper"],
        help="Masked attention mode used in training (default: the adapter's config).",
    )
    group.add_argument(
        "--masked_attention_impl",
        default="auto",
        help="Masked attention implementation (mtcolor.attention.kernels).",
    )


def add_data_arguments(parser: argparse.ArgumentParser, instances: bool = True) -> None:
    """Training / validation data and augmentation (``instances``: the MT-Color instance flags)."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--cache_dir", type=str, default=None, help="Cache folder for hub models and datasets."
    )
    group.add_argument(
        "--train_data", type=str, default=None, help="Record dataset folder (parquet shards) or hub id."
    )
    group.add_argument(
        "--train_split", type=str, default=None, help="Split of --train_data (default: train)."
    )
    group.add_argument(
        "--validation_data",
        type=str,
        default=None,
        help="Record dataset for validation images (default: --train_data).",
    )
    group.add_argument("--validation_split", type=str, default=None, help="Split of --validation_data.")
    group.add_argument(
        "--resolution", type=int, default=512, help="Side of the square training crops (pixels)."
    )
    group.add_argument(
        "--crop_scale_min", type=float, default=1.0, help="Smallest crop side / image short side."
    )
    group.add_argument(
        "--crop_scale_max", type=float, default=1.0, help="Largest crop side / image short side."
    )
    group.add_argument(
        "--center_crop", action="store_true", help="Centre the crops instead of random placement."
    )
    group.add_argument("--random_flip", type=float, default=0.0, help="Probability of a horizontal flip.")
    group.add_argument(
        "--prompt_dropout",
        type=float,
        default=0.1,
        help="Probability that the global prompt is replaced by ''.",
    )
    if instances:
        group.add_argument(
            "--instance_dropout",
            type=float,
            default=PAPER_INSTANCE_DROPOUT,
            help="Probability of the null instance condition (no masks, no instance texts); paper: 0.5.",
        )
        group.add_argument(
            "--max_instances", type=int, default=None, help="Keep at most this many (largest) instances."
        )
        group.add_argument(
            "--min_instance_pixels",
            type=int,
            default=1,
            help="Drop instances smaller than this at the training resolution.",
        )
    group.add_argument("--dataloader_num_workers", type=int, default=0)


def add_training_arguments(
    parser: argparse.ArgumentParser, *, output_dir: str, project: str, steps_help: str
) -> None:
    """Optimisation, mixed precision, logging, checkpoint and validation flags."""
    group = parser.add_argument_group("optimisation")
    group.add_argument("--output_dir", type=str, default=output_dir)
    group.add_argument("--seed", type=int, default=0, help="Seed of initialisation, data order and noise.")
    group.add_argument("--train_batch_size", type=int, default=4, help="Batch size per process.")
    group.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help=f"Optimizer steps (default: --num_train_epochs if given, else {steps_help}).",
    )
    group.add_argument(
        "--num_train_epochs", type=int, default=None, help="Epochs, when --max_train_steps is unset."
    )
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument(
        "--gradient_checkpointing", action="store_true", help="Trade compute for activation memory."
    )
    group.add_argument(
        "--learning_rate", type=float, default=PAPER_LEARNING_RATE, help="Peak learning rate (paper 5e-5)."
    )
    group.add_argument(
        "--scale_lr", action="store_true", help="Multiply the lr by processes x accumulation x batch size."
    )
    group.add_argument("--lr_scheduler", default="constant_with_warmup", choices=LR_SCHEDULERS)
    group.add_argument(
        "--lr_warmup_steps", type=int, default=PAPER_WARMUP_STEPS, help="Linear warm-up (paper 500)."
    )
    group.add_argument("--lr_num_cycles", type=int, default=1, help="Cycles of cosine_with_restarts.")
    group.add_argument("--lr_power", type=float, default=1.0, help="Power of the polynomial scheduler.")
    group.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes 8-bit AdamW (CUDA).")
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=1e-2)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping (0 disables it).")
    group.add_argument(
        "--mixed_precision",
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Frozen models run in this precision; trainable weights stay fp32 (default: accelerate config).",
    )
    group.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere+ GPUs.")
    group.add_argument(
        "--enable_xformers_memory_efficient_attention",
        action="store_true",
        help="xformers for the UNet's/ControlNet's own attention (MT-Color processors stay on top).",
    )
    group.add_argument(
        "--use_ema", action="store_true", help="Keep an EMA of the trained weights (exported)."
    )
    group.add_argument("--ema_decay", type=float, default=0.9999)
    group.add_argument(
        "--prediction_type",
        default=None,
        choices=["epsilon", "v_prediction"],
        help="Training target; default: the base model's scheduler (epsilon for SD-1.5, MT eq. 10).",
    )

    group = parser.add_argument_group("logging, checkpoints, validation")
    group.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all or none.")
    group.add_argument("--logging_dir", default="logs", help="Tracker folder, relative to --output_dir.")
    group.add_argument("--tracker_project_name", default=project)
    group.add_argument(
        "--checkpointing_steps", type=int, default=500, help="save_state every N optimizer steps."
    )
    group.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most N checkpoints."
    )
    group.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="A checkpoint-<step> folder, or 'latest' (the newest complete one in --output_dir; none = fresh start).",
    )
    group.add_argument("--validation_steps", type=int, default=1000, help="Validation images every N steps.")
    group.add_argument(
        "--num_validation_samples", type=int, default=2, help="Images colorized per validation (0: off)."
    )
    group.add_argument("--validation_inference_steps", type=int, default=20)
    group.add_argument("--validation_guidance_scale", type=float, default=7.5)


def load_config_file(path: str, parser: argparse.ArgumentParser) -> dict:
    """Read a YAML ``--config`` file whose keys are flag names (``learning_rate: 5.0e-5``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ValueError(
            f"--config {path!r} does not exist; pass a YAML file whose keys are flag names."
        ) from None
    if not isinstance(values, dict):
        raise ValueError(
            f"--config {path!r} holds a {type(values).__name__}; it must map flag names to values."
        )
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"--config {path!r} has unknown keys {unknown}; keys are flag names such as 'learning_rate'."
        )
    return values


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``--config`` then the command line (which wins), and validate the shared flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config_file(known.config, parser))
    args = parser.parse_args(argv)

    if hasattr(args, "pretrained_model_name_or_path") and not args.pretrained_model_name_or_path:
        parser.error("--pretrained_model_name_or_path is required (an SD-1.5-layout folder or hub id).")
    if not args.train_data:
        parser.error("--train_data is required (a dataset_builder record folder or a datasets hub id).")
    for name in (
        "train_batch_size",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "validation_steps",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)}; pass a positive integer.")
    for name in ("max_train_steps", "num_train_epochs", "checkpoints_total_limit", "max_instances"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "max_instances" else 1):
            parser.error(f"--{name}={value}; pass a positive integer or leave it unset.")
    if args.resolution < 8 or args.resolution % 8:
        parser.error(f"--resolution={args.resolution}; pass a positive multiple of 8 (e.g. 512).")
    if not 0 < args.crop_scale_min <= args.crop_scale_max <= 1:
        parser.error(
            f"--crop_scale_min={args.crop_scale_min} --crop_scale_max={args.crop_scale_max}; need 0 < min <= max <= 1."
        )
    for name in ("random_flip", "instance_dropout", "prompt_dropout"):
        if not 0 <= getattr(args, name, 0) <= 1:
            parser.error(f"--{name}={getattr(args, name)}; pass a probability in [0, 1].")
    if args.learning_rate <= 0:
        parser.error(f"--learning_rate={args.learning_rate}; pass a positive value (MT-Color paper: 5e-5).")
    if args.lr_warmup_steps < 0:
        parser.error(f"--lr_warmup_steps={args.lr_warmup_steps}; pass >= 0 (paper: 500).")
    if args.num_validation_samples < 0:
        parser.error(
            f"--num_validation_samples={args.num_validation_samples}; pass >= 0 (0 disables validation)."
        )
    if not 0 < args.ema_decay < 1:
        parser.error(f"--ema_decay={args.ema_decay}; pass a value in (0, 1).")
    if getattr(args, "min_instance_pixels", 1) < 1:
        parser.error(f"--min_instance_pixels={args.min_instance_pixels}; pass >= 1.")
    if args.dataloader_num_workers < 0:
        parser.error(f"--dataloader_num_workers={args.dataloader_num_workers}; pass >= 0.")
    resume = args.resume_from_checkpoint
    if resume not in (None, "latest") and not Path(resume).is_dir():
        parser.error(
            f"--resume_from_checkpoint={resume!r} is not a folder; pass a checkpoint-<step> folder or 'latest'."
        )
    return args


def mapping_argument(value, name: str) -> dict:
    """A mapping flag given as a YAML mapping (config file), a JSON/YAML file path or inline JSON."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        path = Path(value)
        if path.is_file():
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        else:
            try:
                loaded = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(
                    f"--{name}={value!r} is neither a file nor JSON; pass e.g. '{{\"mask_size\": 64}}' or a YAML file."
                ) from None
        if isinstance(loaded, dict):
            return loaded
    raise ValueError(f"--{name}={value!r}; pass a mapping (YAML/JSON) of keyword arguments.")


# ================================================================================================
# checkpoints
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
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    temporary = root / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if temporary.exists():
            shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
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

    A checkpoint written before checksums were recorded gets structural checks only (no empty file,
    every ``.safetensors`` as long as its header says) and a warning.

    Raises:
        CheckpointError: naming the folder and the first missing, truncated or changed file.
    """
    folder = Path(folder)
    marker = read_checkpoint_marker(folder)
    files = marker.get("files")
    if not isinstance(files, dict):
        logger.warning(f"checkpoint {folder} has no checksums (written by an older version); not verified")
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            problem = _structure_problem(path)
            if problem is not None:
                raise CheckpointError(f"checkpoint {str(folder)!r}: {path.relative_to(folder)} {problem}")
        return marker
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


def _structure_problem(path: Path) -> str | None:
    """Cheap checks of one file of an unverifiable checkpoint."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    if path.suffix != ".safetensors":
        return None
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            header = json.loads(handle.read(length)) if 0 < length <= size - 8 else None
        except (ValueError, UnicodeDecodeError):
            header = None
    if not isinstance(header, dict):
        return "has no valid safetensors header (truncated?)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError):
        return "has an invalid safetensors header"
    if 8 + length + end != size:
        return f"has {size} bytes, {8 + length + end} by its safetensors header (truncated?)"
    return None


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
    fallback of the parent-death signal armed by :func:`make_accelerator`)."""
    if parent_gone():
        logger.error("the launcher of this run is gone; stopping")
        raise SystemExit(128 + 15)


# ================================================================================================
# the training run
@dataclass
class TrainResult:
    """What :func:`train` returns (on every process; ``pipeline_dir`` is written by the main one)."""

    output_dir: Path
    pipeline_dir: Path | None
    global_step: int
    losses: list = field(default_factory=list)  # mean loss over processes of every optimizer step run
    train_seconds: float = 0.0  # time in training steps (no validation / checkpoint / export)
    steps_run: int = 0  # optimizer steps run by this call (after a resume: fewer than global_step)
    peak_memory_bytes: int = 0  # CUDA peak allocated, or the process's peak RSS on CPU
    trainable_parameters: int = 0
    total_parameters: int = 0

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


def make_dataloader(args, dataset):
    """The (not yet prepared) training loader; ``accelerator.prepare`` shards it by process and
    replaces its sampler by a seeded one (the order is a function of seed and epoch)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
        drop_last=False,
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


def register_adapter_hooks(accelerator) -> None:
    """save_state / load_state store the adapter (and ControlNet) of the :class:`MTColorTrainingModel`
    as ``save_pretrained`` folders instead of the whole wrapper (which holds the frozen UNet)."""

    def save_hook(models, weights, folder):
        if accelerator.is_main_process:
            for item in models:
                model = accelerator.unwrap_model(item)
                model.adapter.save_pretrained(os.path.join(folder, "adapter"))
                if model.controlnet is not None:
                    model.controlnet.save_pretrained(os.path.join(folder, "controlnet"))
        while weights:  # everything is saved above; do not let accelerate save the frozen UNet too
            weights.pop()

    def load_hook(models, folder):
        from diffusers import ControlNetModel

        from mtcolor.models.adapter import MTColorAdapter

        while models:  # (empty under DeepSpeed, which restores its own checkpoint)
            model = accelerator.unwrap_model(models.pop())
            loaded = MTColorAdapter.from_pretrained(os.path.join(folder, "adapter"))
            model.adapter.load_state_dict(loaded.state_dict())
            if model.controlnet is not None:
                loaded = ControlNetModel.from_pretrained(os.path.join(folder, "controlnet"))
                model.controlnet.load_state_dict(loaded.state_dict())
            del loaded

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


def train(args, stage: int, build_components, script: str) -> TrainResult:
    """Run one MT-Color training stage end to end (called by the stage scripts' ``main``).

    Args:
        args: the parsed arguments (:func:`parse_args` + the stage's flags).
        stage: 1 or 2 (selects the trainable parameters, :func:`configure_trainable`).
        build_components: ``f(args) -> Components`` (called after seeding, so fresh modules
            initialise identically on every process).
        script: the script's name, for the model card.
    """
    accelerator = start_run(args)  # locks --output_dir (main process)
    try:
        return _train_stage(accelerator, args, stage, build_components, script)
    finally:
        if accelerator.is_main_process:
            release_output_dir(args.output_dir)


def _train_stage(accelerator, args, stage: int, build_components, script: str) -> TrainResult:
    """The body of :func:`train` once the run is started."""
    # 1. Models: frozen parts in the mixed-precision dtype, trainable weights in fp32
    c = build_components(args)
    if args.enable_xformers_memory_efficient_attention:
        from diffusers.utils.import_utils import is_xformers_available

        if not is_xformers_available():
            raise ImportError(
                "--enable_xformers_memory_efficient_attention needs xformers: pip install xformers."
            )
        c.unet.enable_xformers_memory_efficient_attention()
        if c.controlnet is not None:
            c.controlnet.enable_xformers_memory_efficient_attention()
    model = MTColorTrainingModel(
        c.unet, c.adapter, c.controlnet, args.attention_mode, args.masked_attention_impl
    )
    trainable = configure_trainable(model, stage)
    if args.gradient_checkpointing:
        c.unet.enable_gradient_checkpointing()
        if c.controlnet is not None:
            c.controlnet.enable_gradient_checkpointing()
    weight_dtype = weight_dtype_of(accelerator)
    for frozen in (c.vae, c.text_encoder, c.unet):
        frozen.requires_grad_(False)
        if weight_dtype == torch.float32:
            frozen.to(accelerator.device)
        else:
            frozen.to(accelerator.device, weight_dtype)
    c.vae.eval()
    c.text_encoder.eval()
    c.unet.eval()
    c.adapter.train()
    if c.controlnet is not None:
        c.controlnet.train()
    for name, param in trainable:
        if param.dtype != torch.float32:
            raise ValueError(
                f"trainable parameter {name} is {param.dtype}; trainable weights must be float32 (mixed precision "
                "only casts the frozen models). Load the models in float32."
            )
    trainable_params = [p for _, p in trainable]
    num_trainable = sum(p.numel() for p in trainable_params)
    num_total = sum(p.numel() for p in model.parameters()) + sum(
        p.numel() for m in (c.vae, c.text_encoder) for p in m.parameters()
    )
    logger.info(
        f"stage {stage}: {len(trainable)} trainable tensors, {num_trainable:,} of {num_total:,} parameters"
    )

    register_adapter_hooks(accelerator)
    ema = make_ema(args, accelerator, trainable_params)

    # 2. Optimiser
    optimizer = make_optimizer(args, trainable_params, accelerator)

    # 3. Data
    augment = AugmentConfig(
        resolution=args.resolution,
        crop_scale=(args.crop_scale_min, args.crop_scale_max),
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        instance_dropout=args.instance_dropout,
        prompt_dropout=args.prompt_dropout,
        max_instances=args.max_instances,
        min_instance_pixels=args.min_instance_pixels,
    )
    check_resolution(args.resolution, c.vae, c.unet)
    records = load_training_records(args.train_data, args.train_split, args.cache_dir)
    dataset = InstanceColorizationDataset(records, augment, seed=args.seed)
    train_dataloader = make_dataloader(args, dataset)
    val_records = validation_records(args, records)

    # 4. Schedule, prepare, resume and train
    model, optimizer, train_dataloader, lr_scheduler, max_train_steps = prepare_training(
        args,
        accelerator,
        model,
        optimizer,
        train_dataloader,
        ema,
        PAPER_STEPS[stage],
        args.tracker_project_name,
    )

    prediction_type = args.prediction_type or c.noise_scheduler.config.prediction_type
    shape = latent_shape(c.vae, args.resolution)
    update_rows = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps

    def loss_fn(batch, step, micro_position):
        draws = draw_step(
            args.seed,
            step,
            shape,
            c.noise_scheduler.config.num_train_timesteps,
            update_rows,
            micro_position * args.train_batch_size,
            batch["pixel_values"].shape[0],
        )
        return compute_loss(
            model, c, batch, draws, stage=stage, weight_dtype=weight_dtype, prediction_type=prediction_type
        )

    def validate(step):
        return log_validation(
            accelerator, model, c, val_records, args, step, weight_dtype, ema, trainable_params
        )

    result = run_training_loop(
        accelerator,
        args,
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        dataloader=train_dataloader,
        dataset=dataset,
        loss_fn=loss_fn,
        trainable=trainable,
        max_train_steps=max_train_steps,
        run_info={"stage": stage},
        ema=ema,
        validate=validate if val_records else None,
        description=f"stage {stage}",
    )
    result.trainable_parameters, result.total_parameters = num_trainable, num_total
    global_step = result.global_step
    total_batch = update_rows

    # 5. Final validation and the pipeline folder with its model card
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        metrics = {}
        if val_records:
            metrics = log_validation(
                accelerator, model, c, val_records, args, global_step, weight_dtype, ema, trainable_params
            )
        if ema is not None:
            ema.copy_to(trainable_params)
        info = {
            "stage": stage,
            "script": script,
            "steps": global_step,
            "data": {
                "train_data": args.train_data,
                "split": args.train_split or "train",
                "records": len(dataset),
            },
            "batch": {
                "per_process": args.train_batch_size,
                "processes": accelerator.num_processes,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "total": total_batch,
            },
            "parameters": {"trainable": num_trainable, "total": num_total},
            "sources": c.sources,
            "final_loss": result.losses[-1] if result.losses else None,
            "validation": metrics,
            "hyperparameters": {**_hyperparameters(args), "mixed_precision": accelerator.mixed_precision},
        }
        result.pipeline_dir = export_pipeline(
            accelerator, model, c, args, [*c.previous_stages, info], weight_dtype
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


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


def _hyperparameters(args) -> dict:
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
        loss_fn: ``f(batch, step, micro_position) -> loss``; ``micro_position`` is the index of this
            process's micro-batch within the optimizer step (``micro * processes + process``), so
            random draws can be made independent of the process count (see ``draw_step``).
        trainable: ``(name, parameter)`` pairs that the optimiser updates.
        run_info: facts stored in every checkpoint marker; resuming a checkpoint whose ``stage`` or
            ``phase`` differs raises, other differences are logged.
    """
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir)
    params = [p for _, p in trainable]
    run_info = {
        **run_info,
        "num_processes": accelerator.num_processes,
        "train_batch_size": args.train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "seed": args.seed,
    }
    updates_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    global_step = 0
    checkpoint = resolve_checkpoint_or_fail(args.resume_from_checkpoint, output_dir)
    marker = read_checkpoint_marker(checkpoint) if checkpoint is not None else None
    if args.resume_from_checkpoint and checkpoint is None:
        logger.info(f"no complete checkpoint in {output_dir}; starting a new run")
    if checkpoint is not None:
        changed = {k: (marker.get(k), v) for k, v in run_info.items() if marker.get(k) != v}
        for key in ("stage", "phase"):
            if key in changed:
                raise ValueError(
                    f"{checkpoint} was written with {key}={changed[key][0]!r}; this run has {key}={changed[key][1]!r}."
                )
        if changed:
            logger.warning(f"resuming with changed settings {changed}: the data position is only approximate")
        load_checkpoint_state(accelerator, checkpoint, marker)
        global_step = int(marker["step"])
        logger.info(f"resumed from {checkpoint} at step {global_step}")
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
        dataset.set_epoch(epoch)
        dataloader.set_epoch(epoch)
        loader = dataloader
        if epoch == first_epoch and skip_batches:
            loader = accelerator.skip_first_batches(dataloader, skip_batches)
        for batch in loader:
            micro_position = micro_step * accelerator.num_processes + accelerator.process_index
            with accelerator.accumulate(model), accelerator.autocast():
                loss = loss_fn(batch, global_step, micro_position)
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
            accelerator.log({"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
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
                validate(global_step)
            tic += time.perf_counter() - paused
            if global_step >= max_train_steps:
                break
    progress.close()
    result.train_seconds = time.perf_counter() - tic
    result.global_step = global_step
    result.peak_memory_bytes = _peak_memory(accelerator.device)
    check_replicas_in_sync(accelerator, params)
    return result
