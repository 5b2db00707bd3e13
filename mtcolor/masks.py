"""Instance masks -> one label map, and label maps at any token grid.

Every masked component (PMAM, the instance branch, multi-instance fusion, the metrics) works on a
**label map**: an int64 tensor (H, W) where 0 is the background (the global region
``m_g = not(union m_i)`` of MT eq. 8) and ``k`` (1-based, in input order) is instance ``k``.

Rules (DESIGN.md section 3):

* Non-binary masks are thresholded at 0.5 (integer masks are first divided by their dtype's maximum,
  so 0/255 uint8 and 0/65535 uint16 masks work; bool masks are used as they are).
* Overlapping masks: the pixel goes to the **smallest** overlapping mask (the more specific object);
  equal areas go to the lower index. One ``UserWarning`` per call reports the overlapping pairs.
* Resizing to a coarser token grid uses a **majority vote** per cell; ties go to an instance over
  the background, and among instances to the smallest id. Growing a grid uses nearest neighbour.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch


def _mask_to_bool(mask, index: int) -> torch.Tensor:
    """One mask (PIL / numpy / tensor, shape (H, W)) -> bool tensor (H, W)."""
    name = f"masks[{index}]"
    if isinstance(mask, PIL.Image.Image):
        if mask.mode in ("1", "L", "I;16", "I", "F"):
            mask = np.asarray(mask)
        else:
            raise ValueError(
                f"{name} is a PIL image in mode {mask.mode!r}; masks must be single-channel "
                "(mode '1', 'L', 'I;16', 'I' or 'F'). Convert it with `.convert('L')`."
            )
    if isinstance(mask, np.ndarray):
        array = mask
        if array.dtype.kind in "iu" and array.dtype != np.int64 and array.dtype != np.uint64:
            # 8/16-bit masks: divide by the dtype maximum (0/255 and 0/65535 both work).
            maximum = float(np.iinfo(array.dtype).max)
            tensor = torch.from_numpy(array.astype(np.float32) / maximum)
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(array))
    elif isinstance(mask, torch.Tensor):
        tensor = mask.detach().cpu()
        if tensor.dtype == torch.uint8:
            tensor = tensor.float() / 255.0
    else:
        raise TypeError(
            f"{name} has type {type(mask).__name__}; expected a PIL image, a numpy array or a torch "
            "tensor of shape (H, W)."
        )
    if tensor.ndim == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim == 3 and tensor.shape[-1] == 1:
        tensor = tensor[..., 0]
    if tensor.ndim != 2:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)}; each mask must be 2-D (H, W). Pass n masks as a "
            "list of (H, W) arrays or one (n, H, W) tensor."
        )
    if tensor.dtype == torch.bool:
        return tensor
    tensor = tensor.float()
    if torch.isnan(tensor).any():
        raise ValueError(f"{name} contains NaN values; masks must be finite values in [0, 1].")
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
        raise ValueError(
            f"{name} has values in [{tensor.min().item():g}, {tensor.max().item():g}]; float masks "
            "must lie in [0, 1] (thresholded at 0.5). Scale it to [0, 1] or pass a bool/uint8 mask."
        )
    return tensor > 0.5


def _split_masks(masks) -> list:
    if isinstance(masks, (torch.Tensor, np.ndarray)):
        if masks.ndim == 2:
            return [masks]
        if masks.ndim != 3:
            raise ValueError(
                f"masks has shape {tuple(masks.shape)}; expected (n, H, W) or a list of (H, W) masks."
            )
        return list(masks)
    if isinstance(masks, Sequence) and not isinstance(masks, (str, bytes)):
        return list(masks)
    return [masks]


def masks_to_label_map(masks, *, allow_empty: bool = False, warn_overlap: bool = True) -> torch.Tensor:
    """Turn ``n`` instance masks into one label map.

    Args:
        masks: a list of ``n`` masks, each a PIL image, numpy array or tensor of shape (H, W)
            (bool, integer or float in [0, 1]), or one (n, H, W) array/tensor.
        allow_empty: if False (default), a mask with no pixel above 0.5 raises ``ValueError``;
            if True it is kept and simply owns no pixel.
        warn_overlap: emit one ``UserWarning`` when masks overlap.

    Returns:
        int64 tensor (H, W): 0 = background, ``k`` = instance ``k`` (1-based, input order).
        With ``n == 0`` masks there is nothing to size the map from, so ``ValueError`` is raised.
    """
    items = _split_masks(masks)
    if not items:
        raise ValueError("masks is empty; pass at least one (H, W) mask, or None for no instances.")
    bools = [_mask_to_bool(m, i) for i, m in enumerate(items)]
    shape = bools[0].shape
    for i, b in enumerate(bools):
        if b.shape != shape:
            raise ValueError(
                f"masks[{i}] has size {tuple(b.shape)} but masks[0] has {tuple(shape)}; all masks must "
                "have the same (H, W) as the image."
            )
    stack = torch.stack(bools)  # (n, H, W) bool
    areas = stack.flatten(1).sum(1)  # (n,)
    if not allow_empty:
        empty = [i for i, a in enumerate(areas.tolist()) if a == 0]
        if empty:
            raise ValueError(
                f"masks{empty} {'is' if len(empty) == 1 else 'are'} empty (no pixel above 0.5); remove "
                "the empty mask(s) together with their text(s)."
            )
    n = stack.shape[0]
    coverage = stack.sum(0)  # (H, W)
    if warn_overlap and bool((coverage > 1).any()):
        pairs = []
        for i in range(n):
            for j in range(i + 1, n):
                if bool((stack[i] & stack[j]).any()):
                    pairs.append((i, j))
        warnings.warn(
            f"instance masks overlap (0-based pairs {pairs[:10]}{' ...' if len(pairs) > 10 else ''}); "
            "each overlapping pixel goes to the smallest mask.",
            UserWarning,
            stacklevel=2,
        )
    # Priority: smaller area first, then lower index. Pick per pixel the covering mask of best rank.
    order = sorted(range(n), key=lambda i: (int(areas[i]), i))
    rank = torch.empty(n, dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(n)
    big = n + 1
    ranked = torch.where(stack, rank.view(n, 1, 1), torch.full_like(rank.view(n, 1, 1), big))
    best_rank = ranked.min(0).values  # (H, W)
    order_t = torch.tensor(order + [-1])  # rank -> 0-based mask index, big -> -1
    label = order_t[best_rank.clamp(max=n)] + 1  # background: -1 + 1 = 0
    return label.to(torch.int64)


def _cell_index(src: int, dst: int) -> torch.Tensor:
    """For an axis shrinking from ``src`` to ``dst`` pixels: the output cell of each input pixel."""
    return torch.div(torch.arange(src) * dst, src, rounding_mode="floor")


def _nearest_index(src: int, dst: int) -> torch.Tensor:
    """For an axis growing from ``src`` to ``dst`` pixels: the input pixel of each output pixel."""
    return ((torch.arange(dst, dtype=torch.float64) + 0.5) * src / dst).floor().long().clamp(max=src - 1)


def resize_label_map(label_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a label map to ``size = (h, w)`` by a majority vote per cell.

    Args:
        label_map: int64 tensor (H, W) or (B, H, W), values >= 0.
        size: target (h, w).

    Along an axis that shrinks, input pixel ``p`` belongs to output cell ``floor(p * h / H)`` (cells
    of ``H / h`` pixels, exact for non-integer factors and odd sizes); each output cell takes the
    label with the most pixels in it. Ties go to an instance over the background, and among
    instances to the smallest id. Along an axis that grows, nearest neighbour is used.

    Returns:
        int64 tensor of shape (h, w) or (B, h, w) on the input's device.
    """
    if label_map.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"label_map has dtype {label_map.dtype}; expected an integer tensor.")
    squeeze = label_map.ndim == 2
    if squeeze:
        label_map = label_map[None]
    if label_map.ndim != 3:
        raise ValueError(f"label_map has shape {tuple(label_map.shape)}; expected (H, W) or (B, H, W).")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}.")
    label_map = label_map.long()
    batch, height, width = label_map.shape
    if h > height:
        label_map = label_map[:, _nearest_index(height, h).to(label_map.device)]
        height = h
    if w > width:
        label_map = label_map[:, :, _nearest_index(width, w).to(label_map.device)]
        width = w
    if (height, width) == (h, w):
        return label_map[0] if squeeze else label_map
    num_labels = int(label_map.max()) + 1
    device = label_map.device
    rows = _cell_index(height, h).to(device)
    cols = _cell_index(width, w).to(device)
    cell = (rows[:, None] * w + cols[None, :]).view(1, -1)  # (1, H*W)
    flat = label_map.reshape(batch, -1)
    counts = torch.zeros(batch, h * w * num_labels, dtype=torch.long, device=device)
    counts.scatter_add_(1, cell * num_labels + flat, torch.ones_like(flat))
    counts = counts.view(batch, h * w, num_labels)
    # Tie-break bonus < 1 count: instances beat background, smaller ids beat larger ones.
    labels = torch.arange(num_labels, device=device)
    bonus = torch.where(labels > 0, num_labels + 1 - labels, torch.zeros_like(labels))
    score = counts * (num_labels + 2) + bonus
    out = score.argmax(-1).view(batch, h, w)
    return out[0] if squeeze else out


