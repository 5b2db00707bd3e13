"""The synthetic generator: determinism, exact disjoint masks, known colours, hold-outs, luminance."""

import numpy as np
import pytest
from mtcolor.dataset_builder.synthetic import build_synthetic
from mtcolor.dataset_builder.verification import Verifier

from mtcolor.color_names import ColorNamer, rgb_to_lab
from mtcolor.records import decode_record, encode_record, load_records
from mtcolor.synthetic import SHAPES, SyntheticConfig, generate_scene, scene_seed, stable_lightness


def test_scene_is_deterministic_and_exact():
    config = SyntheticConfig()
    first, again = generate_scene(config, 7), generate_scene(config, 7)
    assert np.array_equal(np.asarray(first["image"]), np.asarray(again["image"]))
    assert np.array_equal(first["masks"], again["masks"]) and first["global_text"] == again["global_text"]
    assert not np.array_equal(np.asarray(generate_scene(config, 8)["image"]), np.asarray(first["image"]))
    namer, verifier = ColorNamer(), Verifier()
    for seed in range(40):
        scene = generate_scene(config, seed)
        masks, image = scene["masks"], np.asarray(scene["image"])
        n = len(scene["instance_texts"])
        assert config.num_objects[0] - 1 <= n <= config.num_objects[1] and masks.shape == (n, 64, 64)
        assert masks.sum(0).max() <= 1  # disjoint: the later-painted object owns overlaps
        assert (masks.sum((1, 2)) >= config.min_visible_pixels).all()
        for mask, text, color, label in zip(
            masks, scene["instance_texts"], scene["instance_colors"], scene["instance_labels"]
        ):
            assert text == f"{'an' if color[0] in 'aeiou' else 'a'} {color} {label}" and label in SHAPES
            measurement = namer.measure(image, mask)
            assert measurement.dominant.category == color and measurement.dominant.share > 0.9
            assert verifier.verify(text, measurement) == "agree"
        assert all(
            f"{c} {k}" in scene["global_text"] or f"{c} {k}s" in scene["global_text"]
            for c, k in zip(scene["instance_colors"], scene["instance_labels"])
        )
        assert scene["global_text"].split(" The image shows ")[0].endswith(".")  # scheme sentence first
    encoded = encode_record(generate_scene(config, 3))
    assert encoded["width"] == 64 and len(encoded["masks"]) == len(encoded["instance_texts"])


def test_paint_order_owns_overlaps():
    # big objects overlap a lot; a mask pixel repainted by a later object would have the wrong colour
    config = SyntheticConfig(num_objects=(4, 4), size_range=(0.6, 0.8), max_occlusion=0.6)
    for seed in range(15):
        scene = generate_scene(config, seed)
        image = np.asarray(scene["image"])
        for k, mask in enumerate(scene["masks"]):
            # every pixel of a mask has exactly that object's colour family: no pixel of it was repainted
            categories = ColorNamer().pixel_categories(image[mask])
            assert (
                np.array(ColorNamer().categories)[categories] == scene["instance_colors"][k]
            ).mean() > 0.95
        assert scene["masks"].sum(0).max() <= 1


def test_holdout_pairs_and_same_kind_scenes():
    pairs = [("red", "circle"), ("blue", "star")]
    config = SyntheticConfig(holdout_pairs=pairs, same_kind_prob=0.5)
    same_kind = 0
    for seed in range(60):
        train = generate_scene(config, seed)
        present = set(zip(train["instance_colors"], train["instance_labels"]))
        assert not present & set(pairs)
        labels = train["instance_labels"]
        for label in set(labels):
            colors = [c for c, k in zip(train["instance_colors"], labels) if k == label]
            if len(colors) >= 2:
                same_kind += 1
        test = generate_scene(config, seed, split="test")
        assert (test["instance_colors"][0], test["instance_labels"][0]) in pairs
    assert same_kind >= 10
    two = [generate_scene(config, s) for s in range(60)]
    assert any(
        len(set(s["instance_labels"][:2])) == 1 and len(set(s["instance_colors"][:2])) == 2 for s in two
    )
    with pytest.raises(ValueError, match="holdout pair"):
        SyntheticConfig(holdout_pairs=[("red", "hexagon")])


def test_decorrelated_luminance():
    def lightness_by_color(config):
        values = {}
        for seed in range(80):
            scene = generate_scene(config, seed)
            lab = rgb_to_lab(np.asarray(scene["image"]))
            for mask, color in zip(scene["masks"], scene["instance_colors"]):
                values.setdefault(color, []).append(float(lab[mask][:, 0].mean()))
        return values

    base = dict(texture_prob=0.0, colors=("red", "green", "blue", "purple", "orange"))
    fixed = lightness_by_color(SyntheticConfig(**base))
    free = lightness_by_color(SyntheticConfig(decorrelate_luminance=True, **base))
    for color in base["colors"]:
        assert np.std(fixed[color]) < 0.5  # each colour always has its prototype's L
        assert np.std(free[color]) > 5  # ... unless decorrelated
        lo, hi = stable_lightness(color)
        assert lo - 1 <= min(free[color]) and max(free[color]) <= hi + 1
    # with decorrelation, L does not identify the colour: the L ranges of the colours overlap
    ranges = [(min(v), max(v)) for v in free.values()]
    assert max(r[0] for r in ranges) < min(r[1] for r in ranges)


def test_build_synthetic_splits_and_card(tmp_path):
    config = SyntheticConfig(image_size=32, holdout_pairs=[("red", "circle")])
    report = build_synthetic(tmp_path, 10, config, seed=1, split="train", shard_size=4)
    assert report.images == 10 and report.units_written == 3
    build_synthetic(tmp_path, 4, config, seed=1, split="test", shard_size=4)
    train, test = load_records(tmp_path, split="train"), load_records(tmp_path, split="test")
    assert len(train) == 10 and len(test) == 4
    assert all(
        ("red", "circle") not in zip(c, k) for c, k in zip(train["instance_colors"], train["instance_labels"])
    )
    assert all(
        ("red", "circle") in zip(c, k) for c, k in zip(test["instance_colors"], test["instance_labels"])
    )
    record = decode_record(train[0])
    expected = generate_scene(config, scene_seed(1, "train", 0))
    assert np.array_equal(record.masks.numpy(), expected["masks"])
    assert np.array_equal(
        (record.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), np.asarray(expected["image"])
    )
    card = (tmp_path / "README.md").read_text()
    assert "split: train" in card and "split: test" in card and "num_examples: 10" in card
    assert (
        build_synthetic(tmp_path, 10, config, seed=1, split="train", shard_size=4).units_written == 0
    )  # resumed
