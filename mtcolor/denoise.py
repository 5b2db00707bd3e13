"""One MT-Color denoising forward pass (UNet + ControlNet + adapter): the single place where the
pipeline and both training stages wire the models together."""

from __future__ import annotations

import torch

from .attention.processors import MTColorContext


def control_features(residuals: list[torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
    """ControlNet residuals (B, C, h, w) -> ``{(h * w, C): (B, h * w, C)}`` for PMAM.

    Several residuals share a shape (e.g. three 64x64x320 maps in SD-1.5's first block); the last
    one wins, i.e. the deepest ControlNet feature at that resolution and width (the output of the
    block whose attention layers consume it; the mid-block residual for the mid block).
    """
    features = {}
    for residual in residuals:
        batch, channels, height, width = residual.shape
        features[(height * width, channels)] = residual.flatten(2).transpose(1, 2)
    return features


def predict_noise(
    unet,
    latents: torch.Tensor,
    timestep: torch.Tensor | int,
    encoder_hidden_states: torch.Tensor,
    *,
    context: MTColorContext | None = None,
    controlnet=None,
    control_image: torch.Tensor | None = None,
    conditioning_scale: float = 1.0,
    use_control_residuals: bool = True,
    cross_attention_kwargs: dict | None = None,
) -> torch.Tensor:
    """The noise prediction eps_theta(z_t, t, tau_g, c, M_n, T_n) of MT eq. 10.

    Args:
        unet: a ``UNet2DConditionModel`` with the adapter installed (``adapter.install(unet)``).
        latents: (B, 4, h, w) noisy latents z_t.
        timestep: scalar or (B,) timesteps.
        encoder_hidden_states: (B, L, D) CLIP hidden states of the global prompt.
        context: the :class:`MTColorContext` (label maps + instance tokens); ``None`` runs the stock
            UNet (+ ControlNet).
        controlnet: a ``ControlNetModel`` or ``None`` (stage 1 trains without it).
        control_image: (B, 3, H, W) gray conditioning image in [0, 1] (H = 8h, W = 8w).
        conditioning_scale: ControlNet output scale.
        use_control_residuals: add the ControlNet residuals to the UNet (standard ControlNet); when
            False the ControlNet reaches the UNet only through PMAM (ablation).
        cross_attention_kwargs: the caller's keywords for the UNet's attention (diffusers' convention:
            ``"scale"`` scales LoRA layers; other keys reach the processors that declare them, the
            wrapped processors included); the MT-Color context is added as ``"mtcolor"``.

    Returns:
        (B, 4, h, w) predicted noise.
    """
    down, mid = None, None
    if controlnet is not None:
        if control_image is None:
            raise ValueError(
                "control_image is None but a controlnet was given; pass the gray image (B, 3, H, W)."
            )
        down, mid = controlnet(
            latents,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=control_image.to(latents.dtype),
            conditioning_scale=conditioning_scale,
            return_dict=False,
        )
    kwargs = dict(cross_attention_kwargs) if cross_attention_kwargs else None
    if context is not None:
        features = control_features([*down, mid]) if down is not None else {}
        kwargs = {**(kwargs or {}), "mtcolor": context.with_control(features)}
    return unet(
        latents,
        timestep,
        encoder_hidden_states=encoder_hidden_states,
        cross_attention_kwargs=kwargs,
        down_block_additional_residuals=down if use_control_residuals else None,
        mid_block_additional_residual=mid if use_control_residuals else None,
        return_dict=False,
    )[0]
