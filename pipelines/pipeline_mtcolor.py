"""MTColorPipeline: instance-aware, text-guided colorization with MT-Color (SD-1.5 + ControlNet +
pixel-level mask attention + masked instance branch + multi-instance sampling).

Conventions follow diffusers' ``StableDiffusionControlNetPipeline``; the MT-Color wiring of one
denoising step lives in :func:`mtcolor.denoise.predict_noise`, shared with the training scripts.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from mtcolor.color import luminance_to_gray, recombine_luminance, resize, rgb_to_lab
from mtcolor.conditioning import encode_instance_texts, encode_texts
from mtcolor.denoise import predict_noise
from mtcolor.inputs import Sample, prepare_samples, working_size
from mtcolor.masks import resize_label_map, vanished_instances
from mtcolor.models.adapter import MTColorAdapter
from mtcolor.sampling import FUSIONS, fuse_latents, instance_passes

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
    """

    images: list | np.ndarray | torch.Tensor


@dataclass
class _Units:
    """The latents denoised together in one phase, with their per-unit conditioning."""

    latents: torch.Tensor  # (U, 4, h, w)
    prompt_embeds: torch.Tensor  # (U, L, D)
    negative_embeds: torch.Tensor  # (U, L, D)
    label_maps: torch.Tensor  # (U, h_img, w_img)
    instance_embeds: torch.Tensor  # (U, n_max, D)
    instance_counts: torch.Tensor  # (U,)
    control: torch.Tensor | None  # (U, 3, h_img, w_img)


