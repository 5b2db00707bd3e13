"""Evaluate folders of colorizations against ground truths: the table of ``mtcolor evaluate``.

Layout: one row per method, the columns of MT-Color Table I (Colorfulness, PSNR, SSIM, FID, NIQE,
MUSIQ, MANIQA, TOPIQ-NR) followed by L-CoIns' LPIPS, the CLIP-scores of MT-Color Tables IV/VII and
the reference-free colour adherence and bleeding, then the prediction resolution. Metrics that
cannot run (missing weights, no ground truth, no records) are listed as skipped with the reason.

Matching and resolution:

* predictions and ground-truth images are matched by **file stem**; records (masks, instance
  texts, global text) by record ``id`` == file stem;
* ``resize="pred"`` (default, as MT-Color does for 256-px methods): each ground truth (and label
  map) is resized to its prediction's size; ``resize="gt"``: predictions are resized to the
  ground truth's size. Images use antialiased bilinear interpolation
  (:func:`mtcolor.color.resize`), label maps a majority vote
  (:func:`mtcolor.masks.resize_label_map`);
* FID compares the set of predictions with the set of ground truths, each image at its own size
  (the Inception resizes to 299 x 299).

Per-image metrics are averaged over images; the instance CLIP-score over instances; adherence is
the share of agreeing instances (and their mean distance); bleeding is weighted by band pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: (key, column header) in table order; the key is also the JSON key.
COLUMNS = (
    ("colorfulness", "Colorfulness↑"),
    ("psnr", "PSNR↑"),
    ("ssim", "SSIM↑"),
    ("fid", "FID↓"),
    ("niqe", "NIQE↓"),
    ("musiq", "MUSIQ↑"),
    ("maniqa", "MANIQA↑"),
    ("topiq_nr", "TOPIQ NR↑"),
    ("lpips", "LPIPS↓"),
    ("clip_score", "CLIP-score↑"),
    ("instance_clip_score", "Instance CLIP-score↑"),
    ("adherence_accuracy", "Adherence acc.↑"),
    ("adherence_distance", "Adherence dist.↓"),
    ("bleeding_leak", "Bleeding leak↓"),
    ("bleeding_share", "Bleeding share↓"),
)
#: Metric names accepted by ``metrics=`` (``adherence`` and ``bleeding`` give two columns each).
METRICS = (
    "colorfulness",
    "psnr",
    "ssim",
    "fid",
    "niqe",
    "musiq",
    "maniqa",
    "topiq_nr",
    "lpips",
    "clip_score",
    "instance_clip_score",
    "adherence",
    "bleeding",
)
_COLUMNS_OF = {
    "adherence": ("adherence_accuracy", "adherence_distance"),
    "bleeding": ("bleeding_leak", "bleeding_share"),
}
_NEEDS_GT = {"psnr", "ssim", "lpips", "fid"}
_NEEDS_RECORDS = {"clip_score", "instance_clip_score", "adherence", "bleeding"}


@dataclass
class EvaluationSettings:
    """Options of :func:`evaluate` (defaults match ``mtcolor evaluate``).

    Attributes:
        metrics: metric names from :data:`METRICS` (default: all).
        resize: ``"pred"`` (ground truth -> prediction size) or ``"gt"`` (prediction -> ground truth).
        weights: local weight paths by key (``musiq``, ``maniqa``, ``topiq_nr``, ``lpips``,
            ``lpips_backbone``, ``fid``, ``clip``); missing keys are looked up by standard file name.
        weights_dir: extra folder searched for standard weight file names.
        clip_model: open_clip architecture name when ``weights["clip"]`` is a file.
        clip_fill: fill of the non-instance pixels of instance crops (``mean``/``black``/``keep``).
        tolerance: colour-adherence tolerance (Lab units).
        band: colour-bleeding band in pixels (None: 1/64 of the short side).
        device: where the learned metrics run (None: CUDA if available, else CPU).
        progress: show a progress bar.
    """

    metrics: tuple[str, ...] = METRICS
    resize: str = "pred"
    weights: dict[str, str] = field(default_factory=dict)
    weights_dir: str | None = None
    clip_model: str | None = None
    clip_fill: str = "mean"
    tolerance: float = 20.0
    band: int | None = None
    device: str | None = None
    progress: bool = True


def list_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Image files of a folder (not recursive) by file stem; ``ValueError`` on duplicate stems."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder of images.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if path.stem in found:
                raise ValueError(
                    f"{str(folder)!r} has two images with stem {path.stem!r}: {found[path.stem].name}, {path.name}."
                )
            found[path.stem] = path
    return found


def read_image(path: Path) -> torch.Tensor:
    """An image file -> sRGB float tensor (3, H, W) in [0, 1] (gray files are repeated to 3 channels)."""
    from PIL import Image

    from ..image_io import to_tensor_image

    with Image.open(path) as image:
        tensor = to_tensor_image(image, str(path))
    return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor


class _Records:
    """Records by id (masks, instance texts, global text, image), decoded on demand."""

    def __init__(self, path, split):
        from ..records import load_records

        self.dataset = load_records(path, split=split)
        self.index = {str(record_id): row for row, record_id in enumerate(self.dataset["id"])}

    def get(self, record_id: str):
        from ..records import decode_record

        row = self.index.get(record_id)
        return None if row is None else decode_record(self.dataset[row])


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _build_metrics(settings: EvaluationSettings, have_gt: bool, have_records: bool) -> tuple[dict, dict]:
    """Instantiate the requested metrics; returns (callables by name, skip reasons by name)."""
    from .weights import MetricWeightsError

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    built, skipped = {}, {}
    for name in settings.metrics:
        if name in _NEEDS_GT and not have_gt:
            skipped[name] = "needs ground truths (--gt, or --records with images)"
            continue
        if name in _NEEDS_RECORDS and not have_records:
            skipped[name] = "needs records with masks and texts (--records)"
            continue
        try:
            if name in ("niqe", "musiq", "maniqa", "topiq_nr", "lpips"):
                from .iqa import load_iqa_metric

                built[name] = load_iqa_metric(
                    name,
                    settings.weights.get(name),
                    backbone_weights=settings.weights.get("lpips_backbone"),
                    weights_dir=settings.weights_dir,
                    device=device,
                )
            elif name == "fid":
                from .fid import InceptionFeatures

                built[name] = InceptionFeatures.from_weights(
                    settings.weights.get("fid"), settings.weights_dir, device=device
                )
            elif name in ("clip_score", "instance_clip_score"):
                if "clip" not in built:
                    from .clip import ClipScorer

                    built["clip"] = ClipScorer.from_pretrained(
                        settings.weights.get("clip"), settings.clip_model, device=device
                    )
                built[name] = built["clip"]
            else:
                built[name] = True  # pure functions, nothing to load
        except (MetricWeightsError, ImportError, ValueError) as error:
            skipped[name] = str(error)
    built.pop("clip", None)
    return built, skipped


def _align(pred: torch.Tensor, target: torch.Tensor | None, label_map, resize: str):
    """Bring ground truth / prediction / label map to one size per the ``resize`` rule."""
    from ..color import resize as resize_image
    from ..masks import resize_label_map

    size = tuple(pred.shape[-2:]) if resize == "pred" or target is None else tuple(target.shape[-2:])
    pred = resize_image(pred[None], size)[0].clamp(0, 1)
    if target is not None:
        target = resize_image(target[None], size)[0].clamp(0, 1)
    if label_map is not None and tuple(label_map.shape) != size:
        label_map = resize_label_map(label_map, size)
    return pred, target, label_map


def _score_image(
    built: dict, settings: EvaluationSettings, pred, target, label_map, record
) -> tuple[dict, dict, dict]:
    """Per-image scores of one aligned prediction (3, H, W) (+ target, label map, record).

    Returns (scores by name, error messages by name, instance-level results by name).
    """
    from .adherence import color_adherence
    from .bleeding import color_bleeding
    from .clip import clip_score, instance_clip_score
    from .pixel import colorfulness, psnr, ssim

    batch = pred[None]  # (1, 3, H, W)
    jobs = []  # (name, function, arguments) of the per-image scores
    if "colorfulness" in built:
        jobs.append(("colorfulness", colorfulness, (batch,)))
    if target is not None:
        pair = (batch, target[None])
        jobs += [
            (n, f, pair)
            for n, f in (("psnr", psnr), ("ssim", ssim), ("lpips", built.get("lpips")))
            if n in built
        ]
    jobs += [(n, built[n], (batch,)) for n in ("niqe", "musiq", "maniqa", "topiq_nr") if n in built]
    results = {}
    if record is not None and label_map is not None:
        maps, texts = label_map[None], [record.instance_texts]
        if "clip_score" in built and record.global_text.strip():
            jobs.append(("clip_score", clip_score, (batch, [record.global_text], built["clip_score"])))
        if "instance_clip_score" in built:
            results["instance_clip_score"] = instance_clip_score(
                batch, maps, texts, built["instance_clip_score"], fill=settings.clip_fill
            )
        if "adherence" in built:
            results["adherence"] = color_adherence(batch, maps, texts, tolerance=settings.tolerance)
        if "bleeding" in built:
            results["bleeding"] = color_bleeding(batch, maps, band=settings.band)
    scores, errors = {}, {}
    for name, function, arguments in jobs:
        try:
            scores[name] = float(function(*arguments)[0])
        except ValueError as error:  # e.g. an image too small for NIQE
            errors[name] = str(error)
    if "instance_clip_score" in results and results["instance_clip_score"].scores.numel():
        scores["instance_clip_score"] = results["instance_clip_score"].mean
    if "adherence" in results and results["adherence"].instances:
        scores["adherence_accuracy"] = results["adherence"].accuracy
    if "bleeding" in results and results["bleeding"].instances:
        scores["bleeding_leak"] = results["bleeding"].leak
    return scores, errors, results


@dataclass
class _MethodScores:
    """What one method's images gave: per-image rows and the pieces of the set-level metrics."""

    rows: list[dict] = field(default_factory=list)
    sizes: set = field(default_factory=set)
    pred_features: list[torch.Tensor] = field(default_factory=list)  # FID features (1, 2048) each
    target_features: list[torch.Tensor] = field(default_factory=list)
    instance_scores: list[float] = field(default_factory=list)
    adherence_items: list = field(default_factory=list)  # (stem, AdherenceInstance)
    bleeding_items: list = field(default_factory=list)  # (stem, BleedingInstance)
    errors: dict[str, str] = field(default_factory=dict)  # first error message per metric


