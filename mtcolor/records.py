"""The instance-colorization record format (the contract between ``dataset_builder``, training and metrics).

A dataset is a Hugging Face ``datasets`` dataset stored as parquet shards
(``<root>/data/<split>-<k>-of-<K>.parquet``, plus a dataset card ``<root>/README.md``), one row per
image, with the columns of :data:`FEATURES`:

================== ============================ ==================================================
column             type                         meaning
================== ============================ ==================================================
id                 string                       unique, stable id of the image in its source
image              datasets.Image (RGB)         the colour image (original file bytes or PNG)
width, height      int32                        image size in pixels
masks              list of {size, counts}       one COCO *compressed* RLE per instance
                                                (pycocotools; ``size = [H, W]``, ``counts`` str)
instance_texts     list[str]                    one "colour + object" phrase per instance
                                                ("a red apple")
instance_labels    list[str]                    the object label of each instance ("apple")
instance_colors    list[str]                    canonical colour word of each text, or ""
global_text        str                          opens with the overall colour scheme, then
                                                enumerates the objects with their colours
source             str                          provenance of the image ("coco:139", a path ...)
instance_captioners list[str]                   which captioner produced each instance text
global_captioner   str                          which captioner produced ``global_text``
verification       list[str]                    per instance: "agree" / "disagree" / "unknown"
                                                (text colour word vs the measured pixel colour)
================== ============================ ==================================================

All per-instance lists have the same length ``n`` (possibly 0). Masks are stored as written (real
data may overlap, e.g. COCO annotations); :func:`decode_record` builds the label map with the shared
rule of :func:`mtcolor.masks.masks_to_label_map` (an overlapping pixel goes to the smallest mask).

Reading for training::

    from mtcolor.records import load_records, decode_record
    ds = load_records("path/to/dataset", split="train")
    sample = decode_record(ds[0])       # Record: image (3, H, W), gray (1, H, W), label_map (H, W) ...

The 50% null-condition dropout of MT-Color training (drop masks and texts) is the trainer's job:
records always carry every instance.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

#: Names of the per-instance list columns (all of length n in a valid row).
INSTANCE_COLUMNS = (
    "masks", "instance_texts", "instance_labels", "instance_colors", "instance_captioners", "verification",
)  # fmt: skip
VERIFICATION_VALUES = ("agree", "disagree", "unknown")
#: ``<split>-<index>-of-<count>.parquet``: the shard file names the builders write.
SHARD_PATTERN = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")


def _features():
    from datasets import Features, Image, List, Value

    strings = List(Value("string"))
    return Features(
        {
            "id": Value("string"),
            "image": Image(),
            "width": Value("int32"),
            "height": Value("int32"),
            "masks": List({"size": List(Value("int32")), "counts": Value("string")}),
            "instance_texts": strings,
            "instance_labels": strings,
            "instance_colors": strings,
            "global_text": Value("string"),
            "source": Value("string"),
            "instance_captioners": strings,
            "global_captioner": Value("string"),
            "verification": strings,
        }
    )


def __getattr__(name: str):
    # FEATURES is built lazily so that importing this module does not import `datasets`.
    if name == "FEATURES":
        value = _features()
        globals()["FEATURES"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------- masks
def encode_masks(masks) -> list[dict]:
    """Binary masks -> COCO compressed RLE dicts.

    Args:
        masks: bool (or 0/1) array or tensor of shape (n, H, W); n may be 0.

    Returns:
        ``n`` dicts ``{"size": [H, W], "counts": str}`` (pycocotools' RLE with ``counts`` decoded to
        ASCII so it stores as a parquet string).
    """
    import pycocotools.mask as mask_utils

    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks has shape {masks.shape}; expected (n, H, W) boolean masks.")
    if masks.dtype != np.bool_:
        if masks.size and not np.isin(masks, (0, 1)).all():
            raise ValueError("masks has values other than 0/1; pass boolean masks (threshold them first).")
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))  # (H, W, n)
    return [
        {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}
        for r in mask_utils.encode(fortran)
    ]


def decode_masks(rles: list[dict], size: tuple[int, int] | None = None) -> torch.Tensor:
    """COCO RLE dicts (compressed, ``counts`` str or bytes) -> bool tensor (n, H, W).

    ``size = (H, W)`` is only needed to shape the result when ``rles`` is empty (then (0, H, W));
    when given with non-empty ``rles`` it must match their ``size``.
    """
    import pycocotools.mask as mask_utils

    if not rles:
        h, w = size if size is not None else (0, 0)
        return torch.zeros((0, int(h), int(w)), dtype=torch.bool)
    prepared = []
    for i, rle in enumerate(rles):
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise ValueError(
                f"rles[{i}] = {rle!r:.80}; expected a COCO RLE dict {{'size': [H, W], 'counts': ...}}."
            )
        counts = rle["counts"]
        if isinstance(counts, list):  # uncompressed RLE -> compressed
            counts = mask_utils.frPyObjects(rle, *rle["size"])["counts"]
        elif isinstance(counts, str):
            counts = counts.encode("ascii")
        prepared.append({"size": [int(s) for s in rle["size"]], "counts": counts})
    sizes = {tuple(r["size"]) for r in prepared}
    if len(sizes) != 1:
        raise ValueError(
            f"rles have different sizes {sorted(sizes)}; all masks of a record share the image size."
        )
    if size is not None and tuple(size) != next(iter(sizes)):
        raise ValueError(f"size={tuple(size)} but the RLEs have size {next(iter(sizes))}.")
    decoded = mask_utils.decode(prepared)  # (H, W, n) uint8, Fortran order
    return torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 0, 1))).bool()


# --------------------------------------------------------------------------------------------- rows
def _image_to_storage(image, image_format: str = "png") -> dict:
    """PIL image / uint8 array (H, W, 3) / encoded bytes -> ``{"bytes": ..., "path": None}``."""
    from PIL import Image

    if isinstance(image, dict) and "bytes" in image:
        return {"bytes": image["bytes"], "path": None}
    if isinstance(image, (bytes, bytearray)):
        return {"bytes": bytes(image), "path": None}
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"row['image'] has type {type(image).__name__}; expected a PIL image, uint8 array or bytes."
        )
    if image.mode != "RGB":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG", compress_level=4)
    elif image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=95)
    else:
        raise ValueError(f"image_format={image_format!r}; expected 'png' or 'jpeg'.")
    return {"bytes": buffer.getvalue(), "path": None}


def _image_size(image) -> tuple[int, int]:
    """(width, height) of a PIL image, an array (H, W, C) or encoded bytes."""
    from PIL import Image

    if isinstance(image, dict):
        image = image["bytes"]
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as opened:
            return opened.size
    if isinstance(image, np.ndarray):
        return int(image.shape[1]), int(image.shape[0])
    return image.size


def validate_row(row: dict) -> None:
    """Check one (encoded or not) row: every column present, per-instance lists of equal length."""
    missing = [c for c in _features() if c not in row and c not in ("width", "height")]
    if missing:
        raise ValueError(f"record {row.get('id')!r} misses columns {missing}; see mtcolor.records.FEATURES.")
    n = len(row["masks"])
    for column in INSTANCE_COLUMNS:
        if len(row[column]) != n:
            raise ValueError(
                f"record {row['id']!r}: len({column}) = {len(row[column])} but there are {n} masks; every "
                "per-instance column needs one entry per mask."
            )
    bad = [v for v in row["verification"] if v not in VERIFICATION_VALUES]
    if bad:
        raise ValueError(
            f"record {row['id']!r}: verification values {bad}; expected one of {VERIFICATION_VALUES}."
        )


def encode_record(row: dict, image_format: str = "png") -> dict:
    """A row with a decoded image and boolean masks -> a row ready for :data:`FEATURES` / parquet.

    Args:
        row: dict with the columns of :data:`FEATURES`; ``image`` may be a PIL image, a uint8 array
            (H, W, 3), encoded image bytes (kept as they are) or ``{"bytes": ...}``; ``masks`` may be a
            bool array/tensor (n, H, W) or already a list of RLE dicts. ``width``/``height`` are
            filled in from the image when absent.
        image_format: how to encode a decoded image (``"png"``, lossless, or ``"jpeg"``).
    """
    validate_row(row)
    out = dict(row)
    width, height = _image_size(row["image"])
    out["image"] = _image_to_storage(row["image"], image_format)
    masks = row["masks"]
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        if masks.ndim != 3 or (masks.shape[0] and tuple(masks.shape[1:]) != (height, width)):
            raise ValueError(
                f"record {row['id']!r}: masks have shape {tuple(masks.shape)} but the image is {height}x{width}; "
                "masks must be (n, H, W) at the image size."
            )
        out["masks"] = encode_masks(masks)
    else:
        out["masks"] = [dict(m) for m in masks]
        for m in out["masks"]:
            if isinstance(m["counts"], bytes):
                m["counts"] = m["counts"].decode("ascii")
            if list(m["size"]) != [height, width]:
                raise ValueError(
                    f"record {row['id']!r}: RLE size {m['size']} != image size [{height}, {width}]."
                )
    out["width"], out["height"] = int(width), int(height)
    for column in (
        "instance_texts",
        "instance_labels",
        "instance_colors",
        "instance_captioners",
        "verification",
    ):
        out[column] = [str(v) for v in row[column]]
    return {name: out[name] for name in _features()}


@dataclass
class Record:
    """One decoded, training-ready record.

    Attributes:
        id: the record id.
        image: float32 tensor (3, H, W), sRGB in [0, 1].
        masks: bool tensor (n, H, W), as stored (may overlap in real data).
        label_map: int64 tensor (H, W): 0 = background, k = instance k (1-based; overlaps go to the
            smallest mask, :func:`mtcolor.masks.masks_to_label_map`).
        instance_texts, instance_labels, instance_colors: n strings each.
        global_text: the global colour description.
        source, instance_captioners, global_captioner, verification: provenance.
    """

    id: str
    image: torch.Tensor
    masks: torch.Tensor
    label_map: torch.Tensor
    instance_texts: list[str]
    instance_labels: list[str]
    instance_colors: list[str]
    global_text: str
    source: str = ""
    instance_captioners: list[str] = field(default_factory=list)
    global_captioner: str = ""
    verification: list[str] = field(default_factory=list)

    @property
    def num_instances(self) -> int:
        return int(self.masks.shape[0])

    @property
    def gray(self) -> torch.Tensor:
        """The gray (luminance) input, float32 (1, H, W) in [0, 1]: Lab L / 100 of :attr:`image`."""
        from .color import rgb_luminance

        return rgb_luminance(self.image) / 100.0

    @property
    def lightness(self) -> torch.Tensor:
        """Lab L channel (1, H, W) in [0, 100]."""
        return self.gray * 100.0


def _decode_image(image):
    from PIL import Image

    if isinstance(image, dict):
        if image.get("bytes") is not None:
            image = Image.open(io.BytesIO(image["bytes"]))
        elif image.get("path"):
            image = Image.open(image["path"])
        else:
            raise ValueError("row['image'] is a dict with neither 'bytes' nor 'path'.")
    elif isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"row['image'] has type {type(image).__name__}; expected a PIL image or image bytes.")
    return image.convert("RGB")


def decode_record(row: dict, size: int | tuple[int, int] | None = None) -> Record:
    """A dataset row -> :class:`Record` (PIL decode + pycocotools RLE decode; cheap).

    Args:
        row: a row of :func:`load_records` (``image`` decoded or as ``{"bytes": ...}``).
        size: optional output size ``(H, W)`` (or an int for a square): the image is resized with
            antialiased bilinear interpolation and the masks with nearest neighbour, so the label map
            stays exact. ``None`` keeps the stored size.
    """
    from .masks import masks_to_label_map

    validate_row(row)
    image = _decode_image(row["image"])
    width, height = image.size
    masks = decode_masks(row["masks"], size=(height, width))
    if masks.shape[0] and tuple(masks.shape[1:]) != (height, width):
        raise ValueError(
            f"record {row.get('id')!r}: masks are {tuple(masks.shape[1:])} but the image is {(height, width)}."
        )
    if size is not None:
        target = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if target != (height, width):
            from PIL import Image

            image = image.resize((target[1], target[0]), Image.BILINEAR, reducing_gap=None)
            if masks.shape[0]:
                masks = torch.nn.functional.interpolate(
                    masks[None].float(), size=target, mode="nearest-exact"
                )[0].bool()
            else:
                masks = torch.zeros((0, *target), dtype=torch.bool)
            height, width = target
    tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    if masks.shape[0]:
        label_map = masks_to_label_map(masks, allow_empty=True, warn_overlap=False)
    else:
        label_map = torch.zeros((height, width), dtype=torch.int64)
    return Record(
        id=str(row["id"]),
        image=tensor,
        masks=masks,
        label_map=label_map,
        instance_texts=list(row["instance_texts"]),
        instance_labels=list(row["instance_labels"]),
        instance_colors=list(row["instance_colors"]),
        global_text=str(row["global_text"]),
        source=str(row.get("source", "")),
        instance_captioners=list(row.get("instance_captioners", [])),
        global_captioner=str(row.get("global_captioner", "")),
        verification=list(row.get("verification", [])),
    )


# --------------------------------------------------------------------------------------------- files
def shard_files(root: str | Path) -> dict[str, list[Path]]:
    """Completed shard files of a local dataset folder, by split (sorted by shard index).

    Looks in ``root/data/`` (the builders' layout) or, failing that, in ``root`` itself; temporary
    files of shards still being written (hidden ``.*.tmp*`` names) are ignored.
    """
    root = Path(root)
    folder = root / "data" if (root / "data").is_dir() else root
    splits: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.parquet")):
        match = SHARD_PATTERN.match(path.name)
        split = match.group("split") if match else path.stem.split("-")[0]
        splits.setdefault(split, []).append(path)
    return splits


def _check_complete(root: Path, split: str, files: list[Path]) -> None:
    """Warn when shards of ``split`` are missing. A shard whose every input was skipped has no
    parquet file; the builders leave ``stats/<shard>.json`` with ``"images": 0`` for it."""
    import json

    counts = {int(m.group("count")) for m in (SHARD_PATTERN.match(f.name) for f in files) if m}
    if len(counts) == 1:
        expected = counts.pop()
        empty = 0
        for stats in (root / "stats").glob(f"{split}-*.json"):
            try:
                empty += json.loads(stats.read_text(encoding="utf-8")).get("images") == 0
            except (OSError, ValueError):
                continue
        if len(files) + empty < expected:
            warnings.warn(
                f"split {split!r} has {len(files) + empty} of {expected} shards: the build is not finished (or some "
                "shards were skipped); loading the finished ones.",
                UserWarning,
                stacklevel=3,
            )


def load_records(
    path_or_hub_id: str | Path, split: str | None = None, *, streaming: bool = False, cache_dir=None
):
    """Load a record dataset.

    Args:
        path_or_hub_id: a local dataset folder (``data/<split>-*.parquet`` shards, as the builders
            write them), a folder of parquet files, one parquet file, or a ``datasets`` hub id.
        split: the split to load; several joined by ``+`` (``"train+train_crowded"``) are
            concatenated in that order. ``None`` picks ``"train"`` if present, else the only split (a
            ``ValueError`` lists the splits when that is ambiguous).
        streaming: return an ``IterableDataset`` instead of a (memory-mapped) ``Dataset``.
        cache_dir: forwarded to ``datasets.load_dataset``.

    Returns:
        ``datasets.Dataset`` (or ``IterableDataset``) with the columns of :data:`FEATURES`; rows decode
        to :class:`Record` with :func:`decode_record`.
    """
    from datasets import load_dataset

    features = _features()
    path = Path(path_or_hub_id)
    if path.is_file():
        files = {"data": [path]}
        parts = ["data"]
    elif path.is_dir():
        files = shard_files(path)
        if not files:
            raise ValueError(
                f"path_or_hub_id={str(path)!r} is a folder without parquet shards (looked in data/)."
            )
        if split is None:
            if "train" in files or len(files) == 1:
                chosen = "train" if "train" in files else next(iter(files))
            else:
                raise ValueError(
                    f"split=None is ambiguous: {str(path)!r} has splits {sorted(files)}; pass split=..."
                )
        else:
            chosen = split
        parts = chosen.split("+")
        missing = [part for part in parts if part not in files]
        if missing:
            raise ValueError(
                f"split={split!r} not found in {str(path)!r} (missing {missing}); available splits: "
                f"{sorted(files)} (join several with '+', e.g. 'train+extra')."
            )
        for part in parts:
            _check_complete(path, part, files[part])
    else:
        return load_dataset(
            str(path_or_hub_id), split=split or "train", streaming=streaming, cache_dir=cache_dir
        )
    return load_dataset(
        "parquet",
        data_files={"train": [str(f) for part in parts for f in files[part]]},
        split="train",
        features=features,
        streaming=streaming,
        cache_dir=cache_dir,
    )
