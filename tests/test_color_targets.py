import math

import numpy as np
import pytest
import torch
from matplotlib._color_data import CSS4_COLORS, XKCD_COLORS

from mtcolor.color import rgb_to_lab
from mtcolor.color_names import ColorNamer, color_categories
from mtcolor.color_targets import ColorTarget, color_from_text, parse_color, parse_colors
from mtcolor.lexicon import (
    NAME_MODIFIERS,
    color_name_counts,
    color_name_table,
    lookup_color_name,
    modifier_transforms,
    normalize_color_name,
)
from mtcolor.phrasing import HELDOUT_TEMPLATES, HELDOUT_WORDS, TRAIN_TEMPLATES, TRAIN_WORDS, fill


def lab_of_rgb255(rgb) -> torch.Tensor:
    pixel = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1) / 255.0
    return rgb_to_lab(pixel).view(3)


def hue(ab) -> float:
    return math.degrees(math.atan2(ab[1], ab[0]))


def test_every_form_of_one_colour_gives_one_target():
    forms = ["#d0302a", "#D0302A", "rgb(208, 48, 42)", "RGB(208 48 42)", (208, 48, 42), [208, 48, 42]]
    forms += [np.array([208, 48, 42], np.uint8), torch.tensor([208.0, 48.0, 42.0])]
    targets = [parse_color(f) for f in forms]
    assert {t.hex for t in targets} == {"#d0302a"}
    expected = lab_of_rgb255((208, 48, 42))  # the project's sRGB -> Lab conversion
    for target in targets:
        assert torch.allclose(torch.tensor(target.lab), expected, atol=1e-3)
        assert target.ab == target.lab[1:] and target.label == "#d0302a"
    assert [t.source for t in targets] == ["hex", "hex", "rgb", "rgb", "rgb", "rgb", "rgb", "rgb"]
    assert parse_color("#f80").hex == "#ff8800" == parse_color("#FF8800").hex
    assert parse_color(None) is None
    assert parse_color(targets[0]) is targets[0]
    with pytest.raises(AttributeError):
        targets[0].hex = "#000000"  # frozen


def test_fractional_triples_keep_their_exact_colour():
    exact = parse_color((208.4, 48, 42))
    assert exact.hex == "#d0302a"
    assert exact.lab[0] > parse_color((208, 48, 42)).lab[0]  # more red light: lighter


def test_names_come_from_the_xkcd_table_then_css():
    table = {k.removeprefix("xkcd:"): v.lower() for k, v in XKCD_COLORS.items()}
    crimson = parse_color("crimson")
    assert (crimson.hex, crimson.source, crimson.label) == (table["crimson"], "name", "crimson")
    assert torch.allclose(
        torch.tensor(crimson.lab), lab_of_rgb255(tuple(bytes.fromhex(table["crimson"][1:]))), atol=1e-3
    )
    assert parse_color("green").hex == table["green"] != CSS4_COLORS["green"].lower()  # XKCD wins a clash
    assert (
        parse_color("darkslategray").hex
        == parse_color("dark slate gray").hex
        == CSS4_COLORS["darkslategray"].lower()
    )
    assert parse_color("papayawhip").hex == CSS4_COLORS["papayawhip"].lower()
    assert parse_color("Navy-Blue").hex == parse_color("navy blue").hex == table["navy blue"]
    assert parse_color("grey").hex == parse_color("Gray").hex == table["grey"]
    assert parse_color("bluegrey").label == "bluegray"
    assert parse_color("pearl").hex == table["off white"]  # an alias of the survey's own name
    assert normalize_color_name("  Blue / Green ") == "blue/green"
    counts = color_name_counts()
    assert counts["xkcd"] == len(XKCD_COLORS) == 949
    assert counts["table"] == len(color_name_table()) > 1000
    assert counts["with_modifiers"] > counts["table"] * len(NAME_MODIFIERS) * 0.9


def test_a_modifier_uses_the_table_entry_when_it_has_one():
    table = {k.removeprefix("xkcd:"): v.lower() for k, v in XKCD_COLORS.items()}
    assert parse_color("light blue").hex == table["light blue"]
    assert parse_color("dark red").hex == table["dark red"]
    assert lookup_color_name("light blue").table == "xkcd"
    assert lookup_color_name("dark crimson").table == "modifier"


