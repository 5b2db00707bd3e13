"""Colour control on held-out synthetic scenes: adherence, CIEDE2000 to the targets, leak, time.

``python -m mtcolor.bench colors [--model DIR] [--scenes 100] [--steps 20] [--seed 0] [--json FILE]
[--rows KEY ...] [--no_language] [--start 0] [--save_calls FILE] [--rescore FILE ...]``

``--start S --scenes N`` runs held-out scenes S .. S + N - 1 only (the same seeds and targets as in a
full run), so a run can be split into parts whose ``--save_calls`` files are scored together with
``--rescore PART1 PART2 ... --scenes TOTAL``.

Every scene is colorized by every row with the same seed (scene ``i``: ``seed + i``), one scene at
a time with all rows back to back, so the time ratios compare calls made under the same machine
load. Rows (``--rows`` keys):

* ``texts``: texts only (``colors_from_texts=False``, no targets): what the learned model does on
  its own. (Text targets with neither steering nor the exact mode give this row's pixels bit for
  bit: a target acts only through them.)
* ``text-exact``: targets read from the texts (:func:`mtcolor.color_targets.color_from_text`),
  exact mode alone (``color_steering=0``, the pipeline's defaults): the control for steering;
* ``text-steer``: targets from the texts, steering alone (``exact_colors=False``);
* ``text-steer-exact``: targets from the texts, steering and the exact mode;
* ``random-steer-exact`` / ``random-steer`` / ``random-exact`` (the last not run by default):
  explicit *random* targets, one per instance, drawn uniformly in a*b* inside the sRGB gamut at the
  instance's own median L (:func:`random_targets`: rejection sampling, seeded per scene), with
  steering and the exact mode / steering alone / the exact mode alone.

Columns: adherence (the project's metric against each scene's canonical ``instance_colors``, with
its 95% Wilson interval; not defined for random targets), adherence on the held-out colour-shape
pairs, adherence on the language split (the same scenes asked with colour words and phrasings never
used in training; text rows only), the median CIEDE2000 between each instance's target and its
measured colour at the same L (:func:`mtcolor.metrics.instance_color_errors`; text rows: against the
colour the text names, also for the texts-only row), the share of instances within deltaE00 5, the
bleeding leak, colourfulness, and the time per image (wall and process CPU time; the ratio to the
texts-only call of the same scene, median over scenes, for the whole call and for sampling alone:
the call up to the end of its last denoising step).

Notes under the table: per row, the passes and misses (deltaE00 <= 5 or not) with the median share
of their pixels within deltaE00 5 of the target, chroma difference and hue error (what limits a
missed target), and the adherence ceiling of exact text targets: the ground truth with every
instance painted with its text's colour (:func:`painted_with_targets`) scored by the adherence
metric.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from mtcolor.color import fit_chroma_to_gamut, lab_to_rgb, rgb_to_lab
from mtcolor.color_targets import ColorTarget, color_from_text
from mtcolor.demo_scenes import synthetic_config
from mtcolor.embedded import embedded_model, recommended_guidance_scale
from mtcolor.metrics import instance_color_errors, summarize_color_errors
from mtcolor.metrics.color_error import ciede2000
from mtcolor.metrics.evaluation import to_json
from mtcolor.scene_eval import (
    format_share,
    ground_truth_colorfulness,
    held_out_scenes,
    scene_adherence,
    scene_gray,
    scene_images,
    scene_label_maps,
    score_scenes,
    wilson_interval,
)

#: deltaE00 pass threshold (GenColorBench)
THRESHOLD = 5.0


@dataclass(frozen=True)
class Row:
    """One way of calling the pipeline.

    Attributes:
        key: the ``--rows`` key; name: the table's row name.
        targets: ``"none"`` (``colors_from_texts=False``), ``"text"`` (targets from the texts) or
            ``"random"`` (explicit random targets).
        steering: ``color_steering``; exact: ``exact_colors``.
    """

    key: str
    name: str
    targets: str
    steering: float
    exact: bool

    @property
    def language(self) -> bool:
        """Whether the row runs on the language split too (rows whose targets come from texts)."""
        return self.targets != "random"


ROWS = (
    Row("texts", "texts only (no targets)", "none", 1.0, True),
    Row("text-exact", "targets from texts, exact mode only", "text", 0.0, True),
    Row("text-steer", "targets from texts + steering", "text", 1.0, False),
    Row("text-steer-exact", "targets from texts + steering + exact mode", "text", 1.0, True),
    Row("random-steer-exact", "random targets + steering + exact mode", "random", 1.0, True),
    Row("random-steer", "random targets + steering", "random", 1.0, False),
    Row("random-exact", "random targets, exact mode only", "random", 0.0, True),
)
DEFAULT_ROWS = ("texts", "text-exact", "text-steer", "text-steer-exact", "random-steer-exact", "random-steer")
_BY_KEY = {row.key: row for row in ROWS}


# --------------------------------------------------------------------------------------------- targets
def _in_gamut(lightness: float, ab: torch.Tensor) -> torch.Tensor:
    """(n,) bool: whether (L, a, b) is inside sRGB for candidates ab (2, n) (the gamut test of
    :func:`mtcolor.color.fit_chroma_to_gamut`, which leaves in-gamut colours exactly as they are)."""
    light = torch.full((1, ab.shape[1], 1), float(lightness), dtype=torch.float32)
    candidates = ab[:, :, None].to(torch.float32)
    return (fit_chroma_to_gamut(light, candidates) == candidates).all(0)[:, 0]


def _gamut_radius(lightness: float) -> float:
    """The largest chroma inside sRGB at ``lightness`` over 720 hues (0 at L = 0 and L = 100)."""
    hues = torch.linspace(0, 2 * math.pi, 721)[:-1]
    ab = 200.0 * torch.stack([hues.cos(), hues.sin()])[:, :, None]  # (2, 720, 1), all outside sRGB
    light = torch.full((1, hues.numel(), 1), float(lightness))
    return float(torch.linalg.vector_norm(fit_chroma_to_gamut(light, ab), dim=0).max())


def random_in_gamut_target(lightness: float, rng: np.random.Generator, batch: int = 4096) -> ColorTarget:
    """A target at ``lightness`` drawn uniformly in a*b* among the colours inside sRGB at that L.

    Rejection sampling: candidates uniform in the square of half-side ``1.05 r + 1`` around 0
    (``r``: the gamut slice's largest chroma over 720 hues, so the square holds the whole slice),
    the first inside sRGB is kept. At L = 0 or 100 the slice is the neutral point alone.
    ``rng`` supplies the draws.
    """
    if not 0 <= lightness <= 100:
        raise ValueError(f"lightness={lightness!r}; expected an L in [0, 100].")
    radius = _gamut_radius(lightness)
    a, b = 0.0, 0.0
    if radius > 0:
        half = min(128.0, 1.05 * radius + 1.0)
        for _ in range(1000):
            ab = torch.from_numpy(rng.uniform(-half, half, size=(2, batch)))
            inside = _in_gamut(lightness, ab).nonzero().flatten()
            if inside.numel():
                a, b = (float(v) for v in ab[:, int(inside[0])])
                break
        else:
            raise RuntimeError(f"no in-gamut colour found at L = {lightness} in {1000 * batch} draws.")
    lab = torch.tensor([float(lightness), a, b], dtype=torch.float32).view(3, 1, 1)
    code = "#" + "".join(f"{round(v * 255):02x}" for v in lab_to_rgb(lab).flatten().tolist())
    return ColorTarget((float(lightness), a, b), code, "rgb", code)


def random_targets(scene: dict, label_map: torch.Tensor, seed: int, index: int) -> list[ColorTarget | None]:
    """One random target per instance of ``scene`` at the instance's median input L (None for an
    instance without pixels in ``label_map`` (H, W)); seeded by ``(seed, index)``, so a scene's
    targets do not depend on how many scenes run."""
    rng = np.random.default_rng([seed, index])
    lightness = torch.from_numpy(scene_gray(scene)) * 100.0
    out = []
    for k in range(1, len(scene["instance_texts"]) + 1):
        inside = lightness[label_map == k]
        out.append(None if inside.numel() == 0 else random_in_gamut_target(float(inside.median()), rng))
    return out


def text_targets(texts: list[str]) -> list[ColorTarget | None]:
    """The target each text names (None for texts naming none or several colours)."""
    return [color_from_text(text).target for text in texts]


# --------------------------------------------------------------------------------------------- running
@dataclass
class Call:
    """One pipeline call: its image (3, H, W) in [0, 1], wall and CPU seconds for the whole call and
    up to the end of the last denoising step."""

    image: torch.Tensor
    wall: float
    cpu: float
    loop_wall: float
    loop_cpu: float
    diagnostics: list


def run_call(pipe, scene: dict, texts: list[str], row: Row, colors, steps: int, guidance: float, seed: int):
    """Colorize one scene with one row's options; returns a :class:`Call`."""
    marks = {}

    def mark(_pipe, _step, _t, _tensors):  # the end of the latest denoising step
        marks.update(wall=time.perf_counter(), cpu=time.process_time())
        return {}

    wall, cpu = time.perf_counter(), time.process_time()
    out = pipe(
        scene_gray(scene),
        list(scene["masks"]),
        texts,
        prompt=scene["global_text"],
        num_inference_steps=steps,
        guidance_scale=guidance,
        working_resolution=scene_gray(scene).shape[0],
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        colors=colors,
        colors_from_texts=row.targets == "text",
        color_steering=row.steering,
        exact_colors=row.exact,
        callback_on_step_end=mark,
        callback_on_step_end_tensor_inputs=[],
    )
    end_wall, end_cpu = time.perf_counter(), time.process_time()
    return Call(
        image=out.images[0],
        wall=end_wall - wall,
        cpu=end_cpu - cpu,
        loop_wall=marks["wall"] - wall,
        loop_cpu=marks["cpu"] - cpu,
        diagnostics=list(out.diagnostics),
    )


