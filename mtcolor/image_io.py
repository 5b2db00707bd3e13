"""Turn user images (PIL / numpy / torch, any mode or bit depth) into float arrays in [0, 1].

One place decides what every pipeline, metric and dataset tool accepts:

* PIL modes ``1``, ``L``, ``LA``, ``P``, ``RGB``, ``RGBA``, ``CMYK``, ``I;16``, ``I``, ``F``;
  alpha channels are dropped (the colour under a transparent pixel is kept as it is). A PIL image
  with an EXIF orientation (a phone photo: tag 274 = 2..8) is read **upright**, as viewers show it
  (:func:`upright`, ``PIL.ImageOps.exif_transpose``): a photo stored 64x48 with orientation 6 is a
  48x64 image, and its masks are drawn on that view (:mod:`mtcolor.masks` applies the same rule).
* numpy arrays (H, W), (H, W, 1|3|4): ``uint8`` / 255, ``uint16`` / 65535, ``bool``, floats in [0, 1].
* torch tensors (H, W), (1|3|4, H, W): floats in [0, 1] or ``uint8``.

Anything else, NaNs, or floats outside [0, 1] raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

#: the EXIF tag holding how the camera was held (1 = as stored; 2..8 = mirror and/or rotate to view)
EXIF_ORIENTATION = 0x0112


def exif_orientation(image: PIL.Image.Image) -> int:
    """The EXIF orientation of a PIL image (1..8), 1 when it has none or its EXIF is unreadable."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):  # damaged EXIF: read as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` as viewers show it: its EXIF orientation applied (``PIL.ImageOps.exif_transpose``:
    a new image, same mode, without the tag), or ``image`` itself when it has no orientation to apply.

    Applying it twice is the same as once (the result carries no orientation).
    """
    if exif_orientation(image) == 1:
        return image
    return PIL.ImageOps.exif_transpose(image)


def _scaled(array: np.ndarray, peak: float) -> np.ndarray:
    """A new float32 array ``array / peak`` (one float32 allocation: the division is in place)."""
    out = array.astype(np.float32)
    out /= np.float32(peak)
    return out


def _from_pil(image, name: str) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        return _scaled(np.asarray(image), 65535.0)
    if mode == "I":
        array = np.asarray(image)  # int32
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        return _scaled(array, peak)
    if mode == "F":
        return np.array(image, dtype=np.float32)
    if mode in ("1", "L", "LA"):
        return _scaled(np.asarray(image.convert("L")), 255.0)
    if mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "PA", "RGBX"):
        return _scaled(np.asarray(image if mode == "RGB" else image.convert("RGB")), 255.0)
    raise ValueError(f"{name} is a PIL image in unsupported mode {mode!r}; convert it to 'L' or 'RGB'.")


def _from_numpy(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.bool_:
        array = array.astype(np.float32)
    elif array.dtype == np.uint8:
        array = _scaled(array, 255.0)
    elif array.dtype == np.uint16:
        array = _scaled(array, 65535.0)
    elif array.dtype.kind == "f":
        array = array.astype(np.float32)  # a copy, also for float32 input
    else:
        raise ValueError(
            f"{name} is a numpy array of dtype {array.dtype}; expected uint8, uint16, bool or float in [0, 1]."
        )
    return array


def to_float_image(image, name: str = "image", *, orient: bool = True) -> np.ndarray:
    """Any supported image -> float32 numpy array (H, W, C) in [0, 1] with C in {1, 3}.

    Args:
        image: PIL image, numpy array (H, W[, C]) or torch tensor ([C,] H, W).
        name: the argument name used in error messages.
        orient: read a PIL image upright (its EXIF orientation applied, :func:`upright`);
            False keeps the stored pixel grid (for annotations that refer to it).
    """
    if isinstance(image, PIL.Image.Image):
        array = _from_pil(upright(image) if orient else image, name)
    elif isinstance(image, np.ndarray):
        array = _from_numpy(image, name)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)
        if tensor.dtype == torch.uint8:
            array = _scaled(tensor.numpy(), 255.0)
        elif tensor.dtype == torch.bool:
            array = tensor.numpy().astype(np.float32)
        elif tensor.is_floating_point():
            array = (
                tensor.numpy().astype(np.float32)
                if tensor.dtype != torch.bfloat16
                else tensor.float().numpy()
            )
        else:
            raise ValueError(
                f"{name} is a tensor of dtype {tensor.dtype}; expected float in [0, 1] or uint8."
            )
    else:
        raise TypeError(
            f"{name} has type {type(image).__name__}; expected a PIL image, a numpy array or a torch tensor."
        )
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}; expected (H, W), (H, W, 1|3|4) for arrays or "
            "(1|3|4, H, W) for tensors."
        )
    if array.shape[-1] in (2, 4):  # drop alpha (a contiguous copy, as every path returns one)
        array = np.ascontiguousarray(array[..., :-1])
    lo, hi = float(array.min(initial=0.0)), float(array.max(initial=0.0))  # NaN / inf propagate
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or infinite values; pass finite values in [0, 1].")
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"{name} has float values in [{lo:g}, {hi:g}]; float images must lie in [0, 1]. Divide by 255 "
            "(8-bit) or 65535 (16-bit), or pass the integer array as it is."
        )
    # ``array`` is this function's own float32 copy (never the caller's memory): clip it in place.
    return np.clip(array, 0.0, 1.0, out=array) if lo < 0 or hi > 1 else array


def to_tensor_image(image, name: str = "image", *, orient: bool = True) -> torch.Tensor:
    """Like :func:`to_float_image` but returns a float32 tensor (C, H, W) in [0, 1] (a view of the
    (H, W, C) array: no copy)."""
    return torch.from_numpy(to_float_image(image, name, orient=orient)).permute(2, 0, 1)


def to_uint8_image(array: np.ndarray, *, tile_pixels: int = 1 << 18) -> np.ndarray:
    """Float image (H, W[, C]) in [0, 1] -> uint8 ``(array * 255).round()`` (numpy rounding, half to
    even), computed in row tiles of ``~tile_pixels`` pixels: no full-size float temporaries. The
    result does not depend on the tiling.
    """
    if tile_pixels < 1:
        raise ValueError(f"tile_pixels must be a positive pixel count, got {tile_pixels}.")
    out = np.empty(array.shape, dtype=np.uint8)
    rows = max(1, tile_pixels // max(1, array.shape[1] if array.ndim > 1 else 1))
    for start in range(0, array.shape[0], rows):
        tile = array[start : start + rows] * 255
        out[start : start + rows] = tile.round(out=tile)
    return out
