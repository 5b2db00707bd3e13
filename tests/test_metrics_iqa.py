"""pyiqa metrics offline: NIQE calibration, weight lookup and errors, safe loading, no downloads."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from mtcolor.metrics import WEIGHT_FILES, MetricWeightsError, load_iqa_metric, niqe, niqe_params_file
from mtcolor.metrics.iqa import _SPECS, NIQE_PARAMS
from mtcolor.metrics.weights import load_into, load_state_dict_file, offline_construction, resolve_weights

# pyiqa's calibration of its own NIQE ("niqe(ours)" row of ResultsCalibra/calibration_summary.csv in
# the IQA-PyTorch repository) on the five distorted images it ships in ResultsCalibra/dist_dir.
NIQE_CALIBRATION = {"I03": 15.6538, "I04": 3.6549, "I06": 3.2342, "I08": 3.1921, "I19": 9.0722}


def _calibration_dir() -> Path:
    pyiqa_dir = Path(importlib.util.find_spec("pyiqa").origin).parent
    return pyiqa_dir.parent / "ResultsCalibra" / "dist_dir"


@pytest.fixture(autouse=True)
def _isolated_weight_dirs(tmp_path, monkeypatch):
    """Point every weight lookup at empty folders, so the tests do not depend on caches of the machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("MTCOLOR_WEIGHTS_DIR", raising=False)


def test_niqe_reproduces_pyiqa_calibration(tmp_path):
    folder = _calibration_dir()
    if not folder.is_dir():
        pytest.skip(f"pyiqa's calibration images are not installed at {folder}")
    images = [np.asarray(Image.open(folder / f"{name}.bmp").convert("RGB")) for name in NIQE_CALIBRATION]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0  # (5, 3, 384, 512)
    scores = niqe(batch)
    assert scores.shape == (5,)
    expected = torch.tensor(list(NIQE_CALIBRATION.values()))
    assert torch.allclose(scores, expected, atol=1e-2), (scores, expected)


def test_niqe_params_file_holds_the_shipped_parameters(tmp_path):
    path = niqe_params_file(tmp_path)
    assert path.parent == tmp_path and path.suffix == ".mat"
    params, shipped = scipy.io.loadmat(path), np.load(NIQE_PARAMS)
    np.testing.assert_array_equal(params["mu_prisparam"], shipped["mu_pris_param"])
    np.testing.assert_array_equal(params["cov_prisparam"], shipped["cov_pris_param"])
    assert niqe_params_file(tmp_path) == path  # written once, reused
    metric = load_iqa_metric("niqe", device="cpu", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs at least 96 pixels"):
        metric(torch.rand(1, 3, 64, 128))


@pytest.mark.parametrize("name", ["musiq", "maniqa", "topiq_nr", "lpips"])
def test_missing_weights_name_the_file(name):
    with pytest.raises(MetricWeightsError) as error:
        load_iqa_metric(name, device="cpu")
    message = str(error.value)
    assert WEIGHT_FILES[name].filename in message and WEIGHT_FILES[name].url in message
    assert WEIGHT_FILES[name].option in message
    with pytest.raises(MetricWeightsError, match="do not exist"):
        load_iqa_metric(name, "/nonexistent/weights.pth", device="cpu")


def test_weights_found_by_standard_name(tmp_path, monkeypatch):
    target = tmp_path / WEIGHT_FILES["musiq"].filename
    target.write_bytes(b"")
    assert resolve_weights("musiq", weights_dir=tmp_path) == target
    monkeypatch.setenv("MTCOLOR_WEIGHTS_DIR", str(tmp_path))
    assert resolve_weights("musiq") == target


def test_offline_construction_refuses_downloads_and_restores(tmp_path):
    import timm
    import torch.hub

    original = torch.hub.download_url_to_file, timm.create_model
    with offline_construction():
        with pytest.raises(MetricWeightsError, match="provide w.pth locally"):
            torch.hub.download_url_to_file("https://example.invalid/w.pth", str(tmp_path / "w.pth"))
        model = timm.create_model("resnet18", pretrained=True, num_classes=3)  # random init, no fetch
        assert model.fc.out_features == 3
    assert (torch.hub.download_url_to_file, timm.create_model) == original


def test_state_dict_loading_is_safe_and_strict(tmp_path):
    layer = torch.nn.Linear(3, 2)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"params": {f"module.{k}": v for k, v in layer.state_dict().items()}}, wrapped)
    state = load_state_dict_file(wrapped)
    assert set(state) == {"weight", "bias"}
    load_into(torch.nn.Linear(3, 2), state, wrapped)
    with pytest.raises(ValueError, match="1 missing keys"):
        load_into(torch.nn.Linear(3, 2), {"weight": state["weight"]}, wrapped)
    pickled = tmp_path / "pickled.pth"
    torch.save({"weight": state["weight"], "extra": Path("x")}, pickled)  # not loadable with weights_only
    with pytest.raises(ValueError, match="weights-only checkpoint"):
        load_state_dict_file(pickled)


def _random_checkpoint(name: str, folder: Path, local_files=None) -> Path:
    """Build pyiqa's network for ``name`` offline with random weights and save its state dict."""
    import pyiqa

    with offline_construction(local_files or {}):
        model = pyiqa.create_metric(name, device="cpu", **_SPECS[name].options)
    state = model.net.state_dict()
    if name == "lpips":  # the LPIPS file holds only the linear layers
        state = {k: v for k, v in state.items() if k.startswith("lin")}
    path = folder / WEIGHT_FILES[name].filename
    torch.save(state, path)
    return path


def test_lpips_loads_local_files_only(tmp_path):
    import torchvision

    torch.manual_seed(0)
    backbone = tmp_path / WEIGHT_FILES["lpips_backbone"].filename
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), backbone)
    _random_checkpoint("lpips", tmp_path, {backbone.name: backbone})
    metric = load_iqa_metric("lpips", weights_dir=tmp_path, device="cpu")  # both files by standard name
    x = torch.rand(2, 3, 64, 64)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert torch.allclose(metric(x, x), torch.zeros(2), atol=1e-6)
    assert (metric(x, y) != 0).all()
    with pytest.raises(ValueError, match="full-reference"):
        metric(x)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["musiq", "topiq_nr", "maniqa"])
def test_learned_nr_metrics_round_trip(tmp_path, name):
    torch.manual_seed(0)
    path = _random_checkpoint(name, tmp_path)
    metric = load_iqa_metric(name, path, device="cpu")
    assert metric.weights == path
    if name != "maniqa":  # MANIQA scores 20 ViT-B/8 crops per image: minutes on a CPU
        scores = metric(torch.rand(2, 3, 96, 128))
        assert scores.shape == (2,) and torch.isfinite(scores).all()
