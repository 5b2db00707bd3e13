"""Sources: where the images (and, for annotated collections, their instances) come from.

Interface (:class:`Source`): ``list_items()`` returns every item with a unique, stable ``id`` in a
deterministic order (it decides the shard partition, so it must not depend on the machine), and
``load(item)`` returns a :class:`LoadedImage` or raises :class:`SkipItem` with a reason code
(corrupt files are counted and skipped, never fatal). Items are small and picklable: they travel to
worker processes.

Built-in types: ``image_folder``, ``coco`` (COCO / COCO-Stuff annotation files; instances from the
annotation masks), ``hf`` (any Hugging Face ``datasets`` dataset with an image column) and
``synthetic`` (:mod:`mtcolor.synthetic` scenes). Others plug in by import path.
"""

from __future__ import annotations

import io
import json
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtcolor.synthetic import SyntheticConfig, generate_scene, scene_seed

from .segmenters import Instance

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_KEEP_FORMATS = ("JPEG", "PNG", "WEBP")


class SkipItem(Exception):
    """An item that cannot be used: ``reason`` is a short code counted in the statistics
    ("unreadable_image", "too_large", "grayscale_image", "no_instances", ...), ``detail`` a message."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SourceItem:
    """``id``: unique stable id; ``ref``: what :meth:`Source.load` needs (path, index, annotations)."""

    id: str
    ref: Any = None


@dataclass
class LoadedImage:
    """A decoded image: ``image`` uint8 (H, W, 3); ``encoded`` the original file bytes when they can be
    stored as they are (an RGB JPEG/PNG/WebP), else None; ``annotations`` the source's instances."""

    id: str
    source: str
    image: np.ndarray
    encoded: bytes | None = None
    annotations: list[Instance] | None = None
    extra: dict = field(default_factory=dict)


def decode_image(data: bytes, item_id: str, max_pixels: int = 89_478_485) -> tuple[np.ndarray, bytes | None]:
    """Image file bytes -> (uint8 RGB array (H, W, 3), the bytes if storable as they are, else None).

    Raises :class:`SkipItem` ``"unreadable_image"`` for corrupt/truncated/unknown files and
    ``"too_large"`` above ``max_pixels``. Alpha is dropped; palette, CMYK, gray and 16-bit images
    are converted (:func:`mtcolor.image_io.to_float_image`) and then not stored as they are. EXIF
    orientation is not applied (annotations refer to the stored pixel grid).
    """
    from PIL import Image, UnidentifiedImageError

    from mtcolor.image_io import to_float_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            width, height = opened.size
            if width * height > max_pixels:
                raise SkipItem("too_large", f"{item_id}: {width}x{height} pixels > max_pixels={max_pixels}")
            opened.load()
    except SkipItem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise SkipItem("too_large", f"{item_id}: {error}") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise SkipItem("unreadable_image", f"{item_id}: {type(error).__name__}: {error}") from error
    if width < 1 or height < 1:
        raise SkipItem("unreadable_image", f"{item_id}: empty image {width}x{height}")
    keep = opened.mode == "RGB" and opened.format in _KEEP_FORMATS
    if opened.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "L", "LA", "1"):
        array = np.asarray(opened.convert("RGB"), dtype=np.uint8)
    else:
        floats = to_float_image(opened, name=item_id, orient=False)  # (H, W, 1|3) in [0, 1]
        array = np.repeat(floats, 3 // floats.shape[-1], axis=-1)
        array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array), (data if keep else None)


class Source(ABC):
    """Base class: subclasses set :attr:`name` and implement :meth:`list_items` and :meth:`load`."""

    name = "source"

    @abstractmethod
    def list_items(self) -> list[SourceItem]:
        """Every item, deterministic order, unique ids."""

    @abstractmethod
    def load(self, item: SourceItem) -> LoadedImage:
        """Decode one item; raise :class:`SkipItem` when it cannot be used."""

    def has_annotations(self) -> bool:
        return False


