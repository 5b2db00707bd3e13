"""The denoising phases of ``MTColorPipeline`` (MT section III.C): batched instance passes, the
fusion (MT eq. 8), the instance phase, the global phase (MT eq. 9) against a direct transcription,
and a fixed-seed call recorded before the pipeline was split into phases.

Uses the tiny "trained" pipeline, the scene and the call helper of ``test_pipeline_mtcolor``.
"""

import pytest
import torch
from test_pipeline_mtcolor import _run, _scene

from mtcolor.denoise import predict_noise
from mtcolor.inputs import prepare_samples, working_size
from mtcolor.masks import resize_label_map
from mtcolor.sampling import fuse_latents


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


# ---------------------------------------------------------------------------------------------------
# the global phase: MT eq. 9 as written, and a fixed-seed call recorded before the pipeline was restructured


def test_global_sampling_is_eq9(pipe):
    """A plain call (alpha = 0: every step global) against a direct transcription of MT eq. 9: for
    t in {T, ..., 1}, z_{t-1} = Diffusion(z_t, t, tau_g, T_n, M_n), where Diffusion is one DDIM step on
    the guided noise of UNet + ControlNet + adapter given the global prompt, all instance texts and the
    label map (the negative branch: negative prompt, null instance condition)."""
    gray, masks, texts = _scene()
    (sample,) = prepare_samples(gray, masks, texts, "a street")
    size = working_size(sample.size, 64, pipe.vae_scale_factor)
    latent_size = (size[0] // pipe.vae_scale_factor, size[1] // pipe.vae_scale_factor)
    z = torch.randn(1, 4, *latent_size, generator=torch.Generator().manual_seed(0))
    phase = pipe(
        gray, masks, texts, prompt="a street", latents=z, alpha=0.0, num_inference_steps=4,
        working_resolution=64, output_type="latent", colors_from_texts=False,
    ).images  # fmt: skip

    tau_g, negative = pipe.encode_prompt("a street", "cpu", 1, True)
    hidden, pooled = pipe.encode_instance_texts([texts], "cpu")  # T_n
    label_map, control = pipe.prepare_conditioning([sample], size, "cpu", torch.float32)  # M_n, gray
    pipe.scheduler.set_timesteps(4)
    with pipe.mtcolor_attention():
        null = pipe.adapter.build_context(torch.zeros_like(label_map), torch.zeros_like(pooled[0])[None], torch.tensor([0]), latent_size)  # fmt: skip
        cond = pipe.adapter.build_context(label_map, pooled[0][None], torch.tensor([len(texts)]), latent_size)
        expected = z * pipe.scheduler.init_noise_sigma
        for t in pipe.scheduler.timesteps:
            eps = []
            for text, ctx in ((negative, null), (tau_g, cond)):
                model_input = pipe.scheduler.scale_model_input(expected, t)
                eps.append(predict_noise(pipe.unet, model_input, t, text, context=ctx, controlnet=pipe.controlnet, control_image=control))  # fmt: skip
            guided = eps[0] + 7.5 * (eps[1] - eps[0])
            expected = pipe.scheduler.step(guided, t, expected, eta=0.0).prev_sample
    assert phase.shape == (1, 4, *latent_size)
    # the transcription runs the two branches apart, the pipeline batches them: float order only
    torch.testing.assert_close(phase, expected, atol=1e-4, rtol=1e-5)


def test_fixed_seed_output_matches_the_recording(pipe):
    """Latents of a fixed-seed call (instance phase, fusion, global phase), recorded from the pipeline
    before it was split into phases (the split changed no bit on the recording machine)."""
    gray, masks, texts = _scene()
    latents = pipe(
        gray, masks, texts, prompt="a street", generator=torch.Generator().manual_seed(0),
        output_type="latent", num_inference_steps=5, working_resolution=64, colors_from_texts=False,
    ).images[0]  # fmt: skip
    expected = torch.tensor(
        [-1.4379277, 8.111296, 1.9593621, -0.01759227, 1.8191535, 1.2221742, 1.944054, 2.314432, 6.9284983]
    )
    torch.testing.assert_close(latents[-1, 3:6, 4:7].flatten(), expected, atol=1e-5, rtol=1e-5)
    assert abs(float(latents.double().abs().sum()) - 893.1023247507401) < 1e-3


def test_instance_phase_samples_each_instance_alone_then_eq8(pipe):
    """alpha = 1: every step is the instance phase, then MT eq. 8. Each instance latent must equal a
    plain call (alpha = 0) with that instance's text as the prompt and its mask as the only mask, from
    the same z_T; the global latent a plain call with everything."""
    gray, masks, texts = _scene()
    kw = dict(output_type="latent", seed=0)
    fused = _run(pipe, gray, masks, texts, prompt="a street", alpha=1.0, **kw)[0]
    z_global = _run(pipe, gray, masks, texts, prompt="a street", alpha=0.0, **kw)[0]
    z_instances = torch.stack(
        [_run(pipe, gray, [m], [t], prompt=t, alpha=0.0, **kw)[0] for m, t in zip(masks, texts)]
    )
    (sample,) = prepare_samples(gray, masks, texts)
    working = resize_label_map(sample.label_map, working_size(sample.size, 64, 8))  # as the pipeline
    label = resize_label_map(working, fused.shape[-2:])  # (h, w) at latent resolution
    assert set(label.unique().tolist()) == {0, 1, 2}
    expected = fuse_latents(z_global, z_instances, label, beta=0.2, fusion="paper")
    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=1e-4)  # batched vs separate UNet calls
