"""The MT-Color training model and loss, shared by ``training/stage1.py`` and ``stage2.py``.

* :class:`MTColorTrainingModel`: UNet (+ ControlNet) + adapter as one module whose forward is
  :func:`mtcolor.denoise.predict_noise` (the pipeline's own wiring), so DDP / DeepSpeed wrap one
  module and see one forward pass;
* :func:`configure_trainable`: the parameters each stage trains (MT section IV.A.1);
* :func:`draw_step` / :func:`compute_loss`: the random inputs of a step and the loss of MT eq. 10.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from mtcolor.training.diffusion import check_prediction_type, decode_latents, diffusion_loss, encode_latents
from torch import nn

TRAINING_INFO = "training_info.json"


@dataclass
class Components:
    """Every model a stage works with (see ``training/stage1.py`` / ``stage2.py``)."""

    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    unet: nn.Module
    adapter: nn.Module
    controlnet: nn.Module | None
    noise_scheduler: object
    #: the frozen text encoder with a per-text memo (:class:`mtcolor.conditioning.CachedTextEncoder`)
    text_cache: object | None = None
    sources: dict = field(default_factory=dict)  # component -> where it was loaded from ("new" if fresh)
    previous_stages: list = field(default_factory=list)  # training_info of the stages before this one


def load_base_models(args) -> tuple:
    """``(vae, text_encoder, tokenizer, unet, noise_scheduler)`` from ``--pretrained_model_name_or_path``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer

    from mtcolor.text_encoders import load_text_encoder

    path = args.pretrained_model_name_or_path
    common = {"revision": args.revision, "cache_dir": args.cache_dir}
    weights = {**common, "variant": args.variant}
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", **common)
    text_encoder = load_text_encoder(path, **weights)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **weights)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **weights)
    noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **common)
    return vae, text_encoder, tokenizer, unet, noise_scheduler


#: adapter config fields that may be changed on trained weights (ablation switches, MT Tables III-IV)
ADAPTER_SWITCHES = ("attention_mode", "use_instance_branch", "use_instance_masks", "use_pmam")


def load_adapter(name_or_path: str, args, overrides: dict | None = None):
    """An ``MTColorAdapter`` from its folder, a pipeline folder holding ``adapter/``, or a hub id
    (the repository itself, else its ``adapter`` subfolder).

    ``overrides``: new values of the :data:`ADAPTER_SWITCHES` config fields (saved with the
    adapter, so the trained pipeline runs the same variant by default); other keys are an error.
    """
    from mtcolor.models.adapter import MTColorAdapter

    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(ADAPTER_SWITCHES))
    if unknown:
        raise ValueError(
            f"adapter_config={overrides} changes {unknown} of a trained adapter; only {list(ADAPTER_SWITCHES)} "
            "can change on trained weights (the other fields fix the weights' shapes)."
        )
    kwargs = {"revision": args.revision, "cache_dir": args.cache_dir, **overrides}
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / "adapter" / "config.json").is_file():
            path = path / "adapter"
        if not (path / "config.json").is_file():
            raise ValueError(
                f"adapter_name_or_path={name_or_path!r} holds no MTColorAdapter (config.json) and no adapter/ "
                "subfolder; pass the stage-1 adapter or pipeline folder."
            )
        return MTColorAdapter.from_pretrained(str(path), **overrides)
    try:
        return MTColorAdapter.from_pretrained(name_or_path, **kwargs)
    except OSError:
        return MTColorAdapter.from_pretrained(name_or_path, subfolder="adapter", **kwargs)


def read_training_info(folder: str | os.PathLike | None) -> list[dict]:
    """The ``training_info.json`` stage list of a pipeline folder written by a trainer ([] if none)."""
    if folder is None:
        return []
    path = Path(folder) / TRAINING_INFO
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get("stages", []))