class MTColorPipeline(DiffusionPipeline):
    r"""Colorize a gray image from instance masks + instance texts (+ an optional global prompt).

    Components:
        vae (`AutoencoderKL`), text_encoder (`CLIPTextModel`), tokenizer (`CLIPTokenizer`),
        unet (`UNet2DConditionModel`), controlnet (`ControlNetModel`, optional: a stage-1 model has
        none), adapter (:class:`~mtcolor.MTColorAdapter`), scheduler (DDIM by default).

    The adapter is installed on the UNet (its attention processors) when the pipeline is built.
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
        self.adapter.install(self.unet)
        self._interrupt = False

    # ------------------------------------------------------------------ construction
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

    def enable_xformers_memory_efficient_attention(self, attention_op: Callable | None = None):
        """Use xformers for the UNet's own attention; the MT-Color processors stay installed on top."""
        super().enable_xformers_memory_efficient_attention(attention_op)
        self.adapter.install(self.unet)

    def disable_xformers_memory_efficient_attention(self):
        super().disable_xformers_memory_efficient_attention()
        self.adapter.install(self.unet)

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ------------------------------------------------------------------ inputs
    def check_inputs(
        self,
        num_inference_steps,
        guidance_scale,
        alpha,
        beta,
        fusion,
        output_type,
        working_resolution,
        num_images_per_prompt,
        callback_on_step_end_tensor_inputs,
        generator,
        batch_size,
        max_batch,
    ):
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] (the share of instance-sampling steps), got {alpha}.")
        if beta < 0:
            raise ValueError(f"beta must be >= 0 (the global latent's weight in MT eq. 8), got {beta}.")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r}; expected one of {FUSIONS}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; expected one of {OUTPUT_TYPES}.")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}.")
        if not isinstance(working_resolution, int) or working_resolution < self.vae_scale_factor:
            raise ValueError(
                f"working_resolution must be an int >= {self.vae_scale_factor}, got {working_resolution!r}."
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
        total = batch_size * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but {total} images are generated "
                f"({batch_size} inputs x num_images_per_prompt={num_images_per_prompt}); pass one per image."
            )

    def prepare_latents(self, batch, latent_size, dtype, device, generator, latents=None) -> torch.Tensor:
        shape = (batch, self.unet.config.in_channels, *latent_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents has shape {tuple(latents.shape)}; expected {shape} for these inputs.")
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def _warn_vanishing(self, sample: Sample, label_map: torch.Tensor, latent_size: tuple[int, int]) -> None:
        levels = len(self.unet.config.block_out_channels)
        grids, (h, w) = [], latent_size
        for _ in range(levels):
            grids.append((h, w))
            h, w = -(-h // 2), -(-w // 2)
        for grid in grids:
            for k in vanished_instances(label_map, grid):
                warnings.warn(
                    f"instance {k - 1} ({sample.texts[k - 1]!r}) is smaller than one token of the {grid[0]}x{grid[1]} "
                    "attention grid and does not condition that resolution (it still conditions finer ones).",
                    UserWarning,
                    stacklevel=3,
                )

    # ------------------------------------------------------------------ denoising
    def _denoise(
        self, units: _Units, t, guidance_scale: float, contexts: list, chunks: list, **opts
    ) -> torch.Tensor:
        """Noise prediction (with classifier-free guidance) for every unit, chunk by chunk."""
        cfg = guidance_scale > 1.0
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
                **opts,
            )
            if cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            outputs.append(noise)
        return torch.cat(outputs)

    def _contexts(self, units: _Units, latent_size, guidance_scale, max_batch, context_options):
        """Chunk the units (by ``max_batch`` UNet rows) and build one MT-Color context per chunk;
        the negative (unconditional) rows get the null instance condition."""
        cfg = guidance_scale > 1.0
        count = units.latents.shape[0]
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
            contexts.append(self.adapter.build_context(label, embeds, counts, latent_size, **context_options))
        return chunks, contexts

    @torch.no_grad()
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
        working_resolution: int = 512,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
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
        callback_on_step_end: Callable | None = None,
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
                also gets the null instance condition).
            num_inference_steps: denoising steps T.
            guidance_scale: classifier-free guidance scale (<= 1 disables guidance).
            alpha: share of the first steps sampled per instance (MT section III.C); 0 = plain sampling.
            beta: weight of the global latent in the fusion (MT eq. 8).
            fusion: ``"paper"`` (MT eq. 8), ``"normalized"`` or ``"no_crop"``; see
                :func:`mtcolor.sampling.fuse_latents`.
            working_resolution: short side of the resolution the model runs at (rounded to multiples
                of 8); the output is recombined at the input's own size.
            generator: ``torch.Generator`` or one per generated image.
            latents: initial noise (B * num_images_per_prompt, 4, h, w).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return :class:`MTColorPipelineOutput` (else a tuple).
            preserve_luminance: output = the input's own L + the predicted ab resized to the input
                (exact luminance, full resolution); False returns the decoded image resized to the
                input's size.
            num_images_per_prompt: images per input.
            controlnet_conditioning_scale: ControlNet residual scale.
            attention_mode, attention_impl: masked attention mode (``"renormalized"`` / ``"paper"``,
                default from the adapter config) and implementation.
            use_pmam, use_instance_branch, use_instance_masks: ablation switches (default: adapter
                config); use_control_residuals: standard ControlNet residual injection.
            max_batch: most UNet rows per call (classifier-free guidance counts 2 per latent); the
                instance passes and the global pass are batched up to this size. None = no limit.
            eta: DDIM eta.
            callback_on_step_end: ``f(pipe, step, timestep, callback_kwargs) -> dict`` called after
                every step; may replace the tensors named in ``callback_on_step_end_tensor_inputs``.
            sam_points / sam_boxes / sam_checkpoint / sam_model_type: instead of ``masks``, Segment
                Anything prompts (per instance a list of (x, y) points or an (x0, y0, x1, y1) box) and
                a local SAM checkpoint (single image only).

        Returns:
            :class:`MTColorPipelineOutput` or ``(images,)``.
        """
        # 1. Check inputs
        if sam_points is not None or sam_boxes is not None:
            if masks is not None:
                raise ValueError("masks and sam_points/sam_boxes are both given; pass one of them.")
            from mtcolor.sam import masks_from_sam

            masks = masks_from_sam(
                image,
                points=sam_points,
                boxes=sam_boxes,
                checkpoint=sam_checkpoint,
                model_type=sam_model_type,
            )
        samples = prepare_samples(image, masks, texts, prompt, negative_prompt)
        self.check_inputs(
            num_inference_steps,
            guidance_scale,
            alpha,
            beta,
            fusion,
            output_type,
            working_resolution,
            num_images_per_prompt,
            callback_on_step_end_tensor_inputs,
            generator,
            len(samples),
            max_batch,
        )
        self._interrupt = False
        self.adapter.ensure_installed(self.unet)
        samples = [s for s in samples for _ in range(num_images_per_prompt)]
        if isinstance(generator, list):
            generators = generator
        else:
            generators = [generator] * len(samples)
        options = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "alpha": alpha,
            "beta": beta,
            "fusion": fusion,
            "working_resolution": working_resolution,
            "controlnet_conditioning_scale": controlnet_conditioning_scale,
            "use_control_residuals": use_control_residuals,
            "max_batch": max_batch,
            "eta": eta,
            "callback_on_step_end": callback_on_step_end,
            "callback_tensors": tuple(callback_on_step_end_tensor_inputs),
            "context_options": {
                "mode": attention_mode,
                "impl": attention_impl,
                "use_pmam": use_pmam,
                "use_instance_branch": use_instance_branch,
                "use_instance_masks": use_instance_masks,
            },
        }
        # Samples that share a working size are denoised together; others one group after another.
        groups: dict[tuple[int, int], list[int]] = {}
        for index, sample in enumerate(samples):
            groups.setdefault(
                working_size(sample.size, working_resolution, self.vae_scale_factor), []
            ).append(index)
        results: list = [None] * len(samples)
        for size, indices in groups.items():
            group_latents = None
            if latents is not None:
                group_latents = latents[indices]
            gens = [generators[i] for i in indices]
            out = self._colorize_group(
                [samples[i] for i in indices],
                size,
                gens if isinstance(generator, list) else generator,
                group_latents,
                output_type,
                preserve_luminance,
                **options,
            )
            for i, image_out in zip(indices, out):
                results[i] = image_out
        self.maybe_free_model_hooks()
        images = self._format(results, output_type)
        if not return_dict:
            return (images,)
        return MTColorPipelineOutput(images=images)

    def _colorize_group(
        self,
        samples: list[Sample],
        size: tuple[int, int],
        generator,
        latents,
        output_type,
        preserve_luminance,
        *,
        num_inference_steps,
        guidance_scale,
        alpha,
        beta,
        fusion,
        working_resolution,
        controlnet_conditioning_scale,
        use_control_residuals,
        max_batch,
        eta,
        callback_on_step_end,
        callback_tensors,
        context_options,
    ) -> list:
        device = self._execution_device
        dtype = self.unet.dtype
        batch = len(samples)
        latent_size = (size[0] // self.vae_scale_factor, size[1] // self.vae_scale_factor)

        # 2. Working-resolution gray conditioning image and label maps
        lightness = torch.stack([resize(s.lightness[None], size)[0] for s in samples])  # (B, 1, h, w)
        control = luminance_to_gray(lightness).to(device=device, dtype=dtype) if self.controlnet else None
        label_maps = torch.zeros(batch, *size, dtype=torch.long)
        for b, s in enumerate(samples):
            if s.label_map is not None:
                label_maps[b] = resize_label_map(s.label_map, size)
                self._warn_vanishing(s, label_maps[b], latent_size)
        label_maps = label_maps.to(device)

        # 3. Encode prompts and instance texts
        prompt_embeds, _ = encode_texts(
            self.tokenizer, self.text_encoder, [s.prompt for s in samples], device
        )
        negative_embeds, _ = encode_texts(
            self.tokenizer, self.text_encoder, [s.negative_prompt for s in samples], device
        )
        instance_embeds, counts = encode_instance_texts(
            self.tokenizer, self.text_encoder, [s.texts for s in samples], device, dtype
        )

        # 4. Timesteps and initial noise z_T (shared by every instance pass: z_T^i = z_T)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = self.prepare_latents(batch, latent_size, dtype, device, generator, latents)
        extra_step = {"eta": eta} if "eta" in self.scheduler.step.__code__.co_varnames else {}
        opts = {
            "conditioning_scale": controlnet_conditioning_scale,
            "use_control_residuals": use_control_residuals,
        }

        global_units = _Units(
            latents,
            prompt_embeds.to(dtype),
            negative_embeds.to(dtype),
            label_maps,
            instance_embeds,
            counts,
            control,
        )
        passes = instance_passes(counts.tolist())
        instance_steps = int(round(alpha * num_inference_steps)) if passes else 0
        if instance_steps and hasattr(self.scheduler, "model_outputs"):
            raise ValueError(
                f"{type(self.scheduler).__name__} keeps a multistep history, which multi-instance sampling "
                "(alpha > 0) cannot fuse; use DDIMScheduler (the default) or alpha=0."
            )

        # 5. Phase 1 (MT section III.C): global + per-instance passes, batched together
        units = global_units
        if instance_steps:
            units = self._with_instance_units(global_units, samples, passes, device, dtype)
        chunks, contexts = self._contexts(units, latent_size, guidance_scale, max_batch, context_options)

        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                if i == instance_steps and units is not global_units:
                    # 6. Fusion (MT eq. 8), then global sampling (MT eq. 9)
                    latents = self._fuse(units.latents, batch, passes, label_maps, latent_size, beta, fusion)
                    units = _Units(
                        latents,
                        *[
                            getattr(global_units, f)
                            for f in (
                                "prompt_embeds",
                                "negative_embeds",
                                "label_maps",
                                "instance_embeds",
                                "instance_counts",
                                "control",
                            )
                        ],
                    )
                    chunks, contexts = self._contexts(
                        units, latent_size, guidance_scale, max_batch, context_options
                    )
                noise = self._denoise(units, t, guidance_scale, contexts, chunks, **opts)
                units.latents = self.scheduler.step(noise, t, units.latents, **extra_step, return_dict=False)[
                    0
                ]
                if callback_on_step_end is not None:
                    values = {
                        "latents": units.latents[:batch],
                        "prompt_embeds": units.prompt_embeds[:batch],
                        "negative_prompt_embeds": units.negative_embeds[:batch],
                    }
                    outputs = callback_on_step_end(self, i, t, {k: values[k] for k in callback_tensors})
                    if "latents" in outputs:
                        units.latents = torch.cat([outputs["latents"], units.latents[batch:]])
                    if "prompt_embeds" in outputs:
                        units.prompt_embeds = torch.cat(
                            [outputs["prompt_embeds"], units.prompt_embeds[batch:]]
                        )
                    if "negative_prompt_embeds" in outputs:
                        units.negative_embeds = torch.cat(
                            [outputs["negative_prompt_embeds"], units.negative_embeds[batch:]]
                        )
                progress_bar.update()
        if units is not global_units and units.latents.shape[0] != batch:  # alpha = 1: fuse at the end
            units.latents = self._fuse(units.latents, batch, passes, label_maps, latent_size, beta, fusion)
        latents = units.latents[:batch]

        # 7. Decode and recombine with the input's own luminance at full resolution
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

    def _with_instance_units(self, units: _Units, samples, passes, device, dtype) -> _Units:
        """Append one unit per instance pass: its own text as the prompt, itself as the only instance."""
        idx = torch.tensor([p.sample for p in passes], device=device)
        inst_prompts = [samples[p.sample].texts[p.instance - 1] for p in passes]
        inst_embeds, _ = encode_texts(self.tokenizer, self.text_encoder, inst_prompts, device)
        own_label = torch.stack(
            [(units.label_maps[p.sample] == p.instance).long() for p in passes]
        )  # the instance becomes instance 1, everything else background
        n_max = units.instance_embeds.shape[1]
        own_embeds = torch.zeros(
            len(passes), n_max, units.instance_embeds.shape[2], device=device, dtype=dtype
        )
        for j, p in enumerate(passes):
            own_embeds[j, 0] = units.instance_embeds[p.sample, p.instance - 1]
        return _Units(
            latents=torch.cat([units.latents, units.latents[idx]]),
            prompt_embeds=torch.cat([units.prompt_embeds, inst_embeds.to(dtype)]),
            negative_embeds=torch.cat([units.negative_embeds, units.negative_embeds[idx]]),
            label_maps=torch.cat([units.label_maps, own_label]),
            instance_embeds=torch.cat([units.instance_embeds, own_embeds]),
            instance_counts=torch.cat(
                [units.instance_counts, torch.ones(len(passes), dtype=torch.long, device=device)]
            ),
            control=torch.cat([units.control, units.control[idx]]) if units.control is not None else None,
        )

    @staticmethod
    def _fuse(latents, batch, passes, label_maps, latent_size, beta, fusion) -> torch.Tensor:
        fused = latents[:batch].clone()
        for b in range(batch):
            rows = [batch + j for j, p in enumerate(passes) if p.sample == b]
            if not rows:
                continue  # no instance: nothing to fuse
            label = resize_label_map(label_maps[b], latent_size)
            fused[b] = fuse_latents(latents[b], latents[rows], label, beta=beta, fusion=fusion)
        return fused

    @staticmethod
    def _format(results: list, output_type: str):
        if output_type in ("latent", "pt"):
            same = len({tuple(r.shape) for r in results}) == 1
            return torch.stack(results) if same else results
        arrays = [r.permute(1, 2, 0).numpy() for r in results]
        if output_type == "np":
            same = len({a.shape for a in arrays}) == 1
            return np.stack(arrays) if same else arrays
        return [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in arrays]
