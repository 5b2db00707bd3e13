"""Validation images and the final pipeline export of the MT-Color trainers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import yaml
from mtcolor.training.mtcolor_data import RECORD_ERRORS, load_training_records
from mtcolor.training.mtcolor_model import TRAINING_INFO, Components

logger = logging.getLogger("mtcolor.training")


def validation_records(args, train_records) -> list:
    """The first ``--num_validation_samples`` readable records of the validation (or training) data."""
    from mtcolor.records import decode_record

    if args.num_validation_samples == 0:
        return []
    rows = train_records
    if args.validation_data:
        rows = load_training_records(args.validation_data, args.validation_split, args.cache_dir)
    records = []
    for i in range(len(rows)):
        if len(records) == args.num_validation_samples:
            break
        try:
            records.append(decode_record(rows[i]))
        except RECORD_ERRORS as error:
            logger.warning(f"validation: skipping corrupt record #{i} ({type(error).__name__}: {error})")
    return records


def _pipeline(model, components: Components):
    from diffusers import DDIMScheduler

    from mtcolor import MTColorPipeline

    return MTColorPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=model.unet,
        controlnet=model.controlnet,
        adapter=model.adapter,
        scheduler=DDIMScheduler.from_config(components.noise_scheduler.config),
    )


def log_validation(accelerator, model, components, records, args, step, weight_dtype) -> dict:
    """Colorize the validation records through the real pipeline; log and save the images.

    Each logged image is ``ground truth | gray input | instance-conditioned | automatic`` (the
    automatic column uses no masks, no texts and the empty prompt). Returns mean PSNR / SSIM of the
    conditioned colorizations when :mod:`mtcolor.metrics` provides them. The EMA weights, if any,
    are the caller's to swap in (:func:`mtcolor.training.prepare.ema_weights`).
    """
    import PIL.Image

    unwrapped = accelerator.unwrap_model(model)
    modes = [(m, m.training) for m in (unwrapped.adapter, unwrapped.controlnet) if m is not None]
    for m, _ in modes:
        m.eval()
    pipe = _pipeline(unwrapped, components)
    pipe.set_progress_bar_config(disable=True)
    grays, masks, texts, prompts = [], [], [], []
    for record in records:
        grays.append(record.gray)
        n = len(record.instance_texts)
        sample_masks = [record.label_map == k for k in range(1, n + 1)]
        keep = [k for k, m in enumerate(sample_masks) if bool(m.any())]
        masks.append([sample_masks[k] for k in keep] or None)
        texts.append([record.instance_texts[k] for k in keep] or None)
        prompts.append(record.global_text)
    options = {
        "num_inference_steps": args.validation_inference_steps,
        "guidance_scale": args.validation_guidance_scale,
        "working_resolution": args.resolution,
        "output_type": "pt",
        "colors_from_texts": False,  # validation scores the learned model, without colour targets
        "switches": {"attention_mode": args.attention_mode, "attention_impl": args.masked_attention_impl},
    }
    with torch.no_grad(), accelerator.autocast():
        generator = torch.Generator().manual_seed(args.seed)
        conditioned = pipe(grays, masks, texts, prompts, generator=generator, **options).images
        generator = torch.Generator().manual_seed(args.seed)
        automatic = pipe(grays, None, None, [""] * len(grays), generator=generator, **options).images
    for m, was_training in modes:
        m.train(was_training)

    metrics = {}
    try:
        from mtcolor.metrics import psnr, ssim
    except ImportError:
        psnr = ssim = None
    if psnr is not None:
        pairs = [(c.float().cpu()[None], r.image[None]) for c, r in zip(conditioned, records)]
        metrics = {
            "val_psnr": float(np.mean([psnr(p, t).mean().item() for p, t in pairs])),
            "val_ssim": float(np.mean([ssim(p, t).mean().item() for p, t in pairs])),
        }
    folder = Path(args.output_dir, "validation", f"step-{step:07d}")
    folder.mkdir(parents=True, exist_ok=True)
    captions = []
    for i, (record, cond, auto) in enumerate(zip(records, conditioned, automatic)):
        gray = record.gray.expand(3, -1, -1)
        grid = torch.cat([record.image, gray, cond.float().cpu(), auto.float().cpu()], dim=-1).clamp(0, 1)
        array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, 4W, 3)
        PIL.Image.fromarray(array).save(folder / f"{i:02d}.png")
        caption = f"{record.id}: prompt {record.global_text!r}; instances {texts[i] or []}"
        captions.append(caption)
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(f"validation/{i:02d}", array, step, dataformats="HWC")
            elif tracker.name == "wandb":
                import wandb

                tracker.log({f"validation/{i:02d}": wandb.Image(array, caption=caption)}, step=step)
    (folder / "captions.json").write_text(json.dumps(captions, indent=1), encoding="utf-8")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_text("validation/captions", "\n\n".join(captions), step)
    if metrics:
        accelerator.log(metrics, step=step)
        logger.info(
            f"step {step}: validation PSNR {metrics['val_psnr']:.3f} dB, SSIM {metrics['val_ssim']:.4f}"
        )
    return metrics


def _fp32_frozen_models(components: Components, args, weight_dtype):
    """The frozen models as they were loaded (re-read in fp32 when training cast them)."""
    if weight_dtype == torch.float32:
        return components.vae, components.text_encoder, None
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from mtcolor.text_encoders import load_text_encoder

    path, kw = (
        args.pretrained_model_name_or_path,
        {"revision": args.revision, "cache_dir": args.cache_dir, "variant": args.variant},
    )
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    text_encoder = load_text_encoder(path, **kw)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
    return vae.float(), text_encoder.float(), unet.float()


def export_pipeline(
    accelerator, model, components: Components, args, stages: list[dict], weight_dtype
) -> Path:
    """Save ``output_dir/pipeline`` (``MTColorPipeline.save_pretrained``) + model card + training_info.json."""
    from diffusers import DDIMScheduler

    from mtcolor import MTColorPipeline
    from mtcolor.text_encoders import text_encoder_reference, write_text_encoder_reference

    unwrapped = accelerator.unwrap_model(model)
    vae, text_encoder, unet = _fp32_frozen_models(components, args, weight_dtype)
    if unet is None:
        unet = unwrapped.unet
    pipe = MTColorPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=components.tokenizer,
        unet=unet,
        controlnet=unwrapped.controlnet,
        adapter=unwrapped.adapter,
        scheduler=DDIMScheduler.from_config(components.noise_scheduler.config),
    )
    folder = Path(args.output_dir) / "pipeline"
    pipe.save_pretrained(
        folder,
        model_card_kwargs={
            "base_model": args.pretrained_model_name_or_path,
            "tags": [f"mtcolor-stage{stages[-1]['stage']}"],
            "sections": card_sections(stages),
        },
    )
    base = args.pretrained_model_name_or_path
    packaged = text_encoder_reference(base) if Path(str(base)).is_dir() else None
    if packaged is not None:  # the frozen pretrained encoder stays referenced, not copied
        write_text_encoder_reference(folder, packaged)
    (folder / TRAINING_INFO).write_text(
        json.dumps({"stages": stages}, indent=1, default=str), encoding="utf-8"
    )
    logger.info(f"saved the pipeline to {folder}")
    return folder


def card_sections(stages: list[dict]) -> dict[str, str]:
    """Model card sections: training data, stages, steps and hyperparameters of every stage."""
    lines = []
    for info in stages:
        batch = info["batch"]
        data = info["data"]
        params = info["parameters"]
        what = {1: "instance encoder + instance branches (UNet frozen, no ControlNet)",
                2: "ControlNet + PMAM (UNet and stage-1 modules frozen)"}.get(info["stage"], "?")  # fmt: skip
        hp = info["hyperparameters"]
        lines.append(
            f"- **Stage {info['stage']}** (`{info['script']}`): trains {what}; {info['steps']} optimizer steps on "
            f"`{data['train_data']}` (split `{data['split']}`, {data['records']} records); batch "
            f"{batch['per_process']} x {batch['processes']} processes x {batch['gradient_accumulation_steps']} "
            f"accumulation = {batch['total']}; AdamW lr {hp.get('learning_rate')} ({hp.get('lr_scheduler')}, "
            f"{hp.get('lr_warmup_steps')} warm-up steps); resolution {hp.get('resolution')}; null instance "
            f"condition p={hp.get('instance_dropout')}, empty prompt p={hp.get('prompt_dropout')}; mixed precision "
            f"{hp.get('mixed_precision') or 'no'}; EMA {'on' if hp.get('use_ema') else 'off'}; "
            f"{params['trainable']:,} trainable of {params['total']:,} parameters"
            + (f"; final loss {info['final_loss']:.4f}" if info.get("final_loss") is not None else "")
        )
    sections = {"Training": "Trained with the `mtcolor` training scripts (MT-Color section IV.A, two stages, "
                "loss MT eq. 10):\n\n" + "\n".join(lines)}  # fmt: skip
    metrics = stages[-1].get("validation") or {}
    if metrics:
        sections["Validation"] = ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items())
    blocks = []
    for info in stages:
        body = yaml.safe_dump(info["hyperparameters"], sort_keys=True).strip()
        blocks.append(f"Stage {info['stage']}:\n\n```yaml\n{body}\n```")
    sections["Hyperparameters"] = "\n\n".join(blocks)
    return sections