#: Metrics averaged over the images' rows, in report order.
_PER_IMAGE_METRICS = (
    "colorfulness",
    "psnr",
    "ssim",
    "lpips",
    "niqe",
    "musiq",
    "maniqa",
    "topiq_nr",
    "clip_score",
)


def _check_request(predictions: dict, settings: EvaluationSettings) -> None:
    unknown = [m for m in settings.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {METRICS}.")
    if settings.resize not in ("pred", "gt"):
        raise ValueError(f"resize={settings.resize!r}; choose 'pred' (GT -> prediction size) or 'gt'.")
    if not predictions:
        raise ValueError("predictions is empty; pass at least one folder of predicted images.")


def _matched_stems(method, pred_dir, pred_files, gt_dir, gt_files, record_store, log) -> list[str]:
    """The stems of ``pred_files`` that have a ground truth (with ``gt_dir``) or a record (without),
    sorted; unmatched predictions are logged, and an empty result is a ``ValueError``."""
    if gt_dir is not None:
        missing = sorted(set(pred_files) - set(gt_files))
        if missing:
            log(
                f"{method}: {len(missing)} predictions have no ground truth in {gt_dir} (e.g. {missing[:3]}); ignored."
            )
        stems = sorted(set(pred_files) & set(gt_files))
    else:
        stems = sorted(pred_files)
    if record_store is not None:
        unmatched = [s for s in stems if s not in record_store.index]
        if unmatched:
            log(f"{method}: {len(unmatched)} predictions have no record (e.g. {unmatched[:3]}).")
        if gt_dir is None:
            stems = [s for s in stems if s in record_store.index]
    if not stems:
        raise ValueError(
            f"{method}: no prediction in {pred_dir} matches a ground truth / record by file stem."
        )
    return stems


def _score_method(
    stems, pred_files, gt_files, record_store, built, settings, gt_features, desc
) -> _MethodScores:
    """Read, align and score every image of one method. ``gt_features`` caches the ground truths'
    FID features across methods (stem -> (1, 2048))."""
    from tqdm.auto import tqdm

    scores = _MethodScores()
    for stem in tqdm(stems, desc=desc, disable=not settings.progress):
        pred = read_image(pred_files[stem])
        record = record_store.get(stem) if record_store is not None else None
        target = (
            read_image(gt_files[stem]) if stem in gt_files else (record.image if record is not None else None)
        )
        label_map = record.label_map if record is not None else None
        if "fid" in built:
            scores.pred_features.append(built["fid"](pred[None]))
            if target is not None:
                if stem not in gt_features:
                    gt_features[stem] = built["fid"](target[None])
                scores.target_features.append(gt_features[stem])
        pred, target, label_map = _align(pred, target, label_map, settings.resize)
        scores.sizes.add(tuple(pred.shape[-2:]))
        row, failures, results = _score_image(built, settings, pred, target, label_map, record)
        for name, message in failures.items():
            scores.errors.setdefault(name, message)
        if "instance_clip_score" in results:
            scores.instance_scores += results["instance_clip_score"].scores.tolist()
        if "adherence" in results:
            scores.adherence_items += [(stem, item) for item in results["adherence"].instances]
        if "bleeding" in results:
            scores.bleeding_items += [(stem, item) for item in results["bleeding"].instances]
        scores.rows.append({"id": stem, **row})
    return scores


def _aggregate(built: dict, scores: _MethodScores, skipped_global: dict) -> tuple[dict, dict, dict]:
    """One method's table values, skip reasons and counts (number of images or instances scored)."""
    from .fid import frechet_distance

    values, skipped, counts = {}, dict(skipped_global), {}
    for name in _PER_IMAGE_METRICS:
        if name in built:
            image_scores = [r[name] for r in scores.rows if name in r]
            counts[name] = len(image_scores)
            if image_scores:
                values[name] = _mean(image_scores)
            else:
                skipped[name] = scores.errors.get(name, "no image could be scored")
    if "fid" in built:
        if len(scores.pred_features) >= 2 and len(scores.target_features) >= 2:
            values["fid"] = frechet_distance(
                torch.cat(scores.pred_features), torch.cat(scores.target_features)
            )
            counts["fid"] = len(scores.pred_features)
        else:
            skipped["fid"] = "FID needs at least 2 predictions and 2 ground truths"
    if "instance_clip_score" in built:
        counts["instance_clip_score"] = len(scores.instance_scores)
        if scores.instance_scores:
            values["instance_clip_score"] = _mean(scores.instance_scores)
        else:
            skipped["instance_clip_score"] = "no instance with a non-empty text"
    adherence = scores.adherence_items
    if "adherence" in built:
        counts["adherence"] = len(adherence)
        if adherence:
            values["adherence_accuracy"] = sum(i.agrees for _, i in adherence) / len(adherence)
            values["adherence_distance"] = _mean([i.distance for _, i in adherence])
        else:
            skipped["adherence"] = "no instance text names exactly one colour word"
    bleeding = scores.bleeding_items
    if "bleeding" in built:
        total = sum(i.counted for _, i in bleeding)
        counts["bleeding"] = len(bleeding)
        if total:
            values["bleeding_leak"] = sum(i.leak * i.counted for _, i in bleeding) / total
            values["bleeding_share"] = sum(i.share * i.counted for _, i in bleeding) / total
        else:
            skipped["bleeding"] = "no instance boundary with a distinct neighbour colour"
    return values, skipped, counts


def _resolution(sizes: set) -> str:
    if len(sizes) == 1:
        height, width = next(iter(sizes))
        return f"{height} × {width}"
    return f"mixed ({len(sizes)} sizes)"


def _instance_report(scores: _MethodScores) -> dict:
    """The per-instance adherence and bleeding results of one method, JSON-ready."""
    return {
        "adherence": [
            {
                "id": stem,
                "instance": i.instance,
                "text": i.text,
                "word": i.word,
                "distance": i.distance,
                "agrees": i.agrees,
            }
            for stem, i in scores.adherence_items
        ],
        "bleeding": [
            {"id": stem, "instance": i.instance, "leak": i.leak, "share": i.share, "counted": i.counted}
            for stem, i in scores.bleeding_items
        ],
    }


def evaluate(
    predictions: dict[str, str | os.PathLike],
    gt_dir: str | os.PathLike | None = None,
    records: str | os.PathLike | None = None,
    split: str | None = None,
    settings: EvaluationSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate one or more folders of predictions.

    Args:
        predictions: method name -> folder of predicted images.
        gt_dir: folder of ground-truth images (optional when ``records`` carry the images).
        records: a dataset-builder record dataset (masks, instance texts, global text, images).
        split: the records' split (default: as :func:`mtcolor.records.load_records` picks it).
        settings: :class:`EvaluationSettings`.
        log: where warnings about unmatched files go (default: ignored).

    Returns:
        a JSON-ready report: ``{"settings", "methods": [{"name", "pred_dir", "images", "resolution",
        "metrics", "skipped", "counts"}], "per_image": {method: [...]}, "instances": {method: {...}}}``.
    """
    settings = settings or EvaluationSettings()
    log = log or (lambda message: None)
    _check_request(predictions, settings)
    gt_files = list_images(gt_dir) if gt_dir is not None else {}
    record_store = _Records(records, split) if records is not None else None
    have_gt = bool(gt_files) or record_store is not None
    built, skipped_global = _build_metrics(settings, have_gt, record_store is not None)
    report = {
        "settings": {
            "gt_dir": None if gt_dir is None else str(gt_dir),
            "records": None if records is None else str(records),
            "split": split,
            "resize": settings.resize,
            "tolerance": settings.tolerance,
            "band": settings.band,
            "clip_fill": settings.clip_fill,
            "metrics": list(settings.metrics),
        },
        "methods": [],
        "per_image": {},
        "instances": {},
    }
    gt_features: dict[str, torch.Tensor] = {}  # FID features of each ground truth, computed once
    for method, pred_dir in predictions.items():
        pred_files = list_images(pred_dir)
        stems = _matched_stems(method, pred_dir, pred_files, gt_dir, gt_files, record_store, log)
        scores = _score_method(
            stems, pred_files, gt_files, record_store, built, settings, gt_features, f"evaluating {method}"
        )
        values, skipped, counts = _aggregate(built, scores, skipped_global)
        report["methods"].append(
            {
                "name": method,
                "pred_dir": str(pred_dir),
                "images": len(scores.rows),
                "resolution": _resolution(scores.sizes),
                "metrics": values,
                "skipped": skipped,
                "counts": counts,
            }
        )
        report["per_image"][method] = scores.rows
        report["instances"][method] = _instance_report(scores)
    return report


def to_json(value):
    """The report with non-finite floats made strict-JSON safe: NaN -> None, +-inf -> "inf" / "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


def _format(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}"


def format_markdown(report: dict) -> str:
    """The report as a Markdown table (MT-Color Table I layout + extra columns) with the skipped
    metrics and their reasons below it."""
    wanted = set()
    for name in report["settings"]["metrics"]:
        wanted.update(_COLUMNS_OF.get(name, (name,)))
    columns = [(key, header) for key, header in COLUMNS if key in wanted]
    header = ["Method"] + [h for _, h in columns] + ["Resolution"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for method in report["methods"]:
        cells = (
            [method["name"]]
            + [_format(method["metrics"].get(key)) for key, _ in columns]
            + [method["resolution"]]
        )
        lines.append("| " + " | ".join(cells) + " |")
    reasons: dict[tuple[str, str], list[str]] = {}  # (metric, reason) -> methods
    for method in report["methods"]:
        for name, reason in method["skipped"].items():
            reasons.setdefault((name, reason), []).append(method["name"])
    notes = []
    for (name, reason), methods in reasons.items():
        which = "all methods" if len(methods) == len(report["methods"]) else ", ".join(methods)
        notes.append(f"- `{name}` ({which}): {reason}")
    settings = report["settings"]
    lines += [
        "",
        f"Resolution handling: {'ground truths resized to each prediction' if settings['resize'] == 'pred' else 'predictions resized to the ground truth'} "
        f"(antialiased bilinear; label maps by majority vote). Images per method: "
        + ", ".join(f"{m['name']} {m['images']}" for m in report["methods"])
        + ".",
    ]
    if notes:
        lines += ["", "Skipped metrics:", *notes]
    return "\n".join(lines) + "\n"
