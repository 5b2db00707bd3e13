"""UI values -> one checked colorization request (no model involved).

Everything a user can get wrong is checked here, before the pipeline runs, and raises
``ValueError`` with a message that names the field, the value received and the fix: the image
(readable, not too large), each instance (a text *and* a mask or a SAM prompt; masks aligned with
the image) and the settings (in range). Pipeline errors that remain are shown the same way by the app.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
import PIL.Image

from mtcolor.image_io import exif_orientation, upright

#: instance rows in the page (the VOC example has 19 instances)
MAX_INSTANCES = 20
#: largest input the server accepts, in pixels (4096 x 4096)
MAX_PIXELS = 4096 * 4096
#: instance texts longer than this are refused (the text encoders truncate far earlier)
MAX_TEXT_CHARS = 500
#: the largest working size (pixels) a request may run at: the square of the largest working
#: resolution the page offers, so no image shape costs more memory or time than that square
MAX_WORKING_PIXELS = 1024 * 1024
#: the working resolution the pipeline runs at is capped so that no request can exhaust the server
LIMITS = {
    "num_inference_steps": (1, 200),
    "guidance_scale": (0.0, 30.0),
    "alpha": (0.0, 1.0),
    "beta": (0.0, 10.0),
    "working_resolution": (8, 1024),
    "seed": (-1, 2**63 - 1),
}
FUSIONS = ("paper", "normalized", "no_crop")
ATTENTION_MODES = ("renormalized", "paper")
#: key of ``PIL.Image.info`` where :func:`open_image` records the EXIF orientation it applied
ORIENTATION_NOTE = "mtcolor.exif_orientation"
_MASK_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F", "P", "PA", "RGB", "RGBA")


@dataclass
class Settings:
    """Sampling settings of one request (MT-Color only; L-CoIns is one pass)."""

    num_inference_steps: int = 20
    guidance_scale: float = 2.0
    alpha: float = 0.2
    beta: float = 0.2
    seed: int = 0
    attention_mode: str = "renormalized"
    fusion: str = "paper"
    working_resolution: int = 64


@dataclass
class Instance:
    """One instance: its text and its mask (bool (H, W)), or a SAM prompt resolved later."""

    index: int  # 1-based row number in the page
    text: str
    mask: np.ndarray | None = None
    sam_points: list[tuple[float, float]] | None = None
    sam_box: tuple[float, float, float, float] | None = None


@dataclass
class ColorizeRequest:
    """A checked request.

    Attributes:
        image: the input as uploaded (any mode, 8/16-bit); the pipelines take its luminance.
        instances: the instances in row order (empty rows dropped).
        prompt: the global prompt.
        settings: sampling settings.
        notes: things the user should know about the input ("colour input converted ...").
    """

    image: PIL.Image.Image
    instances: list[Instance]
    prompt: str
    settings: Settings
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the input."""
        return self.image.size

    @property
    def texts(self) -> list[str]:
        return [instance.text for instance in self.instances]


def file_path(value):
    """The file path in what gradio passes for an uploaded file (a path, or a dict / FileData with one)."""
    if isinstance(value, dict):
        value = value.get("path")
    return getattr(value, "path", value)


def _path(value, name: str) -> str:
    value = file_path(value)
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name} is a {type(value).__name__}; upload an image file.")
    if not os.path.isfile(value):
        raise ValueError(
            f"{name}: the uploaded file is gone ({os.path.basename(str(value))!r}); upload it again."
        )
    return os.fspath(value)


