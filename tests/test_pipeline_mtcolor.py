import copy
import inspect
import json
import logging
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback, SDCFGCutoffCallback
from diffusers.models.attention_processor import AttnProcessor
from mtcolor.pipelines.pipeline_mtcolor import SmallInstanceWarning

from mtcolor import MTColorPipeline, MTColorPipelineOutput
from mtcolor.color import image_luminance, rgb_to_lab

#: the denoising machinery alone: colour targets from the texts (steering, exact mode) are tested in
#: test_pipeline_colors.py and test_color_steering.py
STEPS = dict(num_inference_steps=3, working_resolution=64, colors_from_texts=False)


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


def _own_unet(pipe):
    """A shallow copy of the pipeline with its own UNet (tests that change processors or config)."""
    p = copy.copy(pipe)
    p.unet = copy.deepcopy(pipe.unet)
    return p


def test_set_attn_processor_does_not_drop_mtcolor(pipe):
    p = _own_unet(pipe)
    gray, masks, texts = _scene()
    reference = _run(p, gray, masks, texts)
    p.unet.set_attn_processor(AttnProcessor())
    again = _run(p, gray, masks, texts)
    assert (again - reference).abs().max() < 1e-3  # MT-Color ran on top (AttnProcessor vs 2_0 numerics)
    assert all(type(proc) is AttnProcessor for proc in p.unet.attn_processors.values())  # restored


def test_unet_keeps_its_standard_processor_api(pipe):
    p = _own_unet(pipe)
    assert not p.adapter.is_installed(p.unet)  # nothing installed outside a call
    p.unet.set_default_attn_processor()  # raised ValueError while MT-Color processors stayed installed
    installed_during_call = []

    def spy(pipeline, step, t, tensors):
        installed_during_call.append(pipeline.adapter.is_installed(pipeline.unet))
        return tensors

    gray, masks, texts = _scene()
    _run(p, gray, masks, texts, callback_on_step_end=spy)
    assert installed_during_call == [True] * STEPS["num_inference_steps"]
    assert all(type(proc) is AttnProcessor for proc in p.unet.attn_processors.values())
    p.unet.set_default_attn_processor()  # still works after a call

    def fail(pipeline, step, t, tensors):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        _run(p, gray, masks, texts, callback_on_step_end=fail)
    assert all(type(proc) is AttnProcessor for proc in p.unet.attn_processors.values())  # restored in finally


