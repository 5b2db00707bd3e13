"""The diffusion objective shared by every denoiser trainer of this folder (the base UNet of
``training/train_base.py``, MT-Color stages 1-2): the latents of a batch, the training target, the
Min-SNR-gamma weighting and the loss.

* :func:`encode_latents`: ``z_0 = (mu + sigma * n - shift_factor) * scaling_factor`` from the frozen VAE;
* :func:`diffusion_target`: ``eps`` (``"epsilon"``, MT eq. 10) or ``v = sqrt(abar) eps - sqrt(1 - abar) z_0``
  (``"v_prediction"``);
* :func:`predicted_original`: the ``z_0`` a model output implies at ``z_t`` (inverts the target);
* :func:`min_snr_weights`: Min-SNR-gamma (Hang et al., "Efficient Diffusion Training via Min-SNR
  Weighting Strategy", ICCV 2023): ``min(SNR_t, gamma) / SNR_t`` for epsilon, ``min(SNR_t, gamma) /
  (SNR_t + 1)`` for v, with ``SNR_t = abar_t / (1 - abar_t)``;
* :func:`diffusion_loss`: the mean squared error to the target, per-sample weighted when ``snr_gamma``
  is given.

Generic: no MT-Color or L-CoIns module is imported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_prediction_type(prediction_type: str) -> str:
    """``prediction_type`` if it is one of :data:`PREDICTION_TYPES`, else ``ValueError``."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={prediction_type!r}; expected one of {list(PREDICTION_TYPES)} (e.g. 'epsilon')."
        )
    return prediction_type


def encode_latents(vae, pixels: torch.Tensor, latent_noise: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scaled VAE latents of ``pixels`` ((B, 3, H, W) in [0, 1]), without gradient.

    ``z_0 = (mu + sigma * latent_noise - shift_factor) * scaling_factor`` (a posterior sample;
    ``shift_factor`` is 0 when the VAE has none, as SD-1.5's). Returns float32 (B, C, h, w).
    """
    with torch.no_grad():
        posterior = vae.encode((pixels * 2 - 1).to(dtype)).latent_dist
        latents = posterior.mean + posterior.std * latent_noise.to(pixels.device, posterior.mean.dtype)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).float()


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_latents`' scaling: ``D(z / scaling_factor + shift_factor)`` as sRGB
    (B, 3, H, W) in [0, 1] (clamped), with gradient through the decoder's input."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    decoded = vae.decode(latents / vae.config.scaling_factor + shift).sample
    return ((decoded.float() + 1) / 2).clamp(0, 1)


def _alphas_cumprod(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """``abar_t`` of ``timesteps`` (B,) as float32 (B,) on their device."""
    return scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()


def signal_to_noise(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """``SNR_t = abar_t / (1 - abar_t)`` of ``timesteps`` (B,): float32 (B,)."""
    abar = _alphas_cumprod(scheduler, timesteps)
    return abar / (1 - abar)


def diffusion_target(
    latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler, prediction_type: str
) -> torch.Tensor:
    """What the model learns to predict: ``noise`` (``"epsilon"``) or the velocity ``sqrt(abar_t) noise
    - sqrt(1 - abar_t) latents`` (``"v_prediction"``); any other value raises ``ValueError``."""
    if check_prediction_type(prediction_type) == "epsilon":
        return noise
    return scheduler.get_velocity(latents, noise, timesteps)


def predicted_original(
    model_output: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor, scheduler, prediction_type: str
) -> torch.Tensor:
    """The clean latents ``z_0`` that ``model_output`` implies at ``z_t = noisy`` (B, C, h, w):
    ``(z_t - sqrt(1 - abar) eps) / sqrt(abar)`` for epsilon, ``sqrt(abar) z_t - sqrt(1 - abar) v`` for v."""
    abar = _alphas_cumprod(scheduler, timesteps).view(-1, *([1] * (noisy.dim() - 1)))
    if check_prediction_type(prediction_type) == "epsilon":
        return (noisy.float() - (1 - abar).sqrt() * model_output.float()) / abar.sqrt()
    return abar.sqrt() * noisy.float() - (1 - abar).sqrt() * model_output.float()


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (B,) of ``timesteps``: ``min(SNR_t, gamma) / SNR_t`` for epsilon,
    ``min(SNR_t, gamma) / (SNR_t + 1)`` for v (both make the loss ``min(SNR_t, gamma) ||z_0 -
    z_0_hat||^2``). ``gamma`` must be positive."""
    if not gamma > 0:
        raise ValueError(f"snr_gamma={gamma!r}; pass a positive value (Hang et al. use 5).")
    snr = signal_to_noise(scheduler, timesteps)
    clipped = torch.clamp(snr, max=float(gamma))
    if check_prediction_type(prediction_type) == "epsilon":
        return clipped / snr
    return clipped / (snr + 1)


def diffusion_loss(
    prediction: torch.Tensor,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    prediction_type: str,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """The denoising loss of a batch (a scalar).

    Args:
        prediction: the model output (B, C, h, w) at ``z_t = add_noise(latents, noise, timesteps)``.
        latents: clean latents z_0 (B, C, h, w); noise: eps (B, C, h, w); timesteps: (B,) int64.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (anything else raises ``ValueError``).
        snr_gamma: None: ``mean((prediction - target)^2)`` over all elements (MT eq. 10); a number:
            each sample's mean squared error times :func:`min_snr_weights`, averaged over the batch.
    """
    target = diffusion_target(latents, noise, timesteps, scheduler, prediction_type)
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")
    per_sample = ((prediction.float() - target.float()) ** 2).flatten(1).mean(1)
    return (per_sample * min_snr_weights(scheduler, timesteps, snr_gamma, prediction_type)).mean()
