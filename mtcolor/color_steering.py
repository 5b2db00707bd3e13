"""Colour steering during sampling: pull each targeted instance's colour toward its target on the
predicted x0 of every step, through a small latent -> a*b* probe (:mod:`mtcolor.latent_color`),
without extra UNet evaluations.

At step t with latents z_t and the (guided) noise prediction eps, the predicted clean latent is

    x0 = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t).

The probe P maps latents to the mean Lab a*b* of the pixels under each latent cell. For instance k
with soft latent mask w_k (the share of each latent cell covered by k at the working size) and
target chroma c_k (the target's a*b*, its chroma reduced at fixed hue into the sRGB gamut at the
instance's mean lightness), its measured colour is the weighted mean

    m_k(x) = sum_p w_k(p) P(x)(p) / sum_p w_k(p).

The correction d_k is a step along g_k = grad_x ||m_k(x) - c_k||^2 restricted to the cells of k
(multiplied by w_k), scaled so that the linearised measurement lands on the target:
``d_k = -eta_k w_k g_k`` with ``eta_k = argmin_eta ||m_k + eta J_k(-w_k g_k) - c_k||^2`` (one
Jacobian-vector product), repeated ``iterations`` times from the corrected latent. The steered
prediction is

    x0' = x0 + s_t sum_k d_k,    eps' = (z_t - sqrt(abar_t) x0') / sqrt(1 - abar_t)

(``v`` prediction: ``v' = (sqrt(abar_t) z_t - x0') / sqrt(1 - abar_t)``), with the schedule
``s_t = strength`` for the first ``until`` share of the steps and 0 after (the colour of a diffusion
sample is decided early; late steps refine texture, and the exact mode aligns the decoded colour
afterwards). Cells outside every targeted instance are unchanged (w_k = 0 there), so instances
without a target and the background are steered by nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .color import fit_chroma_to_gamut


def instance_cell_weights(label_maps: torch.Tensor, labels: torch.Tensor, latent_size) -> torch.Tensor:
    """Share of every latent cell covered by each listed instance.

    Args:
        label_maps: (R, H, W) int64 label maps at the working size (H, W multiples of the latent size).
        labels: (R, n) int64 instance labels per row (0 = unused slot).
        latent_size: (h, w).

    Returns:
        (R, n, h, w) float in [0, 1]; zero for unused slots.
    """
    rows, n = labels.shape
    one_hot = (label_maps[:, None] == labels[:, :, None, None]) & (labels[:, :, None, None] > 0)
    weights = F.adaptive_avg_pool2d(one_hot.float().flatten(0, 1)[:, None], latent_size)
    return weights.view(rows, n, *latent_size)


def target_chroma(targets_lab: torch.Tensor, lightness: torch.Tensor) -> torch.Tensor:
    """Targets (..., 3) Lab -> their a*b* (..., 2) at lightness (...) (the instance's mean L in
    [0, 100]), chroma reduced at fixed hue into the sRGB gamut."""
    shape = targets_lab.shape[:-1]
    if not targets_lab.numel():
        return targets_lab[..., 1:]
    ab = targets_lab[..., 1:].reshape(-1, 2).T[:, :, None].float()  # (2, K, 1): K "pixels"
    light = lightness.reshape(1, -1, 1).float()  # (1, K, 1)
    return fit_chroma_to_gamut(light, ab)[:, :, 0].T.reshape(*shape, 2)


def _measure(probe, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(R, n, 2) weighted mean probe a*b* of every (row, instance)."""
    ab = probe(x).float()  # (R, 2, h, w)
    mass = weights.sum((-2, -1)).clamp_min(1e-6)  # (R, n)
    return torch.einsum("rnhw,rchw->rnc", weights, ab) / mass[..., None]


