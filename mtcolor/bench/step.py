"""One MT-Color denoising step vs the stock UNet + ControlNet on SD-1.5-sized models.

``python -m mtcolor.bench step [--sizes 256 512] [--instances 4] [--repeats 3]``

Random weights, fp32, batch 2 (classifier-free guidance); the adapter's gates are set non-zero so
its branches really run (a zero gate still computes them). Prints median step times and the ratio
to the stock UNet + ControlNet, measured in one run, plus the adapter's parameter count.
"""

from __future__ import annotations

import argparse

import torch

from ..denoise import predict_noise
from . import machine_line, median_time, peak_rss_gb


def _label_map(batch: int, size: int, instances: int) -> torch.Tensor:
    label = torch.zeros(batch, size, size, dtype=torch.long)
    cols = max(1, int(instances**0.5 + 0.999))
    cell = size // (cols + 1)
    for k in range(instances):
        row, col = divmod(k, cols)
        top, left = cell // 2 + row * cell, cell // 2 + col * cell
        label[:, top : top + cell * 3 // 4, left : left + cell * 3 // 4] = k + 1
    return label


@torch.no_grad()
def _measure(unet, controlnet, adapter, size, hidden, texts, counts, args) -> tuple[float, float, float]:
    """Median seconds of one step: stock UNet, stock UNet + ControlNet, MT-Color (adapter installed)."""
    latent = size // 8
    latents = torch.randn(2, 4, latent, latent)
    gray = torch.rand(2, 3, size, size)
    t = torch.tensor([500, 500])
    stock_processors = dict(unet.attn_processors)
    stock = median_time(lambda: predict_noise(unet, latents, t, hidden), args.repeats)
    stock_cn = median_time(
        lambda: predict_noise(unet, latents, t, hidden, controlnet=controlnet, control_image=gray),
        args.repeats,
    )
    adapter.install(unet)
    context = adapter.build_context(_label_map(2, size, args.instances), texts, counts, (latent, latent))
    mt = median_time(
        lambda: predict_noise(
            unet, latents, t, hidden, context=context, controlnet=controlnet, control_image=gray
        ),
        args.repeats,
    )
    unet.set_attn_processor(stock_processors)  # the stock processors again for the next size
    return stock, stock_cn, mt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtcolor.bench step", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from ..model_configs import untrained_sd15_models

    models = untrained_sd15_models(0)
    unet, controlnet, adapter = models["unet"], models["controlnet"], models["adapter"]
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith("gate"):
                p.fill_(0.5)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"# One denoising step, SD-1.5-sized random models ({machine_line()})\n")
    print(
        f"UNet {count(unet):.1f} M, ControlNet {count(controlnet):.1f} M, MT-Color adapter {count(adapter):.1f} M "
        f"parameters; batch 2, {args.instances} instances + background, median of {args.repeats}.\n"
    )
    print("| size | UNet | UNet + ControlNet | MT-Color step | MT-Color / (UNet + ControlNet) |")
    print("|---|---|---|---|---|")
    hidden = torch.randn(2, 77, 768)
    texts = torch.randn(2, args.instances, 768)
    counts = torch.full((2,), args.instances)
    for size in args.sizes:
        stock, stock_cn, mt = _measure(unet, controlnet, adapter, size, hidden, texts, counts, args)
        print(f"| {size} px | {stock:.2f} s | {stock_cn:.2f} s | {mt:.2f} s | {mt / stock_cn:.2f}x |")
    print(f"\npeak RSS {peak_rss_gb():.1f} GB")
    return 0
