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

Exact colour targets (``masks=`` + ``colors=``): L-CoIns takes one caption per image, not one text
per instance, so a caption's colour words cannot be assigned to masks and targets come only from
``colors`` (the same forms as ``MTColorPipeline``'s). The exact mode
(:mod:`mtcolor.chroma_alignment`) aligns each targeted instance's dominant chroma mode to its target
after the prediction, at full resolution, keeping the input's L; every pixel outside the targeted
masks keeps the value of the call without targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mtcolor.chroma_alignment import plan_alignment
from mtcolor.color import recombine_luminance, resize, rgb_luminance
from mtcolor.color_targets import parse_colors
from mtcolor.diagnostics import unreachable_targets
from mtcolor.hub import write_model_card
from mtcolor.image_io import to_tensor_image
from mtcolor.lexicon import default_lexicon
from mtcolor.masks import masks_to_label_map, resize_label_map
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

        >>> # an exact colour for one object: its mask (aligned with the image) and a colour
        >>> coat = Image.open("coat_mask.png")
        >>> image = pipe(gray, "a woman in a coat", masks=[coat], colors=["#d0302a"]).images[0]
        ```
"""

#: the exact mode plans on the prediction resized to the input, shrunk to at most this many pixels
PLAN_PIXELS = 1 << 20


@dataclass
class LCoInsPipelineOutput(BaseOutput):
    """Output of :class:`LCoInsPipeline`.

    Attributes:
        images: one colorized image per input, each at its input's size: a list of RGB PIL images
            (``output_type="pil"``); a float32 array (B, H, W, 3) in [0, 1] (``"np"``) or a tensor
            (B, 3, H, W) in [0, 1] (``"pt"``) when all inputs have the same size, else a list of
            per-image arrays / tensors.
        diagnostics: JSON-ready findings about colour targets, one dict per finding (empty without
            ``colors``): kind ``"color_target"`` (``{"kind", "image", "instance", "name", "target"``
            (hex), ``"label"``, ``"source"``, ``"lab"``}``) for every targeted mask, and
            ``"color_target_unreachable"`` (plus ``"reason"``) for one the exact mode could not plan.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | list
    diagnostics: list[dict] = field(default_factory=list)


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

    @staticmethod
    def _per_image(value, name: str, batched: bool, count: int) -> list:
        """``masks`` / ``colors`` -> one entry per image (a batch takes one list per image)."""
        if not batched:
            return [value]
        if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 4:
            value = list(value)
        if not isinstance(value, (list, tuple)) or len(value) != count:
            got = (
                f"{len(value)} entries"
                if isinstance(value, (list, tuple))
                else f"type {type(value).__name__}"
            )
            raise ValueError(
                f"{name} has {got} for a batch of {count} images; pass one list per image (None for an image "
                f"without targets), e.g. {name}=[[mask_a], None]."
                if name == "masks"
                else f"{name} has {got} for a batch of {count} images; pass one list per image (None for an "
                "image without targets), e.g. colors=[['#d0302a'], None]."
            )
        return list(value)

    def check_color_targets(self, gray, masks, colors, lightness: list[torch.Tensor]) -> list[tuple]:
        """Validate ``masks`` and ``colors`` against the images before any model work.

        Returns:
            per image ``(label_map, targets)``: the masks' int64 label map (H, W) (0 = background, k =
            mask k, overlaps to the smallest mask; None without masks) and one
            :class:`~mtcolor.color_targets.ColorTarget` or None per mask.
        """
        count = len(lightness)
        if masks is None:
            if colors is not None:
                raise ValueError(
                    f"colors={colors!r} needs masks: pass masks= with one (H, W) mask per colour, aligned with "
                    "the image, e.g. masks=[coat_mask], colors=['#d0302a']."
                )
            return [(None, [])] * count
        batched = isinstance(gray, (list, tuple)) or getattr(gray, "ndim", 0) == 4
        per_masks = self._per_image(masks, "masks", batched, count)
        per_colors = [None] * count if colors is None else self._per_image(colors, "colors", batched, count)
        out = []
        for b, (light, image_masks, image_colors) in enumerate(zip(lightness, per_masks, per_colors)):
            tag = f"[{b}]" if batched else ""
            if image_masks is None:
                if image_colors is not None:
                    raise ValueError(
                        f"colors{tag}={image_colors!r} needs masks{tag}; pass its masks or None."
                    )
                out.append((None, []))
                continue
            if isinstance(image_masks, (torch.Tensor, np.ndarray)) and image_masks.ndim == 3:
                image_masks = list(image_masks)  # (n, H, W)
            elif not isinstance(image_masks, (list, tuple)):
                image_masks = [image_masks]  # one (H, W) mask
            try:
                label_map = masks_to_label_map(list(image_masks))
            except (ValueError, TypeError) as error:
                raise type(error)(f"masks{tag}: {error}" if batched else str(error)) from None
            if tuple(label_map.shape) != tuple(light.shape[-2:]):
                raise ValueError(
                    f"masks{tag} have size {tuple(label_map.shape)} (H, W) but gray{tag} is "
                    f"{tuple(light.shape[-2:])}; masks must be aligned with the image (resize them with "
                    "nearest-neighbour interpolation)."
                )
            count_masks = len(image_masks)
            targets = parse_colors(image_colors, count_masks, f"colors{tag}")
            areas = torch.bincount(label_map.view(-1), minlength=count_masks + 1)
            lost = [k for k, t in enumerate(targets) if t is not None and areas[k + 1] == 0]
            if lost:
                raise ValueError(
                    f"masks{tag}{lost} own no pixel after overlaps were resolved (each overlapping pixel goes to "
                    f"the smallest mask), so colors{tag}{lost} cannot be applied; make those masks smaller than "
                    "the masks that cover them, or set their colours to None."
                )
            out.append((label_map, targets))
        return out

    @staticmethod
    def color_findings(targeted: list[tuple], batched: bool) -> list[dict]:
        """The ``"color_target"`` diagnostics: one per targeted mask."""
        found = []
        for b, (_, targets) in enumerate(targeted):
            for k, target in enumerate(targets):
                if target is not None:
                    found.append(
                        {
                            "kind": "color_target",
                            "image": b,
                            "instance": k,
                            "name": f"colors[{b}][{k}]" if batched else f"colors[{k}]",
                            "target": target.hex,
                            "label": target.label,
                            "source": target.source,
                            "lab": [round(v, 2) for v in target.lab],
                        }
                    )
        return found

    @staticmethod
    def plan_exact_colors(lightness: torch.Tensor, ab: torch.Tensor, label_map, targets: list):
        """The exact mode's plan for one image (None when it has no target).

        Args:
            lightness: (1, H, W) the input's L in [0, 100]; ab: (2, S, S) the predicted chroma at the
                working size; label_map: (H, W) int64 or None; targets: per mask a
                :class:`~mtcolor.color_targets.ColorTarget` or None.

        The dominant chroma modes are estimated on the prediction resized to the input as the
        recombination resizes it (shrunk to at most :data:`PLAN_PIXELS` pixels for large inputs), so
        a mask smaller than one working-size pixel still has pixels.
        """
        if label_map is None or all(t is None for t in targets):
            return None
        height, width = lightness.shape[-2:]
        scale = min(1.0, math.sqrt(PLAN_PIXELS / (height * width)))
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        plan_ab = resize(ab[None].float(), size)[0]
        plan_lightness = resize(lightness[None].float(), size)[0]
        labels = resize_label_map(label_map, size).to(ab.device)
        return plan_alignment(plan_lightness, plan_ab, labels, targets)

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
        masks=None,
        colors=None,
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
            masks: optional instance masks aligned with ``gray`` (a list of (H, W) masks or an (n, H, W)
                array; bool, 0/255 integers or floats in [0, 1]; overlaps go to the smallest mask); for a
                batch, one such list (or None) per image. They serve ``colors``: without colours they
                change nothing.
            colors: exact colour targets aligned with ``masks`` (for a batch, one list or None per
                image): each entry None (the model's colour), ``"#rrggbb"``, ``"rgb(r, g, b)"``, an
                (r, g, b) triple in 0..255 or a colour name (:func:`mtcolor.color_targets.parse_color`).
                The caption is one text for the whole image, so no target is read from it. Each
                targeted instance's dominant chroma mode is aligned to its target after the prediction
                (the exact mode, :mod:`mtcolor.chroma_alignment`) at full resolution: L stays the
                input's, the instance keeps its shading and its parts of other colours, and every pixel
                outside the targeted masks keeps the value of the call without ``colors``. Bad targets,
                a length that differs from the masks, masks of another size than the image, or colours
                without masks raise ``ValueError`` / ``TypeError`` naming the argument before the model
                runs.

        Returns:
            :class:`LCoInsPipelineOutput` with one image per input at the input's own size and the
            colour-target ``diagnostics``.

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
        targeted = self.check_color_targets(gray, masks, colors, lightness)  # before any model work

        # 3. Encode the captions
        hidden, mask = self.encode_caption(captions, device, max_caption_length)

        # 4. Run the model at its working size
        working = torch.cat([resize(light[None], (size, size)) for light in lightness])  # (B, 1, S, S)
        ab = self.model(working.to(self.model.dtype), hidden, mask).ab.float()  # (B, 2, S, S)

        # 5. Predicted ab at each input's size + the input's own L; the exact mode for targeted masks
        rgb, skipped = [], {}
        for i, light in enumerate(lightness):
            label_map, targets = targeted[i]
            plan = self.plan_exact_colors(light, ab[i], label_map, targets)
            if plan is None:
                rgb.append(recombine_luminance(light[None].float(), ab[i : i + 1])[0])
                continue
            skipped.update({(i, label - 1): reason for label, reason in plan.skipped})
            labels = label_map[None].to(light.device)
            rgb.append(
                recombine_luminance(light[None].float(), ab[i : i + 1], label_map=labels, adjust=[plan])[0]
            )
        findings = self.color_findings(
            targeted, isinstance(gray, (list, tuple)) or getattr(gray, "ndim", 0) == 4
        )
        diagnostics = findings + unreachable_targets(findings, skipped)

        # 6. Post-process
        result = self._postprocess(rgb, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return LCoInsPipelineOutput(images=result, diagnostics=diagnostics)

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
        if cfg.ab_bin_size is not None:
            parts.append(
                f"* chroma: classification over {len(self.model.ab_classes)} ab cells of {cfg.ab_bin_size:g} Lab "
                f"units (Zhang, Isola and Efros 2016), decoded by the annealed mean at T = {cfg.annealed_temperature:g}"
            )
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
