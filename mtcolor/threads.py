"""Temporarily changing the number of torch CPU threads."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch CPU threads (the previous count is restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
