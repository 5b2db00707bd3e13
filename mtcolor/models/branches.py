"""The two attention modules MT-Color adds to every UNet transformer block.

* :class:`InstanceBranch`: the gated masked instance self-attention of MT eq. 4-7.
* :class:`PixelMaskAttention`: the pixel-level mask attention module (PMAM) of MT eq. 1-2.

Both enter the UNet through a zero-initialised ``tanh`` gate (GLIGEN-style), so a fresh module
leaves the UNet's output unchanged. Token tensors are (B, N, C); labels are (B, N) int64 with
0 = background, k = instance k, -1 = padding (attends to / is attended by nothing).
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention.kernels import masked_attention


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, dim = x.shape  # (B, N, C) -> (B, heads, N, C / heads)
    return x.view(batch, tokens, heads, dim // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = x.shape  # (B, heads, N, d) -> (B, N, heads * d)
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class InstanceBranch(nn.Module):
    """MT eq. 4-7: self-attention over ``p = [f_x; Gamma]`` with the instance mask, latent rows kept.

    Args:
        dim: width C of the transformer block.
        instance_dim: width of the instance tokens (projected to ``dim``).
        heads: attention heads (``dim`` must be divisible by it).
    """

    def __init__(self, dim: int, instance_dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}.")
        self.heads = heads
        self.instance_proj = nn.Linear(instance_dim, dim)
        self.instance_norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(()))  # zero-init: tanh(0) = 0

    def forward(
        self,
        hidden_states: torch.Tensor,
        labels: torch.Tensor,
        instance_tokens: torch.Tensor,
        instance_labels: torch.Tensor,
        *,
        mode: str = "renormalized",
        impl: str = "auto",
        partition=None,
    ) -> torch.Tensor:
        """Gated branch output to add to the self-attention output.

        Args:
            hidden_states: (B, N, C) normalised latent tokens f_x.
            labels: (B, N) label of each latent token.
            instance_tokens: (B, M, D_inst) instance tokens Gamma (index 0: the null token).
            instance_labels: (B, M) label of each instance token (-1 for padding).
            partition: a cached ``LabelPartition`` for (labels, [labels; instance_labels]).

        Returns:
            (B, N, C): ``tanh(gate) * W_out (M_self_map o self_map V_p)[1:lx]`` (MT eq. 7).
        """
        tokens = self.instance_norm(self.instance_proj(instance_tokens.to(hidden_states.dtype)))
        p = torch.cat([hidden_states, tokens], dim=1)  # (B, lx + M, C): MT eq. 4's p
        q = _split_heads(self.to_q(hidden_states), self.heads)  # only latent rows are kept (eq. 7)
        k = _split_heads(self.to_k(p), self.heads)
        v = _split_heads(self.to_v(p), self.heads)
        key_labels = torch.cat([labels, instance_labels], dim=1)
        out = masked_attention(q, k, v, labels, key_labels, mode=mode, impl=impl, partition=partition)
        return torch.tanh(self.gate) * self.to_out(_merge_heads(out))


class PixelMaskAttention(nn.Module):
    """PMAM, MT eq. 1-2: ``M o softmax(Q' K'^T / sqrt d) V'`` with Q', K' from f_x, V' from f_y.

    Args:
        dim: width C shared by the latent features f_x and the ControlNet features f_y.
        heads: attention heads.
        key_source: ``"latent"`` (K' = W_K f_x, as in the paper) or ``"control"``
            (K' = W_K f_y, PASD-style pixel-aware cross-attention).
    """

    def __init__(self, dim: int, heads: int, key_source: str = "latent"):
        super().__init__()
        if key_source not in ("latent", "control"):
            raise ValueError(f"key_source={key_source!r}; expected 'latent' or 'control'.")
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}.")
        self.heads = heads
        self.key_source = key_source
        self.control_norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(
        self,
        hidden_states: torch.Tensor,
        control: torch.Tensor,
        labels: torch.Tensor,
        *,
        mode: str = "renormalized",
        impl: str = "auto",
        partition=None,
    ) -> torch.Tensor:
        """Gated PMAM output (B, N, C) for latent tokens (B, N, C), ControlNet tokens (B, N, C)
        and the label of each token (B, N) (M of MT eq. 1 is ``labels[i] == labels[j]``)."""
        control = self.control_norm(control.to(hidden_states.dtype))
        q = _split_heads(self.to_q(hidden_states), self.heads)
        k_in = hidden_states if self.key_source == "latent" else control
        k = _split_heads(self.to_k(k_in), self.heads)
        v = _split_heads(self.to_v(control), self.heads)
        out = masked_attention(q, k, v, labels, labels, mode=mode, impl=impl, partition=partition)
        return torch.tanh(self.gate) * self.to_out(_merge_heads(out))
