"""Varied instance phrasings for synthetic scenes: colour synonyms and sentence templates.

A text encoder's language is only used if training texts vary: "a crimson star", "the star is
red", "a red-coloured star" should all ask for red. Three phrasings (``SyntheticConfig.phrasing``):

* ``"plain"``: "a red star" (the only phrasing before; the evaluation metric's own form);
* ``"varied"`` (training): a colour word from :data:`TRAIN_WORDS` and a template from
  :data:`TRAIN_TEMPLATES`;
* ``"language"`` (the held-out *language* split): colour words and templates never used in
  training (:data:`HELDOUT_WORDS`, :data:`HELDOUT_TEMPLATES`). Every phrase has at least one unseen
  part: an unseen word (where the colour has one) and, half of the time or when it has none, an
  unseen template. Scores use the colour the phrase names (the scene's ``instance_colors``), not
  the surface word.
"""

from __future__ import annotations

import numpy as np

PHRASINGS = ("plain", "varied", "language")

#: training colour words per canonical colour (the canonical word first)
TRAIN_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "cherry-red", "ruby"),
    "orange": ("orange", "tangerine", "amber"),
    "yellow": ("yellow", "lemon", "canary-yellow"),
    "green": ("green", "grass-green", "leaf-green"),
    "blue": ("blue", "cobalt", "sapphire"),
    "purple": ("purple", "violet", "plum"),
    "pink": ("pink", "rose", "bubblegum-pink"),
    "brown": ("brown", "chocolate", "chestnut"),
    "white": ("white", "snow-white", "pearl"),
    "black": ("black", "jet-black", "coal-black"),
    "gray": ("gray", "ash-gray", "slate"),
}

#: colour words never used in training (the language split)
HELDOUT_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "orange": ("pumpkin",),
    "yellow": ("golden",),
    "green": ("emerald",),
    "blue": ("navy", "azure"),
    "purple": ("amethyst",),
    "pink": ("blush",),
    "brown": ("mahogany",),
    "white": ("ivory",),
    "black": ("ebony",),
}

#: training templates ({a}: the article of the word that follows it)
TRAIN_TEMPLATES = (
    "{a} {color} {shape}",
    "the {shape} is {color}",
    "{color} {shape}",
    "{a2} {shape} that is {color}",
)
#: templates never used in training
HELDOUT_TEMPLATES = ("{a2} {shape} painted {color}", "{a} {color}-coloured {shape}")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def fill(template: str, color: str, shape: str) -> str:
    """``fill("{a} {color} {shape}", "amber", "star")`` -> "an amber star"."""
    return template.format(a=_article(color), a2=_article(shape), color=color, shape=shape)


def phrase(color: str, shape: str, phrasing: str, rng: np.random.Generator) -> str:
    """An instance text for a ``shape`` painted the canonical ``color``.

    Args:
        color: canonical colour word (a key of :data:`TRAIN_WORDS`).
        phrasing: one of :data:`PHRASINGS`.
        rng: the scene's generator (draws stay deterministic per scene).
    """
    if phrasing == "plain":
        return fill("{a} {color} {shape}", color, shape)
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing={phrasing!r}; expected one of {PHRASINGS}.")
    if phrasing == "varied":
        words = TRAIN_WORDS.get(color, (color,))
        template = TRAIN_TEMPLATES[int(rng.integers(len(TRAIN_TEMPLATES)))]
        return fill(template, words[int(rng.integers(len(words)))], shape)
    unseen = HELDOUT_WORDS.get(color, ())
    if unseen:
        word = unseen[int(rng.integers(len(unseen)))]
        templates = HELDOUT_TEMPLATES if rng.random() < 0.5 else TRAIN_TEMPLATES
    else:
        words = TRAIN_WORDS.get(color, (color,))
        word = words[int(rng.integers(len(words)))]
        templates = HELDOUT_TEMPLATES
    return fill(templates[int(rng.integers(len(templates)))], word, shape)


def scene_text(phrases: list[str], background: str | None) -> str:
    """Global text from the instance phrases: "A crimson star and a blue ring on a gray background."."""
    if not phrases:
        return f"A plain {background} background." if background else "An empty scene."
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if background:
        body += f" on {_article(background)} {background} background"
    return body[0].upper() + body[1:] + "."
