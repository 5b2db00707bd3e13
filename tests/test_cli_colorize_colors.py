"""`mtcolor colorize` colour targets (--color, --no-colors-from-texts, --color-steering,
--no-exact-colors) and edits (--edit-from, --edit-instance, the edit-state sidecar): flags reach the
pipeline, bad input exits 2 with one line before the model loads, and an edit keeps every pixel
outside the edited instance (uint8) with a tiny saved pipeline."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import test_cli_colorize as base
from test_cli_colorize import RUN, H, W, cli, error_line, leftovers

from mtcolor import MTColorPipeline
from mtcolor.cli import main
from mtcolor.cli._edit_state import load_sidecar, sidecar_path
from mtcolor.color_targets import ColorTarget, parse_color

# the fixtures of tests/test_cli_colorize.py: a tiny saved pipeline, a 64x48 scene, no model load
model_dir, scene, no_model_load = base.model_dir, base.scene, base.no_model_load


@pytest.fixture
def spy(monkeypatch):
    """Records every pipeline call's keyword arguments and whether it encoded a previous image."""
    calls, encoded = [], []
    real_call, real_encode = MTColorPipeline.__call__, MTColorPipeline.encode_previous

    def call(self, *args, **kwargs):
        calls.append(kwargs)
        return real_call(self, *args, **kwargs)

    def encode(self, *args, **kwargs):
        encoded.append(True)
        return real_encode(self, *args, **kwargs)

    monkeypatch.setattr(MTColorPipeline, "__call__", call)
    monkeypatch.setattr(MTColorPipeline, "encode_previous", encode)
    return calls, encoded


def run(argv, capsys) -> tuple[int, str, str]:
    """``mtcolor colorize ARGV`` -> (exit status, stdout, stderr)."""
    code = main(["colorize", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _pixels(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path).convert("RGB"))


def _mask(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path)) > 127


# --------------------------------------------------------------------------------------------------
# Colour flags
# --------------------------------------------------------------------------------------------------


def test_color_flags_reach_the_pipeline(scene, model_dir, capsys, spy):
    s = scene
    calls, _ = spy
    argv = [s / "gray.png", "--mask", s / "m1.png", "--text", "a car", "--color", "#D0302A",
            "--mask", s / "m2.png", "--text", "a sky", "--color", "navy blue", "--model", model_dir, *RUN]  # fmt: skip
    code, err = cli([*argv, "--out", s / "o.png"], capsys)
    assert code == 0, err
    (kwargs,) = calls
    assert [c.hex for c in kwargs["colors"]] == ["#d0302a", parse_color("navy blue").hex]
    assert kwargs["colors_from_texts"] is True and kwargs["exact_colors"] is True
    assert kwargs["color_steering"] == 0.0 and kwargs["edit_from"] is None

    calls.clear()
    argv = [s / "gray.png", "--mask", s / "m1.png", "--text", "a crimson car", "--color", "none",
            "--mask", s / "m2.png", "--text", "a sky", "--color", "rgb(0, 128, 255)", "--no-colors-from-texts",
            "--color-steering", "0.5", "--no-exact-colors", "--model", model_dir, *RUN]  # fmt: skip
    code, err = cli([*argv, "--out", s / "o2.png"], capsys)
    assert code == 0, err
    (kwargs,) = calls
    first, second = kwargs["colors"]
    assert first is None and isinstance(second, ColorTarget) and second.hex == "#0080ff"
    assert kwargs["colors_from_texts"] is False and kwargs["exact_colors"] is False
    assert kwargs["color_steering"] == 0.5


def test_targets_are_printed_per_instance(scene, model_dir, capsys):
    s = scene
    argv = [s / "gray.png", "--mask", s / "m1.png", "--text", "a car", "--color", "crimson",
            "--mask", s / "m2.png", "--text", "a red and white bus", "--color", "-", "--model", model_dir, *RUN]  # fmt: skip
    code, out, err = run([*argv, "--out", s / "o.png"], capsys)
    assert code == 0, err
    assert "--mask #1 ('a car'): colour target #8c000f (crimson, from name)" in out
    assert "--mask #2 ('a red and white bus'): no colour target (several colours: red, white)" in out


