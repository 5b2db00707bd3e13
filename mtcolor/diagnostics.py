"""Findings about a pipeline call's inputs, reported in the output's ``diagnostics`` (JSON-ready
dicts) and summarised in one warning per call instead of one warning per instance.

Kind ``"small_instance"``: an instance smaller than one token of some attention grids at the working
size, which it then does not condition (finer grids still do).
"""

from __future__ import annotations

import warnings

from .inputs import Sample, working_size
from .masks import attention_grids, lost_instances, resize_label_map


class SmallInstanceWarning(UserWarning):
    """Some instances are smaller than one token of the coarser attention grids (which they then do
    not condition). Issued once per call; the details are in the output's ``diagnostics``."""


def instance_name(batched: bool, image: int, instance: int) -> str:
    """How messages name instance ``instance`` (0-based) of input ``image``: ``texts[1]`` or
    ``texts[0][1]`` for a batch."""
    return f"texts[{image}][{instance}]" if batched else f"texts[{instance}]"


def small_instances(
    samples: list[Sample], working_resolution: int, batched: bool, vae_scale_factor: int, levels: int
) -> list[dict]:
    """The ``"small_instance"`` findings of a call.

    Args:
        samples: the call's prepared inputs, one per input image.
        working_resolution: the short side the model runs at.
        batched: whether the call's ``image`` was a batch (names become ``texts[b][i]``).
        vae_scale_factor: pixels per latent cell.
        levels: the UNet's number of resolutions (``len(unet.config.block_out_channels)``); the
            grids are :func:`mtcolor.masks.attention_grids` of each image's latent size.

    Returns:
        One dict per small instance: ``{"kind": "small_instance", "image"`` (input index),
        ``"instance"`` (0-based), ``"name"``, ``"text"``, ``"pixels"`` (its area at the working size),
        ``"working_size"`` ([h, w]), ``"lost_grids"`` ([[h, w], ...] the token grids it covers no
        token of)``}``.
    """
    found = []
    for b, sample in enumerate(samples):
        if sample.label_map is None:
            continue
        size = working_size(sample.size, working_resolution, vae_scale_factor)
        latent_size = (size[0] // vae_scale_factor, size[1] // vae_scale_factor)
        lost = lost_instances(sample.label_map, size, attention_grids(latent_size, levels))
        if not lost:
            continue
        label_map = resize_label_map(sample.label_map, size)
        for k, grids in lost.items():
            found.append(
                {
                    "kind": "small_instance",
                    "image": b,
                    "instance": k - 1,
                    "name": instance_name(batched, b, k - 1),
                    "text": sample.texts[k - 1],
                    "pixels": int((label_map == k).sum()),
                    "working_size": list(size),
                    "lost_grids": [list(grid) for grid in grids],
                }
            )
    return found


def warn_small_instances(diagnostics: list[dict], stacklevel: int) -> None:
    """One :class:`SmallInstanceWarning` summarising every small instance of the call."""
    groups: dict[tuple, list[dict]] = {}
    for item in diagnostics:
        if item["kind"] == "small_instance":
            groups.setdefault(tuple(tuple(g) for g in item["lost_grids"]), []).append(item)
    if not groups:
        return
    parts = []
    for grids, items in groups.items():
        where = " and ".join(f"{h}x{w}" for h, w in grids)
        named = ", ".join(f"{item['name']} {item['text']!r}" for item in items)
        verb = "instances are" if len(items) > 1 else "instance is"
        parts.append(f"{len(items)} {verb} smaller than one token at {where} ({named})")
    warnings.warn(
        "; ".join(parts) + ": they condition finer attention grids only. Enlarge those masks or raise "
        "working_resolution to keep them; the output's diagnostics list the details.",
        SmallInstanceWarning,
        stacklevel=stacklevel + 1,
    )


def color_target_findings(
    samples: list[Sample], targets: list[list], reasons: list[list[str]], batched: bool
) -> list[dict]:
    """The colour-target findings of a call, one per instance with a target or a reason for none.

    Args:
        samples: the call's inputs; targets: per image, per instance a
            :class:`mtcolor.color_targets.ColorTarget` or None; reasons: per image, per instance why
            no target was taken from its text ("" when none was asked for or one was found).

    Returns:
        Kind ``"color_target"``: ``{"kind", "image", "instance", "name", "text", "target"`` (hex),
        ``"label"`` (its name or hex), ``"source"`` (``"hex"``, ``"rgb"``, ``"name"`` or ``"text"``),
        ``"lab"`` ([L, a, b])``}``; kind ``"no_color_target"``: ``{..., "reason"}`` for texts asked
        to give a target that name no single colour ("no colour word", "several colours: red, white").
    """
    found = []
    for b, sample in enumerate(samples):
        for i, text in enumerate(sample.texts):
            base = {"image": b, "instance": i, "name": instance_name(batched, b, i), "text": text}
            target = targets[b][i]
            if target is not None:
                found.append(
                    {
                        "kind": "color_target",
                        **base,
                        "target": target.hex,
                        "label": target.label,
                        "source": target.source,
                        "lab": [round(v, 2) for v in target.lab],
                    }
                )
            elif reasons[b][i]:
                found.append({"kind": "no_color_target", **base, "reason": reasons[b][i]})
    return found


def unreachable_targets(findings: list[dict], skipped: dict[tuple[int, int], str]) -> list[dict]:
    """Kind ``"color_target_unreachable"`` for targeted instances the exact mode could not plan
    (``skipped[(image, instance)]`` = why, e.g. no pixel at the working size)."""
    out = []
    for item in findings:
        key = (item["image"], item["instance"])
        if item["kind"] == "color_target" and key in skipped:
            out.append({**item, "kind": "color_target_unreachable", "reason": skipped[key]})
    return out
