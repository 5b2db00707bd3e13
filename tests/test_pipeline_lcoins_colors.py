"""LCoInsPipeline exact colour targets (``masks=`` + ``colors=``): a target moves its instance's a*b*
onto it (direction and deltaE00), every pixel outside the targeted masks and the L channel stay
those of the call without colours, batches equal single calls, diagnostics, and bad input is
refused naming the argument before the model runs."""

import mtcolor.pipelines.pipeline_lcoins as lcoins_module
import numpy as np
import pytest
import torch
from test_lcoins_pipeline import tiny_text_encoder
from transformers import AutoTokenizer

from mtcolor import LCoInsPipeline
from mtcolor.color import rgb_to_lab
from mtcolor.color_targets import parse_color
from mtcolor.metrics import instance_color_errors
from mtcolor.models.lcoins import LCOINS_PRESETS, LCoInsModel, minilm_path

CAPTION = "a car and a cat"
BLUE = "#2a50d0"  # Lab (39.2, 33.4, -69.6)


@pytest.fixture(scope="module")
def pipe():
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    text_encoder = tiny_text_encoder(len(tokenizer))
    model = LCoInsModel(**LCOINS_PRESETS["tiny"]).eval()
    with torch.no_grad():  # a visible reddish-green chroma (a* ~ +30, b* ~ -22) for the targets to move
        model.upsampler.to_ab.bias.copy_(torch.tensor([0.3, -0.2]))
    pipeline = LCoInsPipeline(model=model, text_encoder=text_encoder, tokenizer=tokenizer)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _scene(h=45, w=70):
    """A shaded gray ramp (odd size) and two disjoint rectangular masks."""
    gray = np.tile(np.linspace(0.35, 0.65, w, dtype=np.float32), (h, 1))
    a = np.zeros((h, w), bool)
    a[4:24, 4:30] = True
    b = np.zeros((h, w), bool)
    b[28:44, 34:60] = True
    return gray, [a, b]


def _label_map(masks) -> torch.Tensor:
    return torch.from_numpy(masks[0].astype(np.int64) + 2 * masks[1])[None]


