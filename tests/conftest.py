"""Shared test set-up: CPU-only, offline, deterministic, `slow` tests opt-in (MTCOLOR_SLOW=1)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# the cores this process may run on (taskset / cgroups), not the machine's: oversubscribed torch threads
# spin and run several times slower
torch.set_num_threads(
    max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MTCOLOR_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set MTCOLOR_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """The tiny MTColorPipeline with a "trained" adapter (random non-zero gates and weights), one per
    test module; modules that need another pipeline define their own ``pipe``."""
    from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline

    from mtcolor.testing import randomize_adapter, tiny_components

    components = tiny_components(0, tokenizer_cache=str(tmp_path_factory.mktemp("tok")))
    randomize_adapter(components["adapter"], seed=1, gate=0.5, scale=0.05)
    pipeline = MTColorPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
