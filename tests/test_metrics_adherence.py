"""Colour adherence on synthetic scenes painted with the lexicon's colours."""

import pytest
import torch

from mtcolor.color import lab_to_rgb, rgb_to_lab
from mtcolor.lexicon import BASIC_COLORS, default_lexicon
from mtcolor.metrics import color_adherence
from mtcolor.metrics.adherence import max_chroma_scale

LEXICON = default_lexicon()
SIZE = 48


def _label_map(num_instances: int) -> torch.Tensor:
    """Instances as vertical stripes of a SIZE x SIZE image, with a 4-px background border."""
    label_map = torch.zeros(SIZE, SIZE, dtype=torch.long)
    width = (SIZE - 8) // num_instances
    for k in range(num_instances):
        label_map[4:-4, 4 + k * width : 4 + (k + 1) * width] = k + 1
    return label_map


def _paint(label_map: torch.Tensor, colours: list) -> torch.Tensor:
    """(3, H, W) image: instance k painted with colours[k - 1] (an RGB triple), gray background."""
    image = torch.full((3, *label_map.shape), 0.5)
    for k, colour in enumerate(colours, start=1):
        image[:, label_map == k] = torch.as_tensor(colour, dtype=torch.float32).view(3, 1)
    return image


def _rgb(word: str) -> torch.Tensor:
    return LEXICON.rgb[LEXICON.words.index(word)]


def _at_lightness(word: str, lightness: float) -> torch.Tensor:
    """The word's prototype ab at another lightness (what a luminance-preserving colorizer outputs)."""
    lab = LEXICON.lab_of(word)
    return lab_to_rgb(torch.tensor([lightness, lab[1], lab[2]]).view(1, 3, 1, 1))[0, :, 0, 0]


def test_lexicon_painted_scenes_adhere_perfectly_and_a_repaint_fails():
    per_scene = 4
    words = list(LEXICON.words)
    words += words[: -len(words) % per_scene]  # every word of the lexicon, in full scenes of 4
    scenes = [words[i : i + per_scene] for i in range(0, len(words), per_scene)]
    label_map = _label_map(per_scene)
    images = torch.stack([_paint(label_map, [_rgb(w) for w in scene]) for scene in scenes])
    texts = [[f"a {w} object" for w in scene] for scene in scenes]
    result = color_adherence(images, label_map.expand(len(scenes), -1, -1), texts)
    assert len(result.instances) == per_scene * len(scenes) and not result.skipped
    assert result.accuracy == 1.0
    assert result.mean_distance < 0.5  # exact up to float32 Lab round trips
    # repaint one instance of one scene with a clearly different colour: exactly that instance fails
    repainted = images.clone()
    scene_index = [i for i, scene in enumerate(scenes) if scene[1] in BASIC_COLORS][0]
    wrong = "blue" if scenes[scene_index][1] != "blue" else "yellow"
    repainted[scene_index, :, label_map == 2] = _rgb(wrong).view(3, 1)
    result = color_adherence(repainted, label_map.expand(len(scenes), -1, -1), texts)
    failing = [(r.image_index, r.instance) for r in result.instances if not r.agrees]
    assert failing == [(scene_index, 2)]
    assert result.accuracy == pytest.approx(1 - 1 / len(result.instances))
    assert result.per_image_accuracy()[scene_index] == 0.75


def test_decorrelated_luminance_keeps_chromatic_words():
    """A luminance-preserving colorizer paints the word's hue at the gray input's lightness."""
    generator = torch.Generator().manual_seed(0)
    chromatic = [w for w in BASIC_COLORS if w not in ("black", "white", "gray")]
    label_map = _label_map(len(chromatic))
    images, texts = [], []
    for _ in range(6):
        lightness = (20 + 70 * torch.rand(len(chromatic), generator=generator)).tolist()
        images.append(_paint(label_map, [_at_lightness(w, lum) for w, lum in zip(chromatic, lightness)]))
        texts.append([f"the {w} thing" for w in chromatic])
    images = torch.stack(images)
    result = color_adherence(images, label_map.expand(len(images), -1, -1), texts)
    assert result.accuracy >= 0.9
    # ... while the *same* pixels described with a different colour family mostly fail
    shifted = [
        [f"the {chromatic[(i + 3) % len(chromatic)]} thing" for i in range(len(chromatic))] for _ in texts
    ]
    assert color_adherence(images, label_map.expand(len(images), -1, -1), shifted).accuracy <= 0.15


def test_near_achromatic_pixels_are_ignored_for_chromatic_words_only():
    label_map = _label_map(1)
    image = _paint(label_map, [_rgb("red")])
    ys, xs = torch.nonzero(label_map == 1, as_tuple=True)
    windows = (xs % 5) < 2  # 40% of the "red car" is gray glass and chrome
    image[:, ys[windows], xs[windows]] = 0.6
    assert color_adherence(image[None], label_map[None], [["a red car"]]).accuracy == 1.0
    mostly_gray = image.clone()
    mostly_gray[:, ys[(xs % 10) < 9], xs[(xs % 10) < 9]] = 0.6  # 90% gray: not a red car any more
    assert color_adherence(mostly_gray[None], label_map[None], [["a red car"]]).accuracy == 0.0
    # gray glass counts for "a gray car": the median over all pixels of a 60%-red instance is red
    assert color_adherence(image[None], label_map[None], [["a gray car"]]).accuracy == 0.0


