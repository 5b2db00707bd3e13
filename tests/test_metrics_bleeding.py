"""Colour bleeding: zero on clean boundaries, monotone in the width of a smear across a boundary."""

import kornia
import pytest
import torch

from mtcolor.color import lab_to_rgb, rgb_to_lab
from mtcolor.metrics import color_bleeding
from mtcolor.metrics.bleeding import _dilate

SIZE = 128


def _scene():
    """A red square (instance 1) and a green bar (instance 2) on a blue background, well apart."""
    label_map = torch.zeros(SIZE, SIZE, dtype=torch.long)
    label_map[24:88, 16:80] = 1
    label_map[40:100, 104:116] = 2
    image = torch.empty(3, SIZE, SIZE)
    image[:] = torch.tensor([0.2, 0.3, 0.8]).view(3, 1, 1)
    image[:, label_map == 1] = torch.tensor([0.85, 0.1, 0.1]).view(3, 1)
    image[:, label_map == 2] = torch.tensor([0.1, 0.7, 0.2]).view(3, 1)
    return image, label_map


def _blur_chroma(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur the ab channels (keep L) with a Gaussian of std ``sigma`` pixels: colour smeared both ways."""
    if sigma == 0:
        return image
    lab = rgb_to_lab(image[None])
    size = 2 * int(4 * sigma) + 1
    lab[:, 1:] = kornia.filters.gaussian_blur2d(
        lab[:, 1:], (size, size), (sigma, sigma), border_type="replicate"
    )
    return lab_to_rgb(lab)[0]


def test_clean_boundaries_do_not_bleed():
    image, label_map = _scene()
    result = color_bleeding(image[None], label_map[None], band=4)
    assert [i.instance for i in result.instances] == [1, 2]
    assert result.leak == pytest.approx(0.0, abs=1e-3) and result.share == 0.0
    noisy = (image + 0.02 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert color_bleeding(noisy[None], label_map[None], band=4).leak < 0.01  # noise averages out


def test_bleeding_rises_monotonically_with_a_growing_blur():
    image, label_map = _scene()
    sigmas = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0]
    leaks = [color_bleeding(_blur_chroma(image, s)[None], label_map[None], band=4).leak for s in sigmas]
    assert leaks[0] == pytest.approx(0.0, abs=1e-3)
    assert all(b > a + 0.01 for a, b in zip(leaks, leaks[1:])), leaks


def test_a_one_sided_smear_raises_the_share_closer_to_the_instance():
    image, label_map = _scene()
    lab = rgb_to_lab(image[None])[0]
    red_ab = lab[1:, label_map == 1][:, :1]
    shares, leaks = [], []
    for width in [0, 1, 2, 3]:
        smeared = lab.clone()
        region = _dilate((label_map == 1)[None], width)[0]
        smeared[1:, region] = red_ab.expand(-1, int(region.sum()))
        result = color_bleeding(lab_to_rgb(smeared[None]), label_map[None], band=4)
        only_red = [i for i in result.instances if i.instance == 1][0]
        shares.append(only_red.share)
        leaks.append(only_red.leak)
    assert shares[0] == 0.0 and all(b > a for a, b in zip(shares, shares[1:])), shares
    assert all(b > a for a, b in zip(leaks, leaks[1:])), leaks


def test_same_colour_neighbours_and_weighting():
    image, label_map = _scene()
    same = image.clone()
    same[:, label_map == 2] = torch.tensor([0.2, 0.3, 0.8]).view(3, 1)  # instance 2 = background colour
    result = color_bleeding(torch.stack([image, same]), torch.stack([label_map, label_map]), band=4)
    assert (1, 2, "no neighbour with a distinct, measurable colour") in result.skipped
    per_image = result.per_image_leak()
    assert per_image.shape == (2,) and (per_image < 1e-3).all()
    assert result.band == 4 and color_bleeding(image[None], label_map[None]).band == 2  # 128 / 64
    with pytest.raises(ValueError, match="band=0"):
        color_bleeding(image[None], label_map[None], band=0)
    with pytest.raises(ValueError, match="label_maps\\[0\\] has shape"):
        color_bleeding(image[None], label_map[None, :64])
