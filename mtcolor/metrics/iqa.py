"""Image-quality metrics through pyiqa, offline: NIQE, MUSIQ, MANIQA, TOPIQ-NR (no reference), LPIPS.

These are the perceptual columns of MT-Color Table I (NIQE [43], MANIQA [44], MUSIQ [45],
TOPIQ-NR [46]) and the LPIPS column of L-CoIns Table 1. Each is pyiqa's implementation with pyiqa's
default configuration for that metric name (``"niqe"``, ``"musiq"`` = KonIQ-10k MUSIQ, ``"maniqa"``
= KonIQ-10k MANIQA, ``"topiq_nr"`` = KonIQ-10k CFANet-ResNet50, ``"lpips"`` = LPIPS v0.1 AlexNet),
built without any download:

* NIQE uses the natural-scene parameters shipped in ``mtcolor/data/niqe_pris_params.npz``
  (BasicSR, Apache-2.0), written once as the ``.mat`` pyiqa reads (:func:`niqe_params_file`).
* The learned metrics need a local checkpoint (:mod:`mtcolor.metrics.weights`); without one they
  raise :class:`~mtcolor.metrics.weights.MetricWeightsError` naming the file to provide.

Inputs are sRGB (B, 3, H, W) float tensors in [0, 1]; outputs one score per image, (B,).
Scores: NIQE lower is better (~3-5 on natural photos); MUSIQ ~0-100, MANIQA and TOPIQ-NR ~0-1,
higher is better; LPIPS lower is better (0 for identical images).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._inputs import check_images, check_pair
from .weights import WEIGHT_FILES, load_into, load_state_dict_file, offline_construction, resolve_weights

NIQE_PARAMS = Path(__file__).resolve().parent.parent / "data" / "niqe_pris_params.npz"


@dataclass(frozen=True)
class _Spec:
    lower_better: bool
    full_reference: bool
    min_size: int
    options: dict = field(default_factory=dict)  # pyiqa constructor options that avoid downloads
    allow_missing: tuple[str, ...] = ()  # state-dict prefixes loaded from elsewhere


_SPECS = {
    # NIQE cuts the image into 96 x 96 blocks.
    "niqe": _Spec(lower_better=True, full_reference=False, min_size=96),
    "musiq": _Spec(lower_better=False, full_reference=False, min_size=32, options={"pretrained": False}),
    "maniqa": _Spec(lower_better=False, full_reference=False, min_size=8, options={"pretrained": False}),
    "topiq_nr": _Spec(
        lower_better=False,
        full_reference=False,
        min_size=32,
        options={"pretrained": False, "backbone_pretrain": False},
    ),
    # The LPIPS file holds the linear layers only; the AlexNet comes from its own file.
    "lpips": _Spec(
        lower_better=True,
        full_reference=True,
        min_size=32,
        options={"pretrained": False},
        allow_missing=("net.", "scaling_layer."),
    ),
}

IQA_METRICS = tuple(_SPECS)


def niqe_params_file(cache_dir: str | os.PathLike | None = None) -> Path:
    """The NIQE parameters as the ``.mat`` pyiqa reads (keys ``mu_prisparam``, ``cov_prisparam``).

    Written once from ``mtcolor/data/niqe_pris_params.npz`` into ``cache_dir`` (default
    ``~/.cache/mtcolor/metrics``); the file name carries a hash of the npz so a changed npz is
    never shadowed by an old ``.mat``. The write is atomic (safe with concurrent processes).
    """
    import numpy as np
    import scipy.io

    digest = hashlib.sha256(NIQE_PARAMS.read_bytes()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "mtcolor" / "metrics"
    target = folder / f"niqe_pris_params-{digest}.mat"
    if not target.is_file():
        params = np.load(NIQE_PARAMS)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{target.name}.tmp{os.getpid()}"
        with open(tmp, "wb") as handle:
            scipy.io.savemat(
                handle, {"mu_prisparam": params["mu_pris_param"], "cov_prisparam": params["cov_pris_param"]}
            )
        os.replace(tmp, target)
    return target


class IQAMetric(torch.nn.Module):
    """One pyiqa metric, built offline; call it on images (and a reference for LPIPS).

    Attributes:
        name: the metric name (``"niqe"``, ``"musiq"``, ``"maniqa"``, ``"topiq_nr"``, ``"lpips"``).
        lower_better: True for NIQE and LPIPS.
        full_reference: True for LPIPS (needs ``reference``).
        weights: the checkpoint file used (None for NIQE).
    """

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device, weights: Path | None = None):
        super().__init__()
        spec = _SPECS[name]
        self.name = name
        self.model = model
        self.weights = weights
        self.device = torch.device(device)
        self.lower_better = spec.lower_better
        self.full_reference = spec.full_reference
        self.min_size = spec.min_size

    @torch.no_grad()
    def forward(self, images: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """Score images (B, 3, H, W) in [0, 1] (LPIPS: against ``reference``, same shape) -> (B,)."""
        if self.full_reference:
            if reference is None:
                raise ValueError(
                    f"{self.name} is a full-reference metric; pass reference=<(B, 3, H, W) tensor>."
                )
            images, reference = check_pair(images, reference, "images", "reference", channels=(3,))
        else:
            images = check_images(images, "images", channels=(3,))
        if min(images.shape[-2:]) < self.min_size:
            raise ValueError(
                f"images are {images.shape[-2]}x{images.shape[-1]} pixels; {self.name} needs at least "
                f"{self.min_size} pixels on each side (upsample small images first)."
            )
        args = (
            (images.to(self.device),)
            if reference is None
            else (images.to(self.device), reference.to(self.device))
        )
        scores = self.model(*args)
        return scores.reshape(images.shape[0]).float().to(images.device)


def load_iqa_metric(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    backbone_weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> IQAMetric:
    """Build a pyiqa metric from local files only.

    Args:
        name: one of :data:`IQA_METRICS`.
        weights: the metric's checkpoint (not used by NIQE). ``None`` looks the standard file name
            (:data:`~mtcolor.metrics.weights.WEIGHT_FILES`) up in ``weights_dir``,
            ``$MTCOLOR_WEIGHTS_DIR`` and the pyiqa / torch hub caches.
        backbone_weights: LPIPS only: torchvision's ``alexnet-owt-7be5be79.pth`` (same lookup).
        weights_dir: an extra folder to look for standard file names in.
        device: where to run (default: CUDA if available, else CPU).
        cache_dir: where NIQE's ``.mat`` is written (default ``~/.cache/mtcolor/metrics``).

    Raises:
        MetricWeightsError: a needed file is missing (the message names it and where to get it).
        ValueError: unknown ``name``, or a checkpoint that does not fit the network.
    """
    if name not in _SPECS:
        raise ValueError(f"name={name!r} is not a pyiqa metric of mtcolor; choose one of {IQA_METRICS}.")
    import pyiqa

    spec = _SPECS[name]
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    if name == "niqe":
        with offline_construction():
            model = pyiqa.create_metric(
                "niqe", device=device, pretrained_model_path=str(niqe_params_file(cache_dir))
            )
        return IQAMetric(name, model, device)
    path = resolve_weights(name, weights, weights_dir)
    local_files = {}
    if name == "lpips":
        backbone = resolve_weights("lpips_backbone", backbone_weights, weights_dir)
        local_files[WEIGHT_FILES["lpips_backbone"].filename] = backbone
    state = load_state_dict_file(path)
    with offline_construction(local_files):
        model = pyiqa.create_metric(name, device=device, **spec.options)
    load_into(model.net, state, path, allow_missing=spec.allow_missing)
    model.eval()
    return IQAMetric(name, model, device, path)


@functools.lru_cache(maxsize=8)
def _cached_metric(name: str, weights, backbone_weights, weights_dir, device: str) -> IQAMetric:
    return load_iqa_metric(
        name, weights, backbone_weights=backbone_weights, weights_dir=weights_dir, device=torch.device(device)
    )


def _key(path) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def niqe(images: torch.Tensor) -> torch.Tensor:
    """NIQE (Mittal et al. 2012) per image, pyiqa's implementation with the shipped parameters.

    Args:
        images: sRGB (B, 3, H, W) in [0, 1], H, W >= 96 (NIQE works on the luma in 96 x 96 blocks).

    Returns:
        (B,) float tensor, lower is better (about 3-5 for natural photos).
    """
    images = check_images(images, "images", channels=(3,))
    return _cached_metric("niqe", None, None, None, str(images.device))(images)


def musiq(images: torch.Tensor, weights=None, weights_dir=None) -> torch.Tensor:
    """MUSIQ-KonIQ (Ke et al. 2021) per image through pyiqa; (B, 3, H, W) in [0, 1] -> (B,), ~0-100, higher is better.

    ``weights``: ``musiq_koniq_ckpt-e95806b9.pth`` (see :func:`load_iqa_metric` for the lookup).
    """
    images = check_images(images, "images", channels=(3,))
    return _cached_metric("musiq", _key(weights), None, _key(weights_dir), str(images.device))(images)


def maniqa(images: torch.Tensor, weights=None, weights_dir=None) -> torch.Tensor:
    """MANIQA-KonIQ (Yang et al. 2022) per image through pyiqa; (B, 3, H, W) in [0, 1] -> (B,), ~0-1, higher is better.

    ``weights``: ``ckpt_koniq10k.pt`` (the whole network including its ViT-B/8).
    """
    images = check_images(images, "images", channels=(3,))
    return _cached_metric("maniqa", _key(weights), None, _key(weights_dir), str(images.device))(images)


def topiq_nr(images: torch.Tensor, weights=None, weights_dir=None) -> torch.Tensor:
    """TOPIQ-NR (Chen et al. 2024, CFANet ResNet-50, KonIQ) per image through pyiqa; (B,) ~0-1, higher is better.

    ``weights``: ``cfanet_nr_koniq_res50-9a73138b.pth`` (the whole network including its ResNet-50).
    """
    images = check_images(images, "images", channels=(3,))
    return _cached_metric("topiq_nr", _key(weights), None, _key(weights_dir), str(images.device))(images)


def lpips(
    pred: torch.Tensor, target: torch.Tensor, weights=None, backbone_weights=None, weights_dir=None
) -> torch.Tensor:
    """LPIPS v0.1 AlexNet (Zhang et al. 2018; L-CoIns Table 1) per image pair through pyiqa.

    Args:
        pred, target: sRGB (B, 3, H, W) in [0, 1] (pyiqa maps them to [-1, 1]).
        weights: ``LPIPS_v0.1_alex-df73285e.pth`` (linear layers).
        backbone_weights: torchvision's ``alexnet-owt-7be5be79.pth``.

    Returns:
        (B,) float tensor, lower is better, 0 for identical images.
    """
    pred, target = check_pair(pred, target, channels=(3,))
    metric = _cached_metric(
        "lpips", _key(weights), _key(backbone_weights), _key(weights_dir), str(pred.device)
    )
    return metric(pred, target)
