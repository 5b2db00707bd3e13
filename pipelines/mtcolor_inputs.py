"""The inputs of one :class:`~pipelines.pipeline_mtcolor.MTColorPipeline` call: the call's options
(one frozen :class:`CallOptions`), their validation (``check_inputs``), the normalisation of images,
masks, texts and precomputed embeddings into :class:`mtcolor.inputs.Sample` objects, and the
small-instance diagnostics, and the text encoding (the methods of :class:`MTColorInputsMixin`).

Errors name the argument, the value received and the fix (``ValueError`` / ``TypeError``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mtcolor.attention.kernels import IMPLS, MODES
from mtcolor.conditioning import encode_texts
from mtcolor.inputs import Sample, prepare_samples, working_size
from mtcolor.masks import attention_grids, lost_instances, resize_label_map
from mtcolor.sampling import FUSIONS

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class SmallInstanceWarning(UserWarning):
    """Some instances are smaller than one token of the coarser attention grids (which they then do
    not condition). Issued once per call; the details are in ``MTColorPipelineOutput.diagnostics``."""


@dataclass(frozen=True)
class CallOptions:
    """Every scalar option of one ``MTColorPipeline.__call__`` (see its docstring for each), packed
    once: ``check_inputs`` validates it, the denoising phases read it.

    ``working_resolution`` is resolved (never None); ``callback_tensors`` are the tensor names the
    step callback receives (a callback object's own ``tensor_inputs``).
    """

    num_inference_steps: int
    guidance_scale: float
    alpha: float
    beta: float
    fusion: str
    eta: float
    working_resolution: int
    output_type: str
    preserve_luminance: bool
    num_images_per_prompt: int
    controlnet_conditioning_scale: float
    attention_mode: str | None
    attention_impl: str
    use_pmam: bool | None
    use_instance_branch: bool | None
    use_instance_masks: bool | None
    use_control_residuals: bool
    max_batch: int | None
    callback_on_step_end: Callable | None
    callback_tensors: tuple[str, ...]

    @property
    def context_options(self) -> dict:
        """Keywords of ``MTColorAdapter.build_context`` (attention mode/impl and ablation switches)."""
        return {
            "mode": self.attention_mode,
            "impl": self.attention_impl,
            "use_pmam": self.use_pmam,
            "use_instance_branch": self.use_instance_branch,
            "use_instance_masks": self.use_instance_masks,
        }


def prepare_call_samples(
    image, masks, texts, prompt, negative_prompt, instance_prompt_embeds, instance_pooled_embeds
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


def masks_from_sam(image, masks, points, boxes, checkpoint, model_type):
    """Instance masks from Segment Anything prompts (see :func:`mtcolor.sam.masks_from_sam`)."""
    if masks is not None:
        raise ValueError("masks and sam_points/sam_boxes are both given; pass one of them.")
    from mtcolor.sam import masks_from_sam as sam_masks

    return sam_masks(image, points=points, boxes=boxes, checkpoint=checkpoint, model_type=model_type)


# ---------------------------------------------------------------------------------- small instances
def small_instances(
    samples: list[Sample], working_resolution: int, batched: bool, vae_scale_factor: int, levels: int
) -> list[dict]:
    """Instances smaller than one token of some attention grids at the working size (they do not
    condition those grids): the ``"small_instance"`` diagnostics of ``MTColorPipelineOutput``.

    ``levels`` is the UNet's number of resolutions (``len(unet.config.block_out_channels)``); the
    grids are :func:`mtcolor.masks.attention_grids` of each image's latent size.
    """
    found = []
    for b, sample in enumerate(samples):
        if sample.label_map is None:
            continue
        size = working_size(sample.size, working_resolution, vae_scale_factor)
        latent_size = (size[0] // vae_scale_factor, size[1] // vae_scale_factor)
        lost = lost_instances(sample.label_map, size, attention_grids(latent_size, levels))
        if not lost:
            continue
        label_map = resize_label_map(sample.label_map, size)
        for k, grids in lost.items():
            found.append(
                {
                    "kind": "small_instance",
                    "image": b,
                    "instance": k - 1,
                    "name": f"texts[{b}][{k - 1}]" if batched else f"texts[{k - 1}]",
                    "text": sample.texts[k - 1],
                    "pixels": int((label_map == k).sum()),
                    "working_size": list(size),
                    "lost_grids": [list(grid) for grid in grids],
                }
            )
    return found


def warn_small_instances(diagnostics: list[dict], stacklevel: int) -> None:
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
        stacklevel=stacklevel + 1,
    )


# ---------------------------------------------------------------------------------- pipeline methods
class MTColorInputsMixin:
    """The input methods of :class:`~pipelines.pipeline_mtcolor.MTColorPipeline` (they read its
    ``unet``, ``adapter``, ``tokenizer``, ``text_encoder`` and ``vae_scale_factor``): ``check_inputs``,
    the small-instance diagnostics, and the text encoding (the global prompt and every instance text,
    each distinct text encoded once)."""

    def check_inputs(
        self,
        *,
        samples: list[Sample],
        options: CallOptions,
        generator,
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
        o = options
        for b, sample in enumerate(samples):
            if min(sample.size) < 1:
                name = f"image[{b}]" if len(samples) > 1 else "image"
                raise ValueError(
                    f"{name} is empty ({sample.size[0]} x {sample.size[1]} pixels, H x W); pass an image with "
                    "at least one pixel in each dimension."
                )
        steps = o.num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {steps!r}.")
        _check_number("alpha", o.alpha, 0.0, 1.0, "the share of instance-sampling steps, e.g. 0.2")
        _check_number("beta", o.beta, 0.0, None, "the global latent's weight in MT eq. 8, e.g. 0.2")
        _check_number("guidance_scale", o.guidance_scale, 0.0, None, "e.g. 7.5; <= 1 disables guidance")
        _check_number("eta", o.eta, 0.0, None, "DDIM's eta: 0 deterministic, 1 DDPM-like")
        _check_number(
            "controlnet_conditioning_scale", o.controlnet_conditioning_scale, None, None, "e.g. 1.0"
        )
        if o.fusion not in FUSIONS:
            raise ValueError(f"fusion={o.fusion!r}; expected one of {FUSIONS}.")
        if o.output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={o.output_type!r}; expected one of {OUTPUT_TYPES}.")
        if o.attention_mode is not None and o.attention_mode not in MODES:
            raise ValueError(
                f"attention_mode={o.attention_mode!r}; expected one of {MODES} or None (the adapter's "
                f"default, {self.adapter.config.attention_mode!r})."
            )
        if o.attention_impl not in IMPLS:
            raise ValueError(
                f"attention_impl={o.attention_impl!r}; expected one of {IMPLS} ('auto' picks one)."
            )
        resolution = o.working_resolution
        if (
            isinstance(resolution, bool)
            or not isinstance(resolution, int)
            or resolution < self.vae_scale_factor
        ):
            raise ValueError(
                f"working_resolution must be an int >= {self.vae_scale_factor} (or None for the model's own "
                f"{self.default_working_resolution}), got {resolution!r}."
            )
        per_prompt = o.num_images_per_prompt
        if not isinstance(per_prompt, int) or per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive int, got {per_prompt!r}.")
        if o.max_batch is not None and (not isinstance(o.max_batch, int) or o.max_batch < 1):
            raise ValueError(f"max_batch must be a positive int or None, got {o.max_batch!r}.")
        unknown = [k for k in o.callback_tensors if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}; allowed: {self._callback_tensor_inputs}."
            )
        batch = len(samples)
        total = batch * per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but {total} images are generated "
                f"({batch} inputs x num_images_per_prompt={per_prompt}); pass one per image."
            )
        self._check_embeds(
            samples,
            o.alpha,
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

    def small_instances(self, samples: list[Sample], working_resolution: int, batched: bool) -> list[dict]:
        """Instances smaller than one token of some attention grids at the working size (they do not
        condition those grids): the ``"small_instance"`` diagnostics of ``MTColorPipelineOutput``."""
        levels = len(self.unet.config.block_out_channels)
        return small_instances(samples, working_resolution, batched, self.vae_scale_factor, levels)

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
            texts, names = texts_and_names(prompt, "prompt", batch_size)
            prompt_embeds = self._encode_unique(texts, names, device)[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            texts, names = texts_and_names(negative_prompt, "negative_prompt", prompt_embeds.shape[0])
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


# ---------------------------------------------------------------------------------- argument helpers
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


def texts_and_names(value, name: str, batch_size: int | None) -> tuple[list[str], list[str]]:
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
