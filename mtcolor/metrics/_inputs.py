"""Input checks shared by the metric functions (errors name the argument, the value and the fix)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_images(images, name: str = "images", channels: tuple[int, ...] = (3,)) -> torch.Tensor:
    """Validate an image batch: float tensor (B, C, H, W) (or (C, H, W), read as B = 1) in [0, 1].

    Returns the batch as a 4-D floating tensor (integer or bool tensors are rejected: convert them
    with ``x.float() / 255`` first).
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"{name} has type {type(images).__name__}; expected a float tensor (B, C, H, W) in [0, 1]. Convert "
            "PIL/numpy images with mtcolor.image_io.to_tensor_image and stack them."
        )
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"{name} has shape {tuple(images.shape)}; expected (B, C, H, W) or (C, H, W).")
    if not images.is_floating_point():
        raise TypeError(
            f"{name} has dtype {images.dtype}; expected a float tensor in [0, 1] (divide uint8 images by 255)."
        )
    if images.shape[1] not in channels:
        raise ValueError(
            f"{name} has {images.shape[1]} channels (shape {tuple(images.shape)}); expected {' or '.join(map(str, channels))}"
            " channels in dim 1 (sRGB images are (B, 3, H, W))."
        )
    if images.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(images.shape)}); pass at least one non-empty image.")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values; pass finite values in [0, 1].")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"{name} has values in [{lo:g}, {hi:g}]; images must lie in [0, 1] (divide 8-bit values by 255, or "
            "map [-1, 1] model outputs with (x + 1) / 2)."
        )
    return images


def check_pair(pred, target, pred_name: str = "pred", target_name: str = "target", channels=(1, 3)):
    """Validate two image batches of identical shape (B, C, H, W) in [0, 1]."""
    pred = check_images(pred, pred_name, channels)
    target = check_images(target, target_name, channels)
    if pred.shape != target.shape:
        raise ValueError(
            f"{pred_name} has shape {tuple(pred.shape)} but {target_name} has {tuple(target.shape)}; they must match. "
            "Resize the ground truth to the prediction first (mtcolor.color.resize), as the papers do."
        )
    return pred, target


def check_label_maps(label_maps, images: torch.Tensor, name: str = "label_maps") -> list[torch.Tensor]:
    """Validate label maps against an image batch (B, 3, H, W).

    Args:
        label_maps: int tensor (B, H, W) or a sequence of B int tensors (H, W) (0 = background,
            k = instance k, as built by :func:`mtcolor.masks.masks_to_label_map`).

    Returns:
        a list of B int64 tensors (H, W) on the images' device.
    """
    batch, _, height, width = images.shape
    if isinstance(label_maps, torch.Tensor):
        if label_maps.ndim == 2:
            label_maps = label_maps[None]
        if label_maps.ndim != 3:
            raise ValueError(
                f"{name} has shape {tuple(label_maps.shape)}; expected (B, H, W) or a list of (H, W) maps."
            )
        maps = list(label_maps)
    elif isinstance(label_maps, Sequence) and not isinstance(label_maps, (str, bytes)):
        maps = list(label_maps)
    else:
        raise TypeError(
            f"{name} has type {type(label_maps).__name__}; expected an int tensor (B, H, W) or a list of them."
        )
    if len(maps) != batch:
        raise ValueError(
            f"{name} has {len(maps)} label maps but there are {batch} images; pass one map per image."
        )
    out = []
    for index, label_map in enumerate(maps):
        if (
            not isinstance(label_map, torch.Tensor)
            or label_map.is_floating_point()
            or label_map.dtype == torch.bool
        ):
            kind = label_map.dtype if isinstance(label_map, torch.Tensor) else type(label_map).__name__
            raise TypeError(
                f"{name}[{index}] is {kind}; expected an integer tensor (H, W) (build it with "
                "mtcolor.masks.masks_to_label_map)."
            )
        if tuple(label_map.shape) != (height, width):
            raise ValueError(
                f"{name}[{index}] has shape {tuple(label_map.shape)} but the images are {height}x{width}; resize it "
                "with mtcolor.masks.resize_label_map(label_map, (H, W))."
            )
        if label_map.numel() and int(label_map.min()) < 0:
            raise ValueError(
                f"{name}[{index}] has negative labels; 0 is the background and k >= 1 instance k."
            )
        out.append(label_map.to(device=images.device, dtype=torch.int64))
    return out


def check_texts(texts, batch: int, name: str) -> list[list[str]]:
    """Per-image lists of per-instance strings: ``texts[b][k - 1]`` belongs to instance k of image b."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} has type {type(texts).__name__}; expected one list of strings per image.")
    if len(texts) != batch:
        raise ValueError(
            f"{name} has {len(texts)} entries but there are {batch} images; pass one list per image."
        )
    out = []
    for index, items in enumerate(texts):
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise TypeError(
                f"{name}[{index}] is {type(items).__name__}; expected a list with one string per instance of image {index}."
            )
        bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"{name}[{index}] entries {bad} are not strings.")
        out.append(list(items))
    return out


def check_instance_count(label_map: torch.Tensor, count: int, index: int, name: str) -> None:
    """Every label k >= 1 in ``label_map`` needs entry k - 1 of the per-instance list ``name[index]``."""
    top = int(label_map.max()) if label_map.numel() else 0
    if top > count:
        raise ValueError(
            f"label_maps[{index}] has instance labels up to {top} but {name}[{index}] has only {count} entries; "
            "pass one entry per instance (label k uses entry k - 1)."
        )
