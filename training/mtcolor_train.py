"""The MT-Color training stages (``training/stage1.py``, ``training/stage2.py``): their flags and
``train(args, stage, build_components, script)``, built on the shared :mod:`training.loop`.

Stage 1 trains the instance encoder and instance branches, stage 2 the ControlNet and the PMAM
modules (MT section III.D); :func:`train` freezes the rest, runs the shared loop with the MT eq. 10
loss of :mod:`training.mtcolor_model`, validates and exports the pipeline with its model card
(:mod:`training.mtcolor_export`).
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from training import arguments, loop, prepare
from training.arguments import PAPER_INSTANCE_DROPOUT, PAPER_LEARNING_RATE, PAPER_WARMUP_STEPS
from training.mtcolor_data import collate, training_dataset
from training.mtcolor_export import export_pipeline, log_validation, validation_records
from training.mtcolor_model import (
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


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """:func:`training.arguments.parse_args` + the MT-Color stages' own checks (a base model is
    required; ``--adapter_config`` becomes a dict)."""
    args = arguments.parse_args(parser, argv)
    if not args.pretrained_model_name_or_path:
        parser.error("--pretrained_model_name_or_path is required (an SD-1.5-layout folder or hub id).")
    arguments.parse_mapping_arguments(parser, args, "adapter_config")
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
    with prepare.training_run(args) as accelerator:  # locks --output_dir (main process)
        return _train_stage(accelerator, args, stage, build_components, script)


def _train_stage(accelerator, args, stage: int, build_components, script: str) -> loop.TrainResult:
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
    weight_dtype = prepare.weight_dtype_of(accelerator)
    prepare.freeze((c.vae, c.text_encoder, c.unet), accelerator, weight_dtype)
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

    # 2. Data
    check_resolution(args.resolution, c.vae, c.unet)
    records, dataset = training_dataset(args, instances=True)
    val_records = validation_records(args, records)

    # 3. EMA, optimiser, schedule, prepare, resume and train
    prepared = prepare.setup_training(
        args, accelerator, model, trainable, dataset, collate, PAPER_STEPS[stage], args.tracker_project_name
    )
    model, ema = prepared.model, prepared.ema

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
        with prepare.ema_weights(ema, trainable_params):
            return log_validation(accelerator, model, c, val_records, args, step, weight_dtype)

    result = loop.run_training_loop(
        accelerator,
        args,
        **prepared.loop_arguments(),
        dataset=dataset,
        loss_fn=loss_fn,
        trainable=trainable,
        run_info={"stage": stage},
        validate=validate if val_records else None,
        description=f"stage {stage}",
    )
    result.trainable_parameters, result.total_parameters = num_trainable, num_total
    global_step = result.global_step
    total_batch = update_rows

    # 4. Final validation and the pipeline folder with its model card
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(trainable_params)
        metrics = {}
        if val_records:
            metrics = log_validation(accelerator, model, c, val_records, args, global_step, weight_dtype)
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
            "hyperparameters": {**loop.hyperparameters(args), "mixed_precision": accelerator.mixed_precision},
        }
        result.pipeline_dir = export_pipeline(
            accelerator, model, c, args, [*c.previous_stages, info], weight_dtype
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result
