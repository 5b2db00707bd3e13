"""`mtcolor colorize`: validation before loading, end-to-end runs with a tiny saved pipeline, atomic output."""

import importlib.util
import json
import os

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

from mtcolor.cli import main
from mtcolor.sam import SamMasker

H, W = 48, 64
RUN = ["--steps", "2", "--working-resolution", "64", "--seed", "0"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mtcolor import MTColorPipeline
    from mtcolor.testing import randomize_adapter, tiny_components

    components = tiny_components(0, tokenizer_cache=str(tmp_path_factory.mktemp("tok")))
    randomize_adapter(components["adapter"], seed=1, gate=0.5, scale=0.05)  # instance texts matter
    folder = tmp_path_factory.mktemp("model")
    MTColorPipeline(**components).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def scene(tmp_path):
    """A 64x48 gray PNG and two aligned instance masks (8-bit PNGs) in tmp_path."""
    rng = np.random.default_rng(0)
    PIL.Image.fromarray((rng.random((H, W)) * 255).astype(np.uint8)).save(tmp_path / "gray.png")
    left = np.zeros((H, W), np.uint8)
    left[:, : W // 2] = 255
    corner = np.zeros((H, W), np.uint8)
    corner[H // 2 :, W // 2 + 4 :] = 255
    PIL.Image.fromarray(left).save(tmp_path / "m1.png")
    PIL.Image.fromarray(corner).save(tmp_path / "m2.png")
    return tmp_path


def cli(argv, capsys):
    code = main(["colorize", *map(str, argv)])
    err = capsys.readouterr().err
    return code, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mtcolor colorize: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def leftovers(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(".") and name.endswith(".tmp"))


# --------------------------------------------------------------------------------------------------
# Validation: runs before any model is loaded (the --model given here does not exist)
# --------------------------------------------------------------------------------------------------


def test_count_mismatch_names_both_counts(scene, capsys):
    s = scene
    code, err = cli(
        [s / "gray.png", "--mask", s / "m1.png", "--mask", s / "m2.png", "--text", "a red car", "--out", s / "o.png",
         "--model", s / "no-model"],
        capsys,
    )  # fmt: skip
    assert code == 2
    assert "got 2 instances (--mask/--box/--point) but 1 --text" in error_line(err)
    assert not (s / "o.png").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mask", "missing.png", "--text", "a"], "--mask #1: 'missing.png' does not exist"),
        (["--box", "1,2,3", "--text", "a"], "--box '1,2,3' is not x0,y0,x1,y1"),
        (["--point", "1,2;x,3", "--text", "a"], "--point '1,2;x,3' is not x,y[;x,y...]"),
        (["--box", "0,0,10,10", "--text", "a"], "--box #1 is a SAM prompt but --sam-checkpoint is missing"),
        (
            ["--box", "0,0,10,10", "--text", "a", "--sam-checkpoint", "none.pth"],
            "--sam-checkpoint 'none.pth' does not exist",
        ),
        (["--steps", "0"], "--steps is 0"),
        (["--alpha", "1.5"], "--alpha is 1.5"),
        (["--spec", "s.json", "--text", "a"], "--spec is given together with"),
        (["--model", "no/such/model"], "--model 'no/such/model' is neither a pipeline folder nor a hub id"),
    ],
)
def test_user_errors_are_one_line(scene, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(scene)
    model = [] if "--model" in extra else ["--model", "no-model"]
    code, err = cli(["gray.png", *extra, *model, "--out", "o.png"], capsys)
    assert code == 2
    assert message in error_line(err)


def test_mask_size_and_out_checks(scene, capsys):
    s = scene
    PIL.Image.new("L", (W, H + 1)).save(s / "tall.png")
    code, err = cli([s / "gray.png", "--mask", s / "tall.png", "--text", "a", "--out", s / "o.png"], capsys)
    assert code == 2 and f"is 64x49 but GRAY is {W}x{H}" in error_line(err)
    code, err = cli([s / "gray.png", "--out", s / "o.xyz"], capsys)
    assert code == 2 and "Pillow cannot write" in error_line(err)
    code, err = cli([s / "gray.png", "--out", s / "no-dir" / "o.png"], capsys)
    assert code == 2 and "does not exist; create it first" in error_line(err)


def test_sam_box_outside_image_names_flag(scene, capsys, tmp_path):
    (tmp_path / "sam.pth").write_bytes(b"")
    argv = [
        scene / "gray.png",
        "--mask",
        scene / "m1.png",
        "--text",
        "a",
        "--box",
        f"0,0,{W + 1},10",
        "--text",
        "b",
    ]
    code, err = cli([*argv, "--sam-checkpoint", tmp_path / "sam.pth", "--out", tmp_path / "o.png"], capsys)
    assert code == 2
    assert f"--box #1: boxes[0] is (x0=0, y0=0, x1={W + 1}, y1=10)" in error_line(err)


def test_spec_paths_are_relative_to_the_spec(scene, capsys):
    sub = scene / "specs"
    sub.mkdir()
    spec = {"image": "../gray.png", "instances": [{"mask": "m1.png", "text": "a red car"}]}
    (sub / "scene.yaml").write_text(yaml.safe_dump(spec))
    code, err = cli(["--spec", sub / "scene.yaml", "--model", "no-model", "--out", scene / "o.png"], capsys)
    assert code == 2
    assert f"instances[0] of --spec '{sub / 'scene.yaml'}': '{sub / 'm1.png'}' does not exist" in error_line(
        err
    )
    (sub / "bad.yaml").write_text(
        yaml.safe_dump({**spec, "instances": [{"box": [1, 2, 3, 4], "mask": "x.png"}]})
    )
    code, err = cli(["--spec", sub / "bad.yaml", "--out", scene / "o.png"], capsys)
    assert code == 2 and "has text None" in error_line(err)


def test_model_required_without_embedded_model(scene, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mtcolor.embedded" else real_find_spec(name, *a),
    )
    code, err = cli([scene / "gray.png", "--out", scene / "o.png"], capsys)
    assert code == 2 and "--model is required" in error_line(err)


# --------------------------------------------------------------------------------------------------
# End to end with a tiny saved pipeline
# --------------------------------------------------------------------------------------------------


def test_end_to_end_and_spec_file(scene, model_dir, capsys):
    s = scene
    argv = [s / "gray.png", "--mask", s / "m1.png", "--text", "a red car", "--mask", s / "m2.png",
            "--text", "a blue sky", "--prompt", "a street", "--model", model_dir, *RUN]  # fmt: skip
    code, err = cli([*argv, "--out", s / "cli.png"], capsys)
    assert code == 0, err
    out = PIL.Image.open(s / "cli.png")
    assert out.size == (W, H) and out.mode == "RGB"
    assert leftovers(s) == []

    sub = s / "spec"
    sub.mkdir()
    spec = {
        "image": "../gray.png",
        "prompt": "a street",
        "instances": [
            {"mask": "../m1.png", "text": "a red car"},
            {"mask": "../m2.png", "text": "a blue sky"},
        ],
    }
    (sub / "scene.json").write_text(json.dumps(spec))
    code, err = cli(
        ["--spec", sub / "scene.json", "--model", model_dir, *RUN, "--out", s / "spec.png"], capsys
    )
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(s / "spec.png")), np.asarray(out))