def run_scenes(pipe, bench: dict, rows: list[Row], args) -> dict:
    """Every row on every scene (and the language rows on the language split), scene by scene.

    Returns ``{(split, row key): [Call per scene]}`` and the random targets under ``"targets"``.
    """
    calls: dict = {}
    randoms = []
    label_maps = bench["label_maps"]
    first = bench["scenes"][0]  # warm-up (not timed): loads or fits the colour probe steering reads
    run_call(
        pipe,
        first,
        first["instance_texts"],
        _BY_KEY["text-steer-exact"],
        None,
        args.steps,
        bench["guidance"],
        args.seed,
    )
    for i, scene in enumerate(bench["scenes"]):
        index = args.start + i  # the scene's index in the held-out set: its seed and random targets
        targets = random_targets(scene, label_maps[i], args.seed, index)
        randoms.append(targets)
        for row in rows:
            colors = targets if row.targets == "random" else None
            call = run_call(
                pipe,
                scene,
                scene["instance_texts"],
                row,
                colors,
                args.steps,
                bench["guidance"],
                args.seed + index,
            )
            calls.setdefault(("main", row.key), []).append(call)
        if bench["language_scenes"] is not None:
            language = bench["language_scenes"][i]
            for row in (r for r in rows if r.language):
                call = run_call(
                    pipe,
                    language,
                    language["instance_texts"],
                    row,
                    None,
                    args.steps,
                    bench["guidance"],
                    args.seed + index,
                )
                calls.setdefault(("language", row.key), []).append(call)
        if args.progress:
            print(f"scene {i + 1}/{len(bench['scenes'])} done", flush=True)
    calls["targets"] = randoms
    return calls


