"""Segmenters: where the instance masks of an image come from.

Interface (:class:`Segmenter`): ``segment(image, annotations) -> list[Instance]`` with ``image`` a
uint8 array (H, W, 3) and ``annotations`` the source's instances (or None when the source has none).
Built-in: ``"annotations"`` (the source's masks, e.g. COCO) and ``"sam"`` (Segment Anything automatic
mask generation with minimum-area and overlap filtering). Others plug in by import path in the
config (``segmenter: {type: "my_package.module:MySegmenter", ...}``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class Instance:
    """One instance: ``mask`` bool (H, W), optional object ``label`` and a quality ``score``."""

    mask: np.ndarray
    label: str | None = None
    score: float | None = None

    @property
    def area(self) -> int:
        return int(self.mask.sum())


class Segmenter(ABC):
    """Base class. Subclasses set :attr:`name` and implement :meth:`segment`."""

    name = "segmenter"

    @abstractmethod
    def segment(self, image: np.ndarray, annotations: list[Instance] | None) -> list[Instance]:
        """Instances of ``image`` (uint8 (H, W, 3)); ``annotations``: the source's instances or None."""


class AnnotationSegmenter(Segmenter):
    """The source's own instance masks (COCO / COCO-Stuff annotations)."""

    name = "annotations"

    def segment(self, image: np.ndarray, annotations: list[Instance] | None) -> list[Instance]:
        if annotations is None:
            raise ValueError(
                "segmenter 'annotations' needs a source with instance annotations (e.g. type: coco); this "
                "source has none. Use segmenter type 'sam' for unannotated images."
            )
        return list(annotations)


def filter_instances(
    instances: list[Instance],
    min_area: int = 1,
    max_overlap: float = 1.0,
    max_instances: int | None = None,
    disjoint: bool = False,
) -> list[Instance]:
    """Minimum-area and overlap filtering.

    Instances are considered in the given order (put the best first). An instance is kept if its
    area is at least ``min_area`` and at most ``max_overlap`` of its area is covered by instances kept
    before it; at most ``max_instances`` are kept. With ``disjoint=True`` the pixels an instance
    shares with earlier kept ones are removed from it (and the area test applies to what is left),
    so the kept masks do not overlap.
    """
    if not 0 <= max_overlap <= 1:
        raise ValueError(f"max_overlap={max_overlap}; expected a fraction in [0, 1].")
    kept: list[Instance] = []
    covered = None
    for instance in instances:
        if max_instances is not None and len(kept) >= max_instances:
            break
        mask = instance.mask.astype(bool)
        area = int(mask.sum())
        if area < max(min_area, 1):
            continue
        if covered is None:
            covered = np.zeros_like(mask)
        shared = int((mask & covered).sum())
        if shared > max_overlap * area:
            continue
        if disjoint and shared:
            mask = mask & ~covered
            if int(mask.sum()) < max(min_area, 1):
                continue
        kept.append(Instance(mask, instance.label, instance.score))
        covered |= mask
    return kept


class SAMSegmenter(Segmenter):
    """Segment Anything automatic mask generation (``segment-anything`` package, local checkpoint).

    Args:
        checkpoint: path of a SAM state dict (``sam_vit_b_01ec64.pth`` ...), loaded with
            ``torch.load(..., weights_only=True)``.
        model_type: ``"vit_b"``, ``"vit_l"``, ``"vit_h"``, or a dict of ``_build_sam`` encoder arguments
            (``encoder_embed_dim``, ``encoder_depth``, ``encoder_num_heads``,
            ``encoder_global_attn_indexes``) for other sizes.
        device: torch device (default: CUDA if available, else CPU).
        points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh, box_nms_thresh:
            ``SamAutomaticMaskGenerator`` options.
        min_area_fraction: drop masks smaller than this fraction of the image.
        max_overlap: drop a mask when more than this fraction of it is covered by better masks
            (masks are ranked by predicted IoU x stability score); what remains is made disjoint.
        max_instances: keep at most this many masks.
    """

    name = "sam"

    def __init__(
        self,
        checkpoint: str,
        model_type: str | dict = "vit_b",
        device: str | None = None,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        box_nms_thresh: float = 0.7,
        min_area_fraction: float = 0.005,
        max_overlap: float = 0.5,
        max_instances: int = 32,
    ):
        import torch

        try:
            from segment_anything import SamAutomaticMaskGenerator
            from segment_anything.build_sam import _build_sam
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("segmenter 'sam' needs segment-anything: pip install 'mtcolor[sam]'") from error
        presets = {
            "vit_b": dict(
                encoder_embed_dim=768,
                encoder_depth=12,
                encoder_num_heads=12,
                encoder_global_attn_indexes=[2, 5, 8, 11],
            ),
            "vit_l": dict(
                encoder_embed_dim=1024,
                encoder_depth=24,
                encoder_num_heads=16,
                encoder_global_attn_indexes=[5, 11, 17, 23],
            ),
            "vit_h": dict(
                encoder_embed_dim=1280,
                encoder_depth=32,
                encoder_num_heads=16,
                encoder_global_attn_indexes=[7, 15, 23, 31],
            ),
        }
        if isinstance(model_type, dict):
            arguments = dict(model_type)
        elif model_type in presets:
            arguments = presets[model_type]
        else:
            raise ValueError(
                f"model_type={model_type!r}; expected one of {sorted(presets)} or a dict of encoder sizes."
            )
        if not 0 <= min_area_fraction < 1:
            raise ValueError(f"min_area_fraction={min_area_fraction}; expected a fraction in [0, 1).")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        sam = _build_sam(checkpoint=None, **arguments)
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except FileNotFoundError as error:
            raise ValueError(
                f"checkpoint={checkpoint!r} does not exist; pass the path of a local SAM checkpoint."
            ) from error
        sam.load_state_dict(state)
        self.model = sam.to(self.device).eval()
        self.generator = SamAutomaticMaskGenerator(
            self.model,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            box_nms_thresh=box_nms_thresh,
            output_mode="binary_mask",
        )
        self.min_area_fraction = float(min_area_fraction)
        self.max_overlap = float(max_overlap)
        self.max_instances = int(max_instances)

    def segment(self, image: np.ndarray, annotations: list[Instance] | None = None) -> list[Instance]:
        import torch

        with torch.inference_mode():
            proposals = self.generator.generate(np.ascontiguousarray(image))
        proposals.sort(key=lambda p: (-(p["predicted_iou"] * p["stability_score"]), -int(p["area"])))
        candidates = [
            Instance(p["segmentation"].astype(bool), None, float(p["predicted_iou"])) for p in proposals
        ]
        min_area = max(1, int(np.ceil(self.min_area_fraction * image.shape[0] * image.shape[1])))
        return filter_instances(candidates, min_area, self.max_overlap, self.max_instances, disjoint=True)
