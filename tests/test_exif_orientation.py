"""Phone photos (EXIF Orientation 6: stored 64x48, shown 48x64) are read upright everywhere: the
library's image and mask conversion, the pipeline, ``mtcolor colorize`` and the web UI; a mask drawn
on the photo as viewers show it is aligned with it."""

import numpy as np
import PIL.Image
import pytest
import torch

from mtcolor.color import image_luminance
from mtcolor.image_io import to_float_image
from mtcolor.masks import masks_to_label_map

ORIENTATION = 0x0112  # the EXIF tag
H, W = 48, 64  # the stored pixel grid; viewers show W x H = 48 x 64 (rotated 90 degrees clockwise)


def _with_orientation(image: PIL.Image.Image, path, orientation: int = 6):
    exif = PIL.Image.Exif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif, **({"quality": 95} if str(path).endswith(".jpg") else {}))
    return path


def _stored_gray() -> np.ndarray:
    """(H, W) uint8: a ramp plus a bright block in the stored top-left corner (no symmetry)."""
    gray = np.tile(np.linspace(20, 200, W, dtype=np.float32), (H, 1))
    gray[:12, :20] = 250
    return gray.astype(np.uint8)


@pytest.fixture
def phone(tmp_path):
    """A JPEG stored 64x48 with Orientation 6, its stored pixels decoded as such, and a PNG mask
    drawn on the upright (48x64) view: the upright top-left quarter."""
    path = _with_orientation(PIL.Image.fromarray(_stored_gray()), tmp_path / "phone.jpg")
    stored = np.asarray(PIL.Image.open(path))  # what PIL decodes, EXIF not applied: (48, 64)
    mask = np.zeros((W, H), np.uint8)  # upright: 64 rows, 48 columns
    mask[: W // 2, : H // 2] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    return path, stored, tmp_path / "mask.png"


def test_images_are_read_upright_and_the_stored_grid_on_request(phone):
    path, stored, _ = phone
    upright_pixels = np.rot90(stored, -1)  # orientation 6: turn the stored grid 90 degrees clockwise
    array = to_float_image(PIL.Image.open(path))
    assert array.shape == (W, H, 1)
    np.testing.assert_array_equal(np.round(array[..., 0] * 255).astype(np.uint8), upright_pixels)
    assert tuple(image_luminance(PIL.Image.open(path)).shape) == (1, W, H)  # what the pipelines read
    from mtcolor.image_io import upright

    assert to_float_image(PIL.Image.open(path), orient=False).shape == (H, W, 1)  # the stored grid
    turned = upright(PIL.Image.open(path))
    assert turned.size == (H, W) and upright(turned) is turned  # once is enough: the tag is gone


def test_masks_with_an_orientation_are_read_upright(tmp_path):
    mask = np.zeros((H, W), np.uint8)
    mask[:10, :20] = 255  # the stored top-left corner: the upright top-right corner
    path = _with_orientation(PIL.Image.fromarray(mask), tmp_path / "m.png")
    label_map = masks_to_label_map([PIL.Image.open(path)])
    assert tuple(label_map.shape) == (W, H)
    np.testing.assert_array_equal(label_map.numpy() == 1, np.rot90(mask, -1) > 127)
    plain = tmp_path / "plain.png"
    PIL.Image.fromarray(mask).save(plain)
    assert tuple(masks_to_label_map([PIL.Image.open(plain)]).shape) == (H, W)  # no tag: as stored


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mtcolor import MTColorPipeline
    from mtcolor.testing import tiny_components

    folder = tmp_path_factory.mktemp("model")
    MTColorPipeline(
        **tiny_components(0, tokenizer_cache=str(tmp_path_factory.mktemp("tok")))
    ).save_pretrained(folder)
    return str(folder)


def _luminance(image: PIL.Image.Image) -> np.ndarray:
    return image_luminance(image)[0].numpy()


def test_pipeline_takes_the_photo_and_an_upright_mask(phone, model_dir):
    from mtcolor import MTColorPipeline

    path, stored, mask_path = phone
    pipe = MTColorPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    mask = np.asarray(PIL.Image.open(mask_path)) > 127
    out = pipe(
        PIL.Image.open(path),
        [mask],
        ["a red car"],
        num_inference_steps=2,
        working_resolution=64,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert out.size == (H, W)  # rotated pixels, as the photo is shown
    expected = _luminance(PIL.Image.fromarray(np.rot90(stored, -1).copy()))
    assert np.abs(_luminance(out) - expected).max() < 1.0  # the photo's own L, upright


def test_cli_colorizes_the_photo_upright(phone, model_dir, capsys):
    from mtcolor.cli import main

    path, stored, mask_path = phone
    out = path.parent / "out.png"
    argv = ["colorize", path, "--mask", mask_path, "--text", "a red car", "--model", model_dir]
    argv += ["--steps", "2", "--working-resolution", "64", "--seed", "0", "--out", out]
    code = main([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err
    result = PIL.Image.open(out)
    assert result.size == (H, W)
    expected = _luminance(PIL.Image.fromarray(np.rot90(stored, -1).copy()))
    assert np.abs(_luminance(result) - expected).max() < 1.0


def test_web_ui_reads_the_photo_upright(phone):
    from mtcolor.webui.inputs import MAX_INSTANCES, build_request, gray_preview, open_image

    path, stored, mask_path = phone
    texts = ["a red car"] + [""] * (MAX_INSTANCES - 1)
    masks = [str(mask_path)] + [None] * (MAX_INSTANCES - 1)
    request = build_request(str(path), texts, masks)
    assert request.size == (H, W) and request.instances[0].mask.shape == (W, H)
    assert any("EXIF orientation" in note for note in request.notes)
    gray = np.asarray(gray_preview(open_image(str(path))))
    assert gray.shape == (W, H) and gray[:20, -12:].mean() > 240  # the stored top-left block, upright
