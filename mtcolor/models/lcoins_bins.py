"""Quantised chroma for L-CoIns' classification head (Zhang, Isola and Efros, "Colorful Image
Colorization", ECCV 2016, section 2.1-2.3).

* :func:`ab_bins`: the Lab a*b* plane cut into square cells of side ``bin_size`` (Zhang: 10), keeping
  the cells that hold at least one colour of the sRGB gamut; their centres are the Q classes (261
  at size 10 with this project's Lab conversion, which puts the sRGB gamut's a* in [-86, 98] and b*
  in [-108, 94]; Zhang et al. report 313 from their own gamut test);
* :func:`annealed_mean`: the decoding ``H(Z) = E[f_T(Z)]`` with ``f_T(z) = exp(log z / T) / sum exp(log z / T)``
  (= ``softmax(logits / T)``; T = 0.38 in the paper): between the mean (T = 1, desaturated) and the
  mode (T -> 0, noisy);
* :func:`soft_encode`: the soft-encoded target, each pixel's ab spread over its 5 nearest classes
  with a Gaussian of sigma 5;
* :func:`empirical_prior` / :func:`rebalancing_weights`: the class rebalancing of eq. 3-4:
  ``w ~ ((1 - lambda) p_smooth + lambda / Q)^-1`` normalised so that ``E_p_smooth[w] = 1``, with
  ``p_smooth`` the empirical class distribution smoothed by a Gaussian of sigma 5 in the ab plane.
"""

from __future__ import annotations

import functools

import torch

#: Zhang et al.'s settings: 5 nearest classes and sigma 5 for the soft encoding and the smoothing,
#: lambda 0.5 for the rebalancing, T 0.38 for the annealed mean
NEIGHBOURS = 5
SIGMA = 5.0
REBALANCE_LAMBDA = 0.5
ANNEALED_TEMPERATURE = 0.38


@functools.lru_cache(maxsize=8)
def _gamut_bins(bin_size: float, samples: int) -> tuple[tuple[float, float], ...]:
    import kornia.color

    values = torch.linspace(0, 1, samples, dtype=torch.float64)
    r, g, b = torch.meshgrid(values, values, values, indexing="ij")
    rgb = torch.stack([r.flatten(), g.flatten(), b.flatten()])[None, :, :, None]  # (1, 3, N, 1)
    ab = kornia.color.rgb_to_lab(rgb)[0, 1:, :, 0].T  # (N, 2)
    cells = torch.unique(torch.round(ab / bin_size).long(), dim=0)  # sorted by a, then b
    return tuple((float(a) * bin_size, float(b) * bin_size) for a, b in cells.tolist())


def ab_bins(bin_size: float = 10.0, samples: int = 65) -> torch.Tensor:
    """The class centres: (Q, 2) float32 a*b* (Lab units) of the ``bin_size`` cells that hold a colour
    of the sRGB gamut (sampled on a ``samples``^3 RGB grid), sorted by a*, then b*."""
    if not bin_size > 0:
        raise ValueError(
            f"ab_bin_size={bin_size!r}; pass a positive cell size in Lab units (Zhang et al.: 10)."
        )
    return torch.tensor(_gamut_bins(float(bin_size), int(samples)), dtype=torch.float32)


def annealed_mean(
    logits: torch.Tensor, bins: torch.Tensor, temperature: float = ANNEALED_TEMPERATURE
) -> torch.Tensor:
    """Decode class logits (B, Q, H, W) to ab (B, 2, H, W) in Lab units: ``sum_q softmax(logits / T)_q c_q``."""
    if not temperature > 0:
        raise ValueError(f"annealed_temperature={temperature!r}; pass a positive value (Zhang et al.: 0.38).")
    weights = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", weights, bins.to(weights))


def _squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(..., 2) ab points and (Q, 2) centres -> (..., Q) squared distances (the dense search)."""
    return ((points.unsqueeze(-2) - centres) ** 2).sum(-1)


#: the half-width (in cells) of the window :func:`nearest_classes` searches around a pixel's cell
_WINDOW = 2


def _cell_table(bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The class index of every cell of the centres' grid, padded by ``_WINDOW`` cells (-1: no
    class): ``(table (Na, Nb) int64, origin (2,) int64 cell of table[0, 0], cell size)``."""
    if len(bins) < 2:
        raise ValueError(f"bins holds {len(bins)} centre(s); pass ab_bins(bin_size) (at least two).")
    gaps = torch.cat([torch.unique(bins[:, axis].double()).diff() for axis in (0, 1)])
    size = float(gaps.min())
    cells = torch.round(bins.double() / size).long()  # (Q, 2)
    if not torch.equal(cells.double() * size, bins.double()):
        raise ValueError("bins are not the centres of a regular grid; pass ab_bins(bin_size).")
    origin = cells.min(0).values - _WINDOW
    extent = cells.max(0).values + _WINDOW - origin + 1
    table = torch.full(tuple(extent.tolist()), -1, dtype=torch.long)
    table[cells[:, 0] - origin[0], cells[:, 1] - origin[1]] = torch.arange(len(bins))
    return table, origin, size


