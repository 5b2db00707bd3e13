"""Synthetic scenes written as datasets: record shards (:func:`build_synthetic`) or a COCO-style
collection (:func:`export_coco`).

The scenes come from the library's generator (:func:`mtcolor.synthetic.generate_scene`; its options
are :class:`mtcolor.synthetic.SyntheticConfig`, re-exported here since both writers take one).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mtcolor.records import encode_masks, encode_record
from mtcolor.synthetic import SyntheticConfig, generate_scene, scene_seed

from .card import write_card
from .config import fingerprint
from .sources import SourceItem
from .writer import DatasetWriter, ItemResult, JobReport, parse_shard, plan_units, run_units

__all__ = ["SyntheticConfig", "build_synthetic", "export_coco", "generate_scene", "scene_seed"]


class _SyntheticProcessor:
    """Picklable per-item processor of :func:`build_synthetic` (item ref = scene index)."""

    def __init__(self, config: SyntheticConfig, seed: int, split: str, scene_split: str):
        self.config, self.seed, self.split, self.scene_split = config, seed, split, scene_split

    def __call__(self, item: SourceItem) -> ItemResult:
        seed = scene_seed(self.seed, self.split, int(item.ref))
        row = generate_scene(self.config, seed, self.scene_split)
        row["id"] = item.id
        n = len(row["instance_texts"])
        counters = {
            "verification": Counter({"agree": n}),
            "instance_captioners": Counter({"synthetic": n}),
            "global_captioners": Counter({"synthetic": 1}),
        }
        return ItemResult(item.id, encode_record(row, image_format="png"), counters=counters)


def build_synthetic(
    out_dir: str | Path,
    num_images: int,
    config: SyntheticConfig | None = None,
    seed: int = 0,
    split: str = "train",
    shard_size: int = 256,
    num_proc: int = 1,
    shard: tuple[int, int] | str | None = None,
    progress: bool = False,
    overwrite: bool = False,
    scene_split: str | None = None,
) -> JobReport:
    """Write ``num_images`` synthetic scenes of ``split`` as record shards + dataset card.

    Same layout, atomic writes and resumption as the real builder (:mod:`mtcolor.dataset_builder.writer`).
    Call it once per split on the same ``out_dir`` (e.g. "train" then "test"); scene ``i`` of a split
    is ``generate_scene(config, scene_seed(seed, split, i), split)`` with id
    ``synthetic-<split>-<i:07d>``.

    ``scene_split`` (default ``split``) is the generator's split when it differs from the record
    split: e.g. extra training scenes written as ``split="train_crowded"`` with ``scene_split="train"``
    keep the held-out colour-shape pairs out (``generate_scene`` excludes them only from "train") and
    draw their own scene seeds (``scene_seed(seed, "train_crowded", i)``), so the "train" and "test"
    splits stay exactly as they were.
    """
    config = config or SyntheticConfig()
    scene_split = split if scene_split is None else scene_split
    if num_images < 0:
        raise ValueError(f"num_images={num_images}; expected a count >= 0.")
    items = [SourceItem(f"synthetic-{split}-{i:07d}", i) for i in range(int(num_images))]
    units = plan_units({split: items}, shard_size)
    content = {
        "synthetic": asdict(config),
        "seed": int(seed),
        "num_images": int(num_images),
        "split": split,
        "shard_size": shard_size,
        **({"scene_split": scene_split} if scene_split != split else {}),
    }
    writer = DatasetWriter(out_dir)
    shard = parse_shard(shard) if not isinstance(shard, tuple) else shard
    # the lock is taken before the split is recorded: with overwrite, recording deletes the split's
    # shards, which a live run of the same shard may be writing
    with writer.lock(shard):
        writer.register(
            {
                split: {
                    "kind": "synthetic",
                    "fingerprint": fingerprint(content),
                    "config": content,
                    "items": len(items),
                    "units": len(units),
                }
            },
            overwrite=overwrite,
        )
        report = run_units(
            writer,
            units,
            functools.partial(_SyntheticProcessor, config, seed, split, scene_split),
            shard,
            num_proc,
            progress,
            description=f"synthetic {split}",
        )
    write_card(out_dir, pretty_name="mtcolor synthetic shapes")
    return report


def export_coco(
    out_dir: str | Path,
    num_images: int,
    config: SyntheticConfig | None = None,
    seed: int = 0,
    image_format: str = "png",
) -> Path:
    """Write synthetic scenes as a COCO-style collection (``images/`` + ``annotations.json`` with RLE
    segmentations and the shapes as categories): a fixture for the ``coco`` source, demos and
    benchmarks. Returns the annotation file path."""
    config = config or SyntheticConfig()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    categories = {shape: i + 1 for i, shape in enumerate(config.shapes)}
    images, annotations = [], []
    extension = {"png": "png", "jpeg": "jpg"}[image_format]
    for index in range(num_images):
        row = generate_scene(config, scene_seed(seed, "train", index))
        file_name = f"{index:07d}.{extension}"
        row["image"].save(
            out_dir / "images" / file_name, **({"quality": 95} if image_format == "jpeg" else {})
        )
        images.append(
            {"id": index + 1, "file_name": file_name, "height": row["height"], "width": row["width"]}
        )
        for mask, rle, label in zip(row["masks"], encode_masks(row["masks"]), row["instance_labels"]):
            ys, xs = np.nonzero(mask)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": categories[label],
                    "segmentation": rle,
                    "area": int(mask.sum()),
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
    path = out_dir / "annotations.json"
    categories_list = [{"id": i, "name": name, "supercategory": "shape"} for name, i in categories.items()]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories_list}),
        encoding="utf-8",
    )
    return path
