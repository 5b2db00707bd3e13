import copy
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from mtcolor import MTColorPipeline, MTColorPipelineOutput
from mtcolor.color import image_luminance, rgb_to_lab
from mtcolor.sampling import fuse_latents
from mtcolor.testing import randomize_adapter, tiny_components

STEPS = dict(num_inference_steps=3, working_resolution=64)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    components = tiny_components(0, tokenizer_cache=str(tmp_path_factory.mktemp("tok")))
    randomize_adapter(components["adapter"], seed=1, gate=0.5, scale=0.05)  # a "trained" adapter
    pipeline = MTColorPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _scene(h=48, w=64, seed=0):
    rng = np.random.RandomState(seed)
    gray = rng.rand(h, w).astype(np.float32)
    a = np.zeros((h, w), bool)
    a[: h // 2, : w // 2] = True
    b = np.zeros((h, w), bool)
    b[h // 2 + 4 :, w // 2 + 4 :] = True
    return gray, [a, b], ["a red car", "a blue cat"]


def _run(pipe, *args, seed=0, **kw):
    kw = {**STEPS, "output_type": "pt", **kw}
    return pipe(*args, generator=torch.Generator().manual_seed(seed), **kw).images


def test_determinism_and_luminance_preserved(pipe):
    gray, masks, texts = _scene()
    one = _run(pipe, gray, masks, texts, prompt="a street")
    two = _run(pipe, gray, masks, texts, prompt="a street")
    assert torch.equal(one, two)
    assert one.shape == (1, 3, 48, 64)
    assert (rgb_to_lab(one)[:, 0] - image_luminance(gray)).abs().max() < 0.05
    other = _run(pipe, gray, masks, texts, prompt="a street", seed=1)
    assert not torch.allclose(one, other)


def test_batch_equals_single(pipe):
    (g1, m1, t1), (g2, m2, t2) = _scene(seed=0), _scene(seed=1)
    t2 = ["a green car", "a yellow cat"]
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    batch = pipe(
        [g1, g2], [m1, m2], [t1, t2], prompt=["a street", "a park"], generator=gens, output_type="pt", **STEPS
    ).images
    single1 = _run(pipe, g1, m1, t1, prompt="a street", seed=0)
    single2 = _run(pipe, g2, m2, t2, prompt="a park", seed=1)
    assert (batch[0] - single1[0]).abs().max() < 1e-3  # float accumulation order only
    assert (batch[1] - single2[0]).abs().max() < 1e-3


def test_instance_passes_batched_equal_looped(pipe):
    gray, masks, texts = _scene()
    kw = dict(prompt="a street", output_type="latent", alpha=0.67)
    batched = _run(pipe, gray, masks, texts, **kw)
    looped = _run(pipe, gray, masks, texts, max_batch=2, **kw)  # one latent (x2 for CFG) per UNet call
    assert (batched - looped).abs().max() < 1e-4


def test_alpha_zero_is_plain_sampling(pipe):
    gray, masks, texts = _scene()
    outs = [
        _run(pipe, gray, masks, texts, alpha=0.0, fusion=f, output_type="latent")
        for f in ("paper", "no_crop")
    ]
    assert torch.equal(outs[0], outs[1])
    multi = _run(pipe, gray, masks, texts, alpha=0.67, output_type="latent")
    assert not torch.allclose(outs[0], multi)


def test_fusion_is_eq8_and_options():
    torch.manual_seed(0)
    zg, zi = torch.randn(4, 6, 5), torch.randn(2, 4, 6, 5)
    label = torch.randint(0, 3, (6, 5))
    m = [(label == k).float() for k in range(3)]
    paper = 0.2 * m[0] * zg + m[1] * zi[0] + m[2] * zi[1]  # MT eq. 8
    assert torch.allclose(fuse_latents(zg, zi, label, 0.2, "paper"), paper)
    normalized = fuse_latents(zg, zi, label, 0.2, "normalized")
    assert torch.allclose(normalized[:, label == 0], zg[:, label == 0])
    assert torch.allclose(normalized[:, label == 1], ((0.2 * zg + zi[0]) / 1.2)[:, label == 1])
    assert torch.allclose(fuse_latents(zg, zi, label, 0.2, "no_crop"), (zg + zi.sum(0)) / 3)
    with pytest.raises(ValueError, match="fusion"):
        fuse_latents(zg, zi, label, 0.2, "blend")


def test_output_types_and_return_dict(pipe):
    gray, masks, texts = _scene()
    kw = dict(**STEPS, generator=torch.Generator().manual_seed(0))
    pil = pipe(gray, masks, texts, output_type="pil", **kw)
    assert isinstance(pil, MTColorPipelineOutput) and pil.images[0].size == (64, 48)
    kw["generator"] = torch.Generator().manual_seed(0)
    arr = pipe(gray, masks, texts, output_type="np", **kw).images
    assert arr.shape == (1, 48, 64, 3) and arr.dtype == np.float32
    kw["generator"] = torch.Generator().manual_seed(0)
    (latent,) = pipe(gray, masks, texts, output_type="latent", return_dict=False, **kw)
    assert latent.shape == (1, 4, 8, 11)  # 48 x 64 -> working 64 x 88 -> latents 8 x 11
    assert np.abs(np.asarray(pil.images[0]) / 255.0 - arr[0]).max() < 1 / 255 + 1e-6


def test_unconditional_and_global_text_only(pipe):
    gray, _, _ = _scene()
    auto = _run(pipe, gray)
    text_only = _run(pipe, gray, prompt="a red scene")
    assert auto.shape == text_only.shape == (1, 3, 48, 64)
    assert not torch.allclose(auto, text_only)
    assert (rgb_to_lab(auto)[:, 0] - image_luminance(gray)).abs().max() < 0.05


def test_odd_sizes_and_input_kinds(pipe):
    rng = np.random.RandomState(0)
    gray8 = (rng.rand(33, 51) * 255).astype(np.uint8)
    cases = {
        "uint8": gray8,
        "16-bit": PIL.Image.fromarray(gray8.astype(np.uint16) * 257),
        "RGBA": PIL.Image.fromarray(np.stack([gray8] * 3 + [np.full_like(gray8, 128)], -1), "RGBA"),
        "colour": PIL.Image.fromarray((rng.rand(33, 51, 3) * 255).astype(np.uint8)),
    }
    for name, image in cases.items():
        out = _run(pipe, image)
        assert out.shape == (1, 3, 33, 51), name
        assert (rgb_to_lab(out)[:, 0] - image_luminance(image)).abs().max() < 0.05, name
    big = _run(pipe, rng.rand(333, 517).astype(np.float32), num_inference_steps=2)
    assert big.shape == (1, 3, 333, 517)


def test_preserve_luminance_false_returns_decoded(pipe):
    gray, masks, texts = _scene()
    decoded = _run(pipe, gray, masks, texts, preserve_luminance=False)
    kept = _run(pipe, gray, masks, texts)
    assert decoded.shape == kept.shape
    assert (rgb_to_lab(decoded)[:, 0] - image_luminance(gray)).abs().max() > 0.5


def test_num_images_per_prompt_and_callbacks(pipe):
    gray, masks, texts = _scene()
    seen = []

    def callback(p, step, t, tensors):
        seen.append((step, tuple(tensors["latents"].shape)))
        return {"latents": tensors["latents"] * 0 if step == 2 else tensors["latents"]}

    out = pipe(
        gray,
        masks,
        texts,
        num_images_per_prompt=2,
        callback_on_step_end=callback,
        output_type="latent",
        generator=[torch.Generator().manual_seed(i) for i in range(2)],
        **STEPS,
    ).images
    assert out.shape == (2, 4, 8, 11) and seen == [(0, (2, 4, 8, 11)), (1, (2, 4, 8, 11)), (2, (2, 4, 8, 11))]
    assert torch.count_nonzero(out) == 0  # the callback's latents were used

    def stop(p, step, t, tensors):
        p._interrupt = True
        return {}

    calls = []
    pipe(gray, callback_on_step_end=lambda p, s, t, k: calls.append(s) or stop(p, s, t, k), **STEPS)
    assert calls == [0]


def test_set_attn_processor_does_not_drop_mtcolor(pipe):
    p = copy.copy(pipe)
    p.unet = copy.deepcopy(pipe.unet)
    gray, masks, texts = _scene()
    reference = _run(p, gray, masks, texts)
    p.unet.set_attn_processor(AttnProcessor())
    assert not p.adapter.is_installed(p.unet)
    again = _run(p, gray, masks, texts)
    assert p.adapter.is_installed(p.unet)
    assert (again - reference).abs().max() < 1e-3  # AttnProcessor vs AttnProcessor2_0 numerics


def test_save_load_round_trip_and_model_card(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    card = (tmp_path / "model" / "README.md").read_text()
    assert (
        card.startswith("---")
        and "library_name: diffusers" in card
        and "pipeline_tag: image-to-image" in card
    )
    loaded = MTColorPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    gray, masks, texts = _scene()
    assert torch.equal(_run(pipe, gray, masks, texts), _run(loaded, gray, masks, texts))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(texts=["a red car"]), "has 2 masks but texts has 1 texts"),
        (dict(masks="wrong_size"), "masks have size (10, 10) (H, W) but image is (48, 64)"),
        (dict(masks="empty"), "masks[1] is empty"),
        (dict(alpha=1.5), "alpha must lie in [0, 1]"),
        (dict(fusion="blend"), "fusion='blend'"),
        (dict(output_type="jpg"), "output_type='jpg'"),
        (dict(generator=[torch.Generator()] * 3), "generator is a list of 3"),
        (dict(image="nan"), "NaN"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_inputs_have_clear_errors(pipe, kwargs, error):
    gray, masks, texts = _scene()
    if kwargs.get("masks") == "wrong_size":
        kwargs["masks"] = [np.ones((10, 10), bool), np.ones((10, 10), bool)]
    if kwargs.get("masks") == "empty":
        kwargs["masks"] = [masks[0], np.zeros_like(masks[1])]
    if kwargs.get("image") == "nan":
        gray = gray.copy()
        gray[0, 0] = np.nan
        kwargs.pop("image")
    call = dict(masks=masks, texts=texts, **STEPS)
    call.update(kwargs)
    with pytest.raises((ValueError, TypeError)) as info:
        pipe(gray, **call)
    assert error in str(info.value)


def test_tiny_instance_warns_with_its_name(pipe):
    gray, masks, texts = _scene()
    tiny = np.zeros_like(masks[0])
    tiny[47, 63] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(pipe, gray, [masks[0], tiny], ["a red car", "a tiny bird"], num_inference_steps=1)
    assert any("'a tiny bird'" in str(w.message) for w in caught)