class MTColorTrainingModel(nn.Module):
    """UNet (+ ControlNet) + adapter as one module, so DDP / DeepSpeed see one forward pass.

    Its forward is exactly :func:`mtcolor.denoise.predict_noise` with the context the adapter
    builds from the batch's label maps and instance text embeddings (the wiring the pipeline uses).
    Only the parameters the stage trains have ``requires_grad`` (see :func:`configure_trainable`).
    """

    def __init__(self, unet, adapter, controlnet=None, attention_mode: str | None = None, impl: str = "auto"):
        super().__init__()
        self.unet = unet
        self.adapter = adapter
        self.controlnet = controlnet
        self.attention_mode = attention_mode
        self.impl = impl
        adapter.install(unet)

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        label_map: torch.Tensor,
        instance_embeds: torch.Tensor,
        num_instances: torch.Tensor,
        control_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted noise (B, 4, h, w).

        Args:
            noisy_latents: (B, 4, h, w) z_t; timesteps: (B,) int64.
            encoder_hidden_states: (B, 77, D) CLIP hidden states of the global prompts.
            label_map: (B, H, W) int64 label maps at pixel resolution (0 = background).
            instance_embeds: (B, n_max, D) pooled CLIP embeddings of the instance texts.
            num_instances: (B,) int64 real instances per sample.
            control_image: (B, 3, H, W) gray image in [0, 1] (stage 2), or None (stage 1).
        """
        from mtcolor.denoise import predict_noise

        self.adapter.ensure_installed(self.unet)
        context = self.adapter.build_context(
            label_map,
            instance_embeds,
            num_instances,
            tuple(noisy_latents.shape[-2:]),
            mode=self.attention_mode,
            impl=self.impl,
        )
        return predict_noise(
            self.unet,
            noisy_latents,
            timesteps,
            encoder_hidden_states,
            context=context,
            controlnet=self.controlnet,
            control_image=control_image,
        )


def configure_trainable(model: MTColorTrainingModel, stage: int) -> list[tuple[str, nn.Parameter]]:
    """Freeze everything but the stage's parameters; return them as ``(name, param)`` in ``model``.

    * stage 1: the adapter's instance encoder, null token and instance branches
      (``adapter.stage_parameters(1)``); UNet frozen, no ControlNet.
    * stage 2: the whole ControlNet + the adapter's PMAM modules (``adapter.stage_parameters(2)``);
      UNet and the stage-1 adapter parts frozen.

    Modules an ablation switches off in the adapter's config (``use_pmam`` / ``use_instance_branch``
    false, MT Tables III-IV) take no part in the forward pass and are not trained; a stage left
    with nothing of the adapter to train in stage 1 is an error.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage={stage!r}; expected 1 or 2.")
    if stage == 2 and model.controlnet is None:
        raise ValueError("stage 2 trains a ControlNet but model.controlnet is None; build one first.")
    config = model.adapter.config
    if stage == 1 and not config.use_instance_branch:
        raise ValueError(
            "stage 1 trains the instance branch, but the adapter has use_instance_branch=False; the 'w/o "
            "instance branch' ablation skips stage 1 (training/stage2.py --fresh_adapter)."
        )
    model.requires_grad_(False)
    names = {f"adapter.{name}" for name, _ in model.adapter.stage_parameters(stage)}
    if not config.use_pmam:
        names = {name for name in names if not name.startswith("adapter.pmams.")}
    if stage == 2:
        names |= {f"controlnet.{name}" for name, _ in model.controlnet.named_parameters()}
    trainable = [(name, param) for name, param in model.named_parameters() if name in names]
    for _, param in trainable:
        param.requires_grad_(True)
    return trainable


# ================================================================================================
# one training step
def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator of the random draws of optimizer step ``step`` (all its micro-batches)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0xD1FF, int(step)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass
class StepDraws:
    """The random inputs of one micro-batch: posterior sample noise, diffusion noise, timesteps."""

    latent_noise: torch.Tensor  # (b, C, h, w)
    noise: torch.Tensor  # (b, C, h, w)
    timesteps: torch.Tensor  # (b,) int64


def draw_step(
    seed: int,
    step: int,
    latent_shape: tuple[int, int, int],
    num_train_timesteps: int,
    update_rows: int,
    offset: int,
    count: int,
) -> StepDraws:
    """The draws of rows ``offset:offset+count`` of optimizer step ``step``.

    Everything is drawn for all ``update_rows`` samples of the update (batch x processes x
    accumulation steps) from :func:`step_generator`; micro-batch ``m`` of process ``r`` holds the
    sampler's batch ``m * processes + r`` and takes rows ``(m * processes + r) * batch``. So a
    sample's noise and timestep depend only on its position in the update, not on how the update
    is split over processes and accumulation steps (one process with batch 2B = two with batch B
    = one with batch B and 2 accumulation steps).
    """
    if offset < 0 or count < 1 or offset + count > update_rows:
        raise ValueError(f"rows {offset}:{offset + count} are outside the update's {update_rows} rows.")
    generator = step_generator(seed, step)
    latent_noise = torch.randn((update_rows, *latent_shape), generator=generator)
    noise = torch.randn((update_rows, *latent_shape), generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (update_rows,), generator=generator)
    rows = slice(offset, offset + count)
    return StepDraws(latent_noise[rows], noise[rows], timesteps[rows])


def encode_batch_texts(encode, prompts: list[str], instance_texts: list[list[str]], device, dtype):
    """Text conditioning of a batch.

    Args:
        encode: ``texts, device -> (hidden (N, L, D), pooled (N, D))``: a
            :class:`mtcolor.conditioning.CachedTextEncoder` (the frozen encoder, each text encoded once).

    Returns:
        prompt hidden states (B, L, D), instance embeddings (B, max(1, n_max), D) (zero padding:
        at least one slot so the instance encoder is part of every step's graph, which DDP needs)
        and instance counts (B,) int64.
    """
    hidden, _ = encode(prompts, device)
    counts = torch.tensor([len(t) for t in instance_texts], dtype=torch.long, device=device)
    n_max = max(1, int(counts.max()) if len(instance_texts) else 0)
    embeds = torch.zeros(len(instance_texts), n_max, hidden.shape[-1], device=device, dtype=dtype)
    flat = [t for sample in instance_texts for t in sample]
    if flat:
        _, pooled = encode(flat, device)
        start = 0
        for b, sample in enumerate(instance_texts):
            embeds[b, : len(sample)] = pooled[start : start + len(sample)].to(dtype)
            start += len(sample)
    return hidden.to(dtype), embeds, counts


