"""The gradio page's events: each handler moves values between the page (:mod:`mtcolor.webui.layout`) and
:class:`mtcolor.webui.session.Session`.

Any exception of a handler is turned into a readable message in the page (``gr.Error``, escaped, no
traceback) and the server keeps serving. The ``colorize`` endpoint takes named parameters (``image``,
``prompt``, ``model``, the settings, ``text_1``/``mask_1``/``sam_1`` ... per instance row), so
``gradio_client`` can call it by name:
``client.predict(image=handle_file(p), text_1="a red car", mask_1=handle_file(m), api_name="/colorize")``.

Handlers read only files gradio itself received or produced for this server
(:class:`mtcolor.webui.received.ReceivedFiles`); a path a client makes up is refused. A run clears the previous
result when it starts, so a failed run leaves none on the page, and says so in the status.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging

import gradio as gr

from .colors import row_target, target_rgb
from .inputs import MAX_INSTANCES
from .layout import Page, build_layout, chip, describe_settings
from .received import ReceivedFiles
from .session import SETTING_NAMES, Session

logger = logging.getLogger(__name__)

QUIET = {"show_progress": "hidden", "api_visibility": "private"}
#: handlers that read uploaded files themselves (readable errors, the ReceivedFiles gate)
RAW = {**QUIET, "preprocess": False}
#: the status while a run goes on, and after one that failed
RUNNING = "Colorizing ..."
FAILED = "**Not colorized**: the message says what to fix. The previous result was cleared."


def _message(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > 800:
        text = text[:800] + " ..."
    return html.escape(text, quote=False)


def guarded(title: str):
    """Show any exception of the handler as a readable message in the page (no traceback)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except ValueError as err:  # the user's input: the message says what to fix
                raise gr.Error(_message(err), duration=None, title=title, print_exception=False) from None
            except Exception as err:  # anything else: log it here, show its type and message
                logger.exception("%s failed", fn.__name__)
                raise gr.Error(
                    f"{type(err).__name__}: {_message(err)} (the server keeps running; try other inputs)",
                    duration=None,
                    title=title,
                    print_exception=False,
                ) from None

        return wrapper

    return decorate


def build_app(session: Session) -> gr.Blocks:
    """The page for ``session`` (not launched; see :func:`mtcolor.webui.server.launch`)."""
    with gr.Blocks(title="mtcolor", delete_cache=(1800, 3600)) as demo:
        page = build_layout(session)
        files = ReceivedFiles(lambda: demo.temp_file_sets)
        colorize = colorize_handler(session, files, list(page.run_inputs))
        page.run.click(_starting, None, [*page.result_outputs, page.status], **QUIET).then(
            colorize, api_name="colorize", **_run_options(page)
        ).failure(_failed, None, [page.status], **QUIET)
        on_masks = _wire_previews(session, page, files)
        _wire_model(session, page, on_masks)
        _wire_rows(session, page, files)
        _wire_paint(session, page, on_masks)
        if session.sam_enabled:
            _wire_sam(page)
        _wire_examples(session, page, colorize)
        _wire_colors(page)
        _wire_edits(session, page, files)
    return demo


def _starting():
    return None, None, gr.DownloadButton(value=None, interactive=False), None, RUNNING


def _cleared():
    return _starting()[:-1]


def _failed():
    return FAILED


def _run_options(page: Page) -> dict:
    return {
        "inputs_kwargs": page.run_inputs,
        "outputs": page.run_outputs,
        "show_progress_on": [page.compare],
        "concurrency_limit": 1,
        "concurrency_id": "pipeline",
        "preprocess": False,  # every value is checked by mtcolor.webui.inputs, with readable messages
    }


def colorize_handler(session: Session, files: ReceivedFiles, names: list[str]):
    """The ``colorize`` endpoint: the optional parameters ``names`` (the page's
    :attr:`~mtcolor.webui.layout.Page.run_inputs`; the function itself takes ``**values``)."""

    @guarded("Cannot colorize")
    def colorize(request: gr.Request = None, progress=gr.Progress(), **values):
        def on_step(done, total):
            progress(done / total, desc=f"denoising step {done}/{total}")

        progress(0.0, desc="checking the inputs")
        rows = range(1, MAX_INSTANCES + 1)
        image, masks = files.check_rows(values.get("image"), [values.get(f"mask_{k}") for k in rows])
        view = session.colorize(
            image,
            [values.get(f"text_{k}") for k in rows],
            masks,
            [values.get(f"sam_{k}") for k in rows],
            values.get("prompt"),
            model=values.get("model"),
            settings={name: values.get(name) for name in SETTING_NAMES},
            on_step=on_step,
            colors=[values.get(f"color_{k}") for k in rows],
            history=_history_key(request),
        )
        return _view_outputs(view)

    colorize.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request
            ),
            inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()),
        ]
        + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in names]
    )
    return colorize


