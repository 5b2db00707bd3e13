"""Dataset builder throughput: images per second of the offline path (COCO-style annotations ->
rule-based colour namer -> verification -> parquet writer) with 1 and 2 worker processes.

The input is a COCO-style folder of synthetic JPEG scenes written once (``export_coco``); each run
builds it from scratch into a fresh folder, including worker start-up. Run::

    python -m mtcolor.bench dataset [--num_images 200] [--image_size 256] [--num_proc 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.bench dataset", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--objects", type=int, nargs=2, default=(3, 8), metavar=("MIN", "MAX"))
    parser.add_argument("--shard_size", type=int, default=50)
    parser.add_argument("--num_proc", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    from mtcolor.dataset_builder.build import build
    from mtcolor.dataset_builder.config import BuildConfig
    from mtcolor.dataset_builder.synthetic import export_coco

    from mtcolor.synthetic import SyntheticConfig

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scenes = SyntheticConfig(
            image_size=args.image_size, num_objects=tuple(args.objects), size_range=(0.15, 0.4)
        )
        annotations = export_coco(tmp / "coco", args.num_images, scenes, seed=0, image_format="jpeg")
        results = []
        for num_proc in args.num_proc:
            config = BuildConfig.from_dict(
                {
                    "output_dir": str(tmp / f"out-{num_proc}"),
                    "source": {
                        "type": "coco",
                        "annotation_file": str(annotations),
                        "image_root": str(tmp / "coco" / "images"),
                    },
                    "captioners": [{"type": "rule"}],
                    "shard_size": args.shard_size,
                    "skip_grayscale": False,
                }
            )
            start = time.perf_counter()
            report = build(config, num_proc=num_proc, progress=False)
            seconds = time.perf_counter() - start
            results.append((num_proc, report.images, seconds, report.startup_seconds))
    base = results[0][1] / results[0][2]
    base_steady = (results[0][1] - 1) / max(results[0][2] - results[0][3], 1e-9)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"dataset builder, offline path (annotations + rule namer + verification + writer), {args.num_images} "
        f"JPEG scenes of {args.image_size}x{args.image_size} with {args.objects[0]}-{args.objects[1]} objects, "
        f"shards of {args.shard_size}; {os.cpu_count()} cores, load average {load:.1f} at the end\n"
    )
    print(
        "| processes | images | seconds | images / s | vs 1 process | start-up + first image (s) "
        "| images / s after start-up | vs 1 process |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for num_proc, images, seconds, startup in results:
        rate = images / seconds
        steady = (images - 1) / max(seconds - startup, 1e-9)
        print(
            f"| {num_proc} | {images} | {seconds:.2f} | {rate:.1f} | {rate / base:.2f}x | {startup:.2f} "
            f"| {steady:.1f} | {steady / base_steady:.2f}x |"
        )
    return 0
