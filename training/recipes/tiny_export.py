"""Exporting the tiny recipe's models into ``mtcolor/embedded/``: the guidance sweep, the model cards'
recipe and measured sections, the data fingerprint and the frozen text encoder's reference.

Scores come from :mod:`mtcolor.scene_eval` (the same held-out scenes and metrics as the ablation
benchmark, which sits above the recipe and is not imported here).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mtcolor import scene_eval
from mtcolor.synthetic import generate_scene, scene_seed
from mtcolor.text_encoders import load_packaged_text_encoder, write_text_encoder_reference

from .tiny_stages import (
    DATA,
    EMBEDDED,
    LCOINS_RECIPE_FLAGS,
    MTCOLOR_STAGE1_FLAGS,
    MTCOLOR_STAGE2_FLAGS,
    STEPS,
    SYNTHETIC,
    TEXT_ENCODER,
    scaled_steps,
    synthetic_config,
)

#: each stage's extra training flags, as the model cards list them
RECIPE_FLAGS = {"stage1": MTCOLOR_STAGE1_FLAGS, "stage2": MTCOLOR_STAGE2_FLAGS, "lcoins": LCOINS_RECIPE_FLAGS}

#: guidance scales the export compares (MT-Color's sampling default is SD's 7.5)
GUIDANCE_SWEEP = (1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 7.5)


def choose_guidance(
    pipeline_folder: Path, scenes: int = 40, seed: int = 1, steps: int = 20, candidates=GUIDANCE_SWEEP
) -> dict:
    """Measure the trained MT-Color pipeline's colour adherence at each guidance scale on
    validation scenes and pick the best (ties: the first in ``candidates``).

    The scenes are the ablation bench's with ``seed`` (default 1): disjoint from the seed-0
    scenes the README's tables report. Returns the ``"inference"`` entry of ``recipe.json``:
    ``{"guidance_scale", "num_inference_steps", "sweep": {scale: adherence}, "scenes", "seed"}``.
    """
    from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline  # (heavy: imported when the sweep runs)

    config = synthetic_config()
    pipe = MTColorPipeline.from_pretrained(pipeline_folder)
    pipe.set_progress_bar_config(disable=True)
    validation = scene_eval.held_out_scenes(config, scenes, seed)
    holdout = {tuple(p) for p in config.holdout_pairs}
    rows = [(str(scale), {"guidance_scale": float(scale)}) for scale in candidates]
    results = scene_eval.colorize_scenes(pipe, validation, rows, steps, seed, 8, config.image_size)
    sweep = {
        float(scale): round(scene_eval.score_scenes(result["outputs"], validation, holdout)["adherence"], 4)
        for scale, (_, result) in zip(candidates, results)
    }
    best = max(sweep, key=lambda scale: (sweep[scale], -list(sweep).index(scale)))
    print(f"[recipe] guidance sweep (adherence on {scenes} validation scenes): {sweep}; chosen {best}")
    return {
        "guidance_scale": best,
        "num_inference_steps": steps,
        "sweep": sweep,
        "scenes": scenes,
        "seed": seed,
    }


#: the "Baseline" section's lead: what its rows are (``--baseline_json``)
BASELINE_LEAD = (
    "The same bench and scenes on the model this one replaces (the recipe's previous settings; each row "
    "names what differs), kept for comparison:"
)


def measured_section(bench: list[dict], model: str, lead: str | None = None) -> str:
    """Markdown table of the ``mtcolor.bench ablations --json`` rows of one model's card: for
    ``"lcoins-tiny"`` the rows whose name starts with "L-CoIns" (the model and its Table 1
    ablations), for ``"mtcolor-tiny"`` every other row (the full model, its sampling switches and
    its retrained module ablations). ``lead`` replaces the sentence above the table (e.g.
    :data:`BASELINE_LEAD` for the rows of the model this one replaces); "" when no row is the model's."""
    if model not in ("mtcolor-tiny", "lcoins-tiny"):
        raise ValueError(f"model={model!r}; pass 'mtcolor-tiny' or 'lcoins-tiny'.")
    rows = [row for row in bench if row["row"].startswith("L-CoIns") == (model == "lcoins-tiny")]
    if not rows:
        return ""
    lines = [
        lead
        or "`python -m mtcolor.bench ablations` on held-out synthetic scenes (adherence: share of instances whose "
        "colour matches the colour their text names, with its 95% interval; language split: the same scenes "
        "asked with colour words and phrasings never used in training; leak: chroma bleeding across mask "
        "boundaries, lower is better):",
        "",
        "| row | adherence | held-out pairs | 3-object scenes | language split | leak | PSNR | SSIM | colorfulness |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def share(row, key, count):
        return scene_eval.format_share(row[key], row[count]) if key in row else "—"

    for row in rows:
        lines.append(
            f"| {row['row']} | {share(row, 'adherence', 'instances')} | "
            f"{share(row, 'adherence_holdout', 'holdout_instances')} | "
            f"{share(row, 'adherence_crowded', 'crowded_instances')} | "
            f"{share(row, 'adherence_language', 'language_instances')} | "
            f"{row['bleeding']:.3f} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['colorfulness']:.1f} |"
        )
    return "\n".join(lines)


def data_fingerprint(seed: int, count: int = 4) -> list[str]:
    """sha256 of the first ``count`` training scenes' pixels and masks (the recipe's first step)."""
    config = synthetic_config()
    digests = []
    for i in range(count):
        scene = generate_scene(config, scene_seed(seed, "train", i), "train")
        digest = hashlib.sha256(np.asarray(scene["image"]).tobytes())
        digest.update(np.asarray(scene["masks"]).tobytes())
        digest.update("|".join(scene["instance_texts"]).encode())
        digests.append(digest.hexdigest())
    return digests


def reference_frozen_text_encoder(text_encoder, folder: Path) -> None:
    """Replace ``folder/text_encoder``'s weights by a reference to the packaged :data:`TEXT_ENCODER`,
    after checking they are exactly its weights (the recipe keeps the encoder frozen)."""
    packaged = load_packaged_text_encoder(TEXT_ENCODER).state_dict()
    trained = text_encoder.state_dict()
    changed = [k for k in packaged if k not in trained or not torch.equal(packaged[k], trained[k].cpu())]
    if changed:
        raise ValueError(
            f"{folder}: the text encoder differs from the packaged {TEXT_ENCODER} ({len(changed)} tensors, e.g. "
            f"{changed[:2]}); it was not frozen, so its weights must ship with the model."
        )
    write_text_encoder_reference(folder, TEXT_ENCODER)


def recipe_section(scale: float, seed: int, times: dict) -> str:
    """The "Recipe" section of the model cards: command, data, steps, each stage's extra flags and wall time (s)."""
    return (
        f"`python -m mtcolor.training.recipes.tiny --scale {scale} --seed {seed}` on 2 CPU cores; data: "
        f"{DATA[0]} + {DATA[1]} synthetic {SYNTHETIC['image_size']} px scenes (luminance decorrelated from "
        f"colour; held-out colour-shape pairs {SYNTHETIC['holdout_pairs']}); steps: "
        + ", ".join(f"{k} {scaled_steps(k, scale)}" for k in STEPS)
        + "; extra flags: "
        + ", ".join(f"{stage} {' '.join(flags) or 'none'}" for stage, flags in RECIPE_FLAGS.items())
        + "; wall time (s): "
        + ", ".join(f"{k} {v}" for k, v in times.items())
    )


def inference_section(inference: dict) -> str:
    """The "Inference settings" section of mtcolor-tiny's card (``inference``: :func:`choose_guidance`'s result)."""
    sweep = ", ".join(f"{float(scale):g}: {acc:.1%}" for scale, acc in inference["sweep"].items())
    return (
        f"`guidance_scale={inference['guidance_scale']:g}`, {inference['num_inference_steps']} steps (read by "
        f"`mtcolor demo` and `mtcolor.bench ablations` from `recipe.json`): the best colour adherence of a "
        f"guidance sweep on {inference['scenes']} validation scenes (seed {inference['seed']}, not the "
        f"reported test scenes): {sweep}."
    )


def export(out: Path, times: dict, args) -> None:
    """Copy the trained pipelines into ``mtcolor/embedded/`` with the recipe facts in their cards."""
    from mtcolor.pipelines.pipeline_lcoins import LCoInsPipeline  # (heavy: imported when the export runs)
    from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline

    config = synthetic_config()
    recipe = recipe_section(args.scale, args.seed, times)
    inference = None
    if (out / "stage2" / "pipeline" / "model_index.json").is_file():
        cache = out / "guidance.json"  # the sweep is measured once per trained model
        if not cache.is_file():
            cache.write_text(json.dumps(choose_guidance(out / "stage2" / "pipeline"), indent=2))
        inference = json.loads(cache.read_text())
    bench = json.loads(Path(args.bench_json).read_text()) if args.bench_json else []
    baseline = json.loads(Path(args.baseline_json).read_text()) if args.baseline_json else []
    targets = {
        "mtcolor-tiny": (MTColorPipeline, out / "stage2" / "pipeline"),
        "lcoins-tiny": (LCoInsPipeline, out / "lcoins"),
    }
    for name, (cls, source) in targets.items():
        if not (source / "model_index.json").is_file():
            print(f"[recipe] {name}: {source} missing, not exported")
            continue
        pipe = cls.from_pretrained(source)
        target = EMBEDDED / name
        tmp = EMBEDDED / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        sections = {"Recipe": recipe}
        if name == "mtcolor-tiny" and inference:
            sections["Inference settings"] = inference_section(inference)
        measured = measured_section(bench, name)
        if measured:
            sections["Measured"] = measured
        previous = measured_section(baseline, name, BASELINE_LEAD)
        if previous:
            sections["Baseline"] = previous
        load_from = f'mtcolor.embedded_model("{name}")'
        pipe.save_pretrained(tmp, model_card_kwargs={"sections": sections, "load_from": load_from})
        reference_frozen_text_encoder(pipe.text_encoder, tmp)
        (tmp / "synthetic_config.json").write_text(json.dumps(asdict(config), indent=2))
        facts = {
            "recipe": "python -m mtcolor.training.recipes.tiny",
            "seed": args.seed,
            "scale": args.scale,
            "steps": {k: scaled_steps(k, args.scale) for k in STEPS},
            "data": {"train": DATA[0], "test": DATA[1], "synthetic": SYNTHETIC},
            "wall_time_s": times,
            "first_scenes_sha256": data_fingerprint(args.seed),
        }
        if name == "mtcolor-tiny" and inference:
            facts["inference"] = inference
        (tmp / "recipe.json").write_text(json.dumps(facts, indent=2, default=list))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
        print(f"[recipe] exported {name}: {size:.1f} MB")
