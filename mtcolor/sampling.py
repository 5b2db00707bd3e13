"""Multi-instance sampling (MT eq. 8-9): instance passes, their batching, and the fusion.

For the first ``alpha * T`` steps every instance ``i`` is denoised on its own (its text as the
prompt, itself as the only instance) from the same initial noise as the global latent; then the
latents are fused (MT eq. 8, :func:`fuse_latents`) and global sampling continues (MT eq. 9) on
the fused latent alone.

The latents denoised together in one step are one frozen :class:`DenoisingRows`: the global latents
(one per image) first, then one row per instance pass. :func:`global_rows`,
:func:`with_instance_rows` and :func:`fuse_instance_rows` build them; every denoising step makes a
new one with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .masks import instance_masks, resize_label_map

FUSIONS = ("paper", "normalized", "no_crop")


@dataclass(frozen=True)
class InstancePass:
    """One instance pass: sample ``sample`` of the batch, instance ``instance`` (1-based)."""

    sample: int
    instance: int


def instance_passes(num_instances: list[int]) -> list[InstancePass]:
    """All (sample, instance) passes of a batch, sample-major."""
    return [InstancePass(b, i) for b, n in enumerate(num_instances) for i in range(1, n + 1)]


def fuse_latents(
    global_latents: torch.Tensor,
    instance_latents: torch.Tensor,
    label_map: torch.Tensor,
    beta: float = 0.2,
    fusion: str = "paper",
) -> torch.Tensor:
    """Fuse one sample's global latent with its instance latents.

    Args:
        global_latents: (C, h, w) z^g_{alpha T}.
        instance_latents: (n, C, h, w) z^i_{alpha T} for instances 1..n.
        label_map: (h, w) int64 label map at latent resolution (0 = m_g, k = m_k).
        beta: weight of the global latent.
        fusion:
            ``"paper"``: MT eq. 8, ``z = beta * m_g * z_g + sum_i m_i * z_i``.
            ``"normalized"``: per-pixel weights that sum to one, the global latent weighted by
            ``beta`` everywhere: ``z = (beta * z_g + sum_i m_i * z_i) / (beta + sum_i m_i)``, i.e.
            z_g on the background and ``(beta z_g + z_i) / (1 + beta)`` on instance i. Unlike eq. 8
            it does not shrink the background latent by ``beta``.
            ``"no_crop"``: the paper's "w/o crop" ablation: instance results averaged into the
            global one without masks, ``z = (z_g + sum_i z_i) / (n + 1)``.

    Returns:
        (C, h, w) fused latent.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r}; expected one of {FUSIONS}.")
    n = instance_latents.shape[0]
    if fusion == "no_crop":
        return (global_latents + instance_latents.sum(0)) / (n + 1)
    masks = instance_masks(label_map, n, global_latents.dtype)  # (n + 1, h, w): m_g, m_1 .. m_n
    m_g, m = masks[:1], masks[1:, None]  # (1, h, w), (n, 1, h, w)
    instance_part = (m * instance_latents).sum(0)
    if fusion == "paper":
        return beta * m_g * global_latents + instance_part
    return (beta * global_latents + instance_part) / (beta + m.sum(0))


def _take(value: torch.Tensor | None, rows) -> torch.Tensor | None:
    return None if value is None else value[rows]


