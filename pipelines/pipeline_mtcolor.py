"""MTColorPipeline: instance-aware, text-guided colorization with MT-Color (SD-1.5 + ControlNet +
pixel-level mask attention + masked instance branch + multi-instance sampling).

Conventions follow diffusers' ``StableDiffusionControlNetPipeline``; the MT-Color wiring of one
denoising step lives in :func:`mtcolor.denoise.predict_noise`, shared with the training scripts.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from mtcolor.attention.kernels import IMPLS, MODES
from mtcolor.color import luminance_to_gray, recombine_luminance, resize, rgb_to_lab
from mtcolor.conditioning import encode_texts
from mtcolor.denoise import predict_noise
from mtcolor.image_io import to_uint8_image
from mtcolor.inputs import Sample, prepare_samples, working_size
from mtcolor.masks import resize_label_map, vanished_instances
from mtcolor.models.adapter import MTColorAdapter
from mtcolor.sampling import FUSIONS, fuse_latents, instance_passes

from .loading import load_pipeline

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from PIL import Image
        >>> from mtcolor import MTColorPipeline

        >>> pipe = MTColorPipeline.from_pretrained("path/to/mtcolor-model")
        >>> gray = Image.open("street.png").convert("L")
        >>> masks = [Image.open("car_mask.png"), Image.open("girl_mask.png")]
        >>> texts = ["a red car", "a girl in a yellow coat"]
        >>> image = pipe(gray, masks, texts, prompt="a sunny street", num_inference_steps=50).images[0]
        >>> image.size == gray.size
        True
        ```
"""


class SmallInstanceWarning(UserWarning):
    """Some instances are smaller than one token of the coarser attention grids (which they then do
    not condition). Issued once per call; the details are in ``MTColorPipelineOutput.diagnostics``."""


@dataclass
class MTColorPipelineOutput(BaseOutput):
    """Output of :class:`MTColorPipeline`.

    Attributes:
        images: ``output_type="pil"``: list of PIL RGB images; ``"np"``: (B, H, W, 3) float array in
            [0, 1] (a list of arrays if the inputs differ in size); ``"pt"``: (B, 3, H, W) float
            tensor in [0, 1] (or a list); ``"latent"``: (B, 4, h, w) latents. Every image has its
            input's exact size.
        diagnostics: JSON-ready notes about the inputs, one dict per finding (empty if none). Kind
            ``"small_instance"``: an instance smaller than one token of some attention grids, which
            it does not condition (finer grids still do): ``{"kind", "image"`` (index of the input
            image), ``"instance"`` (index of its mask / text), ``"name"`` (e.g. ``"texts[0][3]"``),
            ``"text"``, ``"pixels"`` (its area at the working size), ``"working_size"`` ([h, w]),
            ``"lost_grids"`` ([[h, w], ...] the token grids it covers no token of)``}``. The same
            findings are summarised in one :class:`SmallInstanceWarning` per call.
    """

    images: list | np.ndarray | torch.Tensor
    diagnostics: list[dict] = field(default_factory=list)


@dataclass
class _TextEmbeds:
    """Encoded texts of every generated image (rows / list items in output order)."""

    prompt: torch.Tensor  # (N, L, D) global prompt hidden states
    negative: torch.Tensor | None  # (N, L, D), None without classifier-free guidance
    instance_hidden: list  # per image (n_b, L, D) hidden states of its instance texts (or None)
    instance_pooled: list  # per image (n_b, D_text) pooled instance text embeddings

    def select(self, rows: list[int]) -> _TextEmbeds:
        return _TextEmbeds(
            self.prompt[rows],
            None if self.negative is None else self.negative[rows],
            [self.instance_hidden[r] for r in rows],
            [self.instance_pooled[r] for r in rows],
        )


@dataclass
class _Units:
    """The latents denoised together in one phase, with their per-unit conditioning. The first
    ``batch`` units are the global latents, one per image; instance passes follow."""

    latents: torch.Tensor  # (U, 4, h, w)
    prompt_embeds: torch.Tensor  # (U, L, D)
    negative_embeds: torch.Tensor | None  # (U, L, D), None without classifier-free guidance
    label_maps: torch.Tensor  # (U, h_img, w_img)
    instance_embeds: torch.Tensor  # (U, n_max, D_text)
    instance_counts: torch.Tensor  # (U,)
    control: torch.Tensor | None  # (U, 3, h_img, w_img)
    source: torch.Tensor  # (U,) int64: the image of the group each unit belongs to

    def take(self, rows) -> _Units:
        return _Units(**{f.name: _rows(getattr(self, f.name), rows) for f in fields(self)})


def _rows(value, rows):
    return None if value is None else value[rows]


@dataclass(frozen=True)
class _SamplingOptions:
    """The per-call options every group of images is sampled with (see ``__call__``)."""

    num_inference_steps: int
    alpha: float
    beta: float
    fusion: str
    eta: float
    max_batch: int | None
    controlnet_conditioning_scale: float
    use_control_residuals: bool
    context_options: dict
    callback_on_step_end: Callable | None
    callback_tensors: tuple[str, ...]


