"""Colour conversions shared by every pipeline, trainer and metric.

Conventions: RGB tensors are sRGB in [0, 1], shaped (..., 3, H, W); Lab tensors are CIE L*a*b*
(D65) with L in [0, 100] and a, b roughly in [-128, 127], shaped (..., 3, H, W). Conversions use
kornia (differentiable, batched on the device).

Full-resolution work (:func:`rgb_luminance`, :func:`fit_chroma_to_gamut`,
:func:`recombine_luminance`) is per pixel, so it runs in row tiles of about ``tile_pixels`` pixels
(default :data:`TILE_PIXELS`): the colour-space temporaries (tens of bytes per pixel) then cost one
tile, not the whole image. Tiling does not change the result.
"""

from __future__ import annotations

import kornia.color
import torch
import torch.nn.functional as F

from .image_io import to_tensor_image

TILE_PIXELS = 1 << 18
"""Pixels per row tile of the per-pixel colour maths (about 40 MB of float32 temporaries)."""


def _row_tiles(height: int, width: int, tile_pixels: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` row ranges covering ``height`` rows, ``~tile_pixels`` pixels each."""
    if tile_pixels < 1:
        raise ValueError(f"tile_pixels must be a positive pixel count, got {tile_pixels}.")
    rows = max(1, tile_pixels // max(1, width))
    return [(start, min(start + rows, height)) for start in range(0, height, rows)]


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (..., 3, H, W) in [0, 1] -> Lab (..., 3, H, W), L in [0, 100]."""
    return kornia.color.rgb_to_lab(rgb.clamp(0, 1))


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab (..., 3, H, W) -> sRGB (..., 3, H, W) clipped to [0, 1]."""
    return kornia.color.lab_to_rgb(lab, clip=True)


def gray_to_rgb(gray: torch.Tensor) -> torch.Tensor:
    """(..., 1, H, W) -> (..., 3, H, W) by repetition."""
    return gray.expand(*gray.shape[:-3], 3, *gray.shape[-2:])


def rgb_luminance(rgb: torch.Tensor, *, tile_pixels: int = TILE_PIXELS) -> torch.Tensor:
    """sRGB (..., 3|1, H, W) in [0, 1] -> the Lab L channel (..., 1, H, W) in [0, 100].

    Computed in row tiles of ``~tile_pixels`` pixels (the result does not depend on the tiling).
    """
    height, width = rgb.shape[-2:]
    tiles = _row_tiles(height, width, tile_pixels)
    if len(tiles) == 1:
        return _luminance(rgb)
    out = rgb.new_empty(*rgb.shape[:-3], 1, height, width)
    for start, stop in tiles:
        out[..., start:stop, :] = _luminance(rgb[..., start:stop, :])
    return out


def _luminance(rgb: torch.Tensor) -> torch.Tensor:
    if rgb.shape[-3] == 1:
        rgb = gray_to_rgb(rgb)
    return rgb_to_lab(rgb)[..., :1, :, :]


def luminance_to_gray(lightness: torch.Tensor) -> torch.Tensor:
    """L (..., 1, H, W) in [0, 100] -> the neutral sRGB gray (..., 3, H, W) in [0, 1] with that L."""
    zeros = torch.zeros_like(lightness)
    return lab_to_rgb(torch.cat([lightness, zeros, zeros], dim=-3))


def image_luminance(image, name: str = "image") -> torch.Tensor:
    """Any supported image (see :mod:`mtcolor.image_io`) -> L (1, H, W) in [0, 100].

    A 3-channel (colour) input contributes its Lab luminance; a 1-channel input is a gray image.
    """
    return rgb_luminance(to_tensor_image(image, name))


def resize(image: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (B, C, H, W) to ``size``; antialiased when shrinking (avoids aliasing of ab maps)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode=mode, align_corners=False, antialias=shrinking)


def fit_chroma_to_gamut(
    lightness: torch.Tensor, ab: torch.Tensor, iterations: int = 12, *, tile_pixels: int = TILE_PIXELS
) -> torch.Tensor:
    """Scale each pixel's (a, b) towards 0 (same hue, same L) until the colour is inside sRGB.

    Args:
        lightness: (..., 1, H, W) L in [0, 100]; ab: (..., 2, H, W).
        iterations: bisection steps.
        tile_pixels: pixels per row tile (the result does not depend on it).

    Returns:
        ab (..., 2, H, W) scaled by the largest factor in [0, 1] (found by bisection to
        ``2**-iterations``) whose colour lies in the sRGB gamut, so that converting to RGB needs no
        clipping and keeps L. Only out-of-gamut pixels are bisected.
    """
    height, width = lightness.shape[-2:]
    tiles = _row_tiles(height, width, tile_pixels)
    if len(tiles) == 1:
        return _fit_chroma(lightness, ab, iterations)
    out = ab.new_empty(ab.shape)
    for start, stop in tiles:
        rows = slice(start, stop)
        out[..., rows, :] = _fit_chroma(lightness[..., rows, :], ab[..., rows, :], iterations)
    return out


def _fit_chroma(lightness: torch.Tensor, ab: torch.Tensor, iterations: int) -> torch.Tensor:
    def inside(lab: torch.Tensor) -> torch.Tensor:  # lab (3, K, 1) -> (K, 1) bool
        rgb = kornia.color.lab_to_rgb(lab, clip=False)
        return ((rgb >= -1e-4) & (rgb <= 1 + 1e-4)).all(dim=0)

    lab = torch.cat([lightness, ab], dim=-3).movedim(-3, 0).reshape(3, -1, 1)  # (3, K, 1) pixels
    bad = (~inside(lab)).flatten().nonzero().flatten()
    if bad.numel() == 0:
        return ab
    pixels = lab[:, bad]  # (3, k, 1)
    lo = torch.zeros(1, bad.numel(), 1, dtype=lab.dtype, device=lab.device)
    hi = torch.ones_like(lo)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        good = inside(torch.cat([pixels[:1], pixels[1:] * mid]))[None]
        lo, hi = torch.where(good, mid, lo), torch.where(good, hi, mid)
    scale = torch.ones(lab.shape[1], dtype=lab.dtype, device=lab.device)
    scale[bad] = lo.flatten()
    scale = scale.view(*lightness.shape[:-3], *lightness.shape[-2:]).unsqueeze(-3)  # (..., 1, H, W)
    return ab * scale


def recombine_luminance(
    lightness: torch.Tensor,
    ab: torch.Tensor,
    *,
    tile_pixels: int = TILE_PIXELS,
    label_map: torch.Tensor | None = None,
    adjust=None,
) -> torch.Tensor:
    """The input's own L + predicted ab resized to it -> sRGB.

    Args:
        lightness: (B, 1, H, W) in [0, 100] at the output (input) resolution.
        ab: (B, 2, h, w) predicted chroma at the working resolution.
        tile_pixels: pixels per row tile of the per-pixel maths (the result does not depend on it).
        label_map: (B, H, W) int instance labels at the output resolution; needed with ``adjust``.
        adjust: an optional per-pixel chroma function, one for every image or a list with one per
            image (None = unchanged), called on each row tile as
            ``adjust(lightness (1, h_t, W), ab (2, h_t, W), labels (h_t, W)) -> ab (2, h_t, W)``
            after resizing and before the gamut fit (e.g. a
            :class:`mtcolor.chroma_alignment.ChromaAlignment`). It must act per pixel, so that the
            tiling does not change the result.

    Returns:
        (B, 3, H, W) sRGB in [0, 1] (``lightness``'s dtype) whose Lab L equals ``lightness``: (a, b)
        pairs outside the sRGB gamut for their L lose chroma (same hue) instead of being clipped in
        RGB, which would change L (:func:`fit_chroma_to_gamut`). Memory: the (B, 2, H, W) resized ab
        and the output, plus one tile of temporaries.
    """
    height, width = lightness.shape[-2:]
    adjusters = _adjusters(adjust, lightness, label_map)
    ab = resize(ab.to(lightness.dtype), (height, width))  # (B, 2, H, W)
    tiles = _row_tiles(height, width, tile_pixels)
    out = lightness.new_empty(*lightness.shape[:-3], 3, height, width)
    for start, stop in tiles:
        rows = slice(start, stop)
        tile_l = lightness[..., rows, :].clamp(0, 100)
        tile_ab = ab[..., rows, :]
        if adjusters is not None:
            tile_ab = torch.stack(
                [
                    tile_ab[b] if fn is None else _adjusted(fn, tile_l[b], tile_ab[b], label_map[b, rows])
                    for b, fn in enumerate(adjusters)
                ]
            )
        tile_ab = _fit_chroma(tile_l, tile_ab, 12)
        out[..., rows, :] = lab_to_rgb(torch.cat([tile_l, tile_ab], dim=-3))
    return out


def _adjusters(adjust, lightness: torch.Tensor, label_map) -> list | None:
    """``adjust`` as one callable-or-None per image (None when nothing is adjusted); checks inputs."""
    if adjust is None:
        return None
    if lightness.ndim != 4:
        raise ValueError(f"lightness has shape {tuple(lightness.shape)}; adjust needs a batch (B, 1, H, W).")
    batch, _, height, width = lightness.shape
    adjusters = list(adjust) if isinstance(adjust, (list, tuple)) else [adjust] * batch
    if len(adjusters) != batch:
        raise ValueError(
            f"adjust has {len(adjusters)} entries but there are {batch} images; pass one per image."
        )
    bad = [i for i, fn in enumerate(adjusters) if fn is not None and not callable(fn)]
    if bad:
        raise TypeError(f"adjust entries {bad} are not callable; pass functions (or None) per image.")
    if all(fn is None for fn in adjusters):
        return None
    if label_map is None or tuple(label_map.shape) != (batch, height, width):
        got = None if label_map is None else tuple(label_map.shape)
        raise ValueError(
            f"label_map has shape {got}; adjust needs the instance labels at the output resolution, "
            f"({batch}, {height}, {width}) (mtcolor.masks.masks_to_label_map of the full-size masks)."
        )
    if label_map.is_floating_point() or label_map.dtype == torch.bool:
        raise TypeError(f"label_map has dtype {label_map.dtype}; expected an integer tensor (B, H, W).")
    return adjusters


def _adjusted(fn, lightness: torch.Tensor, ab: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    out = fn(lightness, ab, labels)
    if not isinstance(out, torch.Tensor) or out.shape != ab.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"adjust returned {got} for a tile of ab {tuple(ab.shape)}; it must return that shape."
        )
    return out.to(ab.dtype)
