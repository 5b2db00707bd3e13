"""One ``save_pretrained`` / model-card convention for both pipelines.

:class:`ModelCardMixin` gives a pipeline ``save_pretrained(..., model_card=True,
model_card_kwargs=None, push_to_hub=False, ...)``: diffusers' save, then the folder's configs are
cleaned of the machine path they were loaded from (``_name_or_path``), then the pipeline's own
Hub card (README.md with YAML metadata, :meth:`write_model_card`) is written, and only then is the
folder uploaded, so the Hub gets the project's card, not diffusers' generic one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffusers import DiffusionPipeline

from mtcolor.locks import atomic_write_bytes

#: config keys that record where a model was loaded from on the machine that saved it
MACHINE_KEYS = ("_name_or_path",)


def strip_machine_paths(folder: str | os.PathLike) -> list[Path]:
    """Remove :data:`MACHINE_KEYS` from ``model_index.json`` and every component's JSON config in
    ``folder`` (one level of sub-folders); returns the files changed."""
    folder = Path(folder)
    changed = []
    for path in sorted([*folder.glob("*.json"), *folder.glob("*/*.json")]):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(config, dict) or not any(key in config for key in MACHINE_KEYS):
            continue
        for key in MACHINE_KEYS:
            config.pop(key, None)
        atomic_write_bytes(path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        changed.append(path)
    return changed


class ModelCardMixin:
    """``save_pretrained`` with the pipeline's own model card; subclasses define
    :meth:`write_model_card` (``folder`` and keyword arguments -> the README.md path)."""

    def write_model_card(self, folder, **kwargs) -> Path:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        *,
        model_card: bool = True,
        model_card_kwargs: dict | None = None,
        **kwargs,
    ):
        """``DiffusionPipeline.save_pretrained`` + the pipeline's Hub model card.

        Args:
            save_directory, safe_serialization, variant, max_shard_size: as in diffusers.
            push_to_hub: upload the folder, card included, to the Hub repository ``repo_id``
                (default: the folder's name); ``token``, ``private``, ``commit_message`` and
                ``create_pr`` are taken from ``kwargs`` as in diffusers.
            model_card: write ``README.md`` (default True).
            model_card_kwargs: keyword arguments of :meth:`write_model_card` (e.g. ``sections``
                ``{title: markdown}``, ``base_model``, ``tags``, ``load_from``).
        """
        DiffusionPipeline.save_pretrained(
            self,
            save_directory,
            safe_serialization=safe_serialization,
            variant=variant,
            max_shard_size=max_shard_size,
            push_to_hub=False,
        )
        strip_machine_paths(save_directory)
        if model_card:
            self.write_model_card(save_directory, **(model_card_kwargs or {}))
        if push_to_hub:
            import huggingface_hub

            token = kwargs.pop("token", None)
            repo_id = huggingface_hub.create_repo(
                kwargs.pop("repo_id", Path(save_directory).name),
                exist_ok=True,
                private=kwargs.pop("private", None),
                token=token,
            ).repo_id
            huggingface_hub.upload_folder(
                repo_id=repo_id,
                folder_path=save_directory,
                commit_message=kwargs.pop("commit_message", None) or f"Upload {type(self).__name__}",
                create_pr=kwargs.pop("create_pr", False),
                token=token,
            )


def write_mtcolor_card(
    pipe,
    folder,
    base_model: str | None = None,
    tags=(),
    sections: dict | None = None,
    load_from: str | None = None,
) -> Path:
    """Write ``folder/README.md`` describing an ``MTColorPipeline`` (see
    :func:`mtcolor.hub.write_model_card`): its UNet, ControlNet, adapter and scheduler, its inputs,
    and a usage example.

    Args:
        base_model: the base model's hub id or path (card metadata).
        tags: extra card tags.
        sections: extra ``{title: markdown}`` sections (training data, stages, metrics...).
        load_from: the Python expression shown in the usage example (default: the folder path).
    """
    from mtcolor.hub import write_model_card

    unet = pipe.unet.config
    facts = {
        "Model": (
            f"- UNet: `block_out_channels={list(unet.block_out_channels)}`, cross-attention dim "
            f"{unet.cross_attention_dim}\n- ControlNet: {'yes' if pipe.controlnet is not None else 'no (stage-1 model)'}\n"
            f"- MT-Color adapter: {sum(p.numel() for p in pipe.adapter.parameters()):,} parameters, "
            f"attention mode `{pipe.adapter.config.attention_mode}`, PMAM keys from "
            f"`{pipe.adapter.config.pmam_key_source}`\n- Scheduler: `{type(pipe.scheduler).__name__}`"
        ),
        "Inputs": (
            "- `image`: a gray photo, any size (a colour input contributes its luminance)\n"
            "- `masks` + `texts`: one binary mask (aligned with the image) and one text per instance, "
            'e.g. "a red car"\n- `prompt`: optional global description\n'
            "The output has the input's size and exact luminance (Lab L); the model predicts the colour."
        ),
    }
    facts.update(sections or {})
    return write_model_card(
        folder,
        pipeline_class=type(pipe).__name__,
        pipeline_tag="image-to-image",
        base_model=base_model,
        tags=["mt-color", "controlnet", "text-guided-colorization", *tags],
        description=(
            "MT-Color: instance-aware, text-guided image colorization (SD-1.5-style UNet + ControlNet on "
            "the gray image + pixel-level mask attention + a masked instance self-attention branch + "
            "multi-instance sampling), as implemented by the `mtcolor` package on Hugging Face diffusers."
        ),
        usage=(
            ("import mtcolor\n" if load_from else "")
            + "from mtcolor import MTColorPipeline\n\n"
            + f"pipe = MTColorPipeline.from_pretrained({load_from or repr(str(folder))})\n"
            'image = pipe(gray, masks, texts, prompt="a sunny street").images[0]'
        ),
        sections=facts,
    )
