"""Validation images and the model card of the L-CoIns trainer (``training/train_lcoins.py``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import torch

logger = logging.getLogger("train_lcoins")


def log_validation(accelerator, model, text_encoder, tokenizer, samples, args, step: int) -> dict:
    """Colorize the validation samples, log the images and their mean PSNR / SSIM."""
    from mtcolor.pipelines.pipeline_lcoins import LCoInsPipeline

    from mtcolor.metrics import psnr, ssim

    unwrapped_model = accelerator.unwrap_model(model)
    unwrapped_text = accelerator.unwrap_model(text_encoder)
    was_training = unwrapped_model.training, unwrapped_text.training
    unwrapped_model.eval()
    unwrapped_text.eval()
    pipe = LCoInsPipeline(model=unwrapped_model, text_encoder=unwrapped_text, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    target = torch.stack([s["pixel_values"] for s in samples]).to(accelerator.device)
    captions = [s["caption"] for s in samples]
    with torch.no_grad(), accelerator.autocast():
        prediction = pipe(
            list(target), captions, output_type="pt", max_caption_length=args.max_caption_length
        )
    prediction = prediction.images.to(target.device).float()
    metrics = {
        "val_psnr": psnr(prediction, target).mean().item(),
        "val_ssim": ssim(prediction, target).mean().item(),
    }
    images = np.concatenate([target.cpu().numpy(), prediction.cpu().numpy()], axis=-1)  # GT | prediction
    images = (np.clip(images, 0, 1).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
    folder = Path(args.output_dir, "validation", f"step-{step}")
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        PIL.Image.fromarray(image).save(folder / f"{i:02d}.png")
    (folder / "captions.json").write_text(json.dumps(captions, indent=1), encoding="utf-8")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", images, step, dataformats="NHWC")
            tracker.writer.add_text("validation_captions", "\n\n".join(captions), step)
        elif tracker.name == "wandb":
            import wandb

            tracker.log(
                {"validation": [wandb.Image(im, caption=c) for im, c in zip(images, captions)]}, step=step
            )
    accelerator.log(metrics, step=step)
    if was_training[0]:
        unwrapped_model.train()
    if was_training[1]:
        unwrapped_text.train()
    logger.info(f"step {step}: validation PSNR {metrics['val_psnr']:.3f} dB, SSIM {metrics['val_ssim']:.4f}")
    return metrics


def card_sections(args, steps: int, metrics: dict, last_loss: float | None) -> dict[str, str]:
    ablations = [
        name
        for flag, name in (
            ("no_group_embedding", "w/o group embedding"),
            ("no_grouping_attention", "w/o grouping attention"),
            ("no_luminance_augmentation", "w/o luminance augmentation"),
            ("no_counter_color_loss", "w/o counter-colour loss"),
        )
        if getattr(args, flag)
    ]
    training = [
        f"* script: `training/train_lcoins.py`, {steps} optimisation steps",
        f"* data: `{args.train_data}` ({args.data_format} format, split `{args.train_split}`)",
        f"* AdamW lr {args.learning_rate:g}, betas ({args.adam_beta1}, {args.adam_beta2}), weight decay "
        f"{args.adam_weight_decay:g}; batch {args.train_batch_size} x {args.gradient_accumulation_steps} "
        f"accumulation; mixed precision {args.mixed_precision or 'no'}",
        f"* loss: {args.alpha:g} x smooth-L1 (delta {args.smooth_l1_delta:g})"
        + ("" if args.no_counter_color_loss else f" + ({args.beta:g}) x counter-colour loss"),
        f"* ablations: {', '.join(ablations) if ablations else 'none (full model)'}",
    ]
    if last_loss is not None:
        training.append(f"* last training loss: {last_loss:.4f}")
    sections = {"Training": "\n".join(training)}
    if metrics:
        sections["Validation"] = (
            f"On {args.num_validation_samples} validation images at the working size: "
            f"PSNR {metrics['val_psnr']:.3f} dB, SSIM {metrics['val_ssim']:.4f}."
        )
    return sections
