"""Label-masked attention: the one place that owns the masked attention maths (docs/design.md,
"Masked attention").

Every masked component (PMAM, MT eq. 1-2; the instance branch, MT eq. 4-7) reduces to the same
rule once instance masks have become a label map (docs/design.md, "Label maps"): query ``i`` may
attend to key ``j`` iff ``q_labels[b, i] == k_labels[b, j]``. The instance branch passes the keys
``[latent tokens; instance tokens]`` with the key labels ``[latent labels; instance labels]``
(:meth:`mtcolor.attention.processors.MTColorContext.branch_labels`).

Tensor layout follows :func:`torch.nn.functional.scaled_dot_product_attention`:

* ``q``: ``(B, H, Nq, d)``, ``k``: ``(B, H, Nk, d)``, ``v``: ``(B, H, Nk, dv)`` (``dv`` may differ
  from ``d``), any floating dtype, any strides (diffusers processors pass ``(B, N, H, d)`` memory
  viewed as ``(B, H, N, d)``, which is the cheapest layout for the ``"segments"`` implementation).
* ``q_labels``: ``(B, Nq)``, ``k_labels``: ``(B, Nk)``, any integer dtype. Non-negative values are
  labels (0 is the background by convention; only equality matters). **Negative values mark
  padding** (e.g. the padded instance tokens of a batch whose samples have different instance
  counts, label -1): a padding key is seen by no query and does not enter the paper-mode softmax
  either, and a padding query sees no key (output 0). So a sample's output does not depend on how
  much padding the rest of its batch forces on it.

Two masking modes:

* ``"renormalized"`` (default): pre-softmax mask, every row sums to 1 over the allowed keys. A
  query whose label no key carries gets an output of exactly 0 (and zero gradients), never NaN.
* ``"paper"``: MT eq. 2 / 7 literally, ``out = (M o softmax(q k^T * scale)) v``: the softmax runs
  over *all* non-padding keys and the mask is applied afterwards, without renormalisation. Computed as
  ``renormalized_out * mass`` where ``mass[i]`` (in ``[0, 1]``) is the softmax mass query ``i``
  puts on keys of its own label, obtained exactly (with gradients) from unmasked SDPA calls whose
  values are the one-hot encoding of the key labels. No ``N x N`` tensor is formed.

Implementations (``impl=``):

* ``"segments"`` (``"auto"`` picks it): tokens sorted by ``(batch item, label)`` once (a
  :class:`LabelPartition`, reusable across layers, heads and calls), one SDPA call per
  ``(batch item, label)`` segment on contiguous slices, results scattered back. Memory ``O(N)``;
  works on any device.
* ``"sdpa_mask"``: one SDPA call with a boolean ``(B, 1, Nq, Nk)`` mask (``O(Nq * Nk)`` memory).
* ``"reference"``: dense transcription of the equations with explicit ``Nq x Nk`` matrices; for
  tests only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "IMPLS",
    "MODES",
    "LabelPartition",
    "masked_attention",
]

MODES = ("renormalized", "paper")
IMPLS = ("auto", "segments", "sdpa_mask", "reference")


@dataclass(frozen=True)
class LabelPartition:
    """Tokens of a ``(q_labels, k_labels)`` pair grouped by ``(batch item, label)``.

    Build it once per label map and token resolution with :meth:`build` (one host sync), then pass
    it to every :func:`masked_attention` call that uses the same labels, whatever ``q``/``k``/``v``
    and head count: using it costs no host sync.

    Token indices are *flat*: token ``t`` of batch item ``b`` is ``b * N + t``.

    Attributes:
        batch, num_q, num_k: ``B``, ``Nq``, ``Nk`` the partition was built for.
        q_order: ``(B * Nq,)`` int64, flat query indices sorted by ``(b, label)`` (stable).
        q_inverse: ``(B * Nq,)`` int64, inverse permutation of ``q_order``.
        k_order: ``(B * Nk,)`` int64, flat key indices sorted by ``(b, label)`` (stable).
        k_inverse: ``(B * Nk,)`` int64, inverse permutation of ``k_order``.
        q_sizes: number of queries of each ``(b, label)`` group, ``b``-major, ``B * L`` Python ints;
            group ``g`` occupies ``q_order[sum(q_sizes[:g]) : sum(q_sizes[:g + 1])]``.
        k_sizes: the same for the keys.
        q_rank: ``(B, Nq)`` int64, index of each query's label in ``labels``.
        k_rank: ``(B, Nk)`` int64, index of each key's label in ``labels``.
        labels: ``(L,)`` sorted distinct labels of ``q_labels`` and ``k_labels`` together.
        num_padding: how many of ``labels`` are negative (padding); they come first in ``labels``,
            so group ``g`` is padding iff ``g % L < num_padding``.
    """

    batch: int
    num_q: int
    num_k: int
    q_order: torch.Tensor
    q_inverse: torch.Tensor
    k_order: torch.Tensor
    k_inverse: torch.Tensor
    q_sizes: tuple[int, ...]
    k_sizes: tuple[int, ...]
    q_rank: torch.Tensor
    k_rank: torch.Tensor
    labels: torch.Tensor
    num_padding: int = 0

    @classmethod
    def build(cls, q_labels: torch.Tensor, k_labels: torch.Tensor) -> LabelPartition:
        """Group tokens by label.

        Args:
            q_labels: ``(B, Nq)`` integer labels of the queries.
            k_labels: ``(B, Nk)`` integer labels of the keys (same device as ``q_labels``).

        Returns:
            The partition; its tensors live on the labels' device. Costs one host sync (the segment
            sizes become Python ints).
        """
        _check_labels(q_labels, "q_labels")
        _check_labels(k_labels, "k_labels")
        if q_labels.shape[0] != k_labels.shape[0]:
            raise ValueError(
                f"q_labels and k_labels must have the same batch size, got {tuple(q_labels.shape)} and "
                f"{tuple(k_labels.shape)}; pass one label row per batch item for both."
            )
        batch, num_q = q_labels.shape
        num_k = k_labels.shape[1]
        labels, inverse = torch.unique(
            torch.cat([q_labels.reshape(-1), k_labels.reshape(-1)]), return_inverse=True
        )
        num_labels = labels.numel()
        q_rank = inverse[: batch * num_q].view(batch, num_q)
        k_rank = inverse[batch * num_q :].view(batch, num_k)
        offsets = torch.arange(batch, device=labels.device).unsqueeze(1) * num_labels
        q_key = (q_rank + offsets).reshape(-1)
        k_key = (k_rank + offsets).reshape(-1)
        q_order = torch.sort(q_key, stable=True).indices
        k_order = torch.sort(k_key, stable=True).indices
        counts = torch.cat(
            [
                torch.bincount(q_key, minlength=batch * num_labels),
                torch.bincount(k_key, minlength=batch * num_labels),
                (labels < 0).sum().view(1),
            ]
        ).tolist()  # the one host sync
        q_sizes = counts[: batch * num_labels]
        k_sizes = counts[batch * num_labels : 2 * batch * num_labels]
        return cls(
            batch,
            num_q,
            num_k,
            q_order,
            _inverse_permutation(q_order),
            k_order,
            _inverse_permutation(k_order),
            tuple(q_sizes),
            tuple(k_sizes),
            q_rank,
            k_rank,
            labels,
            counts[-1],
        )

    def check_matches(self, q_labels: torch.Tensor, k_labels: torch.Tensor) -> None:
        """Raise ``ValueError`` if the label shapes or device differ from the partition's.

        Only shapes and device are compared (comparing values would cost a host sync).
        """
        expected_q, expected_k = (self.batch, self.num_q), (self.batch, self.num_k)
        if tuple(q_labels.shape) != expected_q or tuple(k_labels.shape) != expected_k:
            raise ValueError(
                f"partition was built for q_labels {expected_q} and k_labels {expected_k}, got "
                f"{tuple(q_labels.shape)} and {tuple(k_labels.shape)}; build one partition per token "
                "resolution with LabelPartition.build(q_labels, k_labels)."
            )
        if self.q_order.device != q_labels.device:
            raise ValueError(
                f"partition lives on {self.q_order.device} but the labels on {q_labels.device}; build it "
                "from labels on the attention's device."
            )


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_labels: torch.Tensor,
    k_labels: torch.Tensor,
    *,
    mode: str = "renormalized",
    impl: str = "auto",
    scale: float | None = None,
    partition: LabelPartition | None = None,
) -> torch.Tensor:
    """Attention where query ``i`` sees key ``j`` iff ``q_labels[b, i] == k_labels[b, j] >= 0``.

    Args:
        q: ``(B, H, Nq, d)`` queries, floating point.
        k: ``(B, H, Nk, d)`` keys, same dtype and device as ``q``.
        v: ``(B, H, Nk, dv)`` values, same dtype and device as ``q``.
        q_labels: ``(B, Nq)`` integer labels of the queries (negative = padding, sees nothing).
        k_labels: ``(B, Nk)`` integer labels of the keys (negative = padding, seen by nobody and
            absent from the paper-mode softmax).
        mode: ``"renormalized"`` (pre-softmax mask, rows sum to 1; a query with no same-label key
            outputs 0) or ``"paper"`` (MT eq. 2/7: ``(M o softmax(q k^T * scale)) v``, softmax over
            every non-padding key, mask applied afterwards, rows not renormalised).
        impl: ``"auto"`` (= ``"segments"``), ``"segments"``, ``"sdpa_mask"`` or ``"reference"``
            (dense, tests only).
        scale: factor applied to ``q k^T`` before the softmax; ``None`` means ``1 / sqrt(d)``.
        partition: optional :class:`LabelPartition` built from these same labels, reused by
            ``"segments"`` and by paper mode to skip the sort and the host sync; built on the fly
            when ``None``. Its label *values* are trusted, only shapes are checked.

    Returns:
        ``(B, H, Nq, dv)`` tensor of ``q``'s dtype.
    """
    _check_inputs(q, k, v, q_labels, k_labels)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}.")
    if partition is not None:
        partition.check_matches(q_labels, k_labels)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if impl == "reference":
        return _reference(q, k, v, q_labels, k_labels, mode, scale)
    if impl == "sdpa_mask":
        out = _sdpa_mask(q, k, v, q_labels, k_labels, scale)
    else:
        if partition is None:
            partition = LabelPartition.build(q_labels, k_labels)
        out = _segments(q, k, v, partition, scale)
    if mode == "paper":
        if partition is None:
            partition = LabelPartition.build(q_labels, k_labels)
        out = out * _own_label_mass(q, k, partition, scale).unsqueeze(-1)
    return out


def _check_labels(labels: torch.Tensor, name: str) -> None:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of integer labels, got {type(labels).__name__}.")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"{name} must hold integer labels (e.g. torch.int64), got dtype {labels.dtype}; convert the "
            "label map with .long()."
        )
    if labels.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (B, N), got shape {tuple(labels.shape)}; flatten the label map of each "
            "batch item to one row, e.g. labels.reshape(B, -1)."
        )


def _check_inputs(q, k, v, q_labels, k_labels) -> None:
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(
                f"{name} must be a 4-D tensor (B, H, N, head_dim), got {shape}; move the heads to dim 1, "
                "e.g. x.view(B, N, H, head_dim).transpose(1, 2)."
            )
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {tensor.dtype}.")
    if k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"q, k and v must share batch size and head count (dims 0-1), got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}."
        )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k's head dim must equal q's, got q {tuple(q.shape)} and k {tuple(k.shape)}.")
    if v.shape[2] != k.shape[2]:
        raise ValueError(
            f"v must have as many tokens as k (dim 2), got k {tuple(k.shape)} and v {tuple(v.shape)}."
        )
    _check_labels(q_labels, "q_labels")
    _check_labels(k_labels, "k_labels")
    for name, labels in (("q_labels", q_labels), ("k_labels", k_labels)):
        if labels.device != q.device:
            raise ValueError(
                f"{name} is on {labels.device} but q on {q.device}; move the labels with .to(q.device)."
            )
    batch, _, num_q, _ = q.shape
    if tuple(q_labels.shape) != (batch, num_q):
        raise ValueError(
            f"q_labels must have shape (B, Nq) = {(batch, num_q)} to match q {tuple(q.shape)}, got "
            f"{tuple(q_labels.shape)}; resize the label map to the query token grid."
        )
    if tuple(k_labels.shape) != (batch, k.shape[2]):
        raise ValueError(
            f"k_labels must have shape (B, Nk) = {(batch, k.shape[2])} to match k {tuple(k.shape)}, got "
            f"{tuple(k_labels.shape)}; resize the label map to the key token grid."
        )


def _reference(q, k, v, q_labels, k_labels, mode: str, scale: float) -> torch.Tensor:
    """Dense transcription: explicit boolean M, explicit softmax, explicit (M o softmax) v."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, Nq, Nk)
    allowed = _allowed(q_labels, k_labels).expand_as(scores)
    if mode == "paper":
        real = (k_labels >= 0)[:, None, None, :].expand_as(scores)  # padding keys leave the softmax
        scores = scores.masked_fill(~real, float("-inf"))
        scores = scores.masked_fill(~real.any(dim=-1, keepdim=True), 0.0)  # only padding keys
        attn = allowed * torch.softmax(scores, dim=-1)  # MT eq. 2 / 7
    else:
        scores = scores.masked_fill(~allowed, float("-inf"))
        scores = scores.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)  # rows with no key
        attn = allowed * torch.softmax(scores, dim=-1)  # all-masked rows become 0
    return torch.matmul(attn, v)


