"""Colour error: how far each instance's colour is from the exact colour requested for it.

Per instance with a target (a :class:`~mtcolor.color_targets.ColorTarget` or a Lab triple):

* the **measured** colour ``m = (L_m, a_mu, b_mu)``: the dominant chroma mode ``mu``
  (:func:`mtcolor.chroma_alignment.dominant_chroma_mode`, the colour most of the instance has; the
  exact mode aligns the same mode) of the instance's pixels around its median lightness ``L_m``
  (those with L between its 25th and 75th percentiles: at other L the sRGB gamut may cap the chroma
  of the same paint differently);
* the target **at the same L**: ``t_L = (L_m, g a_t, b_t g)``, the target's hue and chroma at
  ``L_m`` with the chroma reduced at fixed hue until the colour is inside sRGB
  (:func:`mtcolor.color.fit_chroma_to_gamut`). A colorizer keeps the input's L, so only hue and
  chroma are the model's to get right;
* ``delta_e00`` = CIEDE2000 between ``t_L`` and ``m`` (scikit-image's ``deltaE_ciede2000``,
  kL = kC = kH = 1), ``passes`` = ``delta_e00 <= threshold`` (5, GenColorBench's pass threshold);
* ``chroma_diff`` = ``C_m - C_t`` (negative: too weak), ``C = sqrt(a^2 + b^2)``;
* ``hue_error`` = the absolute hue-angle difference in degrees, in [0, 180]; NaN when the target at
  ``L_m`` or the measured colour is achromatic (chroma < ``achromatic_chroma``, 2 Lab units), where
  hue is undefined.

Instances without pixels are reported with NaN values and ``passes=False``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..chroma_alignment import dominant_chroma_mode, gamut_factor
from ..color import rgb_to_lab
from ..color_targets import target_lab
from ._inputs import check_images, check_instance_count, check_label_maps


def _deltae_ciede2000():
    try:
        from skimage.color import deltaE_ciede2000
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the colour error uses scikit-image's deltaE_ciede2000; install it with "
            "pip install 'mtcolor[metrics]' (or pip install scikit-image)."
        ) from error
    return deltaE_ciede2000


def ciede2000(lab1, lab2) -> torch.Tensor:
    """CIEDE2000 colour difference of Lab colours (..., 3) and (..., 3) (scikit-image, kL = kC = kH = 1).

    Returns a float64 tensor (...).
    """
    import numpy as np

    first = np.asarray(torch.as_tensor(lab1, dtype=torch.float64))
    second = np.asarray(torch.as_tensor(lab2, dtype=torch.float64))
    return torch.from_numpy(np.asarray(_deltae_ciede2000()(first, second, channel_axis=-1), dtype=np.float64))


@dataclass(frozen=True)
class InstanceColorError:
    """The colour error of one instance (definitions: module docstring).

    Attributes:
        image_index: index of the image in the batch.
        instance: the instance label (1-based).
        target: the target's Lab as given.
        target_at_l: the target's hue and in-gamut chroma at the measured L.
        measured: the measured Lab (median L, dominant chroma mode).
        delta_e00: CIEDE2000 between ``target_at_l`` and ``measured``.
        chroma_diff: measured chroma minus the target's chroma at L.
        hue_error: absolute hue difference in degrees in [0, 180], NaN for achromatic colours.
        passes: ``delta_e00 <= threshold``.
        pixels: the instance's pixel count.
    """

    image_index: int
    instance: int
    target: tuple[float, float, float]
    target_at_l: tuple[float, float, float]
    measured: tuple[float, float, float]
    delta_e00: float
    chroma_diff: float
    hue_error: float
    passes: bool
    pixels: int


def _hue_error(first: torch.Tensor, second: torch.Tensor, achromatic: float) -> float:
    """Absolute hue difference in degrees in [0, 180] of two chroma vectors (2,), NaN if either is
    achromatic."""
    if (
        float(torch.linalg.vector_norm(first)) < achromatic
        or float(torch.linalg.vector_norm(second)) < achromatic
    ):
        return math.nan
    angle = math.degrees(
        math.atan2(float(second[1]), float(second[0])) - math.atan2(float(first[1]), float(first[0]))
    )
    angle = abs((angle + 180.0) % 360.0 - 180.0)
    return min(angle, 180.0)


def _measure(lab: torch.Tensor, target: tuple[float, float, float], achromatic: float) -> dict:
    """The error fields of one instance's pixels lab (3, n)."""
    if lab.shape[1] == 0:
        nan = (math.nan, math.nan, math.nan)
        return dict(
            target_at_l=nan, measured=nan, delta_e00=math.nan, chroma_diff=math.nan, hue_error=math.nan
        )
    lightness = float(lab[0].median())
    low, high = torch.quantile(lab[0], torch.tensor([0.25, 0.75], dtype=lab.dtype))
    band = (lab[0] >= low) & (lab[0] <= high)  # the pixels around the median L
    mode = dominant_chroma_mode(lab[1:, band], lab[0, band])
    measured = torch.tensor([lightness, *mode.ab], dtype=torch.float64)
    target_ab = torch.tensor(target[1:], dtype=torch.float64) * float(
        gamut_factor(target[1:], [lightness])[0]
    )
    at_l = torch.cat([torch.tensor([lightness], dtype=torch.float64), target_ab])
    return dict(
        target_at_l=tuple(float(v) for v in at_l),
        measured=tuple(float(v) for v in measured),
        delta_e00=float(ciede2000(at_l, measured)),
        chroma_diff=float(torch.linalg.vector_norm(measured[1:]) - torch.linalg.vector_norm(at_l[1:])),
        hue_error=_hue_error(at_l[1:], measured[1:], achromatic),
    )