class ImageFolderSource(Source):
    """Every image file under ``root`` (ids: paths relative to ``root``, POSIX style, sorted).

    Args:
        root: the folder.
        extensions: file name endings to include (case-insensitive).
        recursive: include sub-folders.
        max_pixels: larger images are skipped ("too_large").
    """

    name = "image_folder"

    def __init__(
        self,
        root: str,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        recursive: bool = True,
        max_pixels: int = 89_478_485,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"root={str(root)!r} is not a folder; pass the folder holding the images.")
        self.extensions = tuple(e.lower() for e in extensions)
        self.recursive = recursive
        self.max_pixels = int(max_pixels)

    def list_items(self) -> list[SourceItem]:
        paths = self.root.rglob("*") if self.recursive else self.root.glob("*")
        files = sorted(
            p.relative_to(self.root).as_posix()
            for p in paths
            if p.is_file() and p.suffix.lower() in self.extensions
        )
        return [SourceItem(f, f) for f in files]

    def load(self, item: SourceItem) -> LoadedImage:
        try:
            data = (self.root / item.ref).read_bytes()
        except OSError as error:
            raise SkipItem("unreadable_image", f"{item.id}: {error}") from error
        image, encoded = decode_image(data, item.id, self.max_pixels)
        return LoadedImage(item.id, f"{self.name}:{item.id}", image, encoded)


def clean_coco_label(name: str) -> str:
    """COCO-Stuff names to plain English: "wall-brick" -> "brick wall", "sky-other" -> "sky",
    "grass-merged" -> "grass", "hair drier" unchanged."""
    parts = name.replace("_", " ").split("-")
    parts = [p for p in parts if p not in ("other", "merged", "stuff")]
    if len(parts) == 2:
        parts = [parts[1], parts[0]]
    return " ".join(parts).strip()


