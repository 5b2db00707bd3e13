import random

import numpy as np
import PIL.Image
import pytest
import torch

from mtcolor.color import image_luminance, lab_to_rgb, recombine_luminance, rgb_to_lab
from mtcolor.image_io import to_float_image
from mtcolor.lexicon import BASIC_COLORS, ColorLexicon, default_lexicon


def test_lexicon_names_its_own_prototypes():
    lexicon = ColorLexicon("basic")
    assert lexicon.name(lexicon.lab) == list(BASIC_COLORS)
    assert lexicon.name(torch.tensor([100.0, 0.0, 0.0])) == "white"


def test_find_longest_match_and_synonyms():
    lexicon = default_lexicon()
    found = lexicon.find("A Light Blue car, a grey dog and a navy blue hat")
    assert [m.word for m in found] == ["light blue", "gray", "navy"]
    assert "A Light Blue car, a grey dog and a navy blue hat"[found[2].start : found[2].end] == "navy blue"
    assert not lexicon.has_color("a car on a street")
    assert [m.word for m in lexicon.find("a dark grey cat, a light gray dog")] == ["dark gray", "light gray"]


def test_replace_changes_every_colour_word_to_a_distant_one():
    lexicon = default_lexicon()
    rng = random.Random(0)
    for _ in range(20):
        out = lexicon.replace("a red apple and a green leaf", rng)
        words = [m.word for m in lexicon.find(out)]
        assert len(words) == 2
        assert float(torch.dist(lexicon.lab_of(words[0]), lexicon.lab_of("red"))) >= 20
        assert float(torch.dist(lexicon.lab_of(words[1]), lexicon.lab_of("green"))) >= 20
    assert lexicon.replace("a car", rng) == "a car"
    with pytest.raises(KeyError, match="not a colour word"):
        lexicon.lab_of("sparkly")


def test_lab_round_trip_and_recombination_keeps_luminance():
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 9, 11, generator=gen)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4)
    lab = rgb_to_lab(rgb)
    out = recombine_luminance(lab[:, :1], lab[:, 1:, ::3, ::3])
    assert out.shape == rgb.shape
    assert torch.allclose(rgb_to_lab(out)[:, 0], lab[:, 0], atol=0.05)  # chroma fitted, L kept
    vivid = recombine_luminance(torch.full((1, 1, 4, 4), 90.0), torch.full((1, 2, 2, 2), 100.0))
    assert torch.allclose(rgb_to_lab(vivid)[:, 0], torch.tensor(90.0), atol=0.05)


def test_image_inputs_normalise_to_unit_range():
    rgba = PIL.Image.new("RGBA", (5, 4), (255, 0, 0, 10))
    assert to_float_image(rgba).shape == (4, 5, 3)
    sixteen = PIL.Image.fromarray(np.full((4, 5), 65535, np.uint16))
    assert np.allclose(to_float_image(sixteen), 1.0)
    assert image_luminance(np.zeros((3, 3), np.uint8)).shape == (1, 3, 3)
    with pytest.raises(ValueError, match="gray has float values"):
        to_float_image(np.full((3, 3), 255.0), "gray")
    with pytest.raises(ValueError, match="NaN"):
        to_float_image(np.full((3, 3), np.nan), "gray")