class MTColorPipeline(DiffusionPipeline):
    r"""Colorize a gray image from instance masks + instance texts (+ an optional global prompt).

    Components:
        vae (`AutoencoderKL`), text_encoder (any transformers text encoder: SD-1.5's `CLIPTextModel`,
        or a BERT-family encoder; its hidden size is the UNet's ``cross_attention_dim``), tokenizer
        (its tokenizer), unet (`UNet2DConditionModel`), controlnet (`ControlNetModel`, optional: a
        stage-1 model has none), adapter (:class:`~mtcolor.MTColorAdapter`), scheduler (DDIM by
        default).

    The adapter's attention processors are installed on the UNet for the duration of each call, on
    top of the UNet's own processors, and the UNet's processors are restored afterwards: the UNet's
    standard processor API (``set_attn_processor``, ``set_default_attn_processor``,
    ``enable_xformers_memory_efficient_attention``) keeps working between calls.
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _optional_components = ["controlnet"]
    _exclude_from_cpu_offload = ["adapter"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, adapter, scheduler):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            adapter=adapter,
            scheduler=scheduler,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._guidance_scale = 1.0
        self._num_timesteps = 0
        self._interrupt = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> MTColorPipeline:
        """``DiffusionPipeline.from_pretrained`` that also resolves a text encoder referenced from an
        installed package (``text_encoder/packaged_model.json``, see :mod:`mtcolor.text_encoders`),
        refuses a local folder whose ``model_index.json`` lists a component with no sub-folder
        (``FileNotFoundError`` naming it), and names the component and folder in load errors."""
        return load_pipeline(super().from_pretrained, cls.__name__, pretrained_model_name_or_path, kwargs)

    @classmethod
    def from_components(
        cls,
        base_model: str,
        adapter: str | MTColorAdapter | None = None,
        controlnet: str | ControlNetModel | None = None,
        torch_dtype: torch.dtype | None = None,
        scheduler=None,
        **adapter_config,
    ) -> MTColorPipeline:
        """Assemble a pipeline from separate folders / hub ids.

        Args:
            base_model: an SD-1.5-layout folder or hub id with ``vae/``, ``text_encoder/``,
                ``tokenizer/``, ``unet/`` and ``scheduler/`` sub-folders.
            adapter: an ``MTColorAdapter`` folder or object; ``None`` builds a fresh one for the UNet
                (with ``adapter_config`` overrides) whose zero-initialised gates leave the UNet as is.
            controlnet: a ``ControlNetModel`` folder or object; ``None`` for a stage-1 model.
            torch_dtype: dtype to load the models in.
            scheduler: a scheduler instance; default: ``DDIMScheduler`` from ``base_model``.
        """
        from transformers import CLIPTextModel, CLIPTokenizer

        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        vae = AutoencoderKL.from_pretrained(base_model, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(base_model, subfolder="text_encoder", **kw)
        tokenizer = CLIPTokenizer.from_pretrained(base_model, subfolder="tokenizer")
        unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet", **kw)
        if scheduler is None:
            scheduler = DDIMScheduler.from_pretrained(base_model, subfolder="scheduler")
        if isinstance(controlnet, (str, Path)):
            controlnet = ControlNetModel.from_pretrained(controlnet, **kw)
        if adapter is None:
            adapter = MTColorAdapter.from_unet(unet, **adapter_config)
        elif isinstance(adapter, (str, Path)):
            adapter = MTColorAdapter.from_pretrained(adapter, **kw)
        if torch_dtype is not None:
            adapter = adapter.to(torch_dtype)
        return cls(vae, text_encoder, tokenizer, unet, controlnet, adapter, scheduler)

    def save_pretrained(self, save_directory, *args, model_card: dict | None = None, **kwargs):
        """``DiffusionPipeline.save_pretrained`` + a Hub model card (README.md with YAML metadata).

        Args:
            model_card: extra card fields: ``base_model`` (str), ``tags`` (list), ``sections``
                (``{title: markdown}``, e.g. training data, stages, steps, metrics).
        """
        super().save_pretrained(save_directory, *args, **kwargs)
        self.write_model_card(save_directory, **(model_card or {}))

    def write_model_card(
        self,
        folder,
        base_model: str | None = None,
        tags=(),
        sections: dict | None = None,
        load_from: str | None = None,
    ):
        """Write ``folder/README.md`` describing this pipeline (see :func:`mtcolor.hub.write_model_card`).

        ``load_from`` is the Python expression shown in the usage example (default: the folder path).
        """
        from mtcolor.hub import write_model_card

        unet = self.unet.config
        facts = {
            "Model": (
                f"- UNet: `block_out_channels={list(unet.block_out_channels)}`, cross-attention dim "
                f"{unet.cross_attention_dim}\n- ControlNet: {'yes' if self.controlnet is not None else 'no (stage-1 model)'}\n"
                f"- MT-Color adapter: {sum(p.numel() for p in self.adapter.parameters()):,} parameters, "
                f"attention mode `{self.adapter.config.attention_mode}`, PMAM keys from "
                f"`{self.adapter.config.pmam_key_source}`\n- Scheduler: `{type(self.scheduler).__name__}`"
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
            pipeline_class=type(self).__name__,
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

    # ------------------------------------------------------------------ state read by callbacks
    @property
    def guidance_scale(self) -> float:
        """Classifier-free guidance scale of the running call. A ``callback_on_step_end`` may set
        ``pipe._guidance_scale`` to change it from the next step on (diffusers' ``SDCFGCutoffCallback``
        sets 0.0)."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """True while ``guidance_scale > 1`` (each latent then runs twice: negative and conditional)."""
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the running (or last) call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def default_working_resolution(self) -> int:
        """Short side the model runs at when ``working_resolution`` is not given: the size it was
        trained at, ``unet.config.sample_size * vae_scale_factor`` (SD-1.5: 64 * 8 = 512)."""
        size = self.unet.config.sample_size
        if isinstance(size, (list, tuple)):
            size = min(size)
        return int(size) * self.vae_scale_factor

    @contextmanager
    def mtcolor_attention(self) -> Iterator[None]:
        """Install the adapter's processors on top of the UNet's current ones; restore those on exit.

        ``__call__`` runs inside it, so between calls the UNet keeps its own processors (and
        ``unet.set_default_attn_processor()``, xformers, etc. work on it). Use it to call
        :func:`mtcolor.denoise.predict_noise` on ``pipe.unet`` yourself.
        """
        original = dict(self.unet.attn_processors)
        self.adapter.install(self.unet)
        try:
            yield
        finally:
            self.unet.set_attn_processor(original)

    # ------------------------------------------------------------------ inputs
    def check_inputs(
        self,
        *,
        samples: list[Sample],
        num_inference_steps,
        guidance_scale,
        alpha,
        beta,
        eta,
        fusion,
        output_type,
        working_resolution,
        num_images_per_prompt,
        controlnet_conditioning_scale,
        attention_mode,
        attention_impl,
        max_batch,
        generator,
        callback_on_step_end_tensor_inputs,
        prompt=None,
        negative_prompt=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        instance_prompt_embeds=None,
        instance_pooled_embeds=None,
    ) -> None:
        """Raise ``ValueError`` / ``TypeError`` naming the argument, the value received and the fix.

        ``samples`` are the prepared inputs (one per input image); ``instance_prompt_embeds`` /
        ``instance_pooled_embeds`` are None or one tensor per input image.
        """
        for b, sample in enumerate(samples):
            if min(sample.size) < 1:
                name = f"image[{b}]" if len(samples) > 1 else "image"
                raise ValueError(
                    f"{name} is empty ({sample.size[0]} x {sample.size[1]} pixels, H x W); pass an image with "
                    "at least one pixel in each dimension."
                )
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}.")
        _check_number("alpha", alpha, 0.0, 1.0, "the share of instance-sampling steps, e.g. 0.2")
        _check_number("beta", beta, 0.0, None, "the global latent's weight in MT eq. 8, e.g. 0.2")
        _check_number("guidance_scale", guidance_scale, 0.0, None, "e.g. 7.5; <= 1 disables guidance")
        _check_number("eta", eta, 0.0, None, "DDIM's eta: 0 deterministic, 1 DDPM-like")
        _check_number("controlnet_conditioning_scale", controlnet_conditioning_scale, None, None, "e.g. 1.0")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r}; expected one of {FUSIONS}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; expected one of {OUTPUT_TYPES}.")
        if attention_mode is not None and attention_mode not in MODES:
            raise ValueError(
                f"attention_mode={attention_mode!r}; expected one of {MODES} or None (the adapter's "
                f"default, {self.adapter.config.attention_mode!r})."
            )
        if attention_impl not in IMPLS:
            raise ValueError(
                f"attention_impl={attention_impl!r}; expected one of {IMPLS} ('auto' picks one)."
            )
        if (
            isinstance(working_resolution, bool)
            or not isinstance(working_resolution, int)
            or working_resolution < self.vae_scale_factor
        ):
            raise ValueError(
                f"working_resolution must be an int >= {self.vae_scale_factor} (or None for the model's own "
                f"{self.default_working_resolution}), got {working_resolution!r}."
            )
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive int, got {num_images_per_prompt!r}.")
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be a positive int or None, got {max_batch!r}.")
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}; allowed: {self._callback_tensor_inputs}."
            )
        batch = len(samples)
        total = batch * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but {total} images are generated "
                f"({batch} inputs x num_images_per_prompt={num_images_per_prompt}); pass one per image."
            )
        self._check_embeds(
            samples,
            alpha,
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            instance_prompt_embeds,
            instance_pooled_embeds,
        )

    def _check_embeds(
        self,
        samples,
        alpha,
        prompt,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        instance_prompt_embeds,
        instance_pooled_embeds,
    ) -> None:
        """Precomputed text embeddings: not together with their texts, and of the right shapes."""
        for name, text, embeds in (
            ("prompt", prompt, prompt_embeds),
            ("negative_prompt", negative_prompt, negative_prompt_embeds),
        ):
            if text is not None and embeds is not None:
                raise ValueError(f"{name} and {name}_embeds are both given; pass only one of them.")
        width = self.unet.config.cross_attention_dim
        length = None
        for name, embeds in (
            ("prompt_embeds", prompt_embeds),
            ("negative_prompt_embeds", negative_prompt_embeds),
        ):
            if embeds is None:
                continue
            got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
                raise ValueError(f"{name} is {got}; pass a (B, L, D) tensor (one row per input image).")
            expected = (len(samples), length or embeds.shape[1], width)
            if got != expected:
                raise ValueError(
                    f"{name} has shape {got}; expected (B, L, D) = {expected}: one row per input image, "
                    f"D = the UNet's cross_attention_dim ({width}), the same L as the other text embeddings."
                )
            length = embeds.shape[1]
        if instance_pooled_embeds is None:
            if instance_prompt_embeds is not None:
                raise ValueError(
                    "instance_prompt_embeds is given without instance_pooled_embeds; pass both (the pooled "
                    "embeddings are the instance encoder's text input, MT eq. 3), or pass texts instead."
                )
            return
        if length is None:
            from mtcolor.text_encoders import text_max_length

            length = text_max_length(self.tokenizer, self.text_encoder)
        text_dim = self.adapter.config.text_embed_dim
        for b, sample in enumerate(samples):
            tag = f"[{b}]" if len(samples) > 1 else ""
            n = len(sample.texts)
            pooled = instance_pooled_embeds[b]
            if tuple(pooled.shape) != (n, text_dim):
                raise ValueError(
                    f"instance_pooled_embeds{tag} has shape {tuple(pooled.shape)}; expected (n, D) = "
                    f"{(n, text_dim)}: one row per mask, D = the adapter's text_embed_dim."
                )
            if instance_prompt_embeds is None:
                if n and alpha > 0:
                    raise ValueError(
                        f"instance_prompt_embeds is None but alpha={alpha} samples each instance with its own "
                        "text as the prompt; pass instance_prompt_embeds (n, L, D) per image, or alpha=0."
                    )
                continue
            hidden = instance_prompt_embeds[b]
            if tuple(hidden.shape) != (n, length, width):
                raise ValueError(
                    f"instance_prompt_embeds{tag} has shape {tuple(hidden.shape)}; expected (n, L, D) = "
                    f"{(n, length, width)}: one row per mask, the prompt embeddings' L and D."
                )

    def _prepare_samples(
        self, image, masks, texts, prompt, negative_prompt, instance_prompt_embeds, instance_pooled_embeds
    ) -> tuple[list[Sample], bool, list | None, list | None]:
        """Normalise the inputs (see :func:`mtcolor.inputs.prepare_samples`).

        Returns ``(samples, batched, instance_prompt_embeds, instance_pooled_embeds)``: ``batched``
        tells whether ``image`` was a batch (a list or a 4-D tensor); the instance embeddings become one
        tensor per image (or None). Instances given as embeddings are named after them in warnings.
        """
        batched = isinstance(image, (list, tuple)) or (isinstance(image, torch.Tensor) and image.ndim == 4)
        count = len(image) if batched else 1
        hidden = _per_image(instance_prompt_embeds, "instance_prompt_embeds", batched, count, 3)
        pooled = _per_image(instance_pooled_embeds, "instance_pooled_embeds", batched, count, 2)
        if pooled is not None:
            if texts is not None:
                raise ValueError("texts and instance_pooled_embeds are both given; pass only one of them.")
            texts = [
                [f"instance_pooled_embeds{f'[{b}]' if batched else ''}[{i}]" for i in range(len(p))]
                for b, p in enumerate(pooled)
            ]
            per_image_masks = list(masks) if batched and masks is not None else [masks]
            for b, (m, names) in enumerate(zip(per_image_masks, texts)):
                n_masks = 0 if m is None else (1 if getattr(m, "ndim", 0) == 2 else len(m))
                if n_masks != len(names):
                    tag = f"[{b}]" if batched else ""
                    raise ValueError(
                        f"masks{tag} has {n_masks} masks but instance_pooled_embeds{tag} has {len(names)} rows; "
                        "give exactly one embedding per mask."
                    )
            texts = texts if batched else texts[0]
        samples = prepare_samples(image, masks, texts, prompt, negative_prompt)
        return samples, batched, hidden, pooled

    # ------------------------------------------------------------------ text conditioning
    def _encode_unique(self, texts: list[str], names: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`mtcolor.conditioning.encode_texts` on each distinct text once; rows follow ``texts``."""
        unique = list(dict.fromkeys(texts))
        labels = [", ".join(dict.fromkeys(n for t, n in zip(texts, names) if t == u)) for u in unique]
        hidden, pooled = encode_texts(self.tokenizer, self.text_encoder, unique, device, labels)
        rows = torch.tensor([unique.index(t) for t in texts], device=hidden.device)
        return hidden[rows], pooled[rows]

    def encode_prompt(
        self,
        prompt,
        device,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""Encode the global prompt (and the negative prompt under classifier-free guidance), as
        ``StableDiffusionControlNetPipeline.encode_prompt`` does.

        Args:
            prompt: str, list of str (one per image) or None (no prompt: ``""``).
            device: device of the returned embeddings.
            num_images_per_prompt: images per prompt; every row is repeated that many times (image-major).
            do_classifier_free_guidance: encode the negative prompt too; otherwise it is skipped and
                ``negative_prompt_embeds`` is returned as given (None by default).
            negative_prompt: str, list of str or None (``""``).
            prompt_embeds: (B, L, D) precomputed text-encoder hidden states, used instead of ``prompt``.
            negative_prompt_embeds: (B, L, D) precomputed, used instead of ``negative_prompt``.
            batch_size: number of images B when ``prompt`` is a str or None (default 1).

        Returns:
            ``prompt_embeds`` (B * num_images_per_prompt, L, D) and ``negative_prompt_embeds`` of the same
            shape or None. Texts longer than the text encoder's limit are truncated with a warning that
            names them (``prompt``, ``prompt[1]``, ``negative_prompt``).
        """
        if prompt_embeds is None:
            texts, names = _texts_and_names(prompt, "prompt", batch_size)
            prompt_embeds = self._encode_unique(texts, names, device)[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            texts, names = _texts_and_names(negative_prompt, "negative_prompt", prompt_embeds.shape[0])
            negative_prompt_embeds = self._encode_unique(texts, names, device)[0]
        repeat = lambda x: None if x is None else x.to(device).repeat_interleave(num_images_per_prompt, 0)  # noqa: E731
        return repeat(prompt_embeds), repeat(negative_prompt_embeds)

    def encode_instance_texts(
        self,
        texts: list[list[str]],
        device,
        num_images_per_prompt: int = 1,
        instance_prompt_embeds: list[torch.Tensor] | None = None,
        instance_pooled_embeds: list[torch.Tensor] | None = None,
        names: list[list[str]] | None = None,
    ) -> tuple[list, list]:
        """Encode every instance text of a call once: its hidden states (the prompt of its instance
        pass) and its pooled embedding (the instance encoder's text input, MT eq. 3).

        Args:
            texts: per input image, its instance texts (possibly none).
            device: device of the returned embeddings.
            num_images_per_prompt: every image's entry is repeated that many times (image-major).
            instance_prompt_embeds: per image (n_b, L, D) precomputed hidden states (or None).
            instance_pooled_embeds: per image (n_b, D_text) precomputed pooled embeddings; with it,
                ``texts`` are not encoded.
            names: per image, how truncation warnings name each text (default ``texts[b][i]``).

        Returns:
            two lists with one entry per generated image: hidden states (n_b, L, D) (None when only
            pooled embeddings were given) and pooled embeddings (n_b, D_text).
        """
        if instance_pooled_embeds is not None:
            hidden = list(instance_prompt_embeds or [None] * len(texts))
            pooled = list(instance_pooled_embeds)
        else:
            names = names or [[f"texts[{b}][{i}]" for i in range(len(t))] for b, t in enumerate(texts)]
            flat = [text for sample in texts for text in sample]
            hidden, pooled = [], []
            if flat:
                all_hidden, all_pooled = self._encode_unique(flat, [n for s in names for n in s], device)
                sizes = [len(t) for t in texts]
                hidden, pooled = list(all_hidden.split(sizes)), list(all_pooled.split(sizes))
            else:
                width = self.adapter.config.text_embed_dim
                hidden = [None] * len(texts)
                pooled = [torch.zeros(0, width, device=device) for _ in texts]
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        hidden = [move(h) for h in hidden for _ in range(num_images_per_prompt)]
        pooled = [move(p) for p in pooled for _ in range(num_images_per_prompt)]
        return hidden, pooled

    # ------------------------------------------------------------------ preparation
    def prepare_latents(self, batch, latent_size, dtype, device, generator, latents=None) -> torch.Tensor:
        """Initial noise z_T (batch, 4, h, w), from ``generator`` unless ``latents`` is given."""
        shape = (batch, self.unet.config.in_channels, *latent_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents has shape {tuple(latents.shape)}; expected {shape} for these inputs.")
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict:
        """The ``scheduler.step`` keywords it accepts: ``eta`` (DDIM) and ``generator`` (the noise of
        stochastic steps, e.g. DDIM with eta > 0), as diffusers' pipelines pick them."""
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in accepted:
            extra["eta"] = eta
        if "generator" in accepted:
            extra["generator"] = generator
        return extra

    def prepare_conditioning(self, samples: list[Sample], size, device, dtype):
        """Label maps (B, h, w) int64 and the ControlNet's gray image (B, 3, h, w) in [0, 1] (None
        without a ControlNet) at the working size ``size`` = (h, w)."""
        lightness = torch.stack([resize(s.lightness[None], size)[0] for s in samples])  # (B, 1, h, w)
        control = luminance_to_gray(lightness).to(device=device, dtype=dtype) if self.controlnet else None
        label_maps = torch.zeros(len(samples), *size, dtype=torch.long)
        for b, sample in enumerate(samples):
            if sample.label_map is not None:
                label_maps[b] = resize_label_map(sample.label_map, size)
        return label_maps.to(device), control

    def _attention_grids(self, latent_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Token grids (h, w) of the UNet's attention levels, finest first."""
        grids, (h, w) = [], latent_size
        for _ in self.unet.config.block_out_channels:
            grids.append((h, w))
            h, w = -(-h // 2), -(-w // 2)
        return grids

    def small_instances(self, samples: list[Sample], working_resolution: int, batched: bool) -> list[dict]:
        """Instances smaller than one token of some attention grids at the working size (they do not
        condition those grids): the ``"small_instance"`` diagnostics of :class:`MTColorPipelineOutput`."""
        found = []
        for b, sample in enumerate(samples):
            if sample.label_map is None:
                continue
            size = working_size(sample.size, working_resolution, self.vae_scale_factor)
            label_map = resize_label_map(sample.label_map, size)
            lost_at_size = vanished_instances(sample.label_map, size)  # already gone at the working size
            lost: dict[int, list] = {k: [size] for k in lost_at_size}
            latent_size = (size[0] // self.vae_scale_factor, size[1] // self.vae_scale_factor)
            for grid in self._attention_grids(latent_size):
                for k in sorted(set(vanished_instances(label_map, grid)) | set(lost_at_size)):
                    lost.setdefault(k, []).append(grid)
            for k in sorted(lost):
                found.append(
                    {
                        "kind": "small_instance",
                        "image": b,
                        "instance": k - 1,
                        "name": f"texts[{b}][{k - 1}]" if batched else f"texts[{k - 1}]",
                        "text": sample.texts[k - 1],
                        "pixels": int((label_map == k).sum()),
                        "working_size": list(size),
                        "lost_grids": [list(grid) for grid in lost[k]],
                    }
                )
        return found

    @staticmethod
    def _warn_small_instances(diagnostics: list[dict]) -> None:
        """One :class:`SmallInstanceWarning` summarising every small instance of the call."""
        groups: dict[tuple, list[dict]] = {}
        for item in diagnostics:
            if item["kind"] == "small_instance":
                groups.setdefault(tuple(tuple(g) for g in item["lost_grids"]), []).append(item)
        if not groups:
            return
        parts = []
        for grids, items in groups.items():
            where = " and ".join(f"{h}x{w}" for h, w in grids)
            named = ", ".join(f"{item['name']} {item['text']!r}" for item in items)
            verb = "instances are" if len(items) > 1 else "instance is"
            parts.append(f"{len(items)} {verb} smaller than one token at {where} ({named})")
        warnings.warn(
            "; ".join(parts) + ": they condition finer attention grids only. Enlarge those masks or raise "
            "working_resolution to keep them; the output's diagnostics list the details.",
            SmallInstanceWarning,
            stacklevel=4,
        )

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image,
        masks=None,
        texts=None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        alpha: float = 0.2,
        beta: float = 0.2,
        fusion: str = "paper",
        working_resolution: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        instance_prompt_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        instance_pooled_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        preserve_luminance: bool = True,
        num_images_per_prompt: int = 1,
        controlnet_conditioning_scale: float = 1.0,
        attention_mode: str | None = None,
        attention_impl: str = "auto",
        use_pmam: bool | None = None,
        use_instance_branch: bool | None = None,
        use_instance_masks: bool | None = None,
        use_control_residuals: bool = True,
        max_batch: int | None = None,
        eta: float = 0.0,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] | list[str] = ("latents",),
        sam_points=None,
        sam_boxes=None,
        sam_checkpoint: str | None = None,
        sam_model_type: str = "vit_b",
    ):
        r"""Colorize gray image(s).

        Args:
            image: gray image (PIL / numpy (H, W[, C]) / tensor ([C,] H, W), 8/16-bit or float in
                [0, 1], any size; a colour or RGBA input contributes its luminance), or a list of them.
            masks: ``n`` instance masks (H, W) aligned with ``image`` (list or (n, H, W)); for a batch,
                one such list per image. Overlaps go to the smallest mask (one warning).
            texts: ``n`` instance texts ("a red car"), one per mask; for a batch, one list per image.
                With neither masks nor texts the model colorizes automatically (null instance
                condition), guided by ``prompt`` if given.
            prompt: global description (str or one per image).
            negative_prompt: negative prompt for classifier-free guidance (whose negative branch
                also gets the null instance condition); not encoded when guidance is off.
            num_inference_steps: denoising steps T.
            guidance_scale: classifier-free guidance scale, finite, >= 0 (<= 1 disables guidance).
            alpha: share of the first steps sampled per instance (MT section III.C), in [0, 1]; 0 =
                plain sampling.
            beta: weight of the global latent in the fusion (MT eq. 8), finite, >= 0.
            fusion: ``"paper"`` (MT eq. 8), ``"normalized"`` or ``"no_crop"``; see
                :func:`mtcolor.sampling.fuse_latents`.
            working_resolution: short side of the resolution the model runs at (rounded to multiples
                of 8); default the model's own, ``unet.config.sample_size * vae_scale_factor``. The
                output is recombined at the input's own size.
            generator: ``torch.Generator`` or one per generated image; it draws the initial noise and
                the noise of stochastic scheduler steps (DDIM with ``eta > 0``).
            latents: initial noise (B * num_images_per_prompt, 4, h, w).
            prompt_embeds: (B, L, D) precomputed text-encoder hidden states instead of ``prompt``
                (B input images, D the UNet's ``cross_attention_dim``).
            negative_prompt_embeds: (B, L, D) instead of ``negative_prompt``.
            instance_prompt_embeds: instead of ``texts``, per image (n, L, D) hidden states of its
                instance texts (a tensor for one image, a list for a batch): the prompts of the
                instance passes (needed when ``alpha > 0``).
            instance_pooled_embeds: with ``instance_prompt_embeds`` (or alone when ``alpha = 0``), per
                image (n, D_text) pooled embeddings of its instance texts (MT eq. 3's text input).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return :class:`MTColorPipelineOutput` (else a tuple).
            preserve_luminance: output = the input's own L + the predicted ab resized to the input
                (exact luminance, full resolution); False returns the decoded image resized to the
                input's size.
            num_images_per_prompt: images per input.
            controlnet_conditioning_scale: ControlNet residual scale.
            attention_mode, attention_impl: masked attention mode (``"renormalized"`` / ``"paper"``,
                default from the adapter config) and implementation (``"auto"``, ``"segments"``,
                ``"sdpa_mask"``, ``"reference"``).
            use_pmam, use_instance_branch, use_instance_masks: ablation switches (default: adapter
                config); use_control_residuals: standard ControlNet residual injection.
            max_batch: most UNet rows per call (classifier-free guidance counts 2 per latent); the
                instance passes and the global pass are batched up to this size. None = no limit.
            eta: DDIM eta, finite, >= 0 (0 = deterministic DDIM).
            callback_on_step_end: ``f(pipe, step, timestep, callback_kwargs) -> dict``, a diffusers
                ``PipelineCallback`` or ``MultiPipelineCallbacks``, called after every step; it may
                replace the tensors named in ``callback_on_step_end_tensor_inputs`` (a callback
                object's own ``tensor_inputs`` are used instead), read ``pipe.num_timesteps`` /
                ``pipe.guidance_scale`` / ``pipe.do_classifier_free_guidance``, change guidance from
                the next step on by setting ``pipe._guidance_scale``, or stop with ``pipe._interrupt``.
            sam_points / sam_boxes / sam_checkpoint / sam_model_type: instead of ``masks``, Segment
                Anything prompts (per instance a list of (x, y) points or an (x0, y0, x1, y1) box) and
                a local SAM checkpoint (single image only).

        Returns:
            :class:`MTColorPipelineOutput` (images and diagnostics) or ``(images,)``.

        Examples:
        """
        # 0. A callback object declares the tensors it reads
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs
        if sam_points is not None or sam_boxes is not None:
            masks = self._masks_from_sam(image, masks, sam_points, sam_boxes, sam_checkpoint, sam_model_type)
        samples, batched, instance_prompt_embeds, instance_pooled_embeds = self._prepare_samples(
            image, masks, texts, prompt, negative_prompt, instance_prompt_embeds, instance_pooled_embeds
        )
        if working_resolution is None:
            working_resolution = self.default_working_resolution
        self.check_inputs(
            samples=samples,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            alpha=alpha,
            beta=beta,
            eta=eta,
            fusion=fusion,
            output_type=output_type,
            working_resolution=working_resolution,
            num_images_per_prompt=num_images_per_prompt,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            attention_mode=attention_mode,
            attention_impl=attention_impl,
            max_batch=max_batch,
            generator=generator,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            prompt=prompt,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            instance_prompt_embeds=instance_prompt_embeds,
            instance_pooled_embeds=instance_pooled_embeds,
        )
        self._guidance_scale = guidance_scale
        self._interrupt = False
        device = self._execution_device

        # 2. Instances smaller than one token of the coarser attention grids: one summary warning
        diagnostics = self.small_instances(samples, working_resolution, batched)
        self._warn_small_instances(diagnostics)

        # 3. Encode the global prompts and every instance text once
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            batch_size=len(samples),
        )
        instance_hidden, instance_pooled = self.encode_instance_texts(
            [s.texts for s in samples],
            device,
            num_images_per_prompt,
            instance_prompt_embeds,
            instance_pooled_embeds,
            names=[
                [f"texts[{b}][{i}]" if batched else f"texts[{i}]" for i in range(len(s.texts))]
                for b, s in enumerate(samples)
            ],
        )
        embeds = _TextEmbeds(prompt_embeds, negative_prompt_embeds, instance_hidden, instance_pooled)

        # 4. One entry per generated image; images that share a working size are denoised together
        samples = [s for s in samples for _ in range(num_images_per_prompt)]
        groups: dict[tuple[int, int], list[int]] = {}
        for row, sample in enumerate(samples):
            size = working_size(sample.size, working_resolution, self.vae_scale_factor)
            groups.setdefault(size, []).append(row)
        options = _SamplingOptions(
            num_inference_steps=num_inference_steps,
            alpha=alpha,
            beta=beta,
            fusion=fusion,
            eta=eta,
            max_batch=max_batch,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            use_control_residuals=use_control_residuals,
            context_options={
                "mode": attention_mode,
                "impl": attention_impl,
                "use_pmam": use_pmam,
                "use_instance_branch": use_instance_branch,
                "use_instance_masks": use_instance_masks,
            },
            callback_on_step_end=callback_on_step_end,
            callback_tensors=tuple(callback_on_step_end_tensor_inputs),
        )

        # 5. Denoise and decode each group, with the MT-Color processors installed for this call only
        results: list = [None] * len(samples)
        with self.mtcolor_attention():
            for size, rows in groups.items():
                outputs = self._colorize_group(
                    [samples[r] for r in rows],
                    embeds.select(rows),
                    size,
                    [generator[r] for r in rows] if isinstance(generator, list) else generator,
                    None if latents is None else latents[rows],
                    output_type,
                    preserve_luminance,
                    options,
                )
                for row, output in zip(rows, outputs):
                    results[row] = output

        # 6. Post-process
        self.maybe_free_model_hooks()
        images = self._format(results, output_type)
        if not return_dict:
            return (images,)
        return MTColorPipelineOutput(images=images, diagnostics=diagnostics)

    @staticmethod
    def _masks_from_sam(image, masks, points, boxes, checkpoint, model_type):
        if masks is not None:
            raise ValueError("masks and sam_points/sam_boxes are both given; pass one of them.")
        from mtcolor.sam import masks_from_sam

        return masks_from_sam(image, points=points, boxes=boxes, checkpoint=checkpoint, model_type=model_type)

    # ------------------------------------------------------------------ one group of images
    def _colorize_group(
        self,
        samples: list[Sample],
        embeds: _TextEmbeds,
        size: tuple[int, int],
        generator,
        latents: torch.Tensor | None,
        output_type: str,
        preserve_luminance: bool,
        options: _SamplingOptions,
    ) -> list:
        """Denoise and decode the images of ``samples``, which share the working size ``size``."""
        device, dtype = self._execution_device, self.unet.dtype
        batch = len(samples)
        latent_size = (size[0] // self.vae_scale_factor, size[1] // self.vae_scale_factor)

        # a. Label maps and the gray conditioning image at the working size
        label_maps, control = self.prepare_conditioning(samples, size, device, dtype)

        # b. Timesteps and the initial noise z_T (shared by every instance pass: z_T^i = z_T)
        self.scheduler.set_timesteps(options.num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(batch, latent_size, dtype, device, generator, latents)

        # c. Phase-1 units (MT section III.C): the global latents, then one per instance pass
        units = self._global_units(latents, embeds, label_maps, control, dtype)
        passes = instance_passes(units.instance_counts.tolist())
        instance_steps = int(round(options.alpha * options.num_inference_steps)) if passes else 0
        if instance_steps and hasattr(self.scheduler, "model_outputs"):
            raise ValueError(
                f"{type(self.scheduler).__name__} keeps a multistep history, which multi-instance sampling "
                "(alpha > 0) cannot fuse; use DDIMScheduler (the default) or alpha=0."
            )
        if instance_steps:
            units = self._with_instance_units(units, embeds, passes)

        # d. Denoising loop: fusion (MT eq. 8) after the instance steps, then global sampling (MT eq. 9)
        latents = self._denoising_loop(
            units, samples, passes, instance_steps, timesteps, latent_size, generator, options
        )

        # e. Decode and recombine with each input's own luminance at full resolution
        return self._decode(latents, samples, output_type, preserve_luminance)

    def _global_units(self, latents, embeds: _TextEmbeds, label_maps, control, dtype) -> _Units:
        """One unit per image: its prompt, all its instances (pooled texts padded to n_max)."""
        device, batch = latents.device, latents.shape[0]
        counts = torch.tensor([len(p) for p in embeds.instance_pooled], dtype=torch.long, device=device)
        n_max = int(counts.max()) if batch else 0
        instance_embeds = torch.zeros(
            batch, n_max, self.adapter.config.text_embed_dim, device=device, dtype=dtype
        )
        for b, pooled in enumerate(embeds.instance_pooled):
            instance_embeds[b, : len(pooled)] = pooled.to(device=device, dtype=dtype)
        return _Units(
            latents=latents,
            prompt_embeds=embeds.prompt.to(device=device, dtype=dtype),
            negative_embeds=None
            if embeds.negative is None
            else embeds.negative.to(device=device, dtype=dtype),
            label_maps=label_maps,
            instance_embeds=instance_embeds,
            instance_counts=counts,
            control=control,
            source=torch.arange(batch, device=device),
        )

    def _with_instance_units(self, units: _Units, embeds: _TextEmbeds, passes) -> _Units:
        """Append one unit per instance pass: its own text as the prompt, itself as the only instance."""
        device, dtype = units.latents.device, units.latents.dtype
        idx = torch.tensor([p.sample for p in passes], device=device)
        own_prompt = torch.stack([embeds.instance_hidden[p.sample][p.instance - 1] for p in passes])
        own_label = torch.stack(
            [(units.label_maps[p.sample] == p.instance).long() for p in passes]
        )  # the instance becomes instance 1, everything else background
        own_embeds = torch.zeros(len(passes), *units.instance_embeds.shape[1:], device=device, dtype=dtype)
        for j, p in enumerate(passes):
            own_embeds[j, 0] = units.instance_embeds[p.sample, p.instance - 1]
        extra = _Units(
            latents=units.latents[idx],
            prompt_embeds=own_prompt.to(device=device, dtype=dtype),
            negative_embeds=_rows(units.negative_embeds, idx),
            label_maps=own_label,
            instance_embeds=own_embeds,
            instance_counts=torch.ones(len(passes), dtype=torch.long, device=device),
            control=_rows(units.control, idx),
            source=idx,
        )
        return _Units(
            **{
                f.name: None
                if getattr(units, f.name) is None
                else torch.cat([getattr(units, f.name), getattr(extra, f.name)])
                for f in fields(_Units)
            }
        )

    def _denoising_loop(
        self, units: _Units, samples, passes, instance_steps, timesteps, latent_size, generator, options
    ) -> torch.Tensor:
        """Run every step on ``units``; returns the final latents (B, 4, h, w) of the B images."""
        batch = len(samples)
        contexts_cfg = None  # the guidance the MT-Color contexts were built for
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                if i == instance_steps and units.latents.shape[0] > batch:
                    fused = self._fuse(units, batch, passes, latent_size, options)  # MT eq. 8
                    units = replace(units.take(slice(0, batch)), latents=fused)  # then MT eq. 9
                    contexts_cfg = None
                cfg = self.do_classifier_free_guidance  # a callback may have changed guidance_scale
                if cfg and units.negative_embeds is None:
                    negatives = [s.negative_prompt for s in samples]
                    negative, _ = self._encode_unique(
                        negatives, ["negative_prompt"] * batch, units.latents.device
                    )
                    units.negative_embeds = negative.to(units.prompt_embeds.dtype)[units.source]
                if cfg != contexts_cfg:
                    chunks, contexts = self._contexts(units, latent_size, cfg, options)
                    contexts_cfg = cfg
                noise = self._denoise(units, t, cfg, contexts, chunks, options)
                step_generator = (
                    [generator[s] for s in units.source.tolist()]
                    if isinstance(generator, list)
                    else generator
                )
                extra_step = self.prepare_extra_step_kwargs(step_generator, options.eta)
                units.latents = self.scheduler.step(noise, t, units.latents, **extra_step, return_dict=False)[
                    0
                ]
                if options.callback_on_step_end is not None:
                    self._step_callback(units, batch, i, t, options)
                progress_bar.update()
        if units.latents.shape[0] > batch:  # alpha = 1 (or interrupted during phase 1): fuse at the end
            units.latents = self._fuse(units, batch, passes, latent_size, options)
        return units.latents[:batch]

    def _step_callback(self, units: _Units, batch: int, step: int, t, options: _SamplingOptions) -> None:
        """Call ``callback_on_step_end`` with the global rows and take back the tensors it returns."""
        values = {
            "latents": units.latents[:batch],
            "prompt_embeds": units.prompt_embeds[:batch],
            "negative_prompt_embeds": _rows(units.negative_embeds, slice(0, batch)),
        }
        inputs = {k: values[k] for k in options.callback_tensors}
        outputs = options.callback_on_step_end(self, step, t, inputs) or {}
        for key, attr in (
            ("latents", "latents"),
            ("prompt_embeds", "prompt_embeds"),
            ("negative_prompt_embeds", "negative_embeds"),
        ):
            new = outputs.get(key)
            current = getattr(units, attr)
            if new is None or current is None or new is values[key]:
                continue
            if tuple(new.shape) != tuple(values[key].shape):
                raise ValueError(
                    f"callback_on_step_end returned {key} of shape {tuple(new.shape)}; expected "
                    f"{tuple(values[key].shape)} (one row per image of the batch)."
                )
            setattr(units, attr, torch.cat([new.to(current.dtype), current[batch:]]))

    def _denoise(self, units: _Units, t, cfg: bool, contexts: list, chunks: list, options) -> torch.Tensor:
        """Noise prediction (with classifier-free guidance if ``cfg``) for every unit, chunk by chunk."""
        outputs = []
        for (start, stop), context in zip(chunks, contexts):
            latents = units.latents[start:stop]
            embeds = units.prompt_embeds[start:stop]
            control = units.control[start:stop] if units.control is not None else None
            if cfg:
                latents = torch.cat([latents, latents])
                embeds = torch.cat([units.negative_embeds[start:stop], embeds])
                control = torch.cat([control, control]) if control is not None else None
            model_input = self.scheduler.scale_model_input(latents, t)
            noise = predict_noise(
                self.unet,
                model_input,
                t,
                embeds,
                context=context,
                controlnet=self.controlnet,
                control_image=control,
                conditioning_scale=options.controlnet_conditioning_scale,
                use_control_residuals=options.use_control_residuals,
            )
            if cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + self.guidance_scale * (cond - uncond)
            outputs.append(noise)
        return torch.cat(outputs)

    def _contexts(self, units: _Units, latent_size, cfg: bool, options: _SamplingOptions):
        """Chunk the units (by ``max_batch`` UNet rows) and build one MT-Color context per chunk;
        the negative (unconditional) rows get the null instance condition."""
        count = units.latents.shape[0]
        max_batch = options.max_batch
        per_chunk = count if max_batch is None else max(1, max_batch // (2 if cfg else 1))
        chunks = [(s, min(s + per_chunk, count)) for s in range(0, count, per_chunk)]
        contexts = []
        for start, stop in chunks:
            label = units.label_maps[start:stop]
            embeds = units.instance_embeds[start:stop]
            counts = units.instance_counts[start:stop]
            if cfg:
                label = torch.cat([torch.zeros_like(label), label])
                embeds = torch.cat([torch.zeros_like(embeds), embeds])
                counts = torch.cat([torch.zeros_like(counts), counts])
            contexts.append(
                self.adapter.build_context(label, embeds, counts, latent_size, **options.context_options)
            )
        return chunks, contexts

    @staticmethod
    def _fuse(units: _Units, batch, passes, latent_size, options: _SamplingOptions) -> torch.Tensor:
        """MT eq. 8 (or the chosen fusion) of every image's global latent with its instance latents."""
        latents = units.latents
        fused = latents[:batch].clone()
        for b in range(batch):
            rows = [batch + j for j, p in enumerate(passes) if p.sample == b]
            if not rows:
                continue  # no instance: nothing to fuse
            label = resize_label_map(units.label_maps[b], latent_size)
            fused[b] = fuse_latents(
                latents[b], latents[rows], label, beta=options.beta, fusion=options.fusion
            )
        return fused

    def _decode(self, latents, samples: list[Sample], output_type: str, preserve_luminance: bool) -> list:
        """Latents (B, 4, h, w) -> per image (3, H, W) RGB in [0, 1] at its input's size (or the latents)."""
        if output_type == "latent":
            return list(latents)
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        decoded = (decoded.float() / 2 + 0.5).clamp(0, 1).cpu()  # (B, 3, h, w) in [0, 1]
        outputs = []
        for b, sample in enumerate(samples):
            if preserve_luminance:
                ab = rgb_to_lab(decoded[b : b + 1])[:, 1:]
                outputs.append(recombine_luminance(sample.lightness[None].float(), ab)[0])
            else:
                outputs.append(resize(decoded[b : b + 1], sample.size, mode="bicubic").clamp(0, 1)[0])
        return outputs

    @staticmethod
    def _format(results: list, output_type: str):
        if output_type in ("latent", "pt"):
            same = len({tuple(r.shape) for r in results}) == 1
            return torch.stack(results) if same else results
        arrays = [r.permute(1, 2, 0).numpy() for r in results]
        if output_type == "np":
            same = len({a.shape for a in arrays}) == 1
            return np.stack(arrays) if same else arrays
        return [PIL.Image.fromarray(to_uint8_image(a)) for a in arrays]  # row tiles: no float copies


def _check_number(name: str, value, low: float | None, high: float | None, hint: str) -> None:
    """A finite real number in [low, high], else TypeError / ValueError naming ``name``."""
    bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number in {bounds}, got {value!r} ({type(value).__name__}); pass a float "
            f"({hint})."
        )
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}; pass a float ({hint}).")


def _texts_and_names(value, name: str, batch_size: int | None) -> tuple[list[str], list[str]]:
    """A prompt argument (None, str or list) -> one text per image and how warnings name it."""
    if value is None or isinstance(value, str):
        count = batch_size or 1
        return [value or ""] * count, [name] * count
    texts = [text or "" for text in value]
    if batch_size is not None and len(texts) != batch_size:
        raise ValueError(
            f"{name} has {len(texts)} entries for {batch_size} images; pass one per image or a str."
        )
    return texts, [f"{name}[{i}]" for i in range(len(texts))]


def _per_image(value, name: str, batched: bool, count: int, ndim: int) -> list | None:
    """Instance embeddings -> one tensor per image (a tensor for one image, a list for a batch)."""
    if value is None:
        return None
    items = [value] if isinstance(value, torch.Tensor) and not batched else value
    if not isinstance(items, (list, tuple)) or len(items) != count:
        what = f"a list of {len(items)}" if isinstance(items, (list, tuple)) else type(value).__name__
        raise ValueError(
            f"{name} is {what}; pass one tensor per input image ({count}): a tensor for a single image, "
            "a list for a batch."
        )
    for b, item in enumerate(items):
        if not isinstance(item, torch.Tensor) or item.ndim != ndim:
            got = f"shape {tuple(item.shape)}" if isinstance(item, torch.Tensor) else type(item).__name__
            raise ValueError(f"{name}[{b}] has {got}; expected a {ndim}-D tensor (one row per instance).")
    return list(items)
