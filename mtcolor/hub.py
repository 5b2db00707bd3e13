"""Hugging Face Hub model cards for mtcolor model folders.

Every saved pipeline folder (``save_pretrained`` output, training output) carries a ``README.md``
whose YAML header is the Hub metadata (``library_name: diffusers``, ``pipeline_tag``,
``base_model``, ``tags``, ``license``) and whose body says what the model is, how to use it and,
for trained models, how it was trained. The card is built with ``huggingface_hub.ModelCard`` /
``ModelCardData``, so it is exactly what the Hub parses.

Example::

    from mtcolor.hub import write_model_card

    write_model_card(
        "out/my-model",
        pipeline_class="LCoInsPipeline",
        pipeline_tag="image-to-image",
        base_model=None,
        tags=["colorization"],
        description="A language-guided colorizer.",
        usage="from mtcolor import LCoInsPipeline\\npipe = LCoInsPipeline.from_pretrained('out/my-model')",
        sections={"Training": "20k steps on ..."},
    )
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

__all__ = ["write_model_card"]

DEFAULT_TAGS = ("diffusers", "mtcolor", "colorization", "image-colorization")


def _require_text(value, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}={value!r}; pass a non-empty string.")
    return value.strip()


def write_model_card(
    folder: str | os.PathLike,
    *,
    pipeline_class: str,
    pipeline_tag: str,
    base_model: str | list[str] | None,
    tags: list[str],
    license: str = "apache-2.0",
    description: str,
    usage: str,
    sections: dict[str, str] | None = None,
    title: str | None = None,
    datasets: list[str] | None = None,
) -> Path:
    """Write ``folder/README.md``: Hub metadata (YAML) + description, usage and extra sections.

    Args:
        folder: the model folder (created if missing); an existing README.md is replaced.
        pipeline_class: the class that loads the folder (e.g. ``"LCoInsPipeline"``); used in the
            title and listed in the card.
        pipeline_tag: the Hub task, e.g. ``"image-to-image"``.
        base_model: the Hub id(s) or local name(s) of the weights this model starts from, or None
            for a model trained from scratch.
        tags: extra Hub tags; ``diffusers``, ``mtcolor``, ``colorization`` and ``image-colorization``
            are always added.
        license: an SPDX-style license id understood by the Hub (default ``apache-2.0``).
        description: one or more paragraphs of Markdown saying what the model is.
        usage: Python code showing how to load and call the model (put in a code block).
        sections: extra ``{heading: Markdown body}`` sections in order (e.g. training details,
            evaluation figures).
        title: the card's H1 title (default: ``"<pipeline_class> model"``).
        datasets: optional Hub dataset ids the model was trained on.

    Returns:
        The path of the written README.md.
    """
    pipeline_class = _require_text(pipeline_class, "pipeline_class")
    pipeline_tag = _require_text(pipeline_tag, "pipeline_tag")
    license = _require_text(license, "license")
    description = _require_text(description, "description")
    usage = _require_text(usage, "usage")
    if isinstance(tags, str) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise ValueError(f"tags={tags!r}; pass a list of non-empty strings, e.g. ['colorization'].")
    if base_model is not None and not isinstance(base_model, (str, list)):
        raise ValueError(f"base_model={base_model!r}; pass a Hub id string, a list of them, or None.")
    sections = dict(sections or {})
    for heading, body in sections.items():
        _require_text(heading, "sections heading")
        if not isinstance(body, str):
            raise ValueError(f"sections[{heading!r}] has type {type(body).__name__}; pass Markdown text.")

    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag=pipeline_tag,
        base_model=base_model,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *(t.strip() for t in tags)])),
        license=license,
        datasets=datasets,
    )
    body = [
        f"# {title or pipeline_class + ' model'}",
        "",
        description,
        "",
        "## Usage",
        "",
        f"This folder loads with `{pipeline_class}` from the `mtcolor` package (an extension of 🤗 diffusers).",
        "",
        "```python",
        usage,
        "```",
    ]
    for heading, text in sections.items():
        body += ["", f"## {heading.strip()}", "", text.strip()]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "README.md"
    card.save(path)
    return path
