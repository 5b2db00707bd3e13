"""``mtcolor evaluate`` end to end on a small generated folder with dataset-builder records."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mtcolor.cli import evaluate as evaluate_cli
from mtcolor.cli import main
from mtcolor.lexicon import default_lexicon
from mtcolor.metrics import WEIGHT_FILES
from mtcolor.metrics.evaluation import METRICS

SCENES = [("red", "blue"), ("yellow", "green"), ("purple", "orange")]
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def run_evaluate(*options: tuple[str, ...]) -> int:
    """``mtcolor evaluate`` with the given options (a flag and its value, or a single argument) and
    ``--no-progress``; returns the exit code."""
    return main(["evaluate", *(item for option in options for item in option), "--no-progress"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """gt/ (128 px scenes), good/ (the scenes at 96 px), bad/ (instance 1 repainted green), records/, clip/."""
    import open_clip
    from datasets import Dataset
    from safetensors.torch import save_file

    from mtcolor.records import FEATURES, encode_record

    root = tmp_path_factory.mktemp("evaluate")
    for name in ("gt", "good", "bad"):
        (root / name).mkdir()
    lexicon = default_lexicon()
    rgb = {
        w: lexicon.rgb[lexicon.words.index(w)].numpy()
        for w in ("red", "blue", "yellow", "green", "purple", "orange")
    }
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    rows = []
    for i, (first, second) in enumerate(SCENES):
        box = np.zeros((128, 128), bool)
        box[20:70, 15:60] = True
        ball = (yy - 85) ** 2 + (xx - 85) ** 2 < 28**2
        image = np.ones((128, 128, 3)) * np.array([0.75, 0.75, 0.72])
        image[box], image[ball] = rgb[first], rgb[second]
        image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)  # texture for NIQE
        pixels = (image * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(root / "gt" / f"scene{i}.png")
        Image.fromarray(pixels).resize((96, 96), Image.BILINEAR).save(root / "good" / f"scene{i}.png")
        bad = image.copy()
        bad[box] = rgb["green"]
        Image.fromarray((bad * 255).round().astype(np.uint8)).save(root / "bad" / f"scene{i}.png")
        row = {
            "id": f"scene{i}",
            "image": pixels,
            "masks": np.stack([box, ball]),
            "instance_texts": [f"a {first} box", f"a {second} ball"],
            "instance_labels": ["box", "ball"],
            "instance_colors": [first, second],
            "global_text": f"a {first} box and a {second} ball on a gray table",
            "source": "test",
            "instance_captioners": ["test", "test"],
            "global_captioner": "test",
            "verification": ["agree", "agree"],
        }
        rows.append(encode_record(row))
    (root / "records" / "data").mkdir(parents=True)
    Dataset.from_list(rows, features=FEATURES).to_parquet(
        str(root / "records" / "data" / "test-00000-of-00001.parquet")
    )
    (root / "clip").mkdir()
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    (root / "clip" / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": preprocess})
    )
    torch.manual_seed(0)
    save_file(open_clip.CLIP(**TINY_CLIP).state_dict(), str(root / "clip" / "open_clip_model.safetensors"))
    return root


@pytest.fixture(autouse=True)
def _no_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("MTCOLOR_WEIGHTS_DIR", raising=False)


def test_evaluate_writes_the_table(folder, capsys):
    out = folder / "out"
    code = run_evaluate(
        ("--pred", f"good={folder / 'good'}"),
        ("--pred", str(folder / "bad")),
        ("--gt", str(folder / "gt")),
        ("--records", str(folder / "records")),
        ("--clip-weights", str(folder / "clip")),
        ("--out", str(out)),
    )
    assert code == 0
    printed = capsys.readouterr().out
    table = (out / "metrics.md").read_text()
    assert table in printed
    header = table.splitlines()[0]
    for column in ("Colorfulness↑", "PSNR↑", "SSIM↑", "FID↓", "NIQE↓", "MUSIQ↑", "MANIQA↑", "TOPIQ NR↑"):
        assert column in header
    assert (
        header.index("Colorfulness↑")
        < header.index("PSNR↑")
        < header.index("TOPIQ NR↑")
        < header.index("Resolution")
    )
    report = json.loads((out / "metrics.json").read_text())  # strict JSON (no NaN tokens)
    good, bad = report["methods"]
    assert (good["name"], bad["name"]) == ("good", "bad")
    assert (good["resolution"], bad["resolution"]) == (
        "96 × 96",
        "128 × 128",
    )  # GT resized to each prediction
    assert good["images"] == bad["images"] == 3
    for key in ("colorfulness", "psnr", "ssim", "niqe", "clip_score", "instance_clip_score"):
        assert key in good["metrics"] and key in bad["metrics"], key
    assert good["metrics"]["psnr"] > 30 > bad["metrics"]["psnr"]
    assert good["metrics"]["adherence_accuracy"] == 1.0 and bad["metrics"]["adherence_accuracy"] == 0.5
    assert good["counts"]["instance_clip_score"] == 6 and good["counts"]["adherence"] == 6
    assert 0 <= good["metrics"]["bleeding_leak"] < 0.2 and "bleeding_share" in good["metrics"]
    for name in ("musiq", "maniqa", "topiq_nr", "lpips", "fid"):  # no weights here: skipped, naming the file
        assert WEIGHT_FILES[name].filename in good["skipped"][name]
        assert f"`{name}` (all methods)" in table
    assert len(report["per_image"]["good"]) == 3 and report["instances"]["bad"]["adherence"]


def test_evaluate_resize_to_gt_and_records_as_ground_truth(folder):
    from mtcolor.metrics.evaluation import EvaluationSettings, evaluate

    settings = EvaluationSettings(metrics=("psnr", "ssim", "adherence"), resize="gt", progress=False)
    report = evaluate({"good": folder / "good"}, None, folder / "records", settings=settings)
    method = report["methods"][0]
    assert method["resolution"] == "128 × 128"  # prediction upsampled to the records' images
    assert method["metrics"]["psnr"] > 25 and method["metrics"]["adherence_accuracy"] == 1.0
    assert set(method["metrics"]) == {"psnr", "ssim", "adherence_accuracy", "adherence_distance"}


def test_evaluate_errors(folder, capsys):
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(folder / "good"),
                "--metrics",
                "psnr,sharpness",
                "--gt",
                str(folder / "gt"),
            ]
        )
        == 2
    )
    assert "unknown metrics ['sharpness']" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(folder / "clip"), "--gt", str(folder / "gt")]) == 2
    assert "no prediction" in capsys.readouterr().err
    assert evaluate_cli.METRICS == METRICS  # the parser's copy of the metric names


def test_corrupt_prediction_file_is_one_line_naming_it(folder, tmp_path, capsys):
    """One truncated prediction among good ones: exit 2 naming the file, no traceback."""
    import shutil

    pred = tmp_path / "pred"
    shutil.copytree(folder / "good", pred)
    data = (pred / "scene1.png").read_bytes()
    (pred / "scene1.png").write_bytes(data[: len(data) // 2])  # truncated mid-IDAT
    (pred / "scene2.png").write_bytes(b"not an image at all")
    code = run_evaluate(
        ("--pred", f"ours={pred}"),
        ("--gt", str(folder / "gt")),
        ("--metrics", "psnr"),
        ("--out", str(tmp_path / "eval")),
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"--pred ours={pred}: unreadable image file(s): scene1.png (" in line and "scene2.png (" in line
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--tolerance", "nan", "--tolerance is nan"),
        ("--tolerance", "inf", "--tolerance is inf"),
        ("--band", "0", "--band is 0"),
    ],
)
def test_non_finite_numbers_are_refused(folder, tmp_path, capsys, flag, value, message):
    code = run_evaluate(
        ("--pred", str(folder / "good")),
        ("--gt", str(folder / "gt")),
        ("--metrics", "adherence"),
        ("--records", str(folder / "records")),
        (f"{flag}={value}",),
        ("--out", str(tmp_path / "eval")),
    )
    assert code == 2 and message in capsys.readouterr().err


def test_out_that_is_a_file_is_refused_before_scoring(folder, tmp_path, capsys, monkeypatch):
    import mtcolor.metrics.evaluation

    monkeypatch.setattr(mtcolor.metrics.evaluation, "evaluate", lambda *a, **k: pytest.fail("scored first"))
    (tmp_path / "taken").write_text("a file")
    code = run_evaluate(
        ("--pred", str(folder / "good")),
        ("--gt", str(folder / "gt")),
        ("--metrics", "psnr"),
        ("--out", str(tmp_path / "taken")),
    )
    err = capsys.readouterr().err
    assert code == 2 and f"--out {str(tmp_path / 'taken')!r} is a file" in err and "Traceback" not in err
