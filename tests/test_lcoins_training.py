"""training/train_lcoins.py: arguments, data formats, smoke training, checkpoints and resume."""

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate.utils import set_seed
from mtcolor.pipelines.pipeline_lcoins import tokenize_captions
from mtcolor.training import loop
from mtcolor.training.checkpoints import CHECKPOINT_MARKER, list_checkpoints, resolve_checkpoint
from mtcolor.training.lcoins_data import collate, load_caption_dataset
from mtcolor.training.train_lcoins import build_components, main, parse_args
from test_training import launch_two_cpu_processes

from mtcolor import LCoInsPipeline
from mtcolor.color import rgb_to_lab
from mtcolor.models.lcoins_losses import smooth_l1_loss

COLORS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 190, 40), "yellow": (240, 225, 40)}


def write_pairs(root, split="train", count=8, seed=0):
    """The caption-only L-CoIns layout: <root>/cap-img-pairs_<split>.json + <root>/<split>/*.png."""
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        back, front = rng.choice(list(COLORS), 2, replace=False)
        image = np.zeros((40, 48, 3), np.uint8)
        image[:] = COLORS[back]
        image[8 + i % 4 : 30, 10:36] = COLORS[front]
        PIL.Image.fromarray(image).save(root / split / f"{i}.png")
        pairs.append([f"{i}.png", f"a {front} box on a {back} wall"])
    (root / f"cap-img-pairs_{split}.json").write_text(json.dumps(pairs))
    return root


