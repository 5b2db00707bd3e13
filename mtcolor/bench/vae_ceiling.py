"""VAE ceiling: how much colour adherence survives a model's VAE alone?

    python -m mtcolor.bench vae_ceiling [--model FOLDER] [--scenes 100] [--seed 0] [--threads 1]

The held-out scenes' ground-truth images go through the model's ``AutoencoderKL`` (encode, take
the posterior mean, decode) and are scored with the ablation table's adherence metric: as decoded,
and with the input's own L and the decoded ab (``recombine_luminance``, what the MT-Color pipeline
outputs). No denoiser can beat the second number: it is the adherence of perfect latents. On 100
scenes the ground truth itself scores 95.2%, the embedded model's VAE 69.3% before its decoder is
fine-tuned with a Lab chroma term (``training/train_base.py --phase decoder``) and 90.8% after.
"""

from __future__ import annotations

import argparse
import json

import torch


@torch.no_grad()
def vae_round_trip(vae, images: torch.Tensor) -> torch.Tensor:
    """``images`` (N, 3, H, W) sRGB in [0, 1] -> encode (posterior mean) -> decode -> (N, 3, H, W) in [0, 1]."""
    latents = vae.encode(images.to(vae.dtype) * 2 - 1).latent_dist.mean
    return ((vae.decode(latents).sample.float() + 1) / 2).clamp(0, 1)


def vae_ceiling(vae, scenes: list[dict], holdout: set) -> dict[str, dict]:
    """Scores (:func:`mtcolor.scene_eval.score_scenes`) of the scenes' ground truth, its VAE round
    trip, and the round trip's ab under the input's own L (the pipeline's output rule)."""
    from mtcolor.color import recombine_luminance, rgb_to_lab
    from mtcolor.scene_eval import scene_gray, scene_images, score_scenes

    truth = scene_images(scenes)
    decoded = vae_round_trip(vae, truth)
    lightness = torch.stack([torch.from_numpy(scene_gray(s)) * 100 for s in scenes])[:, None]
    recombined = recombine_luminance(lightness, rgb_to_lab(decoded)[:, 1:])
    return {
        "ground truth": score_scenes(truth, scenes, holdout),
        "VAE round trip": score_scenes(decoded, scenes, holdout),
        "VAE round trip, input L": score_scenes(recombined, scenes, holdout),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.bench vae_ceiling", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", default=None, help="pipeline folder with vae/ (default: the embedded mtcolor-tiny)"
    )
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from diffusers import AutoencoderKL

    from mtcolor.demo_scenes import synthetic_config
    from mtcolor.embedded import embedded_model
    from mtcolor.scene_eval import format_share, held_out_scenes

    model = args.model or embedded_model("mtcolor-tiny")
    config = synthetic_config(model)
    scenes = held_out_scenes(config, args.scenes, args.seed)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()
    result = vae_ceiling(vae, scenes, {tuple(p) for p in config.holdout_pairs})
    print(f"Adherence ceiling of {model}'s VAE on {len(scenes)} held-out scenes\n")
    print("| images | adherence | held-out pairs | colorfulness | PSNR |\n|---|---|---|---|---|")
    for name, m in result.items():
        print(
            f"| {name} | {format_share(m['adherence'], m['instances'])} | "
            f"{format_share(m['adherence_holdout'], m['holdout_instances'])} | {m['colorfulness']:.1f} | "
            f"{m['psnr']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
