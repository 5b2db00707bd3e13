"""Varied training phrasings and the held-out language split of the synthetic scenes."""

import re

import numpy as np
import pytest

from mtcolor.phrasing import HELDOUT_TEMPLATES, HELDOUT_WORDS, fill, phrase, scene_text
from mtcolor.synthetic import SyntheticConfig, generate_scene

CONFIG = SyntheticConfig(phrasing="varied", holdout_pairs=[("red", "circle")])
UNSEEN_WORDS = {w for words in HELDOUT_WORDS.values() for w in words}
UNSEEN_MARKERS = (" painted ", "-coloured ")  # what only the held-out templates contain


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_training_texts_never_use_the_language_split_words_or_templates():
    seen = set()
    for i in range(300):
        scene = generate_scene(CONFIG, i, "train")
        for text in [*scene["instance_texts"], scene["global_text"]]:
            seen |= _words(text)
            assert not any(marker in f" {text} " for marker in UNSEEN_MARKERS), text
    assert not seen & UNSEEN_WORDS
    # and training does use the synonyms (not just the canonical words)
    assert {"ruby", "cobalt", "chestnut"} <= seen


def test_language_split_phrases_each_have_an_unseen_part_and_keep_the_scene():
    for i in range(100):
        varied = generate_scene(CONFIG, i, "test")
        language = generate_scene(CONFIG, i, "test", phrasing="language")
        assert np.array_equal(np.asarray(varied["image"]), np.asarray(language["image"]))
        assert np.array_equal(varied["masks"], language["masks"])
        assert language["instance_colors"] == varied["instance_colors"]
        for text, color in zip(language["instance_texts"], language["instance_colors"]):
            unseen_word = bool(_words(text) & UNSEEN_WORDS)
            unseen_template = any(marker in f" {text} " for marker in UNSEEN_MARKERS)
            assert unseen_word or unseen_template, text
            if HELDOUT_WORDS.get(color):
                assert _words(text) & set(HELDOUT_WORDS[color]), (text, color)  # names its own colour


def test_language_global_text_does_not_leak_the_canonical_colour():
    leaks = 0
    for i in range(100):
        scene = generate_scene(CONFIG, i, "test", phrasing="language")
        body = scene["global_text"].lower().split(" on ")[0]  # the background may name its colour
        for color in scene["instance_colors"]:
            if HELDOUT_WORDS.get(color) and re.search(rf"\b{color}\b", body):
                leaks += 1
    assert leaks == 0


def test_plain_phrasing_is_unchanged():
    scene = generate_scene(SyntheticConfig(holdout_pairs=[("red", "circle")]), 3, "train")
    assert all(re.fullmatch(r"an? [a-z ]+", t) for t in scene["instance_texts"])
    assert scene["global_text"].startswith("A ") and "The image shows" in scene["global_text"]


def test_templates_articles_and_errors():
    assert fill("{a} {color} {shape}", "amber", "star") == "an amber star"
    assert fill(HELDOUT_TEMPLATES[0], "navy", "ellipse") == "an ellipse painted navy"
    assert (
        scene_text(["a red star", "the ring is blue"], "gray")
        == "A red star and the ring is blue on a gray background."
    )
    with pytest.raises(ValueError, match="phrasing='fancy'"):
        phrase("red", "star", "fancy", np.random.default_rng(0))
    with pytest.raises(ValueError, match="phrasing='fancy'"):
        SyntheticConfig(phrasing="fancy")
