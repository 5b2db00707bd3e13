#!/usr/bin/env python
"""Train L-CoIns (LC section 5) with 🤗 Accelerate, on the shared loop of :mod:`mtcolor.training.loop`.

    accelerate launch training/train_lcoins.py --config training/configs/lcoins_paper.yaml \\
        --train_data path/to/dataset --output_dir out/lcoins

Loss: LC eq. 16, ``alpha * L_delta + beta * L_ctr`` (alpha 1, beta -1e-4) with the smooth-L1 loss
(delta 1) on ab / ``ab_norm`` and the counter-colour loss on pseudo captions whose colour words are
replaced from the shared colour lexicon; luminance augmentation (LC eq. 1-2) on the model input.
Optimiser: AdamW, lr 1e-5, betas (0.99, 0.999). Mixed precision, gradient accumulation and
multi-GPU come from Accelerate (``--mixed_precision``, ``--gradient_accumulation_steps``,
``accelerate launch --multi_gpu``); ``--num_train_epochs`` counts passes over the data whatever the
number of processes.

Randomness: the augmentation and the pseudo captions of every sample draw from generators seeded
with (seed, step, row of the global batch) (:func:`mtcolor.training.loop.row_seed`), so two processes with
batch B compute the update of one process with batch B and 2 accumulation steps, and a resumed run
is bit-identical to an uninterrupted one.

Checkpoints (:mod:`mtcolor.training.checkpoints`): every ``--checkpointing_steps`` into
``<output_dir>/checkpoint-<step>`` (``model/``, and ``text_encoder/`` when it is trained), at most
``--checkpoints_total_limit`` kept. ``--resume_from_checkpoint latest`` restores weights, optimiser,
scheduler, RNG states and the data position at the step recorded in the checkpoint's marker, and
refuses a checkpoint written with another model, loss or text-encoder setting. Validation colorizes
``--num_validation_samples`` images every ``--validation_steps`` steps, logs them and their PSNR /
SSIM (``<output_dir>/validation/step-<step>/``). At the end the pipeline is saved with
``save_pretrained`` (and a model card) into ``<output_dir>``.

Data: ``--data_format records`` (dataset_builder's record format; the caption is ``global_text``)
or ``pairs`` (the caption-only L-CoIns multi-instance layout); see :mod:`mtcolor.training.lcoins_data`.

Ablations of LC Table 1: ``--no_group_embedding`` (w/o GE), ``--no_grouping_attention`` (w/o GA),
``--no_luminance_augmentation`` (w/o LA), ``--no_counter_color_loss`` (w/o CL).

``--config`` reads a YAML file whose keys are the flag names (without ``--``); flags given on the
command line override it.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

# `accelerate launch training/train_lcoins.py` runs this file as a script; it imports the installed package
# (`pip install -e .` in the checkout, as run.sh does), whose modules are mtcolor.training.*
from mtcolor.training import arguments, loop, prepare
from mtcolor.training.lcoins_data import DATA_FORMATS, collate, load_caption_dataset
from mtcolor.training.lcoins_export import card_sections, log_validation
from mtcolor.training.lcoins_model import (  # (public names of this script, used by benchmarks and tests)
    MINILM,
    TEXT_ENCODER_PRESETS,
    LCoInsTrainingModel,
    build_components,
    class_rebalancing,
    compute_loss,
    freeze_counter_loss_modules,
    max_caption_length,
    row_generators,
)

__all__ = ["TEXT_ENCODER_PRESETS", "build_components", "build_parser", "compute_loss", "main", "parse_args"]

logger = logging.getLogger("train_lcoins")


# --------------------------------------------------------------------------------------------------
# arguments
def build_parser() -> argparse.ArgumentParser:
    parser = arguments.new_parser("Train L-CoIns (language-based colorization with instance awareness).")
    _add_model_arguments(parser.add_argument_group("model"))
    _add_ablation_arguments(parser.add_argument_group("ablations (LC Table 1)"))
    _add_loss_arguments(parser.add_argument_group("loss and augmentation"))
    _add_data_arguments(parser.add_argument_group("data"))
    arguments.add_training_arguments(
        parser,
        output_dir="lcoins-model",
        project="train_lcoins",
        steps_help="--num_train_epochs",
        diffusion=False,
    )
    # LC section 5: AdamW lr 1e-5, betas (0.99, 0.999), 80 epochs
    parser.set_defaults(
        train_batch_size=8, num_train_epochs=80, learning_rate=1e-5, lr_scheduler="constant", lr_warmup_steps=0,
        adam_beta1=0.99, validation_steps=500, num_validation_samples=4,
    )  # fmt: skip
    return parser


def _add_model_arguments(group) -> None:
    """The model and text encoder to start from."""
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


def _add_ablation_arguments(group) -> None:
    """The ablations of LC Table 1."""
    group.add_argument(
        "--no_group_embedding", action="store_true", help="w/o GE: no group tokens (implies w/o GA)."
    )
    group.add_argument("--no_grouping_attention", action="store_true", help="w/o GA: plain ViT blocks.")
    group.add_argument(
        "--no_luminance_augmentation", action="store_true", help="w/o LA: the true L is the input."
    )
    group.add_argument("--no_counter_color_loss", action="store_true", help="w/o CL: smooth-L1 loss only.")


def _add_loss_arguments(group) -> None:
    """LC eq. 16's weights, the pseudo captions of the counter-colour loss, the luminance augmentation."""
    group.add_argument("--alpha", type=float, default=1.0, help="Weight of the smooth-L1 loss (LC eq. 16).")
    group.add_argument(
        "--beta", type=float, default=-1e-4, help="Weight of the counter-colour loss (LC eq. 16)."
    )
    group.add_argument("--smooth_l1_delta", type=float, default=1.0, help="delta of LC eq. 13.")
    group.add_argument(
        "--ab_loss",
        default="smooth_l1",
        choices=["smooth_l1", "classification"],
        help="Chroma loss: LC eq. 13's smooth-L1 on ab / ab_norm, or Zhang et al.'s (2016) cross-entropy over "
        "quantised ab classes with class rebalancing, decoded by the annealed mean (the model predicts logits).",
    )
    group.add_argument(
        "--ab_bin_size",
        type=float,
        default=10.0,
        help="Classification: ab cell size in Lab units (Zhang: 10).",
    )
    group.add_argument(
        "--annealed_temperature", type=float, default=0.38, help="Classification: T of the annealed mean."
    )
    group.add_argument(
        "--rebalance_lambda",
        type=float,
        default=0.5,
        help="Classification: weight of the uniform distribution mixed into the smoothed prior (Zhang: 0.5).",
    )
    group.add_argument(
        "--class_prior_images",
        type=int,
        default=2000,
        help="Classification: training images whose ab make the empirical class prior.",
    )
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


