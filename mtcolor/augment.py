"""Luminance augmentation of L-CoIns (LC section 3.2, eq. 1-2).

Language-guided colorization data correlates colour words with luminance ("yellow" things are
bright, "orange" ones darker). L-CoIns breaks that shortcut by changing the *input* luminance while
the chroma target stays the original image's:

1. LC eq. 1: rotate the hue of the sRGB image in HSV by a random angle lambda in [-180, 180]
   degrees (saturation and value unchanged), so objects of different hues swap relative brightness;
2. take the Lab L channel of the rotated image, I_g;
3. LC eq. 2: ``I_g_hat = A * I_g ** F_inv(gamma)`` with gamma ~ U[1, 5] and ``F_inv`` replacing
   gamma by 1 / gamma with probability 0.5; A = 1. The power is applied to L normalised to [0, 1]
   (``L / 100``) and the result is scaled back to [0, 100] (and clipped there when A > 1).

Everything runs batched on the input's device with kornia's differentiable colour conversions;
every image of a batch draws its own angle, gamma and inversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia.color
import torch

from .color import rgb_to_lab

__all__ = ["LuminanceAugmentationOutput", "gamma_correct", "luminance_augmentation", "rotate_hue"]


@dataclass
class LuminanceAugmentationOutput:
    """Result of :func:`luminance_augmentation`.

    Attributes:
        lightness: (B, 1, H, W) augmented L in [0, 100] (the model's gray input).
        angle: (B,) hue rotation lambda in degrees.
        gamma: (B,) sampled gamma in ``gamma_range``.
        inverted: (B,) bool, True where F_inv replaced gamma by 1 / gamma.
        exponent: (B,) the exponent actually applied: ``gamma`` or ``1 / gamma``.
    """

    lightness: torch.Tensor
    angle: torch.Tensor
    gamma: torch.Tensor
    inverted: torch.Tensor
    exponent: torch.Tensor


def _check_rgb(rgb: torch.Tensor, name: str = "rgb") -> None:
    if not isinstance(rgb, torch.Tensor):
        raise TypeError(f"{name} has type {type(rgb).__name__}; pass a float tensor (B, 3, H, W) in [0, 1].")
    if rgb.ndim != 4 or rgb.shape[1] != 3 or not rgb.is_floating_point():
        raise ValueError(
            f"{name} has shape {tuple(rgb.shape)} and dtype {rgb.dtype}; expected a float tensor (B, 3, H, W) "
            "of sRGB values in [0, 1]."
        )


def rotate_hue(rgb: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """LC eq. 1: rotate the HSV hue of each image, keeping saturation and value.

    Args:
        rgb: (B, 3, H, W) sRGB in [0, 1].
        angle: (B,) rotation in degrees (any real value; taken modulo 360).

    Returns:
        (B, 3, H, W) sRGB in [0, 1].
    """
    _check_rgb(rgb)
    angle = torch.as_tensor(angle, dtype=rgb.dtype, device=rgb.device).reshape(-1)
    if angle.numel() != rgb.shape[0]:
        raise ValueError(
            f"angle has {angle.numel()} values for a batch of {rgb.shape[0]} images; pass one per image."
        )
    hsv = kornia.color.rgb_to_hsv(rgb.clamp(0, 1))  # hue in radians [0, 2 pi)
    hue = torch.remainder(hsv[:, :1] + torch.deg2rad(angle).view(-1, 1, 1, 1), 2 * math.pi)
    return kornia.color.hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1)).clamp(0, 1)


def gamma_correct(lightness: torch.Tensor, exponent: torch.Tensor, amplitude: float = 1.0) -> torch.Tensor:
    """LC eq. 2 for a given exponent: ``100 * A * (L / 100) ** exponent``, clipped to [0, 100].

    Args:
        lightness: (B, 1, H, W) L in [0, 100].
        exponent: (B,) exponent per image (``F_inv(gamma)``).
        amplitude: the constant A.

    Returns:
        (B, 1, H, W) L in [0, 100]. Zero stays zero (no NaN gradient there).
    """
    exponent = torch.as_tensor(exponent, dtype=lightness.dtype, device=lightness.device).view(-1, 1, 1, 1)
    normalised = (lightness / 100.0).clamp(0, 1)
    positive = normalised > 0
    powered = torch.where(positive, normalised.clamp_min(torch.finfo(normalised.dtype).tiny) ** exponent, 0.0)
    return (100.0 * amplitude * powered).clamp(0, 100)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device) -> torch.Tensor:
    sample_device = generator.device if generator is not None else device
    return (low + (high - low) * torch.rand(n, generator=generator, device=sample_device)).to(device)


def luminance_augmentation(
    rgb: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    hue_range: tuple[float, float] = (-180.0, 180.0),
    gamma_range: tuple[float, float] = (1.0, 5.0),
    invert_probability: float = 0.5,
    amplitude: float = 1.0,
) -> LuminanceAugmentationOutput:
    """The whole L-CoIns luminance augmentation (LC eq. 1-2) on a batch.

    Args:
        rgb: (B, 3, H, W) sRGB in [0, 1] (the colour training image).
        generator: optional ``torch.Generator`` for reproducible draws (any device); the global RNG
            of ``rgb``'s device otherwise.
        hue_range: interval of the hue rotation lambda in degrees (paper: [-180, 180]).
        gamma_range: interval of gamma (paper: [1, 5]); both ends must be > 0.
        invert_probability: probability that ``F_inv`` uses 1 / gamma (paper: 0.5).
        amplitude: the constant A of LC eq. 2 (paper: 1).

    Returns:
        :class:`LuminanceAugmentationOutput`; ``lightness`` is (B, 1, H, W) in [0, 100].
    """
    _check_rgb(rgb)
    if not hue_range[0] <= hue_range[1]:
        raise ValueError(f"hue_range={hue_range}; pass (low, high) with low <= high, e.g. (-180, 180).")
    if not 0 < gamma_range[0] <= gamma_range[1]:
        raise ValueError(f"gamma_range={gamma_range}; pass (low, high) with 0 < low <= high, e.g. (1, 5).")
    if not 0.0 <= invert_probability <= 1.0:
        raise ValueError(f"invert_probability={invert_probability}; pass a probability in [0, 1].")
    if amplitude <= 0:
        raise ValueError(f"amplitude={amplitude}; the constant A must be > 0 (paper: 1).")
    batch = rgb.shape[0]
    angle = _uniform(batch, hue_range[0], hue_range[1], generator, rgb.device).to(rgb.dtype)
    gamma = _uniform(batch, gamma_range[0], gamma_range[1], generator, rgb.device).to(rgb.dtype)
    inverted = _uniform(batch, 0.0, 1.0, generator, rgb.device) < invert_probability
    exponent = torch.where(inverted, 1.0 / gamma, gamma)
    rotated = rotate_hue(rgb, angle)  # LC eq. 1
    lightness = rgb_to_lab(rotated)[:, :1]  # I_g, L in [0, 100]
    return LuminanceAugmentationOutput(
        lightness=gamma_correct(lightness, exponent, amplitude),  # LC eq. 2
        angle=angle,
        gamma=gamma,
        inverted=inverted,
        exponent=exponent,
    )
