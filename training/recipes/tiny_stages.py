"""The tiny recipe's settings and stages: data, commands of the real training scripts, ablation models.

:mod:`mtcolor.training.recipes.tiny` runs them (``python -m mtcolor.training.recipes.tiny``); the ablation benchmark
(``benchmarks/ablations.py``) reuses :func:`build_data`, :func:`mtcolor_ablations`,
:func:`lcoins_command` and :func:`run_stage` to train its retrained rows with the recipe's data,
steps and seed. Nothing here imports the benchmarks (the recipe is below them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from mtcolor.dataset_builder.synthetic import build_synthetic

from mtcolor.synthetic import SyntheticConfig

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
#: (base_decoder: the VAE decoder fine-tuned with its encoder frozen and a Lab chroma term: the VAE
#: round trip alone capped the adherence of the v2 models at 69%, 91% after it. lcoins: 7500 steps,
#: measured 41.4% / 61.4% / 65.7% adherence at 2500 / 5000 / 7500 with the recipe's flags; it trains
#: beside the MT-Color chain)
STEPS = {
    "base_vae": 1200,
    "base_decoder": 2000,
    "base_unet": 2000,
    "stage1": 1200,
    "stage2": 700,
    "lcoins": 7500,
}

#: the shipped L-CoIns model's extra flags, each measured on the 100 held-out scenes:
#:
#: * without LC eq. 1-2's luminance augmentation (smooth-L1, 7,500 steps): 38.6% adherence and
#:   colorfulness 60% of the ground truth's, against 19.5% and 37% with it (the generator already
#:   decorrelates luminance from colour, so the augmentation only hides the outlines the model needs);
#: * Zhang et al.'s rebalanced classification over quantised ab instead of LC eq. 13's smooth-L1 (a
#:   deviation from LC): 41.4% against 23.5% at 2,500 steps; 61.4% at 5,000 and 65.7% at 7,500
#:   against 38.6% (the validation scenes chose 7,500: 60.4% against 58.8%).
#:
#: The Table 1 ablations and their reference (``benchmarks/ablations.py``) keep the paper's setting:
#: :func:`lcoins_command` without these flags.
LCOINS_RECIPE_FLAGS = ("--no_luminance_augmentation", "--ab_loss", "classification")

#: the shipped MT-Color model's extra stage-1 and stage-2 flags (training levers kept after their
#: measurement on the validation scenes); the module ablations train with them too
MTCOLOR_STAGE1_FLAGS: tuple[str, ...] = ()
MTCOLOR_STAGE2_FLAGS: tuple[str, ...] = ("--instance_color_weight", "20.0", "--instance_color_ring", "2")
#: the base UNet's prediction target, and so the whole MT-Color chain's (stages 1 and 2 and the
#: pipeline read it from the base model's scheduler): the recipe's ``--prediction_type`` default
PREDICTION_TYPE = "v_prediction"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: taskset, cgroups), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def synthetic_config() -> SyntheticConfig:
    """The recipe's synthetic-data configuration (:data:`SYNTHETIC`)."""
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


def scaled_steps(name: str, scale: float) -> int:
    """Steps of stage ``name`` at ``--scale`` (at least 2)."""
    return max(2, int(round(STEPS[name] * scale)))


#: extra training scenes of the measured weak spots (3 objects, smaller instances), written as the
#: record split :data:`CROWDED_SPLIT` by the generator's "train" split (held-out pairs excluded, own
#: scene seeds): the "train" and "test" splits, so every test and validation scene, stay unchanged
CROWDED_SPLIT = "train_crowded"
CROWDED = {"num_objects": (3, 3), "size_range": (0.2, 0.4)}
#: crowded scenes the recipe adds to MT-Color stages 1-2's training data (0: none; the base model
#: and L-CoIns always train on "train" alone)
CROWDED_SCENES = 0


def mtcolor_train_split() -> tuple[str, ...]:
    """The ``--train_split`` flag of the recipe's MT-Color stages (none without crowded scenes)."""
    return ("--train_split", f"train+{CROWDED_SPLIT}") if CROWDED_SCENES else ()


def crowded_config() -> SyntheticConfig:
    """:func:`synthetic_config` with :data:`CROWDED`'s object count and sizes."""
    config = synthetic_config()
    return SyntheticConfig(**{**asdict(config), **CROWDED})


def build_data(data: Path, seed: int, data_scale: float = 1.0, crowded: int | None = None) -> None:
    """The recipe's synthetic train and test splits in ``data`` (resumes; skips finished shards),
    and ``crowded`` (default :data:`CROWDED_SCENES`) :data:`CROWDED_SPLIT` scenes (times ``data_scale``)."""
    crowded = CROWDED_SCENES if crowded is None else crowded
    config = synthetic_config()
    n_train, n_test = (max(8, int(n * data_scale)) for n in DATA)
    build_synthetic(data, n_train, config, seed=seed, split="train", progress=True)
    build_synthetic(data, n_test, config, seed=seed, split="test", progress=True)
    if crowded:
        count = max(8, int(crowded * data_scale))
        build_synthetic(
            data, count, crowded_config(), seed=seed, split=CROWDED_SPLIT, progress=True, scene_split="train"
        )


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
    base: Path,
    data: Path,
    output_dir: Path,
    steps: int,
    seed: int,
    adapter_switches: dict | None = None,
    extra: tuple = (),
) -> list[str]:
    """The recipe's MT-Color stage-1 command; ``adapter_switches`` (e.g. ``{"use_instance_masks":
    False}``) are merged into ``stage1_tiny.yaml``'s adapter config; ``extra``: more flags."""
    extra = (
        ["--adapter_config", json.dumps(tiny_adapter_config(**adapter_switches))] if adapter_switches else []
    ) + list(extra)
    return [
        sys.executable, "training/stage1.py", "--config", "training/configs/stage1_tiny.yaml",
        "--pretrained_model_name_or_path", str(base), "--train_data", str(data),
        "--validation_data", str(data), "--validation_split", "test", "--output_dir", str(output_dir),
        "--max_train_steps", str(steps), "--train_batch_size", "16",
        "--resolution", str(SYNTHETIC["image_size"]), "--seed", str(seed), "--report_to", "none",
        "--resume_from_checkpoint", "latest", *mtcolor_train_split(), *extra,
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
        "--report_to", "none", "--resume_from_checkpoint", "latest", *mtcolor_train_split(), *extra,
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
            extra += MTCOLOR_STAGE2_FLAGS  # the full model's training levers
            adapter = stage1
            if stage1_switches == "skip":
                adapter = None
                extra = (
                    "--fresh_adapter",
                    "--adapter_config",
                    json.dumps(tiny_adapter_config(**stage2_switches)),
                    *MTCOLOR_STAGE2_FLAGS,
                )
            elif stage1_switches:
                adapter = folder / "stage1" / "pipeline"
                if not (adapter / "model_index.json").is_file():
                    command = stage1_command(
                        base,
                        data,
                        folder / "stage1",
                        steps["stage1"],
                        seed,
                        stage1_switches,
                        MTCOLOR_STAGE1_FLAGS,
                    )
                    seconds += run_stage(f"{name}_stage1", command, folder / "logs", threads)
            command = stage2_command(base, adapter, data, folder / "stage2", steps["stage2"], seed, extra)
            seconds += run_stage(f"{name}_stage2", command, folder / "logs", threads)
        if progress is not None:
            progress(name)
        return name, pipeline, seconds

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(train, names))
