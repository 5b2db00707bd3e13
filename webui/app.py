"""The gradio page's events: each handler moves values between the page (:mod:`webui.layout`) and
:class:`webui.session.Session`.

Any exception of a handler is turned into a readable message in the page (``gr.Error``, escaped, no
traceback) and the server keeps serving. The ``colorize`` endpoint takes named parameters (``image``,
``prompt``, ``model``, the settings, ``text_1``/``mask_1``/``sam_1`` ... per instance row), so
``gradio_client`` can call it by name:
``client.predict(image=handle_file(p), text_1="a red car", mask_1=handle_file(m), api_name="/colorize")``.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging

import gradio as gr

from .inputs import MAX_INSTANCES, file_path
from .layout import build_layout, describe_settings
from .session import SETTING_NAMES, Session

logger = logging.getLogger(__name__)


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
    """The page for ``session`` (not launched; see :func:`webui.server.launch`)."""
    with gr.Blocks(title="mtcolor", delete_cache=(1800, 3600)) as demo:
        page = build_layout(session)
        settings, run_inputs, run_outputs = page.settings, page.run_inputs, page.run_outputs
        quiet = {"show_progress": "hidden", "api_visibility": "private"}
        raw = {**quiet, "preprocess": False}  # handlers that read uploaded files themselves (readable errors)

        @guarded("Cannot colorize")
        def colorize(progress=gr.Progress(), **values):
            def on_step(done, total):
                progress(done / total, desc=f"denoising step {done}/{total}")

            progress(0.0, desc="checking the inputs")
            view = session.colorize(
                values.get("image"),
                [values.get(f"text_{k}") for k in range(1, MAX_INSTANCES + 1)],
                [values.get(f"mask_{k}") for k in range(1, MAX_INSTANCES + 1)],
                [values.get(f"sam_{k}") for k in range(1, MAX_INSTANCES + 1)],
                values.get("prompt"),
                model=values.get("model"),
                settings={name: values.get(name) for name in SETTING_NAMES},
                on_step=on_step,
            )
            return (
                view.image,
                (view.before, view.image),
                gr.DownloadButton(value=view.png, interactive=True),
                view.table,
                view.overlay,
                view.legend,
                view.status,
            )

        # Named, optional parameters for gradio_client (the function itself takes **values).
        colorize.__signature__ = inspect.Signature(
            [inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())]
            + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in run_inputs]
        )
        page.run.click(
            colorize,
            inputs_kwargs=run_inputs,
            outputs=run_outputs,
            api_name="colorize",
            show_progress_on=[page.compare],
            concurrency_limit=1,
            concurrency_id="pipeline",
            preprocess=False,  # every value is checked by webui.inputs, with readable messages
        )

        # ---------------------------------------------------------------- instance overlay
        preview_inputs = page.preview_inputs

        def _preview(image_value, model_value, working_value, *rows):
            return session.preview(
                image_value,
                list(rows[:MAX_INSTANCES]),
                list(rows[MAX_INSTANCES:]),
                model_value,
                working_value,
            )

        @guarded("Cannot read the image")
        def on_image(image_value, model_value, working_value, *rows):
            p = _preview(image_value, model_value, working_value, *rows)
            background = {"background": p.gray, "layers": [], "composite": None} if p.gray else None
            return p.overlay, p.legend, p.note, background

        @guarded("Cannot read the masks")
        def on_masks(image_value, model_value, working_value, *rows):
            p = _preview(image_value, model_value, working_value, *rows)
            return p.overlay, p.legend

        mask_outputs = [page.overlay, page.mask_check]
        latest = {**raw, "trigger_mode": "always_last"}  # a preview of the newest values, none dropped
        gr.on(
            [page.image.upload, page.image.clear],
            on_image,
            preview_inputs,
            [*mask_outputs, page.input_note, page.editor],
            **latest,
        )
        mask_triggers = (
            [m.upload for m in page.masks] + [m.clear for m in page.masks] + [t.blur for t in page.texts]
        )
        gr.on([*mask_triggers, page.working.release], on_masks, preview_inputs, mask_outputs, **latest)

        # ---------------------------------------------------------------- model menu
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
            on_model, [page.model], [*settings, page.sampling, page.settings_note], **quiet
        ).then(on_masks, preview_inputs, mask_outputs, **raw)

        # ---------------------------------------------------------------- instance rows
        def _visibility(n: int):
            return [gr.update(visible=k < n) for k in range(MAX_INSTANCES)]

        def _targets(n: int, value=1):
            return gr.update(choices=list(range(1, n + 1)), value=min(max(1, int(value or 1)), n))

        def on_add(n, current_target):
            n = min(int(n) + 1, MAX_INSTANCES)
            if n == MAX_INSTANCES:
                gr.Info(f"This page has {MAX_INSTANCES} instance rows at most.")
            return (n, *_visibility(n), _targets(n, n))

        page.add.click(on_add, [page.count, page.target], [page.count, *page.groups, page.target], **quiet)

        @guarded("Cannot remove the instance")
        def on_remove(evt: gr.EventData, n, current_target, image_value, model_value, working_value, *rows):
            index = [button._id for button in page.removes].index(evt.target._id)
            text_values = list(rows[:MAX_INSTANCES])
            mask_values = [file_path(value) for value in rows[MAX_INSTANCES : 2 * MAX_INSTANCES]]
            sam_values = list(rows[2 * MAX_INSTANCES :])
            for values, empty in ((text_values, ""), (mask_values, None), (sam_values, "")):
                del values[index]  # later rows move up
                values.append(empty)
            n = max(1, int(n) - 1)
            p = session.preview(image_value, text_values, mask_values, model_value, working_value)
            return (
                n,
                *_visibility(n),
                *text_values,
                *mask_values,
                *sam_values,
                _targets(n, current_target),
                p.overlay,
                p.legend,
            )

        gr.on(
            [button.click for button in page.removes],
            on_remove,
            [
                page.count,
                page.target,
                page.image,
                page.model,
                page.working,
                *page.texts,
                *page.masks,
                *page.sams,
            ],
            [
                page.count,
                *page.groups,
                *page.texts,
                *page.masks,
                *page.sams,
                page.target,
                page.overlay,
                page.mask_check,
            ],
            **raw,
        )

        # ---------------------------------------------------------------- painting
        @guarded("Cannot use the painting")
        def on_paint(editor_value, image_value, target_value):
            path = session.paint(editor_value, image_value, target_value)
            index = int(target_value) - 1
            background = {"background": session.gray(image_value)[1], "layers": [], "composite": None}
            return (*[path if k == index else gr.skip() for k in range(MAX_INSTANCES)], background)

        page.use_paint.click(
            on_paint, [page.editor, page.image, page.target], [*page.masks, page.editor], **quiet
        ).success(on_masks, preview_inputs, mask_outputs, **raw)

        if session.sam_enabled:

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

            page.overlay.select(on_click, [page.target, *page.sams], page.sams, **quiet)

        # ---------------------------------------------------------------- examples
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
            return (
                example.image,
                example.prompt,
                n,
                *_visibility(n),
                *text_values,
                *mask_values,
                *([""] * MAX_INSTANCES),
                *[d[name] for name in SETTING_NAMES],
                _targets(n),
                {"background": p.gray, "layers": [], "composite": None},
                p.overlay,
                p.legend,
                p.note,
                f"Example loaded: {html.escape(example.name)}. Colorizing ...",
            )

        page.examples.select(
            on_example,
            [page.model],
            [
                page.image,
                page.prompt,
                page.count,
                *page.groups,
                *page.texts,
                *page.masks,
                *page.sams,
                *settings,
                page.target,
                page.editor,
                page.overlay,
                page.mask_check,
                page.input_note,
                page.status,
            ],
            **quiet,
        ).success(
            colorize,
            inputs_kwargs=run_inputs,
            outputs=run_outputs,
            concurrency_limit=1,
            concurrency_id="pipeline",
            api_visibility="private",
            preprocess=False,
            show_progress_on=[page.compare],
        )
    return demo