def instance_color_errors(
    images, label_maps, targets, threshold: float = 5.0, *, achromatic_chroma: float = 2.0
) -> list[InstanceColorError]:
    """The colour error of every targeted instance (definitions: module docstring).

    Args:
        images: sRGB (B, 3, H, W) in [0, 1], or a list of (3, H, W).
        label_maps: (B, H, W) int tensor or a list of (H, W): 0 = background, k = instance k.
        targets: per image, a list with one entry per instance (``targets[b][k - 1]`` for label k):
            a :class:`~mtcolor.color_targets.ColorTarget`, a Lab triple ``(L, a, b)`` or None (not
            measured).
        threshold: the deltaE00 pass threshold (GenColorBench: 5).
        achromatic_chroma: below this chroma the hue error is NaN.

    Returns:
        one :class:`InstanceColorError` per targeted instance, in image then label order.
    """
    if not threshold > 0:
        raise ValueError(f"threshold={threshold!r}; expected a positive deltaE00 (GenColorBench uses 5).")
    if isinstance(images, (list, tuple)):
        shapes = {tuple(getattr(i, "shape", ())) for i in images}
        if len(shapes) != 1:
            raise ValueError(
                f"images have shapes {sorted(shapes)}; a list of images must share one (3, H, W) shape."
            )
        images = torch.stack(list(images))
    images = check_images(images, "images", channels=(3,))
    maps = check_label_maps(label_maps, images)
    if (
        isinstance(targets, (str, bytes))
        or not isinstance(targets, Sequence)
        or len(targets) != images.shape[0]
    ):
        got = len(targets) if isinstance(targets, Sequence) else type(targets).__name__
        raise ValueError(
            f"targets has {got} entries but there are {images.shape[0]} images; pass one list of per-instance "
            "targets per image."
        )
    lab_images = rgb_to_lab(images.float())  # (B, 3, H, W)
    out = []
    for index, (lab, label_map, items) in enumerate(zip(lab_images, maps, targets)):
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise TypeError(
                f"targets[{index}] has type {type(items).__name__}; expected a list, one entry per instance."
            )
        check_instance_count(label_map, len(items), index, "targets")
        for label, item in enumerate(items, start=1):
            target = target_lab(item, f"targets[{index}][{label - 1}]", " (not measured)")
            if target is None:
                continue
            pixels = lab[:, label_map == label].to(torch.float64)  # (3, n)
            fields = _measure(pixels, target, achromatic_chroma)
            out.append(
                InstanceColorError(
                    image_index=index,
                    instance=label,
                    target=target,
                    passes=bool(fields["delta_e00"] <= threshold),
                    pixels=int(pixels.shape[1]),
                    **fields,
                )
            )
    return out


@dataclass(frozen=True)
class ColorErrorSummary:
    """Summary of :func:`instance_color_errors` records.

    Attributes:
        count: instances.
        median_delta_e00, median_chroma_diff, median_hue_error: medians over the finite values
            (NaN if none).
        share_within: share of instances with ``delta_e00 <= threshold`` (instances without pixels
            count as misses; NaN if there are no instances).
        threshold: the pass threshold.
    """

    count: int
    median_delta_e00: float
    share_within: float
    median_chroma_diff: float
    median_hue_error: float
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_color_errors(errors: Sequence[InstanceColorError], threshold: float = 5.0) -> ColorErrorSummary:
    """Median deltaE00, share within ``threshold``, median chroma difference and hue error."""

    def median(values) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(statistics.median(finite)) if finite else math.nan

    errors = list(errors)
    within = [e.delta_e00 <= threshold for e in errors]
    return ColorErrorSummary(
        count=len(errors),
        median_delta_e00=median(e.delta_e00 for e in errors),
        share_within=sum(within) / len(errors) if errors else math.nan,
        median_chroma_diff=median(e.chroma_diff for e in errors),
        median_hue_error=median(e.hue_error for e in errors),
        threshold=float(threshold),
    )