def _history_key(request) -> str | None:
    """The page's history key: gradio's session of the browser tab (or API client)."""
    return getattr(request, "session_hash", None) if request is not None else None


def _view_outputs(view) -> tuple:
    """A :class:`mtcolor.webui.session.RunView` as the values of :attr:`mtcolor.webui.layout.Page.run_outputs`."""
    download = gr.DownloadButton(value=view.png, interactive=True)
    return (
        view.image,
        (view.before, view.image),
        download,
        view.table,
        view.overlay,
        view.legend,
        view.status,
    )


def _preview(session: Session, files: ReceivedFiles, image_value, model_value, working_value, rows):
    """The session's preview of the page's values (the files through the gate first); ``rows`` are
    the texts, the masks and the colours of every row (:attr:`mtcolor.webui.layout.Page.preview_inputs`)."""
    image, masks = files.check_rows(image_value, list(rows[MAX_INSTANCES : 2 * MAX_INSTANCES]))
    texts, colors = list(rows[:MAX_INSTANCES]), list(rows[2 * MAX_INSTANCES : 3 * MAX_INSTANCES])
    return image, session.preview(image, texts, masks, model_value, working_value, colors)


def _wire_previews(session: Session, page: Page, files: ReceivedFiles):
    """The instance overlay, redrawn when the image, a mask, a text or the working resolution changes;
    returns the masks' handler (other events redraw the overlay with it)."""

    @guarded("Cannot read the image")
    def on_image(image_value, model_value, working_value, *rows):
        image, p = _preview(session, files, image_value, model_value, working_value, rows)
        background = {"background": p.gray, "layers": [], "composite": None} if p.gray else None
        return p.overlay, p.legend, p.note, background, image if p.gray else None

    @guarded("Cannot read the masks")
    def on_masks(image_value, model_value, working_value, *rows):
        _, p = _preview(session, files, image_value, model_value, working_value, rows)
        return p.overlay, p.legend

    # a preview of the newest values, none dropped; outside the bounded queue (a page change such as an
    # example load fires many of these, and a full queue answers 503), bounded by the input limits
    latest = {**RAW, "trigger_mode": "always_last", "queue": False}
    outputs = [page.overlay, page.mask_check, page.input_note, page.editor, page.accepted]
    gr.on([page.image.upload, page.image.clear], on_image, page.preview_inputs, outputs, **latest)
    triggers = [m.upload for m in page.masks] + [m.clear for m in page.masks] + [t.blur for t in page.texts]
    triggers += [c.change for c in page.colors]  # typed, picked, or set by an example / a removed row
    mask_outputs = [page.overlay, page.mask_check]
    gr.on([*triggers, page.working.release], on_masks, page.preview_inputs, mask_outputs, **latest)
    return on_masks


def _wire_model(session: Session, page: Page, on_masks) -> None:
    @guarded("Cannot switch the model")
    def on_model(label):
        d = session.defaults(label)
        diffusion = session.choice(label).kind == "mtcolor"  # L-CoIns has no sampling settings
        return (
            *[d[name] for name in SETTING_NAMES],
            gr.update(visible=diffusion),
            describe_settings(session, label),
        )

    page.model.change(
        on_model, [page.model], [*page.settings, page.sampling, page.settings_note], **QUIET
    ).then(on_masks, page.preview_inputs, [page.overlay, page.mask_check], **RAW)


def _visibility(n: int):
    return [gr.update(visible=k < n) for k in range(MAX_INSTANCES)]


def _targets(n: int, value=1):
    return gr.update(choices=list(range(1, n + 1)), value=min(max(1, int(value or 1)), n))


