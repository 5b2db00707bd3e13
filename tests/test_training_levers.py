"""The shared diffusion objective (training/diffusion.py: targets, Min-SNR-gamma, the loss both the
base-model trainer and the MT-Color stages use) and the instance colour term
(training/instance_color.py), against direct transcriptions of their formulas."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from mtcolor.training import diffusion, mtcolor_model, train_base
from mtcolor.training.instance_color import instance_color_loss, instance_mean_ab
from mtcolor.training.mtcolor_model import (
    Components,
    MTColorTrainingModel,
    compute_loss,
    draw_step,
    latent_shape,
)

from mtcolor.color import rgb_to_lab
from mtcolor.testing import tiny_components


def _scheduler():
    from diffusers import DDPMScheduler

    from mtcolor.model_configs import DDIM_CONFIG

    return DDPMScheduler(**{k: v for k, v in DDIM_CONFIG.items() if k != "set_alpha_to_one"})


def _sd_alphas_cumprod() -> torch.Tensor:
    """SD-1.5's schedule written out: scaled_linear betas from 0.00085 to 0.012 over 1000 steps."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def _tensors(seed=0, batch=4):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 4, 8, 8)
    timesteps = torch.tensor([0, 120, 500, 999][:batch])
    return (
        torch.randn(shape, generator=g),
        torch.randn(shape, generator=g),
        torch.randn(shape, generator=g),
        timesteps,
    )


def test_epsilon_loss_is_the_plain_mse_and_v_target_the_velocity():
    scheduler = _scheduler()
    prediction, latents, noise, timesteps = _tensors()
    loss = diffusion.diffusion_loss(prediction, latents, noise, timesteps, scheduler, "epsilon")
    torch.testing.assert_close(loss, ((prediction - noise) ** 2).mean())
    abar = _sd_alphas_cumprod()[timesteps].float().view(-1, 1, 1, 1)
    velocity = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    loss = diffusion.diffusion_loss(prediction, latents, noise, timesteps, scheduler, "v_prediction")
    torch.testing.assert_close(loss, ((prediction - velocity) ** 2).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", ["sample", "eps", "", None])
def test_unknown_prediction_type_raises(bad):
    scheduler = _scheduler()
    prediction, latents, noise, timesteps = _tensors()
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion.diffusion_loss(prediction, latents, noise, timesteps, scheduler, bad)
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion.predicted_original(prediction, latents, timesteps, scheduler, bad)
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion.min_snr_weights(scheduler, timesteps, 5.0, bad)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_loss_matches_a_transcription_of_hang_et_al(prediction_type):
    """L = mean_b w_b mean((pred_b - target_b)^2), w = min(SNR, gamma) / SNR (eps) or / (SNR + 1) (v)."""
    scheduler = _scheduler()
    prediction, latents, noise, timesteps = _tensors(1)
    abar = _sd_alphas_cumprod()[timesteps]
    snr = abar / (1 - abar)
    gamma = 5.0
    weights = torch.minimum(snr, torch.full_like(snr, gamma)) / (
        snr if prediction_type == "epsilon" else snr + 1
    )
    a = abar.float().view(-1, 1, 1, 1)
    target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
    expected = (weights.float() * ((prediction - target) ** 2).mean(dim=(1, 2, 3))).mean()
    loss = diffusion.diffusion_loss(prediction, latents, noise, timesteps, scheduler, prediction_type, gamma)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)


def test_min_snr_weights_clip_only_the_low_noise_steps():
    scheduler = _scheduler()
    timesteps = torch.arange(0, 1000, 7)
    weights = diffusion.min_snr_weights(scheduler, timesteps, 5.0, "epsilon")
    snr = diffusion.signal_to_noise(scheduler, timesteps)
    assert torch.all(weights[snr <= 5] == 1)  # noisy steps keep the full MT eq. 10 weight
    assert torch.all(weights[snr > 5] < 1) and weights[0] < 0.01  # the cleanest step is nearly ignored
    assert torch.all(weights[1:] >= weights[:-1])  # monotone in the noise level
    with pytest.raises(ValueError, match="snr_gamma"):
        diffusion.min_snr_weights(scheduler, timesteps, 0.0, "epsilon")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predicted_original_inverts_the_forward_process(prediction_type):
    scheduler = _scheduler()
    _, latents, noise, timesteps = _tensors(2)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    output = diffusion.diffusion_target(latents, noise, timesteps, scheduler, prediction_type)
    original = diffusion.predicted_original(output, noisy, timesteps, scheduler, prediction_type)
    torch.testing.assert_close(original[:3], latents[:3], rtol=1e-4, atol=1e-4)  # t = 999: 1/sqrt(abar) ~ 15


