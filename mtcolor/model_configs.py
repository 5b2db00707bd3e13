"""Model architecture configs (toy and SD-1.5 sizes) and untrained components built from them.

Offline and seeded: a ``UNet2DConditionModel`` with cross-attention at every level,
``ControlNetModel.from_unet``, an 8x ``AutoencoderKL`` (like SD's), a small ``CLIPTextModel`` with
the real CLIP tokenizer (:func:`mtcolor.tokenizer.clip_tokenizer`), a ``DDIMScheduler`` with SD-1.5's
schedule and an ``MTColorAdapter`` for that UNet. ``training/train_base.py`` starts its ``tiny`` and
``small`` presets from these configs, ``mtcolor demo`` falls back on
:func:`untrained_tiny_components` when no trained model is installed, and the benchmarks time
:func:`untrained_sd15_models`. The tests build their components here too (through
:mod:`mtcolor.testing`).
"""

from __future__ import annotations

import torch

#: SD-1.5's noise schedule as a ``DDIMScheduler`` config
DDIM_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def tiny_unet_config(width: int = 32, cross_attention_dim: int = 32, sample_size: int = 8) -> dict:
    """A 2-level ``UNet2DConditionModel`` config (channels ``(width, 2 width)``, cross-attention at both
    levels, latents ``sample_size`` x ``sample_size`` x 4): about 0.8 M parameters at ``width=32``."""
    return {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (width, 2 * width),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }


def tiny_vae_config(width: int = 8) -> dict:
    """An 8x ``AutoencoderKL`` config like SD's (4 levels, 4 latent channels) at toy width."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (width, width, 2 * width, 2 * width),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": width,
        "sample_size": 64,
    }


def tiny_text_encoder_config(hidden_size: int = 32) -> dict:
    """A 2-layer ``CLIPTextConfig`` dict with the real CLIP vocabulary size and SD-1.5's special tokens
    (pad = eos = 49407), ``hidden_size`` wide."""
    return {
        "vocab_size": 49408,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": hidden_size,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }


def untrained_tiny_components(
    seed: int = 0, *, with_controlnet: bool = True, tokenizer_cache: str | None = None
) -> dict:
    """Build every MT-Color pipeline component at toy size (seconds on a CPU, no network).

    Returns a dict with ``vae, text_encoder, tokenizer, unet, controlnet, adapter, scheduler``; every
    model is seeded from ``seed`` (each with its own ``torch.manual_seed`` so they do not depend on
    construction order).
    """
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .models.adapter import MTColorAdapter
    from .tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config())
    controlnet = None
    if with_controlnet:
        torch.manual_seed(seed + 1)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**tiny_vae_config())
    torch.manual_seed(seed + 3)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_encoder_config()))
    torch.manual_seed(seed + 4)
    adapter = MTColorAdapter.from_unet(unet, mask_size=16, mask_channels=(4, 8, 8), encoder_hidden_dim=32)
    for model in (unet, controlnet, vae, text_encoder, adapter):
        if model is not None:
            model.eval()
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(tokenizer_cache),
        "unet": unet,
        "controlnet": controlnet,
        "adapter": adapter,
        "scheduler": DDIMScheduler(**DDIM_CONFIG),
    }


def sd15_unet_config() -> dict:
    """The SD-1.5 UNet architecture (859.5 M parameters), for benchmarks with random weights."""
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def untrained_sd15_models(seed: int = 0, with_controlnet: bool = True) -> dict:
    """SD-1.5-sized UNet (+ ControlNet.from_unet) and a matching MTColorAdapter, random weights."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from .models.adapter import MTColorAdapter

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**sd15_unet_config()).eval()
    controlnet = ControlNetModel.from_unet(unet).eval() if with_controlnet else None
    adapter = MTColorAdapter.from_unet(unet).eval()
    return {"unet": unet, "controlnet": controlnet, "adapter": adapter}
