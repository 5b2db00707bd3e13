"""Editing instances of an earlier result (``edit_from``): every pixel outside the edited
instances' regions keeps its exact value (odd sizes, 16-bit and RGBA inputs, a PNG from disk, an
edit of an edit), only the edited instances' passes run on a window around them, the new text
applies inside (shipped model), and bad edits are refused before any model work."""

import numpy as np
import PIL.Image
import pytest
import torch

from mtcolor import MTColorPipeline
from mtcolor.editing import edit_window, edited_region, known_cells
from mtcolor.testing import tiny_components

STEPS = dict(num_inference_steps=3, working_resolution=64, alpha=0.34)


def _scene(h=45, w=71, seed=0):
    rng = np.random.RandomState(seed)
    gray = (rng.rand(h, w) * 255).astype(np.uint8)
    masks = []
    for y0, y1, x0, x1 in (
        (2, h // 2, 3, w // 3),
        (h // 2 + 2, h - 3, w // 2, w - 4),
        (4, h // 3, w // 2, w - 10),
        (h - 14, h - 2, 2, 16),
    ):
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        masks.append(m)  # fmt: skip
    return gray, masks, ["a red car", "a blue cat", "a green tree", "a yellow sign"]


def _call(pipe, gray, masks, texts, seed=0, **kw):
    return pipe(gray, masks, texts, generator=torch.Generator().manual_seed(seed), **{**STEPS, **kw})


def _assert_outside_unchanged(before, after, region):
    before, after = np.asarray(before), np.asarray(after)
    assert before.shape == after.shape
    outside = ~np.asarray(region)
    assert (before[outside] == after[outside]).all()
    assert (before[~outside] != after[~outside]).any()  # the edited region was sampled anew


@pytest.mark.parametrize("kind", ["uint8", "uint16", "rgba"])
def test_outside_the_edited_region_every_pixel_is_kept(pipe, kind):
    gray, masks, texts = _scene()
    image = {
        "uint8": PIL.Image.fromarray(gray),
        "uint16": gray.astype(np.uint16) * 257,
        "rgba": PIL.Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 200)]), mode="RGBA"),
    }[kind]
    first = _call(pipe, image, masks, texts)
    new_texts = [texts[0], "a purple cat", *texts[2:]]
    edited = _call(pipe, image, masks, new_texts, seed=1, edit_from=first)
    region = edited.edit_states[0].label_map.numpy() == 2
    _assert_outside_unchanged(first.images[0], edited.images[0], region)
    assert edited.images[0].size == (71, 45) and edited.edit_states[0].texts[1] == "a purple cat"


def test_edit_from_a_png_on_disk_and_an_edit_of_an_edit(pipe, tmp_path):
    gray, masks, texts = _scene()
    first = _call(pipe, gray, masks, texts)
    first.images[0].save(tmp_path / "first.png")
    from_disk = PIL.Image.open(tmp_path / "first.png")
    second = _call(
        pipe, gray, masks, [*texts[:3], "an orange sign"], seed=2, edit_from=from_disk, edit_instances=[3]
    )
    _assert_outside_unchanged(first.images[0], second.images[0], masks[3])
    third = _call(pipe, gray, masks, ["a pink car", *texts[1:3], "an orange sign"], seed=3, edit_from=second)
    _assert_outside_unchanged(second.images[0], third.images[0], masks[0])
    # undo: back to the first text; only that instance changes again
    undo = _call(pipe, gray, masks, texts[:3] + ["an orange sign"], seed=4, edit_from=third)
    _assert_outside_unchanged(third.images[0], undo.images[0], masks[0])
    assert undo.edit_states[0].texts[0] == "a red car"


def test_changed_mask_edits_its_old_and_new_region(pipe):
    gray, masks, texts = _scene()
    first = _call(pipe, gray, masks, texts)
    moved = [m.copy() for m in masks]
    moved[1] = np.roll(masks[1], -5, axis=1)
    edited = _call(pipe, gray, moved, texts, seed=1, edit_from=first)
    region = masks[1] | moved[1]
    _assert_outside_unchanged(first.images[0], edited.images[0], region)


def test_only_the_edited_instance_passes_run_on_a_window(pipe):
    """The UNet sees 1 instance pass (not 4) and a window of the latent grid around the edit."""
    gray, masks, texts = _scene(64, 96)
    shapes = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        first = _call(pipe, gray, masks, texts, guidance_scale=1.0)
        fresh = list(shapes)
        shapes.clear()
        _call(pipe, gray, masks, [*texts[:3], "a white sign"], seed=1, guidance_scale=1.0, edit_from=first)
    finally:
        hook.remove()
    assert fresh[0][0] == 1 + 4 and fresh[-1][0] == 1  # global + 4 instance passes, then global only
    assert shapes[0][0] == 1 + 1 and shapes[-1][0] == 1  # global + the edited instance only
    area = lambda shape: shape[-1] * shape[-2]  # noqa: E731
    assert area(shapes[0]) < area(fresh[0])  # a window around the sign, not the whole grid


def test_region_window_and_cells():
    label = torch.zeros(40, 60, dtype=torch.long)
    label[5:10, 8:12] = 1
    label[20:30, 30:50] = 2
    old = torch.zeros_like(label)
    old[0:3, 0:3] = 2
    region = edited_region(label, old, [2])
    assert region[25, 40] and region[1, 1] and not region[7, 9]
    known = known_cells(label == 1, (5, 8))  # 8 x 7.5 pixels per cell
    assert known[0, 0, 0, 1] == 0 and known[0, 0, 1, 1] == 0 and known[0, 0, 4, 7] == 1
    rows, cols = edit_window(known, multiple=2, margin=1)
    assert (rows.stop - rows.start) % 2 == 0 and (cols.stop - cols.start) % 2 == 0
    assert rows.start <= 0 and rows.stop >= 2 and cols.start <= 1 and cols.stop >= 2


def test_bad_edits_are_refused_naming_the_argument(pipe):
    gray, masks, texts = _scene()
    first = _call(pipe, gray, masks, texts)
    cases = [
        (dict(edit_from=PIL.Image.new("RGB", (10, 10)), edit_instances=[0]), "edit_from is 10 x 10 (H x W) but image is 45 x 71"),
        (dict(edit_from=first, edit_instances=[7]), "edit_instances=[7]; pass 0-based indices of existing instances (this call has 4: 0..3)"),
        (dict(edit_from=first.images[0]), "edit_instances is None but edit_from is an image without its edit state"),
        (dict(edit_from=first, working_resolution=128), "it was made at working size (64, 104), this call runs at (128, 200)"),
        (dict(edit_from=first, num_images_per_prompt=2), "edit_from edits one image"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(ValueError) as info:
            _call(pipe, gray, masks, texts, **kwargs)
        assert message in str(info.value), (kwargs, str(info.value))
    other = MTColorPipeline(**tiny_components(5))
    other.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="made by another model"):
        _call(other, gray, masks, texts, edit_from=first)
    tiny = [m.copy() for m in masks]
    tiny[2] = np.zeros_like(masks[2])
    tiny[2][10, 40] = True  # one pixel: no token of any grid
    with pytest.raises(ValueError, match=r"instances \[2\].*smaller than one token at every attention grid"):
        _call(pipe, gray, tiny, texts, edit_from=first.images[0], edit_instances=[2])


def test_unchanged_call_returns_the_previous_pixels(pipe):
    gray, masks, texts = _scene()
    first = _call(pipe, gray, masks, texts)
    same = _call(pipe, gray, masks, texts, seed=9, edit_from=first)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(same.images[0]))
