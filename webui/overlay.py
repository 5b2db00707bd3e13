"""The instance overlay: the label map the masks resolve to, over the gray image.

Each instance is tinted in the colour its row requests (the row's explicit colour, else the colour
its text names: :func:`mtcolor.webui.colors.row_target`) and outlined; an instance without a requested
colour gets a neutral black-and-white outline only, never a made-up tint.

Masks resolve exactly as the pipeline resolves them (:func:`mtcolor.masks.masks_to_label_map`:
an overlapping pixel goes to the smallest mask). Before a run the page also lists what the pipeline
will warn about: overlapping masks, and instances smaller than one token of an attention grid at
the chosen working resolution (the grids of ``MTColorPipeline``: the latent grid and each UNet
level below it). After a run it shows the warnings the pipeline actually emitted.
"""

from __future__ import annotations

import html
import re

import numpy as np
import PIL.Image


def _boundary(label_map: np.ndarray) -> np.ndarray:
    """(H, W) bool: instance pixels with a 4-neighbour of another label (or the image border)."""
    padded = np.pad(label_map, 1, mode="constant", constant_values=-1)
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(label_map.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy : dy + label_map.shape[0], dx : dx + label_map.shape[1]] != centre
    return edge & (label_map > 0)


def label_overlay(
    gray: PIL.Image.Image,
    label_map: np.ndarray | None,
    colors: list[tuple[int, int, int] | None] | None = None,
    opacity: float = 0.55,
) -> np.ndarray:
    """(H, W, 3) uint8: the gray image with label ``k`` tinted in ``colors[k - 1]`` (8-bit sRGB, its
    requested colour) and outlined in it; a label whose colour is None (or missing) is not tinted and
    gets a neutral outline (alternating black and white pixels, visible on any gray)."""
    out = np.repeat(np.asarray(gray.convert("L"), dtype=np.float32)[..., None], 3, -1)
    if label_map is None or not label_map.size:
        return out.clip(0, 255).round().astype(np.uint8)
    count = int(label_map.max())
    colors = list(colors or [])
    known = [k for k in range(1, count + 1) if k - 1 < len(colors) and colors[k - 1] is not None]
    table = np.zeros((count + 1, 3), np.float32)  # one colour per label (a lookup table)
    for k in known:
        table[k] = colors[k - 1]
    has_color = np.zeros(count + 1, bool)
    has_color[known] = True
    tinted = has_color[label_map]  # (H, W)
    out[tinted] = (1 - opacity) * out[tinted] + opacity * table[label_map[tinted]]
    edge = _boundary(label_map)
    coloured_edge = edge & tinted
    out[coloured_edge] = table[label_map[coloured_edge]]
    neutral = edge & ~tinted
    ys, xs = np.nonzero(neutral)
    out[ys, xs] = np.where(((ys + xs) % 2 == 0)[:, None], 255.0, 0.0)
    return out.clip(0, 255).round().astype(np.uint8)


def swatch(color: tuple[int, int, int] | None) -> str:
    """HTML: a filled square in ``color``, or an outlined empty square when no colour is requested."""
    if color is None:
        return '<span class="swatch swatch-none" title="no colour requested">□</span>'
    hex_code = "#" + "".join(f"{int(v):02x}" for v in color)
    return f'<span class="swatch" style="color: {hex_code}" title="requested {hex_code}">■</span>'


def resolve_label_map(masks: list[np.ndarray]) -> np.ndarray | None:
    """(H, W) int64 label map of bool masks, as the pipeline builds it (None without masks)."""
    if not masks:
        return None
    from mtcolor.masks import masks_to_label_map

    return masks_to_label_map(masks, allow_empty=True, warn_overlap=False).numpy()


def overlap_messages(masks: list[np.ndarray], rows: list[int]) -> list[str]:
    """One message listing the overlapping instance pairs (1-based rows), or none."""
    pairs = []
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            if masks[a].shape == masks[b].shape and np.logical_and(masks[a], masks[b]).any():
                pairs.append(f"{rows[a]}+{rows[b]}")
    if not pairs:
        return []
    shown = ", ".join(pairs[:10]) + (" ..." if len(pairs) > 10 else "")
    return [f"Masks overlap (instances {shown}): each overlapping pixel goes to the smallest mask."]