def test_encode_latents_applies_the_shift_factor():
    vae = tiny_components(0)["vae"]
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.25)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latent_noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    posterior = vae.encode(pixels * 2 - 1).latent_dist
    expected = (posterior.mean + posterior.std * latent_noise - 0.25) * 0.5
    torch.testing.assert_close(diffusion.encode_latents(vae, pixels, latent_noise, torch.float32), expected)
    decoded = diffusion.decode_latents(vae, expected)
    torch.testing.assert_close(decoded, ((vae.decode(expected / 0.5 + 0.25).sample + 1) / 2).clamp(0, 1))


def test_one_diffusion_loss_serves_the_base_trainer_and_the_stages():
    assert train_base.diffusion_loss is diffusion.diffusion_loss
    assert train_base.encode_latents is diffusion.encode_latents
    assert mtcolor_model.diffusion_loss is diffusion.diffusion_loss
    assert mtcolor_model.encode_latents is diffusion.encode_latents


def test_base_schedulers_carry_the_prediction_type():
    from mtcolor.training.base_model import noise_schedulers

    train, sample = noise_schedulers("v_prediction")
    assert train.config.prediction_type == sample.config.prediction_type == "v_prediction"
    train, sample = noise_schedulers()
    assert train.config.prediction_type == sample.config.prediction_type == "epsilon"


# ------------------------------------------------------------------------------------------------
# the instance colour term
def _label_map(batch=2, size=16):
    label_map = torch.zeros(batch, size, size, dtype=torch.long)
    label_map[0, 2:8, 2:8] = 1
    label_map[0, 9:14, 4:12] = 2
    return label_map  # sample 1: no instance (the null condition)


def _images(seed, batch=2, size=16):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_instance_mean_ab_is_the_mean_inside_each_mask():
    rgb, label_map = _images(0), _label_map()
    means, counts = instance_mean_ab(rgb, label_map, 2)
    ab = rgb_to_lab(rgb)[:, 1:]
    for k in (1, 2):
        inside = label_map[0] == k
        torch.testing.assert_close(means[0, k - 1], ab[0][:, inside].mean(-1))
        assert counts[0, k - 1] == inside.sum()
    assert torch.all(counts[1] == 0) and torch.all(means[1] == 0)


def test_instance_color_loss_is_zero_for_the_target_and_a_transcription_otherwise():
    target, label_map = _images(0), _label_map()
    torch.testing.assert_close(instance_color_loss(target, target, label_map), torch.zeros(2))
    predicted = _images(1)
    ab_p, ab_t = rgb_to_lab(predicted)[:, 1:], rgb_to_lab(target)[:, 1:]
    errors = [((ab_p[0][:, label_map[0] == k].mean(-1) - ab_t[0][:, label_map[0] == k].mean(-1)) / 110) ** 2 for k in (1, 2)]  # fmt: skip
    expected = torch.stack([torch.stack(errors).mean(), torch.tensor(0.0)])
    torch.testing.assert_close(instance_color_loss(predicted, target, label_map), expected)


def test_instance_color_gradient_moves_the_instance_ab_toward_the_target():
    """A gray prediction of a red instance: one gradient step raises a* inside the mask, towards the
    target's, and leaves the pixels outside every mask untouched."""
    label_map = _label_map()
    target = torch.full((2, 3, 16, 16), 0.5)
    target[0, :, label_map[0] == 1] = torch.tensor([0.8, 0.1, 0.1]).view(3, 1)  # red instance 1
    predicted = torch.full((2, 3, 16, 16), 0.5, requires_grad=True)
    loss = instance_color_loss(predicted, target, label_map).sum()
    loss.backward()
    assert torch.all(predicted.grad.permute(1, 0, 2, 3)[:, label_map == 0] == 0)
    stepped = (predicted - 0.05 * predicted.grad / predicted.grad.abs().max()).detach()
    before, _ = instance_mean_ab(predicted.detach(), label_map, 2)
    after, _ = instance_mean_ab(stepped, label_map, 2)
    goal, _ = instance_mean_ab(target, label_map, 2)
    assert goal[0, 0, 0] > 40 and after[0, 0, 0] > before[0, 0, 0] + 1  # a* rises toward red
    assert (after[0, 0] - goal[0, 0]).norm() < (before[0, 0] - goal[0, 0]).norm()
    assert instance_color_loss(stepped, target, label_map).sum() < loss