def save_calls(calls: dict, path) -> None:
    """Write the calls (images, times, diagnostics) and the random targets for ``--rescore``
    (``torch.save`` of tensors, lists and strings only, read back with ``weights_only=True``)."""
    data = {
        "targets": [[None if t is None else [*t.lab, t.hex] for t in ts] for ts in calls["targets"]],
        "calls": {},
    }
    for (split, key), items in ((k, v) for k, v in calls.items() if k != "targets"):
        data["calls"][f"{split}/{key}"] = {
            "images": torch.stack([c.image for c in items]),
            "times": torch.tensor(
                [[c.wall, c.cpu, c.loop_wall, c.loop_cpu] for c in items], dtype=torch.float64
            ),
            "diagnostics": json.dumps([c.diagnostics for c in items]),
        }
    torch.save(data, path)


def load_calls(paths, scenes: int) -> dict:
    """The calls written by :func:`save_calls` to one file or to several (parts of one run made with
    ``--start``, in scene order, concatenated); ``ValueError`` when they hold another number of
    scenes or not the same rows."""
    paths = [paths] if isinstance(paths, (str, bytes)) or not isinstance(paths, (list, tuple)) else paths
    calls: dict = {"targets": []}
    for part, path in enumerate(paths):
        data = torch.load(path, weights_only=True)
        for ts in data["targets"]:
            calls["targets"].append(
                [None if t is None else ColorTarget(tuple(t[:3]), t[3], "rgb", t[3]) for t in ts]
            )
        keys = {tuple(name.split("/")) for name in data["calls"]}
        if part and keys != {k for k in calls if k != "targets"}:
            raise ValueError(f"--rescore {path} holds other rows than {paths[0]}; pass parts of one run.")
        for name, item in data["calls"].items():
            diagnostics = json.loads(item["diagnostics"])
            calls.setdefault(tuple(name.split("/")), []).extend(
                Call(image, *(float(v) for v in times), found)
                for image, times, found in zip(item["images"], item["times"], diagnostics)
            )
    if len(calls["targets"]) != scenes:
        raise ValueError(
            f"--rescore {' '.join(map(str, paths))} holds {len(calls['targets'])} scenes but --scenes is "
            f"{scenes}; pass the run's --scenes (the parts' total), --seed and --model."
        )
    return calls