def _wire_rows(session: Session, page: Page, files: ReceivedFiles) -> None:
    """Adding and removing instance rows (later rows move up)."""

    def on_add(n, current_target):
        n = min(int(n) + 1, MAX_INSTANCES)
        if n == MAX_INSTANCES:
            gr.Info(f"This page has {MAX_INSTANCES} instance rows at most.")
        return (n, *_visibility(n), _targets(n, n))

    page.add.click(on_add, [page.count, page.target], [page.count, *page.groups, page.target], **QUIET)

    @guarded("Cannot remove the instance")
    def on_remove(evt: gr.EventData, n, current_target, image_value, model_value, working_value, *rows):
        index = [button._id for button in page.removes].index(evt.target._id)
        image, mask_values = files.check_rows(image_value, list(rows[MAX_INSTANCES : 2 * MAX_INSTANCES]))
        text_values = list(rows[:MAX_INSTANCES])
        sam_values = list(rows[2 * MAX_INSTANCES : 3 * MAX_INSTANCES])
        color_values = list(rows[3 * MAX_INSTANCES :])
        for values, empty in ((text_values, ""), (mask_values, None), (sam_values, ""), (color_values, "")):
            del values[index]  # later rows move up
            values.append(empty)
        n = max(1, int(n) - 1)
        p = session.preview(image, text_values, mask_values, model_value, working_value, color_values)
        return (
            n,
            *_visibility(n),
            *text_values,
            *mask_values,
            *sam_values,
            *color_values,
            _targets(n, current_target),
            p.overlay,
            p.legend,
        )

    rows = [*page.texts, *page.masks, *page.sams, *page.colors]
    gr.on(
        [button.click for button in page.removes],
        on_remove,
        [page.count, page.target, page.image, page.model, page.working, *rows],
        [page.count, *page.groups, *rows, page.target, page.overlay, page.mask_check],
        **RAW,
    )


def _wire_paint(session: Session, page: Page, on_masks) -> None:
    """The painted mask of the image the server accepted (``page.accepted``, server-side state: the
    client cannot point it at another file); the editor's own layers are checked by gradio."""

    @guarded("Cannot use the painting")
    def on_paint(editor_value, image_value, target_value):
        path = session.paint(editor_value, image_value, target_value)
        index = int(target_value) - 1
        background = {"background": session.gray(image_value)[1], "layers": [], "composite": None}
        return (*[path if k == index else gr.skip() for k in range(MAX_INSTANCES)], background)

    page.use_paint.click(
        on_paint, [page.editor, page.accepted, page.target], [*page.masks, page.editor], **QUIET
    ).success(on_masks, page.preview_inputs, [page.overlay, page.mask_check], **RAW)


def _wire_sam(page: Page) -> None:
    def on_click(evt: gr.SelectData, target_value, *sam_values):
        x, y = (int(v) for v in evt.index[:2])
        index = int(target_value or 1) - 1
        values = list(sam_values)
        current = (values[index] or "").strip()
        if current.startswith("points") or (current and "box" not in current):
            values[index] = f"{current}; {x},{y}"
        elif current:
            values[index] = f"{current} | points {x},{y}"
        else:
            values[index] = f"points {x},{y}"
        return values

    page.overlay.select(on_click, [page.target, *page.sams], page.sams, **QUIET)


def _wire_examples(session: Session, page: Page, colorize) -> None:
    """One click on an example loads it (its files are the server's own) and runs it."""

    @guarded("Cannot load the example")
    def on_example(evt: gr.SelectData, model_value):
        example = session.example(evt.index)
        d = session.defaults(model_value)
        if example.working_resolution is not None:
            d["working_resolution"] = max(d["working_resolution"], example.working_resolution)
        n = max(1, len(example.texts))
        text_values = example.texts + [""] * (MAX_INSTANCES - len(example.texts))
        mask_values = example.masks + [None] * (MAX_INSTANCES - len(example.masks))
        p = session.preview(example.image, text_values, mask_values, model_value, d["working_resolution"])
        loaded = f"Example loaded: {html.escape(example.name)}. {RUNNING}"
        return (
            *(example.image, example.prompt, n, *_visibility(n), *text_values, *mask_values),
            *([""] * MAX_INSTANCES + [""] * MAX_INSTANCES + [d[name] for name in SETTING_NAMES]),
            *(_targets(n), {"background": p.gray, "layers": [], "composite": None}),
            *(p.overlay, p.legend, p.note, loaded, example.image),
        )

    outputs = [
        page.image,
        page.prompt,
        page.count,
        *page.groups,
        *page.texts,
        *page.masks,
        *page.sams,
        *page.colors,
    ]
    outputs += [*page.settings, page.target, page.editor, page.overlay, page.mask_check, page.input_note]
    outputs += [page.status, page.accepted]
    page.examples.select(on_example, [page.model], outputs, **QUIET).success(
        _cleared, None, page.result_outputs, **QUIET
    ).success(colorize, api_visibility="private", **_run_options(page)).failure(
        _failed, None, [page.status], **QUIET
    )


