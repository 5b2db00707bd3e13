"""Editing chosen instances of an earlier result: what is kept, what is re-sampled, and the exact
composite.

An edit changes the texts, colour targets or masks of some instances of a previous result. The
*edited region* R is, at the input's full resolution, the union over the edited instances k of
their pixels in the previous and in the new label map (overlaps already resolved: each pixel
belongs to one instance). Every pixel outside R keeps the previous result's value exactly; inside R
the new texts apply.

Sampling keeps the known region (latent cells with no pixel of R) from the previous result's final
latents z0_prev: before every step at timestep t the known cells are replaced by
``add_noise(z0_prev, eps, t)`` (one fixed eps per edit) and after the last step by z0_prev itself,
so the re-sampled region is denoised in the context of the kept one and the seam is consistent.
Then the decoded result is composited: ``out = R ? new : previous`` (in uint8 for PIL outputs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class EditState:
    """What an edit of one generated image needs; ``MTColorPipelineOutput.edit_states[i]``.

    Attributes:
        latents: (C, h, w) the final latents z0 at the working size (CPU).
        label_map: (H, W) int32 label map at the input's size (0 = background).
        texts: the instance texts.
        colors: per instance the resolved colour target as Lab (L, a, b) or None.
        prompt / negative_prompt: the global texts.
        image_size: (H, W) of the input; working_size: (h, w) the model ran at.
        model: fingerprint of the model that made it (:func:`model_fingerprint`).
        settings: the call's sampling settings (steps, guidance, alpha, beta, fusion, ...).
    """

    latents: torch.Tensor
    label_map: torch.Tensor
    texts: list[str]
    colors: list
    prompt: str
    negative_prompt: str
    image_size: tuple[int, int]
    working_size: tuple[int, int]
    model: str
    settings: dict = field(default_factory=dict)


def model_fingerprint(*modules) -> str:
    """A short hash of the modules' configs and a checksum of their weights (identifies a model)."""
    digest = hashlib.sha1()
    for module in modules:
        if module is None:
            continue
        config = getattr(module, "config", None)
        items = {k: v for k, v in dict(config or {}).items() if not k.startswith("_")}
        digest.update(json.dumps(items, sort_keys=True, default=str).encode())
        with torch.no_grad():
            for parameter in list(module.parameters())[:8]:
                digest.update(np.float64(parameter.detach().double().sum().cpu()).tobytes())
    return digest.hexdigest()[:16]


def changed_instances(state: EditState, label_map: torch.Tensor, texts: list[str], colors: list) -> list[int]:
    """1-based labels of the instances whose text, colour target or region differs from ``state``."""
    changed = []
    for k in range(1, len(texts) + 1):
        same_text = texts[k - 1] == state.texts[k - 1]
        same_color = colors[k - 1] == state.colors[k - 1]
        same_region = torch.equal(label_map == k, state.label_map.to(label_map.device) == k)
        if not (same_text and same_color and same_region):
            changed.append(k)
    return changed


def edited_region(new_label_map: torch.Tensor, old_label_map: torch.Tensor | None, instances) -> torch.Tensor:
    """R (H, W) bool: the edited instances' pixels in the new and (if known) the old label map."""
    labels = torch.tensor(sorted(instances), dtype=new_label_map.dtype, device=new_label_map.device)
    region = torch.isin(new_label_map, labels)
    if old_label_map is not None:
        region |= torch.isin(old_label_map.to(new_label_map), labels)
    return region


def known_cells(region: torch.Tensor, latent_size) -> torch.Tensor:
    """(1, 1, h, w) float: 1 for latent cells whose pixels (at any resolution of ``region`` (H, W))
    hold no edited pixel, 0 for cells that must be re-sampled (every cell touching R)."""
    touched = F.adaptive_max_pool2d(region.float()[None, None], tuple(latent_size))
    return 1.0 - touched


def composite(new: np.ndarray, previous: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``region ? new : previous`` for (H, W, 3) arrays of the same dtype; region (H, W) bool."""
    if new.shape != previous.shape or new.dtype != previous.dtype:
        raise ValueError(
            f"composite needs arrays of one shape and dtype, got {new.shape} {new.dtype} and "
            f"{previous.shape} {previous.dtype}."
        )
    return np.where(region[..., None], new, previous)


@dataclass
class EditPlan:
    """One edit, checked: what to keep and what to re-sample (built by the pipeline's ``prepare_edit``).

    Attributes:
        instances: 1-based labels of the edited instances.
        region: (H, W) bool edited region R at the input's size.
        previous: (H, W, 3) float32 previous result in [0, 1].
        previous_uint8: (H, W, 3) uint8 previous result (exact when it came as 8-bit pixels).
        latents: (1, C, h, w) previous final latents, or None (then encoded from ``previous``).
    """

    instances: list[int]
    region: torch.Tensor
    previous: np.ndarray
    previous_uint8: np.ndarray
    latents: torch.Tensor | None


def previous_pixels(image, name: str = "edit_from") -> tuple[np.ndarray, np.ndarray]:
    """A previous result (PIL / numpy / tensor, 8 or 16 bit, gray, RGB or RGBA) -> (float32 (H, W, 3)
    in [0, 1], uint8 (H, W, 3)); an 8-bit input's uint8 values are kept exactly."""
    from .image_io import to_float_image, to_uint8_image

    array = to_float_image(image, name)  # (H, W, 1|3) in [0, 1]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = np.ascontiguousarray(array[..., :3], dtype=np.float32)
    return array, to_uint8_image(array.copy())


def edit_window(known: torch.Tensor, multiple: int, margin: int | None = None) -> tuple[slice, slice]:
    """The latent window an edit re-samples: the bounding box of the cells to re-sample (``known``
    (1, 1, h, w) == 0) grown by ``margin`` cells on every side (default: a quarter of the box's larger
    side, at least ``multiple``), with both sides multiples of ``multiple`` (the UNet's
    downsampling), clipped to the grid. Only this window is denoised; the cells of the window outside
    the edited region are kept from the previous latents at every step, so the UNet sees them as
    context. Returns ``(rows, columns)`` slices; the whole grid when nothing is edited.
    """
    height, width = known.shape[-2:]
    todo = (known[0, 0] < 0.5).nonzero()
    if todo.numel() == 0:
        return slice(0, height), slice(0, width)
    (y0, x0), (y1, x1) = todo.min(0).values.tolist(), (todo.max(0).values + 1).tolist()
    if margin is None:
        margin = max(multiple, (max(y1 - y0, x1 - x0) + 3) // 4)

    def grow(lo: int, hi: int, size: int) -> slice:
        lo, hi = max(0, lo - margin), min(size, hi + margin)
        span = min(size, -(-(hi - lo) // multiple) * multiple)  # round the side up to a multiple
        lo = max(0, min(lo, size - span))
        if span % multiple:  # the grid itself is not a multiple: use it whole
            return slice(0, size)
        return slice(lo, lo + span)

    return grow(y0, y1, height), grow(x0, x1, width)
