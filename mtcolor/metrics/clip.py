"""CLIP-score and instance CLIP-score (MT-Color Tables IV, V and VII) with open_clip, offline.

**CLIP-score** of an image and a text is the cosine similarity of their CLIP embeddings,
``cos(E_img(x), E_txt(t))`` in [-1, 1], as MT-Color reports it (0.19-0.31 in its tables; no
``100 *`` scaling and no clipping at 0, unlike torchmetrics' ``CLIPScore``).

**Instance CLIP-score** (MT-Color Table IV, "each instance is cropped using its mask, and the
CLIP-score is calculated between the cropped region and its corresponding text"): for instance
``k`` of an image, take the bounding box of its pixels (label == k), set every pixel of the box
that is *not* in the instance to the fill colour (default: CLIP's normalisation mean, i.e. a
neutral gray that is 0 after normalisation, so neither black nor white is suggested to CLIP), pad
the box to a square with the same fill (centred), resize it to the model's input size and score
it against the instance's text. The reported value is the mean over all scored instances.

Whole images (global CLIP-score) get CLIP's usual preprocessing: resize the short side to the input
size (bicubic, antialiased) and centre-crop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ._inputs import check_images, check_instance_count, check_label_maps, check_texts

#: What fills the non-instance pixels of an instance crop.
FILL_MODES = ("mean", "black", "keep")


class ClipScorer:
    """An open_clip model with its tokenizer and input normalisation, for scoring images and texts.

    Build it with :meth:`from_pretrained` (local weights only) or wrap an existing open_clip model
    (e.g. ``open_clip.create_model(name, pretrained=None)`` in tests) with the constructor.

    Args:
        model: an open_clip ``CLIP``-like model with ``encode_image`` / ``encode_text``.
        tokenizer: the open_clip tokenizer (callable list[str] -> (N, context) token ids).
        image_size: the model's square input size in pixels.
        mean, std: the model's input normalisation (RGB, for images in [0, 1]).
    """

    def __init__(self, model, tokenizer, image_size: int, mean, std):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def from_open_clip(cls, model, model_name: str) -> ClipScorer:
        """Wrap an open_clip model; ``model_name`` (``"ViT-B-32"``, ``"local-dir:PATH"`` ...) picks the tokenizer."""
        import open_clip

        cfg = getattr(model.visual, "preprocess_cfg", {})  # open_clip < 2.24 has none: OpenAI's values
        size = cfg.get("size", model.visual.image_size)
        size = size[0] if isinstance(size, (tuple, list)) else size
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        return cls(model, open_clip.get_tokenizer(model_name), size, mean, std)

    @classmethod
    def from_pretrained(cls, weights, model_name: str | None = None, device=None) -> ClipScorer:
        """Load CLIP from local files only.

        Args:
            weights: either an open_clip model folder (``open_clip_config.json`` + a weights file such
                as ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``, the layout of the
                open_clip models on the Hugging Face hub), or a state-dict file in open_clip's format
                together with ``model_name``.
            model_name: open_clip architecture name for a weights *file* (``"ViT-B-32"``,
                ``"ViT-L-14-quickgelu"`` for OpenAI's ViT-L/14 ...); ignored for a folder.
            device: where to run (default CPU).

        Raises:
            MetricWeightsError: ``weights`` is None or does not exist (the message says what to provide).
        """
        import open_clip

        from .weights import MetricWeightsError

        hint = (
            "CLIP-score needs local CLIP weights: an open_clip model folder (open_clip_config.json + "
            "open_clip_model.safetensors or open_clip_pytorch_model.bin, e.g. a snapshot of "
            "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K) or an open_clip state-dict file plus "
            "--clip-model NAME (`mtcolor evaluate --clip-weights PATH`). Nothing is downloaded here."
        )
        if weights is None:
            raise MetricWeightsError(hint)
        path = Path(weights).expanduser()
        if path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise MetricWeightsError(f"{str(path)!r} has no open_clip_config.json. {hint}")
            config = json.loads((path / "open_clip_config.json").read_text())
            if "hf_model_name" in config.get("model_cfg", {}).get("text_cfg", {}):
                raise ValueError(
                    f"{str(path)!r} uses a Hugging Face text tower, which open_clip would download; use a CLIP text tower."
                )
            name = f"local-dir:{path}"
            model = open_clip.create_model(name, device=device or "cpu", weights_only=True)
        elif path.is_file():
            if model_name is None:
                raise ValueError(
                    f"weights={str(path)!r} is a file; pass model_name (e.g. 'ViT-B-32') to build its architecture."
                )
            name = model_name
            model = open_clip.create_model(
                name, pretrained=str(path), device=device or "cpu", weights_only=True
            )
        else:
            raise MetricWeightsError(f"CLIP weights {str(path)!r} do not exist. {hint}")
        return cls.from_open_clip(model, name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Square images (B, 3, S, S) in [0, 1] at the model's size -> unit embeddings (B, D)."""
        x = (images.to(self.device).float() - self.mean.to(self.device)) / self.std.to(self.device)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts -> unit embeddings (N, D)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, S, S): short side resized to S (bicubic, antialiased), centre crop."""
        height, width = images.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        x = F.interpolate(
            images.float(), size=size, mode="bicubic", antialias=True, align_corners=False
        ).clamp(0, 1)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        return x[..., top : top + self.image_size, left : left + self.image_size]

    def score(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine similarity of each preprocessed-ready square image (B, 3, S, S) with its text -> (B,)."""
        return (self.encode_images(images) * self.encode_texts(texts).to(self.device)).sum(-1)