def test_ring_term_is_the_per_pixel_error_in_the_band_outside_each_mask():
    from mtcolor.training.instance_color import ring_pixels

    label_map = _label_map()
    rings = ring_pixels(label_map, 2, 1)
    inside = label_map[0] == 1
    grown = torch.zeros(16, 16, dtype=torch.bool)
    grown[1:9, 1:9] = True  # instance 1 (rows/cols 2-7) grown by one pixel
    assert torch.equal(rings[0, 0].bool(), grown & ~inside)
    target, predicted = _images(0), _images(1)
    torch.testing.assert_close(instance_color_loss(target, target, label_map, ring=1), torch.zeros(2))
    ab_p, ab_t = rgb_to_lab(predicted)[:, 1:], rgb_to_lab(target)[:, 1:]
    pixel_error = (((ab_p - ab_t) / 110) ** 2).mean(1)[0]
    terms = []
    for k in (1, 2):
        mask = label_map[0] == k
        mean_term = (((ab_p[0][:, mask].mean(-1) - ab_t[0][:, mask].mean(-1)) / 110) ** 2).mean()
        terms.append(mean_term + pixel_error[rings[0, k - 1].bool()].mean())
    expected = torch.stack([torch.stack(terms).mean(), torch.tensor(0.0)])
    torch.testing.assert_close(instance_color_loss(predicted, target, label_map, ring=1), expected)


def test_ring_gradient_pulls_a_bleeding_band_back_to_the_neighbours_colour():
    """A red instance whose red has bled one pixel into the gray background: the ring term's gradient
    lowers a* in that band (toward the background's own colour)."""
    label_map = _label_map()
    target = torch.full((2, 3, 16, 16), 0.5)
    target[0, :, label_map[0] == 1] = torch.tensor([0.8, 0.1, 0.1]).view(3, 1)
    bled = target.clone()
    bled[0, :, 1:9, 1:9] = torch.tensor([0.8, 0.1, 0.1]).view(3, 1, 1)  # red one pixel beyond the mask
    predicted = bled.clone().requires_grad_(True)
    instance_color_loss(predicted, target, label_map, ring=1).sum().backward()
    band = (label_map[0] == 0) & (
        torch.zeros(16, 16, dtype=torch.bool).index_fill_(0, torch.arange(1, 9), True)
    )
    band &= torch.zeros(16, 16, dtype=torch.bool).index_fill_(1, torch.arange(1, 9), True)
    stepped = (predicted - 0.05 * predicted.grad / predicted.grad.abs().max()).detach()
    before = rgb_to_lab(bled)[0, 1][band].mean()
    after = rgb_to_lab(stepped)[0, 1][band].mean()
    assert after < before - 1  # the band's a* falls back toward the gray background's 0
    assert torch.equal(
        instance_color_loss(bled, target, label_map).detach(), torch.zeros(2)
    )  # masks alone: blind


def test_instance_color_loss_without_instances_is_zero_with_a_graph():
    predicted = _images(0).requires_grad_(True)
    loss = instance_color_loss(predicted, _images(1), torch.zeros(2, 16, 16, dtype=torch.long))
    assert torch.equal(loss.detach(), torch.zeros(2))
    loss.sum().backward()
    assert torch.equal(predicted.grad, torch.zeros_like(predicted))


def test_instance_color_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="label_map"):
        instance_color_loss(_images(0), _images(1), torch.zeros(2, 8, 8, dtype=torch.long))