def test_achromatic_words_compare_lightness_with_low_chroma():
    label_map = _label_map(3)
    image = _paint(label_map, [_rgb("white"), _rgb("gray"), _rgb("black")])
    texts = [["a white shirt", "a gray wall", "a black cat"]]
    assert color_adherence(image[None], label_map[None], texts).accuracy == 1.0
    swapped = [["a black shirt", "a white wall", "a gray cat"]]
    assert color_adherence(image[None], label_map[None], swapped).accuracy == 0.0
    # a black object does not "match" a chromatic word even though the gamut at L = 0 has no chroma
    assert (
        color_adherence(
            image[None], label_map[None], [["a red shirt", "a blue wall", "a yellow cat"]]
        ).accuracy
        == 0
    )


def test_skips_subsets_and_colour_overrides():
    label_map = _label_map(4)
    image = _paint(label_map, [_rgb("red"), _rgb("blue"), _rgb("green"), _rgb("yellow")])
    texts = [["a red apple", "a red and white bus", "a tree", "a yellow light blue kite"]]
    result = color_adherence(image[None], label_map[None], texts)
    assert [r.instance for r in result.instances] == [1]
    assert {s[1]: s[2] for s in result.skipped}[3] == "no colour word"
    assert "several colour words" in {s[1]: s[2] for s in result.skipped}[2]
    # instance_colors (e.g. the records' column) replace text parsing
    result = color_adherence(
        image[None], label_map[None], texts, instance_colors=[["red", "blue", "green", "Yellow"]]
    )
    assert result.accuracy == 1.0 and len(result.instances) == 4
    subset = result.where(lambda r: r.word in {"red", "green"})
    assert [r.word for r in subset.instances] == ["red", "green"] and subset.accuracy == 1.0
    assert result.to_dict()["evaluated"] == 4
    with pytest.raises(ValueError, match=r"has only 3 entries"):
        color_adherence(image[None], label_map[None], [texts[0][:3]])
    with pytest.raises(ValueError, match="tolerance=0"):
        color_adherence(image[None], label_map[None], texts, tolerance=0)


def test_max_chroma_scale_reaches_the_gamut_boundary():
    lightness = torch.tensor([48.0, 85.0, 20.0, 60.0])
    ab = torch.tensor([[80.0, 67.0], [80.0, 67.0], [-30.0, 40.0], [5.0, 5.0]])
    scale = max_chroma_scale(lightness, ab)
    assert scale[3] == 1.0  # a tiny chroma is in gamut at L = 60
    assert 0 < scale[1] < scale[0] <= 1.0  # a light red cannot be as saturated
    lab = torch.stack([lightness, scale * ab[:, 0], scale * ab[:, 1]], -1)[..., None, None]
    import kornia.color

    rgb = kornia.color.lab_to_rgb(lab, clip=False)[..., 0, 0]
    assert ((rgb > -1e-3) & (rgb < 1 + 1e-3)).all()
    # the colour produced at the boundary round-trips through rgb_to_lab
    assert torch.allclose(rgb_to_lab(rgb.clamp(0, 1)[..., None, None])[..., 0, 0], lab[..., 0, 0], atol=0.5)


def _verdicts(rgb: tuple[int, int, int], text: str) -> tuple[str, bool]:
    """(the dataset builder's verdict, the adherence metric's) on one 10 x 20 instance painted ``rgb``."""
    import numpy as np
    from mtcolor.dataset_builder.verification import Verifier

    from mtcolor.color_names import ColorNamer

    image = np.zeros((20, 20, 3), np.uint8)
    image[:, :10] = rgb
    image[:, 10:] = (3, 67, 223)  # another instance beside it
    mask = np.zeros((20, 20), bool)
    mask[:, :10] = True
    verdict = Verifier().verify(text, ColorNamer().measure(image, mask))
    label_map = torch.from_numpy(mask.astype("int64"))[None]
    metric = color_adherence(torch.from_numpy(image).permute(2, 0, 1)[None] / 255.0, label_map, [[text]])
    return verdict, metric.instances[0].agrees


def test_dataset_verifier_and_metric_share_one_matcher():
    """The dataset builder's verifier and the adherence metric decide with one matcher
    (``match_color_word``): "a crimson apple" painted xkcd red (d = 35: crimson is a darker red) is
    rejected by both, although red is one of crimson's basic categories, and the verdicts are the
    same on every instance."""
    assert _verdicts((229, 0, 0), "a crimson apple") == ("disagree", False)
    assert _verdicts((229, 0, 0), "a red apple") == ("agree", True)
    for word in ("red", "orange", "brown", "dark red", "maroon", "pink", "salmon", "white", "gray"):
        for rgb in ((229, 0, 0), (249, 115, 6), (101, 55, 0), (200, 120, 110), (230, 230, 225)):
            verdict, agrees = _verdicts(rgb, f"a {word} apple")
            assert verdict == ("agree" if agrees else "disagree"), (word, rgb, verdict, agrees)
