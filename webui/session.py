"""The server's state and one method per page action, free of gradio (tested without a browser).

:class:`Session` owns the model menu, the loaded pipelines, the examples and a scratch folder for
the files it serves (results, painted masks, gray previews). Its methods take the page's values
and return plain Python values; user mistakes raise ``ValueError`` with a readable message, which
:mod:`webui.app` shows in the page.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from .examples import Example, build_examples
from .inputs import (
    MAX_INSTANCES,
    ColorizeRequest,
    build_request,
    check_settings,
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
from .run import TABLE_HEADERS, ColorizeResult, colorize

#: the settings the page sends with every run, in the order of :func:`webui.inputs.check_settings`
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
        """The recommended settings of a model (see :func:`webui.models.recommended_settings`)."""
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
        self, image, texts: list, masks: list, model: str | None = None, working_resolution=None
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
        rows, bools, names, problems = [], [], [], []
        for row, (text, mask) in enumerate(zip(texts, masks), start=1):
            if mask is None:
                continue
            try:
                bools.append(read_mask(mask, row, picture.size))
            except ValueError as err:
                problems.append(str(err))
                continue
            rows.append(row)
            names.append((text or "").strip() or "(no text yet)")
        label_map = resolve_label_map(bools)
        messages = problems + overlap_messages(bools, rows)
        messages += self._model_messages(picture.size, label_map, names, rows, model, working_resolution)
        return Preview(label_overlay(gray, label_map, rows), legend(rows, names, messages), note, gray_path)

    def _model_messages(self, size, label_map, names, rows, model, working_resolution) -> list[str]:
        """What the chosen MT-Color model would refuse or lose at the working resolution: a working size
        beyond the limits (:func:`webui.inputs.check_working_size`), instances smaller than a token."""
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

    def request(self, image, texts, masks, sam_prompts, prompt, settings: dict) -> ColorizeRequest:
        """Check the page's values (see :func:`webui.inputs.build_request`)."""
        checked = check_settings(*(settings.get(name) for name in SETTING_NAMES))
        return build_request(image, texts, masks, sam_prompts, prompt, checked, self.sam_enabled)

    def colorize(
        self, image, texts, masks, sam_prompts=None, prompt="", model=None, settings=None, on_step=None
    ) -> RunView:
        """Check, run the pipeline once, and lay out the result for the page."""
        choice = self.choice(model)
        settings = {
            **self.defaults(choice.label),
            **{k: v for k, v in (settings or {}).items() if v is not None},
        }
        request = self.request(image, texts, masks, sam_prompts, prompt, settings)
        pipe = self.pipes.get(choice)
        if choice.kind == "mtcolor":  # refused here, before the pipeline runs
            check_working_size(request.size, request.settings.working_resolution, pipe.vae_scale_factor)
        rows = [instance.index for instance in request.instances]
        try:
            result = colorize(
                pipe,
                choice.kind,
                request,
                sam_masker=self.sam_masker if self.sam_enabled else None,
                on_step=on_step,
            )
        except ValueError as err:  # the pipeline numbers instances from zero, the page from one
            raise ValueError(page_numbers(str(err), rows)) from err
        label_map = resolve_label_map(result.masks)
        messages = [page_numbers(message, rows) for message in result.warnings]
        if choice.kind == "lcoins" and request.instances:
            messages.append("L-CoIns colorizes from one caption; the masks are used only for the table.")
        png = self.workspace.save_png(result.image, "colorized.png")
        return RunView(
            image=result.image,
            before=result.gray.convert("RGB"),
            png=png,
            table=result.table,
            overlay=label_overlay(result.gray, label_map, rows),
            legend=legend(rows, request.texts, messages, title="Pipeline warnings"),
            status=self._status(choice, request, result),
            result=result,
        )

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
        measured = [row for row in result.table if row[4] in ("yes", "no")]
        if measured:
            matches = sum(row[4] == "yes" for row in measured)
            lines.append(
                f"Colour adherence: {matches}/{len(measured)} instances have the colour their text names."
            )
        lines += request.notes
        return "  \n".join(lines)


__all__ = ["SETTING_NAMES", "TABLE_HEADERS", "Preview", "RunView", "ServerConfig", "Session", "Workspace"]