def open_image(value, name: str = "the input image") -> PIL.Image.Image:
    """Open an uploaded image fully (any PIL mode), refusing unreadable or oversized files.

    An EXIF orientation (phone photos) is applied (:func:`mtcolor.image_io.upright`): the image, its
    size and its masks are as viewers show them; ``info[ORIENTATION_NOTE]`` keeps the tag applied.
    """
    path = _path(value, name)
    try:
        image = PIL.Image.open(path)
    except (OSError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(
            f"{name} is not an image this server can read ({type(err).__name__}); upload a PNG, JPEG, TIFF or WebP."
        ) from err
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ValueError(
            f"{name} is {width}x{height} = {width * height / 1e6:.1f} MP; the server accepts up to "
            f"{MAX_PIXELS / 1e6:.1f} MP (e.g. 4096x4096). Downscale it first."
        )
    if width < 1 or height < 1:
        raise ValueError(f"{name} is {width}x{height}; upload a non-empty image.")
    try:
        image.load()
    except (OSError, ValueError) as err:
        raise ValueError(f"{name} is truncated or corrupt ({err}); upload it again.") from err
    orientation = exif_orientation(image)
    if orientation != 1:  # a phone photo: used as viewers show it, masks are drawn on that view
        image = upright(image)
        image.info[ORIENTATION_NOTE] = orientation
    return image


def describe_input(image: PIL.Image.Image) -> list[str]:
    """Notes on an input: colour (its luminance is used), bit depth, transparency, EXIF orientation."""
    notes = []
    bits = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}.get(image.mode, 8)
    if is_colour(image):
        notes.append(
            "Colour input: converted to its luminance (Lab L); its colours are discarded and predicted anew."
        )
    if bits != 8:
        notes.append(f"{bits}-bit input ({image.mode}): read at full precision.")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        notes.append("The alpha channel is ignored.")
    if image.info.get(ORIENTATION_NOTE):
        notes.append(
            f"Turned upright by its EXIF orientation ({image.info[ORIENTATION_NOTE]}): used as viewers show it, "
            f"{image.size[0]}x{image.size[1]}; masks must match that view."
        )
    return notes


def is_colour(image: PIL.Image.Image, tolerance: int = 2) -> bool:
    """Whether an image has colour (its channels differ by more than ``tolerance`` / 255 somewhere)."""
    if image.mode in ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F"):
        return False
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool(np.abs(rgb - rgb[..., :1]).max() > tolerance)


def gray_preview(image: PIL.Image.Image) -> PIL.Image.Image:
    """The 8-bit gray image the model sees (Lab L as sRGB gray), for display and the 'before' side."""
    import torch

    from mtcolor.color import image_luminance, luminance_to_gray

    gray = luminance_to_gray(image_luminance(image)[None])[0, 0]  # (H, W) in [0, 1]
    return PIL.Image.fromarray((gray.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), mode="L")


def read_mask(value, index: int, size: tuple[int, int]) -> np.ndarray:
    """An uploaded mask -> bool (H, W): white (> 50%) is the instance; a transparent PNG uses its alpha.

    Single-channel masks follow the library's rule (:mod:`mtcolor.masks`, the one
    :func:`~mtcolor.masks.masks_to_label_map` applies to pipeline calls): 0/1 when the maximum is 1,
    else 0/255 for 8-bit, 0/65535 for 16-bit (PNG ``I;16``), and for 32-bit integers (mode ``I``,
    e.g. TIFF) 0/255 or 0/65535 by the value range; float (mode ``F``) in [0, 1]. Colour masks are
    read through their luminance.

    Args:
        value: the uploaded file (path).
        index: 1-based instance row (for messages).
        size: (W, H) of the input image; the mask must have exactly this size.
    """
    name = f"instance {index}'s mask"
    image = open_image(value, name)
    if image.size != tuple(size):
        raise ValueError(
            f"{name} is {image.size[0]}x{image.size[1]} but the image is {size[0]}x{size[1]} (W x H); "
            "masks must be aligned with the image (same size)."
        )
    if image.mode not in _MASK_MODES:
        image = image.convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:  # a transparent PNG: the painted (opaque) part is the instance
            return alpha > 127
        image = image.convert("RGB" if image.mode == "RGBA" else "L")
    if image.mode == "RGB":
        image = image.convert("L")
    from mtcolor.masks import masks_to_label_map

    try:  # one mask: label 1 is the instance; an empty one is refused by build_request
        return masks_to_label_map([image], allow_empty=True).numpy() == 1
    except ValueError as err:  # the library names the mask "masks[0]"
        raise ValueError(str(err).replace("masks[0]", name)) from None