def _add_data_arguments(group) -> None:
    """Training and validation data."""
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
        "--max_caption_length",
        type=int,
        default=None,
        help="Caption token limit (special tokens included); default: the text encoder's limit.",
    )
    group.add_argument("--dataloader_num_workers", type=int, default=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse (``--config`` YAML, then the command line) and validate the arguments."""
    parser = build_parser()
    args = arguments.parse_args(parser, argv)
    if args.max_train_steps is None and args.num_train_epochs is None:
        parser.error("--num_train_epochs and --max_train_steps are both unset; pass one of them.")
    if not (args.gamma_min > 0 and args.gamma_min <= args.gamma_max):
        parser.error(
            f"--gamma_min={args.gamma_min} --gamma_max={args.gamma_max}; need 0 < gamma_min <= gamma_max."
        )
    if not 0 <= args.invert_probability <= 1:
        parser.error(f"--invert_probability={args.invert_probability}; pass a probability in [0, 1].")
    if not (args.ab_bin_size > 0 and args.annealed_temperature > 0 and args.class_prior_images >= 1):
        parser.error(
            f"--ab_bin_size={args.ab_bin_size} --annealed_temperature={args.annealed_temperature} "
            f"--class_prior_images={args.class_prior_images}; pass positive values (e.g. 10, 0.38, 2000)."
        )
    if not 0 <= args.rebalance_lambda <= 1:
        parser.error(
            f"--rebalance_lambda={args.rebalance_lambda}; pass a mixing weight in [0, 1] (e.g. 0.5)."
        )
    if args.max_caption_length is not None and args.max_caption_length < 2:
        parser.error(f"--max_caption_length={args.max_caption_length}; pass >= 2 ([CLS] and [SEP] included).")
    if not (isinstance(args.model_config, dict) or isinstance(args.model_config, str)):
        parser.error(
            f"--model_config={args.model_config!r}; pass a preset name, a JSON file or a YAML mapping."
        )
    return args


# --------------------------------------------------------------------------------------------------
# training
def register_checkpoint_hooks(accelerator) -> None:
    """Checkpoints hold ``save_pretrained`` folders: ``model/`` and, when trained, ``text_encoder/``."""
    from transformers import AutoModel

    from mtcolor.models.lcoins import LCoInsModel

    def save(wrapper, folder):
        wrapper.model.save_pretrained(os.path.join(folder, "model"))
        if wrapper.trains_text_encoder:
            wrapper.text_encoder.save_pretrained(os.path.join(folder, "text_encoder"))

    def load(wrapper, folder):
        wrapper.model.load_state_dict(LCoInsModel.from_pretrained(folder, subfolder="model").state_dict())
        if wrapper.trains_text_encoder:
            loaded = AutoModel.from_pretrained(os.path.join(folder, "text_encoder"))
            wrapper.text_encoder.load_state_dict(loaded.state_dict())

    prepare.register_folder_hooks(accelerator, save, load)


def run_info(args, model) -> dict:
    """What a checkpoint must have been trained with to be resumed: the trainer, the model, the
    text-encoder setting and the loss (a changed value is refused). The classification head's
    settings appear only when it is used (so regression checkpoints keep their identity)."""
    loss_flags = ("alpha", "beta", "smooth_l1_delta", "no_luminance_augmentation", "no_counter_color_loss",
                  "color_vocabulary", "counter_min_distance", "hue_max", "gamma_min", "gamma_max", "invert_probability")  # fmt: skip
    classification = ("ab_loss", "rebalance_lambda", "class_prior_images")
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    if config.get("ab_bin_size") is None:
        config = {k: v for k, v in config.items() if k not in ("ab_bin_size", "annealed_temperature")}
    else:
        loss_flags += classification
    return {
        "trainer": "train_lcoins",
        "model_config": config,
        "freeze_text_encoder": bool(args.freeze_text_encoder),
        "loss": {name: getattr(args, name) for name in loss_flags},
    }


def main(args: argparse.Namespace) -> Path:
    """Train and save the pipeline into ``args.output_dir``; returns that folder."""
    with prepare.training_run(args) as accelerator:  # seeded; --output_dir locked; trackers ended
        return _train(accelerator, args)


def _train(accelerator, args) -> Path:
    from mtcolor.pipelines.pipeline_lcoins import LCoInsPipeline

    from mtcolor.conditioning import CachedTokenStates
    from mtcolor.lexicon import default_lexicon

    # 1. Models: a frozen text encoder runs in the mixed-precision dtype with memoised captions
    model, text_encoder, tokenizer = build_components(args)
    weight_dtype = prepare.weight_dtype_of(accelerator)
    model.train()
    text_states = None
    if args.freeze_text_encoder:
        prepare.freeze([text_encoder], accelerator, weight_dtype)
        length = args.max_caption_length or max_caption_length(tokenizer, text_encoder)
        text_states = CachedTokenStates(tokenizer, text_encoder, length)
    else:
        text_encoder.train()
        if getattr(text_encoder, "pooler", None) is not None:  # the loss reads the token states only
            text_encoder.pooler.requires_grad_(False)
    if args.no_counter_color_loss:
        freeze_counter_loss_modules(model)
    lexicon = default_lexicon(args.color_vocabulary)
    # 2. Data (and the class rebalancing of a classification model)
    image_size = model.config.image_size
    dataset = load_caption_dataset(args.train_data, image_size, args.train_split, args.data_format)
    class_weights = None
    if model.config.ab_bin_size is not None:
        class_weights = class_rebalancing(model, dataset, args.class_prior_images, args.rebalance_lambda)
    wrapper = LCoInsTrainingModel(model, text_encoder, tokenizer=tokenizer, args=args, lexicon=lexicon,
                                  weight_dtype=weight_dtype, text_states=text_states,
                                  class_weights=class_weights)  # fmt: skip
    trainable = [(name, p) for name, p in wrapper.named_parameters() if p.requires_grad]
    register_checkpoint_hooks(accelerator)
    validation_dataset = dataset
    if args.validation_data:
        validation_dataset = load_caption_dataset(
            args.validation_data, image_size, args.validation_split, args.data_format
        )
    count = min(args.num_validation_samples, len(validation_dataset))
    samples = [validation_dataset[i] for i in range(count)]

    # 3. EMA, optimiser, schedule, prepare, resume and train
    prepared = prepare.setup_training(
        args, accelerator, wrapper, trainable, dataset, collate, 0, args.tracker_project_name
    )
    params = [p for _, p in trainable]

    def loss_fn(batch, step, micro_position):
        first = micro_position * args.train_batch_size
        return prepared.model(batch, row_generators(args.seed, step, first, len(batch["caption"])))

    def validate(step):
        with prepare.ema_weights(prepared.ema, params):
            return log_validation(accelerator, model, text_encoder, tokenizer, samples, args, step)

    result = loop.run_training_loop(
        accelerator, args, **prepared.loop_arguments(), dataset=dataset, loss_fn=loss_fn, trainable=trainable,
        run_info=run_info(args, model), validate=validate if samples else None, description="L-CoIns",
    )  # fmt: skip

    # 4. Final validation, then the pipeline and its model card
    def export(metrics):
        pipe = LCoInsPipeline(model=model, text_encoder=text_encoder, tokenizer=tokenizer)
        last_loss = result.losses[-1] if result.losses else None
        sections = card_sections(args, result.global_step, metrics, last_loss)
        pipe.save_pretrained(args.output_dir, model_card_kwargs={"sections": sections})

    def final_validation(step):
        return log_validation(accelerator, model, text_encoder, tokenizer, samples, args, step)

    loop.finish_training(
        accelerator,
        result,
        ema=prepared.ema,
        params=params,
        validate=final_validation if samples else None,
        export=export,
    )
    return Path(args.output_dir)


if __name__ == "__main__":
    main(parse_args())