def _allowed(q_labels, k_labels) -> torch.Tensor:
    """(B, 1, Nq, Nk) bool: same label, and not padding (negative)."""
    same = q_labels[:, None, :, None] == k_labels[:, None, None, :]
    return same & (k_labels >= 0)[:, None, None, :]


def _sdpa_mask(q, k, v, q_labels, k_labels, scale: float) -> torch.Tensor:
    allowed = _allowed(q_labels, k_labels)  # (B, 1, Nq, Nk)
    has_key = allowed.any(dim=-1, keepdim=True)  # (B, 1, Nq, 1)
    # Rows with no allowed key would be NaN; let them see every key, then zero them (zero gradient).
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~has_key, scale=scale)
    return torch.where(has_key, out, out.new_zeros(()))


def _inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return inverse


class _Permute(torch.autograd.Function):
    """``x.index_select(0, order)`` for a permutation ``order``; the gradient is the inverse gather
    (cheaper than ``index_select``'s generic scatter-add backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(order, inverse)
        return x.index_select(0, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        order, inverse = ctx.saved_tensors
        return _Permute.apply(grad, inverse, order), None, None


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, d)`` -> ``(B * N, H, d)``; a view when ``x`` has ``(B, N, H, d)`` memory."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch * tokens, heads, dim)


def _segments(q, k, v, partition: LabelPartition, scale: float) -> torch.Tensor:
    batch, heads, num_q, _ = q.shape
    pieces = _segment_outputs(q, k, v, partition, scale)  # sorted order; the sorted inputs are freed
    out = _Permute.apply(torch.cat(pieces), partition.q_inverse, partition.q_order)
    return out.view(batch, num_q, heads, v.shape[-1]).transpose(1, 2)


def _segment_outputs(q, k, v, partition: LabelPartition, scale: float) -> list[torch.Tensor]:
    """One ``(n, H, dv)`` output per ``(b, label)`` group that has queries, in sorted query order."""
    heads, dv = q.shape[1], v.shape[-1]
    k_order, k_inverse = partition.k_order, partition.k_inverse
    # Sorted (B * N, H, d) copies, split into per-(b, label) views (one SplitBackward, not one
    # full-size zero tensor per slice).
    q_groups = _Permute.apply(_token_major(q), partition.q_order, partition.q_inverse).split(
        partition.q_sizes
    )
    k_groups = _Permute.apply(_token_major(k), k_order, k_inverse).split(partition.k_sizes)
    v_groups = _Permute.apply(_token_major(v), k_order, k_inverse).split(partition.k_sizes)
    num_labels, num_padding = partition.labels.numel(), partition.num_padding
    pieces = []
    for group, (q_group, k_group, v_group) in enumerate(zip(q_groups, k_groups, v_groups)):
        if not q_group.shape[0]:
            continue
        if not k_group.shape[0] or group % num_labels < num_padding:  # no key, or padding
            pieces.append(q_group.new_zeros((q_group.shape[0], heads, dv)))
            continue
        # (1, H, n, d) views with (n, H, d) memory: the layout SDPA's fused CPU kernel expects.
        out = F.scaled_dot_product_attention(
            q_group.transpose(0, 1).unsqueeze(0),
            k_group.transpose(0, 1).unsqueeze(0),
            v_group.transpose(0, 1).unsqueeze(0),
            scale=scale,
        )
        pieces.append(out.squeeze(0).transpose(0, 1))
    return pieces


def _own_label_mass(q, k, partition: LabelPartition, scale: float) -> torch.Tensor:
    """``(B, H, Nq)``: softmax mass each query puts on keys of its own label, the softmax running
    over every non-padding key (padding keys are masked out of it, so they change nothing).

    One SDPA call per chunk of ``d`` labels, with the one-hot encoding of the key labels (padded to
    ``d`` columns) as values; exact, differentiable w.r.t. ``q`` and ``k``. A padding query's mass
    is meaningless (its masked output is 0 anyway) but finite.
    """
    batch, heads, num_q, dim = q.shape
    num_padding = partition.num_padding
    num_labels = partition.labels.numel() - num_padding  # real labels only
    if num_labels == 0:
        return q.new_zeros(batch, heads, num_q)
    k_rank = partition.k_rank - num_padding  # (B, Nk), negative for padding keys
    one_hot = F.one_hot(k_rank.clamp_min(0), num_labels).to(q.dtype)  # (B, Nk, L)
    attn_mask = None
    if num_padding:
        real = k_rank >= 0  # (B, Nk)
        one_hot = one_hot * real.unsqueeze(-1).to(q.dtype)  # padding keys carry no label
        real = real | ~real.any(dim=-1, keepdim=True)  # a row of only padding: any finite value
        attn_mask = real[:, None, None, :]  # (B, 1, 1, Nk)
    masses = []
    for start in range(0, num_labels, dim):
        chunk = one_hot[..., start : start + dim]
        chunk = F.pad(chunk, (0, dim - chunk.shape[-1]))
        values = chunk.unsqueeze(1).expand(batch, heads, -1, dim)
        out = F.scaled_dot_product_attention(q, k, values, attn_mask=attn_mask, scale=scale)
        masses.append(out[..., : num_labels - start])
    mass = torch.cat(masses, dim=-1)  # (B, H, Nq, L)
    q_rank = (partition.q_rank - num_padding).clamp_min(0)
    index = q_rank.unsqueeze(1).unsqueeze(-1).expand(batch, heads, num_q, 1)
    return mass.gather(-1, index).squeeze(-1)
