"""Text checks: refusals, colour words, and agreement of a text's colour with the measured pixels.

* :func:`text_problem` rejects empty texts, refusals ("Unable to provide color description, image is
  too blurred ...", "I'm sorry, I can't ...") and texts without a colour word. A captioner chain
  falls through to its next captioner on such texts (the paper's GPT-4 -> BLIP-2 fallback).
* :class:`Verifier` checks each colour word of an instance text against the instance's measured
  pixels (:class:`mtcolor.color_names.ColorMeasurement`) with the project's one colour-word matcher,
  :func:`mtcolor.metrics.adherence.match_color_word` (the colour adherence metric's), so an
  instance the builder verifies as ``"agree"`` also scores as adhering, and the other way round:

  - ``"unknown"``: no colour word, or fewer than ``min_pixels`` pixels were measured;
  - one colour word (``"a red apple"``): ``"agree"`` / ``"disagree"`` is the matcher's verdict on
    the measured pixels;
  - several colour words (``"a red and white bus"``; the metric skips such texts): each word is
    matched against the pixels of each measured colour cluster; ``"agree"`` when every word matches
    a cluster, ``"disagree"`` when none does, ``"unknown"`` when only some do or when the region is
    too mixed to judge (its largest cluster holds less than ``min_dominant_share`` of the pixels).

  With ``rewrite=True`` a disagreeing text is replaced by the rule-based namer's phrase for the
  measured colour (the record then says ``"agree"`` and the captioner ``"<original>+rule"``).
"""

from __future__ import annotations

import re

import numpy as np

from mtcolor.color_names import (
    ColorMeasurement,
    ColorNamer,
    instance_phrase,
    strip_color_words,
)
from mtcolor.lexicon import ColorLexicon, default_lexicon
from mtcolor.metrics.adherence import match_color_word, pixels_to_lab

REFUSAL_PATTERN = re.compile(
    r"\b(unable to|cannot|can ?not|can't|can’t|could not|couldn't|not able to|sorry|apologi[sz]e|"
    r"i'm afraid|as an ai|not possible to|impossible to|too (?:blurry|blurred|dark|small|unclear)|"
    r"no (?:visible|discernible|identifiable) (?:object|color|colour)|not (?:clear|visible) enough)\b",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """True for refusal / failure texts of vision-language models."""
    return bool(REFUSAL_PATTERN.search(text))


def text_problem(text: str | None, lexicon: ColorLexicon | None = None) -> str | None:
    """Why a generated text is unusable (``"no_answer"``, ``"empty"``, ``"refusal"``,
    ``"no_color_word"``), or None."""
    lexicon = lexicon or default_lexicon("extended")
    if text is None:
        return "no_answer"
    if not text.strip():
        return "empty"
    if is_refusal(text):
        return "refusal"
    if not lexicon.has_color(text):
        return "no_color_word"
    return None


class Verifier:
    """Check instance texts against their pixels (rules: module docstring).

    Args:
        tolerance: the matcher's agreement tolerance (Lab distance ``d`` of
            :mod:`mtcolor.metrics.adherence`; default 20, the metric's).
        min_pixels: fewer measured pixels give ``"unknown"`` (16, the metric's ``min_pixels``).
        min_dominant_share: with several colour words, a region whose largest colour cluster holds
            less than this share of the pixels is too mixed to judge (``"unknown"``).
        rewrite: replace disagreeing texts by the rule-based namer's phrase.
        drop_disagree: drop instances whose text disagrees (after ``rewrite`` there are none).
    """

    def __init__(
        self,
        tolerance: float = 20.0,
        min_pixels: int = 16,
        min_dominant_share: float = 0.3,
        rewrite: bool = False,
        drop_disagree: bool = False,
    ):
        if not tolerance > 0:
            raise ValueError(f"tolerance={tolerance}; expected a positive Lab distance (default 20).")
        if not 0 <= min_dominant_share <= 1:
            raise ValueError(f"min_dominant_share={min_dominant_share}; expected a fraction in [0, 1].")
        self.tolerance = float(tolerance)
        self.min_pixels = int(min_pixels)
        self.min_dominant_share = float(min_dominant_share)
        self.rewrite = bool(rewrite)
        self.drop_disagree = bool(drop_disagree)
        self.lexicon = default_lexicon("extended")

    def _matches(self, word: str, pixels: np.ndarray) -> bool:
        """The matcher's verdict for uint8 pixels (n, 3); False for fewer than ``min_pixels``."""
        if len(pixels) < self.min_pixels:
            return False
        return match_color_word(pixels_to_lab(pixels), word, self.tolerance, lexicon=self.lexicon).agrees

    def verify(self, text: str, measurement: ColorMeasurement) -> str:
        """``"agree"`` / ``"disagree"`` / ``"unknown"`` for one instance text and its measurement."""
        words = list(dict.fromkeys(m.word for m in self.lexicon.find(text)))
        if not words or measurement.num_pixels < self.min_pixels or measurement.pixels is None:
            return "unknown"
        if len(words) == 1:
            return "agree" if self._matches(words[0], measurement.pixels) else "disagree"
        dominant = measurement.dominant
        if dominant is None or dominant.share < self.min_dominant_share:
            return "unknown"
        clusters = [measurement.pixels_of(c.category) for c in measurement.clusters]
        agreements = [any(self._matches(w, pixels) for pixels in clusters) for w in words]
        if all(agreements):
            return "agree"
        return "disagree" if not any(agreements) else "unknown"

    def rewritten(
        self, text: str, label: str | None, measurement: ColorMeasurement, namer: ColorNamer
    ) -> str | None:
        """The namer's phrase for the measured colour ("a blue bus"), or None if nothing was measured."""
        color = namer.name(measurement)
        if color is None:
            return None
        return instance_phrase(color, label or strip_color_words(text, self.lexicon) or "object")
