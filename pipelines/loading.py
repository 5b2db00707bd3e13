"""``from_pretrained`` for both mtcolor pipelines: packaged text encoders, missing component folders,
and load errors that name the component that failed.

diffusers' own loader fills a missing ``tokenizer/`` folder with a default tokenizer without a word
(a model trained with another one then produces garbage), and its errors do not say which component
they come from ("Cannot load  because ..."). :func:`load_pipeline` checks a local folder against its
``model_index.json`` first and re-raises a component's load error naming the component, the class
``model_index.json`` lists for it and its folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtcolor.text_encoders import packaged_components

__all__ = ["check_component_folders", "listed_class", "load_pipeline"]

# load errors re-raised as the first of these types they are an instance of (so callers that catch
# OSError / ValueError still do); anything else becomes a RuntimeError
_ERROR_TYPES = (FileNotFoundError, ImportError, OSError, ValueError, TypeError)


def check_component_folders(folder: Path, kwargs: dict) -> None:
    """Raise ``FileNotFoundError`` naming every component ``model_index.json`` lists whose sub-folder
    is missing or empty (components passed in ``kwargs`` are not loaded from the folder)."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        return  # not a pipeline folder: diffusers reports that itself
    index = json.loads(index_file.read_text(encoding="utf-8"))
    missing = []
    for name, entry in index.items():
        if name.startswith("_") or name in kwargs or not isinstance(entry, (list, tuple)):
            continue
        if len(entry) != 2 or entry[0] is None or entry[1] is None:
            continue  # an optional component saved as absent ([null, null])
        sub = folder / name
        if not sub.is_dir() or not any(sub.iterdir()):
            missing.append(f"{name}/ ({entry[1]})")
    if missing:
        state = "is missing or empty" if len(missing) == 1 else "are missing or empty"
        raise FileNotFoundError(
            f"{folder}: model_index.json lists {', '.join(missing)}, which {state}. Without it the "
            "pipeline would run with a default component the model was not trained with (e.g. another "
            "tokenizer) and give wrong results. Restore the folder from the original model, or pass the "
            f"component to from_pretrained (e.g. {missing[0].split('/')[0]}=...)."
        )


def _failed_component(error: BaseException) -> tuple[str, str] | None:
    """(name, folder) of the component whose loading raised ``error``, or None.

    Read from the arguments ``name`` and ``cached_folder`` of diffusers' ``load_sub_model``, the
    function that loads each component (None if diffusers renames it: the error then stays as is).
    Its other locals are not read: it rebinds ``class_name`` to a loop variable over every loadable
    class (the component's class is :func:`listed_class`).
    """
    found = None
    traceback = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "load_sub_model" and "name" in frame.f_locals:
            local = frame.f_locals
            found = (str(local["name"]), str(local.get("cached_folder", "")))
        traceback = traceback.tb_next
    return found


def listed_class(folder: str | Path, name: str) -> str:
    """The class name ``folder/model_index.json`` lists for component ``name`` (``"unet":
    ["diffusers", "UNet2DConditionModel"]`` -> ``"UNet2DConditionModel"``); ``"?"`` when the file
    is unreadable or lists no class for it."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "?"
    entry = index.get(name) if isinstance(index, dict) else None
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str):
        return entry[1]
    return "?"


def load_pipeline(load, pipeline_name: str, pretrained_model_name_or_path, kwargs: dict):
    """``load(pretrained_model_name_or_path, **kwargs)`` (``DiffusionPipeline.from_pretrained``) with
    packaged text encoders resolved (:func:`mtcolor.text_encoders.packaged_components`), local folders
    checked for missing components, and load errors naming the component and folder."""
    kwargs = packaged_components(pretrained_model_name_or_path, kwargs)
    folder = Path(str(pretrained_model_name_or_path))
    if folder.is_dir():
        check_component_folders(folder, kwargs)
    try:
        return load(pretrained_model_name_or_path, **kwargs)
    except Exception as error:
        failed = _failed_component(error)
        if failed is None:
            raise
        name, cached = failed
        class_name = listed_class(cached or folder, name)
        where = Path(cached) / name if cached else name
        message = (
            f"{pipeline_name}.from_pretrained could not load its {name!r} component ({class_name}) from "
            f"{where}: {type(error).__name__}: {error} -- the folder is damaged or its files do not match "
            "each other (e.g. config.json vs the weights). Restore it from the original model (or save the "
            f"pipeline again), or pass {name}=<a loaded {class_name}> to from_pretrained."
        )
        error_type = next((t for t in _ERROR_TYPES if isinstance(error, t)), RuntimeError)
        raise error_type(message) from error
