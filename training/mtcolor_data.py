"""Training data of the MT-Color trainers (``training/stage1.py``, ``training/stage2.py``,
``training/train_base.py``): dataset-builder records -> augmented, conditioned training samples.

Every sample is a pure function of ``(seed, epoch, index)``: the random crop, flip and the
null-condition dropout are drawn from a generator seeded with those three numbers, so

* the data a run sees does not depend on the number of processes, data-loader workers or on
  where a run was resumed (``accelerator.skip_first_batches`` then reproduces it exactly), and
* corrupt records are skipped deterministically (the next readable record takes their place, with
  a counted warning), so every batch keeps its size and every process its step count.

A sample (see :meth:`InstanceColorizationDataset.__getitem__`)::

    {"pixel_values": (3, R, R) float32 sRGB in [0, 1],
     "label_map": (R, R) int64, 0 = background, k = instance k (1 <= k <= n),
     "instance_texts": n strings, "prompt": str, "id": str}

Label maps come from :func:`mtcolor.records.decode_record` (overlaps go to the smallest mask) and
are cropped at the stored resolution, then resized to the training resolution with the shared
majority-vote helper :func:`mtcolor.masks.resize_label_map`, so image and masks stay aligned;
instances that vanish (fewer than ``min_instance_pixels`` pixels left) are dropped together with
their texts and the remaining ones renumbered 1..n in their original order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from mtcolor.color import resize
from mtcolor.masks import resize_label_map

logger = logging.getLogger(__name__)

__all__ = [
    "AugmentConfig",
    "InstanceColorizationDataset",
    "collate",
    "crop_box",
    "drop_instances",
    "load_training_records",
    "sample_rng",
]

#: Errors that mark a record as unreadable (bad image bytes, bad RLE, inconsistent columns).
RECORD_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, RuntimeError)


@dataclass
class AugmentConfig:
    """How records become training samples.

    Attributes:
        resolution: side R of the square training crops (pixels).
        crop_scale: (min, max) side of the random square crop as a fraction of the image's shorter
            side; (1, 1) = the largest centred-or-random square.
        center_crop: centre the crop instead of placing it at random.
        random_flip: probability of a horizontal flip (image and masks together).
        instance_dropout: probability that a sample gets the null instance condition (no
            instances: all-background label map, no instance texts). MT section IV.A.2: 0.5.
        prompt_dropout: probability that the global prompt is replaced by "" (independent of the
            instance dropout).
        max_instances: keep at most this many instances per sample (the largest ones; the others
            become background). ``None`` keeps all.
        min_instance_pixels: an instance with fewer pixels at the training resolution is dropped.
    """

    resolution: int = 512
    crop_scale: tuple[float, float] = (1.0, 1.0)
    center_crop: bool = False
    random_flip: float = 0.0
    instance_dropout: float = 0.5
    prompt_dropout: float = 0.1
    max_instances: int | None = None
    min_instance_pixels: int = 1

    def __post_init__(self):
        self.crop_scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))
        if not isinstance(self.resolution, int) or self.resolution < 8:
            raise ValueError(f"resolution={self.resolution!r}; pass an integer >= 8 (e.g. 512).")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale={self.crop_scale}; pass (min, max) with 0 < min <= max <= 1.")
        for name in ("random_flip", "instance_dropout", "prompt_dropout"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name}={value}; pass a probability in [0, 1].")
        if self.max_instances is not None and self.max_instances < 0:
            raise ValueError(f"max_instances={self.max_instances}; pass a count >= 0 or None.")
        if self.min_instance_pixels < 1:
            raise ValueError(f"min_instance_pixels={self.min_instance_pixels}; pass >= 1.")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in ``epoch`` (independent streams via ``SeedSequence``)."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5EED, int(epoch), int(index)])
    )


def crop_box(
    height: int, width: int, config: AugmentConfig, rng: np.random.Generator
) -> tuple[int, int, int]:
    """A square crop ``(top, left, side)`` inside an image of ``height x width`` pixels."""
    short = min(height, width)
    low, high = config.crop_scale
    side = short if low == high == 1.0 else max(1, int(round(short * rng.uniform(low, high))))
    if config.center_crop:
        return (height - side) // 2, (width - side) // 2, side
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return top, left, side


def drop_instances(
    label_map: torch.Tensor, texts: list[str], min_pixels: int = 1, max_instances: int | None = None
) -> tuple[torch.Tensor, list[str]]:
    """Remove instances that are too small (or beyond ``max_instances``) and renumber the rest.

    Args:
        label_map: (H, W) int64, labels 0..n (0 = background).
        texts: the n instance texts (``texts[k - 1]`` belongs to label k).
        min_pixels: instances with fewer pixels are dropped.
        max_instances: keep at most this many (the largest; ties to the lower label).

    Returns:
        the new (H, W) label map with labels 0..n' (dropped instances' pixels become background,
        kept instances keep their relative order) and the n' kept texts.
    """
    n = len(texts)
    if int(label_map.max()) > n:
        raise ValueError(
            f"label_map has label {int(label_map.max())} but only {n} instance texts were given; every label "
            "k >= 1 needs texts[k - 1]."
        )
    areas = torch.bincount(label_map.flatten(), minlength=n + 1)[1:]  # (n,)
    keep = [k for k in range(n) if int(areas[k]) >= min_pixels]
    if max_instances is not None and len(keep) > max_instances:
        keep = sorted(sorted(keep, key=lambda k: (-int(areas[k]), k))[:max_instances])
    lookup = torch.zeros(n + 1, dtype=torch.long)
    for new, old in enumerate(keep, start=1):
        lookup[old + 1] = new
    return lookup[label_map], [texts[k] for k in keep]


class InstanceColorizationDataset(torch.utils.data.Dataset):
    """Map-style dataset over record rows (a ``datasets.Dataset`` or any indexable of row dicts).

    Args:
        records: rows in the :mod:`mtcolor.records` format.
        config: the :class:`AugmentConfig`.
        seed: base seed of the per-sample generators.
        max_skips: how many following records to try when one is unreadable before giving up.

    Call :meth:`set_epoch` before iterating an epoch (the trainers do) so augmentations differ
    between epochs but stay reproducible.
    """

    def __init__(self, records, config: AugmentConfig, seed: int = 0, max_skips: int = 100):
        if len(records) == 0:
            raise ValueError("records is empty; the training dataset has no rows (check the path and split).")
        self.records = records
        self.config = config
        self.seed = int(seed)
        self.epoch = 0
        self.max_skips = max_skips
        self.skipped = 0  # corrupt records met by this process / worker

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _decode(self, index: int):
        from mtcolor.records import decode_record

        for attempt in range(self.max_skips + 1):
            position = (index + attempt) % len(self.records)
            try:
                return decode_record(self.records[position])
            except RECORD_ERRORS as error:
                self.skipped += 1
                logger.warning(
                    f"skipping corrupt record #{position} ({type(error).__name__}: {error}); "
                    f"{self.skipped} corrupt record(s) skipped so far in this process"
                )
        raise RuntimeError(
            f"{self.max_skips + 1} consecutive records from #{index} are unreadable; the dataset looks broken."
        )

    def __getitem__(self, index: int) -> dict:
        """Return one augmented sample (see the module docstring for the layout)."""
        config = self.config
        rng = sample_rng(self.seed, self.epoch, index)
        record = self._decode(index)
        image, label_map = record.image, record.label_map  # (3, H, W) in [0, 1], (H, W)
        top, left, side = crop_box(image.shape[1], image.shape[2], config, rng)
        image = image[:, top : top + side, left : left + side]
        label_map = label_map[top : top + side, left : left + side].contiguous()
        size = (config.resolution, config.resolution)
        image = resize(image[None], size)[0].clamp(0, 1)  # antialiased when shrinking
        label_map = resize_label_map(label_map, size)  # majority vote per cell
        if rng.random() < config.random_flip:
            image, label_map = image.flip(-1), label_map.flip(-1)
        texts = list(record.instance_texts)
        label_map, texts = drop_instances(label_map, texts, config.min_instance_pixels, config.max_instances)
        if rng.random() < config.instance_dropout:  # null instance condition (MT IV.A.2)
            label_map, texts = torch.zeros_like(label_map), []
        prompt = "" if rng.random() < config.prompt_dropout else record.global_text
        return {
            "pixel_values": image.contiguous(),
            "label_map": label_map,
            "instance_texts": texts,
            "prompt": prompt,
            "id": record.id,
        }


def collate(samples: list[dict]) -> dict:
    """Stack samples: ``pixel_values`` (B, 3, R, R), ``label_map`` (B, R, R); lists for the texts."""
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "label_map": torch.stack([s["label_map"] for s in samples]),
        "instance_texts": [s["instance_texts"] for s in samples],
        "prompts": [s["prompt"] for s in samples],
        "ids": [s["id"] for s in samples],
    }


def load_training_records(path_or_hub_id: str, split: str | None = None, cache_dir: str | None = None):
    """Load a record dataset (local parquet shards or a ``datasets`` hub id) for training.

    Raises ``ValueError`` naming the argument when nothing is found.
    """
    from mtcolor.records import load_records

    try:
        return load_records(path_or_hub_id, split=split, cache_dir=cache_dir)
    except FileNotFoundError as error:
        raise ValueError(
            f"train_data={path_or_hub_id!r} (split {split!r}) was not found: pass a folder written by "
            "dataset_builder (data/<split>-*.parquet) or a datasets hub id."
        ) from error


def training_dataset(args, instances: bool = True):
    """``(records, dataset)`` of ``--train_data`` with the augmentation of the shared data flags
    (:func:`mtcolor.training.arguments.add_data_arguments`), seeded by ``--seed``.

    ``instances=False``: every sample gets the null instance condition (the base model, which
    does not read masks or instance texts).
    """
    instance_flags = {"instance_dropout": 1.0}
    if instances:
        instance_flags = {
            "instance_dropout": args.instance_dropout,
            "max_instances": args.max_instances,
            "min_instance_pixels": args.min_instance_pixels,
        }
    augment = AugmentConfig(
        resolution=args.resolution,
        crop_scale=(args.crop_scale_min, args.crop_scale_max),
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        prompt_dropout=args.prompt_dropout,
        **instance_flags,
    )
    records = load_training_records(args.train_data, args.train_split, args.cache_dir)
    return records, InstanceColorizationDataset(records, augment, seed=args.seed)
