"""The gradio page: layout and event wiring over :class:`webui.session.Session`.

Every event handler here only moves values between the page and the session; any exception is
turned into a readable message in the page (``gr.Error``, escaped, no traceback) and the server
keeps serving. The ``colorize`` endpoint takes named parameters (``image``, ``prompt``, ``model``,
the settings, ``text_1``/``mask_1``/``sam_1`` ... per instance row), so ``gradio_client`` can call it
by name: ``client.predict(image=handle_file(p), text_1="a red car", mask_1=handle_file(m), api_name="/colorize")``.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging

import gradio as gr

from mtcolor.sam import SAM_CHECKPOINTS_URL

from .inputs import ATTENTION_MODES, FUSIONS, LIMITS, MAX_INSTANCES, file_path
from .overlay import instance_color
from .session import SETTING_NAMES, TABLE_HEADERS, Session

logger = logging.getLogger(__name__)

TITLE = "mtcolor: instance-aware text-guided colorization"
INTRO = (
    "Upload a gray (or colour) photo, mark each object with a mask (upload one, or paint it) and type the "
    "colour it should have (*a red car*); add a global prompt if you like, then **Colorize**. The result keeps "
    "your image's size and luminance. Or click an example: it loads and runs in one click."
)
CSS = """
#input-image img, #overlay img, #result-image img { width: 100%; height: 100%; object-fit: contain; }
.instance-row { align-items: center; }
.instance-chip { font-size: 1.4em; min-width: 2.2em !important; flex-grow: 0 !important; }
"""
#: parameter names of the colorize endpoint, per instance row
ROW_FIELDS = ("text", "mask", "sam")


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


def _chip(k: int) -> str:
    return f'<span style="color: rgb{instance_color(k)}" title="instance {k}">■ {k}</span>'


def _sam_note(session: Session) -> str:
    if session.sam_enabled:
        return (
            "**SAM prompts** are on: type `box x0,y0,x1,y1` or `points x,y; x,y` (image pixels) in an instance's "
            "SAM prompt instead of a mask, or choose the instance under *Paint a mask* and click on the instance "
            "overlay to add points."
        )
    return (
        "**SAM point/box prompts** are off. To mark objects with a box or a few clicks instead of a mask, start the "
        f"server with a local [Segment Anything checkpoint]({SAM_CHECKPOINTS_URL}): "
        "`mtcolor ui --sam_checkpoint sam_vit_b_01ec64.pth`."
    )


def build_app(session: Session) -> gr.Blocks:
    """The page for ``session`` (not launched; see :func:`webui.server.launch`)."""
    defaults = session.defaults()
    choice_labels = [c.label for c in session.choices]
    with gr.Blocks(title="mtcolor", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        examples = gr.Gallery(
            value=[(ex.thumbnail, ex.name) for ex in session.examples],
            label="Examples: one click loads and runs one",
            columns=5,
            height=250,
            allow_preview=False,
            object_fit="contain",
            interactive=False,
            elem_id="examples",
        )
        count = gr.State(1)
        with gr.Row(equal_height=False):
            # ---------------------------------------------------------------- inputs
            with gr.Column(scale=5):
                image = gr.Image(
                    label="Input image (gray or colour, any size, 8/16-bit)",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=320,
                    elem_id="input-image",
                )
                input_note = gr.Markdown(elem_id="input-note")
                prompt = gr.Textbox(
                    label="Global prompt (optional)", placeholder="a sunny street", elem_id="prompt"
                )
                groups, texts, masks, sams, removes = [], [], [], [], []
                with gr.Accordion("Instances: one mask and one text each", open=True):
                    for k in range(1, MAX_INSTANCES + 1):
                        with gr.Group(visible=k == 1, elem_id=f"instance-{k}") as group:
                            with gr.Row(equal_height=True, elem_classes="instance-row"):
                                gr.HTML(_chip(k), elem_classes="instance-chip")
                                texts.append(
                                    gr.Textbox(
                                        label=f"Instance {k} text",
                                        placeholder="a red car",
                                        scale=4,
                                        elem_id=f"text-{k}",
                                    )
                                )
                                masks.append(
                                    gr.Image(
                                        label=f"Instance {k} mask",
                                        type="filepath",
                                        image_mode=None,
                                        sources=["upload", "clipboard"],
                                        height=120,
                                        scale=2,
                                        elem_id=f"mask-{k}",
                                    )
                                )
                                sams.append(
                                    gr.Textbox(
                                        label=f"Instance {k} SAM prompt",
                                        placeholder="box 10,20,200,160",
                                        visible=session.sam_enabled,
                                        scale=3,
                                        elem_id=f"sam-{k}",
                                    )
                                )
                                removes.append(
                                    gr.Button("✕", scale=0, min_width=44, size="sm", elem_id=f"remove-{k}")
                                )
                        groups.append(group)
                    add = gr.Button("+ Add an instance", size="sm", elem_id="add-instance")
                    gr.Markdown(_sam_note(session), elem_id="sam-note")
                with gr.Accordion("Paint a mask", open=False):
                    editor = gr.ImageEditor(
                        label="Paint over one object (any brush colour), then use it as an instance's mask",
                        type="numpy",
                        image_mode="RGBA",
                        sources=[],
                        layers=False,
                        transforms=[],
                        brush=gr.Brush(colors=["#ff00ff", "#00e5ff", "#ffe600"], color_mode="fixed"),
                        elem_id="paint-editor",
                    )
                    with gr.Row():
                        target = gr.Dropdown(
                            choices=[1], value=1, label="Instance", scale=1, elem_id="paint-target"
                        )
                        use_paint = gr.Button("Use the painting as this instance's mask", elem_id="paint-use")
                with gr.Accordion("Model and advanced settings", open=False):
                    model = gr.Dropdown(
                        choices=choice_labels, value=choice_labels[0], label="Model", elem_id="model"
                    )
                    settings_note = gr.Markdown(_settings_note(session, choice_labels[0]))
                    with gr.Column(visible=session.default_choice.kind == "mtcolor") as sampling:
                        steps = gr.Slider(
                            *LIMITS["num_inference_steps"],
                            step=1,
                            value=defaults["num_inference_steps"],
                            label="Denoising steps",
                            elem_id="steps",
                        )
                        guidance = gr.Slider(
                            *LIMITS["guidance_scale"],
                            step=0.1,
                            value=defaults["guidance_scale"],
                            label="Guidance scale (<= 1 turns classifier-free guidance off)",
                            elem_id="guidance",
                        )
                        with gr.Row():
                            alpha = gr.Slider(
                                *LIMITS["alpha"],
                                step=0.05,
                                value=defaults["alpha"],
                                label="alpha: share of per-instance steps",
                                elem_id="alpha",
                            )
                            beta = gr.Slider(
                                *LIMITS["beta"],
                                step=0.05,
                                value=defaults["beta"],
                                label="beta: global latent weight",
                                elem_id="beta",
                            )
                        with gr.Row():
                            seed = gr.Number(
                                value=defaults["seed"],
                                precision=0,
                                label="Seed (-1 = random)",
                                elem_id="seed",
                            )
                            working = gr.Slider(
                                *LIMITS["working_resolution"],
                                step=8,
                                value=defaults["working_resolution"],
                                label="Working resolution (short side the model runs at)",
                                elem_id="working-resolution",
                            )
                        with gr.Row():
                            attention = gr.Radio(
                                list(ATTENTION_MODES),
                                value=defaults["attention_mode"],
                                label="Masked attention mode",
                                elem_id="attention-mode",
                            )
                            fusion = gr.Radio(
                                list(FUSIONS), value=defaults["fusion"], label="Fusion", elem_id="fusion"
                            )
                run = gr.Button("Colorize", variant="primary", elem_id="colorize-btn")
            # ---------------------------------------------------------------- outputs
            with gr.Column(scale=6):
                status = gr.Markdown("Results appear here.", elem_id="status")
                compare = gr.ImageSlider(
                    label="Before / after",
                    type="pil",
                    format="png",
                    interactive=False,
                    max_height=420,
                    elem_id="compare",
                )
                with gr.Row(equal_height=False):
                    overlay = gr.Image(
                        label="Instances (the label map the masks resolve to)",
                        type="numpy",
                        format="png",
                        interactive=False,
                        height=260,
                        elem_id="overlay",
                    )
                    mask_check = gr.Markdown(elem_id="mask-check")
                download = gr.DownloadButton("Download PNG", interactive=False, elem_id="download-btn")
                table = gr.Dataframe(
                    headers=TABLE_HEADERS,
                    datatype=["number", "str", "str", "str", "str", "number"],
                    column_widths=["7%", "33%", "17%", "17%", "11%", "15%"],
                    interactive=False,
                    wrap=True,
                    label="Per instance: requested vs measured colour (adherence metric)",
                    elem_id="instance-table",
                )
                result = gr.Image(
                    label="Result at the input's own size",
                    height=320,
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="result-image",
                )

        settings = [steps, guidance, alpha, beta, seed, attention, fusion, working]
        run_inputs = {
            "image": image,
            "prompt": prompt,
            "model": model,
            **dict(zip(SETTING_NAMES, settings)),
            **{f"text_{k}": c for k, c in enumerate(texts, start=1)},
            **{f"mask_{k}": c for k, c in enumerate(masks, start=1)},
            **{f"sam_{k}": c for k, c in enumerate(sams, start=1)},
        }
        run_outputs = [result, compare, download, table, overlay, mask_check, status]
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
        run.click(
            colorize,
            inputs_kwargs=run_inputs,
            outputs=run_outputs,
            api_name="colorize",
            show_progress_on=[compare],
            concurrency_limit=1,
            concurrency_id="pipeline",
            preprocess=False,  # every value is checked by webui.inputs, with readable messages
        )

        # ---------------------------------------------------------------- instance overlay
        preview_inputs = [image, model, working, *texts, *masks]

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

        mask_outputs = [overlay, mask_check]
        latest = {**raw, "trigger_mode": "always_last"}  # a preview of the newest values, none dropped
        gr.on(
            [image.upload, image.clear],
            on_image,
            preview_inputs,
            [*mask_outputs, input_note, editor],
            **latest,
        )
        mask_triggers = [m.upload for m in masks] + [m.clear for m in masks] + [t.blur for t in texts]
        gr.on([*mask_triggers, working.release], on_masks, preview_inputs, mask_outputs, **latest)

        # ---------------------------------------------------------------- model menu
        @guarded("Cannot switch the model")
        def on_model(label):
            d = session.defaults(label)
            diffusion = session.choice(label).kind == "mtcolor"  # L-CoIns has no sampling settings
            return (
                *[d[name] for name in SETTING_NAMES],
                gr.update(visible=diffusion),
                _settings_note(session, label),
            )

        model.change(on_model, [model], [*settings, sampling, settings_note], **quiet).then(
            on_masks, preview_inputs, mask_outputs, **raw
        )

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

        add.click(on_add, [count, target], [count, *groups, target], **quiet)

        @guarded("Cannot remove the instance")
        def on_remove(evt: gr.EventData, n, current_target, image_value, model_value, working_value, *rows):
            index = [button._id for button in removes].index(evt.target._id)
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
            [button.click for button in removes],
            on_remove,
            [count, target, image, model, working, *texts, *masks, *sams],
            [count, *groups, *texts, *masks, *sams, target, overlay, mask_check],
            **raw,
        )

        # ---------------------------------------------------------------- painting
        @guarded("Cannot use the painting")
        def on_paint(editor_value, image_value, target_value):
            path = session.paint(editor_value, image_value, target_value)
            index = int(target_value) - 1
            background = {"background": session.gray(image_value)[1], "layers": [], "composite": None}
            return (*[path if k == index else gr.skip() for k in range(MAX_INSTANCES)], background)

        use_paint.click(on_paint, [editor, image, target], [*masks, editor], **quiet).success(
            on_masks, preview_inputs, mask_outputs, **raw
        )

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

            overlay.select(on_click, [target, *sams], sams, **quiet)

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

        examples.select(
            on_example,
            [model],
            [
                image,
                prompt,
                count,
                *groups,
                *texts,
                *masks,
                *sams,
                *settings,
                target,
                editor,
                overlay,
                mask_check,
                input_note,
                status,
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
            show_progress_on=[compare],
        )
    return demo


def _settings_note(session: Session, label: str) -> str:
    choice = session.choice(label)
    if choice.kind == "lcoins":
        return (
            "L-CoIns colorizes in one pass from one caption (the global prompt, else the instance texts joined); "
            "it has no sampling settings, and the masks serve only the per-instance table."
        )
    return "Defaults are the values this model's recipe measured best (`recipe.json`), where it records them."