# --------------------------------------------------------------------------------------------- scoring
def _ratio(calls: list[Call], reference: list[Call] | None, field: str) -> float:
    """Median over scenes of ``calls[i].field / reference[i].field`` (NaN without a reference)."""
    if not reference:
        return math.nan
    return float(statistics.median(getattr(c, field) / getattr(r, field) for c, r in zip(calls, reference)))


def _error_fields(outputs, label_maps, targets, prefix: str = "") -> dict:
    """Median deltaE00, share within :data:`THRESHOLD`, chroma difference and hue error."""
    summary = summarize_color_errors(instance_color_errors(outputs, label_maps, targets), THRESHOLD)
    return {
        f"{prefix}median_delta_e00": summary.median_delta_e00,
        f"{prefix}share_within_5": summary.share_within,
        f"{prefix}delta_e_instances": summary.count,
        f"{prefix}median_chroma_diff": summary.median_chroma_diff,
        f"{prefix}median_hue_error": summary.median_hue_error,
    }


def score_row(row: Row, calls: dict, bench: dict) -> dict:
    """The JSON-ready scores of one row (definitions: module docstring)."""
    scenes, label_maps, holdout = bench["scenes"], bench["label_maps"], bench["holdout"]
    main = calls[("main", row.key)]
    outputs = torch.stack([c.image for c in main])
    scores = score_scenes(outputs, scenes, holdout)
    targets = (
        calls["targets"] if row.targets == "random" else [text_targets(s["instance_texts"]) for s in scenes]
    )
    result = {"row": row.key, "name": row.name, "targets": row.targets, "color_steering": row.steering,
              "exact_colors": row.exact}  # fmt: skip
    if row.targets == "random":  # adherence to the texts is not what was asked
        result.update(adherence=None, instances=None, adherence_holdout=None, holdout_instances=None)
    else:
        result.update(
            {k: scores[k] for k in ("adherence", "instances", "adherence_holdout", "holdout_instances")}
        )
    result.update(_error_fields(outputs, label_maps, targets))
    result["limits"] = miss_fields(outputs, label_maps, targets)
    result.update(leak=scores["bleeding"], colorfulness=scores["colorfulness"], psnr=scores["psnr"])
    language = calls.get(("language", row.key))
    result.update(adherence_language=None, language_instances=None)
    if language:
        lang_scenes = bench["language_scenes"]
        lang_outputs = torch.stack([c.image for c in language])
        lang = score_scenes(lang_outputs, lang_scenes, holdout)
        result.update(adherence_language=lang["adherence"], language_instances=lang["instances"])
        lang_targets = [text_targets(s["instance_texts"]) for s in lang_scenes]
        result.update(_error_fields(lang_outputs, label_maps, lang_targets, "language_"))
    reference = calls.get(("main", "texts"))
    everything = main + (language or [])
    result.update(
        seconds_per_image=statistics.mean(c.wall for c in main),
        cpu_seconds_per_image=statistics.mean(c.cpu for c in main),
        sampling_cpu_seconds_per_image=statistics.mean(c.loop_cpu for c in main),
        time_ratio=_ratio(main, reference, "cpu"),
        sampling_time_ratio=_ratio(main, reference, "loop_cpu"),
        wall_time_ratio=_ratio(main, reference, "wall"),
        unreachable_targets=sum(d["kind"] == "color_target_unreachable" for c in everything for d in c.diagnostics),
        texts_without_target=sum(d["kind"] == "no_color_target" for c in everything for d in c.diagnostics),
    )  # fmt: skip
    return result