def painted_mask(editor_value, size: tuple[int, int]) -> np.ndarray | None:
    """The union of everything painted in a ``gr.ImageEditor`` value (its layers' alpha) at ``size`` (W, H).

    Returns None when nothing is painted.
    """
    if not isinstance(editor_value, dict):
        return None
    painted = None
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        array = np.asarray(layer)
        if array.ndim != 3 or array.shape[-1] not in (2, 4):
            continue
        alpha = array[..., -1] > 0
        painted = alpha if painted is None or painted.shape != alpha.shape else painted | alpha
    if painted is None or not painted.any():
        return None
    if painted.shape != (size[1], size[0]):
        painted = np.asarray(PIL.Image.fromarray(painted).resize(size, PIL.Image.NEAREST))
    return painted


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_sam_prompt(text: str, index: int) -> tuple[list | None, tuple | None]:
    """A SAM prompt typed in an instance row -> ``(points, box)`` in image pixels.

    Forms: ``box x0,y0,x1,y1``; ``points x,y; x,y`` (or ``x,y`` pairs without the word); both may
    appear, separated by ``|`` (``box 4,4,60,40 | points 30,20``).
    """
    points, box = None, None
    for part in (p.strip() for p in text.split("|")):
        if not part:
            continue
        word = part.split(None, 1)[0].lower()
        body = part.split(None, 1)[1] if word in ("box", "points", "point") and " " in part else part
        numbers = [float(n) for n in re.findall(_NUMBER, body)]
        if word == "box" or (word not in ("points", "point") and len(numbers) == 4 and ";" not in body):
            if len(numbers) != 4 or box is not None:
                raise ValueError(
                    f"instance {index}'s SAM prompt {text!r}: a box is four numbers x0,y0,x1,y1 "
                    "(e.g. box 10,20,200,160)."
                )
            box = tuple(numbers)
        else:
            if not numbers or len(numbers) % 2:
                raise ValueError(
                    f"instance {index}'s SAM prompt {text!r}: points are x,y pairs (e.g. points 120,80; 130,95)."
                )
            points = (points or []) + [tuple(numbers[i : i + 2]) for i in range(0, len(numbers), 2)]
    if points is None and box is None:
        raise ValueError(f"instance {index}'s SAM prompt {text!r} is empty; give a box or points.")
    if not all(math.isfinite(v) for v in [*(box or ()), *(c for p in points or () for c in p)]):
        raise ValueError(f"instance {index}'s SAM prompt {text!r} has non-finite numbers.")
    return points, box


def _number(value, name: str, integer: bool = False):
    low, high = LIMITS[name]
    label = name.replace("_", " ")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{label} is {value!r}; enter a number in [{low}, {high}].") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{label} is {value!r}; enter a number in [{low}, {high}].")
    if integer:
        if float(value) != int(value):
            raise ValueError(f"{label} is {value!r}; enter a whole number in [{low}, {high}].")
        value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{label} is {value}; enter a value in [{low}, {high}].")
    return value


