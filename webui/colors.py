"""Colour targets in the page: what each instance row asks for, and how close the result came.

* :func:`row_target` - a row's target: its explicit colour (the picker / colour field: ``"#d0302a"``,
  ``"rgb(208, 48, 42)"``, ``"crimson"``), else the colour its text names
  (:func:`mtcolor.color_targets.color_from_text`: "a lemon star", "a car #ff8800"), else none with
  the reason ("no colour word", "several colours: red, white"). The pipeline resolves targets by the
  same rule (``colors=`` with ``colors_from_texts=True``).
* :func:`color_table` - per instance: the target, the measured colour and CIEDE2000 between them at
  the instance's own L (:func:`mtcolor.metrics.instance_color_errors`); a row passes at deltaE00 <=
  :data:`PASS_DELTA_E`, and a "no" says why (:func:`miss_reason`).
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image

#: deltaE00 at the same L at or below which an instance has its target colour (GenColorBench's 5)
PASS_DELTA_E = 5.0
#: a "no" blames the hue when it is off by more than this many degrees
HUE_TOLERANCE = 15.0
#: ... and the chroma when it differs by more than this (Lab units)
CHROMA_TOLERANCE = 5.0
TABLE_HEADERS = ["#", "text", "target", "measured", "ΔE00", "match", "why not"]


def parse_row_color(value, row: int):
    """A row's explicit colour -> ``ColorTarget`` or None (empty). Raises ValueError naming the row."""
    from mtcolor.color_targets import parse_color

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(f"instance {row}'s colour is a {type(value).__name__}; pick a colour or type one.")
    try:
        return parse_color(value.strip(), f"instance {row}'s colour")
    except TypeError as err:
        raise ValueError(str(err)) from None


def row_target(text: str | None, color, row: int = 1, strict: bool = True):
    """``(target, reason)`` of a row: the explicit colour wins, else the text's colour word.

    ``reason`` is ``""`` with a target, else why there is none. With ``strict=False`` an unreadable
    explicit colour gives no target and its error as the reason (the overlay never raises).
    """
    from mtcolor.color_targets import color_from_text

    try:
        explicit = parse_row_color(color, row)
    except ValueError as err:
        if strict:
            raise
        return None, str(err)
    if explicit is not None:
        return explicit, ""
    found = color_from_text(text or "")
    return found.target, found.reason


def target_rgb(target) -> tuple[int, int, int] | None:
    """The 8-bit sRGB of a target (its hex), or None."""
    if target is None:
        return None
    code = target.hex.lstrip("#")
    return tuple(int(code[i : i + 2], 16) for i in (0, 2, 4))


def lab_hex(lab) -> str:
    """``#rrggbb`` of a Lab colour (clipped into sRGB)."""
    import torch

    from mtcolor.color import lab_to_rgb

    rgb = lab_to_rgb(torch.tensor(lab, dtype=torch.float32).view(1, 3, 1, 1)).clamp(0, 1).view(3)
    return "#" + "".join(f"{round(float(v) * 255):02x}" for v in rgb)


def miss_reason(error) -> str:
    """Why an instance missed its target (an :class:`~mtcolor.metrics.InstanceColorError`): the hue
    off by more than :data:`HUE_TOLERANCE` degrees, the chroma too weak / too strong by more than
    :data:`CHROMA_TOLERANCE`, else the combination of both below those bounds."""
    if error.pixels == 0:
        return "no pixels"
    reasons = []
    if math.isfinite(error.hue_error) and error.hue_error > HUE_TOLERANCE:
        reasons.append(f"hue off by {error.hue_error:.0f}°")
    target_chroma = math.hypot(*error.target_at_l[1:])
    if error.chroma_diff < -CHROMA_TOLERANCE:
        reasons.append(
            f"too weak (chroma {target_chroma + error.chroma_diff:.0f}, target {target_chroma:.0f})"
        )
    elif error.chroma_diff > CHROMA_TOLERANCE:
        reasons.append(
            f"too strong (chroma {target_chroma + error.chroma_diff:.0f}, target {target_chroma:.0f})"
        )
    if not reasons:
        reasons.append(f"hue ({error.hue_error:.0f}°) and chroma ({error.chroma_diff:+.0f}) together")
    return "; ".join(reasons)


def color_table(
    image: PIL.Image.Image, masks: list[np.ndarray], texts: list[str], targets: list, reasons: list
):
    """Per instance ``[k, text, target, measured, ΔE00, match, why not]`` (:data:`TABLE_HEADERS`).

    Args:
        image: the result (RGB).
        masks: bool (H, W) per instance; texts: per instance.
        targets / reasons: per instance, from :func:`row_target`.
    """
    if not masks:
        return []
    import torch

    from mtcolor.lexicon import default_lexicon
    from mtcolor.masks import masks_to_label_map
    from mtcolor.metrics import instance_color_errors

    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    label_map = masks_to_label_map(masks, allow_empty=True, warn_overlap=False)
    errors = instance_color_errors(rgb[None], label_map[None], [list(targets)], threshold=PASS_DELTA_E)
    by_label = {error.instance: error for error in errors}
    lexicon = default_lexicon()
    rows = []
    for label, (text, target, reason) in enumerate(zip(texts, targets, reasons), start=1):
        if target is None:
            rows.append([label, text, "—", "—", None, "—", f"no target: {reason or 'none given'}"])
            continue
        wanted = f"{target.hex} {target.label}" if target.label != target.hex else target.hex
        error = by_label.get(label)
        if error is None or error.pixels == 0:
            rows.append([label, text, wanted, "—", None, "no", "no pixels"])
            continue
        measured = f"{lab_hex(error.measured)} {lexicon.name(torch.tensor(error.measured))}"
        rows.append(
            [
                label,
                text,
                wanted,
                measured,
                round(error.delta_e00, 1),
                "yes" if error.passes else "no",
                "" if error.passes else miss_reason(error),
            ]
        )
    return rows


__all__ = [
    "CHROMA_TOLERANCE",
    "HUE_TOLERANCE",
    "PASS_DELTA_E",
    "TABLE_HEADERS",
    "color_table",
    "lab_hex",
    "miss_reason",
    "parse_row_color",
    "row_target",
    "target_rgb",
]
