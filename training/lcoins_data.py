"""Training data for L-CoIns: (colour image, caption) pairs from two on-disk formats.

* ``"records"``: the mtcolor record format written by ``dataset_builder`` (:mod:`mtcolor.records`);
  the caption is the record's ``global_text`` (the overall colour description that enumerates the
  objects with their colours). Masks and instance texts are not used by L-CoIns.
* ``"pairs"``: the caption-only layout of the L-CoIns multi-instance dataset::

      <root>/cap-img-pairs_<split>.json     # [[file_name, caption], ...]
      <root>/<split>/<file_name>            # the colour images

``"auto"`` picks ``"pairs"`` when ``<root>/cap-img-pairs_<split>.json`` exists, else ``"records"``.

Every sample is ``{"pixel_values": (3, S, S) float sRGB in [0, 1], "caption": str}``: the image is
resized to the model's square working size S (antialiased when shrinking), as the released L-CoIns
code does; the pipeline later maps predictions back to any size.
"""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import torch

from mtcolor.color import resize
from mtcolor.image_io import to_tensor_image

__all__ = ["CaptionImageDataset", "collate", "load_caption_dataset", "pairs_file"]

DATA_FORMATS = ("auto", "records", "pairs")


def pairs_file(root: str | Path, split: str) -> Path:
    """Path of the caption file of the "pairs" layout for ``split``."""
    return Path(root) / f"cap-img-pairs_{split}.json"


class CaptionImageDataset(torch.utils.data.Dataset):
    """(colour image, caption) samples at a fixed square size.

    Args:
        rows: a sequence whose items are ``(image, caption)``: ``image`` a PIL image or a path.
        image_size: S, the working size of the model.
    """

    def __init__(self, rows, image_size: int):
        self.rows = rows
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        image, caption = self.rows[index]
        if isinstance(image, (str, Path)):
            with PIL.Image.open(image) as handle:
                image = handle.convert("RGB")
        pixels = to_tensor_image(image.convert("RGB"), f"image of sample {index}")  # (3, H, W)
        pixels = resize(pixels[None], (self.image_size, self.image_size))[0].clamp(0, 1)
        return {"pixel_values": pixels, "caption": str(caption or "")}


class _RecordRows:
    """(PIL image, global_text) view of a records ``datasets.Dataset`` (masks are never decoded)."""

    def __init__(self, dataset):
        self.dataset = dataset.select_columns(["image", "global_text"])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        row = self.dataset[int(index)]
        return row["image"], row["global_text"]


def _load_pairs(root: Path, split: str) -> list[tuple[Path, str]]:
    path = pairs_file(root, split)
    try:
        pairs = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found; the 'pairs' format needs <root>/cap-img-pairs_<split>.json listing "
            "[file_name, caption] pairs and the images under <root>/<split>/."
        ) from None
    rows = []
    for k, item in enumerate(pairs):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise ValueError(f"{path} entry {k} is {item!r}; expected [file_name, caption] (two strings).")
        image_path = root / split / item[0]
        if not image_path.is_file():
            raise FileNotFoundError(f"{path} entry {k} names {item[0]!r} but {image_path} does not exist.")
        rows.append((image_path, item[1]))
    return rows


def load_caption_dataset(
    path: str | Path, image_size: int, split: str = "train", data_format: str = "auto"
) -> CaptionImageDataset:
    """Load ``split`` of a dataset in the "records" or "pairs" format (see the module docstring).

    Args:
        path: dataset folder (or, for records, a Hub id that :func:`mtcolor.records.load_records` accepts).
        image_size: S, the model's working size.
        split: split name (``"train"``, ``"val"`` ...).
        data_format: ``"auto"``, ``"records"`` or ``"pairs"``.
    """
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format={data_format!r}; pass one of {DATA_FORMATS}.")
    if data_format == "auto":
        data_format = "pairs" if pairs_file(path, split).is_file() else "records"
    if data_format == "pairs":
        rows = _load_pairs(Path(path), split)
    else:
        from mtcolor.records import load_records

        rows = _RecordRows(load_records(str(path), split=split))
    if len(rows) == 0:
        raise ValueError(f"split {split!r} of {path} ({data_format} format) has no samples.")
    return CaptionImageDataset(rows, image_size)


def collate(samples: list[dict]) -> dict:
    """Stack ``pixel_values`` to (B, 3, S, S) and keep captions as a list of B strings."""
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "caption": [s["caption"] for s in samples],
    }