def check_settings(
    num_inference_steps,
    guidance_scale,
    alpha,
    beta,
    seed,
    attention_mode,
    fusion,
    working_resolution,
) -> Settings:
    """Settings from the UI, each checked against :data:`LIMITS` and the allowed choices."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion is {fusion!r}; choose one of {list(FUSIONS)}.")
    if attention_mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode is {attention_mode!r}; choose one of {list(ATTENTION_MODES)}.")
    seed = _number(seed if seed is not None else -1, "seed", integer=True)
    return Settings(
        num_inference_steps=_number(num_inference_steps, "num_inference_steps", integer=True),
        guidance_scale=float(_number(guidance_scale, "guidance_scale")),
        alpha=float(_number(alpha, "alpha")),
        beta=float(_number(beta, "beta")),
        seed=seed,
        attention_mode=attention_mode,
        fusion=fusion,
        working_resolution=_number(working_resolution, "working_resolution", integer=True),
    )


def check_working_size(size: tuple[int, int], resolution: int, multiple: int = 8) -> tuple[int, int]:
    """The working size (h, w) an MT-Color run of an input of ``size`` (W, H) would take, checked.

    The library's limits (:func:`mtcolor.inputs.working_size`: aspect ratio, longest side) and this
    server's budget, :data:`MAX_WORKING_PIXELS`: a request beyond it is refused before the pipeline
    runs, with the largest working resolution that fits.
    """
    from mtcolor.inputs import working_size

    width, height = size
    h, w = working_size((height, width), resolution, multiple, name="the input image")
    if h * w > MAX_WORKING_PIXELS:
        short, long = min(width, height), max(width, height)
        fit = max(multiple, int(math.sqrt(MAX_WORKING_PIXELS * short / long)) // multiple * multiple)
        side = math.isqrt(MAX_WORKING_PIXELS)
        raise ValueError(
            f"the input image is {width}x{height}: at working resolution {resolution} the model would run at "
            f"{w}x{h} = {w * h / 1e6:.1f} MP, more than this server runs ({MAX_WORKING_PIXELS / 1e6:.1f} MP, "
            f"{side}x{side}); lower the working resolution to {fit} or crop the image."
        )
    return h, w


def check_text(value, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} is a {type(value).__name__}; type a text.")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"{name} has {len(value)} characters; keep it under {MAX_TEXT_CHARS}.")
    return " ".join(value.split())


def build_request(
    image,
    texts: list,
    masks: list,
    sam_prompts: list | None = None,
    prompt: str | None = "",
    settings: Settings | None = None,
    sam_enabled: bool = False,
) -> ColorizeRequest:
    """Check the page's values and turn them into a :class:`ColorizeRequest`.

    Args:
        image: the uploaded input image (path).
        texts, masks, sam_prompts: per instance row (same length, at most :data:`MAX_INSTANCES`);
            rows with neither text, mask nor SAM prompt are ignored.
        prompt: the global prompt.
        settings: checked settings (default :class:`Settings`).
        sam_enabled: whether the server has a SAM checkpoint (else SAM prompts are refused).
    """
    if image is None:
        raise ValueError("no input image: upload a gray (or colour) photo, or click an example.")
    rows = len(texts)
    sam_prompts = list(sam_prompts) if sam_prompts is not None else [None] * rows
    if not (len(masks) == len(sam_prompts) == rows) or rows > MAX_INSTANCES:
        raise ValueError(
            f"got {rows} instance texts, {len(masks)} masks and {len(sam_prompts)} SAM prompts; the page sends "
            f"one of each per instance row (at most {MAX_INSTANCES})."
        )
    picture = open_image(image)
    notes = describe_input(picture)
    instances = []
    for row, (text, mask, sam) in enumerate(zip(texts, masks, sam_prompts), start=1):
        text = check_text(text, f"instance {row}'s text")
        sam = check_text(sam, f"instance {row}'s SAM prompt")
        if not text and mask is None and not sam:
            continue
        if not text:
            raise ValueError(
                f'instance {row} has a mask but no text; type what it should look like ("a red car").'
            )
        instance = Instance(index=row, text=text)
        if mask is not None:
            instance.mask = read_mask(mask, row, picture.size)
            if not instance.mask.any():
                raise ValueError(f"instance {row}'s mask is empty (no white pixel); upload or paint a mask.")
        elif sam:
            if not sam_enabled:
                raise ValueError(
                    f"instance {row} has a SAM prompt but this server has no SAM checkpoint; start it with "
                    "`mtcolor ui --sam_checkpoint PATH`, or give a mask."
                )
            instance.sam_points, instance.sam_box = parse_sam_prompt(sam, row)
        else:
            hint = ", paint one or give a SAM prompt" if sam_enabled else " or paint one"
            raise ValueError(f"instance {row} ({text!r}) has no mask; upload a mask{hint}.")
        instances.append(instance)
    return ColorizeRequest(
        image=picture,
        instances=instances,
        prompt=check_text(prompt, "the global prompt"),
        settings=settings or Settings(),
        notes=notes,
    )
