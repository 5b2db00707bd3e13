"""Command-line arguments shared by the trainers of this folder.

``new_parser`` (with ``--config``: a YAML file whose keys are flag names, command-line flags win),
the shared flag groups (data and augmentation, optimisation, logging / checkpoints / validation),
``load_config_file``, ``parse_args`` (parse + validate the shared flags) and ``mapping_argument``.
Each trainer adds its own groups and may change defaults with ``parser.set_defaults``.

Generic: no MT-Color or L-CoIns module is imported here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from mtcolor.training.diffusion import PREDICTION_TYPES

#: MT section IV.A.2: AdamW, lr linearly warmed up to 5e-5 over 500 iterations, 50% null condition
#: (the defaults of the shared flags; the base-model and L-CoIns trainers set their own).
PAPER_LEARNING_RATE = 5e-5
PAPER_WARMUP_STEPS = 500
PAPER_INSTANCE_DROPOUT = 0.5
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


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
    parser: argparse.ArgumentParser, *, output_dir: str, project: str, steps_help: str, diffusion: bool = True
) -> None:
    """Optimisation, mixed precision, logging, checkpoint and validation flags.

    ``diffusion``: also the flags of the diffusion trainers (gradient checkpointing, xformers, the
    prediction type, the sampler steps and guidance scale of the validation images).
    """
    group = parser.add_argument_group("optimisation")
    _add_optimisation_arguments(group, output_dir, steps_help)
    if diffusion:
        _add_diffusion_arguments(group)
    _add_logging_arguments(parser.add_argument_group("logging, checkpoints, validation"), project, diffusion)


def _add_optimisation_arguments(group, output_dir: str, steps_help: str) -> None:
    """Output folder, seed, batch, steps, optimiser, schedule, precision and EMA flags."""
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
        "--learning_rate",
        type=float,
        default=PAPER_LEARNING_RATE,
        help="Peak learning rate (MT paper: 5e-5).",
    )
    group.add_argument(
        "--scale_lr", action="store_true", help="Multiply the lr by processes x accumulation x batch size."
    )
    group.add_argument("--lr_scheduler", default="constant_with_warmup", choices=LR_SCHEDULERS)
    group.add_argument(
        "--lr_warmup_steps",
        type=int,
        default=PAPER_WARMUP_STEPS,
        help="Linear warm-up steps (MT paper: 500).",
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
        "--use_ema", action="store_true", help="Keep an EMA of the trained weights (exported)."
    )
    group.add_argument("--ema_decay", type=float, default=0.9999)


def _add_diffusion_arguments(group) -> None:
    """Flags of the diffusion trainers: memory savers, the prediction target and its loss weighting."""
    group.add_argument(
        "--gradient_checkpointing", action="store_true", help="Trade compute for activation memory."
    )
    group.add_argument(
        "--enable_xformers_memory_efficient_attention",
        action="store_true",
        help="xformers for the UNet's/ControlNet's own attention (MT-Color processors stay on top).",
    )
    group.add_argument(
        "--prediction_type",
        default=None,
        choices=list(PREDICTION_TYPES),
        help="Training target; default: the base model's scheduler (epsilon for SD-1.5, MT eq. 10).",
    )
    group.add_argument(
        "--snr_gamma",
        type=float,
        default=None,
        help="Min-SNR-gamma loss weighting (Hang et al. 2023 recommend 5): each sample's loss times "
        "min(SNR_t, gamma) / SNR_t (epsilon) or / (SNR_t + 1) (v); default: unweighted.",
    )


def _add_logging_arguments(group, project: str, diffusion: bool) -> None:
    """Trackers, checkpoints, resume and validation flags (``diffusion``: the validation sampler's)."""
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
    if diffusion:
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
    """Parse ``--config`` then the command line (which wins), and validate the shared flags
    (those of :func:`add_training_arguments`, and of :func:`add_data_arguments` when present).

    ``parser.error`` (exit status 2, the flag and the value named) on an invalid value.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config_file(known.config, parser))
    args = parser.parse_args(argv)

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
    if hasattr(args, "resolution") and (args.resolution < 8 or args.resolution % 8):
        parser.error(f"--resolution={args.resolution}; pass a positive multiple of 8 (e.g. 512).")
    if hasattr(args, "crop_scale_min") and not 0 < args.crop_scale_min <= args.crop_scale_max <= 1:
        parser.error(
            f"--crop_scale_min={args.crop_scale_min} --crop_scale_max={args.crop_scale_max}; need 0 < min <= max <= 1."
        )
    for name in ("random_flip", "instance_dropout", "prompt_dropout"):
        if not 0 <= getattr(args, name, 0) <= 1:
            parser.error(f"--{name}={getattr(args, name)}; pass a probability in [0, 1].")
    if args.learning_rate <= 0:
        parser.error(
            f"--learning_rate={args.learning_rate}; pass a positive value (default {parser.get_default('learning_rate')})."
        )
    if args.lr_warmup_steps < 0:
        parser.error(f"--lr_warmup_steps={args.lr_warmup_steps}; pass >= 0.")
    if args.num_validation_samples < 0:
        parser.error(
            f"--num_validation_samples={args.num_validation_samples}; pass >= 0 (0 disables validation)."
        )
    if not 0 < args.ema_decay < 1:
        parser.error(f"--ema_decay={args.ema_decay}; pass a value in (0, 1).")
    if getattr(args, "snr_gamma", None) is not None and not args.snr_gamma > 0:
        parser.error(f"--snr_gamma={args.snr_gamma}; pass a positive value (e.g. 5) or leave it unset.")
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


def parse_mapping_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Replace the mapping flags ``names`` of ``args`` by dicts (:func:`mapping_argument`); an invalid
    value ends with ``parser.error`` naming the flag."""
    try:
        for name in names:
            setattr(args, name, mapping_argument(getattr(args, name), name))
    except ValueError as error:
        parser.error(str(error))
