"""Colour bleeding: how much an instance's chroma leaks across its mask boundary (reference-free).

MT-Color motivates PMAM by colour bleeding (Sec. IV.C.1, Fig. 6) but reports no number for it;
this metric gives "w/o PMAM" vs "with PMAM" comparisons one. Definition, per instance ``k`` of an
image, in CIE Lab chroma (a, b) with **Chebyshev (square) pixel distances** to the mask ``M_k``:

* **inside colour** ``c_k``: the component-wise median ab over the pixels of ``M_k`` at distance
  more than ``band`` from its outside (the mask eroded by ``band``; the whole mask if fewer than
  ``min_pixels`` pixels remain);
* **band** ``B_k``: pixels outside ``M_k`` within distance ``band`` of it; each band pixel belongs
  to a neighbouring region ``j`` (another instance or the background, from the label map);
* **neighbour colour** ``c_j``: the median ab of region ``j``'s pixels in the ring at distance
  ``(2 band, 8 band]`` from ``M_k`` (the neighbour's own colour near ``k`` but beyond the band; a
  median, so a leak reaching into part of the ring does not move it); band pixels whose region has fewer than ``min_pixels`` ring pixels, or whose ``c_j`` is
  within ``min_contrast`` of ``c_k`` (same colour: no leak can be seen), are not counted;
* for each counted band pixel ``p`` with chroma ``x_p``:
  ``t_p = <x_p - c_j, c_k - c_j> / |c_k - c_j|^2``, the fraction of the way from the neighbour's
  colour to the instance's colour (0 = the neighbour's own colour, 1 = the instance's).

Reported per instance: **leak** = ``clamp(mean t_p, 0, 1)`` over its counted band pixels (the
mean of the unclamped ``t_p``, so that pixel noise averages out instead of adding a positive
floor), and **share** = the
fraction of counted band pixels with ``t_p > 0.5``, i.e. whose ab is closer to the instance's colour
than to the neighbour's own (the two are the same test: the bisector of ``c_j c_k``). Image and
dataset values are averages weighted by counted band pixels. 0 means a clean boundary; a smear of
the instance's colour across its boundary raises ``leak`` monotonically with its width (a symmetric
blur never makes pixels outside closer to the inside colour, so ``share`` responds to one-sided
leaks, the kind PMAM is meant to stop, and ``leak`` to both).

Default ``band``: ``max(2, round(min(H, W) / 64))`` pixels (8 at 512 px, 4 at 256 px).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..color import rgb_to_lab
from ._inputs import check_images, check_label_maps


@dataclass(frozen=True)
class InstanceBleeding:
    """Bleeding measurement of one instance.

    Attributes:
        image_index, instance: which image and which instance label (1-based).
        leak: mean projection ``t`` over counted band pixels, clamped to [0, 1].
        share: fraction of counted band pixels closer to the instance's colour (in [0, 1]).
        counted: number of band pixels that entered the averages.
        band_pixels: number of band pixels in total.
    """

    image_index: int
    instance: int
    leak: float
    share: float
    counted: int
    band_pixels: int


@dataclass
class BleedingResult:
    """Colour bleeding of a batch.

    Attributes:
        instances: instances with at least one counted band pixel.
        skipped: ``(image_index, instance, reason)`` of the others.
        band: the band width used (pixels).
        batch_size: number of images.
    """

    instances: list[InstanceBleeding]
    skipped: list[tuple[int, int, str]] = field(default_factory=list)
    band: int = 0
    batch_size: int = 0

    def _weighted(self, attribute: str, image_index: int | None = None) -> float:
        chosen = [i for i in self.instances if image_index is None or i.image_index == image_index]
        total = sum(i.counted for i in chosen)
        return sum(getattr(i, attribute) * i.counted for i in chosen) / total if total else float("nan")

    @property
    def leak(self) -> float:
        """Band-pixel-weighted mean leak over all instances (NaN if nothing was counted)."""
        return self._weighted("leak")

    @property
    def share(self) -> float:
        """Band-pixel-weighted share of band pixels closer to the instance (NaN if nothing was counted)."""
        return self._weighted("share")

    def per_image_leak(self) -> torch.Tensor:
        """(B,) leak of each image (NaN where nothing was counted)."""
        return torch.tensor([self._weighted("leak", b) for b in range(self.batch_size)])

    def to_dict(self) -> dict:
        return {
            "leak": self.leak,
            "share": self.share,
            "band": self.band,
            "instances": [vars(i) for i in self.instances],
            "skipped": len(self.skipped),
        }


def _dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Chebyshev dilation of bool masks (n, H, W) by ``radius`` pixels (separable max pooling)."""
    if radius <= 0:
        return masks
    x = masks[:, None].float()
    x = F.max_pool2d(x, kernel_size=(2 * radius + 1, 1), stride=1, padding=(radius, 0))
    x = F.max_pool2d(x, kernel_size=(1, 2 * radius + 1), stride=1, padding=(0, radius))
    return x[:, 0] > 0.5


