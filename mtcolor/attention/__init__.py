"""Masked attention kernels (docs/design.md, "Masked attention"); diffusers processors build on them."""

from mtcolor.attention.kernels import (
    IMPLS,
    MODES,
    LabelPartition,
    masked_attention,
)

__all__ = [
    "IMPLS",
    "MODES",
    "LabelPartition",
    "masked_attention",
]
