"""The gradio page built without a server (what it shows, how handler errors read) and the ``mtcolor ui``
command line (help, missing gradio, bad paths refused before serving)."""

import pytest
from mtcolor.webui.inputs import MAX_INSTANCES

# ---------------------------------------------------------------------------------------------- CLI


def test_cli_help_and_missing_gradio(monkeypatch, capsys):
    import importlib.util

    from mtcolor.cli import build_parser, main

    help_text = build_parser()._subparsers._group_actions[0].choices["ui"].format_help()
    for flag in ("--host", "--port", "--model", "--sam_checkpoint"):
        assert flag in help_text
    args = build_parser().parse_args(["ui"])
    assert args.host == "127.0.0.1"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a)
    )
    assert main(["ui"]) == 2
    assert 'pip install "mtcolor[ui]"' in capsys.readouterr().err


def test_cli_bad_paths_fail_before_serving(tmp_path, capsys):
    from mtcolor.cli import main

    assert main(["ui", "--model", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["ui", "--sam_checkpoint", str(tmp_path / "sam.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- page


def _components(demo) -> dict:
    return {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}


@pytest.mark.parametrize("sam", [False, True])
def test_page_shows_sam_prompts_only_with_a_checkpoint(tmp_path, sam):
    from mtcolor.webui.app import build_app
    from mtcolor.webui.session import ServerConfig, Session

    checkpoint = tmp_path / "sam.pth"
    checkpoint.write_bytes(b"weights")
    session = Session(
        ServerConfig(
            workdir=str(tmp_path / "ui"),
            example_scenes=1,
            include_photo=False,
            sam_checkpoint=str(checkpoint) if sam else None,
        )
    )
    blocks = _components(build_app(session))
    assert all(blocks[f"sam-{k}"].visible is sam for k in range(1, MAX_INSTANCES + 1))
    note = blocks["sam-note"].value
    assert ("--sam_checkpoint" in note) is not sam  # how to enable it, when it is off
    assert [blocks[f"instance-{k}"].visible for k in (1, 2)] == [True, False]  # one row to start
    assert blocks["guidance"].value == session.defaults()["guidance_scale"]
    assert blocks["model"].value == session.default_choice.label


def test_handler_errors_become_readable_page_messages():
    import inspect

    import gradio as gr
    from mtcolor.webui.app import guarded

    @guarded("Cannot colorize")
    def handler(progress=gr.Progress(), **values):
        raise values["error"]

    assert "progress" in inspect.signature(handler).parameters  # gradio still sees the progress tracker
    with pytest.raises(gr.Error) as info:
        handler(error=ValueError("instance 1's mask is <b>12x10</b>"))
    assert (
        info.value.message == "instance 1's mask is &lt;b&gt;12x10&lt;/b&gt;"
        and info.value.title == "Cannot colorize"
    )
    with pytest.raises(gr.Error) as info:
        handler(error=RuntimeError("out of memory\n  at line 3"))
    assert info.value.message.startswith("RuntimeError: out of memory at line 3")
    assert "the server keeps running" in info.value.message and "Traceback" not in info.value.message