def tiny_args(data, out, *extra):
    return parse_args(
        [
            "--train_data", str(data), "--output_dir", str(out), "--model_config", "tiny",
            "--text_encoder_config", "tiny", "--train_batch_size", "2", "--learning_rate", "2e-3",
            "--report_to", "none", "--seed", "0", *extra,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def pairs_data(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs"))


def fixed_batch_loss(model, text_encoder, tokenizer, batch) -> float:
    """Smooth-L1 (LC eq. 13) on a fixed batch without augmentation (deterministic)."""
    model.eval()
    text_encoder.eval()
    with torch.no_grad():
        lab = rgb_to_lab(batch["pixel_values"])
        encoding, _ = tokenize_captions(tokenizer, batch["caption"], 64)
        hidden = text_encoder(**encoding).last_hidden_state
        ab = model(lab[:, :1], hidden, encoding["attention_mask"]).ab
        return smooth_l1_loss(ab / model.config.ab_norm, lab[:, 1:] / model.config.ab_norm).item()


def test_config_file_and_flag_validation(tmp_path, pairs_data):
    config = tmp_path / "c.yaml"
    config.write_text(
        "learning_rate: 3.0e-4\nmodel_config: {image_size: 32, patch_size: 8}\nno_counter_color_loss: true\n"
    )
    args = parse_args(["--config", str(config), "--train_data", str(pairs_data), "--learning_rate", "1e-3"])
    assert args.learning_rate == 1e-3 and args.no_counter_color_loss and args.model_config["patch_size"] == 8
    assert (args.adam_beta1, args.adam_beta2) == (0.99, 0.999) and args.beta == -1e-4  # LC section 5
    (tmp_path / "bad.yaml").write_text("learnig_rate: 1\n")
    with pytest.raises(ValueError, match="learnig_rate"):
        parse_args(["--config", str(tmp_path / "bad.yaml"), "--train_data", "x"])
    with pytest.raises(SystemExit):
        parse_args(["--train_data", "x", "--max_train_steps", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--output_dir", "x"])  # no --train_data


def test_pairs_format_and_errors(tmp_path, pairs_data):
    dataset = load_caption_dataset(pairs_data, image_size=32)
    sample = dataset[0]
    assert sample["pixel_values"].shape == (3, 32, 32) and sample["caption"].startswith("a ")
    assert collate([dataset[0], dataset[1]])["pixel_values"].shape == (2, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="cap-img-pairs_val.json"):
        load_caption_dataset(pairs_data, 32, split="val", data_format="pairs")
    (tmp_path / "train").mkdir()
    (tmp_path / "cap-img-pairs_train.json").write_text(json.dumps([["missing.png", "a red car"]]))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_caption_dataset(tmp_path, 32)


@pytest.fixture(scope="module")
def records_data(tmp_path_factory):
    """dataset_builder's record format (synthetic scenes with exact masks and texts)."""
    from mtcolor.dataset_builder.synthetic import SyntheticConfig, build_synthetic

    root = tmp_path_factory.mktemp("records")
    build_synthetic(root, 8, SyntheticConfig(image_size=32), seed=0)
    return root


def test_records_format_uses_the_global_text_as_caption(records_data):
    from mtcolor.records import load_records

    rows = load_records(records_data, split="train")
    dataset = load_caption_dataset(records_data, image_size=32, data_format="auto")
    assert len(dataset) == len(rows) == 8
    sample = dataset[3]
    assert sample["caption"] == rows[3]["global_text"] and sample["pixel_values"].shape == (3, 32, 32)


def test_smoke_training_lowers_the_loss_and_saves_the_pipeline(tmp_path, records_data):
    args = tiny_args(records_data, tmp_path / "out", "--max_train_steps", "3", "--gradient_accumulation_steps", "2",
                     "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", "--validation_steps", "2",
                     "--num_validation_samples", "2")  # fmt: skip
    set_seed(0)
    model, text_encoder, tokenizer = build_components(args)
    batch = collate([load_caption_dataset(records_data, 32)[i] for i in range(4)])
    before = fixed_batch_loss(model, text_encoder, tokenizer, batch)

    folder = main(args)

    pipe = LCoInsPipeline.from_pretrained(folder)
    after = fixed_batch_loss(pipe.model, pipe.text_encoder, pipe.tokenizer, batch)
    assert after < before
    assert [p.name for p in list_checkpoints(folder)] == ["checkpoint-2", "checkpoint-3"]  # limit 2
    assert not list(folder.glob("checkpoint-*.tmp"))
    assert (folder / "checkpoint-3" / "model" / "config.json").is_file()
    assert len(list((folder / "validation" / "step-2").glob("*.png"))) == 2
    card = (folder / "README.md").read_text()
    assert "library_name: diffusers" in card and "## Training" in card and "PSNR" in card


def test_resume_reproduces_an_uninterrupted_run(tmp_path, pairs_data):
    # pairs data: 8 images, batch 2 -> 4 steps per epoch; the resume point (step 2) is mid-epoch
    common = ["--checkpointing_steps", "2", "--num_validation_samples", "0"]
    straight = main(tiny_args(pairs_data, tmp_path / "a", "--max_train_steps", "4", *common))
    main(tiny_args(pairs_data, tmp_path / "b", "--max_train_steps", "2", *common))
    # a crash while writing checkpoint 3 leaves only a temporary folder: `latest` must skip it
    broken = tmp_path / "b" / "checkpoint-3.tmp"
    broken.mkdir()
    (broken / "optimizer.bin").write_bytes(b"half")
    assert resolve_checkpoint("latest", tmp_path / "b").name == "checkpoint-2"
    resume = ["--max_train_steps", "4", "--resume_from_checkpoint", "latest"]
    resumed = main(tiny_args(pairs_data, tmp_path / "b", *resume, *common))
    a = LCoInsPipeline.from_pretrained(straight).model.state_dict()
    b = LCoInsPipeline.from_pretrained(resumed).model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=f"parameter {key} differs after resume")


def test_ablation_flags_configure_the_model(tmp_path, pairs_data):
    args = tiny_args(pairs_data, tmp_path, "--no_group_embedding")
    model, _, _ = build_components(args)
    assert not model.config.use_group_tokens and not model.config.use_grouping_attention
    args = tiny_args(pairs_data, tmp_path, "--no_grouping_attention")
    model, text_encoder, _ = build_components(args)
    assert model.config.use_group_tokens and not model.config.use_grouping_attention
    assert model.config.text_embed_dim == text_encoder.config.hidden_size == 32


# ------------------------------------------------------------------------------------------------
# Issue 15: L-CoIns on the shared training loop (process count, epochs, exact resume)
def _weights(folder) -> dict:
    pipe = LCoInsPipeline.from_pretrained(folder)
    return {
        **{f"model.{k}": v for k, v in pipe.model.state_dict().items()},
        **{f"text_encoder.{k}": v for k, v in pipe.text_encoder.state_dict().items()},
    }


def test_two_processes_train_the_same_epochs_and_weights_as_one(tmp_path, pairs_data):
    """8 pairs, batch 2, 1 epoch: 2 processes x batch 2 = 1 process x batch 2 x 2 accumulation steps.
    Both run 2 optimizer steps (one pass over the data, not one per process), draw the same
    augmentation, pseudo captions and dropout for each sample, and end with the same weights."""
    flags = ["--num_train_epochs", "1", "--checkpointing_steps", "1", "--num_validation_samples", "0"]
    one = main(tiny_args(pairs_data, tmp_path / "one", *flags, "--gradient_accumulation_steps", "2"))
    two = tmp_path / "two"
    argv = ["--train_data", pairs_data, "--output_dir", two, "--model_config", "tiny", "--text_encoder_config", "tiny",
            "--train_batch_size", 2, "--learning_rate", "2e-3", "--report_to", "none", "--seed", 0, *flags]  # fmt: skip
    done = launch_two_cpu_processes("train_lcoins.py", argv)
    assert "trainable weights identical on all 2 processes" in done.stderr
    steps = ["checkpoint-1", "checkpoint-2"]
    assert [p.name for p in list_checkpoints(one)] == [p.name for p in list_checkpoints(two)] == steps
    marker = json.loads((two / "checkpoint-2" / CHECKPOINT_MARKER).read_text())
    assert (marker["num_processes"], marker["epoch"], marker["step"]) == (2, 0, 2)
    assert "2 optimisation steps" in (two / "README.md").read_text()
    a, b = _weights(one), _weights(two)
    set_seed(0)
    initial, _, _ = build_components(tiny_args(pairs_data, tmp_path / "unused"))
    assert not torch.equal(
        a["model.text_proj.weight"], initial.state_dict()["text_proj.weight"]
    )  # it trained
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=2e-6, msg=key)


def _kill_after_checkpoint(monkeypatch, step: int):
    """Make the training loop end (raise ``Killed``) right after it wrote checkpoint ``step``."""
    real_save = loop.save_checkpoint

    def save_then_die(accelerator, output_dir, saved_step, *args, **kwargs):
        path = real_save(accelerator, output_dir, saved_step, *args, **kwargs)
        if saved_step == step:
            raise Killed(path)
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)


class Killed(Exception):
    pass


def _checkpoint_tensors(folder) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(Path(folder).rglob("*.safetensors")):
        for key, value in load_file(str(path)).items():
            tensors[f"{path.relative_to(folder)}:{key}"] = value
    optimizer = torch.load(Path(folder) / "optimizer.bin", weights_only=True)["state"]
    for index, state in optimizer.items():
        for key, value in state.items():
            tensors[f"optimizer:{index}:{key}"] = torch.as_tensor(value)
    return tensors


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, pairs_data):
    """6 steps (4 per epoch: the resume points are mid-epoch and across an epoch), a trained text
    encoder (dropout on), augmentation, pseudo captions, validation every 2 steps."""
    out = tmp_path_factory.mktemp("lcoins_uninterrupted")
    main(tiny_args(pairs_data, out, *RESUME_FLAGS))
    return out


RESUME_FLAGS = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--validation_steps", "2",
                "--num_validation_samples", "1"]  # fmt: skip


