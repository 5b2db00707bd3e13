"""MT-Color training benchmark: tiny-config throughput and memory, SD-1.5-size parameter counts.

``python -m mtcolor.bench training [--steps 30] [--batch_size 4] [--resolution 64] [--images 32]``

1. Stage 1 and stage 2 run for ``--steps`` optimizer steps through the real trainers
   (``training/stage1.py`` / ``stage2.py``: data loading, augmentation, text encoding, VAE encoding,
   forward, backward, AdamW) on the tiny components of :mod:`mtcolor.model_configs` and a synthetic
   record dataset. Each stage runs in its own process, so its peak memory is its own: peak resident
   set size on CPU (and the part above the resident size after the imports), peak
   allocated memory on CUDA. Steps/s excludes start-up, checkpointing and export.
2. Trainable vs total parameters of both stages at SD-1.5 size (UNet, ControlNet.from_unet,
   adapter, VAE, CLIP ViT-L/14 text encoder from configs on the meta device: no weights, no steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
CLIP_VIT_L_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.bench training", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--steps", type=int, default=30, help="Optimizer steps per stage.")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--images", type=int, default=32, help="Synthetic records to train on.")
    parser.add_argument("--threads", type=int, default=None, help="torch / OpenMP threads of the stage runs.")
    parser.add_argument("--skip_sd15", action="store_true", help="Skip the SD-1.5-size parameter counts.")
    parser.add_argument("--worker", type=int, choices=[1, 2], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=str, default=None, help=argparse.SUPPRESS)
    return parser


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _options_argv(options: dict) -> list[str]:
    """``{"name": value}`` -> ``["--name", "value"]``; a list value gives several arguments."""
    argv = []
    for name, value in options.items():
        argv += [f"--{name}", *(str(v) for v in (value if isinstance(value, list) else [value]))]
    return argv


def _stage_argv(args, root: Path, stage: int) -> list[str]:
    options = {
        "train_data": root / "data",
        "output_dir": root / f"stage{stage}",
        "cache_dir": root / "hf_cache",
        "resolution": args.resolution,
        "train_batch_size": args.batch_size,
        "max_train_steps": args.steps,
        "learning_rate": 1e-4,
        "lr_warmup_steps": 0,
        "report_to": "none",
        "num_validation_samples": 0,
        "checkpointing_steps": 10**9,
        "seed": 0,
    }
    if stage == 1:
        options["pretrained_model_name_or_path"] = root / "base"
        options["adapter_config"] = '{"mask_size": 16, "mask_channels": [4, 8, 8], "encoder_hidden_dim": 32}'
    else:
        options["pretrained_model_name_or_path"] = root / "stage1" / "pipeline"
        options["controlnet_conditioning_channels"] = [8, 8, 16, 16]
    return _options_argv(options)


def _worker(args) -> int:
    """Run one stage in this process and print its measurements as JSON (last line)."""
    import torch
    from mtcolor.training import stage1, stage2

    if args.threads:
        torch.set_num_threads(args.threads)
    module = stage1 if args.worker == 1 else stage2
    parsed = module.parse_args(_stage_argv(args, Path(args.root), args.worker))
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel  # noqa: F401 (imported before
    from transformers import CLIPTextModel  # noqa: F401  the baseline, so it counts libraries, not training)

    baseline = _rss_bytes()
    result = module.main(parsed)
    print(
        json.dumps(
            {
                "steps_per_second": result.steps_per_second,
                "peak_memory_bytes": result.peak_memory_bytes,
                "baseline_rss_bytes": baseline,
                "trainable": result.trainable_parameters,
                "total": result.total_parameters,
                "final_loss": result.losses[-1],
            }
        )
    )
    return 0


def _prepare(args, root: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from mtcolor.dataset_builder.synthetic import build_synthetic

    from mtcolor.model_configs import untrained_tiny_components
    from mtcolor.synthetic import SyntheticConfig

    parts = untrained_tiny_components(0, with_controlnet=False)
    StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(root / "base")
    build_synthetic(root / "data", args.images, SyntheticConfig(image_size=args.resolution), seed=0)


def _run_stage(args, root: Path, stage: int) -> dict:
    options = {
        "worker": stage,
        "root": root,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "resolution": args.resolution,
    }
    command = [sys.executable, "-m", "mtcolor.bench", "training", *_options_argv(options)]
    env = dict(os.environ)
    if args.threads:
        command += ["--threads", str(args.threads)]
        env["OMP_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage} benchmark run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sd15_parameter_counts() -> list[tuple[str, int, int]]:
    """(stage, trainable, total) parameters at SD-1.5 size, counted on meta tensors."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from mtcolor.training.mtcolor_model import MTColorTrainingModel, configure_trainable
    from transformers import CLIPTextConfig, CLIPTextModel

    from mtcolor.model_configs import sd15_unet_config
    from mtcolor.models.adapter import MTColorAdapter

    with init_empty_weights():
        unet = UNet2DConditionModel(**sd15_unet_config())
        controlnet = ControlNetModel.from_unet(unet)
        adapter = MTColorAdapter.from_unet(unet)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_VIT_L_TEXT))
    frozen = sum(p.numel() for m in (vae, text_encoder) for p in m.parameters())
    rows = []
    for stage, control in ((1, None), (2, controlnet)):
        model = MTColorTrainingModel(unet, adapter, control)
        trainable = sum(p.numel() for _, p in configure_trainable(model, stage))
        rows.append((f"stage {stage}", trainable, sum(p.numel() for p in model.parameters()) + frozen))
    parts = {
        "UNet": unet,
        "ControlNet": controlnet,
        "adapter": adapter,
        "VAE": vae,
        "CLIP text encoder": text_encoder,
    }
    return rows + [(name, 0, sum(p.numel() for p in m.parameters())) for name, m in parts.items()]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker is not None:
        return _worker(args)
    import torch

    from mtcolor.bench import machine_line

    threads = args.threads or torch.get_num_threads()
    print(f"# MT-Color training benchmark\n\n{machine_line()}; stage runs with {threads} thread(s)\n")
    with tempfile.TemporaryDirectory(prefix="mtcolor-bench-training-") as folder:
        root = Path(folder)
        _prepare(args, root)
        results = {stage: _run_stage(args, root, stage) for stage in (1, 2)}
    device = "CUDA peak allocated" if torch.cuda.is_available() else "peak RSS"
    print(
        f"Tiny components (mtcolor.model_configs), {args.images} synthetic records, {args.resolution} px, batch "
        f"{args.batch_size}, {args.steps} steps per stage, one process, fp32.\n"
    )
    print(f"| stage | steps/s | s/step | {device} (GB) | above start (GB) | trainable | total params |")
    print("|---|---|---|---|---|---|---|")
    for stage, r in results.items():
        above = (
            (r["peak_memory_bytes"] - r["baseline_rss_bytes"]) / 1e9
            if r["baseline_rss_bytes"]
            else float("nan")
        )
        print(
            f"| {stage} | {r['steps_per_second']:.2f} | {1 / r['steps_per_second']:.3f} | "
            f"{r['peak_memory_bytes'] / 1e9:.2f} | {above:.2f} | {r['trainable']:,} | {r['total']:,} |"
        )
    ratio = results[1]["steps_per_second"] / results[2]["steps_per_second"]
    print(f"\nStage-2 step time / stage-1 step time: {ratio:.2f}x\n")
    if not args.skip_sd15:
        print("SD-1.5 size (random weights on the meta device, no training steps):\n")
        print("| model | trainable | total | trainable share |")
        print("|---|---|---|---|")
        for name, trainable, total in sd15_parameter_counts():
            if name.startswith("stage"):
                print(f"| {name} | {trainable / 1e6:.1f} M | {total / 1e6:.1f} M | {trainable / total:.1%} |")
            else:
                print(f"| {name} | | {total / 1e6:.1f} M | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
