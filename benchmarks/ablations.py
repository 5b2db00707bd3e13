"""The papers' ablation table, measured on held-out synthetic scenes.

``python -m mtcolor.bench ablations [--model DIR] [--lcoins DIR] [--scenes 40] [--steps 20]
[--mtcolor_ablations DIR] [--lcoins_ablations DIR]``

Rows: the full MT-Color model, then its ablations. Sampling ablations (plain sampling alpha = 0,
fusion w/o crop, normalised fusion) run on the full model's weights. Module ablations (w/o PMAM,
w/o instance masks, w/o instance branch, mask mode "paper") are models *retrained* without the
module with the full model's steps and seed (MT Tables III-IV), given by ``--mtcolor_ablations DIR``
(trained there on demand by :func:`mtcolor_ablation_models`, reused when present); the same
modules switched off at inference on the full model's weights are reported too, marked "(switch)".
Then L-CoIns and, with ``--lcoins_ablations DIR``, its four Table 1 ablations (also trained on demand).

Columns: colour adherence (all instances, and instances of held-out colour-shape pairs), colour
bleeding (leak), PSNR and SSIM against the ground truth, colorfulness. Models default to the
embedded ones (``mtcolor.embedded_model``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mtcolor.training.recipes.tiny_stages import (
    STEPS,
    build_data,
    lcoins_command,
    mtcolor_ablations,
    run_stage,
)
from tqdm.auto import tqdm

from mtcolor.demo_scenes import synthetic_config
from mtcolor.embedded import embedded_model, recommended_guidance_scale
from mtcolor.scene_eval import (
    colorize_scenes,
    format_share,
    ground_truth_colorfulness,
    held_out_scenes,
    scene_gray,
    score_scenes,
)

MT_ROWS = [
    ("MT-Color (full)", {}),
    ("w/o PMAM (switch)", {"switches": {"use_pmam": False}}),
    ("w/o instance masks (switch)", {"switches": {"use_instance_masks": False}}),
    ("w/o instance branch (switch)", {"switches": {"use_instance_branch": False}}),
    ("plain sampling (alpha = 0)", {"alpha": 0.0}),
    ("fusion w/o crop", {"fusion": "no_crop"}),
    ("normalized fusion", {"fusion": "normalized"}),
    ("mask mode: paper (switch)", {"switches": {"attention_mode": "paper"}}),
]

#: retrained module ablations: (row name, ``mtcolor.training.recipes.tiny_stages.MT_ABLATIONS`` key)
MT_RETRAINED = [
    ("w/o PMAM (retrained)", "no_pmam"),
    ("w/o instance masks (retrained)", "no_instance_masks"),
    ("w/o instance branch (retrained)", "no_instance_branch"),
    ("mask mode: paper (retrained)", "paper_mask_mode"),
]


def mtcolor_ablation_models(
    work_dir,
    model,
    seed: int | None = None,
    steps: dict | None = None,
    data_scale: float = 1.0,
    threads: int = 1,
    jobs: int = 1,
) -> list[tuple[str, Path]]:
    """Train (once; finished ones are reused) the MT-Color module ablations of ``model`` with the
    recipe's data and the steps and seed recorded in ``model``'s ``recipe.json`` (the recipe's
    defaults when it has none), and return ``[(row name, pipeline folder)]``.

    ``model`` (an MT-Color pipeline folder, e.g. the embedded ``mtcolor-tiny``) provides the frozen
    base model and the stage-1 weights that the stage-2-only ablations reuse (stage 2 freezes them).
    """
    work_dir, model = Path(work_dir), Path(model)
    recipe = json.loads((model / "recipe.json").read_text()) if (model / "recipe.json").is_file() else {}
    seed = recipe.get("seed", 0) if seed is None else seed
    steps = steps or {k: recipe.get("steps", STEPS).get(k, STEPS[k]) for k in ("stage1", "stage2")}
    data = work_dir / "data"
    build_data(data, seed, data_scale)
    names = [key for _, key in MT_RETRAINED]
    with tqdm(total=len(names), desc="MT-Color ablations") as bar:
        trained = mtcolor_ablations(
            work_dir, model, model, data, steps, seed, threads, jobs, names, progress=lambda _: bar.update()
        )
    folders = {name: folder for name, folder, _ in trained}
    return [(row, folders[key]) for row, key in MT_RETRAINED]


LCOINS_ABLATIONS = [
    ("L-CoIns w/o group embedding", "--no_group_embedding"),
    ("L-CoIns w/o grouping attention", "--no_grouping_attention"),
    ("L-CoIns w/o luminance augmentation", "--no_luminance_augmentation"),
    ("L-CoIns w/o counter-colour loss", "--no_counter_color_loss"),
]


def lcoins_ablation_models(
    work_dir,
    seed: int = 0,
    steps: int | None = None,
    data_scale: float = 1.0,
    threads: int = 1,
    jobs: int = 1,
):
    """Train (once; finished ones are reused) the four L-CoIns Table 1 ablations with the recipe's
    data and seed (``mtcolor.training.recipes.tiny_stages``), and return ``[(row name, model folder)]``.

    ``steps`` defaults to the recipe's (:data:`~mtcolor.training.recipes.tiny_stages.STEPS`, the shipped
    model's). With other steps, a model without any ablation is trained too, first in the list as
    "L-CoIns (N steps)", so that every ablation is compared with the full model at its own steps;
    their rows end in " (N steps)" and their folders in ``_<N>`` (``full_<N>``), so runs of
    different lengths never mix.
    ``jobs`` models train at the same time, ``threads`` torch threads each.
    """
    from concurrent.futures import ThreadPoolExecutor

    work_dir = Path(work_dir)
    data = work_dir / "data"
    build_data(data, seed, data_scale)
    steps = steps or STEPS["lcoins"]
    rows = list(LCOINS_ABLATIONS)
    suffix = ""
    if steps != STEPS["lcoins"]:
        rows = [(f"L-CoIns ({steps} steps)", "")] + [(f"{name} ({steps} steps)", flag) for name, flag in rows]
        suffix = f"_{steps}"

    def train(row: tuple[str, str]) -> tuple[str, Path]:
        name, flag = row
        key = (flag.strip("-") or "full") + suffix
        folder = work_dir / key
        if not (folder / "model_index.json").is_file():
            command = lcoins_command(data, folder, steps, seed, (flag,) if flag else ())
            run_stage(key, command, work_dir / "logs", threads)
        return name, folder

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(tqdm(pool.map(train, rows), total=len(rows), desc="L-CoIns ablations"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.bench ablations", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", default=None, help="MT-Color pipeline folder (default: embedded mtcolor-tiny)"
    )
    parser.add_argument(
        "--lcoins", default=None, help="L-CoIns pipeline folder (default: embedded lcoins-tiny)"
    )
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="MT-Color guidance (default: the value the model's recipe measured best, else 7.5)",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="*", default=None, help="subset of MT-Color row names")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--lcoins_ablations",
        default=None,
        metavar="DIR",
        help="train the four L-CoIns Table 1 ablations into DIR (the recipe's data, steps and seed; reused "
        "when already there) and add their rows",
    )
    parser.add_argument(
        "--lcoins_ablation_steps",
        type=int,
        default=None,
        help="train the L-CoIns ablations for this many steps instead of the recipe's, with a full model "
        "at the same steps as their reference row (e.g. 2500: about 19 CPU-minutes per model)",
    )
    parser.add_argument(
        "--mtcolor_ablations",
        default=None,
        metavar="DIR",
        help="train the MT-Color module ablations (w/o PMAM, w/o instance masks, w/o instance branch, paper mask "
        "mode) into DIR with the model's recipe steps and seed (reused when already there) and add their rows",
    )
    parser.add_argument(
        "--no_language", action="store_true", help="skip the held-out language split column (saves time)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each ablation training run")
    parser.add_argument("--jobs", type=int, default=1, help="ablation models trained at the same time")
    return parser


@dataclass
class SceneBench:
    """The held-out scenes of one run and how each row is colorized and scored on them.

    Attributes:
        args: the parsed command line.
        image_size: the scenes' size, the MT-Color pipelines' ``working_resolution``.
        holdout: the held-out (colour, shape) pairs.
        scenes: the held-out test scenes.
        language_scenes: the same scenes asked with colour words and phrasings never used in training.
        guidance: the MT-Color guidance scale.
        language: row name -> its scores on ``language_scenes`` (rows that ran the language split).
    """

    args: argparse.Namespace
    image_size: int
    holdout: set
    scenes: list[dict]
    language_scenes: list[dict]
    guidance: float
    language: dict[str, dict] = field(default_factory=dict)

    def colorize(self, pipe, rows, scene_list=None) -> list[tuple[str, dict]]:
        """MT-Color ``rows`` (``[(name, pipeline options)]``) on ``scene_list`` (default: the scenes)."""
        args = self.args
        scene_list = self.scenes if scene_list is None else scene_list
        return colorize_scenes(
            pipe, scene_list, rows, args.steps, args.seed, args.batch, self.image_size, self.guidance
        )

    def score_language(self, name: str, pipe) -> None:
        """Score one MT-Color model (with its own defaults) on the language split, unless disabled."""
        if not self.args.no_language:
            ((_, result),) = self.colorize(pipe, [(name, {})], self.language_scenes)
            self.language[name] = score_scenes(result["outputs"], self.language_scenes, self.holdout)


def _mtcolor_results(bench: SceneBench, pipe, model) -> list[tuple[str, dict]]:
    """The MT-Color rows: the full model and its inference-time ablations, then (with
    ``--mtcolor_ablations``) the retrained module ablations."""
    from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline

    args = bench.args
    rows = [r for r in MT_ROWS if args.rows is None or r[0] in args.rows]
    results = bench.colorize(pipe, rows)
    if any(name == "MT-Color (full)" for name, _ in rows):
        bench.score_language("MT-Color (full)", pipe)
    if args.mtcolor_ablations:
        for name, folder in mtcolor_ablation_models(
            args.mtcolor_ablations, model, threads=args.threads, jobs=args.jobs
        ):
            if args.rows is None or name in args.rows:
                variant = MTColorPipeline.from_pretrained(folder)
                variant.set_progress_bar_config(disable=True)
                results += bench.colorize(variant, [(name, {})])
                bench.score_language(name, variant)
    return results


def _lcoins_colorize(lcoins_pipe, scenes: list[dict]) -> torch.Tensor:
    """(N, 3, H, W) outputs of an L-CoIns pipeline captioned with the scenes' global texts."""
    out = lcoins_pipe(
        [scene_gray(s) for s in scenes], [s["global_text"] for s in scenes], output_type="pt"
    ).images
    return torch.stack(list(out)) if isinstance(out, list) else out


