"""Web UI without a browser: the page's values -> one checked request -> one pipeline call -> results.

The gradio page only moves values; everything it decides lives in ``mtcolor.webui.inputs`` / ``mtcolor.webui.run`` /
``mtcolor.webui.session`` and is tested here with fake pipelines (what the call receives) and with the
embedded model (the page's result equals a direct pipeline call). The page itself and the
``mtcolor ui`` command line: test_webui_page.py.
"""

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from mtcolor.webui import inputs, overlay, run
from mtcolor.webui.inputs import MAX_INSTANCES, Settings, build_request, check_settings, parse_sam_prompt
from mtcolor.webui.models import ModelChoice, model_choices, model_kind, recommended_settings

from mtcolor.lexicon import default_lexicon

H, W = 40, 56


def _save(tmp_path, name, array, mode=None):
    path = tmp_path / name
    PIL.Image.fromarray(array, mode=mode).save(path)
    return str(path)


@pytest.fixture
def scene(tmp_path):
    """A 56x40 gray PNG and two masks (left half, bottom-right corner) as 8-bit PNGs."""
    rng = np.random.default_rng(0)
    gray = _save(tmp_path, "gray.png", (rng.random((H, W)) * 200 + 30).astype(np.uint8))
    left = np.zeros((H, W), np.uint8)
    left[:, : W // 2] = 255
    corner = np.zeros((H, W), np.uint8)
    corner[H // 2 :, W // 2 + 4 :] = 255
    return gray, [_save(tmp_path, "left.png", left), _save(tmp_path, "corner.png", corner)]


def _rows(values, fill=None):
    return list(values) + [fill] * (MAX_INSTANCES - len(values))


# ---------------------------------------------------------------------------------------------- inputs


def test_request_keeps_rows_in_order_and_drops_empty_ones(scene):
    gray, masks = scene
    texts = _rows(["a red car", "", "a blue cat"], "")
    mask_rows = _rows([masks[0], None, masks[1]])
    request = build_request(gray, texts, mask_rows, _rows([], ""), "  a  street ", Settings())
    assert [i.index for i in request.instances] == [1, 3]
    assert request.texts == ["a red car", "a blue cat"]
    assert request.prompt == "a street"
    assert request.instances[0].mask.shape == (H, W) and request.instances[0].mask[:, : W // 2].all()
    assert not request.instances[0].mask[:, W // 2 :].any()
    assert request.notes == []  # a gray 8-bit input needs no note


def test_colour_and_16_bit_inputs_are_read_and_said_so(tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    request = build_request(_save(tmp_path, "c.png", rgb), [], [], [], "", Settings())
    assert any("Colour input" in note and "luminance" in note for note in request.notes)
    deep = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 20).astype(np.uint16)
    path = tmp_path / "deep.png"
    PIL.Image.fromarray(deep).save(path)
    request = build_request(str(path), [], [], [], "", Settings())
    assert request.image.mode.startswith("I") and any("16-bit" in note for note in request.notes)
    gray = np.asarray(inputs.gray_preview(request.image), dtype=np.float32)
    assert gray[0, 0] < gray[-1, -1]  # the 16-bit ramp survives as a ramp


@pytest.mark.parametrize(
    ("texts", "masks", "sams", "message"),
    [
        (["a red car"], [None], [""], "has no mask"),
        ([""], ["MASK"], [""], "has a mask but no text"),
        (["a red car"], ["WRONG"], [""], "is 30x20 but the image is 56x40"),
        (["a red car"], ["EMPTY"], [""], "mask is empty"),
        (["a red car"], [None], ["box 1,2,30,20"], "no SAM checkpoint"),
        (["x" * 600], ["MASK"], [""], "keep it under"),
    ],
)
def test_request_errors_name_the_row_and_the_fix(scene, tmp_path, texts, masks, sams, message):
    gray, good = scene
    files = {
        "MASK": good[0],
        "WRONG": _save(tmp_path, "wrong.png", np.full((20, 30), 255, np.uint8)),
        "EMPTY": _save(tmp_path, "empty.png", np.zeros((H, W), np.uint8)),
    }
    masks = [files.get(m, m) for m in masks]
    with pytest.raises(ValueError, match=message) as info:
        build_request(gray, _rows(texts, ""), _rows(masks), _rows(sams, ""), "", Settings())
    assert "instance 1" in str(info.value)


def test_unreadable_and_oversized_images_are_refused(tmp_path, monkeypatch):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="not an image this server can read"):
        build_request(str(junk), [], [], [], "", Settings())
    big = _save(tmp_path, "big.png", np.zeros((30, 30), np.uint8))
    monkeypatch.setattr(inputs, "MAX_PIXELS", 800)
    with pytest.raises(ValueError, match=r"30x30 = .* MP; the server accepts up to"):
        build_request(big, [], [], [], "", Settings())
    with pytest.raises(ValueError, match="no input image"):
        build_request(None, [], [], [], "", Settings())


def test_masks_from_alpha_luminance_and_16_bit(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[5:10, 5:20] = (255, 0, 255, 255)  # painted, opaque; the rest transparent
    mask = inputs.read_mask(_save(tmp_path, "a.png", rgba, "RGBA"), 1, (W, H))
    assert mask.sum() == 5 * 15 and mask[5:10, 5:20].all()
    deep = np.zeros((H, W), np.uint16)
    deep[:, :10] = 65535
    path = tmp_path / "d.png"
    PIL.Image.fromarray(deep).save(path)
    assert inputs.read_mask(str(path), 1, (W, H)).sum() == H * 10
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:3] = 255
    assert inputs.read_mask(_save(tmp_path, "rgb.png", rgb), 1, (W, H)).sum() == 3 * W


def test_integer_masks_follow_the_library_range_rule(tmp_path):
    """0/1 masks in 16-bit PNGs (what Pillow writes for mode 'I') and in 32-bit mode 'I' TIFFs were read
    as empty (scaled by 65535 / 255); the library's rule reads 0/1 when the maximum is 1."""
    ones = np.zeros((H, W), np.int32)
    ones[:, :10] = 1
    cases = {
        "i_01.png": (ones, "I"),  # saved as 16-bit gray, reopened as 'I;16'
        "i16_01.png": (ones.astype(np.uint16), "I;16"),
        "i16_full.png": (ones.astype(np.uint16) * 65535, "I;16"),
        "i_01.tif": (ones, "I"),  # stays 32-bit mode 'I'
        "i_255.tif": (ones * 255, "I"),
        "i_65535.tif": (ones * 65535, "I"),
        "l_01.png": (ones.astype(np.uint8), "L"),
    }
    for name, (array, mode) in cases.items():
        path = tmp_path / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Pillow: mode 'I' as PNG
            PIL.Image.fromarray(array, mode=mode).save(path)
        mask = inputs.read_mask(str(path), 1, (W, H))
        assert mask.sum() == H * 10 and mask[:, :10].all(), name
    big = tmp_path / "i_big.tif"
    PIL.Image.fromarray(ones * 70000, mode="I").save(big)
    with pytest.raises(ValueError, match=r"instance 1's mask is an int32 mask with values up to 70000"):
        inputs.read_mask(str(big), 1, (W, H))


def test_painted_layers_union_resized_to_the_image():
    layer = np.zeros((20, 28, 4), np.uint8)  # the editor's canvas at half size
    layer[2:4, 3:5, 3] = 255
    other = np.zeros((20, 28, 4), np.uint8)
    other[10, 10, 3] = 128
    mask = inputs.painted_mask({"background": None, "layers": [layer, other], "composite": None}, (W, H))
    assert mask.shape == (H, W) and mask[4:8, 6:10].all() and mask[20:22, 20:22].all()
    assert mask.sum() == 16 + 4
    assert inputs.painted_mask({"layers": [np.zeros((H, W, 4), np.uint8)]}, (W, H)) is None
    assert inputs.painted_mask(None, (W, H)) is None


@pytest.mark.parametrize(
    ("text", "points", "box"),
    [
        ("box 10,20,200,160", None, (10.0, 20.0, 200.0, 160.0)),
        ("10, 20, 200, 160", None, (10.0, 20.0, 200.0, 160.0)),
        ("points 120,80; 130,95", [(120.0, 80.0), (130.0, 95.0)], None),
        ("5,6", [(5.0, 6.0)], None),
        ("box 1,2,3,4 | points 2,3", [(2.0, 3.0)], (1.0, 2.0, 3.0, 4.0)),
    ],
)
def test_sam_prompt_forms(text, points, box):
    assert parse_sam_prompt(text, 1) == (points, box)


@pytest.mark.parametrize("text", ["box 1,2,3", "points 1,2,3", "hello", "box 1,2,3,4 | box 1,2,3,4"])
def test_bad_sam_prompts(text):
    with pytest.raises(ValueError, match="instance 2's SAM prompt"):
        parse_sam_prompt(text, 2)


def test_settings_are_range_checked():
    good = check_settings(20, 2.0, 0.2, 0.2, 0, "renormalized", "paper", 64)
    assert good == Settings(20, 2.0, 0.2, 0.2, 0, "renormalized", "paper", 64)
    assert check_settings(20, 2.0, 0.2, 0.2, None, "paper", "no_crop", 64).seed == -1
    for args, message in [
        ((0, 2.0, 0.2, 0.2, 0, "paper", "paper", 64), "num inference steps is 0"),
        ((20.5, 2.0, 0.2, 0.2, 0, "paper", "paper", 64), "whole number"),
        ((20, float("nan"), 0.2, 0.2, 0, "paper", "paper", 64), "guidance scale is nan"),
        ((20, 2.0, 1.5, 0.2, 0, "paper", "paper", 64), "alpha is 1.5"),
        ((20, 2.0, 0.2, 0.2, 0, "paper", "paper", 10**6), "working resolution is 1000000"),
        ((20, 2.0, 0.2, 0.2, 0, "paper", "bogus", 64), "fusion is 'bogus'"),
        ((20, 2.0, 0.2, 0.2, 0, "dense", "paper", 64), "attention mode is 'dense'"),
        (("many", 2.0, 0.2, 0.2, 0, "paper", "paper", 64), "'many'"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_settings(*args)


# ---------------------------------------------------------------------------------------------- models


def test_model_menu_and_recommended_settings(tmp_path):
    choices = model_choices()
    assert [c.kind for c in choices][:2] == ["mtcolor", "lcoins"]  # MT-Color is the default
    mt = recommended_settings(choices[0])
    inference = json.loads((Path(choices[0].path) / "recipe.json").read_text())["inference"]
    assert mt["guidance_scale"] == inference["guidance_scale"]
    assert mt["num_inference_steps"] == inference["num_inference_steps"]
    synthetic = json.loads((Path(choices[0].path) / "synthetic_config.json").read_text())
    assert mt["working_resolution"] == synthetic["image_size"]
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "MTColorPipeline"}))
    plain = recommended_settings(ModelChoice("plain", str(folder), "mtcolor"))
    assert (plain["num_inference_steps"], plain["guidance_scale"], plain["working_resolution"]) == (
        50,
        7.5,
        512,
    )
    assert model_choices(folder)[0].path == str(folder.resolve())


def test_model_kind_errors(tmp_path):
    with pytest.raises(ValueError, match="has no model_index.json"):
        model_kind(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="holds a 'StableDiffusionPipeline'"):
        model_kind(tmp_path)


# ---------------------------------------------------------------------------------------------- one call


class FakeMTColor:
    """Records its calls; paints each instance with its text's colour word (background gray)."""

    def __init__(self):
        self.calls = []

    def __call__(self, image, masks=None, texts=None, **kwargs):
        self.calls.append({"image": image, "masks": masks, "texts": texts, **kwargs})
        lexicon = default_lexicon()
        width, height = image.size
        out = np.full((height, width, 3), 128, np.uint8)
        for mask, text in zip(masks or [], texts or []):
            word = lexicon.find(text)[0].word
            out[np.asarray(mask)] = (
                (lexicon.rgb[lexicon.words.index(word)].numpy() * 255).round().astype(np.uint8)
            )
        callback = kwargs.get("callback_on_step_end")
        for step in range(kwargs.get("num_inference_steps", 1)):
            callback(self, step, 0, {})
        warnings.warn(
            "instance 0 ('a red car') is smaller than one token of the 2x2 attention grid",
            UserWarning,
            stacklevel=2,
        )
        return SimpleNamespace(images=[PIL.Image.fromarray(out)])


def test_one_pipeline_call_with_the_page_values(scene):
    gray, masks = scene
    settings = Settings(7, 3.5, 0.3, 0.4, 11, "paper", "normalized", 48)
    request = build_request(
        gray, _rows(["a red car", "a blue cat"], ""), _rows(masks), _rows([], ""), "street", settings
    )
    pipe, steps = FakeMTColor(), []
    result = run.colorize(pipe, "mtcolor", request, on_step=lambda done, total: steps.append((done, total)))
    assert len(pipe.calls) == 1
    call = pipe.calls[0]
    assert call["texts"] == ["a red car", "a blue cat"] and len(call["masks"]) == 2
    assert call["image"] is request.image and call["prompt"] == "street"
    for key, value in [
        ("num_inference_steps", 7),
        ("guidance_scale", 3.5),
        ("alpha", 0.3),
        ("beta", 0.4),
        ("switches", {"attention_mode": "paper"}),
        ("fusion", "normalized"),
        ("working_resolution", 48),
    ]:
        assert call[key] == value, key
    assert torch.equal(call["generator"].get_state(), torch.Generator().manual_seed(11).get_state())
    assert steps == [(i, 7) for i in range(1, 8)]
    assert result.image.size == (W, H) and result.gray.size == (W, H)
    assert result.warnings == ["instance 0 ('a red car') is smaller than one token of the 2x2 attention grid"]
    assert call["colors"] is None  # no explicit colour: the pipeline takes the texts' colour words
    # the table measures what was painted against the texts' colours: both close, at the same L
    assert [row[2].split()[1] for row in result.table] == ["red", "blue"]
    assert [row[5] for row in result.table] == ["yes", "yes"]
    explicit = build_request(
        gray, _rows(["a red car", "a blue cat"], ""), _rows(masks), _rows([], ""), "", settings,
        colors=_rows(["#00ff00"], ""),
    )  # fmt: skip
    run.colorize(pipe, "mtcolor", explicit)
    first, second = pipe.calls[1]["colors"]
    assert first.hex == "#00ff00" and second is None


def test_table_flags_a_wrong_colour_and_skips_texts_without_colour(scene):
    from mtcolor.webui.colors import color_table, row_target

    gray, masks = scene
    image = np.full((H, W, 3), 128, np.uint8)
    left = inputs.read_mask(masks[0], 1, (W, H))
    image[left] = (0, 90, 255)  # blue where the text asks for red
    texts = ["a red car", "a cat"]
    resolved = [row_target(text, None) for text in texts]
    rows = color_table(
        PIL.Image.fromarray(image),
        [left, inputs.read_mask(masks[1], 2, (W, H))],
        texts,
        [t for t, _ in resolved],
        [r for _, r in resolved],
    )
    assert rows[0][2] == "#e50000 red" and rows[0][5] == "no" and rows[0][4] > 5
    assert "blue" in rows[0][3] and rows[0][6].startswith("hue off by")
    assert rows[1][2] == "—" and rows[1][6] == "no target: no colour word"


def test_lcoins_gets_one_caption(scene):
    gray, masks = scene
    calls = []

    def lcoins(image, caption, output_type="pil"):
        calls.append(caption)
        return SimpleNamespace(images=[PIL.Image.new("RGB", image.size, (128, 128, 128))])

    texts = _rows(["a red car", "a blue cat"], "")
    request = build_request(gray, texts, _rows(masks), _rows([], ""), "", Settings())
    assert run.colorize(lcoins, "lcoins", request).caption == "a red car and a blue cat"
    request = build_request(gray, texts, _rows(masks), _rows([], ""), "a red car by a blue cat", Settings())
    run.colorize(lcoins, "lcoins", request)
    assert calls == ["a red car and a blue cat", "a red car by a blue cat"]


def test_sam_rows_get_masks_from_segment_anything(scene, monkeypatch):
    gray, masks = scene
    seen = {}

    class FakeMasker:
        def masks(self, image, boxes=None, points=None):
            seen.update(points=points, boxes=boxes)
            box = np.zeros((H, W), bool)
            box[2:12, 3:30] = True
            return [box] * len(boxes)

    builds = []
    request = build_request(
        gray,
        _rows(["a red car", "a blue cat"], ""),
        _rows([masks[0], None]),
        _rows(["", "box 3,2,30,12"], ""),
        "",
        Settings(num_inference_steps=2),
        sam_enabled=True,
    )
    pipe = FakeMTColor()
    result = run.colorize(pipe, "mtcolor", request, sam_masker=lambda: builds.append(1) or FakeMasker())
    assert seen == {"points": [None], "boxes": [(3.0, 2.0, 30.0, 12.0)]} and builds == [1]
    assert pipe.calls[0]["masks"][1][2:12, 3:30].all() and result.masks[1].sum() == 10 * 27


# ---------------------------------------------------------------------------------------------- overlay


def test_overlay_tints_requested_colours_outlines_the_rest_and_lists_overlaps():
    gray = PIL.Image.new("L", (W, H), 100)
    a = np.zeros((H, W), bool)
    a[:10, :10] = True
    b = np.zeros((H, W), bool)
    b[5:20, 5:20] = True  # overlaps a; larger, so the shared pixels stay a's
    label_map = overlay.resolve_label_map([a, b])
    green = (21, 176, 26)
    tinted = overlay.label_overlay(gray, label_map, [green, None])
    colour = np.array(green, np.float32)
    value = tinted[3, 3].astype(np.float32)  # inside a: toward its requested green
    assert np.linalg.norm(value - colour) < np.linalg.norm(np.full(3, 100.0) - colour) and value[1] > value[0]
    assert tuple(tinted[15, 15]) == (100, 100, 100)  # inside b (no colour requested): not tinted
    edge = {tuple(tinted[19, x]) for x in range(10, 19)}  # b's bottom edge: a neutral outline
    assert edge == {(0, 0, 0), (255, 255, 255)}
    assert tuple(tinted[30, 40]) == (100, 100, 100)
    assert label_map[7, 7] == 1  # the smaller mask wins, as in the pipeline
    assert overlay.overlap_messages([a, b], [2, 5]) == [
        "Masks overlap (instances 2+5): each overlapping pixel goes to the smallest mask."
    ]


def test_vanishing_instances_are_named_by_row():
    pipe = SimpleNamespace(
        vae_scale_factor=4, unet=SimpleNamespace(config=SimpleNamespace(block_out_channels=(32, 64)))
    )
    label_map = np.zeros((64, 64), np.int64)
    label_map[:40, :40] = 1
    label_map[50:53, 50:53] = 2  # 3x3 pixels: under one 4x4 latent cell at 64 px
    messages = overlay.vanishing_messages(pipe, label_map, ["a red car", "a blue cat"], [1, 4], 64)
    assert len(messages) == 1 and messages[0].startswith("Instance 4 ('a blue cat')")
    assert "16x16" in messages[0] and "8x8" in messages[0]


# ---------------------------------------------------------------------------------------------- session


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from mtcolor.webui.session import ServerConfig, Session

    from mtcolor.threads import torch_threads

    with torch_threads(1):  # two threads oversubscribe a shared 2-core machine badly
        yield Session(
            ServerConfig(workdir=str(tmp_path_factory.mktemp("ui")), example_scenes=2, include_photo=False)
        )


def test_session_result_is_the_pipeline_result(session):
    """The page adds nothing to the colorization: its PNG equals a direct pipeline call's output."""
    example = session.examples[0]
    defaults = session.defaults()
    view = session.colorize(
        example.image, _rows(example.texts, ""), _rows(example.masks), None, example.prompt, settings={}
    )
    pipe = session.pipes.get(session.default_choice)
    direct = pipe(
        PIL.Image.open(example.image),
        [np.asarray(PIL.Image.open(m)) > 127 for m in example.masks],
        example.texts,
        prompt=example.prompt,
        num_inference_steps=defaults["num_inference_steps"],
        guidance_scale=defaults["guidance_scale"],
        working_resolution=defaults["working_resolution"],
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    saved = PIL.Image.open(view.png)
    assert saved.size == PIL.Image.open(example.image).size
    np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), np.asarray(direct))
    assert "Done" in view.status and len(view.table) == len(example.texts)
    assert view.before.size == saved.size


def test_session_preview_reports_problems_instead_of_raising(session, tmp_path):
    example = session.examples[0]
    wrong = _save(tmp_path, "wrong.png", np.full((10, 12), 255, np.uint8))
    preview = session.preview(example.image, _rows(["a red car"], ""), _rows([wrong]), None, 64)
    assert "is 12x10 but the image is 64x64" in preview.legend and preview.overlay.shape == (64, 64, 3)
    preview = session.preview(example.image, _rows(example.texts, ""), _rows(example.masks), None, 64)
    assert "no warnings" in preview.legend or "⚠" in preview.legend
    assert all(text in preview.legend for text in example.texts)
    assert session.preview(None, [], [], None, 64).overlay is None


def test_session_paint_saves_a_mask_at_the_image_size(session):
    example = session.examples[0]
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[8:16, 8:16, 3] = 255
    path = session.paint({"background": None, "layers": [layer], "composite": None}, example.image, 3)
    mask = np.asarray(PIL.Image.open(path))
    assert mask.shape == (64, 64) and (mask[16:32, 16:32] == 255).all() and (mask > 0).sum() == 16 * 16
    with pytest.raises(ValueError, match="nothing is painted"):
        session.paint({"layers": []}, example.image, 1)
