"""`mtcolor demo`: its arguments are checked before the model loads (one line, exit 2); its adherence is
scored against the scenes' canonical colours."""

import pytest

import mtcolor.cli.demo as demo
from mtcolor.cli import main


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--guidance_scale", "inf"], "--guidance_scale is inf; pass a finite value >= 0"),
        (["--guidance_scale", "nan"], "--guidance_scale is nan; pass a finite value >= 0"),
        (["--steps", "0"], "--steps is 0"),
        (["--scenes", "0"], "--scenes is 0"),
    ],
)
def test_demo_refuses_bad_numbers_before_running(tmp_path, capsys, monkeypatch, extra, message):
    def refuse(*args, **kwargs):
        raise AssertionError("the demo ran although an argument is invalid")

    monkeypatch.setattr(demo, "run_demo", refuse)
    code = main(["demo", "--out", str(tmp_path / "demo"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("mtcolor demo: error:")]
    assert message in line


def test_demo_out_must_be_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("the demo ran"))
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; pass a folder" in capsys.readouterr().err


def test_demo_scores_synonym_texts_against_the_scene_colours():
    """Regression: the demo parsed the colour word out of each text, so the recipe's varied phrasings
    ("a lemon star", "the ring is pearl": not lexicon words) were skipped and the adherence the demo
    printed covered only the plainly worded instances. It now scores against ``instance_colors`` as
    the ablation benchmark does: the ground truth itself adheres on every instance."""
    import numpy as np
    import torch

    from mtcolor.lexicon import default_lexicon
    from mtcolor.synthetic import SyntheticConfig, generate_scene

    config = SyntheticConfig(phrasing="varied", num_objects=(3, 3), colors=("yellow", "white", "red", "blue"))
    lexicon = default_lexicon()
    scene = next(
        s
        for s in (generate_scene(config, seed) for seed in range(200))
        if any(not lexicon.has_color(t) for t in s["instance_texts"])  # a synonym the lexicon lacks
    )
    scene["kind"] = "held-out"
    truth = torch.from_numpy(np.asarray(scene["image"], dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    record = demo.score_demo_scene(truth, scene)
    assert record["instances_agree"] == [True] * len(scene["instance_texts"]), scene["instance_texts"]
    assert record["adherence_accuracy"] == 1.0 and record["psnr"] > 40