def default_band(height: int, width: int) -> int:
    """``max(2, round(min(H, W) / 64))``: 8 px at 512, 4 px at 256."""
    return max(2, round(min(height, width) / 64))


def color_bleeding(
    images: torch.Tensor,
    label_maps,
    band: int | None = None,
    *,
    min_contrast: float = 10.0,
    min_pixels: int = 8,
) -> BleedingResult:
    """Colour bleeding of every instance across its mask boundary (definition: module docstring).

    Args:
        images: sRGB (B, 3, H, W) in [0, 1].
        label_maps: (B, H, W) int tensor or B tensors (H, W): 0 = background, k = instance k.
        band: band width in pixels (default :func:`default_band` of the image size).
        min_contrast: minimum ab distance between an instance's and a neighbour's colour for their
            shared boundary to count (Lab units).
        min_pixels: minimum pixel count for the inside and ring colour estimates.

    Returns:
        :class:`BleedingResult` (``.leak``, ``.share``, ``.per_image_leak()``, per-instance records).
    """
    images = check_images(images, "images", channels=(3,))
    maps = check_label_maps(label_maps, images)
    height, width = images.shape[-2:]
    band = default_band(height, width) if band is None else int(band)
    if band < 1:
        raise ValueError(f"band={band!r}; it must be a positive number of pixels.")
    ab_images = rgb_to_lab(images.float())[:, 1:]  # (B, 2, H, W)
    instances, skipped = [], []
    for index, (ab, label_map) in enumerate(zip(ab_images, maps)):
        labels = [int(v) for v in torch.unique(label_map).tolist() if v > 0]
        if not labels:
            continue
        masks = label_map[None] == torch.tensor(labels, device=label_map.device).view(-1, 1, 1)  # (n, H, W)
        near = _dilate(masks, band)
        inner_ring = _dilate(masks, 2 * band)
        outer_ring = _dilate(masks, 8 * band)
        interior = masks & ~_dilate(~masks, band)
        flat_ab = ab.flatten(1)  # (2, H*W)
        flat_labels = label_map.flatten()
        for row, label in enumerate(labels):
            inside = interior[row] if int(interior[row].sum()) >= min_pixels else masks[row]
            c_k = flat_ab[:, inside.flatten()].median(dim=1).values  # (2,)
            band_mask = (near[row] & ~masks[row]).flatten()
            ring = (outer_ring[row] & ~inner_ring[row]).flatten()
            band_total = int(band_mask.sum())
            t_values = []
            for neighbour in torch.unique(flat_labels[band_mask]).tolist():
                ring_pixels = ring & (flat_labels == neighbour)
                if int(ring_pixels.sum()) < min_pixels:
                    continue
                c_j = flat_ab[:, ring_pixels].median(dim=1).values
                direction = c_k - c_j
                contrast = float(direction.norm())
                if contrast < min_contrast:
                    continue
                x = flat_ab[:, band_mask & (flat_labels == neighbour)]  # (2, m)
                t_values.append(((x - c_j[:, None]) * direction[:, None]).sum(0) / contrast**2)
            if not t_values:
                reason = (
                    "no band pixels" if band_total == 0 else "no neighbour with a distinct, measurable colour"
                )
                skipped.append((index, label, reason))
                continue
            t_all = torch.cat(t_values)
            instances.append(
                InstanceBleeding(
                    image_index=index,
                    instance=label,
                    leak=float(t_all.mean().clamp(0, 1)),
                    share=float((t_all > 0.5).float().mean()),
                    counted=int(t_all.numel()),
                    band_pixels=band_total,
                )
            )
    return BleedingResult(instances, skipped, band, images.shape[0])