def _lcoins_results(bench: SceneBench) -> tuple[list[tuple[str, dict]], str | None]:
    """The L-CoIns rows (the given or embedded model, then its Table 1 ablations with
    ``--lcoins_ablations``) and the L-CoIns model folder (None when there is none)."""
    from mtcolor.pipelines.pipeline_lcoins import LCoInsPipeline

    args = bench.args
    lcoins = args.lcoins
    if lcoins is None:
        try:
            lcoins = embedded_model("lcoins-tiny")
        except FileNotFoundError:
            lcoins = None
    lcoins_models = [("L-CoIns", lcoins)] if lcoins is not None else []
    if args.lcoins_ablations:
        lcoins_models += lcoins_ablation_models(
            args.lcoins_ablations, args.seed, args.lcoins_ablation_steps, threads=args.threads, jobs=args.jobs
        )
    results = []
    for name, folder in lcoins_models:
        lcoins_pipe = LCoInsPipeline.from_pretrained(folder)
        start = time.perf_counter()
        out = _lcoins_colorize(lcoins_pipe, bench.scenes)
        results.append((name, {"outputs": out, "seconds": time.perf_counter() - start}))
        if not args.no_language:
            out = _lcoins_colorize(lcoins_pipe, bench.language_scenes)
            bench.language[name] = score_scenes(out, bench.language_scenes, bench.holdout)
    return results, lcoins


