"""The web UI through ``gradio_client``: named parameters, readable errors, and a malformed burst.

One server on a free loopback port serves the module (embedded model, 2 held-out examples).
"""

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import PIL.Image
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from mtcolor.webui.inputs import MAX_INSTANCES

from mtcolor import embedded_model
from mtcolor.embedded import recommended_guidance_scale
from mtcolor.masks import masks_to_label_map

H, W = 40, 56
QUEUE_SIZE = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mtcolor.webui.testing import serve

    from mtcolor.threads import torch_threads

    with torch_threads(1), serve(tmp_path_factory.mktemp("ui"), queue_size=QUEUE_SIZE) as running:
        yield running


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)

    def save(name, array):
        PIL.Image.fromarray(array).save(folder / name)
        return str(folder / name)

    left = np.zeros((H, W), np.uint8)
    left[:, : W // 2] = 255
    junk = folder / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {
        "gray": save("gray.png", (rng.random((H, W)) * 200 + 30).astype(np.uint8)),
        "left": save("left.png", left),
        "wrong": save("wrong.png", np.full((10, 12), 255, np.uint8)),
        "empty": save("empty.png", np.zeros((H, W), np.uint8)),
        "junk": str(junk),
    }


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def test_api_names_every_page_value(client):
    info = client.view_api(return_format="dict", print_info=False)
    parameters = {p["parameter_name"]: p for p in info["named_endpoints"]["/colorize"]["parameters"]}
    expected = {"image", "prompt", "model", "num_inference_steps", "guidance_scale", "alpha", "beta", "seed"}
    expected |= {"attention_mode", "fusion", "working_resolution"}
    expected |= {
        f"{field}_{k}" for field in ("text", "color", "mask", "sam") for k in range(1, MAX_INSTANCES + 1)
    }
    assert set(parameters) == expected
    assert all(p["parameter_has_default"] for p in parameters.values())  # call with what you need only
    # the recipe's measured best
    assert parameters["guidance_scale"]["parameter_default"] == recommended_guidance_scale(
        embedded_model("mtcolor-tiny")
    )


def test_colorize_by_name_returns_the_result_at_the_input_size(client, files):
    result, slider, download, table, overlay, legend, status = client.predict(
        image=handle_file(files["gray"]),
        text_1="a red car",
        mask_1=handle_file(files["left"]),
        prompt="a street",
        num_inference_steps=4,
        api_name="/colorize",
    )
    assert PIL.Image.open(result).size == (W, H)
    png = download["value"]
    assert png.endswith(".png") and PIL.Image.open(png).size == (W, H) and PIL.Image.open(png).format == "PNG"
    before, after = (PIL.Image.open(p) for p in slider)
    assert before.size == after.size == (W, H)
    gray = np.asarray(PIL.Image.open(files["gray"]), dtype=np.float32)
    np.testing.assert_allclose(
        np.asarray(before.convert("L"), dtype=np.float32), gray, atol=2
    )  # the input's L
    assert table["data"][0][:3] == [1, "a red car", "#e50000 red"] and table["data"][0][5] in ("yes", "no")
    assert "Done" in status and "56x40 px" in status and "4 steps" in status
    assert "a red car" in legend
    tint = np.asarray(PIL.Image.open(overlay).convert("RGB"), dtype=np.int16)
    assert (np.abs(tint[:, : W // 2, 0] - tint[:, : W // 2, 1]) > 10).all()  # the instance is tinted
    assert (tint[:, W // 2 :, 0] == tint[:, W // 2 :, 1]).all()  # the background stays gray


def test_progress_reports_every_denoising_step(server, files):
    """The page's colorize handler tells gradio's progress tracker about every denoising step. Each call
    is recorded (gradio itself forwards the tracker's latest value to clients at intervals, so sampling
    the stream would make the outcome depend on timing)."""
    from mtcolor.webui.app import build_app

    demo = build_app(server.session)
    demo.upload_file_set.add(files["gray"])  # as if uploaded: the page reads only files it received
    (colorize,) = [f.fn for f in demo.fns.values() if f.api_name == "colorize"]
    calls = []

    def progress(fraction, desc=None, **kwargs):
        calls.append((fraction, desc))

    *_, status = colorize(progress=progress, image=files["gray"], num_inference_steps=30)
    assert "Done" in status and "30 steps" in status
    assert calls == [(0.0, "checking the inputs")] + [
        (k / 30, f"denoising step {k}/30") for k in range(1, 31)
    ]


def test_errors_are_readable_and_the_server_keeps_serving(client, files):
    with pytest.raises(AppError, match=r"instance 1's mask is 12x10 but the image is 56x40"):
        client.predict(
            image=handle_file(files["gray"]),
            text_1="a red car",
            mask_1=handle_file(files["wrong"]),
            api_name="/colorize",
        )
    with pytest.raises(AppError, match=r"working resolution is 100000; enter a value in \[8, 1024\]"):
        client.predict(image=handle_file(files["gray"]), working_resolution=100000, api_name="/colorize")
    with pytest.raises(AppError, match="the input image is not an image this server can read"):
        client.predict(image=handle_file(files["junk"]), api_name="/colorize")
    status = client.predict(image=handle_file(files["gray"]), num_inference_steps=2, api_name="/colorize")[-1]
    assert "Done" in status  # automatic colorization (no instances) still works


def test_lcoins_through_the_same_endpoint(client, files):
    result, *_, status = client.predict(
        image=handle_file(files["gray"]),
        model="lcoins-tiny (embedded)",
        text_1="a red car",
        mask_1=handle_file(files["left"]),
        api_name="/colorize",
    )
    assert PIL.Image.open(result).size == (W, H)
    assert "lcoins-tiny" in status and "caption 'a red car'" in status


def _raw_post(url: str, body: bytes) -> int:
    request = urllib.request.Request(
        url.rstrip("/") + "/gradio_api/queue/join", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_malformed_burst_leaves_the_server_answering(server, client, files):
    """20 malformed requests at once (16 through the client, 4 raw HTTP), then a valid one succeeds."""
    gray = handle_file(files["gray"])
    malformed = [
        {"image": handle_file(files["junk"])},
        {"image": gray, "text_1": "a red car", "mask_1": handle_file(files["wrong"])},
        {"image": gray, "text_1": "a red car", "mask_1": handle_file(files["empty"])},
        {"image": gray, "mask_1": handle_file(files["left"])},
        {"image": gray, "text_1": "a red car"},
        {"image": gray, "text_1": "a red car", "sam_1": "box 1,2,3,4"},
        {"image": gray, "text_1": "x" * 20_000, "mask_1": handle_file(files["left"])},
        {"image": gray, "num_inference_steps": -3},
        {"image": gray, "num_inference_steps": 10**9},
        {"image": gray, "working_resolution": 10**9},
        {"image": gray, "guidance_scale": -1},
        {"image": gray, "seed": 1e30},
        {"image": gray, "fusion": "bogus"},
        {"image": gray, "model": "/etc"},
        {"image": None, "text_1": "a red car"},
        {"image": handle_file(files["junk"]), "mask_1": handle_file(files["junk"]), "text_1": "a"},
    ]
    raw = [b"{not json", json.dumps({"data": [1], "fn_index": 999, "session_hash": "x"}).encode()]
    raw += [json.dumps({"data": "nope", "fn_index": 0, "session_hash": "y"}).encode(), b"\x00" * 4096]
    assert len(malformed) + len(raw) == 20
    start = time.perf_counter()
    raw_codes = []
    posts = [threading.Thread(target=lambda b=b: raw_codes.append(_raw_post(server.url, b))) for b in raw]
    for thread in posts:
        thread.start()
    jobs = [client.submit(**values, api_name="/colorize") for values in malformed]
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=120)
            outcomes.append("ok")
        except Exception as err:  # noqa: BLE001 - every malformed request must fail, whatever the error
            outcomes.append(type(err).__name__)
    for thread in posts:
        thread.join(timeout=60)
    burst = time.perf_counter() - start
    assert "ok" not in outcomes, outcomes
    assert len(raw_codes) == 4 and all(code >= 400 for code in raw_codes), raw_codes
    start = time.perf_counter()
    result, *_, status = client.predict(
        image=gray,
        text_1="a blue cat",
        mask_1=handle_file(files["left"]),
        num_inference_steps=2,
        api_name="/colorize",
    )
    assert "Done" in status and PIL.Image.open(result).size == (W, H)
    print(
        f"\nburst of 20 malformed requests answered in {burst:.1f} s; next valid one {time.perf_counter() - start:.1f} s"
    )


def test_result_table_is_the_colour_error_of_the_downloaded_png(client, files):
    """The table's deltaE00 and 'match' are the colour error (CIEDE2000 at the same L) of the very PNG
    the user downloads against the colour the row asks for (here: picked, overriding the text)."""
    import torch

    from mtcolor.color_targets import parse_color
    from mtcolor.metrics import instance_color_errors

    _, _, download, table, *_ = client.predict(
        image=handle_file(files["gray"]),
        text_1="a green tree",
        color_1="#2a5bd0",
        mask_1=handle_file(files["left"]),
        num_inference_steps=2,
        api_name="/colorize",
    )
    rgb = np.asarray(PIL.Image.open(download["value"]).convert("RGB"), dtype=np.float32) / 255.0
    label_map = masks_to_label_map([np.asarray(PIL.Image.open(files["left"])) > 127])
    (error,) = instance_color_errors(
        torch.from_numpy(rgb).permute(2, 0, 1)[None], label_map[None], [[parse_color("#2a5bd0")]]
    )
    row = table["data"][0]
    assert row[2] == "#2a5bd0" and row[4] == round(error.delta_e00, 1)
    assert row[5] == ("yes" if error.delta_e00 <= 5 else "no")
