"""The embedded default models, from scratch, on this project's own code and data.

``python -m training.recipes.tiny --out runs/tiny [--export]``

No SD-1.5, ControlNet or CLIP weights can be had offline, so the recipe builds everything:

1. **data**: synthetic scenes (``dataset_builder.synthetic``) with luminance decorrelated from colour
   and some colour-shape pairs held out of the training split (the test split contains them);
2. **base**: a tiny latent diffusion backbone (AutoencoderKL + CLIPTextModel with the real CLIP
   tokenizer + UNet2DConditionModel) trained text-to-image by ``training/train_base.py``;
3. **stage 1** and **stage 2** of MT-Color by ``training/stage1.py`` and ``training/stage2.py``;
4. **L-CoIns** by ``training/train_lcoins.py``;
5. **export** (``--export``): the two pipelines, ``save_pretrained`` into ``mtcolor/embedded/`` with
   model cards that record the recipe, data, steps and wall time.

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
}

#: a 4x AutoencoderKL: 64 px images -> 16 x 16 latents (SD's 8x would leave 8 x 8 for 2-3 objects)
VAE_CONFIG = {
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 32],
    "norm_num_groups": 8,
}
#: ControlNet conditioning embedding with the VAE's 4x downsampling
CONTROLNET_CHANNELS = ["8", "16", "16"]

#: (train images, test images)
DATA = (4000, 200)
#: steps of every stage at --scale 1
STEPS = {"base_vae": 600, "base_unet": 1500, "stage1": 800, "stage2": 1600, "lcoins": 3000}


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
        sys.executable, "training/train_lcoins.py", "--config", "training/configs/lcoins_tiny.yaml",
        "--train_data", str(data), "--validation_data", str(data), "--output_dir", str(output_dir),
        "--max_train_steps", str(steps), "--seed", str(seed), "--report_to", "none", *extra,
    ]  # fmt: skip


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
    parser.add_argument("--stages", nargs="+", default=["data", "base", "stage1", "stage2", "lcoins"])
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    logs = out / "logs"
    times = json.loads((out / "times.json").read_text()) if (out / "times.json").is_file() else {}
    py = sys.executable
    data = out / "data"

    def done(name: str, seconds: float) -> None:
        times[name] = round(seconds, 1)
        (out / "times.json").write_text(json.dumps(times, indent=2))

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
                 "--checkpointing_steps", "500", "--checkpoints_total_limit", "1", *resolution, *common],
                logs,
                args.threads,
            )  # fmt: skip
            done(name, seconds)
    if "stage1" in args.stages and "stage1" not in times:
        seconds = run_stage(
            "stage1",
            [py, "training/stage1.py", "--config", "training/configs/stage1_tiny.yaml",
             "--pretrained_model_name_or_path", str(out / "base" / "model"), "--train_data", str(data),
             "--validation_data", str(data), "--validation_split", "test",
             "--output_dir", str(out / "stage1"), "--max_train_steps", str(_steps("stage1", args.scale)),
             "--train_batch_size", "16", *resolution, *common],
            logs,
            args.threads,
        )  # fmt: skip
        done("stage1", seconds)
    if "stage2" in args.stages and "stage2" not in times:
        seconds = run_stage(
            "stage2",
            [py, "training/stage2.py", "--config", "training/configs/stage2_tiny.yaml",
             "--pretrained_model_name_or_path", str(out / "base" / "model"),
             "--adapter_name_or_path", str(out / "stage1" / "pipeline"), "--train_data", str(data),
             "--validation_data", str(data), "--validation_split", "test",
             "--output_dir", str(out / "stage2"), "--max_train_steps", str(_steps("stage2", args.scale)),
             "--controlnet_conditioning_channels", *CONTROLNET_CHANNELS,
             "--train_batch_size", "16", *resolution, *common],
            logs,
            args.threads,
        )  # fmt: skip
        done("stage2", seconds)
    if "lcoins" in args.stages and "lcoins" not in times:
        seconds = run_stage(
            "lcoins",
            lcoins_command(data, out / "lcoins", _steps("lcoins", args.scale), args.seed),
            logs,
            args.threads,
        )
        done("lcoins", seconds)
    if args.export:
        export(out, times, args)
    print(f"[recipe] done: {json.dumps(times)}")
    return 0


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
        if name == "mtcolor-tiny":
            load_from = f'mtcolor.embedded_model("{name}")'
            pipe.save_pretrained(tmp, model_card={"sections": {"Recipe": recipe}, "load_from": load_from})
        else:
            pipe.save_pretrained(tmp)
            card_path = tmp / "README.md"
            card_text = card_path.read_text().replace(f'"{tmp.name}"', f'mtcolor.embedded_model("{name}")')
            card_path.write_text(
                card_text.replace("from mtcolor import", "import mtcolor\nfrom mtcolor import", 1)
            )
            with open(card_path, "a") as card:
                card.write(f"\n## Recipe\n\n{recipe}\n")
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
        (tmp / "recipe.json").write_text(json.dumps(facts, indent=2, default=list))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
        print(f"[recipe] exported {name}: {size:.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