def painted_with_targets(scenes: list[dict], label_maps: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W): each scene's ground truth with every instance whose text names one colour
    painted with that colour's a*b* at each pixel's own L (chroma fitted to sRGB at fixed hue, as
    the exact mode does): what a perfect exact mode on the text targets would output."""
    lab = rgb_to_lab(scene_images(scenes))
    for b, scene in enumerate(scenes):
        for k, target in enumerate(text_targets(scene["instance_texts"]), 1):
            if target is not None:
                inside = label_maps[b] == k
                lab[b, 1, inside], lab[b, 2, inside] = target.lab[1], target.lab[2]
    lab[:, 1:] = fit_chroma_to_gamut(lab[:, :1], lab[:, 1:])
    return lab_to_rgb(lab).clamp(0, 1)


def target_ceiling(bench: dict) -> dict:
    """Adherence (the canonical-colour metric) of :func:`painted_with_targets` and of the ground
    truth, on the scenes and on the language split: the most text targets can give on that metric."""
    out = {}
    for split, scenes in (("main", bench["scenes"]), ("language", bench["language_scenes"])):
        if scenes is not None:
            painted = painted_with_targets(scenes, bench["label_maps"])
            out[f"{split}_painted_adherence"] = scene_adherence(painted, bench["label_maps"], scenes).accuracy
    out["ground_truth_adherence"] = scene_adherence(
        scene_images(bench["scenes"]), bench["label_maps"], bench["scenes"]
    ).accuracy
    return out


def pixels_on_target(outputs: torch.Tensor, label_maps: torch.Tensor, targets, errors) -> list[float]:
    """Per instance of ``errors`` (:func:`instance_color_errors`), the share of its pixels within
    :data:`THRESHOLD` deltaE00 of its target at each pixel's own L."""
    lab = rgb_to_lab(outputs)
    shares = []
    for e in errors:
        pixels = lab[e.image_index][:, label_maps[e.image_index] == e.instance].T.double()  # (P, 3)
        target = torch.tensor(e.target_at_l, dtype=torch.float64).expand_as(pixels).clone()
        target[:, 0] = pixels[:, 0]
        shares.append(float((ciede2000(pixels, target) <= THRESHOLD).double().mean()))
    return shares