def vanishing_messages(
    pipe, label_map: np.ndarray, texts: list[str], rows: list[int], working_resolution: int
) -> list[str]:
    """Instances (named by page row) smaller than one token of an MT-Color attention grid.

    The grids are those ``MTColorPipeline`` conditions (:func:`mtcolor.masks.attention_grids`: the
    latent grid of the working size and each coarser UNet level), and an instance is lost as the
    pipeline's small-instance diagnostics say (:func:`mtcolor.masks.lost_instances`).
    """
    import torch

    from mtcolor.inputs import working_size
    from mtcolor.masks import attention_grids, lost_instances

    factor = pipe.vae_scale_factor
    size = working_size(label_map.shape, int(working_resolution), factor)
    grids = attention_grids((size[0] // factor, size[1] // factor), len(pipe.unet.config.block_out_channels))
    lost = lost_instances(torch.from_numpy(label_map), size, grids)
    present = set(np.unique(label_map).tolist())
    # gone at the working size: lost there, or an empty mask (no pixel at all)
    gone = {k for k in range(1, len(texts) + 1) if k not in present or lost.get(k, [None])[0] == size}
    messages = [
        f"Instance {rows[k - 1]} ({texts[k - 1]!r}) disappears at the {size[0]}x{size[1]} working size; raise the working "
        "resolution or enlarge its mask."
        for k in sorted(gone)
    ]
    messages += [
        f"Instance {rows[k - 1]} ({texts[k - 1]!r}) is smaller than one token of the "
        f"{', '.join(f'{h}x{w}' for h, w in lost_grids)} attention grid(s) and does not condition them."
        for k, lost_grids in lost.items()
        if k not in gone
    ]
    return messages


def page_numbers(message: str, rows: list[int]) -> str:
    """A pipeline message with the page's instance numbers: the pipeline numbers the instances of its
    call from zero (``texts[1]``, ``masks[0, 2]``, ``0-based pairs [(0, 1)]``), the page numbers its
    rows from one, and empty rows are not sent, so call index ``i`` is page row ``rows[i]``.

    ``"... (texts[1] 'a cat')"`` with rows ``[1, 3]`` -> ``"... (instance 3 'a cat')"``;
    ``"(0-based pairs [(0, 1)])"`` -> ``"(instances 1+3)"``.
    """

    def row(index: str) -> str:
        i = int(index)
        return str(rows[i] if 0 <= i < len(rows) else i + 1)

    def pairs(match: re.Match) -> str:
        found = re.findall(r"\((\d+),\s*(\d+)\)", match.group(1))
        return "instances " + ", ".join(f"{row(a)}+{row(b)}" for a, b in found)

    def indices(match: re.Match) -> str:
        numbers = [row(i) for i in match.group(1).split(",")]
        return ("instance " if len(numbers) == 1 else "instances ") + ", ".join(numbers)

    message = re.sub(r"0-based pairs \[([^\]]*)\]", pairs, message)
    return re.sub(r"\b(?:texts|masks)\[(\d+(?:,\s*\d+)*)\]", indices, message)


def legend(
    rows: list[int],
    texts: list[str],
    messages: list[str],
    title: str = "Mask check",
    colors: list | None = None,
) -> str:
    """Markdown: per instance its requested colour (:func:`swatch`) and text, then the messages (or
    'no warnings'). ``colors[i]``: the 8-bit sRGB requested for ``rows[i]``, or None."""
    colors = list(colors or [None] * len(rows))
    lines = [f"{swatch(color)} **{k}** {html.escape(text)}" for k, text, color in zip(rows, texts, colors)]
    body = (
        "  \n".join(lines)
        if lines
        else "_No instances yet: add one, upload or paint its mask and type its text._"
    )
    notes = "\n".join(f"- ⚠ {html.escape(m)}" for m in messages) if messages else "- no warnings"
    return f"{body}\n\n**{title}**\n{notes}"