class CocoSource(Source):
    """COCO-style detection/segmentation annotations (COCO, COCO-Stuff, LVIS-like files).

    Args:
        annotation_file: one JSON file or a list of them (e.g. COCO ``instances_*.json`` plus
            COCO-Stuff ``stuff_*.json``: their annotations are merged per image; the image list
            comes from the first file).
        image_root: folder holding the ``file_name`` of each image.
        include_crowd: keep ``iscrowd`` annotations (crowd regions, off by default).
        exclude_categories: category names to ignore (COCO-Stuff's catch-all ``"other"`` by default).
        clean_labels: turn COCO-Stuff names into plain phrases (:func:`clean_coco_label`).
        max_pixels: larger images are skipped.

    Ids are ``coco:<image id>``. Polygons, uncompressed and compressed RLE are decoded with
    pycocotools. Each item carries its own annotations, so worker processes never load the JSON.
    """

    name = "coco"

    def __init__(
        self,
        annotation_file: str | list[str],
        image_root: str,
        include_crowd: bool = False,
        exclude_categories: tuple[str, ...] = ("other",),
        clean_labels: bool = True,
        max_pixels: int = 89_478_485,
    ):
        files = [annotation_file] if isinstance(annotation_file, (str, Path)) else list(annotation_file)
        if not files:
            raise ValueError(
                "annotation_file is empty; pass a COCO annotation JSON path (or a list of them)."
            )
        for f in files:
            if not Path(f).is_file():
                raise ValueError(f"annotation_file {str(f)!r} does not exist; pass a COCO-style JSON file.")
        self.annotation_files = [str(f) for f in files]
        self.image_root = Path(image_root)
        if not self.image_root.is_dir():
            raise ValueError(
                f"image_root={str(image_root)!r} is not a folder; pass the folder of the images."
            )
        self.include_crowd = include_crowd
        self.exclude_categories = tuple(exclude_categories)
        self.clean_labels = clean_labels
        self.max_pixels = int(max_pixels)

    def has_annotations(self) -> bool:
        return True

    def list_items(self) -> list[SourceItem]:
        images: dict[int, dict] = {}
        annotations: dict[int, list] = {}
        categories: dict[int, str] = {}
        for index, path in enumerate(self.annotation_files):
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            for key in ("images", "annotations", "categories"):
                if key not in data:
                    raise ValueError(
                        f"annotation_file {path!r} has no {key!r} list; is it a COCO-style file?"
                    )
            if index == 0:
                images = {int(img["id"]): img for img in data["images"]}
            for cat in data["categories"]:
                categories[int(cat["id"])] = cat["name"]
            for ann in data["annotations"]:
                annotations.setdefault(int(ann["image_id"]), []).append(ann)
        items = []
        for image_id in sorted(images):
            info = images[image_id]
            anns = []
            for ann in sorted(annotations.get(image_id, []), key=lambda a: int(a.get("id", 0))):
                label = categories.get(int(ann["category_id"]), str(ann["category_id"]))
                if label in self.exclude_categories or (ann.get("iscrowd", 0) and not self.include_crowd):
                    continue
                if self.clean_labels:
                    label = clean_coco_label(label)
                anns.append((label, ann["segmentation"]))
            ref = (info["file_name"], int(info["height"]), int(info["width"]), tuple(anns))
            items.append(SourceItem(f"coco:{image_id}", ref))
        return items

    def load(self, item: SourceItem) -> LoadedImage:
        import pycocotools.mask as mask_utils

        file_name, height, width, anns = item.ref
        try:
            data = (self.image_root / file_name).read_bytes()
        except OSError as error:
            raise SkipItem("unreadable_image", f"{item.id}: {error}") from error
        image, encoded = decode_image(data, item.id, self.max_pixels)
        if image.shape[:2] != (height, width):
            raise SkipItem(
                "annotation_size_mismatch",
                f"{item.id}: image is {image.shape[0]}x{image.shape[1]} but annotated as {height}x{width}",
            )
        instances = []
        for label, segmentation in anns:
            try:
                if isinstance(segmentation, list):  # polygons
                    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
                elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
                    rle = mask_utils.frPyObjects(segmentation, height, width)
                else:
                    rle = dict(segmentation)
                    if isinstance(rle["counts"], str):
                        rle["counts"] = rle["counts"].encode("ascii")
                mask = mask_utils.decode(rle).astype(bool)
            except (TypeError, ValueError, KeyError, AttributeError) as error:
                raise SkipItem("bad_annotation", f"{item.id}: {type(error).__name__}: {error}") from error
            if mask.shape != (height, width):
                raise SkipItem(
                    "annotation_size_mismatch", f"{item.id}: a mask is {mask.shape}, image {(height, width)}"
                )
            instances.append(Instance(mask, label))
        return LoadedImage(item.id, f"{self.name}:{file_name}", image, encoded, instances)


