"""The web UI's colour targets and edits without a browser: what each row requests (codes and the
examples' own words recognised), chips and example thumbnails in the requested colour (no palette
tint), the per-instance re-colour as an edit of the page's last result (pixels outside the instance
identical), undo, and the bounded server-side history."""

from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
from mtcolor.webui import examples, layout
from mtcolor.webui.colors import row_target, target_rgb
from mtcolor.webui.session import HistoryStore, ServerConfig, Session

H, W = 40, 56


@pytest.mark.parametrize(
    "text, hex_code",
    [
        ("a car #ff8800", "#ff8800"),
        ("a kite rgb(0,128,255)", "#0080ff"),
        ("a lemon star", None),
        ("a pearl circle", None),
        ("a cobalt square", None),
        ("a rose triangle", None),
        ("an amber star", None),
    ],
)
def test_codes_and_the_examples_words_give_targets(text, hex_code):
    target, reason = row_target(text, None)
    assert target is not None and reason == ""
    if hex_code is not None:
        assert target.hex == hex_code


def test_an_explicit_colour_wins_and_bad_ones_are_named():
    target, _ = row_target("a lemon star", "#2a5bd0", 3)
    assert target.hex == "#2a5bd0"
    assert row_target("a striped zebra", "")[1] == "a pattern word: striped"
    with pytest.raises(ValueError, match="instance 3's colour='crimsn' is not a colour"):
        row_target("a car", "crimsn", 3)
    assert "is not a colour" in row_target("a car", "crimsn", 3, strict=False)[1]  # the overlay never raises


def test_chip_shows_the_requested_colour_or_an_empty_square():
    assert 'style="color: #e50000"' in layout.chip(2, target_rgb(row_target("a red car", None)[0]))
    empty = layout.chip(2, None)
    assert "swatch-none" in empty and "□" in empty and "color:" not in empty


def test_example_thumbnails_show_requested_colours_not_a_palette(tmp_path):
    """'a coal-black square' is dark, 'a green suit' green, and 'a striped zebra' (no single colour)
    keeps its gray inside with a neutral outline."""
    masks = [np.zeros((H, W), bool) for _ in range(3)]
    masks[0][2:18, 2:18] = True
    masks[1][2:18, 30:50] = True
    masks[2][24:38, 10:40] = True
    scene = {
        "image": PIL.Image.new("RGB", (W, H), (128, 128, 128)),
        "masks": masks,
        "instance_texts": ["a coal-black square", "a green suit", "a striped zebra"],
    }
    example = examples._write(scene, tmp_path / "ex", "test", "held-out", None)
    thumb = np.asarray(PIL.Image.open(example.thumbnail).convert("RGB"), dtype=np.int16)
    scale = thumb.shape[0] // H
    black, green, zebra = (thumb[y * scale, x * scale] for y, x in ((10, 10), (10, 40), (30, 25)))
    gray = np.asarray(PIL.Image.open(example.image).convert("RGB"), dtype=np.int16)[0, 0]
    assert black.max() < gray.min() - 30  # darker than the gray, not tinted in a hue
    assert green[1] > green[0] + 20 and green[1] > green[2] + 20
    assert (zebra == gray).all()
    outline = {tuple(thumb[37 * scale, x * scale]) for x in range(12, 38)}
    assert outline == {(0, 0, 0), (255, 255, 255)}


# ---------------------------------------------------------------------------------------------- history


def _entry(nbytes: int):
    return SimpleNamespace(nbytes=nbytes)


def test_history_is_bounded_in_length_pages_and_bytes():
    store = HistoryStore(length=3, sessions=2, max_bytes=1000)
    for _ in range(5):
        store.push("a", _entry(10))
    assert len(store.entries("a")) == 3
    store.push("b", _entry(10))
    store.push("c", _entry(10))  # the least recently used page ("a") is dropped
    assert store.entries("a") == [] and len(store.entries("c")) == 1
    store.push("c", _entry(600))
    store.push("c", _entry(600))  # over the byte budget: oldest results go, the newest stays
    assert [e.nbytes for e in store.entries("c")] == [600]
    store.push("c", _entry(5000))
    assert [e.nbytes for e in store.entries("c")] == [5000]  # a page's newest result is always kept
    with pytest.raises(ValueError, match="nothing to undo"):
        store.undo("c")
    with pytest.raises(ValueError, match="nothing to undo"):
        store.undo(None)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from mtcolor.threads import torch_threads

    with torch_threads(1):
        yield Session(
            ServerConfig(workdir=str(tmp_path_factory.mktemp("ui")), example_scenes=0, include_photo=False)
        )


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    PIL.Image.fromarray((rng.random((H, W)) * 200 + 30).astype(np.uint8)).save(tmp_path / "g.png")
    a = np.zeros((H, W), np.uint8)
    a[:, : W // 2] = 255
    b = np.zeros((H, W), np.uint8)
    b[H // 2 :, W // 2 + 4 :] = 255
    PIL.Image.fromarray(a).save(tmp_path / "a.png")
    PIL.Image.fromarray(b).save(tmp_path / "b.png")
    return str(tmp_path / "g.png"), [str(tmp_path / "a.png"), str(tmp_path / "b.png")], b > 0


def _rows(values, empty=None):
    return list(values) + [empty] * (20 - len(values))


def test_recolor_one_row_keeps_every_other_pixel_and_undo_goes_back(session, files):
    gray, masks, inside = files
    texts = _rows(["a lemon star", "a car #ff8800"], "")
    colors = _rows([], "")
    with pytest.raises(ValueError, match="colorize first"):
        session.recolor(2, texts, colors, _rows(masks), "page-1")
    first = session.colorize(gray, texts, _rows(masks), colors=colors, history="page-1")
    assert [row[2] for row in first.table] == [f"{row_target('a lemon star', None)[0].hex} lemon", "#ff8800"]

    texts[1] = "a car"
    colors[1] = "#2a5bd0"  # picked
    second = session.recolor(2, texts, colors, _rows([]), "page-1")
    before, after = np.asarray(first.image), np.asarray(second.image)
    assert (after[~inside] == before[~inside]).all()
    assert (after[inside] != before[inside]).any()
    assert second.before is first.image  # the slider compares with the previous result
    assert second.table[1][2] == "#2a5bd0" and second.table[0] == first.table[0]
    assert "Re-coloured instance 2 alone" in second.status and "History: 2 result(s)" in second.status
    with pytest.raises(ValueError, match="instance 3 was not part of the last result"):
        session.recolor(3, _rows(["a", "b", "c"], ""), colors, _rows([]), "page-1")
    with pytest.raises(ValueError, match="instance 2's colour='nope'"):
        session.recolor(2, texts, _rows(["", "nope"], ""), _rows([]), "page-1")

    view, request = session.undo("page-1")
    assert view.image is first.image and [i.text for i in request.instances] == [
        "a lemon star",
        "a car #ff8800",
    ]
    assert "Undone" in view.status
    with pytest.raises(ValueError, match="nothing to undo"):
        session.undo("page-1")
    assert session.history.entries("page-2") == []  # another page has its own history
