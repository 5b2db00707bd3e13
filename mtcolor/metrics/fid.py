"""Frechet Inception Distance (Heusel et al. 2017), the FID column of MT-Color Tables I, III-V, VIII.

The feature network is the TensorFlow-FID Inception-v3 as ported by pytorch-fid (the same network
pyiqa and clean-fid use: torchvision's Inception-v3 with the FID-specific blocks of
:mod:`pyiqa.archs.inception`), loaded from the local file ``pt_inception-2015-12-05-6726825d.pth``
(:data:`mtcolor.metrics.weights.WEIGHT_FILES`); the features are its 2,048-d pool3 activations.
The distance is pyiqa's (clean-fid's) numpy ``frechet_distance``:
``||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))`` with sample means and covariances.

Preprocessing follows clean-fid's "clean" mode as closely as torch allows: each image is resized
to 299 x 299 with antialiased bicubic interpolation (clean-fid uses PIL bicubic on float
channels; torch's antialiased bicubic implements the same filter) and mapped from [0, 1] to
[-1, 1]. FID compares *sets*: it is biased for small sets (use thousands of images for numbers
comparable with the papers; the covariance of fewer than 2,048 images is singular, which the
distance tolerates with a small diagonal offset).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._inputs import check_images
from .weights import load_into, load_state_dict_file, resolve_weights


def _fid_inception() -> torch.nn.Module:
    """The FID Inception-v3 (1,008 classes, FID blocks), randomly initialised (as pyiqa's
    ``fid_inception_v3`` builds it before loading its weights)."""
    import torchvision
    from pyiqa.archs.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    net = torchvision.models.inception_v3(
        weights=None, num_classes=1008, aux_logits=False, init_weights=False
    )
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class InceptionFeatures(torch.nn.Module):
    """Pool3 features (B, 2048) of the FID Inception-v3 for sRGB images (B, 3, H, W) in [0, 1].

    Build it with :meth:`from_weights` (a local ``pt_inception-2015-12-05-6726825d.pth``); the
    plain constructor leaves random weights (used by tests).
    """

    def __init__(self):
        super().__init__()
        self.inception = _fid_inception()
        self.inception.eval().requires_grad_(False)

    @classmethod
    def from_weights(cls, weights=None, weights_dir=None, device=None) -> InceptionFeatures:
        """Load the FID Inception weights from a local file (``weights``, or the standard file name in
        ``weights_dir`` / ``$MTCOLOR_WEIGHTS_DIR`` / the pyiqa and torch hub caches); raises
        :class:`~mtcolor.metrics.weights.MetricWeightsError` naming the file when it is missing."""
        path = resolve_weights("fid", weights, weights_dir)
        model = cls()
        load_into(model.inception, load_state_dict_file(path), path)
        return model.to(device) if device is not None else model

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = check_images(images, "images", channels=(3,))
        device = next(self.parameters()).device
        x = F.interpolate(
            images.to(device).float(), size=(299, 299), mode="bicubic", antialias=True, align_corners=False
        )
        x = x.clamp(0, 1) * 2 - 1  # (B, 3, 299, 299) in [-1, 1]
        net = self.inception
        for layer in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3):
            x = layer(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in (
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
            "Mixed_6d",
            "Mixed_6e",
        ):
            x = getattr(net, name)(x)
        for name in ("Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(net, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1).to(images.device)  # (B, 2048)


def frechet_distance(features_a, features_b) -> float:
    """FID between two feature sets (N_a, D) and (N_b, D) (numpy arrays or tensors), N >= 2 each.

    Fits a Gaussian to each set (mean, sample covariance with ``N - 1``) and returns pyiqa's
    ``frechet_distance`` of the two.
    """
    from pyiqa.archs.fid_arch import frechet_distance as pyiqa_frechet_distance

    arrays = []
    for name, features in (("features_a", features_a), ("features_b", features_b)):
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().double().numpy()
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(
                f"{name} has shape {features.shape}; expected (N, D) with N >= 2 feature vectors."
            )
        arrays.append(features)
    if arrays[0].shape[1] != arrays[1].shape[1]:
        raise ValueError(f"feature sizes differ: {arrays[0].shape[1]} vs {arrays[1].shape[1]}.")
    mu_a, mu_b = arrays[0].mean(0), arrays[1].mean(0)
    sigma_a, sigma_b = np.cov(arrays[0], rowvar=False), np.cov(arrays[1], rowvar=False)
    return float(pyiqa_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def fid(
    pred_images, target_images, weights=None, weights_dir=None, batch_size: int = 16, device=None
) -> float:
    """FID between two image sets, each a tensor (N, 3, H, W) in [0, 1] or an iterable of such
    batches (sizes may differ between batches); N >= 2 per set. Loads the Inception from ``weights``
    (see :meth:`InceptionFeatures.from_weights`) and runs it on ``device`` (default CPU)."""
    model = InceptionFeatures.from_weights(weights, weights_dir, device=device)
    return frechet_distance(
        extract_features(model, pred_images, batch_size), extract_features(model, target_images, batch_size)
    )


def extract_features(model: InceptionFeatures, images, batch_size: int = 16) -> torch.Tensor:
    """Inception features (N, 2048) of a tensor (N, 3, H, W) or an iterable of batches."""
    if isinstance(images, torch.Tensor):
        images = check_images(images, "images", channels=(3,))
        batches = images.split(batch_size)
    else:
        batches = images
    return torch.cat([model(batch).cpu() for batch in batches])
