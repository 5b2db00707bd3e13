"""The denoising phases of one :class:`~pipelines.pipeline_mtcolor.MTColorPipeline` call, for the
images that share one working size (MT section III.C):

1. :func:`instance_sampling`: the first ``alpha * T`` steps. Every image's global latent z^g (its
   prompt, all its instances) and one latent z^i per instance pass (the instance's own text as the
   prompt, itself as the only instance), all from the same z_T, are denoised together.
2. :func:`fuse_units`: MT eq. 8 (:func:`mtcolor.sampling.fuse_latents`) at z_{alpha T}.
3. :func:`global_sampling`: MT eq. 9, ``z_{t-1} = Diffusion(z_t, t, tau_g, T_n, M_n)`` for the
   remaining steps, one latent per image.

:func:`colorize_group` runs them and decodes. The latents denoised together are one frozen
:class:`Units` (rows: the ``batch`` global latents first, then the instance passes); every step
makes a new one with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import PIL.Image
import torch

from mtcolor.color import recombine_luminance, resize, rgb_to_lab
from mtcolor.denoise import predict_noise
from mtcolor.image_io import to_uint8_image
from mtcolor.inputs import Sample
from mtcolor.masks import resize_label_map
from mtcolor.sampling import InstancePass, fuse_latents, instance_passes

from .mtcolor_inputs import CallOptions


@dataclass(frozen=True)
class TextEmbeds:
    """Encoded texts of every generated image (rows / list items in output order)."""

    prompt: torch.Tensor  # (N, L, D) global prompt hidden states
    negative: torch.Tensor | None  # (N, L, D), None without classifier-free guidance
    instance_hidden: list  # per image (n_b, L, D) hidden states of its instance texts (or None)
    instance_pooled: list  # per image (n_b, D_text) pooled instance text embeddings

    def select(self, rows: list[int]) -> TextEmbeds:
        return TextEmbeds(
            self.prompt[rows],
            None if self.negative is None else self.negative[rows],
            [self.instance_hidden[r] for r in rows],
            [self.instance_pooled[r] for r in rows],
        )


def _rows(value, rows):
    return None if value is None else value[rows]


def _cat(first, second):
    return None if first is None else torch.cat([first, second])


@dataclass(frozen=True)
class Units:
    """The latents denoised together in one phase, with their per-unit conditioning. The first
    ``batch`` units are the global latents, one per image; instance passes follow."""

    latents: torch.Tensor  # (U, 4, h, w)
    prompt_embeds: torch.Tensor  # (U, L, D)
    negative_embeds: torch.Tensor | None  # (U, L, D), None without classifier-free guidance
    label_maps: torch.Tensor  # (U, h_img, w_img) int64, 0 = background
    instance_embeds: torch.Tensor  # (U, n_max, D_text) pooled instance texts, zero-padded
    instance_counts: torch.Tensor  # (U,) instances of each unit
    control: torch.Tensor | None  # (U, 3, h_img, w_img) gray image in [0, 1]; None without ControlNet
    source: torch.Tensor  # (U,) int64: the image of the group each unit belongs to

    @property
    def count(self) -> int:
        return self.latents.shape[0]

    def take(self, rows) -> Units:
        """The units ``rows`` (an index tensor or a slice)."""
        return replace(
            self,
            latents=self.latents[rows],
            prompt_embeds=self.prompt_embeds[rows],
            negative_embeds=_rows(self.negative_embeds, rows),
            label_maps=self.label_maps[rows],
            instance_embeds=self.instance_embeds[rows],
            instance_counts=self.instance_counts[rows],
            control=_rows(self.control, rows),
            source=self.source[rows],
        )


def global_units(latents, embeds: TextEmbeds, label_maps, control, text_embed_dim: int) -> Units:
    """One unit per image: its prompt, all its instances (pooled texts zero-padded to n_max)."""
    device, dtype, batch = latents.device, latents.dtype, latents.shape[0]
    counts = torch.tensor([len(p) for p in embeds.instance_pooled], dtype=torch.long, device=device)
    n_max = int(counts.max()) if batch else 0
    instance_embeds = torch.zeros(batch, n_max, text_embed_dim, device=device, dtype=dtype)
    for b, pooled in enumerate(embeds.instance_pooled):
        instance_embeds[b, : len(pooled)] = pooled.to(device=device, dtype=dtype)
    return Units(
        latents=latents,
        prompt_embeds=embeds.prompt.to(device=device, dtype=dtype),
        negative_embeds=None if embeds.negative is None else embeds.negative.to(device=device, dtype=dtype),
        label_maps=label_maps,
        instance_embeds=instance_embeds,
        instance_counts=counts,
        control=control,
        source=torch.arange(batch, device=device),
    )


def with_instance_units(units: Units, embeds: TextEmbeds, passes: list[InstancePass]) -> Units:
    """``units`` followed by one unit per instance pass: its own text as the prompt, itself as the
    only instance (instance 1), everything else background; the same z_T as its image (z_T^i = z_T)."""
    device, dtype = units.latents.device, units.latents.dtype
    idx = torch.tensor([p.sample for p in passes], device=device)
    own_prompt = torch.stack([embeds.instance_hidden[p.sample][p.instance - 1] for p in passes])
    own_label = torch.stack([(units.label_maps[p.sample] == p.instance).long() for p in passes])
    own_embeds = torch.zeros(len(passes), *units.instance_embeds.shape[1:], device=device, dtype=dtype)
    for j, p in enumerate(passes):
        own_embeds[j, 0] = units.instance_embeds[p.sample, p.instance - 1]
    return Units(
        latents=torch.cat([units.latents, units.latents[idx]]),
        prompt_embeds=torch.cat([units.prompt_embeds, own_prompt.to(device=device, dtype=dtype)]),
        negative_embeds=_cat(units.negative_embeds, _rows(units.negative_embeds, idx)),
        label_maps=torch.cat([units.label_maps, own_label]),
        instance_embeds=torch.cat([units.instance_embeds, own_embeds]),
        instance_counts=torch.cat(
            [units.instance_counts, torch.ones(len(passes), dtype=torch.long, device=device)]
        ),
        control=_cat(units.control, _rows(units.control, idx)),
        source=torch.cat([units.source, idx]),
    )


@dataclass(frozen=True)
class GroupRun:
    """What every denoising step of one group needs besides its units."""

    pipe: Any  # the MTColorPipeline (models, scheduler, guidance state, callbacks' view)
    samples: list[Sample]  # the group's images (their negative prompts are encoded on demand)
    latent_size: tuple[int, int]  # (h, w) of the latents
    generator: Any  # torch.Generator, one per image (a list) or None
    options: CallOptions
    progress: Any = None  # a tqdm progress bar, updated once per step run

    @property
    def batch(self) -> int:
        """Number of images (= global units)."""
        return len(self.samples)


# ---------------------------------------------------------------------------------- the phases
def colorize_group(
    pipe, samples: list[Sample], embeds: TextEmbeds, size, generator, latents, options: CallOptions
) -> list:
    """Denoise and decode the images of ``samples``, which share the working size ``size`` = (h, w).

    ``latents``: None or the initial noise (B, 4, h / 8, w / 8). Returns one entry per image:
    (3, H, W) RGB in [0, 1] at its input's size, or its latents (4, h / 8, w / 8).
    """
    device, dtype = pipe._execution_device, pipe.unet.dtype
    batch = len(samples)
    latent_size = (size[0] // pipe.vae_scale_factor, size[1] // pipe.vae_scale_factor)

    # a. Label maps and the gray conditioning image at the working size
    label_maps, control = pipe.prepare_conditioning(samples, size, device, dtype)

    # b. Timesteps and the initial noise z_T (shared by every instance pass: z_T^i = z_T)
    pipe.scheduler.set_timesteps(options.num_inference_steps, device=device)
    timesteps = pipe.scheduler.timesteps
    pipe._num_timesteps = len(timesteps)
    latents = pipe.prepare_latents(batch, latent_size, dtype, device, generator, latents)

    # c. The global units, and the instance passes of phase 1 (MT section III.C)
    units = global_units(latents, embeds, label_maps, control, pipe.adapter.config.text_embed_dim)
    passes = instance_passes(units.instance_counts.tolist())
    instance_steps = int(round(options.alpha * options.num_inference_steps)) if passes else 0
    if instance_steps and hasattr(pipe.scheduler, "model_outputs"):
        raise ValueError(
            f"{type(pipe.scheduler).__name__} keeps a multistep history, which multi-instance sampling "
            "(alpha > 0) cannot fuse; use DDIMScheduler (the default) or alpha=0."
        )

    # d. Instance phase, fusion (MT eq. 8), global phase (MT eq. 9)
    with pipe.progress_bar(total=len(timesteps)) as progress:
        run = GroupRun(pipe, samples, latent_size, generator, options, progress)
        if instance_steps:
            units = with_instance_units(units, embeds, passes)
            units = instance_sampling(run, units, timesteps[:instance_steps])
            units = fuse_units(run, units, passes)
        units = global_sampling(run, units, timesteps[instance_steps:], first_step=instance_steps)

    # e. Decode and recombine with each input's own luminance at full resolution
    return decode(pipe, units.latents, samples, options.output_type, options.preserve_luminance)


def instance_sampling(run: GroupRun, units: Units, timesteps) -> Units:
    """Phase 1 (MT section III.C), steps ``0 .. alpha T - 1``: z^g and every z^i from z_T to
    z_{alpha T}, each unit with its own prompt, label map and instances (see :func:`with_instance_units`)."""
    return _sampling_steps(run, units, timesteps, first_step=0)


def fuse_units(run: GroupRun, units: Units, passes: list[InstancePass]) -> Units:
    """MT eq. 8 (or the chosen fusion, :func:`mtcolor.sampling.fuse_latents`) of every image's
    global latent with its instance latents, at latent resolution; returns the global units only."""
    batch, latents = run.batch, units.latents
    fused = latents[:batch].clone()
    for b in range(batch):
        rows = [batch + j for j, p in enumerate(passes) if p.sample == b]
        if not rows:
            continue  # no instance: nothing to fuse
        label = resize_label_map(units.label_maps[b], run.latent_size)
        fused[b] = fuse_latents(
            latents[b], latents[rows], label, beta=run.options.beta, fusion=run.options.fusion
        )
    return replace(units.take(slice(0, batch)), latents=fused)


def global_sampling(run: GroupRun, units: Units, timesteps, first_step: int = 0) -> Units:
    """MT eq. 9: for t in {alpha T, ..., 1}, ``z_{t-1} = Diffusion(z_t, t, tau_g, T_n, M_n)``.

    One unit per image: ``Diffusion`` is one scheduler step on the noise predicted by the UNet +
    ControlNet + MT-Color adapter (:func:`mtcolor.denoise.predict_noise`) from the global prompt
    tau_g, the instance texts T_n (pooled, encoded into instance tokens, MT eq. 3) and the masks M_n
    (the label map); with classifier-free guidance the negative branch has the negative prompt and
    the null instance condition.

    Args:
        run: the group's models, options and generator.
        units: the global units (``units.count == run.batch``): z_{alpha T} in ``units.latents``.
        timesteps: the scheduler timesteps still to run (``scheduler.set_timesteps`` already called).
        first_step: index of ``timesteps[0]`` in the whole schedule (callbacks see it).

    Returns:
        the units with ``latents`` = z_0 (B, 4, h, w).
    """
    if units.count != run.batch:
        raise ValueError(f"global_sampling takes one unit per image ({run.batch}), got {units.count}.")
    return _sampling_steps(run, units, timesteps, first_step)


def _sampling_steps(run: GroupRun, units: Units, timesteps, first_step: int) -> Units:
    """One scheduler step per timestep on every unit; step indices start at ``first_step``."""
    pipe, options, batch = run.pipe, run.options, run.batch
    contexts_cfg, chunks, contexts = None, None, None  # the guidance the MT-Color contexts were built for
    for i, t in enumerate(timesteps, start=first_step):
        if pipe.interrupt:
            continue
        cfg = pipe.do_classifier_free_guidance  # a callback may have changed guidance_scale
        if cfg and units.negative_embeds is None:
            negatives = [s.negative_prompt for s in run.samples]
            negative, _ = pipe._encode_unique(negatives, ["negative_prompt"] * batch, units.latents.device)
            units = replace(units, negative_embeds=negative.to(units.prompt_embeds.dtype)[units.source])
        if cfg != contexts_cfg:
            chunks, contexts = _contexts(run, units, cfg)
            contexts_cfg = cfg
        noise = _denoise(run, units, t, cfg, contexts, chunks)
        generator = run.generator
        step_generator = (
            [generator[s] for s in units.source.tolist()] if isinstance(generator, list) else generator
        )
        extra_step = pipe.prepare_extra_step_kwargs(step_generator, options.eta)
        latents = pipe.scheduler.step(noise, t, units.latents, **extra_step, return_dict=False)[0]
        units = replace(units, latents=latents)
        if options.callback_on_step_end is not None:
            units = _step_callback(run, units, i, t)
        if run.progress is not None:
            run.progress.update()
    return units


def _step_callback(run: GroupRun, units: Units, step: int, t) -> Units:
    """Call ``callback_on_step_end`` with the global rows and take back the tensors it returns."""
    batch, options = run.batch, run.options
    current = {  # callback name -> (Units field, all rows)
        "latents": ("latents", units.latents),
        "prompt_embeds": ("prompt_embeds", units.prompt_embeds),
        "negative_prompt_embeds": ("negative_embeds", units.negative_embeds),
    }
    values = {key: _rows(rows, slice(0, batch)) for key, (_, rows) in current.items()}
    inputs = {k: values[k] for k in options.callback_tensors}
    outputs = options.callback_on_step_end(run.pipe, step, t, inputs) or {}
    changes = {}
    for key, (name, rows) in current.items():
        new = outputs.get(key)
        if new is None or rows is None or new is values[key]:
            continue
        if tuple(new.shape) != tuple(values[key].shape):
            raise ValueError(
                f"callback_on_step_end returned {key} of shape {tuple(new.shape)}; expected "
                f"{tuple(values[key].shape)} (one row per image of the batch)."
            )
        changes[name] = torch.cat([new.to(rows.dtype), rows[batch:]])
    return replace(units, **changes)


def _denoise(run: GroupRun, units: Units, t, cfg: bool, contexts: list, chunks: list) -> torch.Tensor:
    """Noise prediction (with classifier-free guidance if ``cfg``) for every unit, chunk by chunk."""
    pipe, options = run.pipe, run.options
    outputs = []
    for (start, stop), context in zip(chunks, contexts):
        latents = units.latents[start:stop]
        embeds = units.prompt_embeds[start:stop]
        control = units.control[start:stop] if units.control is not None else None
        if cfg:
            latents = torch.cat([latents, latents])
            embeds = torch.cat([units.negative_embeds[start:stop], embeds])
            control = torch.cat([control, control]) if control is not None else None
        model_input = pipe.scheduler.scale_model_input(latents, t)
        noise = predict_noise(
            pipe.unet,
            model_input,
            t,
            embeds,
            context=context,
            controlnet=pipe.controlnet,
            control_image=control,
            conditioning_scale=options.controlnet_conditioning_scale,
            use_control_residuals=options.use_control_residuals,
        )
        if cfg:
            uncond, cond = noise.chunk(2)
            noise = uncond + pipe.guidance_scale * (cond - uncond)
        outputs.append(noise)
    return torch.cat(outputs)


def _contexts(run: GroupRun, units: Units, cfg: bool):
    """Chunk the units (by ``max_batch`` UNet rows) and build one MT-Color context per chunk;
    the negative (unconditional) rows get the null instance condition."""
    count, max_batch = units.count, run.options.max_batch
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
            run.pipe.adapter.build_context(
                label, embeds, counts, run.latent_size, **run.options.context_options
            )
        )
    return chunks, contexts


# ---------------------------------------------------------------------------------- output
def decode(pipe, latents, samples: list[Sample], output_type: str, preserve_luminance: bool) -> list:
    """Latents (B, 4, h, w) -> per image (3, H, W) RGB in [0, 1] at its input's size (or the latents)."""
    if output_type == "latent":
        return list(latents)
    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    decoded = (decoded.float() / 2 + 0.5).clamp(0, 1).cpu()  # (B, 3, h, w) in [0, 1]
    outputs = []
    for b, sample in enumerate(samples):
        if preserve_luminance:
            ab = rgb_to_lab(decoded[b : b + 1])[:, 1:]
            outputs.append(recombine_luminance(sample.lightness[None].float(), ab)[0])
        else:
            outputs.append(resize(decoded[b : b + 1], sample.size, mode="bicubic").clamp(0, 1)[0])
    return outputs


def format_images(results: list, output_type: str):
    """Per-image results -> the output's ``images``: stacked when the sizes agree, else a list."""
    if output_type in ("latent", "pt"):
        same = len({tuple(r.shape) for r in results}) == 1
        return torch.stack(results) if same else results
    arrays = [r.permute(1, 2, 0).numpy() for r in results]
    if output_type == "np":
        same = len({a.shape for a in arrays}) == 1
        return np.stack(arrays) if same else arrays
    return [PIL.Image.fromarray(to_uint8_image(a)) for a in arrays]  # row tiles: no float copies
