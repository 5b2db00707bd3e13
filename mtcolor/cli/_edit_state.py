"""The edit-state sidecar of ``mtcolor colorize``: what an edit of a written PNG needs, saved beside it.

When ``--out OUT.png`` is written, the pipeline's :class:`mtcolor.editing.EditState` (the final
latents, the label map, the texts, the colour targets, the settings and the model's fingerprint) is
written to ``OUT.png.edit.safetensors`` (:func:`sidecar_path`): the tensors as safetensors, the rest
as JSON in its metadata, together with a SHA-256 of the PNG's RGB pixels. ``--edit-from OUT.png``
reads it back (:func:`load_sidecar`) only when that hash equals the PNG's own pixels (the PNG was not
replaced or re-saved since), so an edit does not re-encode the image; a PNG without a matching
sidecar is encoded by the VAE as any other image.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

SUFFIX = ".edit.safetensors"
FORMAT = "mtcolor-edit-state/1"


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """``OUT.png`` -> ``OUT.png.edit.safetensors``."""
    return Path(os.fspath(image_path) + SUFFIX)


def pixel_digest(image) -> str:
    """SHA-256 of an image's 8-bit RGB pixels (H, W, 3) and its size (PIL image)."""
    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    digest = hashlib.sha256(f"{rgb.shape}".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def write_sidecar(path: Path, state, image) -> None:
    """Write ``state`` (an :class:`mtcolor.editing.EditState`) of the PIL ``image`` to ``path``."""
    from safetensors.torch import save_file

    metadata = {
        "format": FORMAT,
        "pixels": pixel_digest(image),
        "state": json.dumps(
            {
                "texts": list(state.texts),
                "colors": [None if c is None else [float(v) for v in c] for c in state.colors],
                "prompt": state.prompt,
                "negative_prompt": state.negative_prompt,
                "image_size": list(state.image_size),
                "working_size": list(state.working_size),
                "model": state.model,
                "settings": state.settings,
            },
            default=str,
        ),
    }
    tensors = {
        "latents": state.latents.detach().float().contiguous(),
        "label_map": state.label_map.to("cpu").int().contiguous(),
    }
    save_file(tensors, os.fspath(path), metadata=metadata)


def load_sidecar(image_path: str, image):
    """The :class:`~mtcolor.editing.EditState` saved beside ``image_path`` for the PIL ``image`` read
    from it, and a note: ``(state, "")`` when the sidecar exists and matches the image's pixels,
    ``(None, why)`` otherwise (no sidecar, unreadable, or made for other pixels)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    from mtcolor.editing import EditState

    path = sidecar_path(image_path)
    if not path.is_file():
        return None, f"no edit state {path.name!r} beside it"
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(os.fspath(path))
        fields = json.loads(metadata.get("state", "null"))
    except (SafetensorError, OSError, ValueError) as err:
        return None, f"its edit state {path.name!r} is unreadable ({err})"
    if (
        metadata.get("format") != FORMAT
        or not isinstance(fields, dict)
        or set(tensors) != {"latents", "label_map"}
    ):
        return None, f"{path.name!r} is not an mtcolor edit state"
    if metadata.get("pixels") != pixel_digest(image):
        return None, f"its edit state {path.name!r} was written for other pixels (the image was replaced)"
    try:
        state = EditState(
            latents=tensors["latents"],
            label_map=tensors["label_map"].to(torch.uint8 if len(fields["texts"]) < 256 else torch.int32),
            texts=[str(t) for t in fields["texts"]],
            colors=[None if c is None else tuple(float(v) for v in c) for c in fields["colors"]],
            prompt=fields["prompt"],
            negative_prompt=fields["negative_prompt"],
            image_size=tuple(int(v) for v in fields["image_size"]),
            working_size=tuple(int(v) for v in fields["working_size"]),
            model=str(fields["model"]),
            settings=dict(fields.get("settings") or {}),
        )
    except (KeyError, TypeError, ValueError) as err:
        return None, f"its edit state {path.name!r} is incomplete ({err})"
    return state, ""
