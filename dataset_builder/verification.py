"""Text checks: refusals, colour words, and agreement of a text's colour with the measured pixels.

* :func:`text_problem` rejects empty texts, refusals ("Unable to provide color description, image is
  too blurred ...", "I'm sorry, I can't ...") and texts without a colour word. A captioner chain
  falls through to its next captioner on such texts (the paper's GPT-4 -> BLIP-2 fallback).
* :class:`Verifier` compares each colour word of an instance text with the instance's measured
  colours (:class:`mtcolor.color_names.ColorMeasurement`):

  - ``"unknown"``: fewer than ``min_pixels`` pixels were measured, the region is too mixed (its
    largest colour category holds less than ``min_dominant_share`` of the pixels), or some but not
    all colour words of the text agree ("a red and white bus" on a red-only bus).
  - a colour word *agrees* when one of its basic categories ("light blue" -> blue, "teal" -> green or
    blue) is a measured cluster, or when its Lab prototype lies within ``tolerance`` (CIE76) of a
    cluster's mean colour (a near miss across a category border, e.g. "orange" on a brownish orange).
  - ``"agree"``: every colour word agrees; ``"disagree"``: none does.

  With ``rewrite=True`` a disagreeing text is replaced by the rule-based namer's phrase for the
  measured colour (the record then says ``"agree"`` and the captioner ``"<original>+rule"``).
"""

from __future__ import annotations

import re

import numpy as np

from mtcolor.color_names import (
    ColorMeasurement,
    ColorNamer,
    color_categories,
    instance_phrase,
    strip_color_words,
)
from mtcolor.lexicon import ColorLexicon, default_lexicon

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
    """Check instance texts against their pixels.

    Args:
        tolerance: CIE76 distance within which a colour word's prototype matches a measured cluster.
        min_pixels: fewer measured pixels give ``"unknown"``.
        min_dominant_share: a region whose largest colour category holds less than this share of the
            pixels is too mixed to judge (``"unknown"``).
        rewrite: replace disagreeing texts by the rule-based namer's phrase.
        drop_disagree: drop instances whose text disagrees (after ``rewrite`` there are none).
    """

    def __init__(
        self,
        tolerance: float = 25.0,
        min_pixels: int = 16,
        min_dominant_share: float = 0.3,
        rewrite: bool = False,
        drop_disagree: bool = False,
    ):
        if tolerance < 0:
            raise ValueError(f"tolerance={tolerance}; expected a CIE76 distance >= 0.")
        if not 0 <= min_dominant_share <= 1:
            raise ValueError(f"min_dominant_share={min_dominant_share}; expected a fraction in [0, 1].")
        self.tolerance = float(tolerance)
        self.min_pixels = int(min_pixels)
        self.min_dominant_share = float(min_dominant_share)
        self.rewrite = bool(rewrite)
        self.drop_disagree = bool(drop_disagree)
        self.lexicon = default_lexicon("extended")

    def _word_agrees(self, word: str, measurement: ColorMeasurement) -> bool:
        categories = set(color_categories(word))
        if categories & set(measurement.categories):
            return True
        prototype = self.lexicon.lab_of(word).numpy()
        labs = np.array([c.lab for c in measurement.clusters], dtype=np.float32).reshape(-1, 3)
        return bool((np.linalg.norm(labs - prototype, axis=1) <= self.tolerance).any())

    def verify(self, text: str, measurement: ColorMeasurement) -> str:
        """``"agree"`` / ``"disagree"`` / ``"unknown"`` for one instance text and its measurement."""
        words = list(dict.fromkeys(m.word for m in self.lexicon.find(text)))
        dominant = measurement.dominant
        if not words or measurement.num_pixels < self.min_pixels or dominant is None:
            return "unknown"
        if dominant.share < self.min_dominant_share:
            return "unknown"
        agreements = [self._word_agrees(w, measurement) for w in words]
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
