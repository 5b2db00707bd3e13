"""MT-Color training data, arguments, configs and checkpoint bookkeeping (no models, seconds)."""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mtcolor.training import arguments, checkpoints
from mtcolor.training.mtcolor_data import AugmentConfig, InstanceColorizationDataset, collate, drop_instances

from mtcolor.records import encode_record

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def _row(index: int, size: int = 64, boxes=((8, 8, 24, 24), (30, 34, 60, 62), (0, 40, 10, 64))) -> dict:
    """A record whose red channel encodes the instance label (label k -> red 40 k), so alignment of
    image and label map can be checked pixel by pixel after any crop / flip."""
    label = np.zeros((size, size), dtype=np.int64)
    masks = []
    for k, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        mask = np.zeros((size, size), dtype=bool)
        mask[y0:y1, x0:x1] = True
        masks.append(mask)
        label[mask & (label == 0)] = k
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[..., 0] = label * 40
    image[..., 1] = 100 + index  # the id is visible in the green channel
    n = len(boxes)
    return encode_record(
        {
            "id": f"rec-{index}",
            "image": image,
            "masks": np.stack(masks),
            "instance_texts": [f"text {k}" for k in range(1, n + 1)],
            "instance_labels": ["box"] * n,
            "instance_colors": [""] * n,
            "global_text": f"global {index}",
            "source": "test",
            "instance_captioners": ["test"] * n,
            "global_captioner": "test",
            "verification": ["unknown"] * n,
        }
    )


def test_crops_and_flips_keep_masks_aligned():
    rows = [_row(i) for i in range(3)]
    config = AugmentConfig(resolution=32, crop_scale=(0.5, 0.5), random_flip=0.5, instance_dropout=0.0)
    dataset = InstanceColorizationDataset(rows, config, seed=3)
    unflipped = InstanceColorizationDataset(
        rows, AugmentConfig(**{**vars(config), "random_flip": 0.0}), seed=3
    )
    flipped = 0
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            red = (sample["pixel_values"][0] * 255).round().long()  # crop side 32 = resolution: no resampling
            original = torch.div(red, 40, rounding_mode="floor")  # the label each pixel had in the record
            label_map = sample["label_map"]
            assert label_map.shape == (32, 32) and sample["pixel_values"].shape == (3, 32, 32)
            # labels are renumbered 1..n' in their original order; texts follow them
            kept = sorted(set(original.unique().tolist()) - {0})
            assert sample["instance_texts"] == [f"text {k}" for k in kept]
            expected = torch.zeros_like(original)
            for new, old in enumerate(kept, start=1):
                expected[original == old] = new
            assert torch.equal(label_map, expected)
            unflipped.set_epoch(epoch)
            reference = unflipped[index]  # same crop (drawn first), no flip
            if not torch.equal(reference["label_map"], label_map):
                assert torch.equal(reference["label_map"].flip(-1), label_map)
                flipped += 1
    assert 0 < flipped < 12


def test_resize_uses_majority_vote_and_drops_vanished_instances():
    # instance 3 is a 10x24 strip in a corner: cropping the centre 32x32 removes it
    rows = [_row(0)]
    config = AugmentConfig(resolution=16, crop_scale=(0.5, 0.5), center_crop=True, instance_dropout=0.0)
    sample = InstanceColorizationDataset(rows, config)[0]
    assert sample["instance_texts"] == ["text 1", "text 2"]
    assert set(sample["label_map"].unique().tolist()) == {0, 1, 2}
    assert sample["label_map"].shape == (16, 16)


