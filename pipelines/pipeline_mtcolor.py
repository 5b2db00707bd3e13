"""MTColorPipeline: instance-aware, text-guided colorization with MT-Color (SD-1.5 + ControlNet +
pixel-level mask attention + masked instance branch + multi-instance sampling).

Conventions follow diffusers' ``StableDiffusionControlNetPipeline``. The call is split over three
modules: this one (the pipeline class, construction, ``__call__`` in numbered steps),
:mod:`pipelines.mtcolor_inputs` (the call's options, ``check_inputs``, input normalisation, text
encoding, small-instance diagnostics) and :mod:`pipelines.mtcolor_phases` (the denoising phases of
MT section III.C: instance sampling, fusion MT eq. 8, global sampling MT eq. 9). The MT-Color wiring
of one denoising step lives in :func:`mtcolor.denoise.predict_noise`, shared with the training
scripts.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from mtcolor.color import luminance_to_gray, resize
from mtcolor.inputs import Sample, working_size
from mtcolor.masks import resize_label_map
from mtcolor.models.adapter import MTColorAdapter

from . import mtcolor_inputs
from .loading import load_pipeline
from .mtcolor_card import write_card
from .mtcolor_inputs import OUTPUT_TYPES, CallOptions, MTColorInputsMixin, SmallInstanceWarning
from .mtcolor_phases import TextEmbeds, colorize_group, format_images

__all__ = ["MTColorPipeline", "MTColorPipelineOutput", "SmallInstanceWarning", "CallOptions", "OUTPUT_TYPES"]

logger = logging.getLogger(__name__)


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


class MTColorPipeline(MTColorInputsMixin, DiffusionPipeline):
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
                ``tokenizer/``, ``unet/`` and ``scheduler/`` sub-folders. The text encoder may be any
                transformers encoder (CLIP, BERT-family) or a packaged-encoder reference
                (:func:`mtcolor.text_encoders.load_text_encoder`).
            adapter: an ``MTColorAdapter`` folder or object; ``None`` builds a fresh one for the UNet
                (with ``adapter_config`` overrides) whose zero-initialised gates leave the UNet as is.
            controlnet: a ``ControlNetModel`` folder or object; ``None`` for a stage-1 model.
            torch_dtype: dtype to load the models in.
            scheduler: a scheduler instance; default: ``DDIMScheduler`` from ``base_model``.
        """
        from transformers import AutoTokenizer

        from mtcolor.text_encoders import load_text_encoder

        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        vae = AutoencoderKL.from_pretrained(base_model, subfolder="vae", **kw)
        text_encoder = load_text_encoder(base_model, **kw)  # CLIP, BERT-family, or a packaged reference
        tokenizer = AutoTokenizer.from_pretrained(base_model, subfolder="tokenizer")
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
        """Write ``folder/README.md`` describing this pipeline (see :func:`pipelines.mtcolor_card.write_card`).

        ``load_from`` is the Python expression shown in the usage example (default: the folder path).
        """
        return write_card(self, folder, base_model, tags, sections, load_from)

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
        # 0. The call's options, packed once (a callback object declares the tensors it reads)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        options = CallOptions(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            alpha=alpha,
            beta=beta,
            fusion=fusion,
            eta=eta,
            working_resolution=self.default_working_resolution
            if working_resolution is None
            else working_resolution,
            output_type=output_type,
            preserve_luminance=preserve_luminance,
            num_images_per_prompt=num_images_per_prompt,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            attention_mode=attention_mode,
            attention_impl=attention_impl,
            use_pmam=use_pmam,
            use_instance_branch=use_instance_branch,
            use_instance_masks=use_instance_masks,
            use_control_residuals=use_control_residuals,
            max_batch=max_batch,
            callback_on_step_end=callback_on_step_end,
            callback_tensors=tuple(callback_on_step_end_tensor_inputs),
        )

        # 1. Check inputs
        if sam_points is not None or sam_boxes is not None:
            masks = mtcolor_inputs.masks_from_sam(
                image, masks, sam_points, sam_boxes, sam_checkpoint, sam_model_type
            )
        samples, batched, instance_prompt_embeds, instance_pooled_embeds = (
            mtcolor_inputs.prepare_call_samples(
                image, masks, texts, prompt, negative_prompt, instance_prompt_embeds, instance_pooled_embeds
            )
        )
        self.check_inputs(
            samples=samples,
            options=options,
            generator=generator,
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
        diagnostics = self.small_instances(samples, options.working_resolution, batched)
        mtcolor_inputs.warn_small_instances(diagnostics, stacklevel=3)  # the caller's line

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
        embeds = TextEmbeds(prompt_embeds, negative_prompt_embeds, instance_hidden, instance_pooled)

        # 4. One entry per generated image; images that share a working size are denoised together
        samples = [s for s in samples for _ in range(num_images_per_prompt)]
        groups: dict[tuple[int, int], list[int]] = {}
        for row, sample in enumerate(samples):
            size = working_size(sample.size, options.working_resolution, self.vae_scale_factor)
            groups.setdefault(size, []).append(row)

        # 5. Denoise (MT section III.C, eq. 8-9) and decode each group, with the MT-Color processors
        #    installed for this call only
        results: list = [None] * len(samples)
        with self.mtcolor_attention():
            for size, rows in groups.items():
                outputs = colorize_group(
                    self,
                    [samples[r] for r in rows],
                    embeds.select(rows),
                    size,
                    [generator[r] for r in rows] if isinstance(generator, list) else generator,
                    None if latents is None else latents[rows],
                    options,
                )
                for row, output in zip(rows, outputs):
                    results[row] = output

        # 6. Post-process
        self.maybe_free_model_hooks()
        images = format_images(results, output_type)
        if not return_dict:
            return (images,)
        return MTColorPipelineOutput(images=images, diagnostics=diagnostics)
