"""The instance-level colour term of the MT-Color trainers (``--instance_color_weight``).

The denoising loss weighs every latent element alike, so an instance coloured in the right hue but
too weakly costs little. This term compares, inside each instance mask, the mean Lab a*b* of the
image the model's prediction implies (its predicted clean latents decoded by the frozen VAE) with
the mean a*b* of the training image:

    L_col = mean_b abar_t(b) * mean_{k in b} || mean_{p in M_k} ab(D(z0_hat))_p - mean_{p in M_k} ab(x)_p ||^2 / (2 * 110^2)

With ``--instance_color_ring R`` each instance also adds the mean per-pixel a*b* error over the
R-pixel band just outside its mask, where the target is the neighbour's own colour: the mask term
alone makes instances more saturated, and some of that chroma bleeds across the boundary.

``abar_t`` bounds the gradient the term sends to the noise prediction: ``z0_hat = (z_t - sqrt(1 -
abar) eps_hat) / sqrt(abar)`` amplifies it by ``sqrt(1 - abar) / sqrt(abar)`` (about 15 at SD's last
timestep), and the weight turns that into ``sqrt(abar (1 - abar)) <= 1/2``. Samples without
instances (the null condition) contribute 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtcolor.color import rgb_to_lab

#: Lab a*b* units per unit of the loss (the ab range used across the project)
AB_SCALE = 110.0


def instance_mean_ab(
    rgb: torch.Tensor, label_map: torch.Tensor, num_labels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean Lab a*b* of each instance.

    Args:
        rgb: sRGB (B, 3, H, W) in [0, 1].
        label_map: (B, H, W) int64, 0 = background, k = instance k.
        num_labels: K, the largest instance id to measure.

    Returns:
        ``(means, counts)``: (B, K, 2) mean a*b* in Lab units (0 where an instance has no pixel) and
        (B, K) pixel counts.
    """
    ab = rgb_to_lab(rgb.float())[:, 1:].flatten(2)  # (B, 2, N)
    ids = torch.arange(1, num_labels + 1, device=label_map.device).view(1, -1, 1)
    members = (label_map.flatten(1).unsqueeze(1) == ids).to(ab.dtype)  # (B, K, N)
    counts = members.sum(-1)
    means = torch.einsum("bkn,bcn->bkc", members, ab) / counts.clamp_min(1).unsqueeze(-1)
    return means, counts


def ring_pixels(label_map: torch.Tensor, num_labels: int, width: int) -> torch.Tensor:
    """(B, K, H, W) float masks of the pixels outside each instance within Chebyshev distance
    ``width`` of it (the band where its colour can bleed; the colour-bleeding metric's band)."""
    ids = torch.arange(1, num_labels + 1, device=label_map.device).view(1, -1, 1, 1)
    members = (label_map.unsqueeze(1) == ids).float()
    grown = F.max_pool2d(members, 2 * width + 1, stride=1, padding=width)
    return grown - members


def ring_color_error(predicted_ab, target_ab, label_map: torch.Tensor, num_labels: int, width: int):
    """(B, K) mean per-pixel ``||ab(predicted) - ab(target)||^2 / (2 * 110^2)`` over each instance's
    ring (:func:`ring_pixels`) and its pixel counts (B, K); ``*_ab``: (B, 2, H, W)."""
    rings = ring_pixels(label_map, num_labels, width)  # (B, K, H, W)
    error = (((predicted_ab - target_ab) / AB_SCALE) ** 2).mean(1, keepdim=True)  # (B, 1, H, W)
    counts = rings.sum((-2, -1))
    return (rings * error).sum((-2, -1)) / counts.clamp_min(1), counts


def instance_color_loss(
    predicted: torch.Tensor, target: torch.Tensor, label_map: torch.Tensor, ring: int = 0
) -> torch.Tensor:
    """Per-sample colour error of the instances (B,): the mean over the sample's instances of
    ``|| mean ab(predicted) - mean ab(target) ||^2 / (2 * 110^2)`` over the instance's mask, plus,
    with ``ring > 0``, the mean per-pixel error of the same form over the ``ring``-pixel band just
    outside it (:func:`ring_pixels`: there the target is the neighbour's own colour, so the term
    penalises the instance's colour bleeding out). 0 for a sample without instances.

    Args:
        predicted, target: sRGB (B, 3, H, W) in [0, 1] (``predicted`` may carry gradient).
        label_map: (B, H, W) int64 at the images' resolution, 0 = background.
        ring: band width in pixels (0: the masks only).
    """
    if predicted.shape != target.shape or predicted.shape[-2:] != label_map.shape[-2:]:
        raise ValueError(
            f"predicted {tuple(predicted.shape)}, target {tuple(target.shape)} and label_map "
            f"{tuple(label_map.shape)} must share (B, H, W); pass images at the label map's resolution."
        )
    num_labels = int(label_map.max()) if label_map.numel() else 0
    if num_labels == 0:
        return predicted.new_zeros(predicted.shape[0]).float() * predicted.float().sum()  # keeps the graph
    predicted_ab, counts = instance_mean_ab(predicted, label_map, num_labels)
    with torch.no_grad():
        target_ab, _ = instance_mean_ab(target, label_map, num_labels)
    present = (counts > 0).to(predicted_ab.dtype)  # (B, K)
    error = (((predicted_ab - target_ab) / AB_SCALE) ** 2).mean(-1)  # (B, K)
    if ring:
        with torch.no_grad():
            target_pixels = rgb_to_lab(target.float())[:, 1:]
        ring_error, _ = ring_color_error(
            rgb_to_lab(predicted.float())[:, 1:], target_pixels, label_map, num_labels, ring
        )
        error = error + ring_error
    return (error * present).sum(-1) / present.sum(-1).clamp_min(1)
