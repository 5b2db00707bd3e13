"""A checked request -> one pipeline call -> what the page shows.

The colorization is the pipeline's: :func:`colorize` resolves SAM prompts to masks
(the session's :class:`mtcolor.sam.SamMasker`), makes **one** call to ``MTColorPipeline`` (masks + texts +
prompt + settings) or ``LCoInsPipeline`` (one caption), records the warnings the pipeline emits
(overlapping masks, instances too small for an attention grid) and measures each instance's colour
against its target (:func:`mtcolor.webui.colors.color_table`: CIEDE2000 at the same L). An edit
(``edit_from``: the previous pipeline output, ``edit_instances``) is the same one call.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import PIL.Image

from .colors import color_table, row_target
from .inputs import ColorizeRequest


@dataclass
class ColorizeResult:
    """What one run returns to the page.

    Attributes:
        image: the colorized RGB image at the input's own size.
        gray: the gray image the model saw (8-bit), the 'before' side of the comparison.
        masks: the resolved instance masks (bool (H, W), SAM ones included), in instance order.
        table: one row per instance, :data:`TABLE_HEADERS`.
        warnings: the pipeline's warnings, de-duplicated, in order.
        caption: the caption L-CoIns was given (None for MT-Color).
        seconds: wall time of the pipeline call.
        output: the MT-Color pipeline's output (its ``edit_states`` make the next edit), else None.
        targets / reasons: per instance the colour target (:func:`mtcolor.webui.colors.row_target`) or None
            and why there is none.
    """

    image: PIL.Image.Image
    gray: PIL.Image.Image
    masks: list[np.ndarray]
    table: list[list]
    warnings: list[str] = field(default_factory=list)
    caption: str | None = None
    seconds: float = 0.0
    output: object = None
    targets: list = field(default_factory=list)
    reasons: list = field(default_factory=list)


def lcoins_caption(request: ColorizeRequest) -> str:
    """L-CoIns colorizes from one caption: the global prompt, else the instance texts joined."""
    if request.prompt:
        return request.prompt
    return " and ".join(request.texts)


def resolve_masks(request: ColorizeRequest, sam_masker=None):
    """Bool masks (H, W) for every instance; SAM prompts are run through ``sam_masker`` (a
    :class:`mtcolor.sam.SamMasker`, or a callable returning one, built when first needed)."""
    masks = [instance.mask for instance in request.instances]
    pending = [i for i, instance in enumerate(request.instances) if instance.mask is None]
    if pending:
        if sam_masker is None:
            raise ValueError(
                "SAM prompts need a SAM checkpoint; start the server with --sam_checkpoint PATH."
            )
        masker = sam_masker() if callable(sam_masker) else sam_masker
        sam_masks = masker.masks(
            request.image,
            boxes=[request.instances[i].sam_box for i in pending],
            points=[request.instances[i].sam_points for i in pending],
        )
        for i, mask in zip(pending, sam_masks):
            if not np.asarray(mask).any():
                raise ValueError(
                    f"instance {request.instances[i].index}'s SAM prompt gave an empty mask; move the box or points."
                )
            masks[i] = np.asarray(mask, dtype=bool)
    return masks


def colorize(
    pipe,
    kind: str,
    request: ColorizeRequest,
    *,
    sam_masker=None,
    on_step: Callable[[int, int], None] | None = None,
    edit_from=None,
    edit_instances: list[int] | None = None,
) -> ColorizeResult:
    """Colorize a checked request with one pipeline call.

    Args:
        pipe: a loaded ``MTColorPipeline`` (``kind="mtcolor"``) or ``LCoInsPipeline`` (``kind="lcoins"``).
        request: from :func:`mtcolor.webui.inputs.build_request`.
        sam_masker: a :class:`mtcolor.sam.SamMasker` (or a callable building one when first needed)
            for instances given by prompts; None refuses SAM prompts.
        on_step: ``f(done, total)`` after every denoising step (the page's progress bar).
        edit_from / edit_instances: re-colour instances (0-based into the request's instances) of a
            previous MT-Color output, keeping every other pixel (``MTColorPipeline``'s edit).
    """
    import torch

    from .inputs import gray_preview

    masks = resolve_masks(request, sam_masker)
    texts = request.texts
    settings = request.settings
    resolved = [row_target(i.text, i.color.hex if i.color else None, i.index) for i in request.instances]
    explicit = [instance.color for instance in request.instances]
    caption, output = None, None
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if kind == "mtcolor":
            generator = torch.Generator().manual_seed(settings.seed) if settings.seed >= 0 else None
            total = settings.num_inference_steps

            def step_end(_pipe, step, _timestep, tensors):
                if on_step is not None:
                    on_step(step + 1, total)
                return {}

            output = pipe(
                request.image,
                masks or None,
                texts or None,
                prompt=request.prompt,
                num_inference_steps=settings.num_inference_steps,
                guidance_scale=settings.guidance_scale,
                alpha=settings.alpha,
                beta=settings.beta,
                fusion=settings.fusion,
                working_resolution=settings.working_resolution,
                switches={"attention_mode": settings.attention_mode},
                generator=generator,
                callback_on_step_end=step_end,
                output_type="pil",
                colors=explicit if any(c is not None for c in explicit) else None,
                edit_from=edit_from,
                edit_instances=edit_instances,
            )
            image = output.images[0]
        elif kind == "lcoins":
            caption = lcoins_caption(request)
            image = pipe(request.image, caption, output_type="pil").images[0]
        else:
            raise ValueError(f"model kind {kind!r}; expected 'mtcolor' or 'lcoins'.")
    seconds = time.perf_counter() - start
    messages = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    return ColorizeResult(
        image=image.convert("RGB"),
        gray=gray_preview(request.image),
        masks=masks,
        table=color_table(image, masks, texts, [t for t, _ in resolved], [r for _, r in resolved]),
        warnings=messages,
        caption=caption,
        seconds=seconds,
        output=output,
        targets=[t for t, _ in resolved],
        reasons=[r for _, r in resolved],
    )
