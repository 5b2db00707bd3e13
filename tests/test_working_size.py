"""The working size is capped on both sides and in aspect ratio (``mtcolor.inputs.working_size``):
a 4096x1 strip no longer makes a pipeline run at 64x262144."""

import numpy as np
import pytest
import torch

from mtcolor import inputs
from mtcolor.inputs import working_size


def test_a_strip_is_refused_naming_the_limit_the_size_and_the_fix():
    for size, shown in (((1, 4096), "4096x1"), ((4096, 1), "1x4096")):  # (H, W)
        with pytest.raises(ValueError) as info:
            working_size(size, 64, 8, name="image[2]")
        message = str(info.value)
        assert f"image[2] is {shown} (W x H), an aspect ratio of 4.1e+03:1" in message
        assert f"up to {inputs.MAX_ASPECT_RATIO:g}:1 (mtcolor.inputs.MAX_ASPECT_RATIO)" in message
        assert "Crop its long side to at most 8 pixels" in message


def test_inputs_within_the_limits_keep_their_aspect():
    ratio = int(inputs.MAX_ASPECT_RATIO)
    assert working_size((64, 64 * ratio), 64) == (64, 64 * ratio)  # the most elongated input taken
    assert working_size((48, 64), 64) == (64, 88)
    assert working_size((3000, 4000), 512) == (512, 680)
    with pytest.raises(ValueError, match="aspect ratio"):
        working_size((64, 64 * ratio + 1), 64)


def test_the_long_side_is_capped_and_the_suggested_resolution_fits():
    with pytest.raises(ValueError) as info:
        working_size((1000, 6000), 1024)  # 1024 x 6144 at the working size
    message = str(info.value)
    assert (
        "image is 6000x1000 (W x H): at working_resolution 1024 the model would run at 6144x1024" in message
    )
    assert (
        f"more than {inputs.MAX_WORKING_SIDE} pixels on a side (mtcolor.inputs.MAX_WORKING_SIDE)" in message
    )
    suggested = int(message.rsplit("working_resolution=", 1)[1].split()[0])
    assert max(working_size((1000, 6000), suggested)) <= inputs.MAX_WORKING_SIDE  # the fix works
    with pytest.raises(ValueError, match="pixels on a side"):
        working_size((1000, 6000), suggested + 8)  # and is the largest that does
    with pytest.raises(ValueError, match=r"working_resolution is 8192; pass a short side in \[8, 4096\]"):
        working_size((64, 64), 8192)


def test_the_pipeline_refuses_a_strip_before_denoising():
    from mtcolor import MTColorPipeline
    from mtcolor.testing import tiny_components

    pipe = MTColorPipeline(**tiny_components(0))
    pipe.set_progress_bar_config(disable=True)
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    strip = np.linspace(0, 1, 200, dtype=np.float32)[None]  # (1, 200): 200:1
    with pytest.raises(ValueError, match=r"image is 200x1 \(W x H\), an aspect ratio of 200:1"):
        pipe(strip, num_inference_steps=1, working_resolution=8, generator=torch.Generator().manual_seed(0))
    assert calls == []  # refused before any denoising step
