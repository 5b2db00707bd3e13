"""MTColorAdapter: every trainable module MT-Color adds to a stock SD-1.5 UNet + ControlNet.

* the instance encoder (MT eq. 3) and a learned null instance token,
* one gated masked instance self-attention branch per UNet transformer block (MT eq. 4-7),
* one pixel-level mask attention module (PMAM, MT eq. 1-2) per transformer block.

It saves and loads as its own folder (``config.json`` + ``diffusion_pytorch_model.safetensors``),
so the UNet and ControlNet stay stock diffusers models. ``adapter.install(unet)`` plugs it in
through ``unet.set_attn_processor``, wrapping the processors the UNet has; to remove it, set those
processors back (``MTColorPipeline.mtcolor_attention()`` does this around every call).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..attention.processors import (
    MTCOLOR_PROCESSORS,
    InstanceSelfAttnProcessor2_0,
    MTColorContext,
    PixelMaskAttnProcessor2_0,
)
from .branches import InstanceBranch, PixelMaskAttention
from .instance_encoder import InstanceEncoder

logger = logging.getLogger(__name__)

STAGE1_PREFIXES = ("instance_encoder.", "null_token", "instance_branches.")
STAGE2_PREFIXES = ("pmams.",)


class MTColorAdapter(ModelMixin, ConfigMixin):
    """The MT-Color modules for one UNet architecture.

    Args:
        block_names: module names of the UNet's ``BasicTransformerBlock``s, in ``named_modules`` order.
        block_dims: width C of each block's hidden states.
        block_heads: attention heads of each block.
        text_embed_dim: width of the pooled CLIP text embedding of an instance text.
        instance_dim: width of the instance tokens Gamma.
        mask_size: masks are resized to (mask_size, mask_size) before MLP1.
        mask_channels: the three convolution widths of MLP1.
        encoder_hidden_dim: hidden width of MLP2.
        pmam_key_source: ``"latent"`` (paper) or ``"control"``.
        attention_mode: default masked attention mode, ``"renormalized"`` or ``"paper"``.
        use_instance_branch, use_instance_masks, use_pmam: default ablation switches.

    Build one for a UNet with :meth:`from_unet`.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        block_names: list[str],
        block_dims: list[int],
        block_heads: list[int],
        text_embed_dim: int = 768,
        instance_dim: int = 768,
        mask_size: int = 64,
        mask_channels: tuple[int, int, int] = (16, 32, 64),
        encoder_hidden_dim: int = 1024,
        pmam_key_source: str = "latent",
        attention_mode: str = "renormalized",
        use_instance_branch: bool = True,
        use_instance_masks: bool = True,
        use_pmam: bool = True,
    ):
        super().__init__()
        if not (len(block_names) == len(block_dims) == len(block_heads)):
            raise ValueError(
                f"block_names, block_dims and block_heads must have the same length, got "
                f"{len(block_names)}, {len(block_dims)} and {len(block_heads)}."
            )
        if attention_mode not in ("renormalized", "paper"):
            raise ValueError(f"attention_mode={attention_mode!r}; expected 'renormalized' or 'paper'.")
        self.instance_encoder = InstanceEncoder(
            text_embed_dim, instance_dim, mask_size, mask_channels, encoder_hidden_dim
        )
        self.null_token = nn.Parameter(torch.randn(instance_dim) * 0.02)
        self.instance_branches = nn.ModuleList(
            InstanceBranch(d, instance_dim, h) for d, h in zip(block_dims, block_heads)
        )
        self.pmams = nn.ModuleList(
            PixelMaskAttention(d, h, key_source=pmam_key_source) for d, h in zip(block_dims, block_heads)
        )
        self._block_index = {name: i for i, name in enumerate(block_names)}

    @classmethod
    def from_unet(cls, unet, **kwargs) -> MTColorAdapter:
        """A freshly initialised adapter matching ``unet``'s transformer blocks.

        ``text_embed_dim`` defaults to the UNet's ``cross_attention_dim`` (the CLIP width), and
        ``instance_dim`` to the same; any constructor argument may be overridden.
        """
        names, dims, heads = [], [], []
        for name, module in unet.named_modules():
            if isinstance(module, BasicTransformerBlock):
                names.append(name)
                dims.append(module.attn1.to_q.in_features)
                heads.append(module.attn1.heads)
        if not names:
            raise ValueError(
                "unet has no BasicTransformerBlock; MT-Color needs an SD-style UNet2DConditionModel."
            )
        cross_dim = unet.config.cross_attention_dim
        kwargs.setdefault("text_embed_dim", cross_dim)
        kwargs.setdefault("instance_dim", cross_dim)
        return cls(block_names=names, block_dims=dims, block_heads=heads, **kwargs)

    # ------------------------------------------------------------------ installation
    def _processor_dict(self, unet) -> dict:
        processors = {}
        for key, proc in unet.attn_processors.items():
            block, kind = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
            if block not in self._block_index:
                raise ValueError(
                    f"unet attention {key!r} belongs to block {block!r}, which this adapter does not know; "
                    "the adapter was built for another UNet architecture (build it with "
                    "MTColorAdapter.from_unet(unet))."
                )
            index = self._block_index[block]
            base = proc.base if isinstance(proc, MTCOLOR_PROCESSORS) else proc
            if kind == "attn1":
                processors[key] = InstanceSelfAttnProcessor2_0(self.instance_branches[index], base)
            else:
                processors[key] = PixelMaskAttnProcessor2_0(self.pmams[index], base)
        return processors

    def install(self, unet) -> None:
        """Set MT-Color processors on every attention of ``unet`` (wrapping its current processors)."""
        unet.set_attn_processor(self._processor_dict(unet))

    def is_installed(self, unet) -> bool:
        """True if every attention of ``unet`` runs an MT-Color processor bound to this adapter."""
        mine = {id(m) for m in self.instance_branches} | {id(m) for m in self.pmams}
        for proc in unet.attn_processors.values():
            module = getattr(proc, "branch", None) or getattr(proc, "pmam", None)
            if not isinstance(proc, MTCOLOR_PROCESSORS) or id(module) not in mine:
                return False
        return True

    def ensure_installed(self, unet) -> None:
        """Re-install on top of whatever processors replaced ours (e.g. ``unet.set_attn_processor``),
        with a warning, so MT-Color is never silently dropped."""
        if not self.is_installed(unet):
            logger.warning(
                "The UNet's attention processors were replaced; re-installing the MT-Color processors on "
                "top of the new ones."
            )
            self.install(unet)

    # ------------------------------------------------------------------ conditioning
    def encode_instances(
        self, label_map: torch.Tensor, text_embeds: torch.Tensor, num_instances: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance tokens for a batch (MT eq. 3) plus the null token.

        Args:
            label_map: (B, H, W) int64 label maps (0 = background, k = instance k).
            text_embeds: (B, n_max, D_text) pooled CLIP embeddings of the instance texts (padding
                rows are ignored).
            num_instances: (B,) int64, the number of real instances of each sample (<= n_max).

        Returns:
            tokens (B, 1 + n_max, D_inst) with the null token first, and their labels
            (B, 1 + n_max) int64: 0 for the null token, k for instance k, -1 for padding.
        """
        batch, n_max = text_embeds.shape[:2]
        device, dtype = text_embeds.device, text_embeds.dtype
        arange = torch.arange(1, n_max + 1, device=device)
        valid = arange[None] <= num_instances.to(device)[:, None]  # (B, n_max)
        labels = torch.cat(
            [torch.zeros(batch, 1, dtype=torch.long, device=device), torch.where(valid, arange, -1)], dim=1
        )
        null = self.null_token.to(dtype).expand(batch, 1, -1)
        if n_max == 0:
            return null, labels
        size = self.config.mask_size
        masks = (label_map.to(device)[:, None] == arange.view(1, -1, 1, 1)).to(dtype)  # (B, n_max, H, W)
        masks = F.interpolate(masks, size=(size, size), mode="area")
        tokens = self.instance_encoder(masks.flatten(0, 1), text_embeds.flatten(0, 1)).view(batch, n_max, -1)
        tokens = tokens * valid[..., None].to(dtype)
        return torch.cat([null, tokens], dim=1), labels

    def build_context(
        self,
        label_map: torch.Tensor,
        text_embeds: torch.Tensor,
        num_instances: torch.Tensor,
        latent_size: tuple[int, int],
        *,
        mode: str | None = None,
        impl: str = "auto",
        use_instance_branch: bool | None = None,
        use_instance_masks: bool | None = None,
        use_pmam: bool | None = None,
    ) -> MTColorContext:
        """The :class:`MTColorContext` for one batch; ``None`` options take the config defaults."""
        tokens, token_labels = self.encode_instances(label_map, text_embeds, num_instances)
        config = self.config
        return MTColorContext(
            label_map=label_map.to(tokens.device),
            latent_size=tuple(latent_size),
            instance_tokens=tokens,
            instance_labels=token_labels,
            mode=mode or config.attention_mode,
            impl=impl,
            use_instance_branch=config.use_instance_branch
            if use_instance_branch is None
            else use_instance_branch,
            use_instance_masks=config.use_instance_masks
            if use_instance_masks is None
            else use_instance_masks,
            use_pmam=config.use_pmam if use_pmam is None else use_pmam,
        )

    # ------------------------------------------------------------------ training helpers
    def stage_parameters(self, stage: int) -> list[tuple[str, nn.Parameter]]:
        """Named parameters trained in ``stage`` 1 (instance encoder, null token, branches) or 2 (PMAM)."""
        prefixes = {1: STAGE1_PREFIXES, 2: STAGE2_PREFIXES}.get(stage)
        if prefixes is None:
            raise ValueError(f"stage={stage!r}; expected 1 or 2.")
        return [(n, p) for n, p in self.named_parameters() if n.startswith(prefixes)]
