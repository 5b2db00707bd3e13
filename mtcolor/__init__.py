"""mtcolor: instance-aware, text-guided image colorization on Hugging Face diffusers.

Public names are resolved lazily (like diffusers' ``_LazyModule``) so that ``import mtcolor`` stays
cheap and the library never imports its applications (``mtcolor.pipelines`` and the others) on import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "MTColorPipeline": "mtcolor.pipelines.pipeline_mtcolor",
    "MTColorPipelineOutput": "mtcolor.pipelines.pipeline_mtcolor",
    "LCoInsPipeline": "mtcolor.pipelines.pipeline_lcoins",
    "LCoInsPipelineOutput": "mtcolor.pipelines.pipeline_lcoins",
    "MTColorAdapter": "mtcolor.models.adapter",
    "LCoInsModel": "mtcolor.models.lcoins",
    "masks_to_label_map": "mtcolor.masks",
    "resize_label_map": "mtcolor.masks",
    "token_grid": "mtcolor.masks",
    "masked_attention": "mtcolor.attention.kernels",
    "embedded_model": "mtcolor.embedded",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from mtcolor.pipelines.pipeline_lcoins import LCoInsPipeline, LCoInsPipelineOutput  # noqa: F401
    from mtcolor.pipelines.pipeline_mtcolor import MTColorPipeline, MTColorPipelineOutput  # noqa: F401

    from .attention.kernels import masked_attention  # noqa: F401
    from .embedded import embedded_model  # noqa: F401
    from .masks import masks_to_label_map, resize_label_map, token_grid  # noqa: F401
    from .models.adapter import MTColorAdapter  # noqa: F401
    from .models.lcoins import LCoInsModel  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mtcolor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
