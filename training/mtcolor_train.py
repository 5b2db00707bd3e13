"""The MT-Color training stages (``training/stage1.py``, ``training/stage2.py``): their flags and
``train(args, stage, build_components, script)``, built on the shared :mod:`mtcolor.training.loop`.

Stage 1 trains the instance encoder and instance branches, stage 2 the ControlNet and the PMAM
modules (MT section III.D); :func:`train` freezes the rest, runs the shared loop with the MT eq. 10
loss of :mod:`mtcolor.training.mtcolor_model`, validates and exports the pipeline with its model card
(:mod:`mtcolor.training.mtcolor_export`).
"""

from __future__ import annotations

import argparse
import logging
import os

import torch
from mtcolor.training import arguments, loop, prepare
from mtcolor.training.arguments import PAPER_INSTANCE_DROPOUT, PAPER_LEARNING_RATE, PAPER_WARMUP_STEPS
from mtcolor.training.mtcolor_data import collate, training_dataset
from mtcolor.training.mtcolor_export import export_pipeline, log_validation, validation_records
from mtcolor.training.mtcolor_model import (
    MTColorTrainingModel,
    check_resolution,
    compute_loss,
    configure_trainable,
    draw_step,
    latent_shape,
)

__all__ = ["PAPER_INSTANCE_DROPOUT", "PAPER_LEARNING_RATE", "PAPER_STEPS", "PAPER_WARMUP_STEPS"]

logger = logging.getLogger("mtcolor.training")

#: MT section IV.A.2: 25k (stage 1) + 20k (stage 2) iterations on 4x A40.
PAPER_STEPS = {1: 25_000, 2: 20_000}


