"""The gradio page's layout: every component of the page, created in order, and the texts shown in it.

:func:`build_layout` creates the components inside the caller's ``gr.Blocks`` and returns them as one
:class:`Page`; :mod:`mtcolor.webui.app` wires their events to :class:`mtcolor.webui.session.Session`. Nothing here
handles an event.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from mtcolor.sam import SAM_CHECKPOINTS_URL

from .inputs import ATTENTION_MODES, FUSIONS, LIMITS, MAX_INSTANCES
from .overlay import swatch
from .session import SETTING_NAMES, TABLE_HEADERS, Session

TITLE = "mtcolor: instance-aware text-guided colorization"

INTRO = (
    "Upload a gray (or colour) photo, mark each object with a mask (upload one, or paint it) and type the "
    "colour it should have (*a red car*); add a global prompt if you like, then **Colorize**. The result keeps "
    "your image's size and luminance. Or click an example: it loads and runs in one click."
)
CSS = """
#input-image img, #overlay img, #result-image img { width: 100%; height: 100%; object-fit: contain; }
.instance-row { align-items: center; }
.instance-chip { font-size: 1.4em; min-width: 3em !important; flex-grow: 0 !important; }
.swatch-none { color: var(--body-text-color-subdued); }
.color-picker { min-width: 60px !important; flex-grow: 0 !important; }
.remove-row { font-size: 0 !important; }
.remove-row::before { content: "✕" / ""; font-size: var(--button-small-text-size, 14px); }
@media (min-width: 1024px) {
  #outputs { position: sticky; top: 8px; align-self: flex-start; max-height: calc(100vh - 16px); overflow-y: auto; }
}
"""
#: added to the page's <head> as it is (gradio scopes CSS to elements inside its container): its
#: container's overflow becomes clip, which unlike hidden is no scroll container, so the results
#: column (#outputs) sticks to the window
HEAD = """<style>
@media (min-width: 1024px) { .gradio-container { overflow: clip !important; } }
</style>"""
#: parameter names of the colorize endpoint, per instance row
ROW_FIELDS = ("text", "color", "mask", "sam")


def chip(k: int, color: tuple[int, int, int] | None = None) -> str:
    """Instance ``k``'s number and requested colour (a filled square), or an empty outlined square
    when the row requests none (its colour in the overlay)."""
    return f'<span title="instance {k}">{swatch(color)} {k}</span>'


def sam_note(session: Session) -> str:
    """How to use SAM prompts on this server, or how to turn them on."""
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


def describe_settings(session: Session, label: str) -> str:
    """The note under the model menu for the model labelled ``label``."""
    choice = session.choice(label)
    if choice.kind == "lcoins":
        return (
            "L-CoIns colorizes in one pass from one caption (the global prompt, else the instance texts joined); "
            "it has no sampling settings, and the masks serve only the per-instance table."
        )
    return "Defaults are the values this model's recipe measured best (`recipe.json`), where it records them."


@dataclass
class Page:
    """The page's components (gradio blocks), by role. ``groups``, ``texts``, ``masks``, ``sams`` and
    ``removes`` hold one per instance row (:data:`~mtcolor.webui.inputs.MAX_INSTANCES`)."""

    examples: gr.Gallery
    count: gr.State
    accepted: gr.State
    image: gr.Image
    input_note: gr.Markdown
    prompt: gr.Textbox
    groups: list[gr.Group]
    chips: list[gr.HTML]
    texts: list[gr.Textbox]
    colors: list[gr.Textbox]
    pickers: list[gr.ColorPicker]
    masks: list[gr.Image]
    sams: list[gr.Textbox]
    recolors: list[gr.Button]
    removes: list[gr.Button]
    add: gr.Button
    editor: gr.ImageEditor
    target: gr.Dropdown
    use_paint: gr.Button
    model: gr.Dropdown
    settings_note: gr.Markdown
    sampling: gr.Column
    steps: gr.Slider
    guidance: gr.Slider
    alpha: gr.Slider
    beta: gr.Slider
    seed: gr.Number
    working: gr.Slider
    attention: gr.Radio
    fusion: gr.Radio
    run: gr.Button
    undo: gr.Button
    status: gr.Markdown
    compare: gr.ImageSlider
    overlay: gr.Image
    mask_check: gr.Markdown
    download: gr.DownloadButton
    table: gr.Dataframe
    result: gr.Image

    @property
    def settings(self) -> list:
        """The sampling-setting components, in :data:`~mtcolor.webui.session.SETTING_NAMES` order."""
        return [
            self.steps,
            self.guidance,
            self.alpha,
            self.beta,
            self.seed,
            self.attention,
            self.fusion,
            self.working,
        ]

    @property
    def run_inputs(self) -> dict:
        """The colorize endpoint's named parameters -> their components."""
        return {
            "image": self.image,
            "prompt": self.prompt,
            "model": self.model,
            **dict(zip(SETTING_NAMES, self.settings)),
            **{f"text_{k}": c for k, c in enumerate(self.texts, start=1)},
            **{f"color_{k}": c for k, c in enumerate(self.colors, start=1)},
            **{f"mask_{k}": c for k, c in enumerate(self.masks, start=1)},
            **{f"sam_{k}": c for k, c in enumerate(self.sams, start=1)},
        }

    @property
    def run_outputs(self) -> list:
        """What a colorize call fills, in the order the handler returns it."""
        return [
            self.result,
            self.compare,
            self.download,
            self.table,
            self.overlay,
            self.mask_check,
            self.status,
        ]

    @property
    def result_outputs(self) -> list:
        """What a run leaves behind (cleared when the next run starts, so a failed run shows none)."""
        return [self.result, self.compare, self.download, self.table]

    @property
    def preview_inputs(self) -> list:
        """What the instance overlay is drawn from."""
        return [self.image, self.model, self.working, *self.texts, *self.masks, *self.colors]