def compute_loss(
    model,
    components: Components,
    batch: dict,
    draws: StepDraws,
    *,
    stage: int,
    weight_dtype: torch.dtype,
    prediction_type: str = "epsilon",
    snr_gamma: float | None = None,
    instance_color_weight: float = 0.0,
    instance_color_ring: int = 0,
) -> torch.Tensor:
    """MT eq. 10: ``|| eps - eps_theta(z_t, t, tau_g, c, M_n, T_n) ||^2`` (mean over elements), through
    the shared :func:`mtcolor.training.diffusion.diffusion_loss`.

    Args:
        model: the (possibly DDP-wrapped) :class:`MTColorTrainingModel`.
        batch: a :func:`mtcolor.training.mtcolor_data.collate` batch on the model's device.
        draws: the step's random draws (:func:`draw_step`).
        stage: 1 (no ControlNet) or 2 (the gray image conditions the ControlNet).
        prediction_type: ``"epsilon"`` (MT eq. 10) or ``"v_prediction"`` (else ``ValueError``).
        snr_gamma: Min-SNR-gamma weighting of the samples (:func:`mtcolor.training.diffusion.min_snr_weights`);
            None: unweighted.
        instance_color_weight: weight of the instance colour term
            (:mod:`mtcolor.training.instance_color`; 0: not computed).
        instance_color_ring: width in pixels of the band outside each mask the colour term also
            compares (0: the masks only).
    """
    check_prediction_type(prediction_type)
    vae, scheduler = components.vae, components.noise_scheduler
    pixels = batch["pixel_values"]  # (B, 3, H, W) in [0, 1]
    device = pixels.device
    latents = encode_latents(vae, pixels, draws.latent_noise, weight_dtype)
    noise, timesteps = draws.noise.to(device), draws.timesteps.to(device)
    with torch.no_grad():
        noisy = scheduler.add_noise(latents, noise, timesteps)
        hidden, embeds, counts = encode_batch_texts(
            _text_cache(components), batch["prompts"], batch["instance_texts"], device, weight_dtype
        )
        control = None
        if stage == 2:
            from mtcolor.color import luminance_to_gray, rgb_luminance

            control = luminance_to_gray(rgb_luminance(pixels.float())).to(weight_dtype)  # (B, 3, H, W) gray
    prediction = model(noisy.to(weight_dtype), timesteps, hidden, batch["label_map"], embeds, counts, control)
    loss = diffusion_loss(prediction, latents, noise, timesteps, scheduler, prediction_type, snr_gamma)
    if instance_color_weight:
        loss = loss + instance_color_weight * instance_color_term(
            vae,
            prediction,
            noisy,
            timesteps,
            scheduler,
            prediction_type,
            pixels,
            batch["label_map"],
            weight_dtype,
            ring=instance_color_ring,
        )
    return loss


def _text_cache(components: Components):
    """The components' memoised frozen text encoder (created on first use)."""
    if components.text_cache is None:
        from mtcolor.conditioning import CachedTextEncoder

        components.text_cache = CachedTextEncoder(components.tokenizer, components.text_encoder)
    return components.text_cache


def instance_color_term(
    vae,
    prediction,
    noisy,
    timesteps,
    scheduler,
    prediction_type: str,
    pixels,
    label_map,
    weight_dtype,
    ring=0,
) -> torch.Tensor:
    """The batch's instance colour term (:mod:`mtcolor.training.instance_color`): the predicted clean latents
    decoded by the frozen VAE, compared with ``pixels`` inside each instance of ``label_map``, each
    sample weighted by ``abar_t``. A scalar with gradient to ``prediction``."""
    from mtcolor.training.diffusion import predicted_original
    from mtcolor.training.instance_color import instance_color_loss

    original = predicted_original(prediction, noisy, timesteps, scheduler, prediction_type)
    decoded = decode_latents(vae, original.to(weight_dtype))
    per_sample = instance_color_loss(decoded, pixels.float(), label_map, ring)
    abar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return (abar * per_sample).mean()


def latent_shape(vae, resolution: int) -> tuple[int, int, int]:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return (vae.config.latent_channels, resolution // factor, resolution // factor)


def check_resolution(resolution: int, vae, unet) -> None:
    """The UNet halves the latents ``len(down_blocks) - 1`` times: the resolution must divide evenly."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1) * 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % factor:
        raise ValueError(
            f"--resolution={resolution} is not a multiple of {factor} (VAE factor x UNet downsampling); pass e.g. "
            f"{max(factor, resolution // factor * factor)}."
        )
