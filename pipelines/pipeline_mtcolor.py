"""MTColorPipeline: instance-aware, text-guided colorization with MT-Color (SD-1.5 + ControlNet +
pixel-level mask attention + masked instance branch + multi-instance sampling).

Conventions follow diffusers' ``StableDiffusionControlNetPipeline``: ``__call__`` checks the inputs,
encodes the texts, prepares the latents and owns the denoising loop (the instance phase, the fusion
of MT eq. 8 and the global phase of MT eq. 9, MT section III.C), then decodes. What it calls is
either a method of this class or a pure function of tensors: the batched rows of the instance
passes and their fusion in :mod:`mtcolor.sampling`, one MT-Color forward pass in
:func:`mtcolor.denoise.predict_noise` (shared with the training scripts), the input normalisation
in :mod:`mtcolor.inputs`, the input findings in :mod:`mtcolor.diagnostics` and the Lab
recombination in :mod:`mtcolor.color`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from mtcolor.chroma_alignment import plan_alignment
from mtcolor.color import luminance_to_gray, recombine_luminance, resize, rgb_to_lab
from mtcolor.color_steering import (
    DecodedCellColors,
    instance_cell_weights,
    steer_x0,
    steered_prediction,
    steering_strength,
    target_chroma,
)
from mtcolor.color_targets import ColorTarget, color_from_text, parse_colors
from mtcolor.conditioning import encode_texts
from mtcolor.denoise import predict_noise
from mtcolor.diagnostics import (
    SmallInstanceWarning,
    color_target_findings,
    instance_name,
    small_instances,
    unreachable_targets,
    warn_small_instances,
)
from mtcolor.editing import (
    EditPlan,
    EditState,
    changed_instances,
    composite,
    edit_window,
    edited_region,
    known_cells,
    model_fingerprint,
    previous_pixels,
)
from mtcolor.image_io import to_uint8_image
from mtcolor.inputs import Sample, check_number, prepare_pipeline_samples, texts_and_names, working_size
from mtcolor.latent_color import LatentColorProbe, color_probe_for
from mtcolor.masks import attention_grids, lost_instances, resize_label_map
from mtcolor.models.adapter import MTColorAdapter
from mtcolor.sampling import (
    FUSIONS,
    DenoisingRows,
    fuse_instance_rows,
    global_rows,
    instance_passes,
    row_chunks,
    with_instance_rows,
)
from mtcolor.switches import MTColorSwitches

from .loading import load_pipeline
from .model_card import ModelCardMixin, write_mtcolor_card

__all__ = ["MTColorPipeline", "MTColorPipelineOutput", "SmallInstanceWarning", "OUTPUT_TYPES"]

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

#: share of the denoising steps colour steering acts on
STEERING_UNTIL = 1.0
#: decoder-measured corrections of the final latents when colours are steered
FINAL_STEERING_ITERATIONS = 2

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
        diagnostics: JSON-ready notes about the inputs, one dict per finding (empty if none); see
            :mod:`mtcolor.diagnostics` for the kinds (e.g. ``"small_instance"``: an instance smaller
            than one token of some attention grids). The same findings are summarised in one warning
            per call (e.g. :class:`SmallInstanceWarning`).
        edit_states: per generated image what an edit of it needs (:class:`mtcolor.editing.EditState`:
            the final latents, label map, texts, colour targets, settings and the model's
            fingerprint); pass the output back as ``edit_from`` to re-colour some instances.
    """

    images: list | np.ndarray | torch.Tensor
    diagnostics: list[dict] = field(default_factory=list)
    edit_states: list[EditState] = field(default_factory=list)


