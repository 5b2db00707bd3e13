#!/usr/bin/env python
"""MT-Color training, stage 2 (MT section IV.A.1): ControlNet + pixel-level mask attention.

    accelerate launch training/stage2.py --config training/configs/stage2_paper.yaml \\
        --pretrained_model_name_or_path out/stage1/pipeline --train_data path/to/records --output_dir out/stage2

Loads the stage-1 adapter (``--adapter_name_or_path``, default ``<pretrained>/adapter``, i.e. the
stage-1 pipeline folder) and freezes its stage-1 parts; adds a ControlNet
(``ControlNetModel.from_unet``, or ``--controlnet_model_name_or_path``) fed the gray image (the
luminance of the colour image as a neutral gray, (B, 3, H, W) in [0, 1]) and trains only the
ControlNet and the PMAM modules (``adapter.stage_parameters(2)``) with MT eq. 10. The UNet, VAE and
text encoder stay frozen.

The result is ``<output_dir>/pipeline``: the complete ``MTColorPipeline``.

Ablations (MT Tables III-IV), trained with the same steps and seed as the full model:

* w/o PMAM: ``--adapter_config '{"use_pmam": false}'`` (the ControlNet reaches the UNet through its
  residuals only; the PMAM modules are not trained);
* w/o instance branch: ``--fresh_adapter --adapter_config '{"use_instance_branch": false}'`` (no
  stage 1; a fresh adapter whose PMAM is trained here);
* w/o instance masks / paper mask mode: train stage 1 with ``--adapter_config`` ``{"use_instance_masks":
  false}`` / ``{"attention_mode": "paper"}`` and pass its pipeline here (the switches travel in the
  adapter's config).
"""

from __future__ import annotations

from pathlib import Path

# `accelerate launch training/stage2.py` runs this file as a script; it imports the installed package
# (`pip install -e .` in the checkout, as run.sh does), whose modules are mtcolor.training.*
from mtcolor.training import mtcolor_train
from mtcolor.training.loop import TrainResult
from mtcolor.training.mtcolor_model import (
    ADAPTER_SWITCHES,
    Components,
    load_adapter,
    load_base_models,
    read_training_info,
)

STAGE = 2


def build_parser():
    parser = mtcolor_train.build_parser("MT-Color stage 2: train the ControlNet and the PMAM modules.", STAGE)
    group = parser.add_argument_group("stage 2")
    group.add_argument(
        "--adapter_name_or_path",
        type=str,
        default=None,
        help="The stage-1 MTColorAdapter folder, or a stage-1 pipeline folder (its adapter/ is used). "
        "Default: <pretrained_model_name_or_path>/adapter.",
    )
    group.add_argument(
        "--adapter_config",
        default=None,
        help="Adapter config changes (YAML/JSON file, inline JSON or a mapping in --config): the ablation switches "
        f"{list(ADAPTER_SWITCHES)} of the loaded stage-1 adapter, or any MTColorAdapter.from_unet argument with "
        "--fresh_adapter. Saved with the trained adapter.",
    )
    group.add_argument(
        "--fresh_adapter",
        action="store_true",
        help="Start from a fresh adapter instead of a stage-1 one: the 'w/o instance branch' ablation (needs "
        "--adapter_config '{\"use_instance_branch\": false}').",
    )
    group.add_argument(
        "--controlnet_model_name_or_path",
        type=str,
        default=None,
        help="Start from this ControlNet (folder or hub id) instead of ControlNetModel.from_unet(unet).",
    )
    group.add_argument(
        "--controlnet_conditioning_channels",
        type=int,
        nargs="+",
        default=None,
        help="conditioning_embedding_out_channels of a new ControlNet (default: diffusers' 16 32 96 256).",
    )
    return parser


def parse_args(argv: list[str] | None = None):
    """Parse and validate the stage-2 arguments (``--config`` YAML + flags)."""
    parser = build_parser()
    args = mtcolor_train.parse_args(parser, argv)
    if args.fresh_adapter:
        if args.adapter_name_or_path:
            parser.error("--fresh_adapter starts from a new adapter; drop --adapter_name_or_path.")
        if args.adapter_config.get("use_instance_branch", True):
            parser.error(
                "--fresh_adapter leaves the instance branch untrained (stage 2 does not train it); pass "
                "--adapter_config '{\"use_instance_branch\": false}' (the w/o instance branch ablation) or train "
                "stage 1 first."
            )
    elif args.adapter_name_or_path is None:
        base = Path(args.pretrained_model_name_or_path)
        if base.is_dir() and not (base / "adapter").is_dir():
            parser.error(
                "stage 2 needs the stage-1 adapter: pass --adapter_name_or_path, or a stage-1 pipeline folder as "
                f"--pretrained_model_name_or_path (no {base / 'adapter'} found)."
            )
        # a local stage-1 pipeline folder, or a hub id whose repository holds the adapter
        args.adapter_name_or_path = (
            str(base / "adapter") if base.is_dir() else args.pretrained_model_name_or_path
        )
    if args.controlnet_model_name_or_path and args.controlnet_conditioning_channels:
        parser.error(
            "--controlnet_conditioning_channels configures a new ControlNet; drop it with an existing one."
        )
    return args


def build_components(args) -> Components:
    """Frozen SD-1.5 models + the stage-1 adapter; a ControlNet to train."""
    from diffusers import ControlNetModel

    from mtcolor.models.adapter import MTColorAdapter

    vae, text_encoder, tokenizer, unet, noise_scheduler = load_base_models(args)
    if args.fresh_adapter:
        adapter = MTColorAdapter.from_unet(unet, **args.adapter_config)
    else:
        adapter = load_adapter(args.adapter_name_or_path, args, args.adapter_config)
    if args.controlnet_model_name_or_path:
        controlnet = ControlNetModel.from_pretrained(
            args.controlnet_model_name_or_path,
            revision=args.revision,
            cache_dir=args.cache_dir,
            variant=args.variant,
        )
        controlnet_source = args.controlnet_model_name_or_path
    else:
        kwargs = {}
        if args.controlnet_conditioning_channels:
            kwargs["conditioning_embedding_out_channels"] = tuple(args.controlnet_conditioning_channels)
        controlnet = ControlNetModel.from_unet(unet, **kwargs)
        controlnet_source = "ControlNetModel.from_unet"
    stage1_folder = None
    if not args.fresh_adapter:
        adapter_folder = Path(args.adapter_name_or_path)
        stage1_folder = adapter_folder.parent if adapter_folder.name == "adapter" else adapter_folder
    return Components(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        adapter=adapter.float(),
        controlnet=controlnet.float(),
        noise_scheduler=noise_scheduler,
        sources={
            "base_model": args.pretrained_model_name_or_path,
            "adapter": "new" if args.fresh_adapter else args.adapter_name_or_path,
            "controlnet": controlnet_source,
        },
        previous_stages=read_training_info(stage1_folder),
    )


def main(args) -> TrainResult:
    """Train stage 2; writes checkpoints and ``<output_dir>/pipeline``."""
    return mtcolor_train.train(args, STAGE, build_components, script="training/stage2.py")


if __name__ == "__main__":
    main(parse_args())