def _picked_hex(value) -> str | None:
    """A colour picker's value (``#rrggbb``, ``#rrggbbaa`` or ``rgba(r, g, b, a)``) as ``#rrggbb``."""
    import re

    if not isinstance(value, str):
        return None
    text = value.strip()
    if re.fullmatch(r"#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?", text):
        return text[:7].lower()
    numbers = re.findall(r"[-+]?\d*\.?\d+", text) if text.lower().startswith("rgb") else []
    if len(numbers) >= 3:
        return "#" + "".join(f"{min(255, max(0, round(float(v)))):02x}" for v in numbers[:3])
    return None


def _wire_colors(page: Page) -> None:
    """Each row's chip shows its requested colour (the colour field, else the text's colour word) or an
    empty square; the picker writes its colour into the row's colour field."""

    def on_chips(*rows):
        chips = []
        for k, (text, color) in enumerate(zip(rows[:MAX_INSTANCES], rows[MAX_INSTANCES:]), start=1):
            target, _ = row_target(text if isinstance(text, str) else "", color, k, strict=False)
            chips.append(chip(k, target_rgb(target)))
        return chips

    # one listener for every row (an example or a removed row changes 40 values at once): at most one
    # update runs and one waits
    gr.on(
        [t.change for t in page.texts] + [c.change for c in page.colors],
        on_chips,
        [*page.texts, *page.colors],
        page.chips,
        trigger_mode="always_last",
        queue=False,  # pure and cheap: never a slot of the bounded queue (a full queue answers 503)
        **QUIET,
    )

    for k in range(MAX_INSTANCES):

        def on_pick(value):
            picked = _picked_hex(value)
            return picked if picked is not None else gr.skip()

        page.pickers[k].input(on_pick, page.pickers[k], page.colors[k], **QUIET)


def _wire_edits(session: Session, page: Page, files: ReceivedFiles) -> None:
    """Re-colour one row of the last result (an edit of the previous pipeline output kept in this
    page's server-side history) and undo (back one result)."""

    @guarded("Cannot re-colour the instance")
    def on_recolor(evt: gr.EventData, request: gr.Request, *rows):
        row = [button._id for button in page.recolors].index(evt.target._id) + 1
        texts = list(rows[:MAX_INSTANCES])
        masks = [
            files.check(m, f"instance {k}'s mask")
            for k, m in enumerate(rows[MAX_INSTANCES : 2 * MAX_INSTANCES], 1)
        ]
        colors = list(rows[2 * MAX_INSTANCES :])
        view = session.recolor(row, texts, colors, masks, _history_key(request))
        return _view_outputs(view)

    gr.on(
        [button.click for button in page.recolors],
        _starting,
        None,
        [*page.result_outputs, page.status],
        **QUIET,
    ).then(
        on_recolor,
        [*page.texts, *page.masks, *page.colors],
        page.run_outputs,
        show_progress_on=[page.compare],
        concurrency_limit=1,
        concurrency_id="pipeline",
        api_visibility="private",
        preprocess=False,
    ).failure(_failed, None, [page.status], **QUIET)

    @guarded("Cannot undo")
    def on_undo(request: gr.Request):
        view, earlier = session.undo(_history_key(request))
        texts, colors = [gr.skip()] * MAX_INSTANCES, [gr.skip()] * MAX_INSTANCES
        for instance in earlier.instances:
            texts[instance.index - 1] = instance.text
            colors[instance.index - 1] = instance.color.hex if instance.color is not None else ""
        return (*_view_outputs(view), *texts, *colors)

    page.undo.click(
        on_undo,
        None,
        [*page.run_outputs, *page.texts, *page.colors],
        concurrency_limit=1,
        concurrency_id="pipeline",
        **QUIET,
    )