def build_layout(session: Session) -> Page:
    """Create the page's components for ``session`` (call inside a ``gr.Blocks`` context)."""
    parts: dict = {}
    gr.Markdown(f"# {TITLE}\n{INTRO}")
    parts["examples"] = gr.Gallery(
        value=[(ex.thumbnail, ex.name) for ex in session.examples],
        label="Examples: one click loads and runs one",
        columns=5,
        height=250,
        allow_preview=False,
        object_fit="contain",
        interactive=False,
        elem_id="examples",
    )
    parts["count"] = gr.State(1)
    parts["accepted"] = gr.State(None)  # the input image's path once the server accepted it
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            parts.update(_input_image())
            parts.update(_instance_rows(session))
            parts.update(_paint_section())
            parts.update(_settings_section(session))
            with gr.Row():
                parts["run"] = gr.Button("Colorize", variant="primary", scale=3, elem_id="colorize-btn")
                parts["undo"] = gr.Button("Undo", scale=1, elem_id="undo-btn")
        with gr.Column(scale=6, elem_id="outputs"):  # sticky on wide screens: in view beside long inputs
            parts.update(_outputs())
    return Page(**parts)


def _input_image() -> dict:
    return {
        "image": gr.Image(
            label="Input image (gray or colour, any size, 8/16-bit)",
            type="filepath",
            image_mode=None,
            sources=["upload", "clipboard"],
            height=320,
            elem_id="input-image",
        ),
        "input_note": gr.Markdown(elem_id="input-note"),
        "prompt": gr.Textbox(
            label="Global prompt (optional)", placeholder="a sunny street", elem_id="prompt"
        ),
    }


def _instance_row(session: Session, k: int) -> dict:
    """Row ``k``'s components (shown for row 1 only at first)."""
    with gr.Group(visible=k == 1, elem_id=f"instance-{k}") as group:
        with gr.Row(equal_height=True, elem_classes="instance-row"):
            chip_html = gr.HTML(chip(k), elem_classes="instance-chip", elem_id=f"chip-{k}")
            text = gr.Textbox(
                label=f"Instance {k} text", placeholder="a red car", scale=4, elem_id=f"text-{k}"
            )
            # optional exact colour: the picker fills the field; an empty field = the text's colour word
            picker = gr.ColorPicker(
                label="Pick",
                value="#d0302a",
                scale=0,
                min_width=60,
                elem_id=f"picker-{k}",
                elem_classes="color-picker",
            )
            color = gr.Textbox(
                label=f"Instance {k} colour (optional)",
                placeholder="from the text; or #d0302a, crimson",
                scale=2,
                elem_id=f"color-{k}",
            )
            mask = gr.Image(
                label=f"Instance {k} mask",
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                height=120,
                scale=2,
                elem_id=f"mask-{k}",
            )
            sam = gr.Textbox(
                label=f"Instance {k} SAM prompt",
                placeholder="box 10,20,200,160",
                visible=session.sam_enabled,
                scale=3,
                elem_id=f"sam-{k}",
            )
            recolor = gr.Button(
                f"Re-colour {k}",
                scale=0,
                min_width=90,
                size="sm",
                elem_id=f"recolor-{k}",
            )
            # the text is the button's accessible name; the CSS shows it as a cross
            remove = gr.Button(
                f"Remove instance {k}",
                scale=0,
                min_width=44,
                size="sm",
                elem_id=f"remove-{k}",
                elem_classes="remove-row",
            )
    return {
        "groups": group,
        "chips": chip_html,
        "texts": text,
        "colors": color,
        "pickers": picker,
        "masks": mask,
        "sams": sam,
        "recolors": recolor,
        "removes": remove,
    }