def clip_score(images: torch.Tensor, texts: list[str], model: ClipScorer) -> torch.Tensor:
    """Global CLIP-score: cosine similarity of each whole image with its text (MT-Color Table VII).

    Args:
        images: sRGB (B, 3, H, W) in [0, 1].
        texts: B strings.
        model: a :class:`ClipScorer`.

    Returns:
        (B,) float tensor in [-1, 1] on the images' device.
    """
    images = check_images(images, "images", channels=(3,))
    if isinstance(texts, str) or len(texts) != images.shape[0]:
        raise ValueError(
            f"texts must be a list of {images.shape[0]} strings (one per image); got {texts!r:.80}."
        )
    return model.score(model.preprocess(images), list(texts)).to(images.device)


@dataclass
class InstanceClipResult:
    """Per-instance CLIP-scores of a batch.

    Attributes:
        image_index, instance: (N,) long tensors: which image and which instance label (1-based).
        scores: (N,) cosine similarities of the scored instances.
        texts: the N instance texts.
        skipped: ``(image_index, instance, reason)`` of instances not scored (empty text, no pixels).
    """

    image_index: torch.Tensor
    instance: torch.Tensor
    scores: torch.Tensor
    texts: list[str]
    skipped: list[tuple[int, int, str]]

    @property
    def mean(self) -> float:
        """The mean over all scored instances (the Table IV number); NaN if none was scored."""
        return float(self.scores.mean()) if self.scores.numel() else float("nan")

    def per_image(self, batch: int) -> torch.Tensor:
        """(batch,) mean score of each image's instances (NaN for images without scored instances)."""
        total = torch.zeros(batch, dtype=torch.float64).index_add_(0, self.image_index, self.scores.double())
        count = torch.zeros(batch, dtype=torch.float64).index_add_(
            0, self.image_index, torch.ones_like(self.scores).double()
        )
        return (total / count).float()