# ------------------------------------------------------------------------------------------------
# compute_loss with the levers
@pytest.fixture(scope="module")
def stage2_parts():
    parts = tiny_components(0)
    components = Components(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=parts["unet"],
        adapter=parts["adapter"], controlnet=parts["controlnet"], noise_scheduler=_scheduler(),
    )  # fmt: skip
    model = MTColorTrainingModel(parts["unet"], parts["adapter"], parts["controlnet"])
    label_map = torch.zeros(2, 64, 64, dtype=torch.long)
    label_map[0, 8:30, 8:30] = 1
    label_map[1, 30:60, 20:50] = 1
    label_map[1, 4:20, 40:60] = 2
    batch = {
        "pixel_values": torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)),
        "label_map": label_map,
        "prompts": ["a scene", ""],
        "instance_texts": [["a red circle"], ["a blue star", "a green ring"]],
    }
    draws = draw_step(0, 0, latent_shape(parts["vae"], 64), 1000, 2, 0, 2)
    return SimpleNamespace(c=components, model=model, batch=batch, draws=draws)


def _prediction(parts):
    """The model's prediction and the inputs it saw, as compute_loss builds them."""
    c, batch, draws = parts.c, parts.batch, parts.draws
    latents = diffusion.encode_latents(c.vae, batch["pixel_values"], draws.latent_noise, torch.float32)
    noisy = c.noise_scheduler.add_noise(latents, draws.noise, draws.timesteps)
    hidden, embeds, counts = mtcolor_model.encode_batch_texts(
        mtcolor_model._text_cache(c), batch["prompts"], batch["instance_texts"], "cpu", torch.float32
    )
    control = torch.stack([rgb_to_lab(batch["pixel_values"])[:, 0] / 100] * 3, 1)
    prediction = parts.model(noisy, draws.timesteps, hidden, batch["label_map"], embeds, counts, control)
    return latents, noisy, prediction


def test_compute_loss_with_both_levers_matches_the_transcription(stage2_parts):
    c, batch, draws = stage2_parts.c, stage2_parts.batch, stage2_parts.draws
    with torch.no_grad():
        loss = compute_loss(
            stage2_parts.model, c, batch, draws, stage=2, weight_dtype=torch.float32, snr_gamma=5.0,
            instance_color_weight=0.3,
        )  # fmt: skip
        plain = compute_loss(stage2_parts.model, c, batch, draws, stage=2, weight_dtype=torch.float32)
        latents, noisy, prediction = _prediction(stage2_parts)
        abar = _sd_alphas_cumprod()[draws.timesteps].float()
        snr = abar / (1 - abar)
        weights = torch.clamp(snr, max=5.0) / snr
        denoising = (weights * ((prediction - draws.noise) ** 2).mean(dim=(1, 2, 3))).mean()
        a = abar.view(-1, 1, 1, 1)
        original = (noisy - (1 - a).sqrt() * prediction) / a.sqrt()
        scale = c.vae.config.scaling_factor
        decoded = ((c.vae.decode(original / scale).sample + 1) / 2).clamp(0, 1)
        color = (abar * instance_color_loss(decoded, batch["pixel_values"], batch["label_map"])).mean()
    torch.testing.assert_close(plain, F.mse_loss(prediction, draws.noise), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, denoising + 0.3 * color, rtol=1e-4, atol=1e-6)
    assert color > 0


def test_compute_loss_raises_on_an_unknown_prediction_type(stage2_parts):
    with pytest.raises(ValueError, match="prediction_type"):
        compute_loss(
            stage2_parts.model, stage2_parts.c, stage2_parts.batch, stage2_parts.draws, stage=2,
            weight_dtype=torch.float32, prediction_type="sample",
        )  # fmt: skip


def test_lever_flags_are_validated_and_recorded_for_resume(tmp_path):
    from mtcolor.training import mtcolor_train, stage1

    base = ["--pretrained_model_name_or_path", str(tmp_path), "--train_data", str(tmp_path)]
    args = stage1.parse_args([*base, "--snr_gamma", "5", "--instance_color_weight", "0.5"])
    expected = {"stage": 1, "snr_gamma": 5.0, "instance_color_weight": 0.5, "instance_color_ring": None}
    assert mtcolor_train.run_info(args, 1) == expected
    args = stage1.parse_args(base)
    assert set(mtcolor_train.run_info(args, 1).values()) == {1, None}  # levers off: as older checkpoints
    for flag, value in (
        ("--snr_gamma", "0"),
        ("--instance_color_weight", "-1"),
        ("--instance_color_ring", "-1"),
    ):
        with pytest.raises(SystemExit):
            stage1.parse_args([*base, flag, value])