def test_kill_and_resume_is_bit_identical(tmp_path, pairs_data, uninterrupted, monkeypatch):
    out = tmp_path / "killed"
    _kill_after_checkpoint(monkeypatch, 2)
    with pytest.raises(Killed):
        main(tiny_args(pairs_data, out, *RESUME_FLAGS))
    _kill_after_checkpoint(monkeypatch, 4)
    with pytest.raises(Killed):
        main(tiny_args(pairs_data, out, *RESUME_FLAGS, "--resume_from_checkpoint", "latest"))
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    main(tiny_args(pairs_data, out, *RESUME_FLAGS, "--resume_from_checkpoint", "latest"))
    for step in (2, 4, 6):
        _assert_identical(
            _checkpoint_tensors(uninterrupted / f"checkpoint-{step}"),
            _checkpoint_tensors(out / f"checkpoint-{step}"),
        )
    _assert_identical(_weights(uninterrupted), _weights(out))


def test_resume_takes_the_step_from_the_checkpoint_marker(tmp_path, pairs_data, uninterrupted):
    """A checkpoint folder renamed by hand (checkpoint-2 -> checkpoint-5) still resumes at step 2."""
    out = tmp_path / "renamed"
    out.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", out / "checkpoint-5")
    main(tiny_args(pairs_data, out, *RESUME_FLAGS, "--resume_from_checkpoint", "latest"))
    _assert_identical(_weights(uninterrupted), _weights(out))


@pytest.mark.parametrize(
    "changed, written",
    [(["--beta=-1e-3"], "loss="), (["--no_counter_color_loss"], "loss="), (["--freeze_text_encoder"], "freeze_text_encoder=")],
)  # fmt: skip
def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, pairs_data, uninterrupted, changed, written):
    out = tmp_path / "changed"
    out.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", out / "checkpoint-2")
    with pytest.raises(ValueError, match=f"checkpoint-2 was written with {written}"):
        main(tiny_args(pairs_data, out, *RESUME_FLAGS, *changed, "--resume_from_checkpoint", "latest"))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]  # nothing trained from it


@pytest.mark.parametrize(
    "ablation",
    [["--no_counter_color_loss"], ["--no_counter_color_loss", "--no_group_embedding"], ["--no_luminance_augmentation"]],
)  # fmt: skip
def test_ablations_train_every_parameter_they_use(tmp_path, pairs_data, ablation):
    """The shared loop checks after the first backward that every trained parameter got a gradient (DDP
    needs it): the parts an ablation does not use (the counter-colour heads, BERT's pooler) are frozen."""
    folder = main(
        tiny_args(pairs_data, tmp_path, "--max_train_steps", "1", "--num_validation_samples", "0", *ablation)
    )
    model = LCoInsPipeline.from_pretrained(folder).model
    assert model.config.use_group_tokens == ("--no_group_embedding" not in ablation)
