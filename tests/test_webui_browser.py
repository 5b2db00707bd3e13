"""The web UI in a real headless browser (Debian's Chromium driven by playwright), end to end.

Loads the page from a server on a free loopback port, clicks a held-out example, waits for the
result, downloads the PNG and checks it: the input's size, the pixels of a mask in the colour its
text asks for (the project's adherence metric), and the same image a direct pipeline call gives.
Then a wrong-size mask: the error is shown in the page and the next valid request works. No
console errors. Screenshots go to the test's temporary folder. Never downloads a browser.
"""

import shutil
import time

import numpy as np
import PIL.Image
import pytest
import torch
from playwright.sync_api import expect, sync_playwright

from mtcolor.masks import masks_to_label_map
from mtcolor.metrics import color_adherence

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000  # bounded waits on page conditions
H, W = 40, 56
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mtcolor.webui.testing import serve

    from mtcolor.threads import torch_threads

    # one torch thread: the browser needs the other core
    with (
        torch_threads(1),
        serve(tmp_path_factory.mktemp("ui"), example_scenes=4, include_photo=True) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    assert executable, (
        "Debian's chromium is not on PATH (`bash run.sh test` installs it; never `playwright install`)"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.console_errors = []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda err: page.console_errors.append(str(err)))
    page.goto(server.url)
    expect(page.locator("#colorize-btn")).to_be_visible()
    yield page
    context.close()


def _rgb(path) -> torch.Tensor:
    return torch.from_numpy(
        np.asarray(PIL.Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    ).permute(2, 0, 1)


def _masks(example) -> list[np.ndarray]:
    return [np.asarray(PIL.Image.open(m)) > 127 for m in example.masks]


def _pick_example(session):
    """The first held-out example where the model gives some instance its text's colour.

    The UI is a thin layer, so this is decided by calling the pipeline directly with the page's
    defaults; chromatic words are preferred (a hue family, not only black / white).
    """
    pipe = session.pipes.get(session.default_choice)
    defaults = session.defaults()
    fallback = None
    for index, example in enumerate(session.examples):
        if example.kind != "held-out":
            continue
        direct = pipe(
            PIL.Image.open(example.image),
            _masks(example),
            example.texts,
            prompt=example.prompt,
            num_inference_steps=defaults["num_inference_steps"],
            guidance_scale=defaults["guidance_scale"],
            working_resolution=defaults["working_resolution"],
            generator=torch.Generator().manual_seed(defaults["seed"]),
            output_type="pt",
        ).images
        adherence = color_adherence(direct, masks_to_label_map(_masks(example))[None], [example.texts])
        agreeing = [item for item in adherence.instances if item.agrees]
        chromatic = [
            item for item in agreeing if item.word not in ("black", "white", "gray", "grey", "silver")
        ]
        if chromatic:
            return index, chromatic[0].instance, direct[0]
        if agreeing and fallback is None:
            fallback = index, agreeing[0].instance, direct[0]
    assert fallback is not None, (
        "the model gives no held-out instance its text's colour; check the embedded model"
    )
    return fallback


def _download(page, folder, name):
    expect(page.locator("#download-btn")).to_be_enabled()
    with page.expect_download() as info:
        page.locator("#download-btn").click()
    path = folder / name
    info.value.save_as(path)
    return path


def test_example_runs_and_downloads_the_requested_colour(page, server, tmp_path):
    session = server.session
    index, instance, direct = _pick_example(session)
    example = session.examples[index]

    start = time.perf_counter()
    page.locator("#examples .thumbnail-item").nth(index).click()
    expect(page.locator("#status")).to_contain_text("Done")
    expect(page.locator("#result-image img")).to_be_visible()
    first_result = time.perf_counter() - start
    print(f"\nfirst result on screen {first_result:.1f} s after clicking example {index + 1}")
    page.screenshot(path=tmp_path / "example.png", full_page=True)

    png = _download(page, tmp_path, "example_result.png")
    image = PIL.Image.open(png)
    assert image.format == "PNG" and image.size == PIL.Image.open(example.image).size
    rgb = _rgb(png)
    adherence = color_adherence(rgb[None], masks_to_label_map(_masks(example))[None], [example.texts])
    chosen = next(item for item in adherence.instances if item.instance == instance)
    assert chosen.agrees, f"{chosen.text!r}: measured Lab {chosen.measured} is not {chosen.word}"
    assert example.colors[instance - 1] == chosen.word  # the requested colour is the ground truth
    np.testing.assert_allclose(rgb.numpy(), direct.numpy(), atol=1 / 255 + 1e-6)  # a thin layer
    for text in example.texts:  # the per-instance table
        expect(page.locator("#instance-table")).to_contain_text(text)
    assert page.console_errors == []


def test_wrong_size_mask_shows_the_error_and_the_next_request_works(page, server, tmp_path):
    gray = tmp_path / "gray.png"
    PIL.Image.fromarray((np.random.default_rng(0).random((H, W)) * 200 + 30).astype(np.uint8)).save(gray)
    wrong = tmp_path / "wrong.png"
    PIL.Image.fromarray(np.full((10, 12), 255, np.uint8)).save(wrong)
    good = np.zeros((H, W), np.uint8)
    good[:, : W // 2] = 255
    right = tmp_path / "right.png"
    PIL.Image.fromarray(good).save(right)

    page.locator("#input-image input[type=file]").set_input_files(str(gray))
    expect(page.locator("#input-note")).to_contain_text("56x40 px")
    # add a row, then remove the first: the second row's values move up
    page.locator("#text-1 textarea").fill("a green tree")
    page.locator("#add-instance").click()
    expect(page.locator("#text-2 textarea")).to_be_visible()
    page.locator("#text-2 textarea").fill("a blue cat")
    page.locator("#remove-1").click()
    expect(page.locator("#text-2 textarea")).to_be_hidden()
    expect(page.locator("#text-1 textarea")).to_have_value("a blue cat")
    page.locator("#mask-1 input[type=file]").set_input_files(str(wrong))
    message = "instance 1's mask is 12x10 but the image is 56x40"
    expect(page.locator("#mask-check")).to_contain_text(message)  # flagged as soon as it is uploaded
    page.locator("#colorize-btn").click()
    expect(page.get_by_text(message).last).to_be_visible()  # and again when colorizing, in the page
    assert "Traceback" not in page.content()
    page.screenshot(path=tmp_path / "error.png", full_page=True)

    page.locator("#mask-1 button[aria-label='Remove Image']").click()
    page.locator("#mask-1 input[type=file]").set_input_files(str(right))
    expect(page.locator("#mask-check")).not_to_contain_text("12x10")
    page.locator("#colorize-btn").click()
    expect(page.locator("#status")).to_contain_text("56x40 px")
    png = _download(page, tmp_path, "second.png")
    assert PIL.Image.open(png).size == (W, H)
    page.screenshot(path=tmp_path / "after_error.png", full_page=True)
    errors = [e for e in page.console_errors if "12x10" not in e]  # the deliberate error may be logged
    assert errors == []


def _scene_files(folder):
    gray = folder / "gray.png"
    PIL.Image.fromarray((np.random.default_rng(0).random((H, W)) * 200 + 30).astype(np.uint8)).save(gray)
    good = np.zeros((H, W), np.uint8)
    good[:, : W // 2] = 255
    PIL.Image.fromarray(good).save(folder / "right.png")
    PIL.Image.fromarray(np.full((10, 12), 255, np.uint8)).save(folder / "wrong.png")
    return gray, folder / "right.png", folder / "wrong.png"


def test_a_failed_run_clears_the_previous_result(page, tmp_path):
    """After a valid run, a failing one leaves no result, table or download behind and says so."""
    gray, right, wrong = _scene_files(tmp_path)
    page.locator("#input-image input[type=file]").set_input_files(str(gray))
    expect(page.locator("#input-note")).to_contain_text("56x40 px")
    page.locator("#text-1 textarea").fill("a green tree")
    page.locator("#mask-1 input[type=file]").set_input_files(str(right))
    page.locator("#colorize-btn").click()
    expect(page.locator("#status")).to_contain_text("Done")
    expect(page.locator("#result-image img")).to_be_visible()
    expect(page.locator("#instance-table")).to_contain_text("a green tree")
    expect(page.locator("#download-btn")).to_be_enabled()

    page.locator("#mask-1 button[aria-label='Remove Image']").click()
    page.locator("#mask-1 input[type=file]").set_input_files(str(wrong))
    expect(page.locator("#mask-check")).to_contain_text("12x10")
    page.locator("#colorize-btn").click()
    expect(page.locator("#status")).to_contain_text("Not colorized")
    expect(page.locator("#status")).not_to_contain_text("Done")
    expect(page.locator("#result-image img")).to_have_count(0)
    expect(page.locator("#instance-table")).not_to_contain_text("a green tree")
    expect(page.locator("#download-btn")).to_be_disabled()
    page.screenshot(path=tmp_path / "failed_after_success.png", full_page=True)


def _in_view(page, selector: str) -> bool:
    return page.evaluate(
        """(selector) => {
            const r = document.querySelector(selector).getBoundingClientRect();
            return r.height > 0 && r.top >= 0 && r.top < window.innerHeight;
        }""",
        selector,
    )


def test_twelve_instances_keep_the_result_in_view(page, tmp_path):
    """With 12 instance rows Colorize is far down the page; when the run ends there, the status and the
    before / after view are in the viewport. Each row's remove button has an accessible name."""
    gray, right, _ = _scene_files(tmp_path)
    page.locator("#input-image input[type=file]").set_input_files(str(gray))
    expect(page.locator("#input-note")).to_contain_text("56x40 px")
    for k in range(2, 13):
        page.locator("#add-instance").click()
        expect(page.locator(f"#text-{k} textarea")).to_be_visible()
    left = tmp_path / "left.png"
    PIL.Image.fromarray(255 - np.asarray(PIL.Image.open(right))).save(left)
    for k, mask in ((1, right), (12, left)):
        page.locator(f"#text-{k} textarea").fill(f"a green tree {k}")
        page.locator(f"#mask-{k} input[type=file]").set_input_files(str(mask))
    expect(page.locator("#mask-check")).to_contain_text("a green tree 12")
    page.locator("#colorize-btn").click()
    expect(page.locator("#status")).to_contain_text("Done")
    assert page.evaluate("window.scrollY") > 1000  # the page is scrolled down to the button
    assert _in_view(page, "#colorize-btn")
    assert _in_view(page, "#status") and _in_view(page, "#compare")
    page.screenshot(path=tmp_path / "twelve.png")
    remove = page.get_by_role("button", name="Remove instance 12", exact=True)
    expect(remove).to_be_visible()
    assert remove.bounding_box()["width"] < 80  # the name is not shown: the button stays a small cross


def test_recolour_one_row_keeps_every_pixel_outside_it_in_the_download(page, tmp_path):
    """Colorize two instances, download; change row 2's text and colour, press *Re-colour 2*,
    download again: every pixel outside instance 2 equals the first download, some inside differ.
    The row's chip shows the picked colour; Undo brings back the first result; the page stays usable."""
    gray, right, _ = _scene_files(tmp_path)
    corner = np.zeros((H, W), np.uint8)
    corner[H // 2 :, W // 2 + 4 :] = 255
    PIL.Image.fromarray(corner).save(tmp_path / "corner.png")
    page.locator("#input-image input[type=file]").set_input_files(str(gray))
    expect(page.locator("#input-note")).to_contain_text("56x40 px")
    page.locator("#text-1 textarea").fill("a lemon star")
    page.locator("#mask-1 input[type=file]").set_input_files(str(right))
    page.locator("#add-instance").click()
    page.locator("#text-2 textarea").fill("a red car")
    page.locator("#mask-2 input[type=file]").set_input_files(str(tmp_path / "corner.png"))
    expect(page.locator("#mask-check")).to_contain_text("a red car")
    page.locator("#recolor-2").click()  # before any result: a message, the page stays usable
    expect(page.get_by_text("nothing to re-colour yet").last).to_be_visible()
    page.locator("#colorize-btn").click()
    expect(page.locator("#status")).to_contain_text("Done")
    expect(page.locator("#instance-table")).to_contain_text("#e50000 red")
    first = _rgb(_download(page, tmp_path, "first.png")).numpy()

    page.locator("#text-2 textarea").fill("a car")
    page.locator("#color-2 textarea").fill("#2a5bd0")
    page.locator("#color-2 textarea").blur()
    expect(page.locator("#chip-2 .swatch")).to_have_attribute("style", "color: #2a5bd0")
    page.locator("#recolor-2").click()
    expect(page.locator("#status")).to_contain_text("Re-coloured instance 2 alone")
    expect(page.locator("#instance-table")).to_contain_text("#2a5bd0")
    second = _rgb(_download(page, tmp_path, "second.png")).numpy()
    inside = corner > 0
    assert (second[:, ~inside] == first[:, ~inside]).all()
    assert (second[:, inside] != first[:, inside]).any()
    page.screenshot(path=tmp_path / "recolour.png", full_page=True)

    page.locator("#undo-btn").click()
    expect(page.locator("#status")).to_contain_text("Undone")
    expect(page.locator("#text-2 textarea")).to_have_value("a red car")
    undone = _rgb(_download(page, tmp_path, "undone.png")).numpy()
    assert (undone == first).all()
    errors = [e for e in page.console_errors if "re-colour" not in e]  # the deliberate error may be logged
    assert errors == []
