"""Local weight files for the learned metrics: where to find them, how to load them, no downloads.

This machine (and many evaluation clusters) has no internet, and pyiqa / timm / torchvision fetch
weights from URLs by default, which hangs or fails late. Here every learned metric takes a **local
path**; when none is given, the standard file name is looked up in a few local folders
(:func:`search_dirs`), and if it is not there a :class:`MetricWeightsError` says which file to
provide and where to get it on a connected machine. Nothing is ever downloaded.

Checkpoints are read with ``torch.load(..., weights_only=True)`` (or safetensors), never with a
full unpickler.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

_PYIQA_WEIGHTS = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"


class MetricWeightsError(FileNotFoundError):
    """A learned metric's weights are not available locally (the message names the file to provide)."""


@dataclass(frozen=True)
class WeightFile:
    """The weights one metric needs.

    Attributes:
        key: the metric key (``"musiq"``, ``"lpips_backbone"`` ...).
        filename: the standard file name (looked up in :func:`search_dirs`).
        url: where to download it on a machine with internet access.
        description: what the file is.
        option: the ``mtcolor evaluate`` option that takes its path.
    """

    key: str
    filename: str
    url: str
    description: str
    option: str


WEIGHT_FILES: dict[str, WeightFile] = {
    w.key: w
    for w in (
        WeightFile(
            "musiq",
            "musiq_koniq_ckpt-e95806b9.pth",
            _PYIQA_WEIGHTS + "musiq_koniq_ckpt-e95806b9.pth",
            "MUSIQ trained on KonIQ-10k (pyiqa metric 'musiq')",
            "--musiq-weights",
        ),
        WeightFile(
            "maniqa",
            "ckpt_koniq10k.pt",
            _PYIQA_WEIGHTS + "ckpt_koniq10k.pt",
            "MANIQA trained on KonIQ-10k, ViT-B/8 backbone included (pyiqa metric 'maniqa')",
            "--maniqa-weights",
        ),
        WeightFile(
            "topiq_nr",
            "cfanet_nr_koniq_res50-9a73138b.pth",
            _PYIQA_WEIGHTS + "cfanet_nr_koniq_res50-9a73138b.pth",
            "TOPIQ-NR (CFANet, ResNet-50) trained on KonIQ-10k (pyiqa metric 'topiq_nr')",
            "--topiq-weights",
        ),
        WeightFile(
            "lpips",
            "LPIPS_v0.1_alex-df73285e.pth",
            _PYIQA_WEIGHTS + "LPIPS_v0.1_alex-df73285e.pth",
            "LPIPS v0.1 linear layers for AlexNet (pyiqa metric 'lpips'; the lpips package's weights/v0.1/alex.pth "
            "holds the same tensors)",
            "--lpips-weights",
        ),
        WeightFile(
            "lpips_backbone",
            "alexnet-owt-7be5be79.pth",
            "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            "torchvision AlexNet ImageNet weights (IMAGENET1K_V1), the LPIPS feature network",
            "--lpips-backbone-weights",
        ),
        WeightFile(
            "fid",
            "pt_inception-2015-12-05-6726825d.pth",
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
            "the TensorFlow-FID Inception-v3 ported to PyTorch (pytorch-fid / pyiqa / clean-fid)",
            "--fid-weights",
        ),
    )
}


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched (in order) for a weight file given by its standard name.

    ``weights_dir`` (if given), ``$MTCOLOR_WEIGHTS_DIR`` (if set), pyiqa's download cache
    (``<torch hub dir>/pyiqa``) and torch hub's checkpoint cache (``<torch hub dir>/checkpoints``,
    where torchvision keeps its weights).
    """
    dirs = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir))
    if os.environ.get("MTCOLOR_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["MTCOLOR_WEIGHTS_DIR"]))
    hub = Path(torch.hub.get_dir())
    dirs += [hub / "pyiqa", hub / "checkpoints"]
    return dirs


def missing_message(key: str, weights_dir=None) -> str:
    spec = WEIGHT_FILES[key]
    where = ", ".join(str(d) for d in search_dirs(weights_dir))
    return (
        f"{key} needs {spec.filename} ({spec.description}). It was not given and is not in any of: {where}. "
        f"On a machine with internet access download {spec.url}, then pass its path ({spec.option} PATH in "
        f"`mtcolor evaluate`, or weights=PATH) or put it in one of those folders. Nothing is downloaded here."
    )


def resolve_weights(key: str, path: str | os.PathLike | None = None, weights_dir=None) -> Path:
    """The local weight file of metric ``key``: ``path`` if given (it must exist), else the standard
    file name found in :func:`search_dirs`; raises :class:`MetricWeightsError` otherwise."""
    spec = WEIGHT_FILES[key]
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise MetricWeightsError(
                f"{key} weights {str(path)!r} do not exist (or are not a file); expected {spec.filename} "
                f"({spec.description}), available at {spec.url}."
            )
        return path
    for folder in search_dirs(weights_dir):
        candidate = folder / spec.filename
        if candidate.is_file():
            return candidate
    raise MetricWeightsError(missing_message(key, weights_dir))


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint's state dict safely.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(map_location="cpu", weights_only=True)``. A wrapper dict is unwrapped when it has a
    ``params`` / ``params_ema`` / ``state_dict`` / ``model`` entry (BasicSR/pyiqa and Lightning
    layouts), and a ``module.`` prefix from DataParallel is removed.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # an unpickling error names the offending global
            raise ValueError(
                f"could not read {str(path)!r} as a weights-only checkpoint ({error}). Re-save it as a plain state "
                "dict (torch.save(model.state_dict(), path)) or as .safetensors."
            ) from error
    for key in ("params", "params_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{str(path)!r} does not hold a state dict of tensors (found {type(state).__name__})."
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(
    module: torch.nn.Module, state: dict[str, torch.Tensor], path, allow_missing: tuple[str, ...] = ()
) -> None:
    """Strict ``module.load_state_dict(state)`` with an error naming the file and the mismatching keys.

    ``allow_missing``: key prefixes that may be absent from ``state`` (parts loaded from elsewhere,
    e.g. the LPIPS backbone, which comes from its own file).
    """
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(allow_missing)]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise ValueError(
            f"{str(path)!r} does not fit {type(module).__name__}: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}. Is it the right checkpoint for this metric?"
        )


@contextlib.contextmanager
def offline_construction(local_files: dict[str, Path] | None = None):
    """Build pyiqa / timm / torchvision networks without any network access.

    Inside the context:

    * ``timm.create_model(..., pretrained=True)`` builds the architecture with random weights
      (``pretrained=False``): every checkpoint loaded afterwards holds the whole network, including
      the backbone, and is loaded strictly, so nothing stays random;
    * torchvision weight requests (``WeightsEnum.get_state_dict``) are served from
      ``local_files[<file name of the URL>]`` (read with ``weights_only=True``);
    * any other download (torch hub, pyiqa's ``load_file_from_url``) raises
      :class:`MetricWeightsError` naming the file instead of trying the network.

    The patches are process-global while the context is open (do not build metrics from two threads
    at once) and are undone on exit.
    """
    import pyiqa.utils.download_util as pyiqa_download
    import timm
    import torch.hub
    import torchvision.models._api as torchvision_api

    local_files = dict(local_files or {})
    create_model = timm.create_model

    def create_model_offline(*args, **kwargs):
        kwargs["pretrained"] = False
        return create_model(*args, **kwargs)

    def torchvision_weights(url, *args, **kwargs):
        name = os.path.basename(urlparse(url).path)
        if name not in local_files:
            raise MetricWeightsError(
                f"torchvision asked for {name} ({url}); provide that file locally (nothing is downloaded)."
            )
        return torch.load(local_files[name], map_location="cpu", weights_only=True)

    def refuse_download(url, *args, **kwargs):
        name = os.path.basename(urlparse(url).path)
        raise MetricWeightsError(
            f"a metric tried to download {url}; provide {name} locally instead (nothing is downloaded)."
        )

    patches = [
        (timm, "create_model", create_model_offline),
        (torchvision_api, "load_state_dict_from_url", torchvision_weights),
        (torch.hub, "download_url_to_file", refuse_download),
        (pyiqa_download, "download_url_to_file", refuse_download),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
