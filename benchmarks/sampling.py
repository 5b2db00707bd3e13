"""Multi-instance sampling cost vs the number of instances, batched vs looped instance passes.

``python -m mtcolor.bench sampling [--sd15] [--steps 10] [--instances 0 1 4 8]``

Runs the real :class:`MTColorPipeline` (random weights; tiny components by default, SD-1.5-sized
UNet + ControlNet at 256 px with ``--sd15``) with alpha = 0.2 and classifier-free guidance and
reports, measured in one run, the sampling wall time for K instances, its ratio to K = 0, the
inherent cost ``1 + alpha * K`` (if every pass cost one global pass), and batched (all passes in one
UNet call) vs looped (``max_batch=2``: one latent + its CFG twin per call).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mtcolor.bench import machine_line


def _masks(size: int, instances: int) -> list[np.ndarray]:
    masks, cols = [], max(1, int(np.ceil(np.sqrt(instances))))
    cell = size // (cols + 1)
    for k in range(instances):
        row, col = divmod(k, cols)
        m = np.zeros((size, size), bool)
        top, left = cell // 2 + row * cell, cell // 2 + col * cell
        m[top : top + cell * 3 // 4, left : left + cell * 3 // 4] = True
        masks.append(m)
    return masks


def _pipeline(sd15: bool):
    from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline

    from mtcolor.model_configs import untrained_sd15_models, untrained_tiny_components

    components = untrained_tiny_components(0)
    if sd15:
        from transformers import CLIPTextConfig, CLIPTextModel

        from mtcolor.model_configs import tiny_text_encoder_config

        models = untrained_sd15_models(0)
        components.update(models)
        components["text_encoder"] = CLIPTextModel(CLIPTextConfig(**tiny_text_encoder_config(768)))
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL(
            block_out_channels=(32, 32, 32, 32),
            norm_num_groups=32,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
        )
    pipe = MTColorPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.bench sampling", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sd15", action="store_true", help="SD-1.5-sized UNet + ControlNet at 256 px")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--instances", type=int, nargs="+", default=[0, 1, 4, 8])
    args = parser.parse_args(argv)
    pipe = _pipeline(args.sd15)
    size = 256 if args.sd15 else 64
    gray = np.random.RandomState(0).rand(size, size).astype(np.float32)
    label = "SD-1.5-sized UNet + ControlNet, 256 px" if args.sd15 else "tiny components, 64 px"
    print(f"# Multi-instance sampling, {label}, {args.steps} steps, alpha {args.alpha} ({machine_line()})\n")
    print("| K | batched | looped | batched / K=0 | looped / K=0 | inherent 1 + alpha K | batched / looped |")
    print("|---|---|---|---|---|---|---|")
    base = {}
    for k in args.instances:
        masks = _masks(size, k)
        texts = [
            f"a {c} object"
            for c in ["red", "blue", "green", "yellow", "purple", "pink", "brown", "orange"] * 4
        ][:k]
        times = {}
        for mode, max_batch in (("batched", None), ("looped", 2)):
            start = time.perf_counter()
            pipe(
                gray,
                masks or None,
                texts or None,
                num_inference_steps=args.steps,
                alpha=args.alpha,
                working_resolution=size,
                max_batch=max_batch,
                colors_from_texts=False,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
            )
            times[mode] = time.perf_counter() - start
            base.setdefault(mode, times[mode])
        print(
            f"| {k} | {times['batched']:.2f} s | {times['looped']:.2f} s | {times['batched'] / base['batched']:.2f}x | "
            f"{times['looped'] / base['looped']:.2f}x | {1 + args.alpha * k:.2f}x | {times['batched'] / times['looped']:.2f}x |"
        )
    return 0
