"""Instance masks -> one label map, and label maps at any token grid.

Every masked component (PMAM, the instance branch, multi-instance fusion, the metrics) works on a
**label map**: an int64 tensor (H, W) where 0 is the background (the global region
``m_g = not(union m_i)`` of MT eq. 8) and ``k`` (1-based, in input order) is instance ``k``.

Rules (docs/design.md, "Label maps"):

* Reading a mask (:func:`masks_to_label_map`): bool masks are used as they are; float masks must lie
  in [0, 1] and are thresholded at 0.5. **Integer masks** (numpy / torch integer dtypes, PIL modes
  ``L``, ``I;16``, ``I``, 32-bit TIFFs, what ``pycocotools.mask.decode`` returns) are read as
  ``0 .. full`` and thresholded at ``full / 2``, where ``full`` is:

  - 1 if the mask's maximum is 1 (a 0/1 mask, whatever its dtype);
  - otherwise the dtype's range: 255 for 8-bit, 65535 for 16-bit; 32/64-bit integers (PIL mode
    ``I``, int32, int64) have no conventional range, so 255 if the maximum is <= 255, else 65535 if
    it is <= 65535; larger values (and negative ones) raise ``ValueError``.

  So 0/1, 0/255 and 0/65535 masks work in any integer dtype that holds them, except that an 8-bit
  or 16-bit container means its own full range (a uint16 0/255 mask reads as empty). An empty mask's
  error message says which convention was applied.
* A PIL mask with an EXIF orientation is read upright, like images
  (:func:`mtcolor.image_io.upright`): masks and images are aligned as viewers show them.
* Overlapping masks: the pixel goes to the **smallest** overlapping mask (the more specific object);
  equal areas go to the lower index. One ``UserWarning`` per call reports the overlapping pairs.
* Resizing to a coarser token grid uses a **majority vote** per cell; ties go to an instance over
  the background, and among instances to the smallest id. Growing a grid uses nearest neighbour.
* Token grids: a UNet's attention levels see the latent grid halved per level, ``ceil`` on odd
  sizes (:func:`attention_grids`; :func:`token_grid` finds a level from its token count). An
  instance can vanish at a coarse grid (:func:`vanished_instances`, :func:`lost_instances`).
* Masks back from a label map: :func:`instance_masks` (one-hot, m_g first; the fusion of MT eq. 8
  uses it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from .image_io import upright


def _integer_scale(array: np.ndarray, maximum: int) -> tuple[int, str]:
    """The full-scale value of an integer mask (the rule in the module docstring) and its name."""
    if maximum <= 1:
        return 1, "0/1"
    bits = array.dtype.itemsize * 8
    if bits == 8:
        return 255, "0/255 (8-bit)"
    if bits == 16:
        return 65535, "0/65535 (16-bit)"
    if maximum <= 255:  # 32/64-bit integers (PIL mode 'I', 32-bit TIFF, int64) have no own range
        return 255, f"0/255 ({bits}-bit, max <= 255)"
    if maximum <= 65535:
        return 65535, f"0/65535 ({bits}-bit, max <= 65535)"
    return 0, ""


def _pil_mask(mask: PIL.Image.Image, name: str) -> np.ndarray:
    """A single-channel PIL mask as an array, upright (its EXIF orientation applied)."""
    mask = upright(mask)
    if mask.mode not in ("1", "L", "I;16", "I;16B", "I;16L", "I", "F"):
        raise ValueError(
            f"{name} is a PIL image in mode {mask.mode!r}; masks must be single-channel "
            "(mode '1', 'L', 'I;16', 'I' or 'F'). Convert it with `.convert('L')`."
        )
    return np.asarray(mask)


def _mask_array(mask, name: str) -> np.ndarray:
    """One mask (PIL / numpy / tensor) -> its 2-D (H, W) numpy array (a view where possible)."""
    if isinstance(mask, PIL.Image.Image):
        mask = _pil_mask(mask, name)
    if isinstance(mask, torch.Tensor):
        tensor = mask.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        try:
            array = tensor.numpy()
        except TypeError as error:  # dtypes numpy lacks
            raise ValueError(
                f"{name} is a tensor of dtype {tensor.dtype}; pass bool, an integer dtype or float in [0, 1]."
            ) from error
    elif isinstance(mask, np.ndarray):
        array = mask
    else:
        raise TypeError(
            f"{name} has type {type(mask).__name__}; expected a PIL image, a numpy array or a torch "
            "tensor of shape (H, W)."
        )
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}; each mask must be 2-D (H, W). Pass n masks as a "
            "list of (H, W) arrays or one (n, H, W) tensor."
        )
    return array


def _integer_mask_to_bool(array: np.ndarray, name: str) -> tuple[torch.Tensor, str]:
    """A non-empty integer mask, thresholded at half its full scale (module docstring)."""
    lo, hi = int(array.min()), int(array.max())
    if lo < 0:
        raise ValueError(
            f"{name} is an {array.dtype} mask with values in [{lo}, {hi}]; integer masks must be >= 0 "
            "(0/1, or 0/255 for 8-bit, 0/65535 for 16-bit). Binarize it, e.g. `mask > 0`."
        )
    scale, convention = _integer_scale(array, hi)
    if not scale:
        raise ValueError(
            f"{name} is an {array.dtype} mask with values up to {hi}; integer masks are read as 0/1, "
            "0/255 or 0/65535, and no convention fits. Binarize it, e.g. `mask > 0`, or pass a float "
            "mask in [0, 1]."
        )
    threshold = scale / 2  # in the mask: value > scale / 2 (== 1 for 0/1 masks)
    return (
        torch.from_numpy(array > threshold),
        f"{array.dtype} {convention}, in the mask where value > {threshold:g}",
    )


def _float_mask_to_bool(array: np.ndarray, name: str) -> tuple[torch.Tensor, str]:
    """A non-empty float mask in [0, 1], thresholded at 0.5."""
    lo, hi = float(array.min()), float(array.max())  # NaN propagates through min / max
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name} contains NaN values; masks must be finite values in [0, 1].")
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{name} has values in [{lo:g}, {hi:g}]; float masks "
            "must lie in [0, 1] (thresholded at 0.5). Scale it to [0, 1] or pass a bool/uint8 mask."
        )
    return torch.from_numpy(
        np.asarray(array > 0.5)
    ), f"{array.dtype} in [0, 1], in the mask where value > 0.5"


def _mask_to_bool(mask, index: int) -> tuple[torch.Tensor, str]:
    """One mask (PIL / numpy / tensor, shape (H, W)) -> (bool tensor (H, W), how it was read).

    The second value names the convention applied (e.g. ``"uint8 0/255 (8-bit), in the mask where
    value > 127.5"``) for error messages. No float copy of the mask is made.
    """
    name = f"masks[{index}]"
    array = _mask_array(mask, name)
    kind = array.dtype.kind
    if kind == "b":
        return torch.from_numpy(np.ascontiguousarray(array)), "bool"
    if array.size == 0:
        return torch.zeros(array.shape, dtype=torch.bool), f"{array.dtype}"
    if kind in "iu":
        return _integer_mask_to_bool(array, name)
    if kind != "f":
        raise ValueError(
            f"{name} has dtype {array.dtype}; pass a bool, integer or float mask (float in [0, 1])."
        )
    return _float_mask_to_bool(array, name)


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
            (bool, integer read by the rule in the module docstring, or float in [0, 1]), or one
            (n, H, W) array/tensor.
        allow_empty: if False (default), a mask with no pixel in it raises ``ValueError`` naming
            the convention it was read with; if True it is kept and simply owns no pixel.
        warn_overlap: emit one ``UserWarning`` when masks overlap.

    Returns:
        int64 tensor (H, W): 0 = background, ``k`` = instance ``k`` (1-based, input order).
        With ``n == 0`` masks there is nothing to size the map from, so ``ValueError`` is raised.
    """
    items = _split_masks(masks)
    if not items:
        raise ValueError("masks is empty; pass at least one (H, W) mask, or None for no instances.")
    read = [_mask_to_bool(m, i) for i, m in enumerate(items)]
    bools = [b for b, _ in read]
    shape = bools[0].shape
    for i, b in enumerate(bools):
        if b.shape != shape:
            raise ValueError(
                f"masks[{i}] has size {tuple(b.shape)} but masks[0] has {tuple(shape)}; all masks must "
                "have the same (H, W) as the image."
            )
    areas = [int(b.sum()) for b in bools]
    if not allow_empty:
        empty = [i for i, a in enumerate(areas) if a == 0]
        if empty:
            how = "; ".join(f"masks[{i}] read as {read[i][1]}" for i in empty)
            raise ValueError(
                f"masks{empty} {'is' if len(empty) == 1 else 'are'} empty (no pixel in the mask: {how}); "
                "remove the empty mask(s) together with their text(s), or pass them as bool masks."
            )
    n = len(bools)
    # Priority: smaller area first, then lower index. Paint from the lowest priority to the highest,
    # so each pixel ends with its best-ranked covering mask (O(H W) memory: no (n, H, W) stack).
    order = sorted(range(n), key=lambda i: (areas[i], i))
    label = torch.zeros(shape, dtype=torch.int64)
    covered = torch.zeros(shape, dtype=torch.bool)
    overlap = False
    for i in reversed(order):
        label.masked_fill_(bools[i], i + 1)
        if warn_overlap and not overlap:
            overlap = bool(covered.logical_and(bools[i]).any())
            covered.logical_or_(bools[i])
    if overlap:
        pairs = []
        for i in range(n):
            for j in range(i + 1, n):
                if bool(bools[i].logical_and(bools[j]).any()):
                    pairs.append((i, j))
        warnings.warn(
            f"instance masks overlap (0-based pairs {pairs[:10]}{' ...' if len(pairs) > 10 else ''}); "
            "each overlapping pixel goes to the smallest mask.",
            UserWarning,
            stacklevel=2,
        )
    return label


def _cell_index(src: int, dst: int) -> torch.Tensor:
    """For an axis shrinking from ``src`` to ``dst`` pixels: the output cell of each input pixel."""
    return torch.div(torch.arange(src) * dst, src, rounding_mode="floor")


def _nearest_index(src: int, dst: int) -> torch.Tensor:
    """For an axis growing from ``src`` to ``dst`` pixels: the input pixel of each output pixel."""
    return ((torch.arange(dst, dtype=torch.float64) + 0.5) * src / dst).floor().long().clamp(max=src - 1)


def resize_label_map(
    label_map: torch.Tensor, size: tuple[int, int], *, tile_pixels: int = 1 << 20
) -> torch.Tensor:
    """Resize a label map to ``size = (h, w)`` by a majority vote per cell.

    Args:
        label_map: integer tensor (H, W) or (B, H, W), values >= 0.
        size: target (h, w).
        tile_pixels: input pixels counted at a time (bands of whole output rows); memory is
            ``O(tile_pixels)`` beyond the output, and the result does not depend on it.

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
    if tile_pixels < 1:
        raise ValueError(f"tile_pixels must be a positive pixel count, got {tile_pixels}.")
    batch, height, width = label_map.shape
    if h > height:
        label_map = label_map[:, _nearest_index(height, h).to(label_map.device)]
        height = h
    if w > width:
        label_map = label_map[:, :, _nearest_index(width, w).to(label_map.device)]
        width = w
    if (height, width) == (h, w):
        label_map = label_map.long()
        return label_map[0] if squeeze else label_map
    num_labels = int(label_map.max()) + 1
    device = label_map.device
    rows = _cell_index(height, h).to(device)  # (H,) output row of each input row
    cols = _cell_index(width, w).to(device)  # (W,) output column of each input column
    # Tie-break bonus < 1 count: instances beat background, smaller ids beat larger ones.
    labels = torch.arange(num_labels, device=device)
    bonus = torch.where(labels > 0, num_labels + 1 - labels, torch.zeros_like(labels))
    out = torch.empty(batch, h, w, dtype=torch.long, device=device)
    band = max(1, tile_pixels // (batch * width * max(1, height // h)))  # output rows per band
    for top in range(0, h, band):
        bottom = min(top + band, h)
        first, last = -(-top * height // h), -(-bottom * height // h)  # input rows of these cells
        cells = (bottom - top) * w
        cell = ((rows[first:last] - top)[:, None] * w + cols[None, :]).view(1, -1)  # (1, rows * W)
        flat = label_map[:, first:last].reshape(batch, -1).long()  # (B, rows * W)
        offsets = torch.arange(batch, device=device)[:, None] * (cells * num_labels)
        counts = torch.bincount(
            (offsets + cell * num_labels + flat).view(-1), minlength=batch * cells * num_labels
        )
        score = counts.view(batch, cells, num_labels) * (num_labels + 2) + bonus
        out[:, top:bottom] = score.argmax(-1).view(batch, bottom - top, w)
    return out[0] if squeeze else out


def _halvings(height: int, width: int):
    """(height, width), then each UNet level below it: halved by stride-2 convolutions (``ceil`` on
    odd sizes), down to (1, 1) and on forever (callers stop)."""
    h, w = int(height), int(width)
    while True:
        yield h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)


def attention_grids(latent_size: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """The token grids (h, w) of a UNet's ``levels`` resolutions for latents of ``latent_size``,
    finest first: the latent grid, then each level halved (``ceil`` on odd sizes). SD-1.5 at 512 px:
    ``attention_grids((64, 64), 4) == [(64, 64), (32, 32), (16, 16), (8, 8)]``.

    These are the grids :func:`token_grid` finds from a token count; ``levels`` is
    ``len(unet.config.block_out_channels)``.
    """
    chain = _halvings(*latent_size)
    return [next(chain) for _ in range(levels)]


def token_grid(num_tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) token grid with ``h * w == num_tokens`` for an image/latent of size (height, width).

    A UNet halves its feature maps with stride-2 convolutions (``ceil`` on odd sizes), so the grid is
    first searched along that chain (:func:`attention_grids`) starting at (height, width); if no level
    has ``num_tokens`` tokens, the factor pair of ``num_tokens`` whose aspect ratio is closest to
    ``height / width`` is used (as diffusers' ``IPAdapterMaskProcessor.downsample`` derives it from
    the token count).
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}.")
    for h, w in _halvings(height, width):
        if h * w <= num_tokens or (h, w) == (1, 1):
            break
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
    """Instance ids present in ``label_map`` (H, W) but absent after resizing to ``size``.

    Counts labels with ``bincount`` (O(number of labels) memory, no sort of the H x W pixels).
    """
    present = set(_labels_present(label_map)) - {0}
    kept = set(_labels_present(resize_label_map(label_map, size)))
    return sorted(present - kept)


def _labels_present(label_map: torch.Tensor) -> list[int]:
    """The distinct values of a non-negative integer label map, ascending."""
    return torch.bincount(label_map.reshape(-1).long()).nonzero().flatten().tolist()


def lost_instances(
    label_map: torch.Tensor, size: tuple[int, int], grids: Sequence[tuple[int, int]]
) -> dict[int, list[tuple[int, int]]]:
    """Instances too small for some grids: ``{k: [grid, ...]}`` in ascending ``k``.

    Args:
        label_map: int tensor (H, W), the call's label map at the input size (0 = background).
        size: (h, w) working size the image is resized to.
        grids: token grids at the working size, finest first (e.g. :func:`attention_grids` of the
            latent size).

    Instance ``k`` is listed when it covers no cell of ``size`` (then ``size`` comes first in its
    list, followed by every grid: it conditions none of them) or no token of some of ``grids`` (those
    grids are listed). An instance absent from ``label_map`` (an empty mask) is not listed. The
    pipeline's small-instance diagnostics and the web UI's mask check both read this.
    """
    lost_at_size = vanished_instances(label_map, size)  # already gone at the working size
    lost: dict[int, list[tuple[int, int]]] = {k: [tuple(size)] for k in lost_at_size}
    working = resize_label_map(label_map, size)
    for grid in grids:
        for k in sorted(set(vanished_instances(working, grid)) | set(lost_at_size)):
            lost.setdefault(k, []).append(tuple(grid))
    return dict(sorted(lost.items()))


def instance_masks(
    label_map: torch.Tensor, num_instances: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Label map (..., H, W) -> one-hot masks (..., n + 1, H, W) in ``dtype`` (1 inside, 0 outside):
    index 0 is m_g (the background, MT eq. 8), ``k`` is m_k. Labels above ``n`` belong to no mask.

    The one place masks are cut out of a label map (multi-instance fusion, the web UI overlay).
    """
    labels = torch.arange(num_instances + 1, device=label_map.device).view(-1, 1, 1)  # (n+1, 1, 1)
    return (label_map.unsqueeze(-3) == labels).to(dtype)