def test_spec_file_takes_a_color_per_instance(scene, model_dir, capsys, spy):
    s = scene
    calls, _ = spy
    spec = {
        "image": "gray.png",
        "instances": [
            {"mask": "m1.png", "text": "a car", "color": "#00ff00"},
            {"mask": "m2.png", "text": "a sky", "color": [10, 20, 200]},
        ],
    }
    (s / "scene.json").write_text(json.dumps(spec))
    code, err = cli(["--spec", s / "scene.json", "--model", model_dir, *RUN, "--out", s / "o.png"], capsys)
    assert code == 0, err
    assert [c.hex for c in calls[0]["colors"]] == ["#00ff00", "#0a14c8"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--color", "crimsn"], "--color #1 (of --mask #1)='crimsn' is not a colour: unknown colour name"),
        (["--color", "#12345"], "--color #1 (of --mask #1)='#12345' is not a colour: malformed hex code"),
        (["--color", "d0302a"], "did you mean '#d0302a'"),
        (["--color", "rgb(300, 0, 0)"], "values outside 0..255"),
        (["--color", "red", "--color", "blue"], "got 1 instances (--mask/--box/--point) but 2 --color"),
        (["--color-steering", "-1"], "--color-steering is -1.0; pass a strength >= 0"),
        (["--color-steering", "nan"], "--color-steering is nan; pass a finite number"),
        (["--edit-instance", "1"], "--edit-instance needs --edit-from PREVIOUS"),
        (
            ["--edit-from", "{s}/small.png"],
            "is 32x48 but GRAY is 64x48 (W x H); edit an output of this same GRAY",
        ),
        (
            ["--edit-from", "{s}/prev.png", "--edit-instance", "2"],
            "--edit-instance '2': this call has 1 instance(s)",
        ),
        (["--edit-from", "{s}/prev.png", "--edit-instance", "0"], "numbered 1..1 in command-line"),
        (["--edit-from", "{s}/prev.png", "--edit-instance", "x"], "--edit-instance 'x'"),
        (["--edit-from", "{s}/missing.png"], "--edit-from '{s}/missing.png' does not exist"),
    ],
)
def test_bad_colour_and_edit_input_is_one_line_before_the_model_loads(
    scene, model_dir, capsys, no_model_load, extra, message
):
    s = scene
    PIL.Image.new("RGB", (W // 2, H)).save(s / "small.png")
    PIL.Image.new("RGB", (W, H)).save(s / "prev.png")
    extra = [str(e).format(s=s) for e in extra]
    argv = [s / "gray.png", "--mask", s / "m1.png", "--text", "a car", *extra, "--model", model_dir, *RUN]
    code, err = cli([*argv, "--out", s / "o.png"], capsys)
    assert code == 2
    assert message.format(s=s) in error_line(err)
    assert not (s / "o.png").exists() and leftovers(s) == []


def test_spec_colour_errors_name_the_entry(scene, capsys, no_model_load):
    s = scene
    spec = {"image": "gray.png", "instances": [{"mask": "m1.png", "text": "a car", "color": "#ggg"}]}
    (s / "bad.json").write_text(json.dumps(spec))
    code, err = cli(["--spec", s / "bad.json", "--model", "no-model", "--out", s / "o.png"], capsys)
    assert code == 2
    assert "instances[0] of --spec" in error_line(err) and "malformed hex code" in error_line(err)
    code, err = cli(["--spec", s / "bad.json", "--color", "red", "--out", s / "o.png"], capsys)
    assert code == 2 and "--spec is given together with" in error_line(err)


# --------------------------------------------------------------------------------------------------
# Edits
# --------------------------------------------------------------------------------------------------


def _first_run(s, model_dir, capsys, out="out.png"):
    argv = [s / "gray.png", "--mask", s / "m1.png", "--text", "a red car", "--mask", s / "m2.png",
            "--text", "a blue sky", "--model", model_dir, *RUN]  # fmt: skip
    code, err = cli([*argv, "--out", s / out], capsys)
    assert code == 0, err
    return _pixels(s / out)


def test_edit_from_a_cli_output_keeps_every_pixel_outside_the_instance(scene, model_dir, capsys, spy):
    """The first run writes out.png and its edit state; editing instance 1's text re-samples only
    instance 1 (the changed one, found from the state, without re-encoding the PNG): every pixel
    outside it keeps its uint8 value, and some inside change."""
    s = scene
    calls, encoded = spy
    first = _first_run(s, model_dir, capsys)
    assert sidecar_path(s / "out.png").is_file()
    state, why = load_sidecar(str(s / "out.png"), PIL.Image.open(s / "out.png"))
    assert why == "" and state.texts == ["a red car", "a blue sky"]

    argv = [s / "gray.png", "--mask", s / "m1.png", "--text", "a green car", "--mask", s / "m2.png",
            "--text", "a blue sky", "--edit-from", s / "out.png", "--model", model_dir, *RUN, "--seed", "5"]  # fmt: skip
    code, err = cli([*argv, "--out", s / "out2.png"], capsys)
    assert code == 0, err
    second = _pixels(s / "out2.png")
    inside = _mask(s / "m1.png")
    assert second.shape == first.shape
    assert (second[~inside] == first[~inside]).all()
    assert (second[inside] != first[inside]).any()
    assert encoded == []  # the edit state's latents were used
    assert calls[-1]["edit_instances"] is None  # the changed instance was found by the pipeline
    assert calls[-1]["edit_from"].edit_states[0].texts == ["a red car", "a blue sky"]

    # an edit of the edit, back to the first text: the second instance keeps out.png's pixels
    argv[4] = "a red car"
    code, err = cli(
        [*[a if a != s / "out.png" else s / "out2.png" for a in argv], "--out", s / "out3.png"], capsys
    )
    assert code == 0, err
    third = _pixels(s / "out3.png")
    assert (third[~inside] == first[~inside]).all()


def test_edit_from_a_plain_png_edits_the_instances_given(scene, model_dir, capsys, spy):
    """A PNG without an edit state is encoded; with one --mask (no --edit-instance) that instance is
    edited, every pixel outside its mask is kept. A replaced PNG's stale sidecar is ignored."""
    s = scene
    _, encoded = spy
    first = _first_run(s, model_dir, capsys)
    shutil.copy(s / "out.png", s / "plain.png")  # no sidecar beside it
    argv = [s / "gray.png", "--mask", s / "m2.png", "--text", "a yellow sky", "--model", model_dir, *RUN]
    code, out, err = run([*argv, "--edit-from", s / "plain.png", "--out", s / "edited.png"], capsys)
    assert code == 0, err
    assert "no edit state 'plain.png.edit.safetensors' beside it; the image is encoded" in out
    edited = _pixels(s / "edited.png")
    inside = _mask(s / "m2.png")
    assert (edited[~inside] == first[~inside]).all() and (edited[inside] != first[inside]).any()
    assert encoded == [True]

    # the same two instances, naming the one to change; out.png is replaced by other pixels, so its
    # edit state no longer matches and the image is encoded
    PIL.Image.fromarray(edited).save(s / "out.png")
    argv = [s / "gray.png", "--mask", s / "m1.png", "--text", "a red car", "--mask", s / "m2.png",
            "--text", "a pink sky", "--edit-instance", "2", "--model", model_dir, *RUN]  # fmt: skip
    code, out, err = run([*argv, "--edit-from", s / "out.png", "--out", s / "again.png"], capsys)
    assert code == 0, err
    assert "was written for other pixels (the image was replaced); the image is encoded" in out
    again = _pixels(s / "again.png")
    assert (again[~inside] == edited[~inside]).all()
    assert encoded == [True, True]


def test_non_png_output_gets_no_edit_state(scene, model_dir, capsys):
    s = scene
    code, err = cli([s / "gray.png", "--model", model_dir, *RUN, "--out", s / "o.tif"], capsys)
    assert code == 0, err
    assert not sidecar_path(s / "o.tif").exists()
    code, err = cli([s / "gray.png", "--model", model_dir, *RUN, "--out", s / "o.png"], capsys)
    assert code == 0, err
    assert sidecar_path(s / "o.png").exists() and leftovers(s) == []
