#!/usr/bin/env python
"""MT-Color training, stage 1 (MT section IV.A.1): the instance mask and text guidance module.

    accelerate launch training/stage1.py --config training/configs/stage1_paper.yaml \\
        --pretrained_model_name_or_path path/to/sd15 --train_data path/to/records --output_dir out/stage1

Frozen SD-1.5 VAE, text encoder and UNet (no ControlNet); trains only the adapter's instance
encoder (MT eq. 3), null instance token and instance branches (MT eq. 4-7) with the epsilon MSE of
MT eq. 10 on colour images, their global text and their instance masks + texts. Half of the samples
(``--instance_dropout 0.5``) get the null instance condition and ``--prompt_dropout`` of them the
empty prompt, so the model also colorizes unconditionally.

The result is ``<output_dir>/pipeline`` (an ``MTColorPipeline`` without ControlNet), the input of
``training/stage2.py``. Flags, checkpoints, resume and multi-GPU use: ``docs/training.md``.
"""

from __future__ import annotations

# `accelerate launch training/stage1.py` runs this file as a script; it imports the installed package
# (`pip install -e .` in the checkout, as run.sh does), whose modules are mtcolor.training.*
from mtcolor.training import mtcolor_train
from mtcolor.training.loop import TrainResult
from mtcolor.training.mtcolor_model import Components, load_adapter, load_base_models

STAGE = 1


def build_parser():
    parser = mtcolor_train.build_parser(
        "MT-Color stage 1: train the instance encoder and instance branches.", STAGE
    )
    group = parser.add_argument_group("stage 1")
    group.add_argument(
        "--adapter_name_or_path",
        type=str,
        default=None,
        help="Start from this MTColorAdapter folder (or a pipeline folder with adapter/) instead of a fresh one.",
    )
    group.add_argument(
        "--adapter_config",
        default=None,
        help="MTColorAdapter.from_unet overrides for a fresh adapter: a YAML/JSON file, inline JSON, or a "
        "mapping in --config (e.g. {mask_size: 64, attention_mode: renormalized}).",
    )
    return parser


def parse_args(argv: list[str] | None = None):
    """Parse and validate the stage-1 arguments (``--config`` YAML + flags)."""
    parser = build_parser()
    args = mtcolor_train.parse_args(parser, argv)
    if args.adapter_config and args.adapter_name_or_path:
        parser.error(
            "--adapter_config configures a fresh adapter; it cannot be combined with --adapter_name_or_path."
        )
    return args


def build_components(args) -> Components:
    """Frozen SD-1.5 models + the adapter to train (fresh, or loaded from ``--adapter_name_or_path``)."""
    from mtcolor.models.adapter import MTColorAdapter

    vae, text_encoder, tokenizer, unet, noise_scheduler = load_base_models(args)
    if args.adapter_name_or_path:
        adapter = load_adapter(args.adapter_name_or_path, args)
        source = args.adapter_name_or_path
    else:
        adapter = MTColorAdapter.from_unet(unet, **args.adapter_config)
        source = "new"
    return Components(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        adapter=adapter.float(),
        controlnet=None,
        noise_scheduler=noise_scheduler,
        sources={"base_model": args.pretrained_model_name_or_path, "adapter": source},
    )


def main(args) -> TrainResult:
    """Train stage 1; writes checkpoints and ``<output_dir>/pipeline``."""
    return mtcolor_train.train(args, STAGE, build_components, script="training/stage1.py")


if __name__ == "__main__":
    main(parse_args())
