"""Exact colour targets: align each targeted instance's dominant chroma mode to its target.

After decoding, an instance's pixels ``c_i = (a_i, b_i)`` (Lab chroma, lightness ``L_i``) are moved so
that the colour most of the instance has lands on the target, while the pixels of other colours in
the same mask (the tyres of "a red car", the face of "a girl in a yellow coat") keep theirs. L is
never touched: the recombination (:func:`mtcolor.color.recombine_luminance`) keeps the input's L.

**The dominant chroma mode** (:func:`dominant_chroma_mode`; the metric
:func:`mtcolor.metrics.instance_color_errors` measures the same mode):

1. a histogram ``h`` of the ``c_i`` over ``[-128, 128)^2`` with bins of ``BIN = 2`` Lab units,
   smoothed by a Gaussian ``G`` of ``SMOOTH = 3`` units: ``H = G * h``; bins below ``FLOOR = 0.1%``
   of ``max H`` belong to no mode;
2. every bin climbs to the largest bin of its 3 x 3 neighbourhood until it reaches a local maximum
   (a peak): the bins reaching one peak are its *basin*;
3. shallow peaks are merged (0-dimensional persistence): the *pass* between two adjacent basins is
   the highest ``min(H_u, H_v)`` over neighbouring bins ``u, v`` on their boundary; the pair whose
   pass is the highest share of its lower peak merges while ``pass >= (1 - DEPTH) min(H_p, H_q)``
   (``DEPTH = 0.25``: two colours are separate modes when the density between them dips by a
   quarter of the smaller one's peak);
4. the dominant mode is the merged basin ``B`` holding most pixels (the largest share of the
   object, not the densest spot). Its centre ``mu`` is refined by mean shift on the pixels from its
   highest peak: ``mu <- sum_i K_i c_i / sum_i K_i``, ``K_i = exp(-|c_i - mu|^2 / (2 SMOOTH^2))``;
   its lightness ``L_mu`` is the median L of the basin's pixels;
5. its robust covariance ``S``: the covariance of the basin's pixels around ``mu``, re-estimated
   from the pixels within Mahalanobis distance ``CORE_IN = 3`` until stable, divided by the
   truncated Gaussian's variance ratio ``P(chi2_4 <= 9) / P(chi2_2 <= 9)``, plus ``SIGMA_MIN^2 I``
   (``SIGMA_MIN = 2``);
   the membership of the mode on the ab plane is ``M(c) = (G * 1_B)(c) S_core(d(c))``, read
   bilinearly from a grid: the basin's indicator blurred by the same Gaussian (truncated at 3 sigma;
   it falls off across the valley to the next mode) times the core ``S_core(d) = 1`` for
   ``d <= CORE_IN``, ``(1 + cos(pi (d - CORE_IN) / (CORE_OUT - CORE_IN))) / 2`` up to
   ``CORE_OUT = 4.5`` and 0 beyond, ``d(c) = sqrt((c - mu)^T S^-1 (c - mu))``. The core keeps small
   parts sitting on the tail of the main colour (a cat's eyes on its fur) out of the mode;
6. shadows: a surface in shadow has lower L *and* lower chroma, which moves it out of the basin.
   Less light scales the linear-light XYZ by a factor ``s``, which in CIELAB (cube root) scales
   ``L + 16`` and ``(a, b)`` alike by ``s^(1/3)``. A pixel darker than the mode counts as its shadow
   when, brightened to ``L_mu`` that way, it would be a member::

       w(c, L) = max(M(c), [L < L_mu] M(c (L_mu + 16) / (L + 16)))

   A neutral pixel stays neutral when scaled, so the tyres of a red car (or a face, lighter than a
   suit) are not shadows of it. Pixels with ``w = 0`` keep their colour bit for bit.

**The alignment** (:class:`ChromaAlignment`): with the target chroma ``t`` (chroma ``C_t``, hue
``h_t``) and the mode's ``mu`` (``C_mu``, ``h_mu``), a similarity transform around the mode maps the
mode to the target and its variation (texture, shadows) to the same variation of the target::

    T(c)    = t + k R (c - mu),    k = min(C_t / C_mu, GAIN_MAX),    R = rotation by h_t - h_mu
    c'      = c + w(c, L) (T(c) - c)

``R`` is the identity when ``C_t`` or ``C_mu`` is below ``ACHROMATIC = 2`` (no hue) and
``GAIN_MAX = 3`` bounds the gain from a near-neutral mode (its noise is not amplified more). Below
that bound ``k R mu = t``, so a shadow ``c = s mu`` maps to ``s t``, a shadow of the target, and an
achromatic target (``k = 0``) leaves no chroma variation. The recombination then reduces every pixel
outside sRGB at its L at fixed hue (:func:`mtcolor.color.fit_chroma_to_gamut`): a target out of
gamut at a pixel's L loses chroma at fixed hue, its in-gamut version ``g(L) t`` (:func:`gamut_factor`).

Usage (plan on the working-resolution decode, apply at full resolution in any tiling)::

    plan = plan_alignment(lightness_small, ab_small, labels_small, {1: parse_color("#d0302a")})
    rgb = recombine_luminance(lightness, ab_small, label_map=labels_full, adjust=plan)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .color import fit_chroma_to_gamut
from .color_targets import target_lab

BIN = 2.0
"""Histogram bin width (Lab units) of the mode search."""
SMOOTH = 3.0
"""Gaussian smoothing of the histogram, mean-shift bandwidth and membership blur (Lab units)."""
DEPTH = 0.25
"""Two peaks are separate colours when the pass between them is below ``1 - DEPTH`` of the lower."""
FLOOR = 1e-3
"""Histogram bins below this share of the highest smoothed bin belong to no mode."""
CORE_IN, CORE_OUT = 3.0, 4.5
"""Mahalanobis distances where the mode's core membership starts falling and reaches 0."""
SIGMA_MIN = 2.0
"""Smallest spread (Lab units) of a mode's core: added as ``SIGMA_MIN^2 I`` to its covariance."""
GAIN_MAX = 3.0
"""Largest chroma gain ``k`` of the alignment."""
ACHROMATIC = 2.0
"""Chroma below which a colour has no hue (no rotation)."""
_EDGE = 128.0
_BINS = int(2 * _EDGE / BIN)