def build_parser(description: str, stage: int) -> argparse.ArgumentParser:
    """The flags every MT-Color trainer shares; stage scripts add their own groups."""
    parser = arguments.new_parser(description)
    add_model_arguments(parser)
    arguments.add_data_arguments(parser, instances=True)
    arguments.add_training_arguments(
        parser,
        output_dir=f"mtcolor-stage{stage}",
        project=f"mtcolor_stage{stage}",
        steps_help=f"the paper's {PAPER_STEPS[stage]}",
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
    group = parser.add_argument_group("loss")
    group.add_argument(
        "--instance_color_weight",
        type=float,
        default=0.0,
        help="Weight of the instance colour term (training/instance_color.py): the predicted clean latents "
        "decoded by the VAE, their mean Lab a*b* inside each instance mask against the training image's "
        "(0: off, MT eq. 10 alone).",
    )
    group.add_argument(
        "--instance_color_ring",
        type=int,
        default=0,
        help="With --instance_color_weight: also compare the a*b* of the band of this many pixels just outside "
        "each mask with the training image's (the neighbour's own colour), against colour bleeding (0: off).",
    )


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """:func:`mtcolor.training.arguments.parse_args` + the MT-Color stages' own checks (a base model is
    required; ``--adapter_config`` becomes a dict)."""
    args = arguments.parse_args(parser, argv)
    if not args.pretrained_model_name_or_path:
        parser.error("--pretrained_model_name_or_path is required (an SD-1.5-layout folder or hub id).")
    arguments.parse_mapping_arguments(parser, args, "adapter_config")
    if args.instance_color_ring < 0:
        parser.error(
            f"--instance_color_ring={args.instance_color_ring}; pass a width in pixels >= 0 (e.g. 2)."
        )
    if not args.instance_color_weight >= 0:
        parser.error(
            f"--instance_color_weight={args.instance_color_weight}; pass a weight >= 0 (0 turns the term off)."
        )
    return args


def register_adapter_hooks(accelerator) -> None:
    """save_state / load_state store the adapter (and ControlNet) of the :class:`MTColorTrainingModel`
    as ``save_pretrained`` folders instead of the whole wrapper (which holds the frozen UNet)."""

    def save(model, folder):
        model.adapter.save_pretrained(os.path.join(folder, "adapter"))
        if model.controlnet is not None:
            model.controlnet.save_pretrained(os.path.join(folder, "controlnet"))

    def load(model, folder):
        from diffusers import ControlNetModel

        from mtcolor.models.adapter import MTColorAdapter

        loaded = MTColorAdapter.from_pretrained(os.path.join(folder, "adapter"))
        model.adapter.load_state_dict(loaded.state_dict())
        if model.controlnet is not None:
            loaded = ControlNetModel.from_pretrained(os.path.join(folder, "controlnet"))
            model.controlnet.load_state_dict(loaded.state_dict())

    prepare.register_folder_hooks(accelerator, save, load)


def train(args, stage: int, build_components, script: str) -> loop.TrainResult:
    """Run one MT-Color training stage end to end (called by the stage scripts' ``main``).

    Args:
        args: the parsed arguments (:func:`parse_args` + the stage's flags).
        stage: 1 or 2 (selects the trainable parameters, :func:`configure_trainable`).
        build_components: ``f(args) -> Components`` (called after seeding, so fresh modules
            initialise identically on every process).
        script: the script's name, for the model card.
    """
    with prepare.training_run(args) as accelerator:  # locks --output_dir (main process), ends trackers
        return _train_stage(accelerator, args, stage, build_components, script)


def _training_model(components, args, stage: int) -> tuple[MTColorTrainingModel, list]:
    """The :class:`MTColorTrainingModel` of the stage and its trainable ``(name, parameter)`` pairs
    (xformers and gradient checkpointing applied when asked)."""
    if args.enable_xformers_memory_efficient_attention:
        from diffusers.utils.import_utils import is_xformers_available

        if not is_xformers_available():
            raise ImportError(
                "--enable_xformers_memory_efficient_attention needs xformers: pip install xformers."
            )
        components.unet.enable_xformers_memory_efficient_attention()
        if components.controlnet is not None:
            components.controlnet.enable_xformers_memory_efficient_attention()
    model = MTColorTrainingModel(
        components.unet,
        components.adapter,
        components.controlnet,
        args.attention_mode,
        args.masked_attention_impl,
    )
    trainable = configure_trainable(model, stage)
    if args.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
        if components.controlnet is not None:
            components.controlnet.enable_gradient_checkpointing()
    return model, trainable


def _place_models(components, accelerator, weight_dtype, trainable) -> None:
    """Frozen models in the mixed-precision dtype and eval mode, trained ones in train mode; every
    trainable weight must be float32."""
    prepare.freeze((components.vae, components.text_encoder, components.unet), accelerator, weight_dtype)
    components.adapter.train()
    if components.controlnet is not None:
        components.controlnet.train()
    for name, param in trainable:
        if param.dtype != torch.float32:
            raise ValueError(
                f"trainable parameter {name} is {param.dtype}; trainable weights must be float32 (mixed precision "
                "only casts the frozen models). Load the models in float32."
            )


def run_info(args, stage: int) -> dict:
    """What a checkpoint must have been trained with to be resumed: the stage and the loss levers
    (``None`` when off, as in checkpoints written before the levers existed)."""
    return {
        "stage": stage,
        "snr_gamma": args.snr_gamma,
        "instance_color_weight": args.instance_color_weight or None,
        "instance_color_ring": args.instance_color_ring or None,
    }


def _loss_function(args, model, components, stage: int, weight_dtype, accelerator):
    """``f(batch, step, micro_position) -> loss`` of the stage: MT eq. 10 with the step's draws."""
    prediction_type = args.prediction_type or components.noise_scheduler.config.prediction_type
    shape = latent_shape(components.vae, args.resolution)
    update_rows = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    timesteps = components.noise_scheduler.config.num_train_timesteps

    def loss_fn(batch, step, micro_position):
        rows = batch["pixel_values"].shape[0]
        draws = draw_step(
            args.seed, step, shape, timesteps, update_rows, micro_position * args.train_batch_size, rows
        )
        return compute_loss(
            model, components, batch, draws, stage=stage, weight_dtype=weight_dtype,
            prediction_type=prediction_type, snr_gamma=args.snr_gamma,
            instance_color_weight=args.instance_color_weight, instance_color_ring=args.instance_color_ring,
        )  # fmt: skip

    return loss_fn


def _stage_info(args, stage: int, script: str, accelerator, components, result, dataset, metrics) -> dict:
    """The stage's ``training_info.json`` entry (also the model card's training section)."""
    update_rows = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    return {
        "stage": stage,
        "script": script,
        "steps": result.global_step,
        "data": {
            "train_data": args.train_data,
            "split": args.train_split or "train",
            "records": len(dataset),
        },
        "batch": {
            "per_process": args.train_batch_size,
            "processes": accelerator.num_processes,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "total": update_rows,
        },
        "parameters": {"trainable": result.trainable_parameters, "total": result.total_parameters},
        "sources": components.sources,
        "final_loss": result.losses[-1] if result.losses else None,
        "validation": metrics,
        "hyperparameters": {**loop.hyperparameters(args), "mixed_precision": accelerator.mixed_precision},
    }


def _train_stage(accelerator, args, stage: int, build_components, script: str) -> loop.TrainResult:
    """The body of :func:`train` once the run is started."""
    # 1. Models: frozen parts in the mixed-precision dtype, trainable weights in fp32
    components = build_components(args)
    model, trainable = _training_model(components, args, stage)
    weight_dtype = prepare.weight_dtype_of(accelerator)
    _place_models(components, accelerator, weight_dtype, trainable)
    trainable_params = [p for _, p in trainable]
    num_trainable = sum(p.numel() for p in trainable_params)
    num_total = sum(p.numel() for p in model.parameters()) + sum(
        p.numel() for m in (components.vae, components.text_encoder) for p in m.parameters()
    )
    logger.info(
        f"stage {stage}: {len(trainable)} trainable tensors, {num_trainable:,} of {num_total:,} parameters"
    )
    register_adapter_hooks(accelerator)

    # 2. Data
    check_resolution(args.resolution, components.vae, components.unet)
    records, dataset = training_dataset(args, instances=True)
    val_records = validation_records(args, records)

    # 3. EMA, optimiser, schedule, prepare, resume and train
    prepared = prepare.setup_training(
        args, accelerator, model, trainable, dataset, collate, PAPER_STEPS[stage], args.tracker_project_name
    )
    model, ema = prepared.model, prepared.ema

    def validate(step):
        with prepare.ema_weights(ema, trainable_params):
            return log_validation(accelerator, model, components, val_records, args, step, weight_dtype)

    result = loop.run_training_loop(
        accelerator,
        args,
        **prepared.loop_arguments(),
        dataset=dataset,
        loss_fn=_loss_function(args, model, components, stage, weight_dtype, accelerator),
        trainable=trainable,
        run_info=run_info(args, stage),
        validate=validate if val_records else None,
        description=f"stage {stage}",
    )
    result.trainable_parameters, result.total_parameters = num_trainable, num_total

    # 4. Final validation and the pipeline folder with its model card
    def export(metrics):
        info = _stage_info(args, stage, script, accelerator, components, result, dataset, metrics)
        stages = [*components.previous_stages, info]
        result.pipeline_dir = export_pipeline(accelerator, model, components, args, stages, weight_dtype)

    final_validation = None
    if val_records:

        def final_validation(step):
            return log_validation(accelerator, model, components, val_records, args, step, weight_dtype)

    return loop.finish_training(
        accelerator, result, ema=ema, params=trainable_params, validate=final_validation, export=export
    )
