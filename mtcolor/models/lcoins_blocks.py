"""Building blocks of the L-CoIns grouping transformer (LC sections 3.4-3.6).

Token layout everywhere: one sequence ``[Z_img; Z_lag; Z_grp]`` of shape (B, N_I + N_L + N_G, C),
image tokens first, then language tokens, then group tokens. ``text_mask`` (B, N_L) is True for real
language tokens and False for padding; padded keys are never attended to.

* :class:`GroupingAttention`: LC eq. 6-9. Inner loop = self-attention within image tokens and
  within language tokens (eq. 6); outer loop = group tokens attend to image tokens and to language
  tokens (eq. 7), image and language tokens attend to group tokens (eq. 8). Group tokens are the
  only path between image and language tokens.
* :class:`JointAttention`: the "w/o grouping attention" ablation (LC Table 1, "W/o GA"): plain
  multi-head self-attention over all tokens, i.e. the ViT block.
* :class:`GroupingBlock`: LC eq. 4-5 (pre-norm transformer block around either attention).
* :class:`Upsampler`: LC eq. 10 (reshape to the patch grid + transposed convolutions -> ab).
* :class:`GroupingLayer`: LC eq. 11-12 (hard straight-through assignment of image tokens to group
  tokens and the weighted merge).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GroupingAttention",
    "GroupingBlock",
    "GroupingLayer",
    "JointAttention",
    "Upsampler",
    "straight_through_argmax",
]


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, num_heads, channels // num_heads).transpose(1, 2)


def _key_mask(text_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N_L) bool -> (B, 1, 1, N_L) SDPA mask (True = may attend)."""
    return None if text_mask is None else text_mask[:, None, None, :].bool()


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, out_factor: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}; pick a divisor of dim.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(out_factor * dim, dim)

    def _qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.to_qkv(hidden_states).chunk(3, dim=-1)  # 3 x (B, N, C)
        return tuple(_split_heads(t, self.num_heads) for t in (q, k, v))  # 3 x (B, H, N, d)


class GroupingAttention(_Attention):
    """Grouping attention, LC eq. 6-9.

    Per head h, with ``i`` in {img, lag} and softmax(Q K^T / sqrt(d_k)) V attention:

    * eq. 6 (inner loop): ``Z_in[i] = attn(Q_i, K_i, V_i)``;
    * eq. 7 (outer loop): ``Z_out[grp <- i] = attn(Q_grp, K_i, V_i)``;
    * eq. 8 (outer loop): ``Z_out[i] = attn(Q_i, K_grp, V_grp)``;
    * eq. 9: per modality, ``concat([Z_1^a, Z_1^b, ..., Z_H^a, Z_H^b]) W_proj`` with one shared
      ``W_proj`` of shape (2C, C).

    Image and language tokens use ``(a, b) = (Z_in, Z_out)``. Group tokens have no inner loop; their
    two eq. 7 results fill the two slots: ``(a, b) = (attn over image tokens, attn over language
    tokens)``. Group tokens do not attend to each other.

    Args:
        dim: token width C.
        num_heads: N_H; must divide ``dim``.
        qkv_bias: bias of the fully connected Q/K/V projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__(dim, num_heads, qkv_bias, out_factor=2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        num_image_tokens: int,
        num_text_tokens: int,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, N_I + N_L + N_G, C) -> (B, N_I + N_L + N_G, C)."""
        batch, tokens, channels = hidden_states.shape
        n_i, n_l = num_image_tokens, num_text_tokens
        if tokens <= n_i + n_l:
            raise ValueError(
                f"hidden_states has {tokens} tokens for {n_i} image + {n_l} language tokens; grouping "
                "attention needs at least one group token after them."
            )
        q, k, v = self._qkv(hidden_states)  # (B, H, N, d)
        img, lag, grp = slice(0, n_i), slice(n_i, n_i + n_l), slice(n_i + n_l, tokens)
        mask = _key_mask(text_mask)
        # eq. 6, inner loop: image <-> image, language <-> language.
        img_in = F.scaled_dot_product_attention(q[:, :, img], k[:, :, img], v[:, :, img])
        lag_in = F.scaled_dot_product_attention(q[:, :, lag], k[:, :, lag], v[:, :, lag], attn_mask=mask)
        # eq. 8, outer loop: image and language queries -> group keys (one call for both).
        to_grp = F.scaled_dot_product_attention(q[:, :, : n_i + n_l], k[:, :, grp], v[:, :, grp])
        # eq. 7, outer loop: group queries -> image keys, group queries -> language keys.
        grp_img = F.scaled_dot_product_attention(q[:, :, grp], k[:, :, img], v[:, :, img])
        grp_lag = F.scaled_dot_product_attention(q[:, :, grp], k[:, :, lag], v[:, :, lag], attn_mask=mask)
        first = torch.cat([img_in, lag_in, grp_img], dim=2)  # (B, H, N, d)
        second = torch.cat([to_grp, grp_lag], dim=2)  # (B, H, N, d)
        # eq. 9: [Z_1^a Z_1^b ... Z_H^a Z_H^b] W_proj
        out = torch.stack([first, second], dim=3)  # (B, H, N, 2, d)
        out = out.permute(0, 2, 1, 3, 4).reshape(batch, tokens, 2 * channels)
        return self.proj(out)