def instance_crops(
    image: torch.Tensor, label_map: torch.Tensor, labels: list[int], size: int, fill: torch.Tensor | None
) -> torch.Tensor:
    """Square crops (n, 3, size, size) of the given instances of one image (3, H, W).

    Each crop is the instance's bounding box; pixels of the box outside the instance are set to
    ``fill`` (an RGB (3,) colour; ``None`` keeps them), the box is padded to a square with ``fill``
    (or, when keeping, with the image mean), centred, and resized to ``size`` (bicubic, antialiased).
    """
    crops = []
    for label in labels:
        mask = label_map == label  # (H, W)
        rows = torch.nonzero(mask.any(1)).flatten()
        cols = torch.nonzero(mask.any(0)).flatten()
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        box = image[:, top:bottom, left:right]
        pad_colour = fill if fill is not None else image.mean((1, 2))
        if fill is not None:
            box = torch.where(mask[top:bottom, left:right], box, fill.view(3, 1, 1))
        height, width = box.shape[-2:]
        side = max(height, width)
        canvas = pad_colour.view(3, 1, 1).expand(3, side, side).clone()
        y, x = (side - height) // 2, (side - width) // 2
        canvas[:, y : y + height, x : x + width] = box
        crops.append(
            F.interpolate(
                canvas[None], size=(size, size), mode="bicubic", antialias=side > size, align_corners=False
            )[0]
        )
    return torch.stack(crops).clamp(0, 1)


def instance_clip_score(
    images: torch.Tensor,
    label_maps,
    texts,
    model: ClipScorer,
    fill: str = "mean",
    batch_size: int = 32,
) -> InstanceClipResult:
    """Instance CLIP-score (MT-Color Table IV): each instance's masked crop against its own text.

    Args:
        images: sRGB (B, 3, H, W) in [0, 1].
        label_maps: (B, H, W) int tensor or B tensors (H, W): 0 = background, k = instance k.
        texts: per image, one text per instance (``texts[b][k - 1]`` describes label k).
        model: a :class:`ClipScorer`.
        fill: what replaces the pixels of the bounding box outside the instance: ``"mean"`` (CLIP's
            normalisation mean, neutral gray, default), ``"black"``, or ``"keep"`` (plain box crop).
        batch_size: crops per CLIP forward pass.

    Returns:
        :class:`InstanceClipResult` (``.mean`` is the table number). Instances with an empty text or
        no pixel are skipped and listed in ``.skipped``.
    """
    images = check_images(images, "images", channels=(3,))
    maps = check_label_maps(label_maps, images)
    texts = check_texts(texts, images.shape[0], "texts")
    if fill not in FILL_MODES:
        raise ValueError(f"fill={fill!r}; choose one of {FILL_MODES}.")
    fill_colour = {"mean": model.mean.view(3), "black": torch.zeros(3), "keep": None}[fill]
    crops, owners, labels, kept_texts, skipped = [], [], [], [], []
    for index, (image, label_map, items) in enumerate(zip(images, maps, texts)):
        check_instance_count(label_map, len(items), index, "texts")
        present = set(torch.unique(label_map).tolist())
        chosen = []
        for label, text in enumerate(items, start=1):
            if not text.strip():
                skipped.append((index, label, "empty text"))
            elif label not in present:
                skipped.append((index, label, "no pixels"))
            else:
                chosen.append(label)
                kept_texts.append(text)
        if chosen:
            colour = None if fill_colour is None else fill_colour.to(image)
            crops.append(instance_crops(image.float(), label_map, chosen, model.image_size, colour))
            owners += [index] * len(chosen)
            labels += chosen
    if not crops:
        empty = torch.zeros(0)
        return InstanceClipResult(empty.long(), empty.long(), empty, [], skipped)
    stacked = torch.cat(crops)  # (N, 3, S, S)
    scores = torch.cat(
        [
            model.score(chunk, kept_texts[start : start + batch_size]).cpu()
            for start, chunk in zip(range(0, len(stacked), batch_size), stacked.split(batch_size))
        ]
    )
    return InstanceClipResult(torch.tensor(owners), torch.tensor(labels), scores, kept_texts, skipped)
