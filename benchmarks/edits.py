"""Editing one instance of an earlier result, measured on held-out synthetic scenes.

``python -m mtcolor.bench edits [--model DIR] [--scenes 100] [--steps 20] [--seed 0] [--json FILE]
[--save_calls FILE] [--progress] [--instances K]``

For every scene: a fresh run with its own texts (seed s); then one instance (the first) is asked
for another basic colour (the next one of the palette that is far from its own) and the scene is
(a) edited from the fresh run (``edit_from``, seed s + 1) and (b) run fresh with the new texts
(seed s + 1). Reported: adherence of the edited instance in (a) and (b) with 95% intervals, the
pixels changed outside the edited region in (a) (must be 0), the colour leak across the edited
instance's boundary in (a) and (b) (the bleeding metric), and the time of (a) relative to the fresh
run of the same scene (process CPU time, which the machine's other work changes less than wall
time; wall ratios are in the JSON), median over scenes; the ratio is also given for the 4-instance
scenes alone (1 of 4 instances edited; the shipped model's scenes have 2-3 objects, so
``--instances 4`` generates held-out scenes with exactly 4). One untimed warm-up call runs first. ``--json`` writes the
summary and one record per scene; ``--save_calls`` the edited and fresh images (``torch.save`` of
tensors, read back with ``weights_only=True``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from mtcolor.demo_scenes import synthetic_config
from mtcolor.embedded import embedded_model, recommended_guidance_scale
from mtcolor.metrics import color_adherence, color_bleeding
from mtcolor.scene_eval import format_share, held_out_scenes, scene_gray, scene_label_maps

#: colours an edited instance may be asked for, in the order tried
EDIT_COLORS = ("red", "blue", "yellow", "green", "purple", "orange", "pink", "white", "black")


def new_color(old: str) -> str:
    """The first of :data:`EDIT_COLORS` that is not ``old`` nor next to it (orange vs red, ...)."""
    close = {"red": {"orange", "pink"}, "orange": {"red", "yellow", "brown"}, "pink": {"red", "purple"}}
    return next(c for c in EDIT_COLORS if c != old and c not in close.get(old, set()))


def edited_scene(scene: dict) -> tuple[list[str], str]:
    """The scene's texts with instance 0 asked for a new colour, and that colour word."""
    old = scene["instance_colors"][0]
    word = new_color(old)
    shape = scene["instance_labels"][0]
    return [f"a {word} {shape}", *scene["instance_texts"][1:]], word


def _as_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def run_scene(pipe, scene: dict, seed: int, steps: int, guidance: float) -> dict:
    """Fresh run, edit of instance 0 and fresh run with the new texts for one scene."""
    gray, masks = scene_gray(scene), list(scene["masks"])
    texts, word = edited_scene(scene)
    # the pipeline's defaults: targets from the texts, exact mode, no steering
    common = dict(num_inference_steps=steps, guidance_scale=guidance, working_resolution=gray.shape[0])

    def call(call_texts, call_seed, **kw):
        wall, cpu = time.perf_counter(), time.process_time()
        out = pipe(
            gray, masks, call_texts, generator=torch.Generator().manual_seed(call_seed), **common, **kw
        )
        return out, (time.perf_counter() - wall, time.process_time() - cpu)

    first, (fresh_seconds, fresh_cpu) = call(list(scene["instance_texts"]), seed)
    edited, (edit_seconds, edit_cpu) = call(texts, seed + 1, edit_from=first)
    fresh_new, _ = call(texts, seed + 1)
    region = edited.edit_states[0].label_map.numpy() == 1
    before, after = np.asarray(first.images[0]), np.asarray(edited.images[0])
    changed_outside = int((before[~region] != after[~region]).any(-1).sum())
    return {
        "edit": _as_tensor(edited.images[0]),
        "fresh": _as_tensor(fresh_new.images[0]),
        "word": word,
        "changed_outside": changed_outside,
        "fresh_seconds": fresh_seconds,
        "edit_seconds": edit_seconds,
        "fresh_cpu": fresh_cpu,
        "edit_cpu": edit_cpu,
        "instances": len(texts),
        "edited_pixels": int(region.sum()),
    }


def _edited_scores(
    images: torch.Tensor, label_maps: torch.Tensor, words: list[str]
) -> tuple[float, int, float]:
    """Adherence of instance 1 to its new word (other instances skipped) and the leak across its boundary."""
    texts = [[f"a {w} object"] + [""] * (int(m.max()) - 1) for w, m in zip(words, label_maps)]
    adherence = color_adherence(images, label_maps, texts)
    only_first = torch.where(label_maps == 1, 1, 0)  # the edited instance against everything else
    leak = color_bleeding(images, only_first).leak
    return adherence.accuracy, len(adherence.instances), leak


def kept_outside_leak(edits: torch.Tensor, fresh: torch.Tensor, label_maps: torch.Tensor) -> float:
    """The seam leak of the fresh run's edited instance (label 1) composited on the edit's outside
    pixels, which an edit keeps from the previous result: the part of the edit's seam leak that comes
    from the kept pixels rather than from the edit's own sampling. Images (N, 3, H, W), maps (N, H, W)."""
    composite = torch.where((label_maps == 1)[:, None], fresh, edits)
    return color_bleeding(composite, torch.where(label_maps == 1, 1, 0)).leak


