"""The captioner interface: :class:`Captioner`, the instance it describes (:class:`InstanceInput`),
the crop it is shown (:func:`crop_instance`) and the two errors a captioner may raise."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from mtcolor.color_names import ColorMeasurement


class CaptionerError(RuntimeError):
    """A captioner could not answer (e.g. the endpoint kept failing after its retries): the chain
    falls through to its next captioner and counts the error."""


class CaptionerConfigError(CaptionerError):
    """A configuration problem (bad key, unknown model, missing weights): fatal, never retried."""


@dataclass
class InstanceInput:
    """An instance to describe: ``mask`` bool (H, W), ``label`` (or None), ``measurement`` of its pixels."""

    mask: np.ndarray
    label: str | None
    measurement: ColorMeasurement | None = None

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), exclusive end."""
        rows = np.flatnonzero(self.mask.any(1))
        cols = np.flatnonzero(self.mask.any(0))
        if rows.size == 0:
            return 0, 0, self.mask.shape[1], self.mask.shape[0]
        return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


_FILLS = {"white": 255, "black": 0, "gray": 128}


def crop_instance(image: np.ndarray, mask: np.ndarray, fill: str | None = "white", margin: float = 0.05):
    """The instance's bounding-box crop as a PIL image, pixels outside the mask set to ``fill``.

    Args:
        image: uint8 (H, W, 3). mask: bool (H, W).
        fill: ``"white"``, ``"black"``, ``"gray"`` or None (keep the surrounding pixels).
        margin: grow the box by this fraction of its size on each side.
    """
    from PIL import Image

    x0, y0, x1, y1 = InstanceInput(mask, None).bbox
    dx, dy = int(round((x1 - x0) * margin)), int(round((y1 - y0) * margin))
    x0, y0 = max(0, x0 - dx), max(0, y0 - dy)
    x1, y1 = min(image.shape[1], x1 + dx), min(image.shape[0], y1 + dy)
    crop = image[y0:y1, x0:x1].copy()
    if fill is not None:
        if fill not in _FILLS:
            raise ValueError(f"fill={fill!r}; expected one of {sorted(_FILLS)} or None.")
        crop[~mask[y0:y1, x0:x1]] = _FILLS[fill]
    return Image.fromarray(crop)


class Captioner(ABC):
    """Base class. :attr:`name` is recorded as provenance ("rule", "blip2:<model>", "openai:<model>")."""

    name = "captioner"

    @abstractmethod
    def caption_instances(self, image: np.ndarray, instances: list[InstanceInput]) -> list[str | None]:
        """One "colour + object" phrase (or None) per instance of ``image`` (uint8 (H, W, 3))."""

    @abstractmethod
    def caption_global(
        self, image: np.ndarray, instances: list[InstanceInput], instance_texts: list[str]
    ) -> str | None:
        """The global text of ``image``, given the final instance texts (one per instance)."""