class HFDatasetSource(Source):
    """Any Hugging Face ``datasets`` dataset with an image column.

    Args:
        path: a hub id / builder name for ``datasets.load_dataset``, or a local folder written by
            ``Dataset.save_to_disk`` (loaded with ``load_from_disk``).
        split: the split to read.
        image_column: the column holding the images.
        id_column: a column with unique ids (default: the row index).
        name, data_files: forwarded to ``load_dataset``.
        max_pixels: larger images are skipped.

    Ids are ``<id column value>`` or ``<path>:<split>:<row index>``.
    """

    name = "hf"

    def __init__(
        self,
        path: str,
        split: str = "train",
        image_column: str = "image",
        id_column: str | None = None,
        name: str | None = None,
        data_files: Any = None,
        max_pixels: int = 89_478_485,
    ):
        self.path = str(path)
        self.split = split
        self.image_column = image_column
        self.id_column = id_column
        self.config_name = name
        self.data_files = data_files
        self.max_pixels = int(max_pixels)
        self._dataset = None

    def dataset(self):
        """The dataset with the image column left undecoded (``{"bytes", "path"}``), loaded once."""
        if self._dataset is None:
            import datasets

            if Path(self.path, "dataset_info.json").is_file() or Path(self.path, "state.json").is_file():
                loaded = datasets.load_from_disk(self.path)
                if isinstance(loaded, datasets.DatasetDict):
                    loaded = loaded[self.split]
            else:
                loaded = datasets.load_dataset(
                    self.path, self.config_name, split=self.split, data_files=self.data_files
                )
            if self.image_column not in loaded.column_names:
                raise ValueError(
                    f"image_column={self.image_column!r} is not a column of {self.path!r}; columns: {loaded.column_names}."
                )
            if self.id_column is not None and self.id_column not in loaded.column_names:
                raise ValueError(
                    f"id_column={self.id_column!r} is not a column of {self.path!r}; columns: {loaded.column_names}."
                )
            feature = loaded.features[self.image_column]
            if isinstance(feature, datasets.Image):
                loaded = loaded.cast_column(self.image_column, datasets.Image(decode=False))
            self._dataset = loaded
        return self._dataset

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_dataset"] = None  # reloaded (memory-mapped) in each worker
        return state

    def list_items(self) -> list[SourceItem]:
        dataset = self.dataset()
        if self.id_column is None:
            return [SourceItem(f"{self.path}:{self.split}:{i}", i) for i in range(len(dataset))]
        ids = [str(v) for v in dataset[self.id_column]]
        if len(set(ids)) != len(ids):
            raise ValueError(
                f"id_column={self.id_column!r} has duplicate values; pick a column with unique ids."
            )
        return [SourceItem(v, i) for i, v in enumerate(ids)]

    def load(self, item: SourceItem) -> LoadedImage:
        value = self.dataset()[int(item.ref)][self.image_column]
        if value is None:
            raise SkipItem("unreadable_image", f"{item.id}: empty image cell")
        if isinstance(value, dict):
            data = value.get("bytes")
            if data is None and value.get("path"):
                try:
                    data = Path(value["path"]).read_bytes()
                except OSError as error:
                    raise SkipItem("unreadable_image", f"{item.id}: {error}") from error
            if data is None:
                raise SkipItem("unreadable_image", f"{item.id}: image cell without bytes or path")
            image, encoded = decode_image(data, item.id, self.max_pixels)
        else:  # an array column or an already decoded PIL image
            from mtcolor.image_io import to_float_image

            floats = to_float_image(value, name=item.id, orient=False)  # annotations: the stored grid
            image = np.clip(np.round(np.repeat(floats, 3 // floats.shape[-1], axis=-1) * 255), 0, 255).astype(
                np.uint8
            )
            encoded = None
        return LoadedImage(item.id, f"{self.name}:{item.id}", image, encoded)


class SyntheticSource(Source):
    """Synthetic scenes (:mod:`mtcolor.synthetic`) as a source of *unannotated-by-text* images
    with exact masks and shape labels, so the captioning/verification path can run offline on them.

    Args:
        num_images: scenes to generate.
        seed: base seed (scene ``i`` uses a seed derived from (seed, i)).
        config: :class:`~mtcolor.synthetic.SyntheticConfig` fields as a dict.
    """

    name = "synthetic"

    def __init__(self, num_images: int, seed: int = 0, config: dict | None = None):
        if num_images < 0:
            raise ValueError(f"num_images={num_images}; expected a count >= 0.")
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.config = SyntheticConfig.from_dict(config or {})

    def has_annotations(self) -> bool:
        return True

    def list_items(self) -> list[SourceItem]:
        return [SourceItem(f"synthetic:{self.seed}:{i:07d}", i) for i in range(self.num_images)]

    def load(self, item: SourceItem) -> LoadedImage:
        row = generate_scene(self.config, scene_seed(self.seed, "train", int(item.ref)))
        image = np.asarray(row["image"], dtype=np.uint8)
        instances = [Instance(m, label) for m, label in zip(row["masks"], row["instance_labels"])]
        return LoadedImage(item.id, f"{self.name}:{item.id}", image, None, instances)
