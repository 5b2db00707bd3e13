"""The ``build`` job: source -> instances -> captions -> verification -> sharded parquet + card.

Per image (:class:`BuildProcessor`, run in worker processes with ``num_proc > 1``):

1. load (corrupt / too large / grayscale images are skipped with a reason);
2. optional downscale to ``max_side`` (masks with nearest neighbour);
3. instances from the segmenter, then :class:`~mtcolor.dataset_builder.config.InstanceOptions` filtering
   (minimum area, the ``max_instances`` largest, in their original order);
4. the colour of each instance is measured once (Lab, :class:`~mtcolor.color_names.ColorNamer`);
5. instance texts from the captioner chain (instances without a valid text are dropped);
6. verification of each text against its pixels (agree / disagree / unknown; optional rewrite or
   drop on disagreement);
7. the global text from the global captioner chain (given the final instance texts);
8. one encoded record (:func:`mtcolor.records.encode_record`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter

import numpy as np

from mtcolor.color_names import ColorNamer, strip_color_words
from mtcolor.lexicon import default_lexicon
from mtcolor.locks import exit_with_parent_if_launched

from .captioners import CaptionerChain, InstanceInput
from .config import CAPTIONERS, SEGMENTERS, SOURCES, BuildConfig, build_component, fingerprint
from .segmenters import Instance
from .sources import LoadedImage, SkipItem, SourceItem
from .verification import Verifier
from .writer import DatasetWriter, ItemResult, JobReport, parse_shard, plan_units, run_units

logger = logging.getLogger(__name__)


def is_grayscale(image: np.ndarray, tolerance: int = 6, max_pixels: int = 65536) -> bool:
    """True when (almost) every pixel has R = G = B: the 99th percentile of the per-pixel channel
    spread is at most ``tolerance`` (uint8 levels, allowing JPEG chroma noise)."""
    flat = image.reshape(-1, 3)
    if flat.shape[0] > max_pixels:
        flat = flat[np.linspace(0, flat.shape[0] - 1, max_pixels).astype(np.int64)]
    spread = flat.max(1).astype(np.int16) - flat.min(1).astype(np.int16)
    return float(np.percentile(spread, 99)) <= tolerance


def _resize(loaded: LoadedImage, max_side: int) -> LoadedImage:
    from PIL import Image

    height, width = loaded.image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return loaded
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = np.asarray(Image.fromarray(loaded.image).resize(size, Image.LANCZOS))
    annotations = None
    if loaded.annotations is not None:
        annotations = [
            Instance(
                np.asarray(Image.fromarray(a.mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127,
                a.label,
                a.score,
            )
            for a in loaded.annotations
        ]
    return LoadedImage(loaded.id, loaded.source, image, None, annotations, loaded.extra)


def _make_chain(specs: list[dict], cache: dict) -> CaptionerChain:
    captioners = []
    for spec in specs:
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = build_component(spec, CAPTIONERS, "captioner")
        captioners.append(cache[key])
    return CaptionerChain(captioners)


class BuildProcessor:
    """Processes one :class:`~mtcolor.dataset_builder.sources.SourceItem` into an :class:`ItemResult`."""

    def __init__(self, config: BuildConfig):
        self.config = config
        self.source = build_component(config.source, SOURCES, "source")
        self.segmenter = build_component(config.segmenter, SEGMENTERS, "segmenter")
        cache: dict = {}
        self.chain = _make_chain(config.captioners, cache)
        self.global_chain = _make_chain(config.global_captioners or config.captioners, cache)
        self.verifier = Verifier(**config.verification)
        self.namer = ColorNamer()
        self.options = config.instance_options
        self.lexicon = default_lexicon("extended")

    def __call__(self, item: SourceItem) -> ItemResult:
        counters = {
            k: Counter()
            for k in (
                "dropped_instances",
                "verification",
                "instance_captioners",
                "global_captioners",
                "caption_problems",
            )
        }
        try:
            row = self.process(self.source.load(item), counters)
        except SkipItem as skip:
            return ItemResult(item.id, None, skip.reason, skip.detail, counters)
        return ItemResult(item.id, row, counters=counters)

    def _select(self, instances: list[Instance], height: int, width: int, counters: dict) -> list[Instance]:
        min_area = max(self.options.min_area, math.ceil(self.options.min_area_fraction * height * width))
        kept = []
        for instance in instances:
            if instance.mask.shape != (height, width):
                raise SkipItem(
                    "bad_annotation", f"a mask is {instance.mask.shape}, the image {(height, width)}"
                )
            if instance.area < min_area:
                counters["dropped_instances"]["too_small"] += 1
            else:
                kept.append(instance)
        if len(kept) > self.options.max_instances:
            order = sorted(range(len(kept)), key=lambda i: -kept[i].area)[: self.options.max_instances]
            counters["dropped_instances"]["over_max_instances"] += len(kept) - len(order)
            kept = [kept[i] for i in sorted(order)]
        return kept

    def process(self, loaded: LoadedImage, counters: dict) -> dict:
        """One loaded image -> one encoded record (raises :class:`SkipItem`)."""
        from mtcolor.records import encode_record

        if self.config.skip_grayscale and is_grayscale(loaded.image):
            raise SkipItem("grayscale_image", f"{loaded.id}: no chroma to learn from")
        if self.config.max_side:
            loaded = _resize(loaded, self.config.max_side)
        image = loaded.image
        height, width = image.shape[:2]
        instances = self._select(self.segmenter.segment(image, loaded.annotations), height, width, counters)
        inputs = [InstanceInput(i.mask, i.label, self.namer.measure(image, i.mask)) for i in instances]
        captions = self.chain.caption_instances(image, inputs)
        counters["caption_problems"].update(captions.problems)
        kept, texts, captioners, verification = [], [], [], []
        for instance, text, captioner in zip(inputs, captions.texts, captions.captioners):
            if text is None:
                counters["dropped_instances"]["no_valid_text"] += 1
                continue
            status = self.verifier.verify(text, instance.measurement)
            if status == "disagree" and self.verifier.rewrite:
                rewritten = self.verifier.rewritten(text, instance.label, instance.measurement, self.namer)
                if rewritten is not None:
                    text, captioner, status = rewritten, f"{captioner}+rule", "agree"
            if status == "disagree" and self.verifier.drop_disagree:
                counters["dropped_instances"]["disagree"] += 1
                continue
            kept.append(instance)
            texts.append(text)
            captioners.append(captioner)
            verification.append(status)
        if len(kept) < self.options.min_instances:
            raise SkipItem(
                "no_instances",
                f"{loaded.id}: {len(kept)} usable instance(s) < min_instances={self.options.min_instances}",
            )
        labels = [i.label or strip_color_words(t, self.lexicon) or "object" for i, t in zip(kept, texts)]
        colors = [(self.lexicon.find(t)[0].word if self.lexicon.has_color(t) else "") for t in texts]
        global_result = self.global_chain.caption_global(image, kept, texts)
        counters["caption_problems"].update(global_result.problems)
        if global_result.texts[0] is None:
            raise SkipItem("no_global_text", f"{loaded.id}: every global captioner failed")
        counters["verification"].update(verification)
        counters["instance_captioners"].update(captioners)
        counters["global_captioners"][global_result.captioners[0]] += 1
        keep_bytes = self.config.image_format == "keep" and loaded.encoded is not None
        row = {
            "id": loaded.id,
            "image": loaded.encoded if keep_bytes else image,
            "masks": np.stack([i.mask for i in kept]) if kept else np.zeros((0, height, width), bool),
            "instance_texts": texts,
            "instance_labels": labels,
            "instance_colors": colors,
            "global_text": global_result.texts[0],
            "source": loaded.source,
            "instance_captioners": captioners,
            "global_captioner": global_result.captioners[0],
            "verification": verification,
        }
        return encode_record(row, image_format="jpeg" if self.config.image_format == "jpeg" else "png")


class _BuildFactory:
    """Picklable factory of :class:`BuildProcessor` for worker processes."""

    def __init__(self, config: BuildConfig):
        self.config = config

    def __call__(self) -> BuildProcessor:
        return BuildProcessor(self.config)


def assign_split(item_id: str, test_fraction: float) -> bool:
    """True if ``item_id`` belongs to the test split: a stable hash (sha1) of the id, not the order."""
    if test_fraction <= 0:
        return False
    value = int(hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:12], 16) / float(16**12)
    return value < test_fraction


def launcher_shard() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when started by ``accelerate launch`` / ``torchrun`` with several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world


def build(
    config: BuildConfig,
    shard: tuple[int, int] | str | None = None,
    num_proc: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> JobReport:
    """Run (or resume) a build job and refresh the dataset card.

    Args:
        config: the job (its ``output_dir`` must be set).
        shard: ``(i, N)`` or ``"i/N"``: this process's part of the job; None = the whole job, or
            RANK/WORLD_SIZE under ``accelerate launch`` / ``torchrun``.
        num_proc: worker processes for the per-image work.
        progress: show a progress bar.
        overwrite: rebuild splits recorded with a different configuration (deletes their shards).

    Raises:
        ValueError: bad configuration, or ``output_dir`` is a file.
        mtcolor.locks.FolderLockedError: a live process is building this shard into ``output_dir``.
    """
    if not config.output_dir:
        raise ValueError("output_dir is not set; put output_dir in the config or pass --output_dir.")
    if isinstance(shard, str) or shard is None:
        shard = launcher_shard() if shard is None and launcher_shard() else parse_shard(shard)
    exit_with_parent_if_launched()  # under accelerate launch / torchrun: end with the launcher
    writer = DatasetWriter(config.output_dir)  # refuses a file; removes temporaries of killed runs
    with writer.lock(shard):  # a second run of this shard on the folder refuses to start
        return _build(config, writer, shard, num_proc, progress, overwrite)


def _build(config: BuildConfig, writer: DatasetWriter, shard, num_proc, progress, overwrite) -> JobReport:
    """:func:`build` once the output folder is open and this shard's lock held."""
    from .card import write_card

    if shard != (0, 1) and os.environ.get("LOCAL_RANK") is not None:
        import torch

        if torch.cuda.is_available():  # one GPU per launched process
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    source = build_component(config.source, SOURCES, "source")
    items = source.list_items()
    if config.limit is not None:
        items = items[: config.limit]
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        duplicates = [i for i, c in Counter(ids).items() if c > 1][:5]
        raise ValueError(f"the source yields duplicate ids {duplicates}; ids must be unique.")
    by_split: dict[str, list[SourceItem]] = {config.split: []}
    if config.test_fraction > 0:
        by_split[config.test_split] = []
    for item in items:
        by_split[config.test_split if assign_split(item.id, config.test_fraction) else config.split].append(
            item
        )
    units = plan_units(by_split, config.shard_size)
    content = config.content()
    record = {"kind": "build", "fingerprint": fingerprint(content), "config": content}
    writer.register(
        {
            split: {**record, "items": len(s_items), "units": sum(u.split == split for u in units)}
            for split, s_items in by_split.items()
        },
        overwrite=overwrite,
    )
    report = run_units(
        writer,
        units,
        _BuildFactory(config),
        shard,
        num_proc,
        progress,
        description=f"build {shard[0]}/{shard[1]}",
    )
    write_card(config.output_dir, pretty_name=config.name)
    return report
