"""Scoring colorizers on synthetic scenes with known colours (shared by the benchmarks, the recipes
and the demo).

A scene is a :func:`mtcolor.synthetic.generate_scene` row (``image``, ``masks``, ``instance_texts``,
``instance_labels``, ``instance_colors``, ``global_text``). Colour adherence is scored against the
scene's canonical ``instance_colors`` (the colour each text *names*: "a lemon star" and "a star
painted golden" ask for yellow), never by parsing the text, so synonyms and held-out phrasings are
scored like plain texts.

* :func:`held_out_scenes`: the fixed test-split scenes the ablation table, the recipe's guidance
  sweep and the regression tests use;
* :func:`scene_adherence`, :func:`score_scenes`: adherence (all instances and held-out colour-shape
  pairs), bleeding, PSNR, SSIM, colorfulness;
* :func:`colorize_scenes`: one MT-Color pipeline call per batch of scenes and option set (the
  pipeline is passed in: this module does not import ``pipelines``);
* :func:`wilson_interval`, :func:`format_share`: 95% intervals of shares for the report tables.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .color import image_luminance
from .masks import masks_to_label_map
from .metrics import color_adherence, color_bleeding, colorfulness, psnr, ssim
from .metrics.adherence import AdherenceResult
from .synthetic import SyntheticConfig, generate_scene


def held_out_scenes(
    config: SyntheticConfig, count: int, seed: int, phrasing: str | None = None
) -> list[dict]:
    """``count`` test-split scenes (seeds ``50_000 + 10_000 seed + i``); ``phrasing="language"``
    gives the same scenes (pixels and masks) with colour words and templates never used in training
    (the held-out language split)."""
    return [
        generate_scene(config, seed=50_000 + seed * 10_000 + i, split="test", phrasing=phrasing)
        for i in range(count)
    ]


def scene_gray(scene: dict) -> np.ndarray:
    """The scene's luminance as the pipelines' gray input: float32 (H, W) in [0, 1] (Lab L / 100)."""
    return (image_luminance(scene["image"])[0].numpy() / 100.0).astype(np.float32)


def scene_images(scenes: list[dict]) -> torch.Tensor:
    """The scenes' ground-truth images: float32 (N, 3, H, W) in [0, 1]."""
    return torch.stack(
        [torch.from_numpy(np.asarray(s["image"], dtype=np.float32) / 255.0).permute(2, 0, 1) for s in scenes]
    )


def scene_label_maps(scenes: list[dict]) -> torch.Tensor:
    """The scenes' instance masks as label maps: int64 (N, H, W), 0 = background, k = instance k."""
    return torch.stack([masks_to_label_map(list(s["masks"]), warn_overlap=False) for s in scenes])


def scene_adherence(outputs: torch.Tensor, label_maps: torch.Tensor, scenes: list[dict]) -> AdherenceResult:
    """Colour adherence of ``outputs`` ((N, 3, H, W) in [0, 1]) to each scene's canonical
    ``instance_colors`` (the colour each text names, whatever its wording)."""
    return color_adherence(
        outputs,
        label_maps,
        [s["instance_texts"] for s in scenes],
        instance_colors=[list(s["instance_colors"]) for s in scenes],
    )


def score_scenes(outputs: torch.Tensor, scenes: list[dict], holdout: set) -> dict:
    """Metrics of colorized ``scenes``.

    Args:
        outputs: (N, 3, H, W) in [0, 1], one per scene.
        holdout: the held-out (colour, shape) pairs.

    Returns:
        ``{"adherence", "adherence_holdout", "holdout_instances", "adherence_crowded",
        "crowded_instances", "instances", "bleeding", "psnr", "ssim", "colorfulness"}`` (adherence:
        share of instances with the colour their text names; crowded: instances of scenes with 3 or
        more objects).
    """
    targets = scene_images(scenes)
    label_maps = scene_label_maps(scenes)
    adherence = scene_adherence(outputs, label_maps, scenes)
    labels = [s["instance_labels"] for s in scenes]
    held = adherence.where(lambda r: (r.word, labels[r.image_index][r.instance - 1]) in holdout)
    crowded = adherence.where(lambda r: len(labels[r.image_index]) >= 3)
    return {
        "adherence": adherence.accuracy,
        "adherence_holdout": held.accuracy,
        "holdout_instances": len(held.instances),
        "adherence_crowded": crowded.accuracy,
        "crowded_instances": len(crowded.instances),
        "instances": len(adherence.instances),
        "bleeding": color_bleeding(outputs, label_maps).leak,
        "psnr": float(psnr(outputs, targets).mean()),
        "ssim": float(ssim(outputs, targets).mean()),
        "colorfulness": float(colorfulness(outputs).mean()),
    }


def ground_truth_colorfulness(scenes: list[dict]) -> float:
    """Mean colorfulness of the scenes' ground-truth images."""
    return float(colorfulness(scene_images(scenes)).mean())


def wilson_interval(share: float, count: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a share measured on ``count`` instances."""
    if count == 0:
        return (float("nan"), float("nan"))
    denominator = 1 + z**2 / count
    centre = (share + z**2 / (2 * count)) / denominator
    half = z * np.sqrt(share * (1 - share) / count + z**2 / (4 * count**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def format_share(share: float, count: int) -> str:
    """``share [low, high] (count)`` with the 95% Wilson interval."""
    low, high = wilson_interval(share, count)
    return f"{share:.1%} [{low:.0%}, {high:.0%}] ({count})"


def colorize_scenes(
    pipe, scenes, rows, steps: int, seed: int, batch: int, working: int, guidance_scale: float = 7.5
) -> list[tuple[str, dict]]:
    """Colorize ``scenes`` with an MT-Color pipeline once per ``(row name, pipeline options)``.

    Args:
        pipe: an ``MTColorPipeline`` (any callable with its signature).
        rows: ``[(name, options)]``; ``options`` are extra pipeline arguments (e.g. ``{"alpha": 0.0}``);
            without ``colors_from_texts`` a row scores the learned model alone (no colour targets).
        steps: denoising steps; seed: scene ``i`` of a batch starting at ``b`` uses ``seed + b + i``;
        batch: scenes per pipeline call; working: the pipeline's ``working_resolution``.

    Returns:
        ``[(name, {"outputs": (N, 3, H, W) in [0, 1], "seconds"})]``.
    """
    results = []
    for name, options in rows:
        # the learned model alone unless a row asks for colour targets
        options = {"guidance_scale": guidance_scale, "colors_from_texts": False, **options}
        start = time.perf_counter()
        outs = []
        for i in range(0, len(scenes), batch):
            chunk = scenes[i : i + batch]
            outs.append(
                pipe(
                    [scene_gray(s) for s in chunk],
                    [list(s["masks"]) for s in chunk],
                    [s["instance_texts"] for s in chunk],
                    prompt=[s["global_text"] for s in chunk],
                    num_inference_steps=steps,
                    working_resolution=working,
                    generator=[torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))],
                    output_type="pt",
                    **options,
                ).images
            )
        results.append((name, {"outputs": torch.cat(outs), "seconds": time.perf_counter() - start}))
    return results
