"""``LCoInsPipeline``: language-based colorization with instance awareness (L-CoIns, LC eq. 3-12).

A one-pass (non-diffusion) ``DiffusionPipeline`` with three components:

* ``model``: :class:`mtcolor.models.lcoins.LCoInsModel` (ViT, group tokens, grouping transformer,
  upsampler, grouping layer);
* ``text_encoder``: a transformers BERT-family encoder (any ``PreTrainedModel`` returning
  ``last_hidden_state``; its hidden size must equal ``model.config.text_embed_dim``);
* ``tokenizer``: its tokenizer.

The model runs at its working size (``model.config.image_size``, square); the predicted ab is
resized to each input's own size and recombined with the input's own L channel
(:func:`mtcolor.color.recombine_luminance`), so the output keeps the input's resolution and detail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mtcolor.color import recombine_luminance, resize, rgb_luminance
from mtcolor.hub import write_model_card
from mtcolor.image_io import to_tensor_image
from mtcolor.lexicon import default_lexicon
from mtcolor.models.lcoins import LCoInsModel
from mtcolor.text_encoders import text_max_length

from .loading import load_pipeline
from .model_card import ModelCardMixin

logger = logging.get_logger(__name__)

__all__ = ["LCoInsPipeline", "LCoInsPipelineOutput", "tokenize_captions"]

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from PIL import Image
        >>> from mtcolor import LCoInsPipeline

        >>> pipe = LCoInsPipeline.from_pretrained("path/to/lcoins-model")
        >>> gray = Image.open("photo.jpg").convert("L")
        >>> image = pipe(gray, "a woman in a red coat next to a woman in a yellow dress").images[0]
        >>> image.size == gray.size
        True
        ```
"""


@dataclass
class LCoInsPipelineOutput(BaseOutput):
    """Output of :class:`LCoInsPipeline`.

    Attributes:
        images: one colorized image per input, each at its input's size: a list of RGB PIL images
            (``output_type="pil"``); a float32 array (B, H, W, 3) in [0, 1] (``"np"``) or a tensor
            (B, 3, H, W) in [0, 1] (``"pt"``) when all inputs have the same size, else a list of
            per-image arrays / tensors.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | list


def tokenize_captions(
    tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], max_length: int
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Tokenize captions with truncation to ``max_length`` tokens (special tokens included).

    Returns:
        ``(encoding, lengths)``: ``input_ids`` and ``attention_mask`` (B, N) tensors padded to the
        longest caption, and each caption's untruncated token count (to report truncation).
    """
    full = tokenizer(list(captions), truncation=False, verbose=False)["input_ids"]
    encoding = tokenizer(
        list(captions), padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]}, [
        len(i) for i in full
    ]