def summarize(results: list[dict], label_maps: torch.Tensor) -> dict:
    words = [r["word"] for r in results]
    edit_share, count, edit_leak = _edited_scores(
        torch.stack([r["edit"] for r in results]), label_maps, words
    )
    fresh_share, _, fresh_leak = _edited_scores(torch.stack([r["fresh"] for r in results]), label_maps, words)
    ratios = [r["edit_cpu"] / r["fresh_cpu"] for r in results]
    wall_ratios = [r["edit_seconds"] / r["fresh_seconds"] for r in results]
    four = [q for q, r in zip(ratios, results) if r["instances"] == 4]
    return {
        "scenes": len(results),
        "edited_adherence": edit_share,
        "fresh_adherence": fresh_share,
        "instances": count,
        "changed_outside": sum(r["changed_outside"] for r in results),
        "edit_leak": edit_leak,
        "kept_outside_leak": kept_outside_leak(
            torch.stack([r["edit"] for r in results]), torch.stack([r["fresh"] for r in results]), label_maps
        ),
        "fresh_leak": fresh_leak,
        "time_ratio": float(np.median(ratios)),
        "wall_time_ratio": float(np.median(wall_ratios)),
        "time_ratio_4_instances": float(np.median(four)) if four else float("nan"),
        "scenes_4_instances": len(four),
        "fresh_seconds": float(np.mean([r["fresh_seconds"] for r in results])),
        "edit_seconds": float(np.mean([r["edit_seconds"] for r in results])),
        "fresh_cpu_seconds": float(np.mean([r["fresh_cpu"] for r in results])),
        "edit_cpu_seconds": float(np.mean([r["edit_cpu"] for r in results])),
    }


def records(results: list[dict]) -> list[dict]:
    """One JSON-ready record per scene (everything but the images)."""
    return [{k: v for k, v in r.items() if k not in ("edit", "fresh")} for r in results]


def format_table(summary: dict) -> str:
    """The Markdown table: adherence with its 95% Wilson interval, changed pixels, leak, CPU time."""
    n = summary["instances"]
    return "\n".join(
        [
            "| run | adherence of the edited instance [95% interval] (instances) | pixels changed outside it | seam leak "
            "| time / image (CPU) | time vs a fresh run (median CPU ratio) |",
            "|---|---|---|---|---|---|",
            f"| edit (`edit_from`) | {format_share(summary['edited_adherence'], n)} | "
            f"{summary['changed_outside']} | {summary['edit_leak']:.3f} | {summary['edit_cpu_seconds']:.2f} s | "
            f"{summary['time_ratio']:.2f}x (1 of 4 instances: {summary['time_ratio_4_instances']:.2f}x, "
            f"{summary['scenes_4_instances']} scenes) |",
            f"| fresh run with the new texts | {format_share(summary['fresh_adherence'], n)} | (all) | "
            f"{summary['fresh_leak']:.3f} | {summary['fresh_cpu_seconds']:.2f} s | 1.00x |",
            "",
            f"Seam leak of the fresh run's instance on the edit's kept outside pixels: "
            f"{summary['kept_outside_leak']:.3f} (the part of the edit's seam leak its kept pixels give).",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.bench edits", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--model", default=None, help="MT-Color pipeline folder (default: the embedded mtcolor-tiny)"
    )
    parser.add_argument("--scenes", type=int, default=100, help="held-out scenes")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0, help="scene set and sampling seed")
    parser.add_argument("--guidance_scale", type=float, default=None, help="default: the model's recipe.json")
    parser.add_argument(
        "--json", default=None, help="also write the summary and per-scene records to this JSON file"
    )
    parser.add_argument(
        "--save_calls", default=None, help="also write the edited and fresh images here (.pt)"
    )
    parser.add_argument("--progress", action="store_true", help="print a line per finished scene")
    parser.add_argument(
        "--instances",
        type=int,
        default=None,
        help="held-out scenes with exactly this many objects (default: the model's)",
    )
    args = parser.parse_args(argv)
    if args.scenes < 1 or args.steps < 1 or (args.instances is not None and args.instances < 1):
        parser.error(
            f"--scenes={args.scenes}, --steps={args.steps} and --instances={args.instances} must be positive."
        )

    from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline  # (heavy: after the arguments are checked)

    model = args.model or embedded_model("mtcolor-tiny")
    pipe = MTColorPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    torch.set_num_threads(1)
    guidance = recommended_guidance_scale(model) if args.guidance_scale is None else args.guidance_scale
    config = synthetic_config(model)
    if args.instances is not None:
        config = dataclasses.replace(config, num_objects=(args.instances, args.instances))
    scenes = held_out_scenes(config, args.scenes, args.seed)
    run_scene(pipe, scenes[0], args.seed, args.steps, guidance)  # warm-up, not counted
    results = []
    for i, scene in enumerate(scenes):
        results.append(run_scene(pipe, scene, args.seed + i, args.steps, guidance))
        if args.progress:
            print(f"scene {i + 1}/{len(scenes)} done", flush=True)
    summary = summarize(results, scene_label_maps(scenes))
    print(format_table(summary))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        settings.update(model=str(model), guidance_scale=guidance)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {"settings": settings, "summary": summary, "scenes": records(results)}, handle, indent=1
            )
    if args.save_calls:
        torch.save(
            {
                "edit": torch.stack([r["edit"] for r in results]),
                "fresh": torch.stack([r["fresh"] for r in results]),
                "words": json.dumps([r["word"] for r in results]),
            },
            args.save_calls,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
