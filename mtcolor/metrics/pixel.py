"""Cheap, dependency-light image metrics in pure torch: PSNR, SSIM, colorfulness.

The trainers log ``psnr``/``ssim`` every validation step, so these run batched on the images' own
device and import nothing beyond torch. Images are sRGB tensors (B, C, H, W) in [0, 1]; every
function returns one value per image, a float tensor (B,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._inputs import check_images, check_pair


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image (Huynh-Thu & Ghanbari 2008; as in L-CoIns Table 1).

    ``PSNR = 10 log10(data_range^2 / MSE)`` with the MSE over all channels and pixels of one image.

    Args:
        pred, target: (B, C, H, W) (or (C, H, W)) float tensors in [0, data_range] (C = 1 or 3).
        data_range: the value range (1.0 for images in [0, 1]).

    Returns:
        float tensor (B,) in dB; ``inf`` where the images are identical.
    """
    if not data_range > 0:
        raise ValueError(f"data_range={data_range!r}; it must be positive (1.0 for images in [0, 1]).")
    pred, target = check_pair(pred / data_range, target / data_range)
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)  # (B,)
    return (10.0 * torch.log10(1.0 / mse)).to(pred.dtype)


def _gaussian_window(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    """1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (scipy.ndimage's rule), sums to 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    window = torch.exp(-0.5 * (x / sigma) ** 2)
    return (window / window.sum()).to(dtype=dtype, device=device)


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004), computed like scikit-image.

    Equals ``skimage.metrics.structural_similarity(p, t, data_range=data_range, channel_axis=-1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``: local statistics under an
    isotropic Gaussian window (sigma 1.5, radius ``int(3.5 sigma + 0.5)`` = 5, i.e. 11 x 11),
    ``C1 = (k1 R)^2``, ``C2 = (k2 R)^2``, the SSIM map averaged over the pixels whose window lies
    inside the image (a ``radius`` border is excluded) and then over the channels (RGB SSIM, not
    luma SSIM).

    Args:
        pred, target: (B, C, H, W) (or (C, H, W)) float tensors in [0, data_range]; H, W >= 11.
        data_range: R, the value range (1.0 for images in [0, 1]).

    Returns:
        float tensor (B,) in [-1, 1] (1 for identical images).
    """
    if not data_range > 0:
        raise ValueError(f"data_range={data_range!r}; it must be positive (1.0 for images in [0, 1]).")
    pred, target = check_pair(pred / data_range, target / data_range)
    window = _gaussian_window(sigma, 3.5, pred.dtype, pred.device)
    size = window.numel()
    if min(pred.shape[-2:]) < size:
        raise ValueError(
            f"pred is {pred.shape[-2]}x{pred.shape[-1]} pixels; SSIM with sigma={sigma} needs at least {size}x{size}."
        )
    channels = pred.shape[1]
    kernel_h = window.view(1, 1, size, 1).expand(channels, 1, size, 1)
    kernel_w = window.view(1, 1, 1, size).expand(channels, 1, 1, size)

    def blur(x):  # separable Gaussian, 'valid' region only: (B, C, H - 2r, W - 2r)
        return F.conv2d(F.conv2d(x, kernel_h, groups=channels), kernel_w, groups=channels)

    c1, c2 = k1**2, k2**2  # (k R)^2 with R = 1 after dividing by data_range
    mu_x, mu_y = blur(pred), blur(target)
    var_x = blur(pred * pred) - mu_x * mu_x
    var_y = blur(target * target) - mu_y * mu_y
    cov_xy = blur(pred * target) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (numerator / denominator).flatten(1).mean(1)


def colorfulness(images: torch.Tensor) -> torch.Tensor:
    """Colorfulness M of Hasler & Suesstrunk (2003), the "Colorfulness" column of MT-Color Table I.

    On 8-bit-scaled sRGB values (R, G, B in [0, 255]): ``rg = R - G``, ``yb = (R + G) / 2 - B``,
    ``M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)`` with the population
    standard deviation and the mean over all pixels of the image. 0 for any gray image; the paper's
    scale: about 15 "slightly", 33 "moderately", 45 "averagely", 59 "quite", 82 "highly colourful".

    Args:
        images: sRGB (B, 3, H, W) (or (3, H, W)) float tensor in [0, 1].

    Returns:
        float tensor (B,) >= 0.
    """
    images = check_images(images, "images", channels=(3,)) * 255.0
    red, green, blue = images.unbind(1)  # (B, H, W) each
    rg = (red - green).flatten(1)
    yb = (0.5 * (red + green) - blue).flatten(1)
    std = torch.sqrt(rg.var(1, correction=0) + yb.var(1, correction=0))
    mean = torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)
    return std + 0.3 * mean