class MTColorPipeline(ModelCardMixin, DiffusionPipeline):
    r"""Colorize a gray image from instance masks + instance texts (+ an optional global prompt).

    Components:
        vae (`AutoencoderKL`), text_encoder (any transformers text encoder: SD-1.5's `CLIPTextModel`,
        or a BERT-family encoder; its hidden size is the UNet's ``cross_attention_dim``), tokenizer
        (its tokenizer), unet (`UNet2DConditionModel`), controlnet (`ControlNetModel`, optional: a
        stage-1 model has none), adapter (:class:`~mtcolor.MTColorAdapter`), scheduler (DDIM by
        default), color_probe (:class:`mtcolor.latent_color.LatentColorProbe`, optional: the latent ->
        a*b* map colour steering reads; fitted for the VAE and cached on first use when missing).

    The adapter's attention processors are installed on the UNet for the duration of each call, on
    top of the UNet's own processors, and the UNet's processors are restored afterwards: the UNet's
    standard processor API (``set_attn_processor``, ``set_default_attn_processor``,
    ``enable_xformers_memory_efficient_attention``) keeps working between calls.
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _optional_components = ["controlnet", "color_probe"]
    _exclude_from_cpu_offload = ["adapter", "color_probe"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, adapter, scheduler, color_probe=None):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            adapter=adapter,
            scheduler=scheduler,
            color_probe=color_probe,
        )
        # diffusers' fallback when the pipeline is built without a VAE (e.g. to encode prompts only)
        self.vae_scale_factor = (
            2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        )
        self._guidance_scale = 1.0
        self._cross_attention_kwargs = None
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

    def write_model_card(
        self,
        folder,
        base_model: str | None = None,
        tags=(),
        sections: dict | None = None,
        load_from: str | None = None,
    ) -> Path:
        """Write ``folder/README.md`` describing this pipeline (see
        :func:`mtcolor.pipelines.model_card.write_mtcolor_card`); ``save_pretrained`` calls it with its
        ``model_card_kwargs``. ``load_from`` is the Python expression shown in the usage example
        (default: the folder path)."""
        return write_mtcolor_card(self, folder, base_model, tags, sections, load_from)

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
    def cross_attention_kwargs(self) -> dict | None:
        """The running call's ``cross_attention_kwargs``."""
        return self._cross_attention_kwargs

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

    def prepare_mtcolor_contexts(
        self, rows: DenoisingRows, guidance: bool, switches: MTColorSwitches, max_batch: int | None
    ) -> tuple[list[tuple[int, int]], list]:
        """Chunk the rows (at most ``max_batch`` UNet rows per call) and build one MT-Color context
        (label maps + instance tokens, :meth:`MTColorAdapter.build_context`) per chunk; under
        classifier-free guidance the negative rows come first and get the null instance condition."""
        latent_size = tuple(rows.latents.shape[-2:])
        chunks = row_chunks(rows.count, max_batch, guidance)
        contexts = []
        for start, stop in chunks:
            label = rows.label_maps[start:stop]
            embeds = rows.instance_embeds[start:stop]
            counts = rows.instance_counts[start:stop]
            if guidance:
                label = torch.cat([torch.zeros_like(label), label])
                embeds = torch.cat([torch.zeros_like(embeds), embeds])
                counts = torch.cat([torch.zeros_like(counts), counts])
            contexts.append(
                self.adapter.build_context(label, embeds, counts, latent_size, **switches.context_options)
            )
        return chunks, contexts

    # ------------------------------------------------------------------ colour targets
    def resolve_color_targets(
        self, samples: list[Sample], colors, colors_from_texts: bool, batched: bool
    ) -> tuple[list[list[ColorTarget | None]], list[list[str]]]:
        """Per image, per instance the colour target (:mod:`mtcolor.color_targets`) and, for texts
        asked to give one that name no single colour, the reason.

        ``colors``: None, or aligned with the masks (one list per image for a batch); an entry is None,
        ``"#rrggbb"``, ``"rgb(r, g, b)"``, an (r, g, b) triple in 0..255 or a colour name. An explicit
        entry wins over the text; with ``colors_from_texts`` the other instances take the colour
        their text names ("a crimson apple"), if exactly one.
        """
        per_image = (
            [colors] if not batched else (list(colors) if colors is not None else [None] * len(samples))
        )
        if batched and colors is not None and len(per_image) != len(samples):
            raise ValueError(
                f"colors has {len(per_image)} entries for {len(samples)} images; pass one list per image."
            )
        targets, reasons = [], []
        for b, (sample, given) in enumerate(zip(samples, per_image)):
            name = f"colors[{b}]" if batched else "colors"
            explicit = parse_colors(given, len(sample.texts), name)
            image_targets, image_reasons = [], []
            for target, text in zip(explicit, sample.texts):
                reason = ""
                if target is None and colors_from_texts:
                    read = color_from_text(text)
                    target, reason = read.target, read.reason
                image_targets.append(target)
                image_reasons.append(reason)
            targets.append(image_targets)
            reasons.append(image_reasons)
        return targets, reasons

    def load_color_probe(self) -> LatentColorProbe:
        """The latent -> a*b* probe colour steering reads (:mod:`mtcolor.latent_color`): the
        ``color_probe`` component, else one fitted for this VAE (cached under
        ``~/.cache/mtcolor/color_probes``), kept as the component from then on."""
        if self.color_probe is None:
            folder = getattr(self.config, "_name_or_path", None)
            with torch.enable_grad():  # __call__ runs under no_grad; fitting a probe needs gradients
                probe = color_probe_for(
                    self.vae, model_folder=folder if folder and Path(folder).is_dir() else None
                )
            self.register_modules(color_probe=probe.to(self.vae.device).eval())
        return self.color_probe

    @staticmethod
    def steering_targets(rows: DenoisingRows, images: int, passes, targets: list, mean_lightness: list):
        """The steered (row, instance) pairs of ``rows``: labels (R, n) int64, target a*b* (R, n, 2)
        at each instance's mean lightness, active (R, n) bool. Global rows carry their image's
        instances 1..n; an instance pass (rows after the first ``images``) its own instance as label 1."""
        n = max([len(t) for t in targets] + [1])
        labels = torch.zeros(rows.count, n, dtype=torch.long)
        lab = torch.zeros(rows.count, n, 3)
        light = torch.zeros(rows.count, n)
        active = torch.zeros(rows.count, n, dtype=torch.bool)

        def fill(row, slot, label, b, k):
            target = targets[b][k - 1]
            if target is not None:
                labels[row, slot], lab[row, slot] = label, torch.tensor(target.lab)
                light[row, slot], active[row, slot] = mean_lightness[b][k - 1], True

        for b in range(images):
            for k in range(1, len(targets[b]) + 1):
                fill(b, k - 1, k, b, k)
        if rows.count > images:
            for j, p in enumerate(passes):
                fill(images + j, 0, 1, p.sample, p.instance)
        return labels, target_chroma(lab, light), active

    def refine_colors(self, rows: DenoisingRows, images, targets, strength: float, mean_lightness):
        """The final latents with each targeted instance's colour corrected through the decoder itself
        (:class:`mtcolor.color_steering.DecodedCellColors`: exact colours and gradients;
        ``FINAL_STEERING_ITERATIONS`` decodes with their backward passes)."""
        labels, chroma, active = self.steering_targets(rows, images, [], targets, mean_lightness)
        latents = rows.latents
        weights = instance_cell_weights(rows.label_maps, labels.to(latents.device), latents.shape[-2:])

        def decode(z):
            return (
                self.vae.decode(z / self.vae.config.scaling_factor, return_dict=False)[0] / 2 + 0.5
            ).clamp(0, 1)

        correction = steer_x0(
            latents,
            DecodedCellColors(decode),
            weights,
            chroma.to(latents.device),
            active.to(latents.device),
            iterations=FINAL_STEERING_ITERATIONS,
        )
        return latents + strength * correction

    # ------------------------------------------------------------------ edits
    def prepare_edit(
        self,
        edit_from,
        edit_instances,
        samples: list[Sample],
        batched: bool,
        num_images_per_prompt: int,
        working_resolution: int,
        colors: list,
        fingerprint: str,
    ) -> EditPlan:
        """Check an edit (before any model work) and say what to keep (see :mod:`mtcolor.editing`).

        Args:
            edit_from: the previous result: an :class:`MTColorPipelineOutput` of one image (its
                ``edit_states`` hold the latents, label map, texts and settings) or the previous
                image alone (PIL / numpy / tensor, e.g. a PNG read from disk: its latents are
                encoded and ``edit_instances`` must be given).
            edit_instances: 0-based indices (into ``masks`` / ``texts``) of the instances to change;
                None = every instance whose text, colour target or mask differs from ``edit_from``.
            colors: this call's resolved colour target per instance (Lab tuples or None).
        """
        if batched or len(samples) != 1 or num_images_per_prompt != 1:
            raise ValueError(
                "edit_from edits one image: pass one image (not a list) and num_images_per_prompt=1 "
                f"(got {len(samples)} images x {num_images_per_prompt})."
            )
        (sample,) = samples
        state = None
        if isinstance(edit_from, MTColorPipelineOutput):
            if len(edit_from.edit_states) != 1:
                raise ValueError(
                    f"edit_from holds {len(edit_from.edit_states)} results; pass the output of a one-image "
                    "call (or one image of it)."
                )
            state, image = edit_from.edit_states[0], edit_from.images[0]
            if state.latents is None:
                raise ValueError("edit_from was made with output_type='latent'; edit a decoded result.")
        else:
            image = edit_from
        previous, previous_uint8 = previous_pixels(image)
        if previous.shape[:2] != tuple(sample.size):
            raise ValueError(
                f"edit_from is {previous.shape[0]} x {previous.shape[1]} (H x W) but image is "
                f"{sample.size[0]} x {sample.size[1]}; edit the result of this same input image."
            )
        label_map = (
            sample.label_map if sample.label_map is not None else torch.zeros(sample.size, dtype=torch.long)
        )
        count = len(sample.texts)
        if state is not None:
            size = working_size(sample.size, working_resolution, self.vae_scale_factor)
            problems = []
            if state.model != fingerprint:
                problems.append("it was made by another model")
            if tuple(state.working_size) != tuple(size):
                problems.append(
                    f"it was made at working size {tuple(state.working_size)}, this call runs at {size}"
                )
            if len(state.texts) != count:
                problems.append(f"it has {len(state.texts)} instances, this call {count}")
            if problems:
                raise ValueError(
                    f"edit_from cannot be edited by this call: {'; '.join(problems)}. Edit with the same model, "
                    "working_resolution and instances (change texts, colors or masks), or pass the image alone."
                )
        if edit_instances is None:
            if state is None:
                raise ValueError(
                    "edit_instances is None but edit_from is an image without its edit state; name the "
                    "instances to change, e.g. edit_instances=[0]."
                )
            instances = changed_instances(state, label_map, sample.texts, colors)
        else:
            items = [edit_instances] if isinstance(edit_instances, int) else list(edit_instances)
            bad = [i for i in items if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count]
            if bad or not items:
                raise ValueError(
                    f"edit_instances={edit_instances!r}; pass 0-based indices of existing instances "
                    f"(this call has {count}: 0..{count - 1}), e.g. [0]."
                )
            instances = sorted({i + 1 for i in items})
        size = working_size(sample.size, working_resolution, self.vae_scale_factor)
        levels = len(self.unet.config.block_out_channels)
        grids = attention_grids((size[0] // self.vae_scale_factor, size[1] // self.vae_scale_factor), levels)
        lost = lost_instances(label_map, size, grids)
        vanished = [k - 1 for k in instances if k in lost and set(map(tuple, lost[k])) >= set(grids)]
        if vanished:
            raise ValueError(
                f"edit_instances: instances {vanished} ({[sample.texts[i] for i in vanished]}) are smaller than "
                f"one token at every attention grid of the working size {size}, so no text can reach them; "
                "enlarge their masks or raise working_resolution."
            )
        old = None if state is None else state.label_map.to(torch.long)
        region = (
            edited_region(label_map, old, instances)
            if instances
            else torch.zeros(sample.size, dtype=torch.bool)
        )
        latents = None if state is None else state.latents[None]
        return EditPlan(instances, region, previous, previous_uint8, latents)

    def prepare_edit_latents(self, edit: EditPlan, size, latent_size, device, dtype):
        """The previous latents (1, C, h, w) (from the edit state, else encoded), the kept cells
        (1, 1, h, w) (:func:`mtcolor.editing.known_cells`) and the latent window to re-sample
        (:func:`mtcolor.editing.edit_window`, sides multiples of the UNet's downsampling)."""
        previous = edit.latents
        if previous is None:
            previous = self.encode_previous(edit.previous, size, device, dtype)
        previous = previous.to(device=device, dtype=dtype)
        known = known_cells(edit.region, latent_size).to(device=device, dtype=dtype)
        window = edit_window(known, multiple=2 ** (len(self.unet.config.block_out_channels) - 1))
        return previous, known, window

    def encode_previous(self, previous: np.ndarray, size, device, dtype) -> torch.Tensor:
        """A previous result (H, W, 3) in [0, 1] -> its latents (1, C, h, w) at the working ``size``."""
        rgb = torch.from_numpy(previous).permute(2, 0, 1)[None].float()
        rgb = resize(rgb, size, mode="bilinear").clamp(0, 1) * 2 - 1
        posterior = self.vae.encode(rgb.to(device=device, dtype=self.vae.dtype)).latent_dist
        latents = posterior.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * self.vae.config.scaling_factor).to(dtype)

    def model_fingerprint(self) -> str:
        """Identifies the models an edit state was made with (:func:`mtcolor.editing.model_fingerprint`)."""
        return model_fingerprint(self.unet, self.adapter, self.vae, self.controlnet)

    # ------------------------------------------------------------------ checks and text encoding
    def check_inputs(
        self,
        *,
        samples: list[Sample],
        num_inference_steps,
        guidance_scale,
        alpha,
        beta,
        fusion,
        eta,
        working_resolution,
        output_type,
        num_images_per_prompt,
        controlnet_conditioning_scale,
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

        ``samples`` are the prepared inputs (one per input image, :func:`mtcolor.inputs.prepare_samples`);
        ``instance_prompt_embeds`` / ``instance_pooled_embeds`` are None or one tensor per input image.
        Every other argument is the ``__call__`` argument of the same name.
        """
        for b, sample in enumerate(samples):
            if min(sample.size) < 1:
                name = f"image[{b}]" if len(samples) > 1 else "image"
                raise ValueError(
                    f"{name} is empty ({sample.size[0]} x {sample.size[1]} pixels, H x W); pass an image with "
                    "at least one pixel in each dimension."
                )
        steps = num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {steps!r}.")
        check_number("alpha", alpha, 0.0, 1.0, "the share of instance-sampling steps, e.g. 0.2")
        check_number("beta", beta, 0.0, None, "the global latent's weight in MT eq. 8, e.g. 0.2")
        check_number("guidance_scale", guidance_scale, 0.0, None, "e.g. 7.5; <= 1 disables guidance")
        check_number("eta", eta, 0.0, None, "DDIM's eta: 0 deterministic, 1 DDPM-like")
        check_number("controlnet_conditioning_scale", controlnet_conditioning_scale, None, None, "e.g. 1.0")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r}; expected one of {FUSIONS}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; expected one of {OUTPUT_TYPES}.")
        resolution = working_resolution
        if (
            isinstance(resolution, bool)
            or not isinstance(resolution, int)
            or resolution < self.vae_scale_factor
        ):
            raise ValueError(
                f"working_resolution must be an int >= {self.vae_scale_factor} (or None for the model's own "
                f"{self.default_working_resolution}), got {resolution!r}."
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
        total = len(samples) * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but {total} images are generated "
                f"({len(samples)} inputs x num_images_per_prompt={num_images_per_prompt}); pass one per image."
            )
        for name, text, embeds in (
            ("prompt", prompt, prompt_embeds),
            ("negative_prompt", negative_prompt, negative_prompt_embeds),
        ):
            if text is not None and embeds is not None:
                raise ValueError(f"{name} and {name}_embeds are both given; pass only one of them.")
        length = self._check_prompt_embeds(len(samples), prompt_embeds, negative_prompt_embeds)
        self._check_instance_embeds(samples, alpha, length, instance_prompt_embeds, instance_pooled_embeds)

    def _check_prompt_embeds(self, batch: int, prompt_embeds, negative_prompt_embeds) -> int | None:
        """Shapes of precomputed (B, L, D) prompt embeddings; returns their L (None if none given)."""
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
            expected = (batch, length or embeds.shape[1], width)
            if got != expected:
                raise ValueError(
                    f"{name} has shape {got}; expected (B, L, D) = {expected}: one row per input image, "
                    f"D = the UNet's cross_attention_dim ({width}), the same L as the other text embeddings."
                )
            length = embeds.shape[1]
        return length

    def _check_instance_embeds(self, samples, alpha, length, instance_prompt_embeds, instance_pooled_embeds):
        """Shapes of precomputed instance embeddings (one (n, L, D) / (n, D_text) tensor per image)."""
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
        width, text_dim = self.unet.config.cross_attention_dim, self.adapter.config.text_embed_dim
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

    def small_instances(self, samples: list[Sample], working_resolution: int, batched: bool) -> list[dict]:
        """Instances smaller than one token of some attention grids at the working size (they do not
        condition those grids): the ``"small_instance"`` diagnostics (:mod:`mtcolor.diagnostics`)."""
        levels = len(self.unet.config.block_out_channels)
        return small_instances(samples, working_resolution, batched, self.vae_scale_factor, levels)

    def encode_texts(self, texts: list[str], names: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (N, L, D) and pooled embeddings (N, D_text) of ``texts``
        (:func:`mtcolor.conditioning.encode_texts`), each distinct text encoded once; ``names`` say how
        truncation warnings name each text."""
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
            texts, names = texts_and_names(prompt, "prompt", batch_size)
            prompt_embeds = self.encode_texts(texts, names, device)[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            texts, names = texts_and_names(negative_prompt, "negative_prompt", prompt_embeds.shape[0])
            negative_prompt_embeds = self.encode_texts(texts, names, device)[0]

        def repeat(x):
            return None if x is None else x.to(device).repeat_interleave(num_images_per_prompt, 0)

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
                all_hidden, all_pooled = self.encode_texts(flat, [n for s in names for n in s], device)
                sizes = [len(t) for t in texts]
                hidden, pooled = list(all_hidden.split(sizes)), list(all_pooled.split(sizes))
            else:
                width = self.adapter.config.text_embed_dim
                hidden = [None] * len(texts)
                pooled = [torch.zeros(0, width, device=device) for _ in texts]

        def move(x):
            return None if x is None else x.to(device)

        hidden = [move(h) for h in hidden for _ in range(num_images_per_prompt)]
        pooled = [move(p) for p in pooled for _ in range(num_images_per_prompt)]
        return hidden, pooled

    # ------------------------------------------------------------------ one denoising step
    def predict_guided_noise(
        self,
        rows: DenoisingRows,
        t,
        chunks: list[tuple[int, int]],
        contexts: list,
        controlnet_conditioning_scale: float,
        use_control_residuals: bool,
    ) -> torch.Tensor:
        """Noise prediction of every row (MT eq. 10's eps_theta, :func:`mtcolor.denoise.predict_noise`),
        with classifier-free guidance while ``do_classifier_free_guidance``, one UNet call per chunk."""
        guidance = self.do_classifier_free_guidance
        outputs = []
        for (start, stop), context in zip(chunks, contexts):
            latents = rows.latents[start:stop]
            embeds = rows.prompt_embeds[start:stop]
            control = rows.control[start:stop] if rows.control is not None else None
            if guidance:
                latents = torch.cat([latents, latents])
                embeds = torch.cat([rows.negative_embeds[start:stop], embeds])
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
                conditioning_scale=controlnet_conditioning_scale,
                use_control_residuals=use_control_residuals,
                cross_attention_kwargs=self.cross_attention_kwargs,
            )
            if guidance:
                uncond, cond = noise.chunk(2)
                noise = uncond + self.guidance_scale * (cond - uncond)
            outputs.append(noise)
        return torch.cat(outputs)

    def run_step_callback(self, callback, tensor_inputs, rows: DenoisingRows, images: int, step: int, t):
        """Call ``callback_on_step_end`` with the global rows (one per image) of the tensors it asked
        for and take back the tensors it returns (the instance rows are kept)."""
        current = {  # callback name -> (DenoisingRows field, all rows)
            "latents": ("latents", rows.latents),
            "prompt_embeds": ("prompt_embeds", rows.prompt_embeds),
            "negative_prompt_embeds": ("negative_embeds", rows.negative_embeds),
        }
        values = {
            key: None if all_rows is None else all_rows[:images] for key, (_, all_rows) in current.items()
        }
        outputs = callback(self, step, t, {k: values[k] for k in tensor_inputs}) or {}
        changes = {}
        for key, (name, all_rows) in current.items():
            new = outputs.get(key)
            if new is None or all_rows is None or new is values[key]:
                continue
            if tuple(new.shape) != tuple(values[key].shape):
                raise ValueError(
                    f"callback_on_step_end returned {key} of shape {tuple(new.shape)}; expected "
                    f"{tuple(values[key].shape)} (one row per image of the batch)."
                )
            changes[name] = torch.cat([new.to(all_rows.dtype), all_rows[images:]])
        return replace(rows, **changes)

    @staticmethod
    def keep_known(
        latents: torch.Tensor, kept: torch.Tensor, known: torch.Tensor, images: int
    ) -> torch.Tensor:
        """The global rows' latents (the first ``images``) with the known cells (``known`` 1) taken from
        ``kept`` (1, C, h, w); instance-pass rows are left as they are."""
        out = latents.clone()
        out[:images] = known * kept + (1 - known) * latents[:images]
        return out

    @staticmethod
    def edit_state(
        latents, sample: Sample, colors: list, size, fingerprint: str, settings: dict
    ) -> EditState:
        """The :class:`~mtcolor.editing.EditState` of one generated image."""
        label_map = (
            sample.label_map if sample.label_map is not None else torch.zeros(sample.size, dtype=torch.long)
        )
        compact = torch.uint8 if len(sample.texts) < 256 else torch.int32
        return EditState(
            latents=latents.detach().cpu(),
            label_map=label_map.to(compact),
            texts=list(sample.texts),
            colors=list(colors),
            prompt=sample.prompt,
            negative_prompt=sample.negative_prompt,
            image_size=tuple(sample.size),
            working_size=tuple(size),
            model=fingerprint,
            settings=settings,
        )

    @staticmethod
    def composite_edit(result: torch.Tensor, edit: EditPlan, output_type: str) -> torch.Tensor:
        """``R ? result : previous`` at full resolution (:func:`mtcolor.editing.composite`): for PIL
        output in uint8, so every pixel outside R keeps the previous image's exact 8-bit value."""
        region = edit.region.cpu().numpy()
        new = result.permute(1, 2, 0).numpy()
        if output_type == "pil":
            merged = (
                composite(to_uint8_image(new.copy()), edit.previous_uint8, region).astype(np.float32) / 255
            )
        else:
            merged = composite(new.astype(np.float32), edit.previous, region)
        return torch.from_numpy(np.ascontiguousarray(merged)).permute(2, 0, 1)

    # ------------------------------------------------------------------ output
    def decode_latents(
        self,
        latents: torch.Tensor,
        samples: list[Sample],
        output_type: str,
        preserve_luminance: bool,
        exact_targets: list[list] | None = None,
    ) -> tuple[list[torch.Tensor], dict]:
        """Latents (B, 4, h, w) -> per image (3, H, W) RGB in [0, 1] at its input's size: the input's
        own L + the decoded ab resized to it (``preserve_luminance``), else the decoded image resized;
        ``output_type="latent"``: the latents (4, h, w).

        ``exact_targets``: per image, per instance a colour target or None: the exact mode
        (:mod:`mtcolor.chroma_alignment`) aligns each targeted instance's dominant chroma mode to its
        target at full resolution (planned on the decode at the working size). Returns the outputs and
        ``{(image, instance): reason}`` of targets it could not plan.
        """
        if output_type == "latent":
            return list(latents), {}
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        decoded = (decoded.float() / 2 + 0.5).clamp(0, 1).cpu()  # (B, 3, h, w) in [0, 1]
        outputs, skipped = [], {}
        for b, sample in enumerate(samples):
            if not preserve_luminance:
                outputs.append(resize(decoded[b : b + 1], sample.size, mode="bicubic").clamp(0, 1)[0])
                continue
            ab = rgb_to_lab(decoded[b : b + 1])[:, 1:]  # (1, 2, h, w)
            lightness = sample.lightness[None].float()
            targets = None if exact_targets is None else exact_targets[b]
            if not targets or all(t is None for t in targets) or sample.label_map is None:
                outputs.append(recombine_luminance(lightness, ab)[0])
                continue
            size = tuple(ab.shape[-2:])
            plan = plan_alignment(
                resize(lightness, size)[0], ab[0], resize_label_map(sample.label_map, size), targets
            )
            skipped.update({(b, label - 1): reason for label, reason in plan.skipped})
            outputs.append(
                recombine_luminance(lightness, ab, label_map=sample.label_map[None], adjust=[plan])[0]
            )
        return outputs, skipped

    @staticmethod
    def format_images(results: list[torch.Tensor], output_type: str):
        """Per-image results -> the output's ``images``: stacked when the sizes agree, else a list."""
        if output_type in ("latent", "pt"):
            same = len({tuple(r.shape) for r in results}) == 1
            return torch.stack(results) if same else results
        arrays = [r.permute(1, 2, 0).numpy() for r in results]
        if output_type == "np":
            same = len({a.shape for a in arrays}) == 1
            return np.stack(arrays) if same else arrays
        return [PIL.Image.fromarray(to_uint8_image(a)) for a in arrays]  # row tiles: no float copies

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
        eta: float = 0.0,
        max_batch: int | None = None,
        switches: MTColorSwitches | dict | None = None,
        cross_attention_kwargs: dict | None = None,
        colors=None,
        colors_from_texts: bool = True,
        color_steering: float = 0.0,
        exact_colors: bool = True,
        edit_from=None,
        edit_instances: int | list[int] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] | list[str] = ("latents",),
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
            eta: DDIM eta, finite, >= 0 (0 = deterministic DDIM).
            max_batch: most UNet rows per call (classifier-free guidance counts 2 per latent); the
                instance passes and the global pass are batched up to this size. None = no limit.
            switches: the research switches (:class:`mtcolor.switches.MTColorSwitches` or a dict of its
                fields): masked attention mode and implementation, and the ablation switches of PMAM,
                the instance branch, its masks and the ControlNet residuals. None = the adapter's.
            cross_attention_kwargs: passed to the UNet's attention as in diffusers: ``"scale"`` scales
                LoRA layers; other keys reach the processors (the wrapped ones included) that declare
                them.
            colors: per-instance colour targets aligned with ``masks`` (for a batch, one list per
                image): None (text only), ``"#rrggbb"``, ``"rgb(r, g, b)"``, an ``(r, g, b)`` triple in
                0..255, or a colour name of the XKCD / CSS tables ("crimson", "navy blue", "light
                teal"); see :mod:`mtcolor.color_targets`.
            colors_from_texts: instances without an explicit ``colors`` entry take the colour their
                text names, when it names exactly one ("a crimson apple"); texts naming none or
                several ("a red and white bus") get none, reported in ``diagnostics``.
            color_steering: strength of the steering toward the targets during sampling (0, the
                default, = off: the exact mode alone reaches the targets with less bleeding; 1.0 is
                the calibrated strength):
                each step's predicted x0 is corrected inside each targeted instance's mask so that its
                colour, read by the latent colour probe, moves to the target
                (:mod:`mtcolor.color_steering`: ``x0' = x0 + s_t sum_k d_k``); no extra UNet calls.
            exact_colors: after decoding, align each targeted instance's dominant chroma mode to its
                target at full resolution, keeping its shading, texture, its other colours (tyres,
                faces) and the input's L (:mod:`mtcolor.chroma_alignment`).
            edit_from: re-colour some instances of a previous result and keep every other pixel
                exactly: an :class:`MTColorPipelineOutput` of one image (it carries the latents and
                settings) or the previous image alone (e.g. a PNG from disk, encoded by the VAE). The
                call's ``image`` / ``masks`` / ``texts`` are the full new set; pixels outside the edited
                instances' regions (old and new masks) equal the previous result's (the same uint8
                values for PIL output). Only the edited instances' passes run. See
                :mod:`mtcolor.editing`.
            edit_instances: with ``edit_from``, the 0-based indices of the instances to change; None =
                those whose text, colour target or mask changed (needs an output as ``edit_from``).
            callback_on_step_end: ``f(pipe, step, timestep, callback_kwargs) -> dict``, a diffusers
                ``PipelineCallback`` or ``MultiPipelineCallbacks``, called after every step; it may
                replace the tensors named in ``callback_on_step_end_tensor_inputs`` (a callback
                object's own ``tensor_inputs`` are used instead), read ``pipe.num_timesteps`` /
                ``pipe.guidance_scale`` / ``pipe.do_classifier_free_guidance``, change guidance from
                the next step on by setting ``pipe._guidance_scale``, or stop with ``pipe._interrupt``.

        Returns:
            :class:`MTColorPipelineOutput` (images and diagnostics) or ``(images,)``.

        Examples:
        """
        # One readable denoising loop, as in diffusers' pipelines: each numbered step calls a method of
        # this class or a pure function of tensors.
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if working_resolution is None:
            working_resolution = self.default_working_resolution

        # 1. Check inputs (before any model work)
        samples, batched, instance_prompt_embeds, instance_pooled_embeds = prepare_pipeline_samples(
            image, masks, texts, prompt, negative_prompt, instance_prompt_embeds, instance_pooled_embeds
        )
        switches = MTColorSwitches.coerce(switches)
        self.check_inputs(
            samples=samples,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            alpha=alpha,
            beta=beta,
            fusion=fusion,
            eta=eta,
            working_resolution=working_resolution,
            output_type=output_type,
            num_images_per_prompt=num_images_per_prompt,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
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
        if isinstance(color_steering, bool):
            raise TypeError(f"color_steering must be a float strength (0 = off), got {color_steering!r}.")
        check_number("color_steering", color_steering, 0.0, None, "e.g. 1.0; 0 turns steering off")
        targets, target_reasons = self.resolve_color_targets(samples, colors, colors_from_texts, batched)
        fingerprint = self.model_fingerprint()
        colors = [[None if t is None else t.lab for t in image_targets] for image_targets in targets]
        edit = None
        if edit_from is not None:
            edit = self.prepare_edit(
                edit_from, edit_instances, samples, batched, num_images_per_prompt, working_resolution,
                colors[0], fingerprint,
            )  # fmt: skip
        self._guidance_scale = guidance_scale
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        device, dtype = self._execution_device, self.unet.dtype

        # 2. Instances smaller than one token of the coarser attention grids: one summary warning
        diagnostics = self.small_instances(samples, working_resolution, batched)
        warn_small_instances(diagnostics, stacklevel=3)  # the caller's line
        color_findings = color_target_findings(samples, targets, target_reasons, batched)
        diagnostics += color_findings
        mean_lightness = [
            [float(s.lightness[0][s.label_map == k].mean()) for k in range(1, len(s.texts) + 1)]
            for s in samples
        ]

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
                [instance_name(batched, b, i) for i in range(len(s.texts))] for b, s in enumerate(samples)
            ],
        )

        # 4. One entry per generated image; images that share a working size are denoised together
        samples = [s for s in samples for _ in range(num_images_per_prompt)]
        groups: dict[tuple[int, int], list[int]] = {}
        for row, sample in enumerate(samples):
            groups.setdefault(
                working_size(sample.size, working_resolution, self.vae_scale_factor), []
            ).append(row)

        results: list = [None] * len(samples)
        states: list = [None] * len(samples)
        unplanned: dict = {}  # (input image, instance) -> why the exact mode could not plan its target
        with self.mtcolor_attention():  # the MT-Color processors, for this call only
            for size, group in groups.items():
                images = len(group)
                group_samples = [samples[r] for r in group]
                group_generator = [generator[r] for r in group] if isinstance(generator, list) else generator
                latent_size = (size[0] // self.vae_scale_factor, size[1] // self.vae_scale_factor)

                # 5. Label maps and the gray conditioning image at the working size; timesteps; z_T
                label_maps, control = self.prepare_conditioning(group_samples, size, device, dtype)
                self.scheduler.set_timesteps(num_inference_steps, device=device)
                timesteps = self.scheduler.timesteps
                self._num_timesteps = len(timesteps)
                z_t = self.prepare_latents(
                    images,
                    latent_size,
                    dtype,
                    device,
                    group_generator,
                    None if latents is None else latents[group],
                )
                if edit is not None:  # 5b. an edit re-samples only a window around its region
                    previous, known, window = self.prepare_edit_latents(
                        edit, size, latent_size, device, dtype
                    )
                    pixels = tuple(
                        slice(w.start * self.vae_scale_factor, w.stop * self.vae_scale_factor) for w in window
                    )
                    z_t, label_maps = z_t[..., window[0], window[1]], label_maps[..., pixels[0], pixels[1]]
                    control = None if control is None else control[..., pixels[0], pixels[1]]
                    kept_cells = known[..., window[0], window[1]]
                    kept_noise = randn_tensor(
                        z_t.shape, generator=group_generator, device=device, dtype=dtype
                    )
                rows = global_rows(
                    z_t,
                    prompt_embeds[group],
                    None if negative_prompt_embeds is None else negative_prompt_embeds[group],
                    [instance_pooled[r] for r in group],
                    label_maps,
                    control,
                    self.adapter.config.text_embed_dim,
                )

                # 6. The instance passes of the first alpha T steps (MT section III.C): each instance with
                #    its own text as the prompt and itself as the only instance, from the same z_T
                passes = instance_passes(rows.instance_counts.tolist())
                if edit is not None:  # only the edited instances are sampled anew
                    passes = [p for p in passes if p.instance in edit.instances]
                instance_steps = int(round(alpha * num_inference_steps)) if passes else 0
                if instance_steps and hasattr(self.scheduler, "model_outputs"):
                    raise ValueError(
                        f"{type(self.scheduler).__name__} keeps a multistep history, which multi-instance "
                        "sampling (alpha > 0) cannot fuse; use DDIMScheduler (the default) or alpha=0."
                    )
                if instance_steps:
                    rows = with_instance_rows(rows, [instance_hidden[r] for r in group], passes)

                group_targets = [targets[r // num_images_per_prompt] for r in group]
                steer_probe = None
                if color_steering > 0 and any(t is not None for ts in group_targets for t in ts):
                    steer_probe = self.load_color_probe()
                steering: dict = {}  # the current rows' steered pairs (recomputed after the fusion)

                # 7. Denoising loop
                contexts: dict = {}  # guidance on/off -> (chunks, MT-Color contexts) of the current rows
                with self.progress_bar(total=len(timesteps)) as progress_bar:
                    for i, t in enumerate(timesteps):
                        if i == instance_steps and rows.count > images:
                            # MT eq. 8 at z_{alpha T}; the global phase (MT eq. 9) continues on the fused latents
                            rows, contexts = fuse_instance_rows(rows, passes, images, beta, fusion), {}
                        if self.interrupt:
                            continue
                        if edit is not None:  # the kept cells at this step's noise level
                            kept = self.scheduler.add_noise(
                                previous[..., window[0], window[1]], kept_noise, t.reshape(1)
                            )
                            rows = replace(
                                rows, latents=self.keep_known(rows.latents, kept, kept_cells, images)
                            )
                        guidance = self.do_classifier_free_guidance  # a callback may have changed it
                        if guidance and rows.negative_embeds is None:  # guidance switched on mid-run
                            negatives = [s.negative_prompt for s in group_samples]
                            negative, _ = self.encode_texts(negatives, ["negative_prompt"] * images, device)
                            rows = replace(
                                rows, negative_embeds=negative.to(rows.prompt_embeds.dtype)[rows.image]
                            )
                        if guidance not in contexts:
                            contexts = {
                                guidance: self.prepare_mtcolor_contexts(rows, guidance, switches, max_batch)
                            }
                        noise = self.predict_guided_noise(
                            rows,
                            t,
                            *contexts[guidance],
                            controlnet_conditioning_scale,
                            switches.use_control_residuals,
                        )
                        strength = steering_strength(i, len(timesteps), color_steering, STEERING_UNTIL)
                        if steer_probe is not None and strength > 0:
                            if steering.get("rows") != rows.count:
                                labels, chroma, active = self.steering_targets(
                                    rows, images, passes, group_targets,
                                    [mean_lightness[r // num_images_per_prompt] for r in group],
                                )  # fmt: skip
                                weights = instance_cell_weights(
                                    rows.label_maps, labels.to(device), rows.latents.shape[-2:]
                                )
                                steering = {"rows": rows.count, "weights": weights, "chroma": chroma.to(device), "active": active.to(device)}  # fmt: skip
                            noise = steered_prediction(
                                noise,
                                rows.latents,
                                self.scheduler.alphas_cumprod[int(t)],
                                lambda x0: strength * steer_x0(x0, steer_probe, steering["weights"], steering["chroma"], steering["active"]),  # noqa: B023
                                self.scheduler.config.prediction_type,
                            )  # fmt: skip
                        step_generator = (
                            [group_generator[k] for k in rows.image.tolist()]
                            if isinstance(group_generator, list)
                            else group_generator
                        )
                        extra_step_kwargs = self.prepare_extra_step_kwargs(step_generator, eta)
                        z_prev = self.scheduler.step(
                            noise, t, rows.latents, **extra_step_kwargs, return_dict=False
                        )[0]
                        rows = replace(rows, latents=z_prev)
                        if callback_on_step_end is not None:
                            rows = self.run_step_callback(
                                callback_on_step_end, callback_on_step_end_tensor_inputs, rows, images, i, t
                            )
                        progress_bar.update()
                if rows.count > images:  # alpha = 1: every step was an instance step
                    rows = fuse_instance_rows(rows, passes, images, beta, fusion)
                if steer_probe is not None:  # the last correction measures through the decoder
                    rows = replace(rows, latents=self.refine_colors(rows, images, group_targets, color_steering, [mean_lightness[r // num_images_per_prompt] for r in group]))  # fmt: skip
                if edit is not None:  # the previous latents outside the window and in its kept cells
                    window_latents = self.keep_known(
                        rows.latents, previous[..., window[0], window[1]], kept_cells, images
                    )
                    full = previous.clone()
                    full[..., window[0], window[1]] = window_latents
                    rows = replace(rows, latents=full)

                # 8. Decode and recombine with each input's own luminance at full resolution
                outputs, skipped = self.decode_latents(
                    rows.latents,
                    group_samples,
                    output_type,
                    preserve_luminance,
                    group_targets if exact_colors else None,
                )
                unplanned.update(
                    {(group[b] // num_images_per_prompt, k): why for (b, k), why in skipped.items()}
                )
                for j, (row, output) in enumerate(zip(group, outputs)):
                    results[row] = output
                    states[row] = self.edit_state(
                        rows.latents[j], samples[row], colors[row // num_images_per_prompt], size, fingerprint,
                        dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                             alpha=alpha, beta=beta, fusion=fusion, working_resolution=working_resolution),
                    )  # fmt: skip

        # 9. Post-process: an edit keeps every pixel outside the edited region exactly
        self.maybe_free_model_hooks()
        diagnostics += unreachable_targets(color_findings, unplanned)
        if edit is not None and output_type != "latent":
            results = [self.composite_edit(results[0], edit, output_type)]
        images = self.format_images(results, output_type)
        if not return_dict:
            return (images,)
        return MTColorPipelineOutput(images=images, diagnostics=diagnostics, edit_states=states)