def _mean_ab(image: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """(2,) mean a*b* of ``image`` (3, H, W) inside ``mask``."""
    return rgb_to_lab(image[None])[0, 1:, torch.from_numpy(mask)].mean(1)


def test_a_target_moves_its_instance_onto_it_and_keeps_everything_else(pipe):
    gray, masks = _scene()
    plain = pipe(gray, CAPTION, output_type="pt").images
    exact = pipe(gray, CAPTION, masks=masks, colors=[BLUE, None], output_type="pt").images
    target = parse_color(BLUE)
    (before,) = instance_color_errors(plain, _label_map(masks), [[target, None]])
    (after,) = instance_color_errors(exact, _label_map(masks), [[target, None]])
    assert before.delta_e00 > 15  # the model's own colour is far from blue
    assert after.delta_e00 < 1.0 and after.passes
    old_ab, new_ab = _mean_ab(plain[0], masks[0]), _mean_ab(exact[0], masks[0])
    assert new_ab[1] < old_ab[1] - 30  # blue lowers b* inside the mask (target b* -69.6)
    assert (new_ab - torch.tensor(target.lab[1:])).norm() < (
        old_ab - torch.tensor(target.lab[1:])
    ).norm() / 10
    outside = ~torch.from_numpy(masks[0])
    assert torch.equal(exact[0][:, outside], plain[0][:, outside])  # the untargeted mask included
    lightness = rgb_to_lab(exact)[0, 0]
    expected = rgb_to_lab(torch.from_numpy(gray)[None].repeat(3, 1, 1)[None])[0, 0]
    assert (lightness - expected).abs().max() < 0.05  # the input's L


def test_masks_without_colours_or_with_none_change_nothing(pipe):
    gray, masks = _scene()
    plain = pipe(gray, CAPTION, output_type="pt")
    assert plain.diagnostics == []
    for kwargs in (dict(masks=masks), dict(masks=masks, colors=[None, None]), dict(masks=np.stack(masks))):
        out = pipe(gray, CAPTION, output_type="pt", **kwargs)
        assert torch.equal(out.images, plain.images) and out.diagnostics == []


def test_two_targets_each_land_and_the_background_keeps_its_pixels(pipe):
    gray, masks = _scene()
    plain = pipe(gray, CAPTION, output_type="pt").images
    colors = ["crimson", (40, 160, 60)]
    exact = pipe(gray, CAPTION, masks=masks, colors=colors, output_type="pt").images
    targets = [parse_color(c) for c in colors]
    errors = instance_color_errors(exact, _label_map(masks), [targets])
    assert [round(e.instance) for e in errors] == [1, 2] and all(e.delta_e00 < 1.5 for e in errors)
    assert _mean_ab(exact[0], masks[1])[0] < -20  # green lowers a*
    background = ~torch.from_numpy(masks[0] | masks[1])
    assert torch.equal(exact[0][:, background], plain[0][:, background])


def test_batches_take_one_list_per_image_and_equal_single_calls(pipe):
    gray, masks = _scene()
    other = np.ascontiguousarray(gray[:, ::-1])
    batch = pipe([gray, other], CAPTION, masks=[masks, None], colors=[[BLUE, None], None], output_type="pt")
    single = pipe(gray, CAPTION, masks=masks, colors=[BLUE, None], output_type="pt").images[0]
    alone = pipe(other, CAPTION, output_type="pt").images[0]
    torch.testing.assert_close(batch.images[0], single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.images[1], alone, atol=1e-5, rtol=1e-5)
    assert [(d["image"], d["instance"], d["name"]) for d in batch.diagnostics] == [(0, 0, "colors[0][0]")]


def test_diagnostics_name_each_target_and_an_unplannable_one(pipe, monkeypatch):
    gray, masks = _scene()
    out = pipe(gray, CAPTION, masks=masks, colors=["navy blue", "#ff8800"], output_type="pt")
    found = [(d["kind"], d["instance"], d["label"], d["source"]) for d in out.diagnostics]
    assert found == [("color_target", 0, "navy blue", "name"), ("color_target", 1, "#ff8800", "hex")]
    # a 1-pixel mask vanishes when the plan is made on a shrunken copy: reported, and left as predicted
    dot = np.zeros_like(masks[0])
    dot[40, 5] = True
    monkeypatch.setattr(lcoins_module, "PLAN_PIXELS", 64)
    plain = pipe(gray, CAPTION, output_type="pt").images
    out = pipe(gray, CAPTION, masks=[masks[0], dot], colors=[BLUE, "red"], output_type="pt")
    unreachable = [d for d in out.diagnostics if d["kind"] == "color_target_unreachable"]
    assert [(d["instance"], d["reason"]) for d in unreachable] == [(1, "no pixels at the plan's resolution")]
    assert torch.equal(out.images[0][:, 40, 5], plain[0][:, 40, 5])


def _other_size_masks():
    _, masks = _scene(30, 70)
    return masks


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(colors=[BLUE]), "needs masks"),
        (dict(masks="masks", colors=[BLUE]), "colors has 1 entries but there are 2 masks"),
        (dict(masks="masks", colors=["#12345", None]), "colors[0]"),
        (dict(masks="masks", colors=[None, "not-a-colour-name"]), "colors[1]"),
        (dict(masks="masks", colors=[(255, float("nan"), 0), None]), "colors[0]"),
        (dict(masks="masks", colors=[(300, 0, 0), None]), "colors[0]"),
        (dict(masks="other-size", colors=[BLUE, None]), "masks have size (30, 70)"),
    ],
)
def test_bad_targets_are_refused_naming_the_argument_before_the_model_runs(
    pipe, monkeypatch, kwargs, message
):
    monkeypatch.setattr(pipe.model, "forward", lambda *a, **k: pytest.fail("the model ran"))
    monkeypatch.setattr(pipe.text_encoder, "forward", lambda *a, **k: pytest.fail("the text encoder ran"))
    gray, masks = _scene()
    if kwargs.get("masks") == "masks":
        kwargs = {**kwargs, "masks": masks}
    elif kwargs.get("masks") == "other-size":
        kwargs = {**kwargs, "masks": _other_size_masks()}
    with pytest.raises((ValueError, TypeError)) as info:
        pipe(gray, CAPTION, output_type="pt", **kwargs)
    assert message in str(info.value)


def test_bad_batched_targets_name_the_image(pipe, monkeypatch):
    monkeypatch.setattr(pipe.model, "forward", lambda *a, **k: pytest.fail("the model ran"))
    gray, masks = _scene()
    with pytest.raises(ValueError, match=r"masks has 1 entries for a batch of 2 images"):
        pipe([gray, gray], CAPTION, masks=[masks], colors=[[BLUE, None]])
    with pytest.raises(ValueError, match=r"colors\[1\]=\['red'\] needs masks\[1\]"):
        pipe([gray, gray], CAPTION, masks=[masks, None], colors=[None, ["red"]])
    with pytest.raises(ValueError, match=r"colors\[0\]\[1\]"):
        pipe([gray, gray], CAPTION, masks=[masks, None], colors=[[BLUE, "#zzzzzz"], None])
    with pytest.raises(ValueError, match=r"own no pixel"):  # two equal masks: one owns every pixel
        pipe(gray, CAPTION, masks=[masks[0], masks[0].copy()], colors=[BLUE, BLUE])
