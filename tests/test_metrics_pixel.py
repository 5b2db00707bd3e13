"""PSNR, SSIM, colorfulness: known values, scikit-image as the reference, input errors."""

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mtcolor.metrics import colorfulness, psnr, ssim


def _astronaut(size=128) -> torch.Tensor:
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255.0  # (3, 512, 512)
    return torch.nn.functional.interpolate(image[None], size=(size, size), mode="area")[0]


def test_psnr_of_a_known_noise_level():
    torch.manual_seed(0)
    clean = torch.full((2, 3, 64, 64), 0.5)
    sigma = 0.05  # no clipping possible around 0.5 at this level (10 sigma away from 0 and 1)
    noisy = clean + sigma * torch.randn_like(clean)
    expected = 10 * math.log10(1 / sigma**2)  # 26.02 dB
    assert torch.allclose(psnr(noisy, clean), torch.full((2,), expected), atol=0.1)
    # exact for a constant offset: MSE = 0.1^2 -> 20 dB; and data_range scales correctly
    assert torch.allclose(psnr(clean + 0.1, clean), torch.tensor([20.0, 20.0]), atol=1e-4)
    assert torch.allclose(
        psnr((clean + 0.1) * 255, clean * 255, data_range=255.0), torch.tensor([20.0, 20.0]), atol=1e-3
    )
    assert torch.isinf(psnr(clean, clean)).all()


def test_psnr_and_ssim_equal_scikit_image():
    torch.manual_seed(0)
    target = _astronaut(96).double()[None].repeat(2, 1, 1, 1)
    pred = (target + 0.08 * torch.randn_like(target)).clamp(0, 1)
    pred[1] = (target[1] * 0.7 + 0.1).clamp(0, 1)  # a contrast/brightness change
    ours_ssim, ours_psnr = ssim(pred, target), psnr(pred, target)
    for i in range(2):
        p, t = pred[i].permute(1, 2, 0).numpy(), target[i].permute(1, 2, 0).numpy()
        reference = structural_similarity(
            p,
            t,
            data_range=1.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours_ssim[i].item() == pytest.approx(reference, abs=1e-9)
        assert ours_psnr[i].item() == pytest.approx(peak_signal_noise_ratio(t, p, data_range=1.0), abs=1e-9)
    # float32 inputs (what the trainers pass) agree to float32 precision
    assert torch.allclose(ssim(pred.float(), target.float()).double(), ours_ssim, atol=1e-5)


def test_ssim_properties():
    image = _astronaut(64)[None]
    assert ssim(image, image).item() == pytest.approx(1.0, abs=1e-6)
    torch.manual_seed(1)
    mild = (image + 0.02 * torch.randn_like(image)).clamp(0, 1)
    strong = (image + 0.2 * torch.randn_like(image)).clamp(0, 1)
    assert 1.0 > ssim(mild, image).item() > ssim(strong, image).item()


def _colorfulness_numpy(rgb: np.ndarray) -> float:
    """Direct transcription of Hasler & Suesstrunk (2003), eq. in Sec. 4 (8-bit RGB, H x W x 3)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))


def test_colorfulness_known_values():
    gray = torch.rand(1, 1, 32, 32).expand(2, 3, 32, 32)
    assert torch.allclose(colorfulness(gray), torch.zeros(2), atol=1e-4)
    # half pure red, half pure blue: rg = (255, 0), yb = (127.5, -255) ->
    # std_rg = 127.5, std_yb = 191.25, mean_rg = 127.5, mean_yb = -63.75
    halves = torch.zeros(1, 3, 8, 8)
    halves[0, 0, :, :4] = 1.0
    halves[0, 2, :, 4:] = 1.0
    expected = math.hypot(127.5, 191.25) + 0.3 * math.hypot(127.5, -63.75)  # 272.53
    assert colorfulness(halves).item() == pytest.approx(expected, rel=1e-5)
    photo = data.astronaut()
    tensor = torch.from_numpy(photo).permute(2, 0, 1).float()[None] / 255.0
    assert colorfulness(tensor).item() == pytest.approx(_colorfulness_numpy(photo), rel=1e-4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9)),
            r"pred has shape \(1, 3, 8, 8\) but target has",
        ),
        (lambda: psnr(torch.rand(1, 3, 8, 8) * 2, torch.rand(1, 3, 8, 8)), r"pred has values in \[0"),
        (lambda: ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)), "needs at least 11x11"),
        (lambda: colorfulness(torch.rand(1, 1, 8, 8)), "images has 1 channels"),
        (lambda: colorfulness(np.zeros((8, 8, 3))), "images has type ndarray"),
        (lambda: psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), data_range=0), "data_range=0"),
    ],
)
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