def test_drop_instances_renumbers_and_keeps_largest():
    label_map = torch.tensor([[1, 1, 1, 0], [3, 3, 0, 0], [4, 0, 0, 0]])
    texts = ["one", "two", "three", "four"]  # "two" has no pixel left
    out, kept = drop_instances(label_map, texts)
    assert kept == ["one", "three", "four"]
    assert out.tolist() == [[1, 1, 1, 0], [2, 2, 0, 0], [3, 0, 0, 0]]
    out, kept = drop_instances(label_map, texts, min_pixels=2)
    assert kept == ["one", "three"] and out.tolist() == [[1, 1, 1, 0], [2, 2, 0, 0], [0, 0, 0, 0]]
    out, kept = drop_instances(label_map, texts, max_instances=1)
    assert kept == ["one"] and int(out.max()) == 1 and int((out == 1).sum()) == 3
    with pytest.raises(ValueError, match="label 4 but only 2 instance texts"):
        drop_instances(label_map, texts[:2])


def test_null_condition_and_prompt_dropout_rates():
    rows = [_row(i) for i in range(4)]
    config = AugmentConfig(resolution=32, instance_dropout=0.5, prompt_dropout=0.25)
    dataset = InstanceColorizationDataset(rows, config, seed=0)
    null, empty, total = 0, 0, 0
    for epoch in range(40):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            no_instances = not sample["instance_texts"]
            assert no_instances == bool((sample["label_map"] == 0).all())
            null += no_instances
            empty += sample["prompt"] == ""
            total += 1
    assert 0.4 < null / total < 0.6
    assert 0.15 < empty / total < 0.35
    always = InstanceColorizationDataset(
        rows, AugmentConfig(resolution=32, instance_dropout=0.0, prompt_dropout=0.0)
    )
    assert all(always[i]["instance_texts"] and always[i]["prompt"] for i in range(4))


def test_samples_are_a_function_of_seed_epoch_and_index():
    rows = [_row(i) for i in range(2)]
    config = AugmentConfig(resolution=24, crop_scale=(0.4, 0.9), random_flip=0.5)
    a = InstanceColorizationDataset(rows, config, seed=1)
    b = InstanceColorizationDataset(rows, config, seed=1)
    a.set_epoch(5)
    b.set_epoch(5)
    assert torch.equal(a[1]["pixel_values"], b[1]["pixel_values"])
    assert torch.equal(a[1]["label_map"], b[1]["label_map"])
    b.set_epoch(6)
    assert not all(torch.equal(a[i]["pixel_values"], b[i]["pixel_values"]) for i in range(2))


def test_corrupt_records_are_skipped_with_a_count(caplog):
    rows = [_row(0), _row(1), _row(2)]
    rows[1] = {**rows[1], "image": {"bytes": b"not an image", "path": None}}
    dataset = InstanceColorizationDataset(rows, AugmentConfig(resolution=32, instance_dropout=0.0), seed=0)
    with caplog.at_level(logging.WARNING, logger="mtcolor.training.mtcolor_data"):
        sample = dataset[1]
    assert sample["id"] == "rec-2"  # the next readable record takes its place
    assert dataset.skipped == 1
    assert "skipping corrupt record #1" in caplog.text and "1 corrupt record(s)" in caplog.text
    batch = collate([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["label_map"].dtype == torch.int64
    assert dataset.skipped == 2
    with pytest.raises(RuntimeError, match="unreadable"):
        InstanceColorizationDataset([rows[1]] * 3, AugmentConfig(resolution=32), max_skips=2)[0]


def test_augment_config_rejects_bad_values():
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="instance_dropout=1.5"):
        AugmentConfig(instance_dropout=1.5)


def test_latest_checkpoint_ignores_partial_ones(tmp_path):
    def make(name, complete=True):
        folder = tmp_path / name
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "weights.safetensors").write_bytes(b"weights")
        if complete:
            marker = {"step": 0, "files": checkpoints.checkpoint_manifest(folder)}
            (folder / checkpoints.CHECKPOINT_MARKER).write_text(json.dumps(marker))
        return folder

    make("checkpoint-2")
    newest = make("checkpoint-10")
    make("checkpoint-12.tmp")  # killed during the save, never renamed
    make("checkpoint-14.tmp", complete=True)  # marker written, killed before the rename
    make("checkpoint-20", complete=False)  # not written by the trainer
    make("other-30")
    assert checkpoints.list_checkpoints(tmp_path) == [tmp_path / "checkpoint-2", newest]
    assert checkpoints.resolve_checkpoint("latest", tmp_path) == newest
    assert checkpoints.resolve_checkpoint("latest", tmp_path / "missing") is None
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        checkpoints.resolve_checkpoint(str(tmp_path / "checkpoint-20"), tmp_path)


