"""The server's state and one method per page action, free of gradio (tested without a browser).

:class:`Session` owns the model menu, the loaded pipelines, the examples and a scratch folder for
the files it serves (results, painted masks, gray previews). Its methods take the page's values
and return plain Python values; user mistakes raise ``ValueError`` with a readable message, which
:mod:`mtcolor.webui.app` shows in the page.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from .colors import TABLE_HEADERS, parse_row_color, row_target, target_rgb
from .examples import Example, build_examples
from .inputs import (
    MAX_INSTANCES,
    ColorizeRequest,
    build_request,
    check_settings,
    check_text,
    check_working_size,
    describe_input,
    file_path,
    gray_preview,
    open_image,
    painted_mask,
    read_mask,
)
from .models import ModelChoice, PipelineCache, model_choices, recommended_settings
from .overlay import (
    label_overlay,
    legend,
    overlap_messages,
    page_numbers,
    resolve_label_map,
    vanishing_messages,
)
from .run import ColorizeResult, colorize

#: results kept per page (browser session) for undo, and pages with a history at once
HISTORY_LENGTH = 8
HISTORY_SESSIONS = 16
#: memory the histories may hold in all (estimated from the pixels kept); a page's newest result is
#: kept whatever its size, as the next re-colour edits it
HISTORY_BYTES = 512 * 2**20

#: the settings the page sends with every run, in the order of :func:`mtcolor.webui.inputs.check_settings`
SETTING_NAMES = (
    "num_inference_steps",
    "guidance_scale",
    "alpha",
    "beta",
    "seed",
    "attention_mode",
    "fusion",
    "working_resolution",
)


@dataclass
class ServerConfig:
    """How ``mtcolor ui`` was started.

    Attributes:
        model: an extra pipeline folder for the model menu (``--model``).
        sam_checkpoint: a local Segment Anything checkpoint (``--sam_checkpoint``); enables SAM prompts.
        sam_model_type: its architecture (``vit_b`` / ``vit_l`` / ``vit_h``).
        device: ``cpu`` / ``cuda`` (default: the pipelines' default, CPU).
        example_scenes: held-out synthetic scenes among the examples.
        include_photo: add the VOC photo example.
        workdir: scratch folder for served files (default: a new temporary folder).
    """

    model: str | None = None
    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_b"
    device: str | None = None
    example_scenes: int = 4
    include_photo: bool = True
    workdir: str | None = None


class Workspace:
    """Files the server hands out, under one folder; only the newest ``keep`` are kept on disk."""

    def __init__(self, root: str | Path, keep: int = 256):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._files: deque[Path] = deque()
        self._keep = keep
        self._lock = threading.Lock()

    def new_path(self, name: str) -> Path:
        """A fresh path ``<root>/files/<random>/<name>`` (its folder exists)."""
        folder = self.root / "files" / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        path = folder / name
        with self._lock:
            self._files.append(path)
            while len(self._files) > self._keep:
                old = self._files.popleft()
                old.unlink(missing_ok=True)
                try:
                    old.parent.rmdir()
                except OSError:
                    pass
        return path

    def save_png(self, image: PIL.Image.Image | np.ndarray, name: str) -> str:
        if isinstance(image, np.ndarray):
            image = PIL.Image.fromarray(image)
        path = self.new_path(name)
        image.save(path, format="PNG")
        return str(path)


@dataclass
class Preview:
    """The instance overlay before a run."""

    overlay: np.ndarray | None  # (H, W, 3) uint8, or None without an image
    legend: str  # markdown: instances + mask check
    note: str  # markdown: notes on the input image
    gray: str | None = None  # path of the 8-bit gray PNG (the paint editor's background)


@dataclass
class RunView:
    """What the page shows after a run."""

    image: PIL.Image.Image  # the result at the input's size
    before: PIL.Image.Image  # the gray input as RGB (the comparison's left side)
    png: str  # the result as a PNG file (download)
    table: list[list]  # TABLE_HEADERS rows
    overlay: np.ndarray  # resolved instances over the gray input
    legend: str
    status: str
    result: ColorizeResult


@dataclass
class HistoryEntry:
    """One result in a page's history: the checked request it ran, the model, what the page showed."""

    request: ColorizeRequest
    choice: ModelChoice
    view: RunView

    @property
    def nbytes(self) -> int:
        """Estimated memory: result, before image, overlay and gray (3+3+3+1 bytes per pixel), the
        input, the label map of the edit state and one byte per pixel per mask."""
        width, height = self.view.image.size
        return width * height * (10 + 4 + 1 + len(self.view.result.masks))


class HistoryStore:
    """Each page's recent results (newest last), server-side and bounded: at most ``length`` per page,
    ``sessions`` pages (the least recently used page's history is dropped) and ``max_bytes`` in all
    (oldest results first, but never a page's newest)."""

    def __init__(
        self, length: int = HISTORY_LENGTH, sessions: int = HISTORY_SESSIONS, max_bytes: int = HISTORY_BYTES
    ):
        self.length, self.sessions, self.max_bytes = length, sessions, max_bytes
        self._pages: OrderedDict[str, list[HistoryEntry]] = OrderedDict()
        self._lock = threading.Lock()

    def push(self, key: str, entry: HistoryEntry) -> None:
        with self._lock:
            entries = self._pages.setdefault(key, [])
            entries.append(entry)
            del entries[: max(0, len(entries) - self.length)]
            self._pages.move_to_end(key)
            while len(self._pages) > self.sessions:
                self._pages.popitem(last=False)
            self._trim()

    def _trim(self) -> None:
        def total() -> int:
            return sum(e.nbytes for entries in self._pages.values() for e in entries)

        while total() > self.max_bytes:
            droppable = [(k, entries) for k, entries in self._pages.items() if len(entries) > 1]
            if not droppable:
                break
            droppable[0][1].pop(0)  # the oldest result of the least recently used page with two or more

    def entries(self, key: str | None) -> list[HistoryEntry]:
        with self._lock:
            return list(self._pages.get(key, [])) if key is not None else []

    def undo(self, key: str | None) -> HistoryEntry:
        """Drop the page's newest result and return the one before it."""
        with self._lock:
            entries = self._pages.get(key, []) if key is not None else []
            if len(entries) < 2:
                raise ValueError("nothing to undo: this page's history has no earlier result.")
            entries.pop()
            return entries[-1]


class Session:
    """Server-side state of ``mtcolor ui`` (shared by every browser tab)."""

    def __init__(self, config: ServerConfig | None = None):
        self.config = config or ServerConfig()
        self.choices: list[ModelChoice] = model_choices(self.config.model)
        self.pipes = PipelineCache(device=self.config.device)
        self._sam_masker = None  # built on the first SAM prompt (see sam_masker)
        root = self.config.workdir or tempfile.mkdtemp(prefix="mtcolor-ui-")
        self.workspace = Workspace(root)
        scene_model = next((c.path for c in self.choices if c.kind == "mtcolor"), None)
        self.examples: list[Example] = build_examples(
            self.workspace.root / "examples",
            model_folder=scene_model,
            num_scenes=self.config.example_scenes,
            include_photo=self.config.include_photo,
            max_instances=MAX_INSTANCES,
        )
        self._gray_cache: dict[str, tuple[PIL.Image.Image, str]] = {}
        self._gray_lock = threading.Lock()
        self.history = HistoryStore()

    # ------------------------------------------------------------------ models
    @property
    def sam_enabled(self) -> bool:
        return self.config.sam_checkpoint is not None

    def sam_masker(self):
        """The server's :class:`mtcolor.sam.SamMasker`, built from ``--sam_checkpoint`` when first
        needed and kept by this session (one SAM model per server)."""
        if self._sam_masker is None:
            from mtcolor.sam import SamMasker

            self._sam_masker = SamMasker(self.config.sam_checkpoint, self.config.sam_model_type)
        return self._sam_masker

    @property
    def default_choice(self) -> ModelChoice:
        return self.choices[0]

    def choice(self, label: str | None) -> ModelChoice:
        """The model menu entry called ``label`` (None: the default)."""
        if label is None:
            return self.default_choice
        for choice in self.choices:
            if label in (choice.label, choice.path):
                return choice
        raise ValueError(
            f"model {label!r} is not offered here; choose one of {[c.label for c in self.choices]}."
        )

    def defaults(self, label: str | None = None) -> dict:
        """The recommended settings of a model (see :func:`mtcolor.webui.models.recommended_settings`)."""
        return recommended_settings(self.choice(label))

    def preload(self, label: str | None = None) -> None:
        """Load a model now (the server does this for the default model before it serves)."""
        self.pipes.get(self.choice(label))

    # ------------------------------------------------------------------ preview
    def gray(self, image) -> tuple[PIL.Image.Image, str]:
        """The gray image the model sees and its PNG path (cached per uploaded file)."""
        picture = open_image(image)
        key = f"{file_path(image)}:{picture.size}:{picture.mode}"
        with self._gray_lock:
            if key in self._gray_cache:
                return self._gray_cache[key]
        gray = gray_preview(picture)
        value = (gray, self.workspace.save_png(gray, "gray.png"))
        with self._gray_lock:
            if len(self._gray_cache) > 32:
                self._gray_cache.clear()
            self._gray_cache[key] = value
        return value

    def preview(
        self, image, texts: list, masks: list, model: str | None = None, working_resolution=None, colors=None
    ) -> Preview:
        """The overlay of whatever masks are there so far, and what the pipeline will warn about.

        Never raises for user input: problems (a mask of the wrong size, an unreadable file) are
        listed in the legend instead.
        """
        if image is None:
            return Preview(None, legend([], [], []), "")
        try:
            picture = open_image(image)
            gray, gray_path = self.gray(image)
        except ValueError as err:
            return Preview(None, legend([], [], [str(err)]), "")
        width, height = picture.size
        note = f"{width}x{height} px, mode {picture.mode}. " + " ".join(describe_input(picture))
        rows, bools, names, problems, requested = [], [], [], [], []
        colors = list(colors) if colors is not None else [None] * len(texts)
        for row, (text, mask, color) in enumerate(zip(texts, masks, colors), start=1):
            if mask is None:
                continue
            try:
                bools.append(read_mask(mask, row, picture.size))
            except ValueError as err:
                problems.append(str(err))
                continue
            rows.append(row)
            names.append((text or "").strip() or "(no text yet)")
            target, reason = row_target(text if isinstance(text, str) else "", color, row, strict=False)
            requested.append(target_rgb(target))
            if target is None and color and isinstance(color, str) and color.strip():
                problems.append(reason)  # an explicit colour the page cannot read
        label_map = resolve_label_map(bools)
        messages = problems + overlap_messages(bools, rows)
        messages += self._model_messages(picture.size, label_map, names, rows, model, working_resolution)
        return Preview(
            label_overlay(gray, label_map, requested),
            legend(rows, names, messages, colors=requested),
            note,
            gray_path,
        )

    def _model_messages(self, size, label_map, names, rows, model, working_resolution) -> list[str]:
        """What the chosen MT-Color model would refuse or lose at the working resolution: a working size
        beyond the limits (:func:`mtcolor.webui.inputs.check_working_size`), instances smaller than a token."""
        try:
            choice = self.choice(model)
            resolution = check_settings(
                20, 1.0, 0.2, 0.2, 0, "paper", "paper", working_resolution
            ).working_resolution
        except ValueError:
            return []
        pipe = self.pipes.loaded(choice)
        if choice.kind != "mtcolor" or pipe is None:
            return []
        try:
            check_working_size(size, resolution, pipe.vae_scale_factor)
        except ValueError as err:
            return [str(err)]
        if label_map is None:
            return []
        return vanishing_messages(pipe, label_map, names, rows, resolution)

    # ------------------------------------------------------------------ actions
    def example(self, index) -> Example:
        try:
            return self.examples[int(index)]
        except (IndexError, TypeError, ValueError):
            raise ValueError(f"example {index!r} does not exist; click one of the examples.") from None

    def paint(self, editor_value, image, target) -> str:
        """Save what is painted in the editor as instance ``target``'s mask; returns the mask PNG."""
        if image is None:
            raise ValueError("upload an image (or click an example) before painting a mask.")
        picture = open_image(image)
        mask = painted_mask(editor_value, picture.size)
        if mask is None:
            raise ValueError(
                "nothing is painted yet: paint over the object with the brush, then click again."
            )
        if not isinstance(target, (int, float)) or not 1 <= int(target) <= MAX_INSTANCES:
            raise ValueError(f"instance {target!r} does not exist; pick an instance number.")
        return self.workspace.save_png(mask.astype(np.uint8) * 255, f"mask_{int(target)}_painted.png")

    def request(
        self, image, texts, masks, sam_prompts, prompt, settings: dict, colors=None
    ) -> ColorizeRequest:
        """Check the page's values (see :func:`mtcolor.webui.inputs.build_request`)."""
        checked = check_settings(*(settings.get(name) for name in SETTING_NAMES))
        return build_request(image, texts, masks, sam_prompts, prompt, checked, self.sam_enabled, colors)

    def colorize(
        self,
        image,
        texts,
        masks,
        sam_prompts=None,
        prompt="",
        model=None,
        settings=None,
        on_step=None,
        colors=None,
        history: str | None = None,
    ) -> RunView:
        """Check, run the pipeline once, and lay out the result for the page; with a ``history`` key
        (the page's session) the result joins that page's history (re-colour and undo use it).
        ``colors``: per row an explicit colour or None / "" (the text's colour word, if any)."""
        choice = self.choice(model)
        settings = {
            **self.defaults(choice.label),
            **{k: v for k, v in (settings or {}).items() if v is not None},
        }
        request = self.request(image, texts, masks, sam_prompts, prompt, settings, colors)
        return self._run(choice, request, on_step, history)

    def _run(self, choice, request, on_step, history, edit: tuple | None = None) -> RunView:
        """One pipeline call (``edit``: the entry edited and the 0-based instance) -> the page's view."""
        pipe = self.pipes.get(choice)
        if choice.kind == "mtcolor":  # refused here, before the pipeline runs
            check_working_size(request.size, request.settings.working_resolution, pipe.vae_scale_factor)
        rows = [instance.index for instance in request.instances]
        previous, index = edit if edit is not None else (None, None)
        try:
            result = colorize(
                pipe,
                choice.kind,
                request,
                sam_masker=self.sam_masker if self.sam_enabled else None,
                on_step=on_step,
                edit_from=None if previous is None else previous.view.result.output,
                edit_instances=None if previous is None else [index],
            )
        except ValueError as err:  # the pipeline numbers instances from zero, the page from one
            raise ValueError(page_numbers(str(err), rows)) from err
        label_map = resolve_label_map(result.masks)
        messages = [page_numbers(message, rows) for message in result.warnings]
        if choice.kind == "lcoins" and request.instances:
            messages.append("L-CoIns colorizes from one caption; the masks are used only for the table.")
        png = self.workspace.save_png(result.image, "colorized.png")
        requested = [target_rgb(target) for target in result.targets]
        view = RunView(
            image=result.image,
            before=result.gray.convert("RGB") if previous is None else previous.view.image,
            png=png,
            table=result.table,
            overlay=label_overlay(result.gray, label_map, requested),
            legend=legend(rows, request.texts, messages, title="Pipeline warnings", colors=requested),
            status=self._status(choice, request, result),
            result=result,
        )
        if previous is not None:
            view.status += (
                f"  \nRe-coloured instance {rows[index]} alone: every pixel outside it is the previous result's; "
                "the before / after view compares with the previous result."
            )
        if history is not None:
            self.history.push(history, HistoryEntry(request, choice, view))
            count = len(self.history.entries(history))
            view.status += f"  \nHistory: {count} result(s) on this page (undo goes back one)."
        return view

    def recolor(self, row, texts, colors, masks, history: str | None, on_step=None) -> RunView:
        """Re-colour page row ``row`` (1-based) of this page's last result alone: the last request with
        that row's current text, colour and (if one is uploaded) mask, run as an edit of the last
        pipeline output (``edit_from``, ``edit_instances=[that instance]``); every other pixel is kept."""
        entries = self.history.entries(history)
        if not entries:
            raise ValueError("nothing to re-colour yet: colorize first, then re-colour one instance row.")
        last = entries[-1]
        if last.choice.kind != "mtcolor" or last.view.result.output is None:
            raise ValueError(
                "re-colouring one instance needs an MT-Color result; L-CoIns colorizes in one pass."
            )
        if isinstance(row, bool) or not isinstance(row, int) or not 1 <= row <= MAX_INSTANCES:
            raise ValueError(f"instance row {row!r} does not exist; use a row's re-colour button.")
        rows = [instance.index for instance in last.request.instances]
        if row not in rows:
            raise ValueError(
                f"instance {row} was not part of the last result (it had instances {rows}); colorize again to include it."
            )
        index = rows.index(row)
        text = check_text(texts[row - 1], f"instance {row}'s text")
        if not text:
            raise ValueError(f'instance {row} has no text; type what it should look like ("a red car").')
        color = parse_row_color(check_text(colors[row - 1], f"instance {row}'s colour"), row)
        mask = masks[row - 1]
        size = last.request.image.size
        instances = [
            dataclasses.replace(instance, mask=resolved, sam_points=None, sam_box=None)
            for instance, resolved in zip(last.request.instances, last.view.result.masks)
        ]
        changed = dataclasses.replace(instances[index], text=text, color=color)
        if mask is not None:
            changed.mask = read_mask(mask, row, size)
            if not changed.mask.any():
                raise ValueError(f"instance {row}'s mask is empty (no white pixel); upload or paint a mask.")
        instances[index] = changed
        request = dataclasses.replace(last.request, instances=instances)
        return self._run(last.choice, request, on_step, history, edit=(last, index))

    def undo(self, history: str | None) -> tuple[RunView, ColorizeRequest]:
        """Go back one result in this page's history: the earlier result's view and its request."""
        entry = self.history.undo(history)
        count = len(self.history.entries(history))
        view = dataclasses.replace(entry.view)
        view.status = entry.view.status.split("  \nHistory:")[0] + (
            f"  \nUndone: back to result {count} of this page's history."
        )
        return view, entry.request

    @staticmethod
    def _status(choice: ModelChoice, request: ColorizeRequest, result: ColorizeResult) -> str:
        width, height = result.image.size
        s = request.settings
        if choice.kind == "mtcolor":
            how = (
                f"{s.num_inference_steps} steps, guidance {s.guidance_scale:g}, alpha {s.alpha:g}, beta {s.beta:g}, "
                f"seed {s.seed if s.seed >= 0 else 'random'}, {s.attention_mode} attention, {s.fusion} fusion, "
                f"working resolution {s.working_resolution}"
            )
        else:
            how = f"caption {result.caption!r}"
        lines = [f"**Done** in {result.seconds:.1f} s: {width}x{height} px with `{choice.label}` ({how})."]
        measured = [row for row in result.table if row[5] in ("yes", "no")]
        if measured:
            matches = sum(row[5] == "yes" for row in measured)
            lines.append(
                f"Colour targets met: {matches}/{len(measured)} instances (deltaE00 <= 5 at the instance's own L)."
            )
        lines += request.notes
        return "  \n".join(lines)


__all__ = [
    "SETTING_NAMES",
    "TABLE_HEADERS",
    "HistoryEntry",
    "HistoryStore",
    "Preview",
    "RunView",
    "ServerConfig",
    "Session",
    "Workspace",
]
