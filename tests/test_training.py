"""MT-Color training stages 1 and 2 end to end on tiny models and a synthetic record dataset (CPU).

Longer than 500 lines on purpose: every test here shares the module-scoped ``assets`` /
``stage1_run`` fixtures (a tiny base model, a record dataset and a real stage-1 run); split into
several files, each file would build and train them again.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mtcolor.training import checkpoints, loop, stage1, stage2
from mtcolor.training.mtcolor_data import (
    AugmentConfig,
    InstanceColorizationDataset,
    collate,
    load_training_records,
)
from mtcolor.training.mtcolor_model import (
    MTColorTrainingModel,
    compute_loss,
    configure_trainable,
    draw_step,
    latent_shape,
)
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
ADAPTER_WEIGHTS = "adapter/diffusion_pytorch_model.safetensors"


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_stage(module, argv):
    """Parse and run a stage in this process (accelerate's singletons reset around it)."""
    _reset_accelerate()
    try:
        return module.main(module.parse_args([str(a) for a in argv]))
    finally:
        _reset_accelerate()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny SD-layout base model, a 'trained-looking' adapter, a ControlNet and 6 synthetic records."""
    from diffusers import StableDiffusionPipeline
    from mtcolor.dataset_builder.synthetic import SyntheticConfig, build_synthetic

    from mtcolor.testing import randomize_adapter, tiny_components

    root = tmp_path_factory.mktemp("mtcolor_training")
    parts = tiny_components(0, tokenizer_cache=str(root / "tokenizer"))
    StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(root / "base")
    randomize_adapter(parts["adapter"], seed=1, gate=0.5, scale=0.1)  # every branch active from step 1
    parts["adapter"].save_pretrained(root / "adapter")
    parts["controlnet"].save_pretrained(root / "controlnet")
    build_synthetic(root / "data", 6, SyntheticConfig(image_size=64), seed=0, shard_size=4)  # 2 shards
    return SimpleNamespace(root=root, base=root / "base", adapter=root / "adapter", controlnet=root / "controlnet",
                           data=root / "data", cache=root / "hf_cache")  # fmt: skip


def stage_args(assets, out, *extra):
    return [
        "--pretrained_model_name_or_path", assets.base, "--train_data", assets.data, "--output_dir", out,
        "--cache_dir", assets.cache, "--resolution", 64, "--train_batch_size", 1,
        "--gradient_accumulation_steps", 2, "--learning_rate", 1e-3, "--lr_warmup_steps", 2,
        "--adam_weight_decay", 0, "--report_to", "none", "--num_validation_samples", 0,
        "--checkpointing_steps", 2, "--seed", 0, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def stage1_run(assets):
    """Stage 1, 4 uninterrupted steps (batch 1 x 2 accumulation, 3 steps per epoch), EMA on."""
    out = assets.root / "stage1"
    result = run_stage(
        stage1,
        stage_args(
            assets, out, "--adapter_name_or_path", assets.adapter, "--max_train_steps", 4, "--use_ema"
        ),
    )
    return SimpleNamespace(out=out, result=result)


def _components(assets, stage):
    argv = [
        str(a) for a in stage_args(assets, assets.root / "unused", "--adapter_name_or_path", assets.adapter)
    ]
    if stage == 1:
        return stage1.build_components(stage1.parse_args(argv))
    return stage2.build_components(
        stage2.parse_args([*argv, "--controlnet_model_name_or_path", str(assets.controlnet)])
    )


def test_trainable_parameter_sets(assets):
    for stage in (1, 2):
        c = _components(assets, stage)
        model = MTColorTrainingModel(c.unet, c.adapter, c.controlnet)
        trainable = configure_trainable(model, stage)
        names = {n for n, _ in trainable}
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        adapter = c.adapter
        if stage == 1:
            modules = [adapter.instance_encoder, adapter.instance_branches]
            expected = {f"adapter.{n}" for n, _ in adapter.stage_parameters(1)}
            assert "adapter.null_token" in names
            assert not any(n.startswith(("unet.", "controlnet.", "adapter.pmams.")) for n in names)
            count = adapter.null_token.numel() + sum(p.numel() for m in modules for p in m.parameters())
            tensors = 1 + sum(len(list(m.parameters())) for m in modules)
        else:
            expected = {f"controlnet.{n}" for n, _ in c.controlnet.named_parameters()}
            expected |= {f"adapter.{n}" for n, _ in adapter.named_parameters() if n.startswith("pmams.")}
            assert not any(n.startswith(("unet.", "adapter.instance", "adapter.null")) for n in names)
            modules = [c.controlnet, adapter.pmams]
            count = sum(p.numel() for m in modules for p in m.parameters())
            tensors = sum(len(list(m.parameters())) for m in modules)
        assert names == expected
        assert len(trainable) == tensors
        assert sum(p.numel() for _, p in trainable) == count
        assert frozen == {n for n, _ in model.named_parameters()} - names
        assert any(n.startswith("unet.") for n in frozen)


def _fixed_batch(assets, stage):
    records = load_training_records(str(assets.data), cache_dir=str(assets.cache))
    config = AugmentConfig(resolution=64, instance_dropout=0.0, prompt_dropout=0.0)
    return collate([InstanceColorizationDataset(records, config)[i] for i in range(2)])


def test_loss_is_a_transcription_of_eq10(assets):
    from mtcolor.color import luminance_to_gray, rgb_luminance
    from mtcolor.denoise import predict_noise

    c = _components(assets, 2)
    model = MTColorTrainingModel(c.unet, c.adapter, c.controlnet)
    batch = _fixed_batch(assets, 2)
    draws = draw_step(3, 0, latent_shape(c.vae, 64), 1000, 2, 0, 2)
    with torch.no_grad():
        loss = compute_loss(model, c, batch, draws, stage=2, weight_dtype=torch.float32)
        # direct transcription: z_0 ~ q(z|x), z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, L = ||eps - eps_theta||^2
        posterior = c.vae.encode(batch["pixel_values"] * 2 - 1).latent_dist
        z0 = (posterior.mean + posterior.std * draws.latent_noise) * c.vae.config.scaling_factor
        abar = c.noise_scheduler.alphas_cumprod[draws.timesteps].view(-1, 1, 1, 1)
        zt = abar.sqrt() * z0 + (1 - abar).sqrt() * draws.noise
        tok = c.tokenizer
        ids = tok(
            batch["prompts"], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        hidden = c.text_encoder(ids).last_hidden_state
        texts = [t for sample in batch["instance_texts"] for t in sample]
        ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        pooled = c.text_encoder(ids).pooler_output
        counts = torch.tensor([len(t) for t in batch["instance_texts"]])
        embeds = torch.zeros(2, int(counts.max()), pooled.shape[-1])
        embeds[0, : counts[0]], embeds[1, : counts[1]] = pooled[: counts[0]], pooled[counts[0] :]
        context = c.adapter.build_context(batch["label_map"], embeds, counts, (8, 8))
        control = luminance_to_gray(rgb_luminance(batch["pixel_values"]))
        eps = predict_noise(c.unet, zt, draws.timesteps, hidden, context=context, controlnet=c.controlnet,
                            control_image=control)  # fmt: skip
        expected = ((draws.noise - eps) ** 2).mean()
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stage", [1, 2])
def test_loss_decreases_when_overfitting_a_fixed_batch(assets, stage):
    c = _components(assets, stage)
    model = MTColorTrainingModel(c.unet, c.adapter, c.controlnet)
    params = [p for _, p in configure_trainable(model, stage)]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    batch = _fixed_batch(assets, stage)
    draws = draw_step(0, 0, latent_shape(c.vae, 64), 1000, 2, 0, 2)  # the same noise and timesteps every step
    losses = []
    for _ in range(8):
        loss = compute_loss(model, c, batch, draws, stage=stage, weight_dtype=torch.float32)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses


def _tensors(folder, name):
    return load_file(str(Path(folder) / name))


def test_stage1_changes_only_the_stage1_parameters(assets, stage1_run):
    result = stage1_run.result
    assert result.global_step == 4 and len(result.losses) == 4
    assert all(torch.isfinite(torch.tensor(result.losses)))
    pipeline = result.pipeline_dir
    for part, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):  # fmt: skip
        before, after = (
            _tensors(assets.base / part, f"{name}.safetensors"),
            _tensors(pipeline / part, f"{name}.safetensors"),
        )
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), part
    assert not (pipeline / "controlnet").exists()
    before = _tensors(assets.adapter, "diffusion_pytorch_model.safetensors")
    after = _tensors(
        stage1_run.out / "checkpoint-4", ADAPTER_WEIGHTS
    )  # trained weights (the export holds the EMA)
    stage1_names = [
        k for k in before if k.startswith(("instance_encoder.", "null_token", "instance_branches."))
    ]
    assert stage1_names and len(stage1_names) < len(before)
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == (key in stage1_names), key
    ema = _tensors(pipeline, ADAPTER_WEIGHTS)
    assert not torch.equal(ema["null_token"], after["null_token"])  # exported weights are the EMA


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(assets, stage1_run, monkeypatch):
    out = assets.root / "stage1_resumed"
    argv = stage_args(
        assets, out, "--adapter_name_or_path", assets.adapter, "--max_train_steps", 4, "--use_ema"
    )
    real_save = checkpoints.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(*args, **kwargs):
        path = real_save(*args, **kwargs)
        raise Killed(path)

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run_stage(stage1, argv)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["checkpoint-2"]
    # leftovers of a kill during a later save: never picked by `latest`
    (out / "checkpoint-3.tmp" / "adapter").mkdir(parents=True)
    (out / "checkpoint-9" / "adapter").mkdir(parents=True)
    result = run_stage(stage1, [*argv, "--resume_from_checkpoint", "latest"])
    assert result.global_step == 4 and result.steps_run == 2
    assert result.losses == stage1_run.result.losses[2:]
    reference, resumed = stage1_run.out / "checkpoint-4", out / "checkpoint-4"
    for name in (ADAPTER_WEIGHTS, "ema.safetensors"):
        a, b = _tensors(reference, name), _tensors(resumed, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a = torch.load(reference / "optimizer.bin", weights_only=True)["state"]
    b = torch.load(resumed / "optimizer.bin", weights_only=True)["state"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"]) for k in a)
    assert not (out / "checkpoint-3.tmp").exists()  # stale temporary folders are cleaned up by the next save
    a, b = (
        _tensors(stage1_run.result.pipeline_dir, ADAPTER_WEIGHTS),
        _tensors(result.pipeline_dir, ADAPTER_WEIGHTS),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stage2_trains_controlnet_and_pmam_then_exports_a_working_pipeline(assets, stage1_run):
    from mtcolor import MTColorPipeline

    out = assets.root / "stage2"
    stage1_pipeline = stage1_run.result.pipeline_dir
    result = run_stage(
        stage2,
        stage_args(assets, out, "--max_train_steps", 3, "--gradient_accumulation_steps", 1, "--lr_warmup_steps", 0,
                   "--pretrained_model_name_or_path", stage1_pipeline,
                   "--controlnet_model_name_or_path", assets.controlnet, "--report_to", "tensorboard",
                   "--num_validation_samples", 1, "--validation_steps", 3, "--validation_inference_steps", 2,
                   "--validation_guidance_scale", 1.0, "--mixed_precision", "bf16", "--gradient_checkpointing"),
    )  # fmt: skip
    assert result.global_step == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    pipeline = result.pipeline_dir
    before = _tensors(stage1_pipeline, ADAPTER_WEIGHTS)
    after = _tensors(pipeline, ADAPTER_WEIGHTS)
    for key in before:
        assert torch.equal(before[key], after[key]) != key.startswith("pmams."), key
    controlnet_before = _tensors(assets.controlnet, "diffusion_pytorch_model.safetensors")
    controlnet_after = _tensors(pipeline / "controlnet", "diffusion_pytorch_model.safetensors")
    trained = _tensors(out / "checkpoint-2" / "controlnet", "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in trained.values()} == {torch.float32}  # bf16 autocast, fp32 trainable weights
    assert all(not torch.equal(controlnet_before[k], controlnet_after[k]) for k in controlnet_before)
    unet_before = _tensors(assets.base / "unet", "diffusion_pytorch_model.safetensors")
    unet_after = _tensors(pipeline / "unet", "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(unet_before[k], unet_after[k]) for k in unet_before)

    # validation images went to disk and to tensorboard
    assert (out / "validation" / "step-0000003" / "00.png").is_file()
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    # the model card lists both stages
    card = (pipeline / "README.md").read_text()
    assert "**Stage 1**" in card and "**Stage 2**" in card and "4 optimizer steps" in card
    info = json.loads((pipeline / "training_info.json").read_text())
    assert [s["stage"] for s in info["stages"]] == [1, 2]

    pipe = MTColorPipeline.from_pretrained(pipeline)
    assert pipe.controlnet is not None
    gray = torch.rand(1, 48, 80)
    masks = torch.zeros(1, 48, 80, dtype=torch.bool)
    masks[0, 10:30, 20:60] = True
    image = pipe(gray, masks, ["a red square"], prompt="a photo", num_inference_steps=2, guidance_scale=1.0,
                 working_resolution=64, output_type="pt", generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert image.shape == (1, 3, 48, 80) and torch.isfinite(image).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_cpu_processes(script: str, argv: list) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``training/<script>`` with two CPU processes (gloo); asserts it succeeded."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", REPO / "training" / "configs" / "accelerate_cpu_2proc.yaml",
        "--main_process_port", _free_port(), REPO / "training" / script, *argv,
    ]  # fmt: skip
    done = subprocess.run([str(c) for c in command], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_accelerate_launch_with_two_cpu_processes_matches_one_process(assets, stage1_run):
    """2 processes x batch 1 = 1 process x batch 1 x 2 accumulation steps (the same samples, noise and
    update): only true if the data is sharded by process and the gradients are averaged."""
    out = assets.root / "stage1_ddp"
    argv = stage_args(assets, out, "--adapter_name_or_path", assets.adapter, "--max_train_steps", 2,
                      "--gradient_accumulation_steps", 1)  # fmt: skip
    done = launch_two_cpu_processes("stage1.py", argv)
    assert "Num processes: 2" in done.stderr
    assert "trainable weights identical on all 2 processes" in done.stderr
    marker = json.loads((out / "checkpoint-2" / checkpoints.CHECKPOINT_MARKER).read_text())
    assert marker["num_processes"] == 2
    assert (out / "checkpoint-2" / "random_states_1.pkl").is_file()  # every process saved its RNG state
    two = _tensors(out / "checkpoint-2", ADAPTER_WEIGHTS)
    one = _tensors(stage1_run.out / "checkpoint-2", ADAPTER_WEIGHTS)
    initial = _tensors(assets.adapter, "diffusion_pytorch_model.safetensors")
    assert not torch.equal(two["null_token"], initial["null_token"])
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=2e-6, msg=key)


def test_train_base_writes_an_sd_layout_model_that_stage1_loads(assets):
    from mtcolor.training import train_base
    from mtcolor.training.mtcolor_model import load_base_models

    out = assets.root / "base_model"
    common_argv = ["--train_data", assets.data, "--output_dir", out, "--cache_dir", assets.cache,
                   "--train_batch_size", 2, "--max_train_steps", 2, "--checkpointing_steps", 2,
                   "--report_to", "none", "--num_validation_samples", 1, "--validation_steps", 2,
                   "--validation_inference_steps", 2]  # fmt: skip
    vae = run_stage(train_base, ["--phase", "vae", *common_argv])
    unet = run_stage(train_base, ["--phase", "unet", *common_argv])
    assert vae.global_step == unet.global_step == 2
    assert all(torch.isfinite(torch.tensor(vae.losses + unet.losses)))
    assert (out / "vae_training" / "checkpoint-2").is_dir() and (
        out / "unet_training" / "checkpoint-2"
    ).is_dir()
    model = out / "model"
    args = stage1.parse_args(
        [str(a) for a in ["--pretrained_model_name_or_path", model, "--train_data", assets.data]]
    )
    vae_model, text_encoder, tokenizer, unet_model, scheduler = load_base_models(args)
    # scaling_factor = 1 / std of the latents of the training images (SD-1.5's 0.18215 plays this role)
    pixels = _fixed_batch(assets, 1)["pixel_values"]
    with torch.no_grad():
        std = vae_model.encode(pixels * 2 - 1).latent_dist.mean.std().item()
    assert 0.7 < vae_model.config.scaling_factor * std < 1.4, (vae_model.config.scaling_factor, std)
    assert unet_model.config.cross_attention_dim == text_encoder.config.hidden_size
    assert tokenizer.pad_token_id == 49407 and scheduler.config.prediction_type == "epsilon"
    assert "StableDiffusionPipeline" in (model / "README.md").read_text()

    # --phase decoder: the decoder learns, the encoder (so the latents every later model was trained
    # on) and the scaling factor do not move; the assembled base model gets the new decoder too
    before = _tensors(out / "vae", "diffusion_pytorch_model.safetensors")
    decoder = run_stage(train_base, ["--phase", "decoder", *common_argv, "--learning_rate", "1e-2"])
    after = _tensors(out / "vae", "diffusion_pytorch_model.safetensors")
    assert decoder.global_step == 2 and (out / "decoder_training" / "checkpoint-2").is_dir()
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    trained = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and trained and len(frozen) + len(trained) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert sum(not torch.equal(before[k], after[k]) for k in trained) > len(trained) // 2
    assert _tensors(model / "vae", "diffusion_pytorch_model.safetensors").keys() == after.keys()
    assert all(
        torch.equal(t, after[k])
        for k, t in _tensors(model / "vae", "diffusion_pytorch_model.safetensors").items()
    )
    from diffusers import AutoencoderKL

    assert AutoencoderKL.from_pretrained(out / "vae").config.scaling_factor == vae_model.config.scaling_factor


# ------------------------------------------------------------------------------------------------
# module ablations trained without the module (MT Tables III-IV)
def test_switched_off_modules_are_not_trained(assets):
    from mtcolor.models.adapter import MTColorAdapter

    c = _components(assets, 2)
    c.adapter.register_to_config(use_pmam=False)
    names = {n for n, _ in configure_trainable(MTColorTrainingModel(c.unet, c.adapter, c.controlnet), 2)}
    assert names == {f"controlnet.{n}" for n, _ in c.controlnet.named_parameters()}  # no PMAM

    no_branch = MTColorAdapter.from_unet(c.unet, use_instance_branch=False)
    with pytest.raises(ValueError, match="use_instance_branch=False.*skips stage 1"):
        configure_trainable(MTColorTrainingModel(c.unet, no_branch), 1)


def test_stage2_adapter_config_switches_and_fresh_adapter_checks(assets, capsys):
    from mtcolor.training.mtcolor_model import load_adapter

    argv = [str(a) for a in stage_args(assets, assets.root / "unused")]
    args = stage2.parse_args([*argv, "--adapter_name_or_path", str(assets.adapter),
                              "--adapter_config", '{"use_pmam": false, "attention_mode": "paper"}'])  # fmt: skip
    adapter = stage2.build_components(args).adapter
    assert adapter.config.use_pmam is False and adapter.config.attention_mode == "paper"
    with pytest.raises(ValueError, match=r"changes \['mask_size'\] of a trained adapter"):
        load_adapter(str(assets.adapter), args, {"mask_size": 8})

    for extra, message in [
        (["--fresh_adapter"], "leaves the instance branch untrained"),
        (["--fresh_adapter", "--adapter_name_or_path", str(assets.adapter), "--adapter_config",
          '{"use_instance_branch": false}'], "drop --adapter_name_or_path"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit):
            stage2.parse_args([*argv, *extra])
        assert message in capsys.readouterr().err
    args = stage2.parse_args([*argv, "--fresh_adapter", "--adapter_config", '{"use_instance_branch": false}'])
    c = stage2.build_components(args)
    assert c.adapter.config.use_instance_branch is False and c.sources["adapter"] == "new"
    assert c.previous_stages == []


def test_recipe_trains_each_module_ablation_with_the_module_switched_off(tmp_path):
    """``mtcolor.benchmarks.ablations.mtcolor_ablation_models`` on the shipped model, 2 steps per stage:
    every variant is trained (own stage 1 where the switch changes stage 1), saved with its switch,
    trains only what the variant has, and is reused on a second call."""
    from mtcolor.benchmarks.ablations import MT_RETRAINED, mtcolor_ablation_models
    from mtcolor.training.mtcolor_model import ADAPTER_SWITCHES

    from mtcolor import MTColorPipeline
    from mtcolor.embedded import embedded_model

    model = Path(embedded_model("mtcolor-tiny"))
    steps = {"stage1": 2, "stage2": 2}
    models = mtcolor_ablation_models(tmp_path, model, steps=steps, data_scale=0.0)  # 8 + 8 scenes
    assert [row for row, _ in models] == [row for row, _ in MT_RETRAINED]
    folders = dict(models)
    expected = {
        "w/o PMAM (retrained)": ({"use_pmam": False}, [2]),
        "w/o instance masks (retrained)": ({"use_instance_masks": False}, [1, 2]),
        "w/o instance branch (retrained)": ({"use_instance_branch": False}, [2]),
        "mask mode: paper (retrained)": ({"attention_mode": "paper"}, [1, 2]),
    }
    full = json.loads((model / "adapter" / "config.json").read_text())
    controlnet = sum(
        t.numel() for t in _tensors(model / "controlnet", "diffusion_pytorch_model.safetensors").values()
    )
    for row, (switch, stages) in expected.items():
        folder = folders[row]
        config = json.loads((folder / "adapter" / "config.json").read_text())
        assert {k: config[k] for k in switch} == switch  # saved with the variant ...
        assert all(config[k] == full[k] for k in ADAPTER_SWITCHES if k not in switch)  # ... and nothing else
        info = json.loads((folder / "training_info.json").read_text())["stages"]
        own = [s for s in info if str(tmp_path) in s["data"]["train_data"]]
        assert [s["stage"] for s in own] == stages and all(s["steps"] == 2 for s in own)
        trainable = own[-1]["parameters"]["trainable"]
        if row.startswith("w/o PMAM"):
            assert trainable == controlnet  # the ControlNet only
        else:
            assert trainable > controlnet  # the ControlNet + PMAM
    pipe = MTColorPipeline.from_pretrained(folders["w/o PMAM (retrained)"])
    assert pipe.adapter.config.use_pmam is False  # the variant runs switched off by default
    stamp = (
        (folders["w/o PMAM (retrained)"] / "controlnet" / "diffusion_pytorch_model.safetensors")
        .stat()
        .st_mtime
    )
    assert mtcolor_ablation_models(tmp_path, model, steps=steps, data_scale=0.0) == models  # reused
    assert (
        folders["w/o PMAM (retrained)"] / "controlnet" / "diffusion_pytorch_model.safetensors"
    ).stat().st_mtime == stamp


# ------------------------------------------------------------------------------------------------
# Issue 13: damaged checkpoints, the output-folder lock, trainers outliving their launcher
def test_resume_falls_back_past_a_checkpoint_whose_adapter_was_deleted(assets, stage1_run, caplog):
    """checkpoint-4 lost its adapter/: `latest` warns and resumes from checkpoint-2, and the result is
    still the uninterrupted run's."""
    out = assets.root / "stage1_damaged"
    shutil.copytree(stage1_run.out, out, ignore=shutil.ignore_patterns("pipeline", "logs"))
    shutil.rmtree(out / "checkpoint-4" / "adapter")
    argv = stage_args(assets, out, "--adapter_name_or_path", assets.adapter, "--max_train_steps", 4, "--use_ema",
                      "--resume_from_checkpoint", "latest")  # fmt: skip
    with caplog.at_level("WARNING", logger="mtcolor.training"):
        result = run_stage(stage1, argv)
    assert (
        f"checkpoint {str(out / 'checkpoint-4')!r}: adapter/" in caplog.text and "is missing" in caplog.text
    )
    assert result.global_step == 4 and result.steps_run == 2
    assert result.losses == stage1_run.result.losses[2:]
    checkpoints.verify_checkpoint(out / "checkpoint-4")  # rewritten whole


def test_resume_from_a_damaged_explicit_checkpoint_is_one_line(assets, stage1_run, capsys):
    out = assets.root / "stage1_explicit_damaged"
    shutil.copytree(stage1_run.out, out, ignore=shutil.ignore_patterns("pipeline", "logs"))
    (out / "checkpoint-4" / "random_states_0.pkl").write_bytes(b"")  # accelerate would ignore it silently
    argv = stage_args(assets, out, "--adapter_name_or_path", assets.adapter, "--max_train_steps", 4, "--use_ema",
                      "--resume_from_checkpoint", out / "checkpoint-4")  # fmt: skip
    with pytest.raises(SystemExit) as caught:
        run_stage(stage1, argv)
    assert caught.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert f"checkpoint {str(out / 'checkpoint-4')!r}: random_states_0.pkl has 0 bytes" in line


def test_a_second_run_on_a_folder_held_by_a_live_trainer_refuses_to_start(assets, tmp_path, capsys):
    from test_locks import read_ready, start_holder

    out = tmp_path / "held"
    holder = start_holder(out, "flock")
    try:
        (pid,) = read_ready(holder)
        argv = stage_args(assets, out, "--adapter_name_or_path", assets.adapter, "--max_train_steps", 2)
        with pytest.raises(SystemExit) as caught:
            run_stage(stage1, argv)
    finally:
        holder.communicate("")
    assert caught.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert f"--output_dir {str(out)!r} is in use by process {pid}" in line
    assert not list(out.glob("checkpoint-*"))  # nothing written beside the live run


TRAINER = """
import os, threading
from mtcolor.training import stage1

def blocked(args):  # called after start_run (lock + parent watch): a trainer busy in its first step
    os.write(1, f"ready {os.getpid()}\\n".encode())  # one write, on the launcher's stdout the trainer inherits
    threading.Event().wait()

stage1.build_components = blocked
stage1.main(stage1.parse_args())
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_trainer_exits_when_accelerate_launch_is_killed(assets, tmp_path, sig):
    """Killing `accelerate launch` must not leave the trainer writing checkpoints into --output_dir;
    once it is gone its lock is free for the resumed run."""
    from test_locks import read_ready, running, wait_for_eof

    from mtcolor.locks import lock_folder, unlock_folder

    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", 1, "--num_machines", 1,
               "--mixed_precision", "no", "--dynamo_backend", "no", script,
               *stage_args(assets, out, "--max_train_steps", 2)]  # fmt: skip
    launcher = subprocess.Popen(
        [str(c) for c in command],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,  # the trainer inherits it: its end of file says the trainer is gone
        text=True,
    )
    (trainer,) = read_ready(launcher, timeout=180)
    assert running(trainer)
    launcher.send_signal(sig)
    launcher.wait()
    launcher.stderr.close()
    try:
        assert wait_for_eof(launcher.stdout), f"trainer {trainer} outlived accelerate launch ({sig.name})"
    finally:
        if running(trainer):
            os.kill(trainer, signal.SIGKILL)
        launcher.stdout.close()
    lock = lock_folder(out)
    try:
        assert lock.took_over["pid"] == trainer
    finally:
        unlock_folder(lock)
