"""Masked attention kernels (DESIGN.md section 4); diffusers processors build on them."""

from mtcolor.attention.kernels import (
    IMPLS,
    MODES,
    LabelPartition,
    instance_key_labels,
    instance_masked_attention,
    masked_attention,
)

__all__ = [
    "IMPLS",
    "MODES",
    "LabelPartition",
    "instance_key_labels",
    "instance_masked_attention",
    "masked_attention",
]
