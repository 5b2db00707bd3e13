"""The models the web UI offers: the embedded ones plus an optional local pipeline folder.

A model is a saved pipeline folder (``model_index.json``); its ``_class_name`` decides the kind
(``MTColorPipeline`` -> ``"mtcolor"``, ``LCoInsPipeline`` -> ``"lcoins"``). Default settings come from
the model's recipe (:func:`mtcolor.embedded.recommended_inference`), the recipe's synthetic image
size (the working resolution it was trained at) and the adapter's masked attention mode.
Pipelines load once and stay in memory (:class:`PipelineCache`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from mtcolor.embedded import available_models, embedded_model, recommended_inference

KINDS = {"MTColorPipeline": "mtcolor", "LCoInsPipeline": "lcoins"}
#: MTColorPipeline's own defaults, used where a model folder records no recipe (seed 0: reproducible)
PIPELINE_DEFAULTS = {
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "alpha": 0.2,
    "beta": 0.2,
    "seed": 0,
    "fusion": "paper",
    "working_resolution": 512,
}
ATTENTION_MODES = ("renormalized", "paper")


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model menu.

    Attributes:
        label: what the menu shows (``"mtcolor-tiny (embedded)"`` or the folder path).
        path: the pipeline folder.
        kind: ``"mtcolor"`` or ``"lcoins"``.
    """

    label: str
    path: str
    kind: str


def model_kind(folder: str | Path) -> str:
    """``"mtcolor"`` or ``"lcoins"`` from a pipeline folder's ``model_index.json``.

    Raises:
        ValueError: naming the folder when it is not a saved MT-Color / L-CoIns pipeline.
    """
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise ValueError(
            f"model folder {str(folder)!r} has no model_index.json; pass a folder written by "
            "MTColorPipeline.save_pretrained or LCoInsPipeline.save_pretrained."
        )
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name not in KINDS:
        raise ValueError(
            f"model folder {str(folder)!r} holds a {class_name!r}; the web UI runs {sorted(KINDS)} folders."
        )
    return KINDS[class_name]


def model_choices(extra: str | Path | None = None) -> list[ModelChoice]:
    """The menu: ``extra`` first (when given), then the embedded MT-Color models, then L-CoIns ones."""
    choices = []
    if extra is not None:
        path = str(Path(extra).resolve())
        choices.append(ModelChoice(label=path, path=path, kind=model_kind(path)))
    embedded = []
    for name in available_models():
        path = embedded_model(name)
        try:
            kind = model_kind(path)
        except ValueError:
            continue
        embedded.append(ModelChoice(label=f"{name} (embedded)", path=path, kind=kind))
    choices += sorted(embedded, key=lambda c: (c.kind != "mtcolor", c.label))  # MT-Color first
    if not choices:
        raise ValueError(
            "no model to serve: this install has no embedded model; pass --model PATH (a saved pipeline folder)."
        )
    return choices


def recommended_settings(choice: ModelChoice) -> dict:
    """Default UI settings for a model, from its recipe where it records them.

    Returns:
        :data:`PIPELINE_DEFAULTS` updated with the recipe's ``num_inference_steps`` and
        ``guidance_scale``, ``working_resolution`` (the recipe's synthetic image size, else 512) and
        ``attention_mode`` (the adapter's, else ``"renormalized"``).
    """
    folder = Path(choice.path)
    settings = dict(PIPELINE_DEFAULTS)
    settings.update(recommended_inference(folder))
    synthetic = folder / "synthetic_config.json"
    if synthetic.is_file():
        size = json.loads(synthetic.read_text()).get("image_size")
        if isinstance(size, int) and size >= 8:
            settings["working_resolution"] = size
    settings["attention_mode"] = "renormalized"
    adapter = folder / "adapter" / "config.json"
    if adapter.is_file():
        mode = json.loads(adapter.read_text()).get("attention_mode")
        if mode in ATTENTION_MODES:
            settings["attention_mode"] = mode
    return settings


class PipelineCache:
    """Loaded pipelines by folder, at most ``capacity`` at a time (least recently used dropped).

    Loading is serialised by a lock, so two requests never load the same folder twice.
    """

    def __init__(self, device: str | None = None, capacity: int = 3):
        self.device = device
        self.capacity = capacity
        self._pipes: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def loaded(self, choice: ModelChoice):
        """The pipeline if it is already in memory, else None (never loads)."""
        return self._pipes.get(choice.path)

    def get(self, choice: ModelChoice):
        """The pipeline for ``choice``, loading it on first use."""
        with self._lock:
            pipe = self._pipes.get(choice.path)
            if pipe is None:
                pipe = self._load(choice)
                self._pipes[choice.path] = pipe
                while len(self._pipes) > self.capacity:
                    self._pipes.popitem(last=False)
            self._pipes.move_to_end(choice.path)
            return pipe

    def _load(self, choice: ModelChoice):
        if choice.kind == "mtcolor":
            from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline as pipeline_class
        else:
            from mtcolor.pipelines.pipeline_lcoins import LCoInsPipeline as pipeline_class
        pipe = pipeline_class.from_pretrained(choice.path)
        if self.device:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe
