"""``mtcolor demo``: the README's main command. Colorize held-out synthetic scenes and a real photo with
the embedded model (or ``--model``), write a contact sheet and a metrics JSON.

Writes a contact sheet (gray | masks + texts | output | ground truth, one row per scene) and a JSON
of metrics (colour adherence per scene and overall, colour bleeding, PSNR / SSIM / colorfulness
against the ground truth where the texts describe it) into an output folder. The scenes are
:mod:`mtcolor.demo_scenes`; adherence is scored against each scene's canonical ``instance_colors``
(:func:`mtcolor.scene_eval.scene_adherence`, as the ablation benchmark scores), so texts that use
synonyms ("a lemon star", "the ring is pearl") count like plain ones.

The demo runs a pipeline, so it lives in the command-line layer (the library's only modules allowed
to import ``pipelines``, inside functions: see ``tests/test_import_contract.py``). Heavy imports
happen inside the functions, so ``mtcolor --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import asdict
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="colorize held-out synthetic scenes and a real photo with the embedded model",
        description="Colorize held-out synthetic scenes (incl. unseen colour-object pairs and recolour requests) "
        "and a real photo; write a contact sheet PNG and a metrics JSON.",
    )
    parser.add_argument("--out", default="mtcolor-demo", help="output folder (default: ./mtcolor-demo)")
    parser.add_argument(
        "--model", default=None, help="MT-Color pipeline folder (default: the embedded model)"
    )
    parser.add_argument("--scenes", type=int, default=4, help="held-out synthetic scenes (default 4)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="classifier-free guidance (default: the value the model's recipe measured best, else 7.5)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    parser.add_argument("--no-photo", action="store_true", help="skip the real photo")
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    """The first user error of the arguments (checked before the model loads), or None."""
    import math
    import os

    if args.steps < 1:
        return f"--steps is {args.steps}; pass a positive number of denoising steps (e.g. 20)."
    if args.scenes < 1:
        return f"--scenes is {args.scenes}; pass a positive number of synthetic scenes (e.g. 4)."
    if args.guidance_scale is not None and (
        not math.isfinite(args.guidance_scale) or args.guidance_scale < 0
    ):
        return (
            f"--guidance_scale is {args.guidance_scale}; pass a finite value >= 0 (<= 1 disables guidance), or "
            "leave it unset for the model's measured best."
        )
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return f"--out {args.out!r} is a file; pass a folder for the contact sheet and metrics."
    return None


def run(args: argparse.Namespace) -> int:
    import sys

    problem = _check_args(args)
    if problem is not None:
        print(f"mtcolor demo: error: {problem}", file=sys.stderr)
        return 2
    summary = run_demo(
        args.out,
        model=args.model,
        num_scenes=args.scenes,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        include_photo=not args.no_photo,
        guidance_scale=args.guidance_scale,
    )
    if not summary["trained"]:
        print("NOTE: no embedded model in this install; ran tiny UNTRAINED components (colours are random).")
    print(f"model: {summary['model']}")
    print(f"colour adherence on synthetic scenes: {summary['synthetic_adherence']:.0%}")
    print(f"contact sheet: {summary['contact_sheet']}")
    print(f"metrics: {summary['metrics_file']}")
    return 0


def load_pipeline(model: str | None, device: str | None = None):
    """The MT-Color pipeline to demo: ``model`` folder, else the embedded model.

    Returns ``(pipeline, trained, source)``; when no trained model can be found the pipeline has
    tiny *untrained* components (``trained`` is False) so the whole path still runs.
    """
    from mtcolor.embedded import embedded_model
    from mtcolor.model_configs import untrained_tiny_components
    from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline

    if model is None:
        try:
            model = embedded_model("mtcolor-tiny")
        except FileNotFoundError:
            model = None
    if model is not None:
        pipe = MTColorPipeline.from_pretrained(model)
        trained, source = True, str(model)
    else:
        pipe = MTColorPipeline(**untrained_tiny_components(0))
        trained, source = False, "tiny untrained components (no embedded model in this install)"
    if device:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, trained, source


def contact_sheet(rows: list[dict], path: Path, cell: int = 160) -> None:
    """gray | masks + texts | output | ground truth, one row per scene, texts under each row.

    Args:
        rows: ``{"id", "kind", "note", "texts", "panels": [4 PIL images]}`` per scene.
        path: the PNG to write (atomically).
        cell: side of one panel in pixels.
    """
    import PIL.Image
    import PIL.ImageDraw

    from mtcolor.demo_scenes import PALETTE

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


def score_demo_scene(result, scene: dict) -> dict:
    """The metrics of one colorized demo scene.

    Args:
        result: the pipeline output, (1, 3, H, W) in [0, 1].
        scene: a :mod:`mtcolor.demo_scenes` scene (``image``, ``masks``, ``instance_texts``,
            ``instance_colors``, ``kind``).

    Returns:
        ``{"adherence_accuracy", "adherence_mean_distance", "instances_agree", "colorfulness",
        "bleeding_leak"}`` plus ``"psnr"`` and ``"ssim"`` against the ground truth unless the scene is
        a recolour request. Adherence is to the scene's canonical ``instance_colors``.
    """
    import numpy as np
    import torch

    from mtcolor.masks import masks_to_label_map
    from mtcolor.metrics import color_bleeding, colorfulness, psnr, ssim
    from mtcolor.scene_eval import scene_adherence

    image = scene["image"].convert("RGB")
    masks = np.asarray(scene["masks"], dtype=bool)
    label_map = masks_to_label_map(list(masks), warn_overlap=False)[None]  # (1, H, W)
    adherence = scene_adherence(result, label_map, [scene])
    record = {
        "adherence_accuracy": adherence.accuracy,
        "adherence_mean_distance": adherence.mean_distance,
        "instances_agree": [r.agrees for r in adherence.instances],
        "colorfulness": float(colorfulness(result)[0]),
        "bleeding_leak": color_bleeding(result, label_map).leak,
    }
    if scene["kind"] != "recolor":  # the ground truth shows what the texts describe
        target = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        record["psnr"] = float(psnr(result, target)[0])
        record["ssim"] = float(ssim(result, target)[0])
    return record


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
    import numpy as np
    import PIL.Image
    import torch
    from tqdm.auto import tqdm

    from mtcolor.color import image_luminance
    from mtcolor.demo_scenes import demo_scenes, mask_overlay, synthetic_config, voc_scene
    from mtcolor.embedded import recommended_guidance_scale
    from mtcolor.pipelines.pipeline_mtcolor import SmallInstanceWarning

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe, trained, source = load_pipeline(model, device)
    model_folder = source if trained else None
    if guidance_scale is None:
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
        scores = score_demo_scene(result, scene)
        against_truth = {key: scores.pop(key) for key in ("psnr", "ssim") if key in scores}
        record = {
            "id": scene["id"],
            "kind": scene["kind"],
            "texts": scene["instance_texts"],
            **scores,
            # instances smaller than one token of some attention grids (MTColorPipelineOutput.diagnostics)
            "diagnostics": output.diagnostics,
            **against_truth,
        }
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
                    PIL.Image.fromarray(mask_overlay(gray, masks)),
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