def miss_fields(outputs: torch.Tensor, label_maps: torch.Tensor, targets) -> dict:
    """For the instances within / beyond :data:`THRESHOLD`: how many, the median share of their pixels
    on target, and the median chroma difference and hue error (what limits a missed target)."""
    errors = instance_color_errors(outputs, label_maps, targets)
    shares = pixels_on_target(outputs, label_maps, targets, errors)
    out = {}
    for name, keep in (("passes", True), ("misses", False)):
        chosen = [(e, q) for e, q in zip(errors, shares) if e.passes == keep]
        hues = [e.hue_error for e, _ in chosen if not math.isnan(e.hue_error)]
        out[name] = {
            "count": len(chosen),
            "median_pixels_on_target": statistics.median(q for _, q in chosen) if chosen else None,
            "median_chroma_diff": statistics.median(e.chroma_diff for e, _ in chosen) if chosen else None,
            "median_hue_error": statistics.median(hues) if hues else None,
        }
    return out


# --------------------------------------------------------------------------------------------- report
def _share(share, count) -> str:
    return "—" if share is None or not count else format_share(share, count)


def _number(value, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_table(table: list[dict]) -> str:
    """The Markdown table of the rows."""
    lines = [
        "| row | adherence | held-out pairs | language split | median ΔE00 | ΔE00 ≤ 5 | leak | colourfulness "
        "| time / image (CPU) | vs texts only (call / sampling) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        within = r["share_within_5"]
        low, high = wilson_interval(within, r["delta_e_instances"]) if r["delta_e_instances"] else (0, 0)
        within_cell = "—" if math.isnan(within) else f"{within:.1%} [{low:.0%}, {high:.0%}]"
        ratio = "1.00x" if r["row"] == "texts" else (
            f"{_number(r['time_ratio'], '.2f')}x / {_number(r['sampling_time_ratio'], '.2f')}x"
        )  # fmt: skip
        lines.append(
            f"| {r['name']} | {_share(r['adherence'], r['instances'])} | "
            f"{_share(r['adherence_holdout'], r['holdout_instances'])} | "
            f"{_share(r['adherence_language'], r['language_instances'])} | {_number(r['median_delta_e00'], '.2f')} | "
            f"{within_cell} | {r['leak']:.3f} | {r['colorfulness']:.1f} | "
            f"{r['seconds_per_image']:.1f} s ({r['cpu_seconds_per_image']:.2f} s) | {ratio} |"
        )
    return "\n".join(lines)


def _limit_note(row: dict) -> str:
    found = row["limits"]
    parts = []
    for name in ("passes", "misses"):
        item = found[name]
        if item["count"]:
            parts.append(
                f"{item['count']} {name}: median share of pixels within ΔE00 5 "
                f"{item['median_pixels_on_target']:.0%}, chroma difference {item['median_chroma_diff']:+.1f}, "
                f"hue error {_number(item['median_hue_error'], '.0f')}°"
            )
    return f"- {row['name']}: " + "; ".join(parts)


def format_report(table: list[dict], bench: dict, args, ceiling: dict | None = None) -> str:
    """The header, the table and the notes."""
    scenes = bench["scenes"]
    head = (
        f"# Colour control on {len(scenes)} held-out synthetic scenes ({args.steps} steps, guidance "
        f"{bench['guidance']}, seed {args.seed})\n\nModel: `{bench['model']}`; held-out colour-shape pairs: "
        f"{sorted(bench['holdout'])}; ground-truth colourfulness {ground_truth_colorfulness(scenes):.1f}. "
        "Adherence: share of instances with the colour their text names (95% Wilson interval, instances); "
        "ΔE00: CIEDE2000 between the target and the instance's measured colour at the same L (text rows: the "
        "colour the text names); time: wall seconds per image (process CPU seconds) and the median per-scene "
        "ratio of CPU time to the texts-only call of the same scene, whole call / sampling (up to the last "
        "denoising step).\n"
    )
    lang = [r for r in table if r.get("language_median_delta_e00") is not None]
    notes = [
        f"- language split, {r['name']}: median ΔE00 {r['language_median_delta_e00']:.2f}, "
        f"{r['language_share_within_5']:.1%} within 5"
        for r in lang
    ]
    notes += [_limit_note(r) for r in table if r["delta_e_instances"]]
    if ceiling:
        notes.append(
            f"- adherence of the ground truth {ceiling['ground_truth_adherence']:.1%}; of the ground truth with every "
            f"instance painted exactly with its text's colour (the lexicon's, at each pixel's L): "
            f"{ceiling['main_painted_adherence']:.1%}"
            + (
                f", language split {ceiling['language_painted_adherence']:.1%}"
                if "language_painted_adherence" in ceiling
                else ""
            )
            + " (the most exact text targets can score on the adherence metric)"
        )
    return "\n".join([head, format_table(table), "", *notes])


# --------------------------------------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.bench colors", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", default=None, help="MT-Color pipeline folder (default: the embedded mtcolor-tiny)"
    )
    parser.add_argument("--scenes", type=int, default=100, help="held-out scenes")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0, help="scene set, sampling and random-target seed")
    parser.add_argument("--start", type=int, default=0, help="first held-out scene to run (parts of a run)")
    parser.add_argument("--guidance_scale", type=float, default=None, help="default: the model's recipe.json")
    parser.add_argument(
        "--rows", nargs="+", default=list(DEFAULT_ROWS), choices=[r.key for r in ROWS],
        help=f"rows to run (default: {' '.join(DEFAULT_ROWS)}); ratios need 'texts'",
    )  # fmt: skip
    parser.add_argument("--no_language", action="store_true", help="skip the language split")
    parser.add_argument("--progress", action="store_true", help="print a line per finished scene")
    parser.add_argument("--json", default=None, help="also write the rows and settings to this JSON file")
    parser.add_argument(
        "--save_calls", default=None, help="also write every call's image and times here (.pt)"
    )
    parser.add_argument(
        "--rescore", default=None, metavar="FILE", nargs="+",
        help="score the calls of earlier --save_calls FILE(s) instead of running (parts of one run in scene "
        "order; --scenes: their total, same --seed and --model)",
    )  # fmt: skip
    return parser