class JointAttention(_Attention):
    """Plain multi-head self-attention over every token (the "w/o GA" ablation = ViT block).

    Same call signature as :class:`GroupingAttention`; padded language keys are masked.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__(dim, num_heads, qkv_bias, out_factor=1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        num_image_tokens: int,
        num_text_tokens: int,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        batch, tokens, channels = hidden_states.shape
        q, k, v = self._qkv(hidden_states)
        mask = None
        if text_mask is not None:
            keys = torch.ones(batch, tokens, dtype=torch.bool, device=hidden_states.device)
            keys[:, num_image_tokens : num_image_tokens + num_text_tokens] = text_mask.bool()
            mask = keys[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, channels))


class GroupingBlock(nn.Module):
    """LC eq. 4-5: ``Z^ = A(LN(Z)) + Z``; ``Z' = MLP(LN(Z^)) + Z^``.

    Args:
        dim: token width C.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``.
        grouping: True for :class:`GroupingAttention` (the paper), False for
            :class:`JointAttention` (the "w/o GA" ablation).
        layer_norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        grouping: bool = True,
        layer_norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attn = GroupingAttention(dim, num_heads) if grouping else JointAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self,
        hidden_states: torch.Tensor,
        num_image_tokens: int,
        num_text_tokens: int,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        hidden_states = hidden_states + self.attn(
            self.norm1(hidden_states), num_image_tokens, num_text_tokens, text_mask
        )  # eq. 4
        return hidden_states + self.mlp(self.norm2(hidden_states))  # eq. 5


