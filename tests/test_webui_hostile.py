"""The web UI against a hostile client, over raw HTTP on 127.0.0.1: it reads only files gradio received
for it, refuses a working size beyond its limits before queuing it, and its messages number instances
as the page does. One server (embedded model) serves the module.
"""

import html
import json
import re
import uuid
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from mtcolor.webui.inputs import MAX_INSTANCES

H, W = 40, 56
META = {"_type": "gradio.FileData"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mtcolor.webui.testing import serve

    from mtcolor.threads import torch_threads

    with torch_threads(1), serve(tmp_path_factory.mktemp("ui"), example_scenes=1) as running:
        yield running


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A private image of the server's (never uploaded), a gray image and a mask to upload."""
    folder = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    paths = {"private": folder / "private.png", "gray": folder / "gray.png", "left": folder / "left.png"}
    PIL.Image.fromarray((rng.random((H, W)) * 200 + 30).astype(np.uint8)).save(paths["private"])
    PIL.Image.fromarray((rng.random((H, W)) * 200 + 30).astype(np.uint8)).save(paths["gray"])
    left = np.zeros((H, W), np.uint8)
    left[:, : W // 2] = 255
    PIL.Image.fromarray(left).save(paths["left"])
    return {name: str(path) for name, path in paths.items()}


def _upload(url: str, path: str) -> dict:
    """Upload through gradio's /upload, as the page does; the file value the page then sends."""
    with open(path, "rb") as handle:
        response = httpx.post(
            f"{url}gradio_api/upload", files={"files": (Path(path).name, handle)}, timeout=60
        )
    response.raise_for_status()
    return {"path": response.json()[0], "meta": META}


def _call(url: str, data: list) -> tuple[str, object]:
    """POST /gradio_api/call/colorize, then read its event stream: ("complete", outputs) or ("error", message)."""
    response = httpx.post(f"{url}gradio_api/call/colorize", json={"data": data}, timeout=60)
    response.raise_for_status()
    event_id = response.json()["event_id"]
    kind = None
    with httpx.stream("GET", f"{url}gradio_api/call/colorize/{event_id}", timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                payload = json.loads(line[5:])
                return kind, payload.get("error") if kind == "error" and isinstance(
                    payload, dict
                ) else payload
    raise AssertionError("the event stream ended without a result")


def _queue(url: str, fn_index: int, data: list, trigger_id=None) -> dict:
    """Run one of the page's private events by fn_index, as the browser does (/queue/join + /queue/data)."""
    session = uuid.uuid4().hex
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None}
    response = httpx.post(f"{url}gradio_api/queue/join", json={**body, "trigger_id": trigger_id}, timeout=60)
    response.raise_for_status()
    with httpx.stream(
        "GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=300
    ) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the queue stream ended without a result")


def _colorize_data(server, **values) -> list:
    names = [p["parameter_name"] for p in _api(server)["named_endpoints"]["/colorize"]["parameters"]]
    return [values.get(name) for name in names]


def _api(server) -> dict:
    return httpx.get(f"{server.url}gradio_api/info", timeout=60).json()


# ---------------------------------------------------------------------------------------------- item 1


PATHS = ("/etc/passwd", "/no/such/file.png")  # a text file and a missing path, beside a private image


def _forms(path: str) -> dict:
    """One path as a client can send it: gradio's dict without ``meta`` (what gradio passes on
    unchecked), with ``meta`` (checked by gradio itself) and as a bare string."""
    return {"no meta": {"path": path}, "meta": {"path": path, "meta": META}, "string": path}


def _refusals(url: str, private: str, make_data) -> dict:
    """{form: {path: error message}} of colorize calls with each hostile path in each form."""
    found = {}
    for path in (private, *PATHS):
        for form, value in _forms(path).items():
            kind, message = _call(url, make_data(value))
            assert kind == "error", f"{value!r} was read: {message!r}"
            # pydantic elides long values in the middle ("/tmp/pyte...files0/private.png")
            message = re.sub(r"input_value='[^']*'", "input_value='PATH'", message.replace(path, "PATH"))
            found.setdefault(form, {})[path] = message
    return found


def test_colorize_reads_no_file_it_was_not_sent(server, files):
    """The image and every mask slot refuse any path gradio did not receive for this server, with one
    message that names the field and says nothing of the path (exists, readable, an image)."""
    url = server.url
    gray = _upload(url, files["gray"])
    refusals = _refusals(
        url, files["private"], lambda v: _colorize_data(server, image=v, num_inference_steps=2)
    )
    for form, messages in refusals.items():
        assert len(set(messages.values())) == 1, (form, messages)  # the same whatever the path
    assert set(refusals["no meta"].values()) == {
        "the input image is not a file uploaded to this page (or it has expired); upload it again."
    }
    for k in range(1, MAX_INSTANCES + 1):

        def data(value, k=k):
            return _colorize_data(server, image=gray, **{f"text_{k}": "a", f"mask_{k}": value})

        refusals = _refusals(url, files["private"], data)
        for form, messages in refusals.items():
            assert len(set(messages.values())) == 1, (k, form, messages)
        assert set(refusals["no meta"].values()) == {
            f"instance {k}'s mask is not a file uploaded to this page (or it has expired); upload it again."
        }
    kind, outputs = _call(url, _colorize_data(server, image=gray, num_inference_steps=2))
    assert kind == "complete" and "Done" in outputs[-1]  # an uploaded file is read


def test_the_page_events_read_no_file_they_were_not_sent(server, files):
    """The overlay, row-removal and painting events (private, but reachable by fn_index): the image and
    mask inputs are refused alike; the painting's image is server-side state; gradio itself checks the
    editor's files. No event returns anything drawn from the private file."""
    url, demo = server.url, server.demo
    by_name = {}
    for index, block_fn in demo.fns.items():
        by_name.setdefault(block_fn.fn.__name__, (index, block_fn))
    refused = "is not a file uploaded to this page (or it has expired); upload it again."
    for name in ("on_image", "on_masks"):
        index, block_fn = by_name[name]
        for value in [_forms(path)["no meta"] for path in (files["private"], *PATHS)]:
            data = [value] + [None] * (len(block_fn.inputs) - 1)
            message = _queue(url, index, data)
            assert not message["success"] and message["output"]["error"] == f"the input image {refused}", name
        data = [_upload(url, files["gray"])] + [None] * (len(block_fn.inputs) - 1)
        data[3 + MAX_INSTANCES + 1] = {"path": files["private"]}  # row 2's mask
        message = _queue(url, index, data)
        assert not message["success"] and message["output"]["error"] == f"instance 2's mask {refused}"
    index, block_fn = by_name["on_remove"]
    remove = demo.blocks[block_fn.inputs[0]._id]  # any block id will do as the trigger's target below
    data = [2, 1, {"path": files["private"]}, None, 64] + [None] * (len(block_fn.inputs) - 5)
    first_remove = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "remove-1")
    message = _queue(url, index, data, trigger_id=first_remove._id)
    assert remove is not None and not message["success"]
    assert message["output"]["error"] == f"the input image {refused}"
    index, block_fn = by_name["on_paint"]
    assert [type(b).__name__ for b in block_fn.inputs] == ["ImageEditor", "State", "Dropdown"]
    for path in (files["private"], "/no/such/file.png"):
        layer = {"path": path, "meta": META}
        message = _queue(url, index, [{"background": layer, "layers": [layer], "composite": None}, None, 1])
        error = message["output"]["error"]
        assert not message["success"] and error.replace(path, "PATH") == (
            "Cannot move PATH to the gradio cache dir because it was not uploaded by a user."
        )


# ---------------------------------------------------------------------------------------------- item 2


def test_a_strip_is_refused_before_the_pipeline_and_the_next_request_is_served(server, tmp_path):
    """A 4096 x 1 gray PNG at the page's defaults would run at 64 x 262,144: refused naming the limit,
    without a denoising step, and the next request runs."""
    strip = tmp_path / "strip.png"
    PIL.Image.new("L", (4096, 1), 128).save(strip)
    assert strip.stat().st_size < 200
    gray = tmp_path / "gray.png"
    PIL.Image.fromarray((np.random.default_rng(1).random((H, W)) * 255).astype(np.uint8)).save(gray)
    pipe = server.session.pipes.get(server.session.default_choice)
    steps = []
    hook = pipe.unet.register_forward_hook(lambda *args: steps.append(1))
    try:
        client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))
        with pytest.raises(
            AppError, match=r"the input image is 4096x1 \(W x H\), an aspect ratio of 4\.1e\+03:1"
        ):
            client.predict(image=handle_file(str(strip)), api_name="/colorize")
        assert steps == []  # refused before the pipeline ran
        *_, status = client.predict(image=handle_file(str(gray)), num_inference_steps=2, api_name="/colorize")
        assert "Done" in status and steps  # the next request is served
    finally:
        hook.remove()