@pytest.mark.parametrize("modifier", NAME_MODIFIERS)
def test_modifiers_move_lightness_and_chroma_their_way_at_fixed_hue(modifier):
    lam, kappa = modifier_transforms()[modifier]
    for base in ("crimson", "cobalt", "amethyst", "jade"):
        if lookup_color_name(f"{modifier} {base}").table != "modifier":
            continue  # the table's own entry (tested above)
        original, modified = parse_color(base), parse_color(f"{modifier} {base}")
        assert modified.label == f"{modifier} {base}"
        if abs(lam) > 0.05:
            assert (
                modified.lab[0] - original.lab[0]
            ) * lam > 0  # lighter for light/pale, darker for dark/deep
        if kappa < 0.9 and modified.lab[0] > 15:
            assert math.hypot(*modified.ab) < math.hypot(*original.ab)
        if math.hypot(*modified.ab) > 10:
            assert abs((hue(modified.ab) - hue(original.ab) + 180) % 360 - 180) < 6


def test_modifier_transform_is_measured_on_the_table_and_predicts_its_pairs():
    from skimage.color import deltaE_ciede2000, rgb2lab

    table = {k.removeprefix("xkcd:"): v for k, v in XKCD_COLORS.items()}

    def lab(name):
        return rgb2lab(np.array([[tuple(bytes.fromhex(table[name][1:]))]], np.float64) / 255.0)[0, 0]

    for modifier in ("light", "dark", "pale", "deep"):
        pairs = [(b, f"{modifier} {b}") for b in table if f"{modifier} {b}" in table and " " not in b]
        moves = []
        for base, name in pairs:
            l0, l1 = lab(base)[0], lab(name)[0]
            moves.append((l1 - l0) / (100 - l0) if l1 >= l0 else (l1 - l0) / l0)
        lam, _ = modifier_transforms()[modifier]
        assert abs(lam - np.median(moves)) < 0.1  # independent recomputation (one-word bases, scikit-image)
        # the transform lands nearer the table's own "modifier X" than X itself does
        from mtcolor.lexicon import apply_modifier

        predicted = [
            apply_modifier(torch.tensor(lab(b), dtype=torch.float32), modifier).numpy() for b, _ in pairs
        ]
        gain = [
            deltaE_ciede2000(lab(n), p) < deltaE_ciede2000(lab(n), lab(b))
            for (b, n), p in zip(pairs, predicted)
        ]
        assert np.mean(gain) > 0.7


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [
        ("#ff88", ValueError, "malformed hex"),
        ("#gg0000", ValueError, "malformed hex"),
        ("crimsn", ValueError, "closest names: crimson"),
        ("dark crimsn", ValueError, "dark crimson"),
        ("d0302a", ValueError, "did you mean '#d0302a'"),
        ("", ValueError, "empty string"),
        ("rgba(1, 2, 3, 0.5)", ValueError, "alpha"),
        ("rgb(1, 2)", ValueError, "needs 3"),
        ("rgb(a, b, c)", ValueError, "three numbers"),
        ((1, 2), ValueError, "needs 3"),
        ((1, 2, 3, 4), ValueError, "needs 3"),
        ((float("nan"), 0, 0), ValueError, "NaN"),
        ((float("inf"), 0, 0), ValueError, "NaN or infinite"),
        ((300, 0, 0), ValueError, "outside 0..255"),
        ((-1, 0, 0), ValueError, "outside 0..255"),
        ((0.8, 0.2, 0.1), ValueError, "(204, 51, 26)"),
        (np.zeros((1, 3)), TypeError, "shape (1, 3)"),
        (np.array(["a", "b", "c"]), TypeError, "dtype"),
        (("a", 1, 2), TypeError, "non-numeric"),
        ((True, 0, 0), TypeError, "non-numeric"),
        (True, TypeError, "bool"),
        (7, TypeError, "int"),
        ({"r": 1}, TypeError, "dict"),
    ],
)
def test_bad_colours_are_rejected_with_the_argument_value_and_an_example(value, error, fragment):
    with pytest.raises(error) as info:
        parse_color(value, "colors[3]")
    message = str(info.value)
    assert "colors[3]" in message and fragment in message
    assert "#d0302a" in message  # a valid example


def test_parse_colors_aligns_with_the_masks():
    targets = parse_colors(["crimson", None, "#00ff00"], 3)
    assert [t.label if t else None for t in targets] == ["crimson", None, "#00ff00"]
    assert parse_colors(None, 2) == [None, None]
    assert parse_colors((None,), 1) == [None]
    with pytest.raises(ValueError, match="colors has 2 entries but there are 3 masks"):
        parse_colors(["red", "blue"], 3)
    with pytest.raises(ValueError, match=r"write \[\(255, 0, 0\)\]"):
        parse_colors((255, 0, 0), 1)
    with pytest.raises(TypeError, match="one entry per mask"):
        parse_colors("red", 1)
    with pytest.raises(ValueError, match=r"colors\[1\]='blurple-ish'"):
        parse_colors(["red", "blurple-ish"], 2)
    with pytest.raises(ValueError, match="count=-1"):
        parse_colors([], -1)


