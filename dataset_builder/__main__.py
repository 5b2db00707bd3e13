"""``python -m mtcolor.dataset_builder COMMAND``: build, synthetic, stats, card, export-coco.

Examples::

    python -m mtcolor.dataset_builder build --config coco.yaml --shard 0/4 --num_proc 2
    python -m mtcolor.dataset_builder synthetic --output_dir data/shapes --num_train 2000 --num_test 200 \\
        --decorrelate_luminance --holdout red:circle --holdout blue:star
    python -m mtcolor.dataset_builder stats data/shapes --split test --json stats.json
    python -m mtcolor.dataset_builder card data/coco-gpt-color      # rewrite the dataset card
    accelerate launch -m mtcolor.dataset_builder build --config blip2.yaml   # one shard per process/GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _build(args) -> int:
    from .build import build
    from .config import BuildConfig

    config = BuildConfig.from_file(args.config)
    if args.output_dir:
        config.output_dir = args.output_dir
    if args.limit is not None:
        config.limit = args.limit
    report = build(
        config,
        shard=args.shard,
        num_proc=args.num_proc,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(
        f"units: {report.units_written} written, {report.units_skipped_done} already done, {report.units_assigned} of "
        f"{report.units_total} assigned to this shard; images written: {report.images}; skipped: "
        f"{dict(report.skipped) or 0}; {report.seconds:.1f} s"
    )
    return 0


def _holdout(text: str) -> tuple[str, str]:
    color, sep, shape = text.rpartition(":")
    if not sep or not color or not shape:
        raise argparse.ArgumentTypeError(f"--holdout {text!r}; expected COLOR:SHAPE, e.g. red:circle")
    return color, shape


def _synthetic(args) -> int:
    from .synthetic import SyntheticConfig, build_synthetic

    options = {}
    if args.config:
        from pathlib import Path

        text = Path(args.config).read_text(encoding="utf-8")
        if args.config.endswith(".json"):
            options = json.loads(text)
        else:
            import yaml

            options = yaml.safe_load(text) or {}
    if args.image_size is not None:
        options["image_size"] = args.image_size
    if args.decorrelate_luminance:
        options["decorrelate_luminance"] = True
    if args.holdout:
        options["holdout_pairs"] = args.holdout
    config = SyntheticConfig.from_dict(options)
    for split, count in (("train", args.num_train), ("test", args.num_test)):
        if count:
            report = build_synthetic(
                args.output_dir,
                count,
                config,
                seed=args.seed,
                split=split,
                shard_size=args.shard_size,
                num_proc=args.num_proc,
                shard=args.shard,
                progress=not args.no_progress,
                overwrite=args.overwrite,
            )
            print(
                f"{split}: {report.images} images written, {report.units_skipped_done} shards already done, {report.seconds:.1f} s"
            )
    return 0


def _stats(args) -> int:
    from .stats import dataset_statistics, format_statistics

    stats = dataset_statistics(
        args.path,
        args.split,
        clip_model=args.clip_model,
        clip_weights=args.clip_weights,
        clip_config=args.clip_config,
        device=args.device,
        max_images=args.max_images,
    )
    print(format_statistics(stats))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(stats, handle, indent=1)
    return 0


def _card(args) -> int:
    from .card import write_card

    print(write_card(args.output_dir, pretty_name=args.name))
    return 0


def _export_coco(args) -> int:
    from .synthetic import SyntheticConfig, export_coco

    config = SyntheticConfig(image_size=args.image_size)
    print(
        export_coco(args.output_dir, args.num_images, config, seed=args.seed, image_format=args.image_format)
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.dataset_builder", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("build", help="build (or resume) a dataset from a config file")
    p.add_argument(
        "--config", required=True, help="YAML or JSON builder config (see mtcolor.dataset_builder.config)"
    )
    p.add_argument("--output_dir", help="overrides output_dir of the config")
    p.add_argument(
        "--shard", help="i/N: process every N-th shard starting at i (default: all, or RANK/WORLD_SIZE)"
    )
    p.add_argument("--num_proc", type=int, default=1, help="worker processes for the per-image work")
    p.add_argument("--limit", type=int, help="only the first N inputs (part of the configuration)")
    p.add_argument(
        "--overwrite", action="store_true", help="rebuild splits recorded with another configuration"
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_build)

    p = sub.add_parser("synthetic", help="write synthetic shape scenes (train/test) in the record format")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_train", type=int, default=1000)
    p.add_argument("--num_test", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", help="YAML/JSON file with SyntheticConfig fields")
    p.add_argument("--image_size", type=int)
    p.add_argument("--decorrelate_luminance", action="store_true")
    p.add_argument(
        "--holdout",
        type=_holdout,
        action="append",
        metavar="COLOR:SHAPE",
        help="hold a pair out of train (repeatable)",
    )
    p.add_argument("--shard_size", type=int, default=256)
    p.add_argument("--shard")
    p.add_argument("--num_proc", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    p.set_defaults(run=_synthetic)

    p = sub.add_parser("stats", help="dataset statistics (and CLIP-scores with local open_clip weights)")
    p.add_argument("path", help="dataset folder, parquet file or hub id")
    p.add_argument("--split")
    p.add_argument("--clip_model", help="open_clip model name, e.g. ViT-B-32")
    p.add_argument("--clip_weights", help="local open_clip checkpoint file")
    p.add_argument("--clip_config", help="open_clip model config JSON (custom architectures)")
    p.add_argument("--device")
    p.add_argument("--max_images", type=int, help="CLIP-score on at most this many images")
    p.add_argument("--json", help="also write the statistics to this JSON file")
    p.set_defaults(run=_stats)

    p = sub.add_parser("card", help="rewrite the dataset card (README.md) from the finished shards")
    p.add_argument("output_dir")
    p.add_argument("--name", default="mtcolor instance colorization dataset")
    p.set_defaults(run=_card)

    p = sub.add_parser("export-coco", help="write synthetic scenes as a COCO-style folder (fixtures, demos)")
    p.add_argument("output_dir")
    p.add_argument("--num_images", type=int, default=100)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image_format", choices=("png", "jpeg"), default="png")
    p.set_defaults(run=_export_coco)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mtcolor.locks import FolderLockedError

    try:
        return int(args.run(args) or 0)
    except (ValueError, FolderLockedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
