"""Test helpers (imported by ``tests/`` only; runtime code uses :mod:`mtcolor.model_configs`).

* :func:`tiny_components`: every MT-Color pipeline component at toy size, untrained
  (:func:`mtcolor.model_configs.untrained_tiny_components`);
* :func:`randomize_adapter`: "trained-looking" adapter weights for properties a zero-initialised
  adapter would satisfy trivially.

``tests/test_import_contract.py`` checks that no runtime module imports this one.
"""

from __future__ import annotations

import torch

from .model_configs import untrained_tiny_components as tiny_components

__all__ = ["randomize_adapter", "tiny_components"]


@torch.no_grad()
def randomize_adapter(adapter, seed: int = 0, gate: float = 1.0, scale: float = 0.2) -> None:
    """Give an adapter "trained-looking" weights: non-zero gates and random projections.

    Used by tests of properties that a zero-initialised adapter would satisfy trivially (locality).
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in adapter.named_parameters():
        if name.endswith("gate"):
            param.fill_(gate)
        else:
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
