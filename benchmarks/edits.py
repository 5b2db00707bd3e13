"""Editing one instance of an earlier result, measured on held-out synthetic scenes.

``python -m mtcolor.bench edits [--model DIR] [--scenes 100] [--steps 20] [--seed 0] [--json FILE]``

For every scene: a fresh run with its own texts (seed s); then one instance (the first) is asked
for another basic colour (the next one of the palette that is far from its own) and the scene is
(a) edited from the fresh run (``edit_from``, seed s + 1) and (b) run fresh with the new texts
(seed s + 1). Reported: adherence of the edited instance in (a) and (b) with 95% intervals, the
pixels changed outside the edited region in (a) (must be 0), the colour leak across the edited
instance's boundary in (a) and (b) (the bleeding metric), and the time of (a) relative to the fresh
run of the same scene; the ratio is also given for the 4-instance scenes alone (1 of 4 instances
edited).
"""

from __future__ import annotations

import argparse
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
    common = dict(num_inference_steps=steps, guidance_scale=guidance, working_resolution=gray.shape[0])

    def call(call_texts, call_seed, **kw):
        start = time.perf_counter()
        out = pipe(
            gray, masks, call_texts, generator=torch.Generator().manual_seed(call_seed), **common, **kw
        )
        return out, time.perf_counter() - start

    first, fresh_seconds = call(list(scene["instance_texts"]), seed)
    edited, edit_seconds = call(texts, seed + 1, edit_from=first)
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
        "instances": len(texts),
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


def summarize(results: list[dict], label_maps: torch.Tensor) -> dict:
    words = [r["word"] for r in results]
    edit_share, count, edit_leak = _edited_scores(
        torch.stack([r["edit"] for r in results]), label_maps, words
    )
    fresh_share, _, fresh_leak = _edited_scores(torch.stack([r["fresh"] for r in results]), label_maps, words)
    ratios = [r["edit_seconds"] / r["fresh_seconds"] for r in results]
    four = [q for q, r in zip(ratios, results) if r["instances"] == 4]
    return {
        "scenes": len(results),
        "edited_adherence": edit_share,
        "fresh_adherence": fresh_share,
        "instances": count,
        "changed_outside": sum(r["changed_outside"] for r in results),
        "edit_leak": edit_leak,
        "fresh_leak": fresh_leak,
        "time_ratio": float(np.median(ratios)),
        "time_ratio_4_instances": float(np.median(four)) if four else float("nan"),
        "scenes_4_instances": len(four),
        "fresh_seconds": float(np.mean([r["fresh_seconds"] for r in results])),
        "edit_seconds": float(np.mean([r["edit_seconds"] for r in results])),
    }


def format_table(summary: dict) -> str:
    n = summary["instances"]
    return "\n".join(
        [
            "| run | adherence of the edited instance | pixels changed outside it | seam leak | time (median ratio) |",
            "|---|---|---|---|---|",
            f"| edit (`edit_from`) | {format_share(summary['edited_adherence'], n)} | {summary['changed_outside']} | "
            f"{summary['edit_leak']:.3f} | {summary['time_ratio']:.2f}x of a fresh run "
            f"({summary['time_ratio_4_instances']:.2f}x on {summary['scenes_4_instances']} 4-instance scenes) |",
            f"| fresh run with the new texts | {format_share(summary['fresh_adherence'], n)} | (all) | "
            f"{summary['fresh_leak']:.3f} | 1.00x |",
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
    parser.add_argument("--json", default=None, help="also write the summary to this JSON file")
    args = parser.parse_args(argv)
    if args.scenes < 1 or args.steps < 1:
        parser.error(f"--scenes={args.scenes} and --steps={args.steps} must be positive.")

    from pipelines.pipeline_mtcolor import MTColorPipeline  # (heavy: after the arguments are checked)

    model = args.model or embedded_model("mtcolor-tiny")
    pipe = MTColorPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    torch.set_num_threads(1)
    guidance = recommended_guidance_scale(model) if args.guidance_scale is None else args.guidance_scale
    scenes = held_out_scenes(synthetic_config(model), args.scenes, args.seed)
    results = [run_scene(pipe, s, args.seed + i, args.steps, guidance) for i, s in enumerate(scenes)]
    summary = summarize(results, scene_label_maps(scenes))
    print(format_table(summary))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