class Upsampler(nn.Module):
    """LC eq. 10: ``I_ab = F_up(F_rsp(Z_img))``.

    ``F_rsp`` reshapes the N_I image tokens to their (h, w) patch grid; ``F_up`` is log2(P)
    stride-2 transposed convolutions (kernel 4, GELU between them) followed by a 3x3 convolution to
    the two chroma channels, so a (B, N_I, C) token map becomes (B, 2, h P, w P).

    Args:
        dim: token width C.
        patch_size: P, a power of two >= 2.
        channels: output channels of each transposed convolution (log2(P) values); default
            ``max(32, C / 2^(k+1))`` for the k-th one.
        out_channels: 2 (ab, by a 3x3 convolution) or the Q class logits of the classification head
            (:mod:`mtcolor.models.lcoins_bins`, by a 1x1 convolution).
    """

    def __init__(
        self, dim: int, patch_size: int, channels: tuple[int, ...] | None = None, out_channels: int = 2
    ):
        super().__init__()
        steps = int(round(math.log2(patch_size))) if patch_size > 0 else 0
        if patch_size < 2 or 2**steps != patch_size:
            raise ValueError(
                f"patch_size={patch_size}; the upsampler needs a power of two >= 2 (e.g. 16) so that "
                "stride-2 transposed convolutions return to the image size."
            )
        if channels is None:
            channels = tuple(max(32, dim // 2 ** (k + 1)) for k in range(steps))
        channels = tuple(int(c) for c in channels)
        if len(channels) != steps:
            raise ValueError(
                f"upsampler_channels={channels} has {len(channels)} entries; patch_size={patch_size} needs "
                f"{steps} (one per stride-2 transposed convolution)."
            )
        layers: list[nn.Module] = []
        previous = dim
        for k, width in enumerate(channels):
            layers.append(nn.ConvTranspose2d(previous, width, kernel_size=4, stride=2, padding=1))
            if k < steps - 1:
                layers.append(nn.GELU())
            previous = width
        self.up = nn.Sequential(*layers)
        kernel = 3 if out_channels == 2 else 1
        self.to_ab = nn.Conv2d(previous, out_channels, kernel_size=kernel, padding=kernel // 2)

    def forward(self, image_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N_I, C) with N_I = h * w -> (B, out_channels, h P, w P)."""
        batch, tokens, channels = image_tokens.shape
        if tokens != grid[0] * grid[1]:
            raise ValueError(f"image_tokens has {tokens} tokens; grid {grid} needs {grid[0] * grid[1]}.")
        spatial = image_tokens.transpose(1, 2).reshape(batch, channels, *grid)  # F_rsp
        return self.to_ab(self.up(spatial))  # F_up


def straight_through_argmax(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """LC eq. 11: ``F_argmax(A) + A - F_sg(A)``.

    Forward: one-hot of the maximum along ``dim`` (1 at the argmax, 0 elsewhere). Backward: the
    gradient of ``scores`` itself (straight-through estimator).
    """
    index = scores.argmax(dim=dim, keepdim=True)
    hard = torch.zeros_like(scores).scatter_(dim, index, 1.0)
    return hard + scores - scores.detach()


class GroupingLayer(nn.Module):
    """LC eq. 11-12: hard assignment of image tokens to group tokens and weighted merge.

    The similarity matrix ``A_bar`` (B, N_G, N_I) is the softmax over groups of the scaled dot
    products ``Z_grp Z_img^T / sqrt(C)`` (GroupViT's assignment [LC ref. 46]): each image token's
    column is a distribution over groups. Eq. 11 keeps its argmax (straight-through); eq. 12:

        Z_bar_grp[i] = Z_grp[i] + sum_j A_hat[i, j] W_v Z_img[j] / sum_j A_hat[i, j]

    A group that receives no image token keeps ``Z_grp[i]`` (the numerator is 0 there and only that
    group's denominator, 0, is replaced by 1). Every other denominator keeps its straight-through
    gradient, including a group holding exactly one image token (a ``clamp_min(1)`` would cut it).

    Args:
        dim: token width C.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**-0.5
        self.to_value = nn.Linear(dim, dim, bias=False)  # W_v

    def forward(
        self, group_tokens: torch.Tensor, image_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(merged (B, N_G, C), hard A_hat (B, N_G, N_I), soft A_bar (B, N_G, N_I))``."""
        soft = (group_tokens @ image_tokens.transpose(1, 2) * self.scale).softmax(dim=1)  # A_bar
        hard = straight_through_argmax(soft, dim=1)  # eq. 11
        counts = hard.sum(dim=-1, keepdim=True)  # (B, N_G, 1): tokens per group, gradient via A_bar
        empty = hard.detach().sum(dim=-1, keepdim=True) < 0.5  # groups that won no image token
        merged = (hard @ self.to_value(image_tokens)) / counts.masked_fill(empty, 1.0)
        return group_tokens + merged, hard, soft  # eq. 12