def _instance_rows(session: Session) -> dict:
    rows = {
        key: []
        for key in ("groups", "chips", "texts", "colors", "pickers", "masks", "sams", "recolors", "removes")
    }
    with gr.Accordion("Instances: one mask and one text each", open=True):
        for k in range(1, MAX_INSTANCES + 1):
            for key, component in _instance_row(session, k).items():
                rows[key].append(component)
        rows["add"] = gr.Button("+ Add an instance", size="sm", elem_id="add-instance")
        gr.Markdown(
            "**Colours**: leave a row's colour empty to use the colour its text names (*a lemon star*, "
            "*a car #ff8800*), or pick / type one (`#d0302a`, `rgb(208, 48, 42)`, `crimson`). After a result, "
            "**Re-colour k** runs instance k alone with its current text and colour: every other pixel stays.",
            elem_id="color-note",
        )
        gr.Markdown(sam_note(session), elem_id="sam-note")
    return rows


def _paint_section() -> dict:
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
            target = gr.Dropdown(choices=[1], value=1, label="Instance", scale=1, elem_id="paint-target")
            use_paint = gr.Button("Use the painting as this instance's mask", elem_id="paint-use")
    return {"editor": editor, "target": target, "use_paint": use_paint}


def _slider(name: str, defaults: dict, step: float, label: str, elem_id: str) -> gr.Slider:
    return gr.Slider(*LIMITS[name], step=step, value=defaults[name], label=label, elem_id=elem_id)


def _settings_section(session: Session) -> dict:
    defaults = session.defaults()
    labels = [c.label for c in session.choices]
    parts: dict = {}
    with gr.Accordion("Model and advanced settings", open=False):
        parts["model"] = gr.Dropdown(choices=labels, value=labels[0], label="Model", elem_id="model")
        parts["settings_note"] = gr.Markdown(describe_settings(session, labels[0]))
        with gr.Column(visible=session.default_choice.kind == "mtcolor") as sampling:
            parts["sampling"] = sampling
            parts["steps"] = _slider("num_inference_steps", defaults, 1, "Denoising steps", "steps")
            parts["guidance"] = _slider(
                "guidance_scale",
                defaults,
                0.1,
                "Guidance scale (<= 1 turns classifier-free guidance off)",
                "guidance",
            )
            with gr.Row():
                parts["alpha"] = _slider(
                    "alpha", defaults, 0.05, "alpha: share of per-instance steps", "alpha"
                )
                parts["beta"] = _slider("beta", defaults, 0.05, "beta: global latent weight", "beta")
            with gr.Row():
                parts["seed"] = gr.Number(
                    value=defaults["seed"], precision=0, label="Seed (-1 = random)", elem_id="seed"
                )
                parts["working"] = _slider(
                    "working_resolution",
                    defaults,
                    8,
                    "Working resolution (short side the model runs at)",
                    "working-resolution",
                )
            with gr.Row():
                parts["attention"] = gr.Radio(
                    list(ATTENTION_MODES),
                    value=defaults["attention_mode"],
                    label="Masked attention mode",
                    elem_id="attention-mode",
                )
                parts["fusion"] = gr.Radio(
                    list(FUSIONS), value=defaults["fusion"], label="Fusion", elem_id="fusion"
                )
    return parts


def _outputs() -> dict:
    parts: dict = {"status": gr.Markdown("Results appear here.", elem_id="status")}
    parts["compare"] = gr.ImageSlider(
        label="Before / after", type="pil", format="png", interactive=False, max_height=420, elem_id="compare"
    )
    with gr.Row(equal_height=False):
        parts["overlay"] = gr.Image(
            label="Instances (the label map the masks resolve to)",
            type="numpy",
            format="png",
            interactive=False,
            height=260,
            elem_id="overlay",
        )
        parts["mask_check"] = gr.Markdown(elem_id="mask-check")
    parts["download"] = gr.DownloadButton("Download PNG", interactive=False, elem_id="download-btn")
    parts["table"] = gr.Dataframe(
        headers=TABLE_HEADERS,
        datatype=["number", "str", "str", "str", "number", "str", "str"],
        column_widths=["5%", "24%", "16%", "16%", "8%", "8%", "23%"],
        interactive=False,
        wrap=True,
        label="Per instance: target vs measured colour, CIEDE2000 at the same L (match: ΔE00 <= 5)",
        elem_id="instance-table",
    )
    parts["result"] = gr.Image(
        label="Result at the input's own size",
        height=320,
        type="pil",
        format="png",
        interactive=False,
        elem_id="result-image",
    )
    return parts