def _directional_change(
    probe, point: torch.Tensor, direction: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """(R, n, 2) change of every instance's measured colour per unit step along ``direction``: a
    forward difference with a step of 1e-2 latent units at the largest component (any probe, the
    decoder included, without forward-mode autograd)."""
    scale = 1e-2 / direction.abs().amax().clamp_min(1e-12)
    with torch.no_grad():
        return (_measure(probe, point + scale * direction, weights) - _measure(probe, point, weights)) / scale


def steer_x0(
    x0: torch.Tensor,
    probe,
    weights: torch.Tensor,
    targets: torch.Tensor,
    active: torch.Tensor,
    iterations: int = 2,
    measure=None,
) -> torch.Tensor:
    """The correction ``sum_k d_k`` (R, C, h, w) that moves each active instance's probe colour to
    its target (see the module docstring).

    Args:
        x0: (R, C, h, w) predicted clean latents (the UNet's latent space).
        probe: a callable latents (R, C, h, w) -> a*b* (R, 2, h, w), differentiable.
        weights: (R, n, h, w) cell shares of each instance (:func:`instance_cell_weights`).
        targets: (R, n, 2) target a*b*.
        active: (R, n) bool: which (row, instance) pairs are steered.
        iterations: Gauss-Newton-like steps.
        measure: optional ``latents -> (R, n, 2)`` measured colours used for the residual instead of
            the probe's; the probe still gives the direction and the step length per unit of residual.
    """
    dtype = x0.dtype
    weights = weights * active[..., None, None].to(weights.dtype)
    if not bool(active.any()):
        return torch.zeros_like(x0)
    x = x0.detach().float()
    targets = targets.float()
    correction = torch.zeros_like(x)
    for _ in range(iterations):
        with torch.enable_grad():
            point = (x + correction).requires_grad_(True)
            measured = _measure(probe, point, weights)  # (R, n, 2)
            if measure is not None:  # the residual from the true measurement, the direction from P
                measured = measured + (measure(point.detach()).to(measured) - measured).detach()
            residual = measured - targets
            loss = (residual.square().sum(-1) * active).sum()
            (grad,) = torch.autograd.grad(loss, point)
        # one direction per instance: its own cells, weighted by how much of each cell it covers
        directions = -weights[:, :, None] * grad[:, None]  # (R, n, C, h, w)
        total = directions.sum(1)
        change = _directional_change(probe, point.detach(), total, weights)
        # per instance: the step length that best cancels its residual along its own direction
        eta = -(residual.detach() * change).sum(-1) / change.square().sum(-1).clamp_min(1e-12)  # (R, n)
        eta = torch.where(active, eta.clamp(min=0.0), torch.zeros_like(eta))
        correction = correction + (eta[:, :, None, None, None] * directions).sum(1)
    return correction.to(dtype)


def steered_prediction(
    model_output: torch.Tensor,
    latents: torch.Tensor,
    alpha_prod: float | torch.Tensor,
    correction_fn,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Apply ``x0' = x0 + correction_fn(x0)`` to a noise (or v) prediction of latents z_t.

    Args:
        model_output: (R, C, h, w) the scheduler's model output (eps or v).
        latents: (R, C, h, w) z_t.
        alpha_prod: abar_t of the step.
        correction_fn: x0 (R, C, h, w) -> correction of the same shape.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (the scheduler's).

    Returns:
        The model output whose implied x0 is corrected (same type as ``model_output``).
    """
    a = torch.as_tensor(alpha_prod, dtype=torch.float32)
    sqrt_a, sqrt_b = a.sqrt(), (1 - a).sqrt()
    z, out = latents.float(), model_output.float()
    if prediction_type == "epsilon":
        x0 = (z - sqrt_b * out) / sqrt_a
    elif prediction_type == "v_prediction":
        x0 = sqrt_a * z - sqrt_b * out
    else:
        raise ValueError(
            f"prediction_type={prediction_type!r}: colour steering supports 'epsilon' and 'v_prediction'."
        )
    x0 = x0 + correction_fn(x0)
    if prediction_type == "epsilon":
        steered = (z - sqrt_a * x0) / sqrt_b
    else:
        steered = (sqrt_a * z - x0) / sqrt_b
    return steered.to(model_output.dtype)


def steering_strength(step: int, num_steps: int, strength: float, until: float) -> float:
    """``s_t``: ``strength`` for steps ``< until * num_steps``, else 0."""
    return float(strength) if step < until * num_steps else 0.0


class DecodedCellColors:
    """A differentiable colour reader through the decoder: latents (R, C, h, w) -> (R, 2, h, w) the
    mean a*b* of the decoded pixels under each latent cell. Exact but costs a decode (and its
    backward) per use: the pipeline uses it for the final corrections, the probe for every step.

    Args:
        decode: latents -> sRGB (R, 3, H, W) in [0, 1] (e.g. the VAE's decoder with its scaling).
    """

    def __init__(self, decode):
        self.decode = decode

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        from .color import rgb_to_lab

        ab = rgb_to_lab(self.decode(latents).float())[:, 1:]
        return F.adaptive_avg_pool2d(ab, tuple(latents.shape[-2:]))
