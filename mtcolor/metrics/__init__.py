"""Evaluation metrics: the papers' tables plus reference-free colour binding and bleeding.

One implementation, used by the pipelines' demos, the trainers' validation logs, the benchmarks
and ``mtcolor evaluate``. Images are sRGB float tensors (B, 3, H, W) in [0, 1]; per-image metrics
return (B,) tensors. Exact definitions: ``docs/metrics.md`` and each function's docstring.

=========================  =====================================================  ==============
function                   what                                                   needs
=========================  =====================================================  ==============
psnr, ssim, colorfulness   pixel metrics (pure torch)                             --
niqe                       NIQE (pyiqa, shipped parameters)                       pyiqa
musiq, maniqa, topiq_nr    no-reference IQA (pyiqa)                               local weights
lpips                      LPIPS v0.1 AlexNet (pyiqa)                             local weights
fid, InceptionFeatures     FID with the TF-FID Inception                          local weights
clip_score,                image-text and per-instance CLIP-score (open_clip)     local weights
instance_clip_score
color_adherence            instance colour vs the colour word of its text         --
color_bleeding             instance chroma leaking across its mask boundary       --
instance_color_errors      instance colour vs an exact target: CIEDE2000 at the   scikit-image
                           same L, chroma difference, hue-angle error
=========================  =====================================================  ==============

Heavy dependencies (pyiqa, open_clip, scipy, scikit-image) are imported only when the metric is built
(or, for the colour error, computed).
"""

from .adherence import AdherenceResult, InstanceAdherence, color_adherence
from .bleeding import BleedingResult, InstanceBleeding, color_bleeding
from .clip import ClipScorer, InstanceClipResult, clip_score, instance_clip_score
from .color_error import (
    ColorErrorSummary,
    InstanceColorError,
    ciede2000,
    instance_color_errors,
    summarize_color_errors,
)
from .fid import InceptionFeatures, extract_features, fid, frechet_distance
from .iqa import (
    IQA_METRICS,
    IQAMetric,
    load_iqa_metric,
    lpips,
    maniqa,
    musiq,
    niqe,
    niqe_params_file,
    topiq_nr,
)
from .pixel import colorfulness, psnr, ssim
from .weights import WEIGHT_FILES, MetricWeightsError, resolve_weights

__all__ = [
    "IQA_METRICS",
    "WEIGHT_FILES",
    "AdherenceResult",
    "BleedingResult",
    "ClipScorer",
    "ColorErrorSummary",
    "IQAMetric",
    "InceptionFeatures",
    "InstanceAdherence",
    "InstanceBleeding",
    "InstanceClipResult",
    "InstanceColorError",
    "MetricWeightsError",
    "ciede2000",
    "clip_score",
    "color_adherence",
    "color_bleeding",
    "colorfulness",
    "extract_features",
    "fid",
    "frechet_distance",
    "instance_clip_score",
    "instance_color_errors",
    "load_iqa_metric",
    "lpips",
    "maniqa",
    "musiq",
    "niqe",
    "niqe_params_file",
    "psnr",
    "resolve_weights",
    "ssim",
    "summarize_color_errors",
    "topiq_nr",
]