# ------------------------------------------------------------------------------------------------
# the data lever: extra crowded training scenes, the test split unchanged
def test_crowded_split_adds_training_scenes_and_leaves_train_and_test_alone(tmp_path):
    from mtcolor.dataset_builder.synthetic import SyntheticConfig, build_synthetic

    from mtcolor.records import load_records
    from mtcolor.synthetic import generate_scene, scene_seed

    holdout = [("red", "circle"), ("blue", "square")]
    config = SyntheticConfig(image_size=32, num_objects=(1, 2), holdout_pairs=holdout)
    crowded = SyntheticConfig(
        image_size=32, num_objects=(3, 3), size_range=(0.2, 0.35), holdout_pairs=holdout
    )
    build_synthetic(tmp_path, 4, config, seed=0, split="train")
    build_synthetic(tmp_path, 3, config, seed=0, split="test")
    train_before = [dict(r) for r in load_records(tmp_path, split="train")]
    build_synthetic(tmp_path, 12, crowded, seed=0, split="train_crowded", scene_split="train")
    extra = load_records(tmp_path, split="train_crowded")
    assert len(extra) == 12 and all(len(r["instance_texts"]) == 3 for r in extra)
    assert not any(
        (c, s) in set(holdout) for r in extra for c, s in zip(r["instance_colors"], r["instance_labels"])
    )
    expected = generate_scene(crowded, scene_seed(0, "train_crowded", 5), "train")
    assert list(extra[5]["instance_texts"]) == list(expected["instance_texts"])
    both = load_records(tmp_path, split="train+train_crowded")
    assert [r["id"] for r in both] == [r["id"] for r in train_before] + [r["id"] for r in extra]
    assert [dict(r) for r in load_records(tmp_path, split="train")] == train_before
    with pytest.raises(ValueError, match="train_extra"):
        load_records(tmp_path, split="train+train_extra")


def test_score_scenes_reports_the_crowded_scenes_apart():
    from mtcolor.scene_eval import held_out_scenes, scene_images, score_scenes
    from mtcolor.synthetic import SyntheticConfig

    scenes = held_out_scenes(SyntheticConfig(image_size=32, num_objects=(2, 3)), 12, 0)
    scores = score_scenes(scene_images(scenes), scenes, set())  # the ground truth scores itself
    crowded = sum(len(s["instance_texts"]) for s in scenes if len(s["instance_texts"]) >= 3)
    assert 0 < scores["crowded_instances"] == crowded < scores["instances"]
    assert scores["adherence_crowded"] > 0.8


# ------------------------------------------------------------------------------------------------
# the post-loop finish shared by every trainer
class _Accelerator:
    is_main_process = True

    def __init__(self):
        self.waits = 0

    def wait_for_everyone(self):
        self.waits += 1


class _Ema:
    def copy_to(self, params):
        for p in params:
            p.data.fill_(7.0)


def test_finish_training_copies_the_ema_validates_once_and_exports():
    from mtcolor.training.loop import TrainResult, finish_training

    params = [torch.nn.Parameter(torch.zeros(2))]
    calls = []

    def validate(step):
        calls.append(("validate", step, float(params[0].detach()[0])))
        return {"psnr": 1.0}

    result = TrainResult(output_dir=None, pipeline_dir=None, global_step=5)
    accelerator = _Accelerator()
    finish_training(
        accelerator, result, ema=_Ema(), params=params, validate=validate,
        export=lambda metrics: calls.append(("export", metrics)),
    )  # fmt: skip
    assert calls == [("validate", 5, 7.0), ("export", {"psnr": 1.0})]  # validated on the EMA weights
    assert result.validation == {"step": 5, "metrics": {"psnr": 1.0}} and accelerator.waits == 2
    calls.clear()
    result.validation = {"step": 5, "metrics": {"psnr": 2.0}}  # the loop validated the final step already
    finish_training(accelerator, result, ema=None, params=params, validate=validate, export=calls.append)
    assert calls == [{"psnr": 2.0}]