def _pipeline(model):
    """The MT-Color pipeline of ``model``."""
    from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline  # (heavy: after the arguments are checked)

    pipe = MTColorPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scenes < 1 or args.steps < 1 or args.start < 0:
        parser.error(
            f"--scenes={args.scenes} and --steps={args.steps} must be positive, --start={args.start} not negative."
        )
    if args.rescore and args.start:
        parser.error("--rescore scores whole runs: pass --start 0 and the parts' total as --scenes.")

    torch.set_num_threads(1)
    model = args.model or embedded_model("mtcolor-tiny")
    config = synthetic_config(model)
    scenes = held_out_scenes(config, args.start + args.scenes, args.seed)[args.start :]
    bench = {
        "model": model,
        "scenes": scenes,
        "label_maps": scene_label_maps(scenes),
        "language_scenes": None
        if args.no_language
        else held_out_scenes(config, args.start + args.scenes, args.seed, "language")[args.start :],
        "holdout": {tuple(p) for p in config.holdout_pairs},
        "guidance": recommended_guidance_scale(model) if args.guidance_scale is None else args.guidance_scale,
    }
    rows = [_BY_KEY[key] for key in dict.fromkeys(args.rows)]
    if args.rescore:
        calls = load_calls(args.rescore, len(scenes))
        rows = [row for row in rows if ("main", row.key) in calls]
    else:
        calls = run_scenes(_pipeline(model), bench, rows, args)
        if args.save_calls:
            save_calls(calls, args.save_calls)
    table = [score_row(row, calls, bench) for row in rows]
    ceiling = target_ceiling(bench)
    print(format_report(table, bench, args, ceiling))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        settings.update(model=str(model), guidance_scale=bench["guidance"], holdout=sorted(bench["holdout"]))
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                to_json({"settings": settings, "rows": table, "target_ceiling": ceiling}),
                handle,
                indent=1,
                allow_nan=False,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
