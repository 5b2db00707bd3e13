"""Models shipped inside the package (trained offline by ``python -m training.recipes.tiny``).

``MTColorPipeline.from_pretrained(mtcolor.embedded_model("mtcolor-tiny"))`` loads the shipped
MT-Color pipeline; ``LCoInsPipeline.from_pretrained(mtcolor.embedded_model("lcoins-tiny"))`` the
shipped L-CoIns. Each folder carries a model card (README.md) recording its recipe, data, steps,
wall time and measured metrics.
"""

from __future__ import annotations

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
            "build it with `python -m training.recipes.tiny` or pass a model folder."
        )
    return str(folder)