def _gaussian_kernel(sigma_bins: float, dtype=torch.float64) -> torch.Tensor:
    radius = math.ceil(3 * sigma_bins)
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma_bins**2))
    return kernel / kernel.sum()


def _blur(grid: torch.Tensor) -> torch.Tensor:
    """(N, N) -> (N, N) separable Gaussian blur of SMOOTH Lab units (zero outside the grid)."""
    kernel = _gaussian_kernel(SMOOTH / BIN, grid.dtype)
    radius = kernel.numel() // 2
    out = F.conv2d(grid[None, None], kernel.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))[0, 0]


def _pad_grids(grids: torch.Tensor) -> torch.Tensor:
    """(K, N, N) membership grids -> (K, N + 2, N + 2) with a zero border, for :func:`_grid_lookup`."""
    return F.pad(grids, (1, 1, 1, 1))


def _grid_lookup(padded: torch.Tensor, which: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of per-mode ab-plane grids (K, N + 2, N + 2) (:func:`_pad_grids` of grids at
    bin centres) at chroma ab (2, n) for the mode index ``which`` (n,); 0 outside the grid."""
    size = padded.shape[-1]
    position = ((ab.to(padded.dtype) + _EDGE) / BIN + 0.5).clamp(0, size - 1)  # (2, n), border = 0
    low = position.floor().long().clamp(max=size - 2)
    frac = position - low
    flat = padded.reshape(-1)
    base = which * size * size + low[0] * size + low[1]
    top = flat[base] + frac[1] * (flat[base + 1] - flat[base])
    bottom = flat[base + size] + frac[1] * (flat[base + size + 1] - flat[base + size])
    return top + frac[0] * (bottom - top)


def _weights(grids, which, ab, lightness, mode_lightness) -> torch.Tensor:
    """``w(c, L)`` of the module docstring for pixels ab (2, n) at lightness (n,) (or None: ``M(c)``
    only), each read from mode ``which`` (n,) of ``grids`` (K, N, N) with lightness
    ``mode_lightness`` (K,)."""
    weight = _grid_lookup(grids, which, ab)
    if lightness is None:
        return weight
    reference = mode_lightness[which]  # (n,)
    darker = lightness < reference
    if bool(darker.any()):
        scaled = ab[:, darker] * ((reference[darker] + 16) / (lightness[darker] + 16))
        weight = weight.clone()
        weight[darker] = torch.maximum(weight[darker], _grid_lookup(grids, which[darker], scaled))
    return weight


@dataclass(frozen=True)
class ChromaMode:
    """The dominant chroma mode of a set of pixels (definition: module docstring).

    Attributes:
        ab: the mode's centre ``mu`` (a, b).
        lightness: ``L_mu``, the median L of its basin's pixels (NaN when no L was given).
        share: share of the pixels in its (merged) basin.
        pixels: pixels the mode was estimated from (after subsampling).
        covariance: ``(s_aa, s_ab, s_bb)`` of its robust covariance ``S``.
        grid: (N, N) membership ``M`` on the ab plane (at bin centres, :data:`BIN` apart from
            ``-128 + BIN / 2``).
    """

    ab: tuple[float, float]
    lightness: float
    share: float
    pixels: int
    covariance: tuple[float, float, float]
    grid: torch.Tensor = field(compare=False, repr=False)

    def membership(self, ab: torch.Tensor, lightness: torch.Tensor | None = None) -> torch.Tensor:
        """``w(c, L)`` in [0, 1] of chroma ab (2, ...) at lightness (...) (None: ``M(c)`` alone)."""
        flat = ab.reshape(2, -1).to(torch.float64)
        which = torch.zeros(flat.shape[1], dtype=torch.long, device=ab.device)
        if lightness is not None and math.isfinite(self.lightness):
            lightness = lightness.reshape(-1).to(flat)
        else:
            lightness = None
        reference = torch.tensor([self.lightness], dtype=torch.float64, device=ab.device)
        out = _weights(_pad_grids(self.grid[None]).to(ab.device), which, flat, lightness, reference)
        return out.reshape(ab.shape[1:]).to(ab.dtype)


def _hill_climb(smooth: torch.Tensor) -> torch.Tensor:
    """(N, N) smoothed histogram -> (N * N,) flat index of the peak each bin climbs to.

    Each bin points to the largest bin of its 3 x 3 neighbourhood (the first in raster order on a
    tie, so pointers never cycle); following the pointers to their fixed point gives the peak.
    """
    n = smooth.shape[-1]
    padded = F.pad(smooth[None, None], (1, 1, 1, 1), value=-math.inf)
    windows = F.unfold(padded, 3)[0]  # (9, N * N): neighbourhood values in raster order
    choice = windows.argmax(0)  # (N * N,)
    rows = torch.arange(n * n) // n + choice // 3 - 1
    cols = torch.arange(n * n) % n + choice % 3 - 1
    pointer = rows * n + cols
    while True:
        jumped = pointer[pointer]
        if torch.equal(jumped, pointer):
            return pointer
        pointer = jumped


def _merge_basins(smooth: torch.Tensor, peak_of_bin: torch.Tensor) -> torch.Tensor:
    """Merge the basins of shallow peaks: (N * N,) peak of each bin -> (N * N,) merged component id
    (the flat index of its highest peak; -1 for bins below :data:`FLOOR`).

    The pass between two adjacent basins is the highest ``min(H_u, H_v)`` over neighbouring bins
    u, v on their boundary; the pair whose pass is the highest share of the lower peak merges while
    that share is at least ``1 - DEPTH`` (0-dimensional persistence, highest passes first).
    """
    values = smooth.flatten()
    live = values > FLOOR * values.max()
    peaks, label = torch.unique(peak_of_bin[live], return_inverse=True)
    count = peaks.numel()
    labels = torch.full_like(peak_of_bin, -1)
    labels[live] = label
    height = values[peaks]
    passes = torch.zeros(count * count, dtype=values.dtype)
    padded_labels = F.pad(labels.view(1, _BINS, _BINS), (1, 1, 1, 1), value=-1)[0]
    padded_values = F.pad(smooth[None], (1, 1, 1, 1))[0]
    centre = (slice(1, _BINS + 1), slice(1, _BINS + 1))
    for du, dv in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each neighbour pair once
        shifted = (slice(1 + du, _BINS + 1 + du), slice(1 + dv, _BINS + 1 + dv))
        first, second = padded_labels[centre], padded_labels[shifted]
        edge = (first >= 0) & (second >= 0) & (first != second)
        low = torch.minimum(padded_values[centre][edge], padded_values[shifted][edge])
        for a, b in ((first[edge], second[edge]), (second[edge], first[edge])):
            passes.scatter_reduce_(0, a * count + b, low, reduce="amax")
    passes = passes.view(count, count)
    root = torch.arange(count)
    while count > 1:
        ratio = passes / torch.minimum(height[:, None], height[None, :])
        best = int(ratio.argmax())
        i, j = divmod(best, count)
        if float(ratio.flatten()[best]) < 1 - DEPTH or float(passes[i, j]) <= 0:
            break
        keep, gone = (i, j) if height[i] >= height[j] else (j, i)
        root[root == gone] = keep
        passes[keep] = torch.maximum(passes[keep], passes[gone])
        passes[:, keep] = passes[keep]
        passes[keep, keep] = 0
        passes[gone] = 0
        passes[:, gone] = 0
    return torch.where(labels >= 0, peaks[root[labels.clamp(min=0)]], -1)


def _mean_shift(ab: torch.Tensor, start: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """Mean shift of the centre (2,) on pixels (2, n) with a Gaussian kernel of bandwidth SMOOTH."""
    centre = start
    for _ in range(iterations):
        weights = torch.exp(-((ab - centre[:, None]) ** 2).sum(0) / (2 * SMOOTH**2))  # (n,)
        if float(weights.sum()) <= 0:
            break
        moved = (ab * weights).sum(1) / weights.sum()
        done = float(torch.linalg.vector_norm(moved - centre)) < 1e-3
        centre = moved
        if done:
            break
    return centre


def dominant_chroma_mode(
    ab: torch.Tensor, lightness: torch.Tensor | None = None, *, max_pixels: int = 65536
) -> ChromaMode:
    """The dominant chroma mode of pixels ab (2, n) (or (2, H, W)) in Lab units.

    Args:
        ab: the pixels' chroma.
        lightness: their L (n,) (or (1, H, W)) in [0, 100], for the mode's ``L_mu`` (optional).
        max_pixels: at most this many evenly spaced pixels are used.

    Steps and equations: module docstring. Raises ValueError for an empty or non-finite input.
    """
    ab = torch.as_tensor(ab).detach().to("cpu", torch.float64).reshape(2, -1)
    if lightness is not None:
        lightness = torch.as_tensor(lightness).detach().to("cpu", torch.float64).reshape(-1)
        if lightness.numel() != ab.shape[1]:
            raise ValueError(f"lightness has {lightness.numel()} values for {ab.shape[1]} ab pixels.")
    if ab.shape[1] == 0:
        raise ValueError("ab has no pixels; the dominant chroma mode needs at least one pixel.")
    if not torch.isfinite(ab).all() or (lightness is not None and not torch.isfinite(lightness).all()):
        raise ValueError("ab or lightness has NaN or infinite values; pass finite Lab values.")
    if ab.shape[1] > max_pixels:
        keep = torch.linspace(0, ab.shape[1] - 1, max_pixels).round().long()
        ab = ab[:, keep]
        lightness = None if lightness is None else lightness[keep]
    cells = ((ab + _EDGE) / BIN).floor().long().clamp(0, _BINS - 1)  # (2, n)
    flat = cells[0] * _BINS + cells[1]
    hist = torch.bincount(flat, minlength=_BINS * _BINS).to(torch.float64).view(_BINS, _BINS)
    smooth = _blur(hist)
    component = _merge_basins(smooth, _hill_climb(smooth))  # (N * N,)
    of_pixel = component[flat]
    mass = torch.bincount(of_pixel[of_pixel >= 0], minlength=_BINS * _BINS)
    dominant = int(mass.argmax())
    start = torch.tensor([dominant // _BINS, dominant % _BINS], dtype=torch.float64) * BIN - _EDGE + BIN / 2
    mu = _mean_shift(ab, start)
    members = of_pixel == dominant
    covariance = _robust_covariance(ab[:, members] - mu[:, None])
    basin = _blur((component == dominant).to(torch.float64).view(_BINS, _BINS)).clamp(0, 1)
    basin = torch.where(basin > 1 - 1e-9, torch.ones_like(basin), basin)
    return ChromaMode(
        ab=(float(mu[0]), float(mu[1])),
        lightness=math.nan if lightness is None else float(lightness[members].median()),
        share=float(members.double().mean()),
        pixels=int(ab.shape[1]),
        covariance=tuple(float(v) for v in covariance.flatten()[[0, 1, 3]]),
        grid=basin * _core(mu, covariance),
    )


def _robust_covariance(offsets: torch.Tensor) -> torch.Tensor:
    """(2, 2) covariance of a mode's pixels from offsets ``c_i - mu`` (2, m): re-estimated from the
    pixels within Mahalanobis distance ``CORE_IN`` until stable, divided by the truncated Gaussian's
    variance ratio, plus ``SIGMA_MIN^2 I``."""
    floor = SIGMA_MIN**2 * torch.eye(2, dtype=torch.float64)
    covariance = offsets @ offsets.T / max(offsets.shape[1], 1)
    radius = CORE_IN**2
    inside_2d = 1 - math.exp(-radius / 2)  # P(chi2_2 <= r^2)
    ratio = (
        inside_2d - math.exp(-radius / 2) * radius / 2
    ) / inside_2d  # P(chi2_4 <= r^2) / P(chi2_2 <= r^2)
    for _ in range(20):
        inverse = torch.linalg.inv(covariance + floor)
        inside = torch.einsum("in,ij,jn->n", offsets, inverse, offsets) < radius
        kept = offsets[:, inside]
        updated = kept @ kept.T / max(kept.shape[1], 1) / ratio
        if torch.allclose(updated, covariance, rtol=1e-4, atol=1e-6):
            break
        covariance = updated
    return covariance + floor


def _core(mu: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """(N, N) soft core of the mode on the ab grid: 1 within Mahalanobis distance CORE_IN of ``mu``,
    cosine fall-off to 0 at CORE_OUT."""
    centres = torch.arange(_BINS, dtype=torch.float64) * BIN - _EDGE + BIN / 2
    offsets = torch.stack(torch.meshgrid(centres, centres, indexing="ij")).reshape(2, -1) - mu[:, None]
    distance = torch.einsum("in,ij,jn->n", offsets, torch.linalg.inv(covariance), offsets).clamp(min=0).sqrt()
    ramp = ((distance - CORE_IN) / (CORE_OUT - CORE_IN)).clamp(0, 1)
    return (0.5 * (1 + torch.cos(math.pi * ramp))).view(_BINS, _BINS)


def _similarity(target_ab, mode_ab) -> tuple[float, float]:
    """``(k, theta)`` of the alignment's similarity transform: gain and rotation (radians)."""
    chroma_t, chroma_m = math.hypot(*target_ab), math.hypot(*mode_ab)
    gain = GAIN_MAX if chroma_m <= 0 else min(chroma_t / chroma_m, GAIN_MAX)
    if chroma_t < ACHROMATIC or chroma_m < ACHROMATIC:
        return gain, 0.0
    return gain, math.atan2(target_ab[1], target_ab[0]) - math.atan2(mode_ab[1], mode_ab[0])


def gamut_factor(target_ab, lightness: torch.Tensor) -> torch.Tensor:
    """``g(L)``: the largest factor in [0, 1] with ``(L, g a_t, g b_t)`` inside sRGB.

    Args:
        target_ab: (a, b) of the target.
        lightness: (n,) L values in [0, 100].

    Returns:
        (n,) float32 factors (:func:`mtcolor.color.fit_chroma_to_gamut`, 12 bisection steps; 1 for an
        achromatic target).
    """
    lightness = torch.as_tensor(lightness, dtype=torch.float32).reshape(1, -1, 1).clamp(0, 100)
    ab = torch.as_tensor(target_ab, dtype=torch.float32).view(2, 1, 1).expand(2, lightness.shape[1], 1)
    fitted = fit_chroma_to_gamut(lightness, ab.contiguous())[:, :, 0]  # (2, n)
    chroma = float(torch.linalg.vector_norm(ab[:, 0, 0]))
    if chroma == 0:
        return torch.ones(lightness.shape[1])
    inside = (fitted == ab[:, :, 0]).all(0)  # left as is by the fit: exactly 1
    return torch.where(inside, 1.0, torch.linalg.vector_norm(fitted, dim=0) / chroma)


@dataclass(frozen=True)
class InstanceAlignment:
    """The plan for one targeted instance.

    Attributes:
        label: the instance label (1-based).
        target: the target's Lab.
        mode: the instance's dominant chroma mode before alignment.
        gain, rotation: ``k`` and ``h_t - h_mu`` in degrees of the similarity transform.
        median_lightness: the instance's median L.
        gamut_scale: ``g`` at the median L: the share of the target's chroma sRGB can show there
            (1 = fully reachable).
        pixels: the instance's pixels at the plan's resolution.
    """

    label: int
    target: tuple[float, float, float]
    mode: ChromaMode
    gain: float
    rotation: float
    median_lightness: float
    gamut_scale: float
    pixels: int


@dataclass(frozen=True)
class ChromaAlignment:
    """Per-pixel chroma alignment of targeted instances (equations: module docstring).

    Build it with :func:`plan_alignment`; call it (or :meth:`apply`) on any row tile at any
    resolution: ``plan(lightness (1, H, W), ab (2, H, W), labels (H, W)) -> ab (2, H, W)``, e.g. as
    ``adjust=`` of :func:`mtcolor.color.recombine_luminance`.

    Attributes:
        instances: the planned instances.
        skipped: ``(label, reason)`` of targeted instances that could not be planned (no pixels at
            the plan's resolution).
    """

    instances: tuple[InstanceAlignment, ...]
    skipped: tuple[tuple[int, str], ...] = ()
    _tables: dict = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        count = len(self.instances)
        top = max((i.label for i in self.instances), default=0)
        row = torch.full((top + 1,), -1, dtype=torch.long)
        for index, item in enumerate(self.instances):
            row[item.label] = index
        angles = torch.tensor([math.radians(i.rotation) for i in self.instances], dtype=torch.float64)
        tables = {
            "row": row,
            "mu": torch.tensor([i.mode.ab for i in self.instances], dtype=torch.float64).view(count, 2),
            "mode_lightness": torch.tensor([i.mode.lightness for i in self.instances], dtype=torch.float64),
            "target": torch.tensor([i.target[1:] for i in self.instances], dtype=torch.float64).view(
                count, 2
            ),
            "gain": torch.tensor([i.gain for i in self.instances], dtype=torch.float64),
            "rotation": torch.stack([angles.cos(), -angles.sin(), angles.sin(), angles.cos()], -1).view(
                count, 2, 2
            ),
            "grids": _pad_grids(torch.stack([i.mode.grid for i in self.instances]))
            if count
            else torch.zeros(0, _BINS + 2, _BINS + 2, dtype=torch.float64),
        }
        object.__setattr__(self, "_tables", tables)

    def apply(self, lightness: torch.Tensor, ab: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Aligned chroma of one image or row tile.

        Args:
            lightness: (1, H, W) L in [0, 100]; ab: (2, H, W) chroma; labels: (H, W) int instance
                labels (0 = background), all at one resolution.

        Returns:
            (2, H, W) in ``ab``'s dtype; bit-identical to ``ab`` wherever ``w = 0``. Colours may lie
            outside sRGB: fit them as :func:`mtcolor.color.recombine_luminance` does.
        """
        if lightness.shape[-2:] != ab.shape[-2:] or labels.shape != ab.shape[-2:] or ab.shape[0] != 2:
            raise ValueError(
                f"shapes lightness {tuple(lightness.shape)}, ab {tuple(ab.shape)}, labels {tuple(labels.shape)}; "
                "expected (1, H, W), (2, H, W) and (H, W) at one resolution."
            )
        tables = {k: v.to(ab.device) for k, v in self._tables.items()}
        row = tables["row"]
        index = labels.to(ab.device, torch.long)
        inside = (index >= 0) & (index < row.numel())
        rows = torch.where(inside, row[index.clamp(0, row.numel() - 1)], -1)  # (H, W)
        active = rows >= 0
        if not bool(active.any()):
            return ab
        r = rows[active]  # (n,)
        dtype = torch.promote_types(ab.dtype, torch.float32)
        pixels = ab[:, active].to(dtype)  # (2, n)
        light = lightness[0][active].to(dtype).clamp(0, 100)  # (n,)
        grids, mode_lightness = tables["grids"].to(dtype), tables["mode_lightness"].to(dtype)
        weight = _weights(grids, r, pixels, light, mode_lightness)  # (n,)
        offset = pixels - tables["mu"].to(dtype)[r].T  # (2, n)
        rotation = tables["rotation"].to(dtype)[r]  # (n, 2, 2)
        gain = tables["gain"].to(dtype)[r]
        target = tables["target"].to(dtype)[r]  # (n, 2)
        mapped_a = target[:, 0] + gain * (rotation[:, 0, 0] * offset[0] + rotation[:, 0, 1] * offset[1])
        mapped_b = target[:, 1] + gain * (rotation[:, 1, 0] * offset[0] + rotation[:, 1, 1] * offset[1])
        moved = (pixels + weight * (torch.stack([mapped_a, mapped_b]) - pixels)).to(
            ab.dtype
        )  # c + w (T(c) - c)
        out = ab.clone()
        out[:, active] = torch.where(weight > 0, moved, ab[:, active])
        return out

    __call__ = apply


def _target_items(targets) -> dict:
    if isinstance(targets, Mapping):
        return dict(targets)
    if isinstance(targets, Sequence) and not isinstance(targets, (str, bytes)):
        return {k + 1: v for k, v in enumerate(targets)}
    raise TypeError(
        f"targets has type {type(targets).__name__}; expected {{label: target}} or a list (targets[k - 1] for "
        "label k)."
    )


def plan_alignment(
    lightness: torch.Tensor, ab: torch.Tensor, label_map: torch.Tensor, targets
) -> ChromaAlignment:
    """Estimate each targeted instance's dominant chroma mode (at any resolution, e.g. the decode at
    the working resolution) and return the per-pixel alignment.

    Args:
        lightness: (1, h, w) L in [0, 100].
        ab: (2, h, w) chroma of the decoded colours.
        label_map: (h, w) int labels (0 = background, k = instance k).
        targets: ``{label: target}`` or a list with ``targets[k - 1]`` for label k; a target is a
            :class:`~mtcolor.color_targets.ColorTarget`, a Lab triple ``(L, a, b)`` or None (no
            target).

    Returns:
        :class:`ChromaAlignment`; instances with a target but no pixels at this resolution are
        listed in ``skipped``.
    """
    if lightness.ndim != 3 or lightness.shape[0] != 1 or ab.ndim != 3 or ab.shape[0] != 2:
        raise ValueError(
            f"lightness {tuple(lightness.shape)} and ab {tuple(ab.shape)}; expected (1, h, w) and (2, h, w)."
        )
    if tuple(label_map.shape) != tuple(ab.shape[-2:]) or lightness.shape[-2:] != ab.shape[-2:]:
        raise ValueError(
            f"label_map {tuple(label_map.shape)}, lightness {tuple(lightness.shape)} and ab {tuple(ab.shape)} must "
            "share one resolution (resize the label map with mtcolor.masks.resize_label_map)."
        )
    if label_map.is_floating_point() or label_map.dtype == torch.bool:
        raise TypeError(f"label_map has dtype {label_map.dtype}; expected an integer tensor (h, w).")
    instances, skipped = [], []
    labels = label_map.to(ab.device)
    for label, value in sorted(_target_items(targets).items()):
        lab = target_lab(value, f"targets[{label}]")
        if lab is None:
            continue
        inside = labels == int(label)
        count = int(inside.sum())
        if count == 0:
            skipped.append((int(label), "no pixels at the plan's resolution"))
            continue
        light = lightness[0][inside]
        median_l = float(light.median())
        mode = dominant_chroma_mode(ab[:, inside], light)
        gain, rotation = _similarity(lab[1:], mode.ab)
        gamut = float(gamut_factor(lab[1:], torch.tensor([median_l]))[0])
        instances.append(
            InstanceAlignment(int(label), lab, mode, gain, math.degrees(rotation), median_l, gamut, count)
        )
    return ChromaAlignment(tuple(instances), tuple(skipped))