def test_the_server_budget_caps_the_working_size():
    from mtcolor.webui.inputs import MAX_WORKING_PIXELS, check_working_size

    assert check_working_size((1024, 1024), 1024) == (1024, 1024)  # the largest square the page offers
    with pytest.raises(ValueError) as info:
        check_working_size((2000, 1000), 1024)  # (W, H): 2048 x 1024 at the working size
    message = str(info.value)
    assert (
        "the input image is 2000x1000: at working resolution 1024 the model would run at 2048x1024" in message
    )
    assert f"more than this server runs ({MAX_WORKING_PIXELS / 1e6:.1f} MP, 1024x1024)" in message
    fit = int(re.search(r"lower the working resolution to (\d+)", message).group(1))
    h, w = check_working_size((2000, 1000), fit)  # the suggested resolution fits
    assert h * w <= MAX_WORKING_PIXELS


# ---------------------------------------------------------------------------------------------- item 7


def test_pipeline_messages_number_instances_as_the_page_does():
    from mtcolor.webui.overlay import page_numbers

    assert page_numbers("instance masks overlap (0-based pairs [(0, 1), (1, 2)]); each ...", [1, 3, 4]) == (
        "instance masks overlap (instances 1+3, 3+4); each ..."
    )
    assert page_numbers("1 instance is smaller than one token at 8x8 (texts[1] 'a cat')", [2, 5]) == (
        "1 instance is smaller than one token at 8x8 (instance 5 'a cat')"
    )
    assert page_numbers("masks[0, 1] own no pixel", [2, 3]) == "instances 2, 3 own no pixel"


