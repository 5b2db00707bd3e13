"""Multi-instance sampling (MT eq. 8-9): instance passes, their batching, and the fusion.

For the first ``alpha * T`` steps every instance ``i`` is denoised on its own (its text as the
prompt, itself as the only instance) from the same initial noise as the global latent; then the
latents are fused (MT eq. 8, :func:`fuse_latents`) and global sampling continues (MT eq. 9, the
pipeline's global phase: ``pipelines.mtcolor_phases.global_sampling``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .masks import instance_masks

FUSIONS = ("paper", "normalized", "no_crop")


@dataclass(frozen=True)
class InstancePass:
    """One instance pass: sample ``sample`` of the batch, instance ``instance`` (1-based)."""

    sample: int
    instance: int


def instance_passes(num_instances: list[int]) -> list[InstancePass]:
    """All (sample, instance) passes of a batch, sample-major."""
    return [InstancePass(b, i) for b, n in enumerate(num_instances) for i in range(1, n + 1)]


def fuse_latents(
    global_latents: torch.Tensor,
    instance_latents: torch.Tensor,
    label_map: torch.Tensor,
    beta: float = 0.2,
    fusion: str = "paper",
) -> torch.Tensor:
    """Fuse one sample's global latent with its instance latents.

    Args:
        global_latents: (C, h, w) z^g_{alpha T}.
        instance_latents: (n, C, h, w) z^i_{alpha T} for instances 1..n.
        label_map: (h, w) int64 label map at latent resolution (0 = m_g, k = m_k).
        beta: weight of the global latent.
        fusion:
            ``"paper"``: MT eq. 8, ``z = beta * m_g * z_g + sum_i m_i * z_i``.
            ``"normalized"``: per-pixel weights that sum to one, the global latent weighted by
            ``beta`` everywhere: ``z = (beta * z_g + sum_i m_i * z_i) / (beta + sum_i m_i)``, i.e.
            z_g on the background and ``(beta z_g + z_i) / (1 + beta)`` on instance i. Unlike eq. 8
            it does not shrink the background latent by ``beta``.
            ``"no_crop"``: the paper's "w/o crop" ablation: instance results averaged into the
            global one without masks, ``z = (z_g + sum_i z_i) / (n + 1)``.

    Returns:
        (C, h, w) fused latent.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r}; expected one of {FUSIONS}.")
    n = instance_latents.shape[0]
    if fusion == "no_crop":
        return (global_latents + instance_latents.sum(0)) / (n + 1)
    masks = instance_masks(label_map, n, global_latents.dtype)  # (n + 1, h, w): m_g, m_1 .. m_n
    m_g, m = masks[:1], masks[1:, None]  # (1, h, w), (n, 1, h, w)
    instance_part = (m * instance_latents).sum(0)
    if fusion == "paper":
        return beta * m_g * global_latents + instance_part
    return (beta * global_latents + instance_part) / (beta + m.sum(0))