def test_pipeline_failure_leaves_no_output(scene, model_dir, capsys):
    s = scene
    PIL.Image.new("L", (W, H), 0).save(s / "empty.png")  # the pipeline refuses a mask without pixels
    (s / "o.png").write_bytes(b"previous result")
    code, err = cli([s / "gray.png", "--mask", s / "empty.png", "--text", "a", "--model", model_dir, *RUN,
                     "--out", s / "o.png"], capsys)  # fmt: skip
    assert code == 2
    assert f"--mask #1: mask '{s / 'empty.png'}' is empty" in error_line(err)  # the flag, not masks[0]
    assert (s / "o.png").read_bytes() == b"previous result"
    assert leftovers(s) == []


def test_failed_write_leaves_no_partial_file(scene, model_dir, capsys, monkeypatch):
    s = scene

    def broken_save(self, fp, format=None, **params):
        fp.write(b"\x89PNG partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(PIL.Image.Image, "save", broken_save)
    code, err = cli(
        [s / "gray.png", "--model", model_dir, *RUN, "--guidance-scale", "1", "--out", s / "o.png"], capsys
    )
    assert code == 2 and "No space left on device" in error_line(err)
    assert not (s / "o.png").exists()
    assert leftovers(s) == []


@pytest.mark.filterwarnings("ignore:instance masks overlap")  # a random tiny SAM segments half the image
def test_sam_box_instance_reaches_pipeline_as_sam_mask(scene, model_dir, capsys, monkeypatch):
    """A --box instance is segmented by SAM (checkpoint loaded by mtcolor.sam) and passed on as that mask."""
    from segment_anything.build_sam import sam_model_registry
    from test_sam import tiny_sam

    from mtcolor import MTColorPipeline

    s = scene
    torch.save(tiny_sam(0).state_dict(), s / "sam_tiny.pth")
    monkeypatch.setitem(sam_model_registry, "vit_b", lambda checkpoint=None: tiny_sam(7))
    box = (4, 6, 40, 44)
    (expected,) = SamMasker(tiny_sam(0)).masks(PIL.Image.open(s / "gray.png"), boxes=[box])
    assert expected.any() and not expected.all()

    received = []
    real_call = MTColorPipeline.__call__

    def spy(self, image, masks=None, texts=None, *args, **kwargs):
        received.append((masks, texts))
        return real_call(self, image, masks, texts, *args, **kwargs)

    monkeypatch.setattr(MTColorPipeline, "__call__", spy)
    argv = [s / "gray.png", "--mask", s / "m2.png", "--text", "a blue sky", "--box", ",".join(map(str, box)),
            "--text", "a red car", "--sam-checkpoint", s / "sam_tiny.pth", "--device", "cpu", "--model", model_dir,
            *RUN, "--guidance-scale", "1", "--out", s / "sam.png"]  # fmt: skip
    code, err = cli(argv, capsys)
    assert code == 0, err
    ((masks, texts),) = received
    assert texts == ["a blue sky", "a red car"]
    np.testing.assert_array_equal(np.asarray(masks[0]), np.asarray(PIL.Image.open(s / "m2.png")))
    np.testing.assert_array_equal(masks[1], expected)
    assert PIL.Image.open(s / "sam.png").size == (W, H)


# --------------------------------------------------------------------------------------------------
# Issue 13: non-finite numbers, empty masks, decompression bombs, unwritable --out, killed runs
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading the pipeline fails the test: these inputs must be refused before the model loads."""
    from mtcolor import MTColorPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although an input is invalid")

    monkeypatch.setattr(MTColorPipeline, "from_pretrained", refuse)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--guidance-scale", "inf"], "--guidance-scale is inf; pass a finite number"),
        (["--guidance-scale", "nan"], "--guidance-scale is nan; pass a finite number"),
        (["--beta", "inf"], "--beta is inf; pass a finite number"),
        (["--beta", "nan"], "--beta is nan; pass a finite number"),
        (["--alpha=-inf"], "--alpha is -inf; pass a finite number"),
        (
            ["--box", "0,0,inf,10", "--text", "a"],
            "--box '0,0,inf,10' is not x0,y0,x1,y1 (comma-separated finite",
        ),
        (["--point", "nan,3", "--text", "a"], "--point 'nan,3' is not x,y[;x,y...]"),
        (["--max-pixels", "0"], "--max-pixels is 0; pass a positive pixel count"),
    ],
)
def test_non_finite_numbers_are_refused_before_the_model_loads(
    scene, model_dir, capsys, no_model_load, extra, message
):
    s = scene
    code, err = cli([s / "gray.png", *extra, "--model", model_dir, *RUN, "--out", s / "o.png"], capsys)
    assert code == 2
    assert message in error_line(err)
    assert not (s / "o.png").exists() and leftovers(s) == []


def test_non_finite_spec_coordinates_are_refused(scene, model_dir, capsys, no_model_load):
    s = scene
    spec = {"image": "gray.png", "instances": [{"box": [0, 0, float("nan"), 10], "text": "a red car"}]}
    (s / "nan.json").write_text(json.dumps(spec))  # json writes NaN, and json.load accepts it
    code, err = cli(["--spec", s / "nan.json", "--model", model_dir, "--out", s / "o.png"], capsys)
    assert code == 2
    assert "instances[0] of --spec" in error_line(err) and "finite numbers" in error_line(err)


def test_empty_mask_is_refused_before_the_model_loads(scene, model_dir, capsys, no_model_load):
    s = scene
    PIL.Image.new("L", (W, H), 0).save(s / "empty.png")
    code, err = cli([s / "gray.png", "--mask", s / "m1.png", "--text", "a", "--mask", s / "empty.png",
                     "--text", "b", "--model", model_dir, *RUN, "--out", s / "o.png"], capsys)  # fmt: skip
    assert code == 2
    line = error_line(err)
    assert f"--mask #2: mask '{s / 'empty.png'}'" in line and "is empty" in line


def _png_header(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (8-bit gray) with no pixel data: Pillow opens it
    lazily, so only a size check before decoding can refuse it quickly."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_one_line_naming_the_limit_and_the_flag(scene, capsys):
    s = scene
    _png_header(s / "huge.png", 15000, 15000)
    code, err = cli([s / "huge.png", "--model", "no-model", "--out", s / "o.png"], capsys)
    assert code == 2
    line = error_line(err)
    assert f"GRAY '{s / 'huge.png'}' is 15000x15000 = 225,000,000 pixels" in line
    assert "limit of 178,956,970" in line and "pass --max-pixels 225000000" in line
    code, err = cli([s / "gray.png", "--mask", s / "huge.png", "--text", "a", "--model", "no-model",
                     "--out", s / "o.png"], capsys)  # fmt: skip
    assert code == 2 and "--mask #1: " in error_line(err) and "--max-pixels" in error_line(err)
    # the flag moves the limit both ways
    code, err = cli(
        [s / "gray.png", "--max-pixels", W * H - 1, "--model", "no-model", "--out", s / "o.png"], capsys
    )
    assert code == 2 and f"pass --max-pixels {W * H}" in error_line(err)
    code, err = cli(
        [s / "gray.png", "--max-pixels", W * H, "--model", "no-model", "--out", s / "o.png"], capsys
    )
    assert code == 2 and "--model 'no-model'" in error_line(err)  # GRAY passed; the next check speaks


def _unwritable_folder(tmp_path):
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        open("/sys/.mtcolor-probe", "xb").close()
    except PermissionError:
        return "/sys"  # root may write anywhere but in sysfs
    except OSError:
        pass
    pytest.skip("no folder that is unwritable for this user")


def test_unwritable_out_folder_is_found_before_the_model_loads(scene, model_dir, capsys, no_model_load):
    s = scene
    folder = _unwritable_folder(s)
    out = os.path.join(folder, "o.png")
    code, err = cli([s / "gray.png", "--model", model_dir, *RUN, "--out", out], capsys)
    assert code == 2
    line = error_line(err)
    assert f"--out {out!r}: cannot create a file in {str(folder)!r}" in line and "writable folder" in line


def test_temporary_of_a_killed_run_is_removed_by_the_next_run(scene, model_dir, capsys):
    """SIGKILL in the middle of writing OUT leaves the hidden temporary; the next run removes it (its
    process is dead) but keeps the temporary of a live process."""
    import signal
    import socket
    import subprocess
    import sys

    s = scene
    argv = [
        str(a)
        for a in [s / "gray.png", "--model", model_dir, *RUN, "--guidance-scale", "1", "--out", s / "o.png"]
    ]
    script = (
        "import os, signal, sys\n"
        "import PIL.Image\n"
        "def save(self, fp, format=None, **params):\n"
        "    fp.write(b'\\x89PNG partial'); fp.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "PIL.Image.Image.save = save\n"
        "from mtcolor.cli import main\n"
        "sys.exit(main(['colorize', *sys.argv[1:]]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, *argv], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    (killed,) = leftovers(s)
    assert not (s / "o.png").exists()
    live = f".o.png.{os.getppid()}@{socket.gethostname()}.0123abcd.tmp"  # a live process's write in progress
    (s / live).write_bytes(b"in progress")

    code, err = cli(argv, capsys)
    assert code == 0, err
    assert PIL.Image.open(s / "o.png").size == (W, H)
    assert leftovers(s) == [live]


# --------------------------------------------------------------------------------------------------
# Masks that overlap away, checked before the model loads; Ctrl-C
# --------------------------------------------------------------------------------------------------


def test_a_mask_left_with_no_pixel_is_refused_before_the_model_loads(scene, model_dir, capsys, no_model_load):
    """The same all-ones mask twice: the second owns no pixel once overlaps are resolved. Refused with
    the CLI's flag (not the library's 0-based masks[1]) before the model loads."""
    s = scene
    PIL.Image.new("L", (W, H), 255).save(s / "all.png")
    code, err = cli([s / "gray.png", "--mask", s / "all.png", "--text", "a red car", "--mask", s / "all.png",
                     "--text", "a blue car", "--model", model_dir, *RUN, "--out", s / "o.png"], capsys)  # fmt: skip
    assert code == 2
    line = error_line(err)
    assert f"--mask #2: mask '{s / 'all.png'}' owns no pixel after overlaps were resolved" in line
    assert "masks[" not in line and "remove it with its text" in line
    # two of three lost, with a SAM box between them (masks are numbered among the --mask flags)
    (s / "sam.pth").write_bytes(b"")
    code, err = cli([s / "gray.png", "--mask", s / "all.png", "--text", "a", "--box", "0,0,8,8", "--text", "b",
                     "--mask", s / "all.png", "--text", "c", "--mask", s / "all.png", "--text", "d",
                     "--sam-checkpoint", s / "sam.pth", "--model", model_dir, *RUN, "--out", s / "o.png"],
                    capsys)  # fmt: skip
    assert code == 2
    assert "--mask #2, --mask #3 own no pixel after overlaps" in error_line(err)
    assert not (s / "o.png").exists() and leftovers(s) == []


def test_ctrl_c_prints_one_line_and_exits_130(scene, model_dir):
    """SIGINT while the model loads (the child says so on its stdout, then blocks): one line on stderr,
    exit status 130, no OUT and no temporary file left."""
    import signal
    import subprocess
    import sys

    s = scene
    argv = [str(a) for a in [s / "gray.png", "--model", model_dir, *RUN, "--out", s / "o.png"]]
    script = (
        "import signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
        "from mtcolor import MTColorPipeline\n"
        "def from_pretrained(cls, *args, **kwargs):\n"
        "    print('loading', flush=True)\n"
        "    sys.stdin.read()  # blocks until the parent interrupts\n"
        "MTColorPipeline.from_pretrained = classmethod(from_pretrained)\n"
        "from mtcolor.cli import main\n"
        "sys.exit(main(['colorize', *sys.argv[1:]]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", script, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout.readline() == "loading\n"  # the known point: inside the model load
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    ours = [line for line in err.splitlines() if line.startswith("mtcolor colorize:")]
    assert ours == [f"mtcolor colorize: interrupted; {s / 'o.png'} was not written"], err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not (s / "o.png").exists() and leftovers(s) == []


def test_a_strip_beyond_the_working_size_limits_is_refused_before_the_model_loads(
    scene, model_dir, capsys, no_model_load
):
    s = scene
    PIL.Image.new("L", (4096, 1), 128).save(s / "strip.png")
    code, err = cli([s / "strip.png", "--model", model_dir, *RUN, "--out", s / "o.png"], capsys)
    assert code == 2
    line = error_line(err)
    assert "GRAY is 4096x1 (W x H), an aspect ratio of 4.1e+03:1" in line and "MAX_ASPECT_RATIO" in line
