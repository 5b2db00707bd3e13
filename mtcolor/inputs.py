"""Normalise what a user passes to a colorization pipeline into per-sample tensors.

A *sample* is one gray image with its instance masks and texts. Single inputs and batches are both
accepted: ``image`` may be one image or a list of images; then ``masks`` / ``texts`` are per-sample
lists.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from .color import image_luminance
from .masks import masks_to_label_map


@dataclass
class Sample:
    """One colorization request.

    Attributes:
        lightness: (1, H, W) the input's Lab L in [0, 100] at the input's own resolution.
        label_map: (H, W) int64 label map (0 = background) or None without instances.
        texts: the instance texts (``len(texts) == label_map.max()``).
        prompt: the global prompt ("" if none).
        negative_prompt: the negative prompt ("" if none).
    """

    lightness: torch.Tensor
    label_map: torch.Tensor | None
    texts: list[str]
    prompt: str
    negative_prompt: str

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.lightness.shape[-2:])


def _is_single_image(obj) -> bool:
    if isinstance(obj, PIL.Image.Image):
        return True
    if isinstance(obj, np.ndarray) and obj.ndim in (2, 3):
        return True
    return isinstance(obj, torch.Tensor) and obj.ndim in (2, 3)


def _broadcast(value, batch: int, name: str, default):
    if value is None:
        return [default] * batch
    if isinstance(value, str):
        return [value] * batch
    value = list(value)
    if len(value) != batch:
        raise ValueError(
            f"{name} has {len(value)} entries but there are {batch} images; give one per image or a single str."
        )
    return value


def prepare_samples(image, masks=None, texts=None, prompt=None, negative_prompt=None) -> list[Sample]:
    """Validate and normalise pipeline inputs into :class:`Sample` objects.

    Raises ``ValueError`` / ``TypeError`` naming the argument, the value received and the fix.
    """
    if image is None:
        raise ValueError("image is None; pass a gray image (PIL, numpy (H, W[, C]) or tensor ([C,] H, W)).")
    batched = isinstance(image, (list, tuple)) or (isinstance(image, torch.Tensor) and image.ndim == 4)
    images = list(image) if batched else [image]
    if not images:
        raise ValueError("image is an empty list; pass at least one image.")
    for i, img in enumerate(images):
        if not _is_single_image(img):
            raise TypeError(
                f"image[{i}] has type {type(img).__name__}; expected a PIL image, a numpy array or a tensor."
            )
    batch = len(images)
    if batched:
        masks_list = [None] * batch if masks is None else list(masks)
        texts_list = [None] * batch if texts is None else list(texts)
        for name, values in (("masks", masks_list), ("texts", texts_list)):
            if len(values) != batch:
                raise ValueError(
                    f"{name} has {len(values)} entries but image has {batch}; give one list per image."
                )
    else:
        masks_list, texts_list = [masks], [texts]
    prompts = _broadcast(prompt, batch, "prompt", "")
    negatives = _broadcast(negative_prompt, batch, "negative_prompt", "")
    samples = []
    for b in range(batch):
        tag = f"[{b}]" if batched else ""
        lightness = image_luminance(images[b], f"image{tag}")
        sample_masks, sample_texts = masks_list[b], texts_list[b]
        if isinstance(sample_texts, str):
            sample_texts = [sample_texts]
        if (
            sample_masks is not None
            and not isinstance(sample_masks, (list, tuple))
            and getattr(sample_masks, "ndim", 0) == 2
        ):
            sample_masks = [sample_masks]
        n_masks = 0 if sample_masks is None else len(sample_masks)
        n_texts = 0 if sample_texts is None else len(sample_texts)
        if n_masks != n_texts:
            raise ValueError(
                f"masks{tag} has {n_masks} masks but texts{tag} has {n_texts} texts; give exactly one instance "
                "text per mask (or neither, for automatic colorization)."
            )
        label_map = None
        if n_masks:
            for i, text in enumerate(sample_texts):
                if not isinstance(text, str):
                    raise TypeError(
                        f"texts{tag}[{i}] has type {type(text).__name__}; instance texts must be str."
                    )
            label_map = instance_label_map(sample_masks, tuple(lightness.shape[-2:]), tag)
        samples.append(
            Sample(lightness, label_map, list(sample_texts or []), prompts[b] or "", negatives[b] or "")
        )
    return samples


def instance_label_map(
    masks, size: tuple[int, int], tag: str = "", warn_overlap: bool = True
) -> torch.Tensor:
    """One image's instance masks -> its (H, W) int64 label map, checked as the pipelines check it.

    Every mask must be readable and non-empty (:func:`~mtcolor.masks.masks_to_label_map`), have the
    image's ``size`` (H, W), and still own a pixel once overlaps are resolved (each overlapping pixel
    goes to the smallest mask: two equal masks leave the second with none).

    Args:
        masks: the image's ``n`` masks: a list of (H, W) masks or one (n, H, W) array / tensor, as
            :func:`~mtcolor.masks.masks_to_label_map` reads them.
        size: (H, W) of the image.
        tag: ``"[b]"`` for image ``b`` of a batch, in messages (``masks[b][1]``).
        warn_overlap: emit the overlap ``UserWarning`` (the pipeline's; a check ahead of it passes False).

    Raises:
        ValueError: naming the mask(s) by index (``masks[1]``), what is wrong and the fix.
    """
    label_map = masks_to_label_map(masks, warn_overlap=warn_overlap)
    if tuple(label_map.shape) != tuple(size):
        raise ValueError(
            f"masks{tag} have size {tuple(label_map.shape)} (H, W) but image{tag} is {tuple(size)}; masks must "
            "be aligned with the gray image (resize them with nearest-neighbour interpolation)."
        )
    count = len(masks)
    areas = torch.bincount(label_map.view(-1), minlength=count + 1)  # no sort of H x W
    lost = [i - 1 for i in range(1, count + 1) if areas[i] == 0]
    if lost:
        one = len(lost) == 1
        raise ValueError(
            f"masks{tag}{lost} {'owns' if one else 'own'} no pixel after overlaps were resolved (each "
            f"overlapping pixel goes to the smallest mask); remove {'it with its text' if one else 'them with their texts'} "
            f"or make {'it' if one else 'them'} smaller than the masks that cover {'it' if one else 'them'}."
        )
    return label_map


#: longest side (pixels) of a working size the pipelines run at; larger requests are refused
MAX_WORKING_SIDE = 4096
#: most elongated input the pipelines take (long side / short side): a panorama up to 8:1
MAX_ASPECT_RATIO = 8.0


def working_size(
    size: tuple[int, int], resolution: int, multiple: int = 8, name: str = "image"
) -> tuple[int, int]:
    """(H, W) -> working (h, w): short side ``resolution``, aspect kept, both multiples of ``multiple``.

    Checked, so that no input makes a pipeline allocate without bound (a 4096x1 strip at resolution
    64 would run at 262144x64): ``resolution`` must lie in [``multiple``, :data:`MAX_WORKING_SIDE`],
    the input's long side / short side must be at most :data:`MAX_ASPECT_RATIO`, and both sides of the
    working size at most :data:`MAX_WORKING_SIDE`.

    Args:
        size: (H, W) of the input in pixels (both >= 1).
        resolution: the short side of the working size (``working_resolution``).
        multiple: both working sides are multiples of it (the VAE's scale factor, 8).
        name: the input's name in error messages (``"image[1]"``).

    Raises:
        ValueError: naming the limit, the size received and the fix.
    """
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ValueError(f"{name} is {width}x{height} (W x H); pass an image with at least one pixel.")
    if not multiple <= resolution <= MAX_WORKING_SIDE:
        raise ValueError(
            f"working_resolution is {resolution}; pass a short side in [{multiple}, {MAX_WORKING_SIDE}] "
            "(mtcolor.inputs.MAX_WORKING_SIDE), e.g. 512."
        )
    short, long = min(height, width), max(height, width)
    if long > MAX_ASPECT_RATIO * short:
        raise ValueError(
            f"{name} is {width}x{height} (W x H), an aspect ratio of {long / short:.3g}:1; the pipelines take "
            f"up to {MAX_ASPECT_RATIO:g}:1 (mtcolor.inputs.MAX_ASPECT_RATIO). Crop its long side to at most "
            f"{int(MAX_ASPECT_RATIO * short)} pixels, or colorize it in pieces."
        )
    scale = resolution / short
    h = max(multiple, int(math.floor(height * scale / multiple + 0.5)) * multiple)
    w = max(multiple, int(math.floor(width * scale / multiple + 0.5)) * multiple)
    if max(h, w) > MAX_WORKING_SIDE:
        fit = max(multiple, int(MAX_WORKING_SIDE * short / long) // multiple * multiple)
        raise ValueError(
            f"{name} is {width}x{height} (W x H): at working_resolution {resolution} the model would run at "
            f"{w}x{h}, more than {MAX_WORKING_SIDE} pixels on a side (mtcolor.inputs.MAX_WORKING_SIDE); pass "
            f"working_resolution={fit} or less."
        )
    return h, w


def prepare_pipeline_samples(
    image, masks, texts, prompt, negative_prompt, instance_prompt_embeds=None, instance_pooled_embeds=None
) -> tuple[list[Sample], bool, list | None, list | None]:
    """:func:`prepare_samples` for a pipeline call that may pass instance embeddings instead of texts.

    Returns ``(samples, batched, instance_prompt_embeds, instance_pooled_embeds)``: ``batched``
    tells whether ``image`` was a batch (a list or a 4-D tensor); the instance embeddings become one
    tensor per image (or None). Instances given as embeddings are named after them in warnings.
    """
    batched = isinstance(image, (list, tuple)) or (isinstance(image, torch.Tensor) and image.ndim == 4)
    count = len(image) if batched else 1
    hidden = per_image_embeds(instance_prompt_embeds, "instance_prompt_embeds", batched, count, 3)
    pooled = per_image_embeds(instance_pooled_embeds, "instance_pooled_embeds", batched, count, 2)
    if pooled is not None:
        if texts is not None:
            raise ValueError("texts and instance_pooled_embeds are both given; pass only one of them.")
        texts = [
            [f"instance_pooled_embeds{f'[{b}]' if batched else ''}[{i}]" for i in range(len(p))]
            for b, p in enumerate(pooled)
        ]
        per_image_masks = list(masks) if batched and masks is not None else [masks]
        for b, (m, names) in enumerate(zip(per_image_masks, texts)):
            n_masks = 0 if m is None else (1 if getattr(m, "ndim", 0) == 2 else len(m))
            if n_masks != len(names):
                tag = f"[{b}]" if batched else ""
                raise ValueError(
                    f"masks{tag} has {n_masks} masks but instance_pooled_embeds{tag} has {len(names)} rows; "
                    "give exactly one embedding per mask."
                )
        texts = texts if batched else texts[0]
    samples = prepare_samples(image, masks, texts, prompt, negative_prompt)
    return samples, batched, hidden, pooled


def per_image_embeds(value, name: str, batched: bool, count: int, ndim: int) -> list | None:
    """Instance embeddings -> one tensor per image (a tensor for one image, a list for a batch)."""
    if value is None:
        return None
    items = [value] if isinstance(value, torch.Tensor) and not batched else value
    if not isinstance(items, (list, tuple)) or len(items) != count:
        what = f"a list of {len(items)}" if isinstance(items, (list, tuple)) else type(value).__name__
        raise ValueError(
            f"{name} is {what}; pass one tensor per input image ({count}): a tensor for a single image, "
            "a list for a batch."
        )
    for b, item in enumerate(items):
        if not isinstance(item, torch.Tensor) or item.ndim != ndim:
            got = f"shape {tuple(item.shape)}" if isinstance(item, torch.Tensor) else type(item).__name__
            raise ValueError(f"{name}[{b}] has {got}; expected a {ndim}-D tensor (one row per instance).")
    return list(items)


def texts_and_names(value, name: str, batch_size: int | None) -> tuple[list[str], list[str]]:
    """A prompt argument (None, str or list) -> one text per image and how warnings name it."""
    if value is None or isinstance(value, str):
        count = batch_size or 1
        return [value or ""] * count, [name] * count
    texts = [text or "" for text in value]
    if batch_size is not None and len(texts) != batch_size:
        raise ValueError(
            f"{name} has {len(texts)} entries for {batch_size} images; pass one per image or a str."
        )
    return texts, [f"{name}[{i}]" for i in range(len(texts))]


def check_number(name: str, value, low: float | None, high: float | None, hint: str) -> None:
    """A finite real number in [low, high], else TypeError / ValueError naming ``name``."""
    bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number in {bounds}, got {value!r} ({type(value).__name__}); pass a float "
            f"({hint})."
        )
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}; pass a float ({hint}).")
