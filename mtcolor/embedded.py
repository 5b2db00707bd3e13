"""Models shipped inside the package (trained offline by ``python -m mtcolor.training.recipes.tiny``).

``MTColorPipeline.from_pretrained(mtcolor.embedded_model("mtcolor-tiny"))`` loads the shipped
MT-Color pipeline; ``LCoInsPipeline.from_pretrained(mtcolor.embedded_model("lcoins-tiny"))`` the
shipped L-CoIns. Each folder carries a model card (README.md) recording its recipe, data, steps,
wall time and measured metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"


def available_models() -> list[str]:
    """Names of the embedded model folders present in this install."""
    if not EMBEDDED_DIR.is_dir():
        return []
    return sorted(p.name for p in EMBEDDED_DIR.iterdir() if (p / "model_index.json").is_file())


def embedded_model(name: str = "mtcolor-tiny") -> str:
    """Path of an embedded model folder, for ``from_pretrained``.

    Raises:
        FileNotFoundError: naming the models that are available and how to build the missing one.
    """
    folder = EMBEDDED_DIR / name
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"embedded model {name!r} is not in this install (available: {available_models() or 'none'}); "
            "build it with `python -m mtcolor.training.recipes.tiny` or pass a model folder."
        )
    return str(folder)


#: inference settings a recipe may record for its model (``recipe.json`` -> ``"inference"``)
INFERENCE_KEYS = ("guidance_scale", "num_inference_steps")


def recommended_inference(model_folder: str | Path | None) -> dict:
    """The inference settings measured for a model by its recipe, e.g. ``{"guidance_scale": 3.0}``.

    Read from ``recipe.json`` (key ``"inference"``) beside the model; ``{}`` when the folder has
    none (then the pipeline's own defaults apply). Only :data:`INFERENCE_KEYS` are returned.
    """
    if model_folder is None:
        return {}
    path = Path(model_folder) / "recipe.json"
    if not path.is_file():
        return {}
    inference = json.loads(path.read_text()).get("inference", {})
    return {key: inference[key] for key in INFERENCE_KEYS if key in inference}


def recommended_guidance_scale(model_folder: str | Path | None) -> float:
    """The guidance scale the model's recipe measured best, else ``MTColorPipeline``'s default 7.5."""
    return recommended_inference(model_folder).get("guidance_scale", 7.5)