def test_run_warnings_name_page_rows(server, tmp_path):
    """Rows 1 and 3 (row 2 empty): the row-3 mask lies inside row 1's and is 2x2 pixels, so the pipeline
    warns of an overlap and of a small instance; the page shows them as instances 1+3 and 3."""
    gray = tmp_path / "gray.png"
    PIL.Image.fromarray((np.random.default_rng(2).random((H, W)) * 255).astype(np.uint8)).save(gray)
    left = np.zeros((H, W), np.uint8)
    left[:, : W // 2] = 255
    dot = np.zeros((H, W), np.uint8)
    dot[10:12, 10:12] = 255
    PIL.Image.fromarray(left).save(tmp_path / "left.png")
    PIL.Image.fromarray(dot).save(tmp_path / "dot.png")
    texts = ["a red car", "", "a blue cat"] + [""] * (MAX_INSTANCES - 3)
    masks = [str(tmp_path / "left.png"), None, str(tmp_path / "dot.png")] + [None] * (MAX_INSTANCES - 3)
    view = server.session.colorize(str(gray), texts, masks, None, "", settings={"num_inference_steps": 2})
    legend = html.unescape(view.legend)
    assert "instances 1+3" in legend and "instance 3 'a blue cat'" in legend, legend
    assert "0-based" not in legend and "texts[" not in legend


def test_docs_state_the_guidance_the_page_runs():
    """docs/ui.md quotes mtcolor-tiny's defaults; the page reads them from the model's recipe.json."""
    from mtcolor.webui.models import model_choices, recommended_settings

    docs = (Path(__file__).parents[1] / "docs" / "ui.md").read_text()
    match = re.search(r"(\d+) steps and\s+guidance ([\d.]+) for `mtcolor-tiny`", docs)
    assert match, "docs/ui.md no longer quotes mtcolor-tiny's steps and guidance"
    (tiny,) = [c for c in model_choices() if c.label.startswith("mtcolor-tiny")]
    settings = recommended_settings(tiny)
    assert int(match.group(1)) == settings["num_inference_steps"]
    assert float(match.group(2)) == settings["guidance_scale"]