def _print_table(bench: SceneBench, results: list[tuple[str, dict]], model) -> list[dict]:
    """Print the Markdown table of every row; return the rows as JSON-ready dicts."""
    args, scenes, holdout = bench.args, bench.scenes, bench.holdout
    print(
        f"# Ablations on {len(scenes)} held-out synthetic scenes ({args.steps} steps, guidance {bench.guidance}, "
        f"seed {args.seed})\n\n"
        f"MT-Color model: `{model}`; held-out colour-shape pairs: {sorted(holdout)}. Rows marked (switch) turn a "
        "module off at inference on the full model's weights; (retrained) rows are models trained without it "
        "with the same steps and seed, as in the paper.\n"
    )
    print(
        "Adherence: share of instances with the colour their text names, with its 95% Wilson interval; "
        "language split: the same scenes asked with colour words and phrasings never used in training "
        "(crimson, navy, 'a star painted X', 'an X-coloured star'), scored against the colour they name. "
        f"Ground truth colorfulness: {ground_truth_colorfulness(scenes):.1f}.\n"
    )
    print(
        "| row | adherence | adherence (held-out pairs) | adherence (3-object scenes) | adherence (language split) | "
        "bleeding (leak) | PSNR | SSIM | colorfulness | time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    table = []
    for name, result in results:
        scores = score_scenes(result["outputs"], scenes, holdout)
        lang = bench.language.get(name)
        row = {"row": name, **scores, "seconds": result["seconds"]}
        if lang is not None:
            row.update(adherence_language=lang["adherence"], language_instances=lang["instances"])
        table.append(row)
        lang_cell = "—" if lang is None else format_share(lang["adherence"], lang["instances"])
        print(
            f"| {name} | {format_share(scores['adherence'], scores['instances'])} | "
            f"{format_share(scores['adherence_holdout'], scores['holdout_instances'])} | "
            f"{format_share(scores['adherence_crowded'], scores['crowded_instances'])} | {lang_cell} | "
            f"{scores['bleeding']:.3f} | {scores['psnr']:.2f} | {scores['ssim']:.3f} | "
            f"{scores['colorfulness']:.1f} | {result['seconds']:.0f} s |"
        )
    return table


def _print_notes(args, lcoins) -> None:
    """What the table left out and the options that add it."""
    if lcoins is None:
        print("\nL-CoIns: no model given and none embedded; row skipped.")
    if not args.mtcolor_ablations:
        print(
            "\nMT-Color module ablations retrained without the module (as in the paper): add `--mtcolor_ablations "
            "DIR` to train them with the model's recipe steps and seed (about 2.6 CPU-hours in all for "
            "mtcolor-tiny; `--jobs 2` halves the wall time on 2 cores) and report their rows."
        )
    if not args.lcoins_ablations:
        print(
            "\nL-CoIns Table-1 ablations (own weights each): add `--lcoins_ablations DIR` to train them with the "
            "recipe's data, steps and seed (about 55 CPU-minutes each; `--lcoins_ablation_steps 2500` trains them "
            "shorter, with a full model at the same steps) and report their rows."
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lcoins_ablation_steps is not None and args.lcoins_ablation_steps < 1:
        parser.error(
            f"--lcoins_ablation_steps={args.lcoins_ablation_steps}; pass a positive number of training steps "
            f"(the recipe trains {STEPS['lcoins']})."
        )

    from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline  # (heavy: after the arguments are checked)

    model = args.model or embedded_model("mtcolor-tiny")
    pipe = MTColorPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    config = synthetic_config(model)
    bench = SceneBench(
        args=args,
        image_size=config.image_size,
        holdout={tuple(p) for p in config.holdout_pairs},
        scenes=held_out_scenes(config, args.scenes, args.seed),
        language_scenes=held_out_scenes(config, args.scenes, args.seed, "language"),
        guidance=recommended_guidance_scale(model) if args.guidance_scale is None else args.guidance_scale,
    )
    results = _mtcolor_results(bench, pipe, model)
    lcoins_results, lcoins = _lcoins_results(bench)
    table = _print_table(bench, results + lcoins_results, model)
    _print_notes(args, lcoins)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return 0