FOUND = {
    "a crimson apple": "crimson",
    "A Crimson Apple.": "crimson",
    "a cherry red car": "cherry red",
    "a cherry-red car": "cherry red",
    "a sky blue kite": "sky blue",
    "a salmon-coloured shirt": "salmon",
    "a coffee colored mug": "coffee",
    "the star is lemon": "lemon",
    "the star is lemon, and it shines": "lemon",
    "a lemon star": "lemon",
    "a star painted pumpkin": "pumpkin",
    "a girl dressed in plum": "plum",
    "a jet-black cat": "black",
    "a snow-white swan": "white",
    "a light-blue car": "light blue",
    "a dark crimson car": "dark crimson",
    "a very light teal shirt": "very light teal",
    "a girl in a yellow coat": "yellow",
    "a red car with red doors": "red",
    "a red-coloured apple": "red",
    "a golden retriever": "golden",
    "a navy blue hat": "navy blue",
    "a white rose bush": "white",
    "a pink rose": "pink",
    "a green apple": "green",
    "an ebony square": "ebony",
    "a grey cat": "gray",
    "a car #ff8800": "#ff8800",
    "a car painted rgb(0, 128, 255)": "#0080ff",
    "a #FF8800 car, bright orange": "#ff8800",
}
MISSING = {
    "a dog on the grass": "no colour word",
    "an apple": "no colour word",
    "a lemon": "no colour word",
    "a lemon on the table": "no colour word",
    "a coffee cup": "no colour word",
    "a cup of coffee": "no colour word",
    "a glass of wine": "no colour word",
    "a banana": "no colour word",
    "a cherry tree": "no colour word",
    "a bird in the sky": "no colour word",
    "a sand castle on the beach": "no colour word",
    "a dark room": "no colour word",
    "the room is dark": "no colour word",
    "#1 car": "no colour word",
    "a red and white bus": "several colours: red, white",
    "a black-and-white photo": "several colours: black, white",
    "a man in a blue shirt and black trousers": "several colours: blue, black",
    "a striped zebra": "a pattern word: striped",
    "a checkered flag": "a pattern word: checkered",
    "a multi-coloured kite": "a pattern word: multi-coloured",
    "a rainbow umbrella": "a pattern word: rainbow",
    "a tabby cat": "a pattern word: tabby",
    "a camo jacket": "a pattern word: camo",
    "a car that is not red": "a negated colour: not red",
    "a #ff0000 and #00ff00 flag": "several colours: #ff0000, #00ff00",
    "a car #ff88": "an unreadable colour code: '#ff88'",
}


@pytest.mark.parametrize("text", sorted(FOUND))
def test_texts_that_name_one_colour_give_it(text):
    found = color_from_text(text)
    assert found.reason == ""
    assert found.target.source == "text" and found.target.label == FOUND[text]
    expected = parse_color(FOUND[text])
    assert found.target.hex == expected.hex and found.target.lab == expected.lab


@pytest.mark.parametrize("text", sorted(MISSING))
def test_texts_without_a_single_colour_say_why(text):
    found = color_from_text(text)
    assert found.target is None
    assert found.reason.startswith(MISSING[text])


def test_colour_names_inside_compounds_and_patterns():
    assert color_from_text("a camo green jacket").target.label == "camo green"  # a name, not the pattern
    assert color_from_text("a blue/green car").target.label == "blue/green"
    with pytest.raises(TypeError, match="text has type int"):
        color_from_text(3)


def test_every_colour_word_of_the_project_phrasings_is_found_with_its_colour():
    namer = ColorNamer()
    found = agree = total = 0
    for table in (TRAIN_WORDS, HELDOUT_WORDS):
        for canonical, words in table.items():
            for word in words:
                for template in TRAIN_TEMPLATES + HELDOUT_TEMPLATES:
                    for shape in ("star", "ring", "square", "triangle", "circle"):
                        total += 1
                        target = color_from_text(fill(template, word, shape)).target
                        if target is None:
                            continue
                        found += 1
                        assert "-" in word or target.hex == parse_color(word).hex
                        pixel = np.frombuffer(bytes.fromhex(target.hex[1:]), np.uint8)[None]
                        category = namer.categories[int(namer.pixel_categories(pixel)[0])]
                        agree += category in color_categories(canonical)
    assert found == total
    # the survey's ruby, amber, rose and slate sit in a neighbouring category (pink, yellow, red, green)
    assert agree / found > 0.85
    held_out = [w for words in HELDOUT_WORDS.values() for w in words]
    assert all(color_from_text(f"a {w} star").target for w in held_out)


def test_color_target_is_a_plain_frozen_record():
    target = ColorTarget((50.0, 10.0, -20.0), "#778899", "hex", "#778899")
    assert target.ab == (10.0, -20.0) and math.isclose(target.chroma, math.hypot(10, 20))
