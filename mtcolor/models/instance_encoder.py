"""The instance encoder of MT-Color (MT eq. 3): masks + instance texts -> one token per instance.

``Gamma_n = MLP2(concat(CLIP(T_n), MLP1(M_n)))`` where MLP1 is three convolution layers over each
mask and MLP2 three linear layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskEncoder(nn.Module):
    """MLP1 of MT eq. 3: three stride-2 convolutions over one mask -> a feature vector.

    Input (N, 1, S, S) masks in [0, 1] (``S = mask_size``); output (N, channels[-1] * 16).
    """

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.out_dim = c3 * 16

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(masks))
        h = F.silu(self.conv2(h))
        h = F.silu(self.conv3(h))
        return F.adaptive_avg_pool2d(h, 4).flatten(1)


class InstanceEncoder(nn.Module):
    """MT eq. 3. ``forward(masks (N, S, S), text_embeds (N, D_text)) -> tokens (N, D_inst)``."""

    def __init__(
        self, text_embed_dim: int, instance_dim: int, mask_size: int, mask_channels, hidden_dim: int
    ):
        super().__init__()
        self.mask_size = mask_size
        self.mask_encoder = MaskEncoder(tuple(mask_channels))
        self.mlp = nn.Sequential(  # MLP2: three linear layers
            nn.Linear(text_embed_dim + self.mask_encoder.out_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, instance_dim),
        )

    def forward(self, masks: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        mask_features = self.mask_encoder(masks[:, None].to(text_embeds.dtype))
        return self.mlp(torch.cat([text_embeds, mask_features], dim=-1))
