"""`mtcolor demo`: its arguments are checked before the model loads (one line, exit 2)."""

import pytest

import mtcolor.demo
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

    monkeypatch.setattr(mtcolor.demo, "run_demo", refuse)
    code = main(["demo", "--out", str(tmp_path / "demo"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("mtcolor demo: error:")]
    assert message in line


def test_demo_out_must_be_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mtcolor.demo, "run_demo", lambda *a, **k: pytest.fail("the demo ran"))
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; pass a folder" in capsys.readouterr().err