def nearest_classes(
    ab: torch.Tensor, bins: torch.Tensor, neighbours: int = NEIGHBOURS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``neighbours`` nearest class centres of each pixel, nearest first: ``(squared distances
    (B, H, W, k) float32, indices (B, H, W, k) int64)``.

    ``bins`` must be the centres of a regular grid (:func:`ab_bins`). Each pixel searches the
    (2 * 2 + 1)^2 cells around its own cell: any centre outside that window is at least 2.5 cells
    away, so a pixel whose k-th candidate is nearer is exact; the others (near the gamut's edge,
    where cells are missing) fall back to the distances to all Q centres. Equal to
    a top-k over the distances to all Q centres up to the order of exact ties.
    """
    table, origin, size = _cell_table(bins.cpu())
    table, origin = table.to(ab.device), origin.to(ab.device)
    points = ab.float().permute(0, 2, 3, 1).reshape(-1, 2)  # (N, 2)
    centres = bins.to(points)
    offsets = torch.arange(-_WINDOW, _WINDOW + 1, device=ab.device)
    window = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(-1, 2)  # (25, 2)
    rounded = torch.round(points / size)
    own = rounded.long() - origin  # each pixel's cell in the table
    limit = torch.tensor(table.shape, device=ab.device) - 1 - _WINDOW
    cell = torch.minimum(own.clamp(min=_WINDOW), limit)  # the window's centre, inside the table
    candidates = cell[:, None] + window  # (N, 25, 2)
    index = table[candidates[..., 0], candidates[..., 1]]  # (N, 25), -1 where no class
    distances = ((points[:, None] - centres[index.clamp(min=0)]) ** 2).sum(-1)
    distances = distances.masked_fill(index < 0, float("inf"))
    nearest, order = distances.topk(neighbours, dim=-1, largest=False)
    chosen = index.gather(-1, order)
    # exact where the k-th candidate is nearer than anything outside the window (and the window is
    # centred on the pixel's own cell); the dense search for the others
    outside = (_WINDOW + 0.5 - (points / size - rounded).abs().amax(-1)) * size
    redo = (nearest[:, -1] > outside**2) | (own != cell).any(-1)
    if redo.any():
        nearest[redo], chosen[redo] = _squared_distances(points[redo], centres).topk(
            neighbours, dim=-1, largest=False
        )
    shape = (*ab.shape[:1], *ab.shape[2:], neighbours)
    return nearest.reshape(shape), chosen.reshape(shape)


def soft_encode(
    ab: torch.Tensor, bins: torch.Tensor, neighbours: int = NEIGHBOURS, sigma: float = SIGMA
) -> torch.Tensor:
    """Zhang et al.'s soft-encoded target: (B, Q, H, W), each pixel's ``neighbours`` nearest classes
    weighted by ``exp(-d^2 / (2 sigma^2))`` and normalised to sum 1 (the other classes 0)."""
    nearest, index = nearest_classes(ab, bins, neighbours)  # (B, H, W, k)
    weights = torch.softmax(-nearest / (2 * sigma**2), dim=-1)  # = normalised Gaussian
    target = ab.new_zeros((*nearest.shape[:-1], len(bins)), dtype=torch.float32)
    return target.scatter_(-1, index, weights).permute(0, 3, 1, 2)


def nearest_class(ab: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) ab -> (B, H, W) int64 index of the nearest class centre."""
    return nearest_classes(ab, bins, 1)[1][..., 0]


def empirical_prior(ab_images, bins: torch.Tensor) -> torch.Tensor:
    """The class distribution (Q,) of the pixels of ``ab_images`` (an iterable of (B, 2, H, W) ab
    batches), each pixel counted at its nearest class."""
    counts = torch.zeros(len(bins), dtype=torch.float64)
    for ab in ab_images:
        counts += torch.bincount(nearest_class(ab, bins).flatten(), minlength=len(bins)).double()
    if counts.sum() == 0:
        raise ValueError("ab_images held no pixel; pass at least one (B, 2, H, W) batch.")
    return (counts / counts.sum()).float()


def rebalancing_weights(
    prior: torch.Tensor, bins: torch.Tensor, mix: float = REBALANCE_LAMBDA, sigma: float = SIGMA
) -> torch.Tensor:
    """Zhang et al. eq. 4: ``w = ((1 - mix) p_smooth + mix / Q)^-1``, normalised so that
    ``sum_q p_smooth_q w_q = 1``; ``p_smooth`` is ``prior`` (Q,) smoothed by a Gaussian of ``sigma``
    Lab units over the class centres. Returns (Q,) float32."""
    if not 0 <= mix <= 1:
        raise ValueError(f"rebalance_lambda={mix!r}; pass a mixing weight in [0, 1] (Zhang et al.: 0.5).")
    centres = bins.double()
    kernel = torch.exp(-((centres[:, None] - centres[None]) ** 2).sum(-1) / (2 * sigma**2))
    smooth = kernel @ prior.double()
    smooth = smooth / smooth.sum()
    weights = 1.0 / ((1 - mix) * smooth + mix / len(bins))
    return (weights / (smooth * weights).sum()).float()


def classification_loss(
    logits: torch.Tensor, target_ab: torch.Tensor, bins: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Zhang et al. eq. 2: ``-mean_hw v(Z_hw) sum_q Z_hwq log softmax(logits)_hwq`` averaged over the
    batch, with ``Z`` = :func:`soft_encode` of ``target_ab`` (B, 2, H, W) and ``v(Z_hw)`` the
    rebalancing weight (Q,) of the pixel's nearest class. ``logits``: (B, Q, H, W).

    ``Z`` has ``NEIGHBOURS`` non-zero entries per pixel, which sum to 1, so the cross-entropy is
    computed without the dense target as ``logsumexp_q(logits) - sum_k Z_k logits_k``."""
    nearest, index = nearest_classes(target_ab, bins)  # (B, H, W, k), nearest first
    z = torch.softmax(-nearest / (2 * SIGMA**2), dim=-1)
    logits = logits.float()
    picked = logits.gather(1, index.permute(0, 3, 1, 2))  # (B, k, H, W)
    cross_entropy = torch.logsumexp(logits, dim=1) - (z.permute(0, 3, 1, 2) * picked).sum(1)  # (B, H, W)
    pixel_weights = weights.to(logits.device)[index[..., 0]]
    return (pixel_weights * cross_entropy).mean()
