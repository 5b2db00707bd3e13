"""The models of the base-model trainer (``training/train_base.py``): named sizes, the frozen text
encoder, the VAE loss and its training wrapper, the latent statistics that set the VAE's
``scaling_factor``, and the SD-layout model folder with its model card.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger("mtcolor.training")

#: ``--text_encoder`` value of the frozen random CLIP text encoder
RANDOM_CLIP = "random-clip"


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


def model_configs(args) -> dict[str, dict]:
    """The ``vae`` / ``unet`` / ``text_encoder`` configs of ``--model_preset`` with the overrides, the
    UNet's cross-attention width and sample size made to fit the text encoder and ``--resolution``."""
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


def noise_schedulers(prediction_type: str | None = None):
    """``(DDPMScheduler for training, DDIMScheduler for sampling)`` with SD-1.5's schedule, predicting
    ``prediction_type`` (None: SD-1.5's epsilon). The sampling scheduler is saved with the model, so
    every pipeline and MT-Color stage built on it uses the same target."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from mtcolor.model_configs import DDIM_CONFIG

    config = {**DDIM_CONFIG, **({"prediction_type": prediction_type} if prediction_type else {})}
    return DDPMScheduler.from_config(DDIMScheduler(**config).config), DDIMScheduler(**config)


def frozen_text_encoder(args, config: dict):
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


def decoder_loss(vae, pixels: torch.Tensor, latent_noise: torch.Tensor, chroma_weight: float) -> torch.Tensor:
    """The decoder fine-tuning loss: ``mean((D(z) - x)^2) + chroma_weight * mean((ab(D(z)) - ab(x))^2)
    / 110^2`` with the encoder frozen (``z = mu + sigma * noise`` computed without gradient), x =
    2 * pixels - 1, ab = Lab chroma of the sRGB images.

    The pipelines keep the input's own L and take only ab from the decoded image
    (:func:`mtcolor.color.recombine_luminance`), so the chroma term weighs what they use; the RGB term
    keeps the decoder a decoder. The latent space does not move: every model trained on the encoder's
    latents (base UNet, MT-Color stages) stays valid, as with SD's fine-tuned decoders.
    """
    from mtcolor.color import rgb_to_lab

    x = pixels * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * latent_noise.to(x.device, x.dtype)
    reconstruction = vae.decode(z).sample.float()
    loss = F.mse_loss(reconstruction, x.float())
    if chroma_weight:
        predicted = rgb_to_lab(((reconstruction + 1) / 2).clamp(0, 1))[:, 1:]
        target = rgb_to_lab(pixels.float())[:, 1:]
        loss = loss + chroma_weight * F.mse_loss(predicted / 110.0, target / 110.0)
    return loss


class DecoderTrainingModel(torch.nn.Module):
    """The VAE with :func:`decoder_loss` as its forward (encoder frozen)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        for module in (vae.encoder, vae.quant_conv):
            if module is not None:
                module.requires_grad_(False)

    def forward(self, pixels: torch.Tensor, latent_noise: torch.Tensor, chroma_weight: float) -> torch.Tensor:
        return decoder_loss(self.vae, pixels, latent_noise, chroma_weight)


@torch.no_grad()
def latent_std(vae, dataset, batch_size: int, max_batches: int, device) -> float:
    """Standard deviation of the (unscaled) latent means of up to ``max_batches`` training batches."""
    from mtcolor.training.mtcolor_data import collate

    values = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    for index, batch in enumerate(loader):
        if index == max_batches:
            break
        values.append(
            vae.encode(batch["pixel_values"].to(device) * 2 - 1).latent_dist.mean.float().flatten().cpu()
        )
    return float(torch.cat(values).std())


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
