"""Luminance augmentation (LC eq. 1-2)."""

import math

import kornia.color
import pytest
import torch

from mtcolor.augment import gamma_correct, luminance_augmentation, rotate_hue
from mtcolor.color import rgb_to_lab


def _two_region_image() -> torch.Tensor:
    rgb = torch.zeros(2, 3, 8, 8)
    rgb[:, :] = torch.tensor([0.9, 0.8, 0.1])[:, None, None]  # yellow
    rgb[:, :, 2:6, 3:7] = torch.tensor([0.2, 0.3, 0.9])[:, None, None]  # blue square
    return rgb


def test_rotate_hue_eq_1():
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(3, 3, 2, 2)
    out = rotate_hue(red, torch.tensor([120.0, 240.0, -120.0]))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2], out[1])  # -120 == 240 degrees
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 5, 5, generator=g)
    torch.testing.assert_close(rotate_hue(rgb, torch.tensor([0.0, 360.0])), rgb, atol=1e-5, rtol=0)
    hsv, hsv_rot = (
        kornia.color.rgb_to_hsv(rgb),
        kornia.color.rgb_to_hsv(rotate_hue(rgb, torch.tensor([37.0, -90.0]))),
    )
    torch.testing.assert_close(hsv_rot[:, 1:], hsv[:, 1:], atol=1e-5, rtol=0)  # S and V kept
    shift = torch.remainder(hsv_rot[:, 0] - hsv[:, 0], 2 * math.pi)
    expected = torch.deg2rad(torch.tensor([37.0, 270.0])).view(2, 1, 1).expand_as(shift)
    torch.testing.assert_close(shift, expected, atol=1e-4, rtol=0)


def test_gamma_correct_eq_2():
    lightness = torch.linspace(0, 100, 11).view(1, 1, 1, 11).repeat(2, 1, 1, 1)
    out = gamma_correct(lightness, torch.tensor([2.0, 0.25]))
    torch.testing.assert_close(out[0], 100 * (lightness[0] / 100) ** 2)
    torch.testing.assert_close(out[1], 100 * (lightness[1] / 100) ** 0.25)
    halved = gamma_correct(lightness, torch.tensor([1.0, 1.0]), amplitude=0.5)
    torch.testing.assert_close(halved, 0.5 * lightness)
    x = lightness.clone().requires_grad_(True)
    gamma_correct(x, torch.tensor([0.5, 0.2])).sum().backward()
    assert torch.isfinite(x.grad).all()  # no NaN at L = 0


def test_augmentation_is_the_composition_of_eq_1_and_eq_2():
    rgb = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    out = luminance_augmentation(rgb, generator=torch.Generator().manual_seed(3))
    rotated = rotate_hue(rgb, out.angle)
    expected = 100 * (rgb_to_lab(rotated)[:, :1] / 100) ** out.exponent.view(-1, 1, 1, 1)
    torch.testing.assert_close(out.lightness, expected, atol=1e-4, rtol=1e-4)
    assert out.lightness.shape == (4, 1, 6, 6) and out.lightness.dtype == rgb.dtype
    again = luminance_augmentation(rgb, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again.lightness, out.lightness)


def test_gray_images_are_hue_independent_and_keep_their_order():
    gray = torch.linspace(0, 1, 16).view(1, 1, 4, 4).expand(6, 3, 4, 4).contiguous()
    out = luminance_augmentation(gray, generator=torch.Generator().manual_seed(1))
    lightness = rgb_to_lab(gray)[:, :1]
    torch.testing.assert_close(out.lightness, gamma_correct(lightness, out.exponent), atol=1e-4, rtol=1e-4)
    flat_in, flat_out = lightness.flatten(1), out.lightness.flatten(1)
    assert torch.equal(flat_in.argsort(1), flat_out.argsort(1))  # a monotone map: structure kept


def test_constant_colour_regions_stay_constant_regions():
    rgb = _two_region_image()
    out = luminance_augmentation(rgb, generator=torch.Generator().manual_seed(5)).lightness
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 3:7] = True
    for image in out[:, 0]:
        assert image[inside].std() < 1e-3 and image[~inside].std() < 1e-3
    # hue rotation changes the *relative* luminance of the two regions across draws
    draws = luminance_augmentation(
        rgb.repeat(50, 1, 1, 1), generator=torch.Generator().manual_seed(6)
    ).lightness
    contrast = draws[:, 0, 3, 4] - draws[:, 0, 0, 0]
    assert (contrast > 1).any() and (contrast < -1).any()


def test_gamma_and_inversion_statistics():
    rgb = torch.rand(4000, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    out = luminance_augmentation(rgb, generator=torch.Generator().manual_seed(0))
    assert out.gamma.min() >= 1.0 and out.gamma.max() <= 5.0
    assert out.gamma.mean().item() == pytest.approx(3.0, abs=0.1)  # U[1, 5]
    assert out.inverted.float().mean().item() == pytest.approx(0.5, abs=0.04)
    torch.testing.assert_close(out.exponent, torch.where(out.inverted, 1 / out.gamma, out.gamma))
    assert out.angle.min() >= -180 and out.angle.max() <= 180
    assert out.angle.mean().abs().item() < 6.0 and out.angle.std().item() == pytest.approx(
        360 / 12**0.5, rel=0.05
    )
    never = luminance_augmentation(
        rgb[:100], invert_probability=0.0, generator=torch.Generator().manual_seed(0)
    )
    assert not never.inverted.any()


def test_invalid_arguments_raise():
    rgb = torch.rand(1, 3, 2, 2)
    with pytest.raises(ValueError, match="gamma_range"):
        luminance_augmentation(rgb, gamma_range=(0.0, 5.0))
    with pytest.raises(ValueError, match="invert_probability"):
        luminance_augmentation(rgb, invert_probability=1.5)
    with pytest.raises(ValueError, match="rgb"):
        luminance_augmentation(rgb[:, :1])
    with pytest.raises(TypeError, match="rgb"):
        luminance_augmentation(rgb.numpy())
    with pytest.raises(ValueError, match="angle"):
        rotate_hue(rgb, torch.tensor([1.0, 2.0]))
