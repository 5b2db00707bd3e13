"""Segment Anything (SAM) point / box prompts -> one boolean instance mask per prompt.

A thin wrapper around the optional ``segment-anything`` package (``pip install 'mtcolor[sam]'``):

* :func:`load_sam` builds ``vit_b`` / ``vit_l`` / ``vit_h`` through the package's
  ``sam_model_registry`` and loads a **local** official checkpoint with
  ``torch.load(..., weights_only=True)`` (the package's own loader unpickles arbitrary objects).
* :class:`SamMasker` runs ``SamPredictor``: one ``set_image`` (image embedding) per image, then one
  ``predict`` per instance. It is preprocessing the caller owns: build one
  (``SamMasker("sam_vit_b_01ec64.pth")``), keep it as long as masks are needed (the web UI keeps one
  per server, the CLI one per command) and pass its masks to the pipeline; nothing is cached at
  module level.

Prompts are in the pixel coordinates of the input image, ``x`` to the right and ``y`` down,
``(0, 0)`` being the top-left corner of the top-left pixel:

* ``points``: per instance a list of ``(x, y)`` foreground points, ``0 <= x < W``, ``0 <= y < H``;
* ``boxes``: per instance one ``(x0, y0, x1, y1)`` box, ``0 <= x0 < x1 <= W``, ``0 <= y0 < y1 <= H``.

When both are given, instance ``i`` is prompted with ``points[i]`` *and* ``boxes[i]`` (either may be
``None`` for that instance, not both).

Mask choice: an instance prompted by a **single point only** is ambiguous (a click on a shirt may
mean the shirt or the person), so it is predicted with ``multimask_output=True`` and the mask with
the highest predicted IoU is kept, as SAM's ``SamPredictor.predict`` documentation recommends.
Every other prompt (a box, several points, points + box) uses ``multimask_output=False``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from mtcolor.image_io import to_float_image

__all__ = [
    "SAM_CHECKPOINTS_URL",
    "SAM_MODEL_TYPES",
    "SamMasker",
    "check_prompts",
    "load_sam",
]

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
SAM_CHECKPOINTS_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
_OFFICIAL_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
_INSTALL_HINT = "install it with `pip install 'mtcolor[sam]'` (segment-anything + torchvision)"


def _segment_anything():
    """Import ``segment_anything`` or raise ``ImportError`` with the install hint."""
    try:
        import segment_anything
    except ImportError as err:
        raise ImportError(
            f"SAM prompts need the `segment-anything` package, which is not installed: {_INSTALL_HINT}."
        ) from err
    return segment_anything


# ----------------------------------------------------------------------------------------------------
# Prompt validation
# ----------------------------------------------------------------------------------------------------


def _as_float_array(value, name: str, shape_hint: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} is {value!r}; expected {shape_hint} of numbers.") from err
    if not np.isfinite(array).all():
        raise ValueError(f"{name} is {value!r}; coordinates must be finite numbers.")
    return array


def _instance_points(value, index: int, height: int, width: int) -> np.ndarray | None:
    """``points[index]`` -> float array (k, 2) of (x, y), or ``None``."""
    if value is None:
        return None
    name = f"points[{index}]"
    array = _as_float_array(value, name, "a list of (x, y) pairs")
    if array.shape == (2,):  # one (x, y) pair given without the enclosing list
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
        raise ValueError(
            f"{name} has shape {array.shape}; each instance needs a non-empty list of (x, y) points, "
            "e.g. points=[[(120, 80)], [(40, 30), (52, 36)]] for two instances."
        )
    outside = (array[:, 0] < 0) | (array[:, 0] >= width) | (array[:, 1] < 0) | (array[:, 1] >= height)
    if outside.any():
        x, y = array[np.argmax(outside)]
        raise ValueError(
            f"{name} contains the point (x={x:g}, y={y:g}), outside the {width}x{height} (W x H) image; "
            f"points need 0 <= x < {width} and 0 <= y < {height} in pixels of the input image."
        )
    return array


def _instance_box(value, index: int, height: int, width: int) -> np.ndarray | None:
    """``boxes[index]`` -> float array (4,) ``x0, y0, x1, y1``, or ``None``."""
    if value is None:
        return None
    name = f"boxes[{index}]"
    array = _as_float_array(value, name, "an (x0, y0, x1, y1) box")
    if array.shape != (4,):
        raise ValueError(f"{name} is {value!r}; each box must be 4 numbers (x0, y0, x1, y1) in pixels.")
    x0, y0, x1, y1 = array
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(
            f"{name} is (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}); boxes need "
            f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} for this {width}x{height} (W x H) image."
        )
    return array


def check_prompts(
    points, boxes, height: int, width: int
) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    """Validate SAM prompts for an image of ``height x width`` pixels (no model needed).

    Args:
        points: ``None`` or a sequence with, per instance, a list of ``(x, y)`` foreground points
            (or ``None`` for an instance prompted by its box only).
        boxes: ``None`` or a sequence with, per instance, one ``(x0, y0, x1, y1)`` box (or ``None``).
        height, width: image size in pixels.

    Returns:
        One ``(points (k, 2) float64 or None, box (4,) float64 or None)`` pair per instance.

    Raises:
        ValueError: no prompts, different numbers of ``points`` and ``boxes`` instances, an instance
            with neither, malformed or out-of-image coordinates.
    """
    if points is None and boxes is None:
        raise ValueError(
            "points and boxes are both None; give per instance a list of (x, y) points or a box."
        )
    for name, value in (("points", points), ("boxes", boxes)):
        if value is not None and (
            isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray))
        ):
            raise TypeError(
                f"{name} has type {type(value).__name__}; expected a list with one entry per instance."
            )
    if points is not None and boxes is not None and len(points) != len(boxes):
        raise ValueError(
            f"points has {len(points)} instances but boxes has {len(boxes)}; when both are given, entry i of "
            "each prompts instance i, so pass the same number (use None for an instance without one of them)."
        )
    count = len(points) if points is not None else len(boxes)
    if count == 0:
        raise ValueError("points/boxes are empty; give at least one instance prompt.")
    prompts = []
    for i in range(count):
        instance_points = _instance_points(points[i], i, height, width) if points is not None else None
        instance_box = _instance_box(boxes[i], i, height, width) if boxes is not None else None
        if instance_points is None and instance_box is None:
            raise ValueError(
                f"instance {i} has neither points nor a box (both None); give at least one of them."
            )
        prompts.append((instance_points, instance_box))
    return prompts


# ----------------------------------------------------------------------------------------------------
# Model loading
# ----------------------------------------------------------------------------------------------------


def _check_checkpoint_path(checkpoint) -> str:
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint has type {type(checkpoint).__name__}; expected the path of a local SAM checkpoint "
            f"(.pth) downloaded from {SAM_CHECKPOINTS_URL}."
        )
    path = os.fspath(checkpoint)
    if path.startswith(("http://", "https://")):
        raise ValueError(
            f"checkpoint is the URL {path!r}; mtcolor never downloads weights. Download the official SAM "
            f"checkpoint yourself (from {SAM_CHECKPOINTS_URL}) and pass its local path."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"SAM checkpoint {path!r} is not a file. Download an official checkpoint (e.g. "
            f"{_OFFICIAL_FILES['vit_b']} for vit_b) from {SAM_CHECKPOINTS_URL} and pass its local path."
        )
    return path


def _check_model_type(model_type) -> str:
    if model_type not in SAM_MODEL_TYPES:
        raise ValueError(
            f"model_type is {model_type!r}; expected one of {', '.join(SAM_MODEL_TYPES)} (the ViT size of the "
            f"checkpoint: {', '.join(f'{k} = {v}' for k, v in _OFFICIAL_FILES.items())})."
        )
    return model_type


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_sam(checkpoint, model_type: str = "vit_b", device=None):
    """Build a SAM model with ``segment_anything.sam_model_registry`` and load a local checkpoint.

    The weights are read with ``torch.load(checkpoint, map_location="cpu", weights_only=True)`` and
    checked key by key against the architecture of ``model_type`` before ``load_state_dict``.

    Args:
        checkpoint: path of a local official SAM checkpoint (``sam_vit_b_01ec64.pth``,
            ``sam_vit_l_0b3195.pth`` or ``sam_vit_h_4b8939.pth``; see :data:`SAM_CHECKPOINTS_URL`).
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``, matching the checkpoint.
        device: where to put the model; ``None`` = CUDA when available, else CPU.

    Returns:
        ``segment_anything.modeling.Sam`` in eval mode.
    """
    path = _check_checkpoint_path(checkpoint)
    model_type = _check_model_type(model_type)
    sam_model_registry = _segment_anything().sam_model_registry
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"checkpoint {path!r} could not be read as a SAM state dict with torch.load(weights_only=True) "
            f"({first_line}); pass an official SAM .pth checkpoint from {SAM_CHECKPOINTS_URL}."
        ) from err
    if not isinstance(state_dict, dict):
        raise ValueError(
            f"checkpoint {path!r} holds a {type(state_dict).__name__}, not a state dict; pass an official "
            f"SAM .pth checkpoint from {SAM_CHECKPOINTS_URL}."
        )
    model = sam_model_registry[model_type]()  # architecture only: randomly initialised
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        k
        for k in set(expected) & set(state_dict)
        if not isinstance(state_dict[k], torch.Tensor) or state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        examples = ", ".join((missing + unexpected + mismatched)[:3])
        raise ValueError(
            f"checkpoint {path!r} does not match model_type {model_type!r}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(mismatched)} differently-shaped tensors (e.g. {examples}). "
            f"Pass the model_type of the checkpoint ({', '.join(f'{v} -> {k}' for k, v in _OFFICIAL_FILES.items())})."
        )
    model.load_state_dict(state_dict)
    return model.to(device if device is not None else _default_device()).eval()


# ----------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------


def _sam_rgb(image) -> np.ndarray:
    """Any image accepted by :func:`mtcolor.image_io.to_float_image` -> uint8 RGB (H, W, 3)."""
    array = to_float_image(image, "image")  # (H, W, 1|3) in [0, 1]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.round(array * 255.0).astype(np.uint8)


class SamMasker:
    """Instance masks from SAM point / box prompts.

    Args:
        model: a local SAM checkpoint path (built with :func:`load_sam`) or a built
            ``segment_anything.modeling.Sam``. It runs where its weights are (CUDA or CPU).
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``, matching the checkpoint (ignored for a
            built model).
        device: device for a model built from a checkpoint; ``None`` = CUDA when available, else CPU.

    Example::

        masker = SamMasker("sam_vit_b_01ec64.pth")
        car, person = masker.masks(gray, boxes=[(10, 40, 200, 160), None],
                                   points=[None, [(320, 90), (322, 140)]])
        image = pipe(gray, [car, person], ["a red car", "a man in a blue coat"]).images[0]
    """

    def __init__(self, model, model_type: str = "vit_b", device=None):
        segment_anything = _segment_anything()
        if isinstance(model, (str, os.PathLike)):
            model = load_sam(model, model_type, device=device)
        if not isinstance(model, segment_anything.modeling.Sam):
            raise TypeError(
                f"model has type {type(model).__name__}; expected a local SAM checkpoint path or a "
                "segment_anything.modeling.Sam."
            )
        self.model = model.eval()
        self.predictor = segment_anything.SamPredictor(self.model)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def masks(self, image, boxes=None, points=None) -> list[np.ndarray]:
        """One SAM mask per instance prompt.

        Args:
            image: gray or RGB image in any form :func:`mtcolor.image_io.to_float_image` accepts
                (PIL, numpy (H, W[, C]), tensor ([C,] H, W)); gray is repeated to RGB.
            boxes: per instance one ``(x0, y0, x1, y1)`` box (or ``None``), in pixels.
            points: per instance a list of ``(x, y)`` foreground points (or ``None``), in pixels.

        Returns:
            A list with one bool numpy array (H, W) per instance, at the image's size, in prompt order.
        """
        rgb = _sam_rgb(image)  # (H, W, 3) uint8
        height, width = rgb.shape[:2]
        prompts = check_prompts(points, boxes, height, width)
        self.predictor.set_image(rgb, image_format="RGB")
        try:
            masks = []
            for i, (instance_points, box) in enumerate(prompts):
                single_click = box is None and len(instance_points) == 1
                predicted, scores, _ = self.predictor.predict(
                    point_coords=instance_points,
                    point_labels=None
                    if instance_points is None
                    else np.ones(len(instance_points), dtype=np.int64),
                    box=box,
                    multimask_output=single_click,
                )  # predicted: (1 or 3, H, W) bool; scores: (1 or 3,) predicted IoU
                mask = np.ascontiguousarray(predicted[int(np.argmax(scores))]).astype(bool)
                if not mask.any():
                    warnings.warn(
                        f"SAM returned an empty mask for instance {i}; check its prompt.", stacklevel=2
                    )
                masks.append(mask)
        finally:
            self.predictor.reset_image()  # free the image embedding
        return masks