def test_save_load_round_trip_and_model_card(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    card = (tmp_path / "model" / "README.md").read_text()
    assert (
        card.startswith("---")
        and "library_name: diffusers" in card
        and "pipeline_tag: image-to-image" in card
    )
    assert "`colors`" in card and "`color_steering`" in card and "`exact_colors`" in card  # colour options
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
        (dict(alpha=1.5), "alpha must be a finite number in [0.0, 1.0], got 1.5"),
        (dict(fusion="blend"), "fusion='blend'"),
        (dict(output_type="jpg"), "output_type='jpg'"),
        (dict(generator=[torch.Generator()] * 3), "generator is a list of 3"),
        (dict(image="nan"), "NaN"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
        (
            dict(switches={"attention_mode": "fast"}),
            "attention_mode='fast'; expected one of ('renormalized', 'paper')",
        ),
        (dict(switches={"attention_impl": "cuda"}), "attention_impl='cuda'; expected one of"),
        (dict(switches={"use_pmam": "no"}), "switches.use_pmam='no'; expected True, False or None"),
        (dict(switches={"pmam": False}), "switches has unknown keys ['pmam']"),
        (dict(eta=-1.0), "eta must be a finite number in [0.0, inf], got -1.0"),
        (dict(eta=float("nan")), "eta must be a finite number in [0.0, inf], got nan"),
        (dict(beta=float("nan")), "beta must be a finite number in [0.0, inf], got nan"),
        (dict(guidance_scale=float("inf")), "guidance_scale must be a finite number in [0.0, inf], got inf"),
        (dict(alpha="0.2"), "alpha must be a real number in [0.0, 1.0], got '0.2' (str); pass a float"),
        (dict(controlnet_conditioning_scale=None), "controlnet_conditioning_scale must be a real number"),
        (dict(working_resolution=4), "working_resolution must be an int >= 8"),
        (dict(image="empty", masks=None, texts=None), "image is empty (0 x 5 pixels, H x W)"),
        (
            dict(prompt="a street", prompt_embeds=torch.zeros(1, 77, 32)),
            "prompt and prompt_embeds are both given",
        ),
        (
            dict(prompt_embeds=torch.zeros(2, 77, 32)),
            "prompt_embeds has shape (2, 77, 32); expected (B, L, D) = (1, 77, 32)",
        ),
        (dict(instance_pooled_embeds=torch.zeros(2, 32)), "texts and instance_pooled_embeds are both given"),
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
    if kwargs.get("image") == "empty":
        gray = np.zeros((0, 5), np.float32)  # raised ZeroDivisionError
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


# ---------------------------------------------------------------------------------------------------
# callbacks (diffusers' callback protocol)


class _Recorder(PipelineCallback):
    """Records what a callback can read from the pipeline at every step."""

    tensor_inputs = ["latents"]

    def __init__(self):
        super().__init__()
        self.seen = []

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        self.seen.append(
            (
                step_index,
                pipeline.num_timesteps,
                pipeline.guidance_scale,
                pipeline.do_classifier_free_guidance,
            )
        )
        return callback_kwargs


def _unet_rows(p, call):
    """Run ``call`` and return the batch size of every UNet forward pass."""
    rows = []
    handle = p.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        call()
    finally:
        handle.remove()
    return rows


def test_callback_objects_read_state_and_cut_guidance(pipe):
    gray, _, _ = _scene()
    recorder = _Recorder()
    callbacks = MultiPipelineCallbacks(
        [recorder, SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=0)]
    )
    rows = _unet_rows(pipe, lambda: _run(pipe, gray, prompt="a street", callback_on_step_end=callbacks))
    assert recorder.seen == [(0, 3, 7.5, True), (1, 3, 0.0, False), (2, 3, 0.0, False)]
    assert rows == [2, 1, 1]  # negative + conditional rows until the cut-off, then the conditional only


def test_callback_can_switch_guidance_on_mid_run(pipe):
    gray, masks, texts = _scene()

    def raise_guidance(p, step, t, tensors):
        if step == 0:
            assert tensors["negative_prompt_embeds"] is None  # not encoded while guidance is off
        p._guidance_scale = 5.0
        return tensors

    rows = _unet_rows(
        pipe,
        lambda: _run(
            pipe,
            gray,
            masks,
            texts,
            guidance_scale=1.0,
            alpha=0.0,
            callback_on_step_end=raise_guidance,
            callback_on_step_end_tensor_inputs=["negative_prompt_embeds"],
        ),
    )
    assert rows == [1, 2, 2]


# ---------------------------------------------------------------------------------------------------
# text encoding: precomputed embeddings, each text once, named truncation warnings


def _encoded_texts(p, call) -> list[str]:
    """Run ``call`` and return every text the text encoder saw (one entry per encoded row)."""
    seen = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.extend(t.strip() for t in p.tokenizer.batch_decode(ids, skip_special_tokens=True))

    handle = p.text_encoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return seen


def test_each_text_is_encoded_once_and_negative_only_with_guidance(pipe):
    gray, masks, texts = _scene()
    guided = _encoded_texts(pipe, lambda: _run(pipe, gray, masks, texts, prompt="a street", alpha=0.67))
    assert sorted(guided) == sorted(["a street", "", "a red car", "a blue cat"])  # "" = the negative prompt
    unguided = _encoded_texts(
        pipe, lambda: _run(pipe, gray, masks, texts, prompt="a street", alpha=0.67, guidance_scale=1.0)
    )
    assert sorted(unguided) == sorted(["a street", "a red car", "a blue cat"])


def test_precomputed_embeddings_equal_texts(pipe):
    gray, masks, texts = _scene()
    kw = dict(alpha=0.67, num_images_per_prompt=2)
    from_texts = _run(pipe, gray, masks, texts, prompt="a street", negative_prompt="gray", **kw)
    prompt_embeds, negative_embeds = pipe.encode_prompt("a street", "cpu", 1, True, "gray")
    hidden, pooled = pipe.encode_instance_texts([texts], "cpu")
    from_embeds = _run(
        pipe,
        gray,
        masks,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        instance_prompt_embeds=hidden[0],
        instance_pooled_embeds=pooled[0],
        **kw,
    )
    assert torch.equal(from_texts, from_embeds)
    assert hidden[0].shape == (2, 77, 32) and pooled[0].shape == (2, 32)
    with pytest.raises(ValueError, match="instance_prompt_embeds is None but alpha=0.67"):
        _run(pipe, gray, masks, instance_pooled_embeds=pooled[0], **kw)
    only_pooled = _run(pipe, gray, masks, texts, alpha=0.0)  # alpha = 0 needs no instance hidden states
    assert torch.equal(only_pooled, _run(pipe, gray, masks, instance_pooled_embeds=pooled[0], alpha=0.0))


def test_truncated_texts_are_named_once(pipe, caplog):
    gray, masks, texts = _scene()
    long_text = "a red car " + "with shiny wheels " * 30

    def truncations(*args, **kw):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mtcolor.text_encoders"):
            _run(pipe, *args, num_inference_steps=1, **kw)
        return sorted(r.getMessage().split(" has ")[0] for r in caplog.records if "dropped" in r.getMessage())

    # the instance text feeds both the instance encoder and its instance pass (alpha > 0): one warning
    assert truncations(gray, masks, [texts[0], long_text], prompt=long_text, alpha=0.67) == [
        "prompt",
        "texts[1]",
    ]
    batch = truncations([gray, gray], [masks, masks], [texts, [texts[0], long_text]], prompt=["a", long_text])
    assert batch == ["prompt[1]", "texts[1][1]"]


# ---------------------------------------------------------------------------------------------------
# scheduler noise, working resolution, signature


def test_eta_noise_comes_from_the_generator(pipe):
    gray, masks, texts = _scene()
    outs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        outs.append(_run(pipe, gray, masks, texts, eta=1.0, alpha=0.67, output_type="latent"))
    assert torch.equal(outs[0], outs[1])
    deterministic = _run(pipe, gray, masks, texts, eta=0.0, alpha=0.67, output_type="latent")
    assert not torch.equal(outs[0], deterministic)  # eta = 1 really draws noise


def test_default_working_resolution_is_the_models(pipe):
    gray, _, _ = _scene()  # 48 x 64
    kw = dict(num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert pipe.default_working_resolution == 64  # sample_size 8 x vae_scale_factor 8
    assert pipe(gray, **kw).images.shape == (1, 4, 8, 11)  # short side 64 -> latents 8 x 11
    p = _own_unet(pipe)
    p.unet.register_to_config(sample_size=6)  # a model trained at 48
    assert p(gray, **kw).images.shape == (1, 4, 6, 8)
    assert p(gray, working_resolution=64, **kw).images.shape == (1, 4, 8, 11)  # explicit wins


def test_call_docstring_and_keyword_only_check_inputs():
    assert "MTColorPipeline.from_pretrained" in MTColorPipeline.__call__.__doc__  # EXAMPLE_DOC_STRING applied
    params = list(inspect.signature(MTColorPipeline.check_inputs).parameters.values())[1:]
    assert params and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)


# ---------------------------------------------------------------------------------------------------
# small instances: one summary warning per call, details in the output


def test_small_instances_summarised_once_with_diagnostics(pipe):
    gray, masks, _ = _scene()
    dots = []
    for y, x in ((46, 2), (2, 62), (30, 40)):
        dot = np.zeros_like(masks[0])
        dot[y, x] = True
        dots.append(dot)
    texts = ["a red car", "a tiny bird", "a cup", "a fly"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pipe(
            gray,
            [masks[0], *dots],
            texts,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
            **{**STEPS, "num_inference_steps": 1},
        )
    small = [w for w in caught if issubclass(w.category, SmallInstanceWarning)]
    assert len(small) == 1  # was one warning per instance per attention grid
    message = str(small[0].message)
    assert message.startswith("3 instances are smaller than one token at ")
    assert all(f"texts[{i}] {texts[i]!r}" in message for i in (1, 2, 3)) and "'a red car'" not in message
    diagnostics = out.diagnostics
    assert [(d["kind"], d["image"], d["instance"], d["text"]) for d in diagnostics] == [
        ("small_instance", 0, i, texts[i]) for i in (1, 2, 3)
    ]
    for d in diagnostics:
        assert d["working_size"] == [64, 88] and [8, 11] in d["lost_grids"] and d["pixels"] <= 4
    assert json.loads(json.dumps(diagnostics)) == diagnostics  # JSON-ready for metrics files
    assert pipe(gray, masks, ["a red car", "a blue cat"], output_type="latent", **STEPS).diagnostics == []