def token_grid(num_tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) token grid with ``h * w == num_tokens`` for an image/latent of size (height, width).

    A UNet halves its feature maps with stride-2 convolutions (``ceil`` on odd sizes), so the grid is
    first searched along that chain starting at (height, width); if no level has ``num_tokens``
    tokens, the factor pair of ``num_tokens`` whose aspect ratio is closest to ``height / width`` is
    used (as diffusers' ``IPAdapterMaskProcessor.downsample`` derives it from the token count).
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}.")
    h, w = int(height), int(width)
    while h * w > num_tokens and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w == num_tokens:
        return h, w
    target = math.log(height / width)
    best = None
    for a in range(1, int(math.isqrt(num_tokens)) + 1):
        if num_tokens % a:
            continue
        for hh, ww in ((a, num_tokens // a), (num_tokens // a, a)):
            err = abs(math.log(hh / ww) - target)
            if best is None or err < best[0]:
                best = (err, hh, ww)
    return best[1], best[2]


def vanished_instances(label_map: torch.Tensor, size: tuple[int, int]) -> list[int]:
    """Instance ids present in ``label_map`` (H, W) but absent after resizing to ``size``."""
    present = set(torch.unique(label_map).tolist()) - {0}
    kept = set(torch.unique(resize_label_map(label_map, size)).tolist())
    return sorted(present - kept)


def instance_masks(label_map: torch.Tensor, num_instances: int) -> torch.Tensor:
    """Label map (..., H, W) -> float one-hot masks (..., n + 1, H, W): index 0 is m_g, k is m_k."""
    one_hot = torch.nn.functional.one_hot(label_map.long(), num_instances + 1)  # (..., H, W, n+1)
    return one_hot.movedim(-1, -3).float()
