"""Full-resolution post-processing works in row tiles: tiled == untiled, and the peak memory per input
pixel stays bounded.

Run as a script to measure the bytes per input pixel of each full-resolution stage on a
4000 x 3000 input with two masks (README, Benchmarks, "Memory at full resolution"):

    bash run.sh python tests/test_memory_tiles.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch

from mtcolor.color import TILE_PIXELS, fit_chroma_to_gamut, recombine_luminance, rgb_luminance
from mtcolor.image_io import to_float_image, to_uint8_image
from mtcolor.masks import resize_label_map

TINY_TILE = 50  # pixels: 2-3 rows of the test images, so every image spans many tiles


def _lab_inputs(batch=2, height=13, width=21, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lightness = torch.rand(batch, 1, height, width, generator=gen) * 100
    ab = (torch.rand(batch, 2, 5, 7, generator=gen) - 0.5) * 220  # many colours out of gamut
    return lightness, ab


def test_tiles_cover_more_than_one_tile():
    assert 13 * 21 > 5 * TINY_TILE and TILE_PIXELS >= 1 << 16


def test_rgb_luminance_tiled_equals_untiled():
    gen = torch.Generator().manual_seed(1)
    for rgb in (torch.rand(2, 3, 13, 21, generator=gen), torch.rand(1, 13, 21, generator=gen)):
        whole = rgb_luminance(rgb, tile_pixels=10**9)
        tiled = rgb_luminance(rgb, tile_pixels=TINY_TILE)
        assert tiled.shape == (*rgb.shape[:-3], 1, 13, 21)
        torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_fit_chroma_to_gamut_tiled_equals_untiled():
    lightness, ab = _lab_inputs()
    ab = torch.nn.functional.interpolate(ab, size=(13, 21))
    whole = fit_chroma_to_gamut(lightness, ab, tile_pixels=10**9)
    tiled = fit_chroma_to_gamut(lightness, ab, tile_pixels=TINY_TILE)
    assert (whole != ab).any()  # some pixels were out of gamut
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_recombine_luminance_tiled_equals_untiled():
    lightness, ab = _lab_inputs()
    whole = recombine_luminance(lightness, ab, tile_pixels=10**9)
    tiled = recombine_luminance(lightness, ab, tile_pixels=TINY_TILE)
    assert tiled.shape == (2, 3, 13, 21) and tiled.dtype == torch.float32
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size_in, size_out", [((37, 29), (5, 4)), ((40, 40), (8, 8)), ((31, 17), (31, 5))])
def test_resize_label_map_tiled_equals_untiled(size_in, size_out):
    gen = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 4, (3, *size_in), generator=gen)
    whole = resize_label_map(labels, size_out, tile_pixels=10**9)
    tiled = resize_label_map(labels, size_out, tile_pixels=TINY_TILE)
    assert torch.equal(tiled, whole)


def test_to_uint8_image_tiled_equals_numpy_rounding():
    array = np.random.RandomState(3).rand(13, 21, 3).astype(np.float32)
    array[0, :4, 0] = [0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0]  # halves round to even, like numpy
    expected = (array * 255).round().astype(np.uint8)
    assert np.array_equal(to_uint8_image(array, tile_pixels=TINY_TILE), expected)
    assert np.array_equal(to_uint8_image(array[..., 0]), expected[..., 0])


def test_to_float_image_never_clips_the_callers_array_in_place():
    array = np.full((4, 5), 1 + 5e-7, np.float32)  # within the tolerance: clipped to 1
    tensor = torch.full((1, 4, 5), -5e-7)
    assert to_float_image(array).max() == 1.0 and to_float_image(tensor).min() == 0.0
    assert array.max() > 1.0 and tensor.min() < 0.0  # the caller's data is untouched


# ------------------------------------------------------------------ peak memory per input pixel
HEIGHT, WIDTH = 3000, 4000


def _scene(height, width):
    rng = np.random.RandomState(0)
    gray = (rng.rand(height, width) * 255).astype(np.uint8)
    first = np.zeros((height, width), bool)
    first[: height // 2, : width // 2] = True
    second = np.zeros((height, width), bool)
    second[height // 3 :, width // 3 :] = True
    return gray, [first, second], ["a red car", "a blue cat"]


def _stage(name: str, height: int, width: int) -> float:
    """Peak RSS growth (bytes) of one full-resolution stage, above a process warmed up on a small input;
    the stage's inputs are built before the measurement (they belong to the caller)."""
    torch.set_num_threads(1)
    if name.startswith("pipeline"):
        import tempfile

        from mtcolor import MTColorPipeline
        from mtcolor.testing import tiny_components

        pipe = MTColorPipeline(**tiny_components(0, tokenizer_cache=tempfile.mkdtemp()))
        pipe.set_progress_bar_config(disable=True)
        output_type = name.split("-")[1]

        def run(inputs):
            return pipe(*inputs, num_inference_steps=1, working_resolution=64, output_type=output_type)

        make = _scene
    elif name == "prepare":
        from mtcolor.inputs import prepare_samples

        def run(inputs):
            return prepare_samples(*inputs)

        make = _scene
    elif name == "recombine":

        def make(h, w):
            return torch.rand(1, 1, h, w) * 100, (torch.rand(1, 2, 64, 85) - 0.5) * 200

        def run(inputs):
            return recombine_luminance(*inputs)
    else:
        raise ValueError(f"unknown stage {name!r}")
    run(make(height // 10, width // 10))  # warm-up: imports, allocator, kernels
    inputs = make(height, width)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(inputs)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024.0  # KiB on Linux


def bytes_per_pixel(name: str, height: int = HEIGHT, width: int = WIDTH) -> float:
    """Run :func:`_stage` in a fresh child process and return its peak per input pixel."""
    out = subprocess.run(
        [sys.executable, __file__, name, str(height), str(width)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1]) / (height * width)


@pytest.mark.slow  # two child processes at 3 MP: about a minute on a loaded 2-core machine
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_full_resolution_stages_stay_within_their_memory_budget():
    """1500 x 2000 (3 MP): before tiling, converting to lightness + the label map peaked at ~105 bytes
    per pixel and recombining at ~150; now ~11 and ~20 (the (2, H, W) resized ab + the (3, H, W)
    output are 20 bytes per pixel)."""
    assert bytes_per_pixel("prepare", 1500, 2000) < 32
    assert bytes_per_pixel("recombine", 1500, 2000) < 40


if __name__ == "__main__":
    if len(sys.argv) == 4:
        print(json.dumps(_stage(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
        sys.exit(0)
    for stage in ("prepare", "recombine", "pipeline-pil", "pipeline-np"):
        per_pixel = bytes_per_pixel(stage)
        print(
            f"{stage}: {per_pixel:.0f} bytes per input pixel "
            f"({per_pixel * HEIGHT * WIDTH / 2**20:.0f} MiB above the warm process, {WIDTH} x {HEIGHT}, 2 masks)"
        )