def _concat(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
    return None if first is None else torch.cat([first, second])


@dataclass(frozen=True)
class DenoisingRows:
    """The latents denoised together, each row with its own conditioning. The first rows are the
    global latents, one per image; instance passes (:func:`with_instance_rows`) follow."""

    latents: torch.Tensor  # (R, 4, h, w)
    prompt_embeds: torch.Tensor  # (R, L, D) prompt hidden states
    negative_embeds: torch.Tensor | None  # (R, L, D); None without classifier-free guidance
    label_maps: torch.Tensor  # (R, H, W) int64 at the working size, 0 = background
    instance_embeds: torch.Tensor  # (R, n_max, D_text) pooled instance texts, zero-padded
    instance_counts: torch.Tensor  # (R,) instances of each row
    control: torch.Tensor | None  # (R, 3, H, W) gray image in [0, 1]; None without a ControlNet
    image: torch.Tensor  # (R,) int64: the image (of the group) each row belongs to

    @property
    def count(self) -> int:
        return self.latents.shape[0]

    def take(self, rows) -> DenoisingRows:
        """The rows ``rows`` (an index tensor or a slice)."""
        return DenoisingRows(
            latents=self.latents[rows],
            prompt_embeds=self.prompt_embeds[rows],
            negative_embeds=_take(self.negative_embeds, rows),
            label_maps=self.label_maps[rows],
            instance_embeds=self.instance_embeds[rows],
            instance_counts=self.instance_counts[rows],
            control=_take(self.control, rows),
            image=self.image[rows],
        )


def global_rows(
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None,
    instance_pooled: list[torch.Tensor],
    label_maps: torch.Tensor,
    control: torch.Tensor | None,
    text_embed_dim: int,
) -> DenoisingRows:
    """One row per image: its prompt and all its instances.

    Args:
        latents: (B, 4, h, w) z_T; prompt_embeds / negative_embeds: (B, L, D) (negative or None).
        instance_pooled: per image (n_b, D_text) pooled embeddings of its instance texts.
        label_maps: (B, H, W) int64; control: (B, 3, H, W) or None.
        text_embed_dim: D_text (the adapter's ``text_embed_dim``), for images without instances.
    """
    device, dtype, batch = latents.device, latents.dtype, latents.shape[0]
    counts = torch.tensor([len(p) for p in instance_pooled], dtype=torch.long, device=device)
    n_max = int(counts.max()) if batch else 0
    instance_embeds = torch.zeros(batch, n_max, text_embed_dim, device=device, dtype=dtype)
    for b, pooled in enumerate(instance_pooled):
        instance_embeds[b, : len(pooled)] = pooled.to(device=device, dtype=dtype)
    return DenoisingRows(
        latents=latents,
        prompt_embeds=prompt_embeds.to(device=device, dtype=dtype),
        negative_embeds=None if negative_embeds is None else negative_embeds.to(device=device, dtype=dtype),
        label_maps=label_maps,
        instance_embeds=instance_embeds,
        instance_counts=counts,
        control=control,
        image=torch.arange(batch, device=device),
    )


def with_instance_rows(
    rows: DenoisingRows, instance_hidden: list[torch.Tensor], passes: list[InstancePass]
) -> DenoisingRows:
    """``rows`` (the global rows) followed by one row per instance pass: the instance's own text as
    the prompt (``instance_hidden[image][instance - 1]``, (L, D)), itself as the only instance
    (label 1), everything else background, and the same z_T as its image (z_T^i = z_T)."""
    device, dtype = rows.latents.device, rows.latents.dtype
    idx = torch.tensor([p.sample for p in passes], device=device)
    own_prompt = torch.stack([instance_hidden[p.sample][p.instance - 1] for p in passes])
    own_label = torch.stack([(rows.label_maps[p.sample] == p.instance).long() for p in passes])
    own_embeds = torch.zeros(len(passes), *rows.instance_embeds.shape[1:], device=device, dtype=dtype)
    for j, p in enumerate(passes):
        own_embeds[j, 0] = rows.instance_embeds[p.sample, p.instance - 1]
    return DenoisingRows(
        latents=torch.cat([rows.latents, rows.latents[idx]]),
        prompt_embeds=torch.cat([rows.prompt_embeds, own_prompt.to(device=device, dtype=dtype)]),
        negative_embeds=_concat(rows.negative_embeds, _take(rows.negative_embeds, idx)),
        label_maps=torch.cat([rows.label_maps, own_label]),
        instance_embeds=torch.cat([rows.instance_embeds, own_embeds]),
        instance_counts=torch.cat(
            [rows.instance_counts, torch.ones(len(passes), dtype=torch.long, device=device)]
        ),
        control=_concat(rows.control, _take(rows.control, idx)),
        image=torch.cat([rows.image, idx]),
    )


def fuse_instance_rows(
    rows: DenoisingRows, passes: list[InstancePass], images: int, beta: float, fusion: str
) -> DenoisingRows:
    """MT eq. 8 (or the chosen ``fusion``, :func:`fuse_latents`) of each image's global latent with
    its instance latents at latent resolution; returns the ``images`` global rows only.

    ``passes`` lists the instance rows after the ``images`` global rows, in order. An instance
    without a pass (an edit re-samples only the edited instances) contributes its image's global
    latent instead.
    """
    latents = rows.latents
    latent_size = tuple(latents.shape[-2:])
    fused = latents[:images].clone()
    for b in range(images):
        own = [(images + j, p.instance) for j, p in enumerate(passes) if p.sample == b]
        if not own:
            continue  # no instance pass: nothing to fuse
        count = int(rows.instance_counts[b])
        stack = latents[b].expand(count, *latents.shape[1:]).clone()  # (n, C, h, w)
        for row, instance in own:
            stack[instance - 1] = latents[row]
        label = resize_label_map(rows.label_maps[b], latent_size)
        fused[b] = fuse_latents(latents[b], stack, label, beta=beta, fusion=fusion)
    return replace(rows.take(slice(0, images)), latents=fused)


def row_chunks(count: int, max_batch: int | None, guidance: bool) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``count`` rows with at most ``max_batch`` UNet rows per
    chunk (classifier-free guidance runs every row twice); None = one chunk."""
    per_chunk = count if max_batch is None else max(1, max_batch // (2 if guidance else 1))
    return [(s, min(s + per_chunk, count)) for s in range(0, count, per_chunk)]
