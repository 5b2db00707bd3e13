"""FID: the Frechet distance against its closed form, local-only Inception weights."""

import math

import numpy as np
import pytest
import torch

from mtcolor.metrics import WEIGHT_FILES, InceptionFeatures, MetricWeightsError, fid, frechet_distance


def _points(mean, std):
    """Two points per dimension whose sample mean is ``mean`` and sample std (N - 1) is ``std``.

    For D dimensions: 2 D points ``mean +- s e_i`` have mean ``mean`` and covariance
    ``diag(2 s^2 / (2D - 1))``.
    """
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    dims = len(mean)
    scale = std * math.sqrt((2 * dims - 1) / 2)
    eye = np.eye(dims)
    return np.concatenate([mean + eye * scale, mean - eye * scale])


def test_frechet_distance_closed_form():
    # Diagonal Gaussians: FD = |mu_a - mu_b|^2 + sum_i (s_a,i - s_b,i)^2.
    a = _points([0.0, 1.0, 2.0], [1.0, 2.0, 0.5])
    b = _points([1.0, 1.0, 0.0], [2.0, 2.0, 1.5])
    assert np.allclose(np.cov(a, rowvar=False), np.diag([1.0, 4.0, 0.25]))
    expected = (1 + 0 + 4) + (1 + 0 + 1)
    assert frechet_distance(a, b) == pytest.approx(expected, abs=1e-6)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="features_b has shape"):
        frechet_distance(a, b[:1])


def test_fid_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("MTCOLOR_WEIGHTS_DIR", raising=False)
    with pytest.raises(MetricWeightsError, match=WEIGHT_FILES["fid"].filename):
        fid(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))


@pytest.mark.slow
def test_inception_loads_local_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / WEIGHT_FILES["fid"].filename
    reference = InceptionFeatures()
    torch.save(reference.inception.state_dict(), path)
    model = InceptionFeatures.from_weights(path)
    images = torch.rand(3, 3, 80, 100)
    features = model(images)
    assert features.shape == (3, 2048)
    assert torch.allclose(features, reference(images), atol=1e-5)
    assert fid(images, images, weights=path) == pytest.approx(0.0, abs=1e-3)