def test_parse_args_config_file_and_validation(tmp_path):
    from mtcolor.training import stage1, stage2

    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "pretrained_model_name_or_path": "base",
                "train_data": "data",
                "learning_rate": 1e-4,
                "adapter_config": {"mask_size": 32},
            }
        )
    )
    args = stage1.parse_args(["--config", str(config), "--learning_rate", "2e-5"])
    assert args.learning_rate == 2e-5  # the command line wins
    assert args.adapter_config == {"mask_size": 32}
    assert (args.lr_warmup_steps, args.lr_scheduler, args.instance_dropout) == (
        500,
        "constant_with_warmup",
        0.5,
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 1.0\n")
    with pytest.raises(ValueError, match="unknown keys \\['learning_rat'\\]"):
        stage1.parse_args(["--config", str(bad)])
    base = ["--pretrained_model_name_or_path", "base", "--train_data", "data"]
    with pytest.raises(SystemExit):
        stage1.parse_args([*base, "--resolution", "100"])
    with pytest.raises(SystemExit):
        stage1.parse_args(["--train_data", "data"])
    with pytest.raises(SystemExit):  # stage 2 needs the stage-1 adapter
        stage2.parse_args(["--pretrained_model_name_or_path", str(tmp_path), "--train_data", "data"])


def test_shipped_configs_parse():
    accelerate_configs = {p.name: yaml.safe_load(p.read_text()) for p in CONFIGS.glob("accelerate_*.yaml")}
    assert {"accelerate_1gpu.yaml", "accelerate_4gpu_ddp.yaml", "accelerate_deepspeed_zero2.yaml"} <= set(
        accelerate_configs
    )
    assert accelerate_configs["accelerate_4gpu_ddp.yaml"]["num_processes"] == 4
    assert accelerate_configs["accelerate_4gpu_ddp.yaml"]["distributed_type"] == "MULTI_GPU"
    zero = accelerate_configs["accelerate_deepspeed_zero2.yaml"]
    assert zero["distributed_type"] == "DEEPSPEED" and zero["deepspeed_config"]["zero_stage"] == 2
    from mtcolor.training import stage1, stage2

    for path in sorted(CONFIGS.glob("stage[12]_*.yaml")):
        module = stage1 if path.name.startswith("stage1") else stage2
        values = arguments.load_config_file(str(path), module.build_parser())
        assert values, path


def test_save_checkpoint_is_atomic_and_keeps_the_limit(tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        accelerator = Accelerator(cpu=True)
        model = accelerator.prepare(torch.nn.Linear(2, 2))
        (tmp_path / "checkpoint-0.tmp").mkdir()  # left by a kill during an earlier save
        for step in (1, 2, 3):
            with torch.no_grad():
                model.weight.fill_(step)
            checkpoints.save_checkpoint(accelerator, tmp_path, step, 2, {"stage": 1})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]
        marker = json.loads((tmp_path / "checkpoint-3" / checkpoints.CHECKPOINT_MARKER).read_text())
        files = marker.pop("files")  # size + sha256 of every file, verified on resume
        assert marker == {"stage": 1, "step": 3}
        for name, record in files.items():
            data = (tmp_path / "checkpoint-3" / name).read_bytes()
            assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert files
        with torch.no_grad():
            model.weight.zero_()
        accelerator.load_state(str(checkpoints.resolve_checkpoint("latest", tmp_path)))
        assert bool((model.weight == 3).all())
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