class LCoInsPipeline(ModelCardMixin, DiffusionPipeline):
    r"""Colorize gray images from a caption with L-CoIns.

    Args:
        model ([`LCoInsModel`]): the colorizer.
        text_encoder ([`~transformers.PreTrainedModel`]): BERT-family text encoder (e.g.
            ``BertModel``) whose ``last_hidden_state`` are the language tokens.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): the text encoder's tokenizer.
    """

    model_cpu_offload_seq = "text_encoder->model"
    _optional_components = []

    def __init__(self, model: LCoInsModel, text_encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        hidden = getattr(text_encoder.config, "hidden_size", None)
        if hidden != model.config.text_embed_dim:
            raise ValueError(
                f"text_encoder has hidden size {hidden} but model.config.text_embed_dim is "
                f"{model.config.text_embed_dim}; build the LCoInsModel with text_embed_dim={hidden}."
            )
        self.register_modules(model=model, text_encoder=text_encoder, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> LCoInsPipeline:
        """``DiffusionPipeline.from_pretrained`` that also resolves a text encoder referenced from an
        installed package (``text_encoder/packaged_model.json``, see :mod:`mtcolor.text_encoders`),
        refuses a local folder whose ``model_index.json`` lists a component with no sub-folder
        (``FileNotFoundError`` naming it), and names the component and folder in load errors."""
        return load_pipeline(super().from_pretrained, cls.__name__, pretrained_model_name_or_path, kwargs)

    @property
    def max_caption_length(self) -> int:
        """Longest caption in tokens (special tokens included) the text encoder accepts."""
        return text_max_length(self.tokenizer, self.text_encoder)

    # ----------------------------------------------------------------------------------------------
    # inputs
    @staticmethod
    def _split_images(gray) -> list:
        if isinstance(gray, torch.Tensor) and gray.ndim == 4:
            return list(gray)
        if isinstance(gray, np.ndarray) and gray.ndim == 4:
            return list(gray)
        if isinstance(gray, (list, tuple)):
            return list(gray)
        return [gray]

    def check_inputs(self, gray, caption, output_type: str, max_caption_length: int | None):
        """Validate the call arguments; returns ``(images, captions)`` as lists of equal length."""
        images = self._split_images(gray)
        if not images:
            raise ValueError("gray is an empty list; pass at least one image.")
        if isinstance(caption, str):
            captions = [caption] * len(images)
        elif isinstance(caption, (list, tuple)):
            captions = list(caption)
            bad = [i for i, c in enumerate(captions) if not isinstance(c, str)]
            if bad:
                raise TypeError(
                    f"caption[{bad[0]}] has type {type(captions[bad[0]]).__name__}; every caption must be a str "
                    "(use '' for no guidance)."
                )
            if len(captions) == 1 and len(images) > 1:
                captions = captions * len(images)
            if len(captions) != len(images):
                raise ValueError(
                    f"caption has {len(captions)} entries for {len(images)} images; pass one caption per image "
                    "or a single caption for all of them."
                )
        else:
            raise TypeError(
                f"caption has type {type(caption).__name__}; pass a str or a list of str (one per image)."
            )
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type={output_type!r}; pass 'pil', 'np' or 'pt'.")
        if max_caption_length is not None and (
            not isinstance(max_caption_length, int) or not 2 <= max_caption_length <= self.max_caption_length
        ):
            raise ValueError(
                f"max_caption_length={max_caption_length!r}; pass an int in [2, {self.max_caption_length}] "
                "(the text encoder's limit, special tokens included) or None."
            )
        return images, captions

    def _report_captions(self, captions: list[str], lengths: list[int], max_length: int) -> None:
        lexicon = default_lexicon("extended")
        for i, (text, length) in enumerate(zip(captions, lengths)):
            if not text.strip():
                logger.warning(
                    f"caption[{i}] is empty: image {i} is colorized without guidance (the model's learned priors)."
                )
            elif not lexicon.has_color(text):
                logger.warning(
                    f"caption[{i}]={text!r} names no colour word; its colours come from the model's priors. "
                    "Name colours ('a red car') to steer them."
                )
            if length > max_length:
                logger.warning(
                    f"caption[{i}] has {length} tokens but the text encoder takes {max_length}; the last "
                    f"{length - max_length} tokens are dropped. Shorten the caption to keep them."
                )

    def encode_caption(
        self,
        captions: Sequence[str],
        device: torch.device | None = None,
        max_caption_length: int | None = None,
        report: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> language hidden states.

        Captions longer than ``max_caption_length`` tokens (default: the text encoder's limit) are
        truncated; with ``report=True`` that, empty captions and captions without a colour word are
        logged as warnings.

        Returns:
            ``(hidden_states (B, N_L, text_embed_dim), attention_mask (B, N_L) bool)``.
        """
        max_length = max_caption_length or self.max_caption_length
        encoding, lengths = tokenize_captions(self.tokenizer, captions, max_length)
        if report:
            self._report_captions(list(captions), lengths, max_length)
        device = device or self._execution_device
        input_ids = encoding["input_ids"].to(device)
        mask = encoding["attention_mask"].to(device)
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return hidden, mask.bool()

    # ----------------------------------------------------------------------------------------------
    # call
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        gray,
        caption: str | list[str],
        output_type: str = "pil",
        return_dict: bool = True,
        max_caption_length: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> LCoInsPipelineOutput | tuple:
        r"""Colorize ``gray`` following ``caption``.

        Args:
            gray: one image or a batch: PIL image (any mode), numpy array (H, W[, C]) or (B, H, W, C),
                tensor ([C,] H, W) or (B, C, H, W), or a list of those; any size; uint8/uint16 or float
                in [0, 1]. A colour input contributes only its Lab luminance.
            caption: a str (used for every image) or one str per image. Empty captions and captions
                without a colour word are accepted (warning); captions over the text encoder's limit
                are truncated (warning).
            output_type: ``"pil"``, ``"np"`` or ``"pt"``.
            return_dict: return an :class:`LCoInsPipelineOutput` (True) or a tuple.
            max_caption_length: optional lower token limit for captions (special tokens included).
            generator: accepted so that generic callers (which pass one to every diffusers pipeline)
                work, and ignored: L-CoIns is one deterministic forward pass, with no noise to draw.

        Returns:
            :class:`LCoInsPipelineOutput` with one image per input at the input's own size.

        Examples:
        """
        # 1. Check inputs
        images, captions = self.check_inputs(gray, caption, output_type, max_caption_length)
        device = self._execution_device
        size = self.model.config.image_size

        # 2. Luminance of every input at its own size: L (1, H, W) in [0, 100]
        lightness = [
            rgb_luminance(to_tensor_image(img, f"gray[{i}]")).to(device) for i, img in enumerate(images)
        ]

        # 3. Encode the captions
        hidden, mask = self.encode_caption(captions, device, max_caption_length)

        # 4. Run the model at its working size
        working = torch.cat([resize(light[None], (size, size)) for light in lightness])  # (B, 1, S, S)
        ab = self.model(working.to(self.model.dtype), hidden, mask).ab.float()  # (B, 2, S, S)

        # 5. Predicted ab at each input's size + the input's own L
        rgb = [
            recombine_luminance(light[None].float(), ab[i : i + 1])[0] for i, light in enumerate(lightness)
        ]

        # 6. Post-process
        result = self._postprocess(rgb, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return LCoInsPipelineOutput(images=result)

    @staticmethod
    def _postprocess(rgb: list[torch.Tensor], output_type: str):
        same_size = len({tuple(t.shape) for t in rgb}) == 1
        if output_type == "pt":
            rgb = [t.cpu() for t in rgb]
            return torch.stack(rgb) if same_size else rgb
        arrays = [t.permute(1, 2, 0).cpu().numpy().astype(np.float32) for t in rgb]
        if output_type == "np":
            return np.stack(arrays) if same_size else arrays
        return [VaeImageProcessor.numpy_to_pil(a[None])[0] for a in arrays]

    # ----------------------------------------------------------------------------------------------
    # saving
    def model_card_description(self) -> str:
        """A Markdown paragraph describing this pipeline's configuration (used in the model card)."""
        cfg = self.model.config
        text = self.text_encoder.config
        ablations = []
        if not cfg.use_group_tokens:
            ablations.append("without group embedding (w/o GE)")
        elif not cfg.use_grouping_attention:
            ablations.append("without grouping attention (w/o GA)")
        parts = [
            "L-CoIns language-based colorization with instance awareness (Chang et al., CVPR 2023): "
            "a ViT encodes the gray image, a BERT-family encoder the caption, and learnable group tokens "
            "mediate every exchange between image and language tokens in a grouping transformer; an "
            "upsampler predicts the ab chroma, recombined with the input's own luminance.",
            "",
            f"* working size {cfg.image_size}x{cfg.image_size}, patch {cfg.patch_size}, width {cfg.hidden_size}, "
            f"ViT {cfg.num_vit_layers} layers",
            f"* {cfg.num_grouping_layers} grouping blocks, {cfg.num_group_tokens if cfg.use_group_tokens else 0} "
            f"group tokens, {cfg.num_grouping_heads} heads",
            f"* text encoder: {type(self.text_encoder).__name__} ({getattr(text, 'num_hidden_layers', '?')} layers, "
            f"hidden {getattr(text, 'hidden_size', '?')})",
        ]
        if ablations:
            parts.append(f"* ablation: {', '.join(ablations)}")
        return "\n".join(parts)

    def write_model_card(
        self,
        folder,
        base_model: str | list[str] | None = None,
        tags=(),
        sections: dict | None = None,
        load_from: str | None = None,
        **card_kwargs,
    ) -> Path:
        """Write ``folder/README.md`` describing this pipeline (:func:`mtcolor.hub.write_model_card`);
        ``save_pretrained`` calls it with its ``model_card_kwargs``.

        Args:
            base_model: the base model's hub id(s) or path (card metadata).
            tags: extra card tags.
            sections: extra ``{title: markdown}`` sections (training data, metrics...).
            load_from: the Python expression shown in the usage example (default: the folder's name).
            card_kwargs: other :func:`mtcolor.hub.write_model_card` arguments (``datasets``, ``license``).
        """
        return write_model_card(
            folder,
            pipeline_class=type(self).__name__,
            pipeline_tag="image-to-image",
            base_model=base_model,
            tags=["l-coins", "text-guided-colorization", *tags],
            description=self.model_card_description(),
            usage=(
                ("import mtcolor\n" if load_from else "") + "from PIL import Image\n"
                "from mtcolor import LCoInsPipeline\n\n"
                f"pipe = LCoInsPipeline.from_pretrained({load_from or repr(Path(folder).name)})\n"
                'gray = Image.open("photo.jpg").convert("L")\n'
                'image = pipe(gray, "a red car on a gray street").images[0]'
            ),
            sections=sections,
            **card_kwargs,
        )
