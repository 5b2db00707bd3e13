"""Dataset statistics: instances per image, colour words, verification agreement, text lengths, and
optionally CLIP-scores (MT-Color Table VII: global text vs image, instance text vs masked crop).

CLIP-score here is the mean cosine similarity of open_clip image and text embeddings (the scale of
the paper's 0.2-0.3 values), computed with local weights only (``clip_weights``: a checkpoint file
for ``clip_model``; ``clip_config``: a JSON model config for architectures open_clip does not know).
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import numpy as np

TEXT_COLUMNS = (
    "instance_texts",
    "instance_labels",
    "instance_colors",
    "global_text",
    "verification",
    "instance_captioners",
    "global_captioner",
    "masks",
)


def _summary(values: list[float]) -> dict:
    if not values:
        return {"mean": 0.0, "median": 0.0, "min": 0, "max": 0}
    return {
        "mean": round(statistics.fmean(values), 3),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def _clip_token_counts(texts: list[str]) -> list[int] | None:
    try:
        from open_clip.tokenizer import SimpleTokenizer
    except ImportError:
        return None
    tokenizer = SimpleTokenizer()
    return [len(tokenizer.encode(t)) + 2 for t in texts]  # + start/end tokens


def load_clip(model_name: str, weights: str, config: str | None = None, device: str | None = None):
    """(model, preprocess, tokenizer) of open_clip from local files only."""
    import open_clip
    import torch

    if not Path(weights).is_file():
        raise ValueError(
            f"clip_weights={weights!r} is not a file; pass a local open_clip checkpoint (no downloads here)."
        )
    if config is not None:
        if not Path(config).is_file():
            raise ValueError(f"clip_config={config!r} is not a file; pass an open_clip model config JSON.")
        open_clip.add_model_config(config)
        model_name = Path(config).stem
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=weights, device=device
    )
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)


def clip_scores(
    dataset,
    model,
    preprocess,
    tokenizer,
    batch_size: int = 32,
    crop_fill: str | None = "black",
    max_images: int | None = None,
) -> dict:
    """Mean cosine similarity of (image, global text) and of (masked instance crop, instance text)."""
    import torch

    from mtcolor.records import decode_masks

    from .captioners import crop_instance

    device = next(model.parameters()).device
    global_scores: list[float] = []
    instance_scores: list[float] = []
    pending: dict[str, list] = {"global": [], "instance": []}

    def flush(kind: str) -> None:
        pairs = pending[kind]
        if not pairs:
            return
        images = torch.stack([preprocess(image) for image, _ in pairs]).to(device)
        tokens = tokenizer([text for _, text in pairs]).to(device)
        with torch.inference_mode():
            image_features = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
            text_features = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
        scores = (image_features * text_features).sum(-1).tolist()
        (global_scores if kind == "global" else instance_scores).extend(scores)
        pending[kind] = []

    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    for index in range(count):
        row = dataset[index]
        image = row["image"].convert("RGB")
        pending["global"].append((image, row["global_text"]))
        array = np.asarray(image)
        masks = decode_masks(row["masks"], size=(array.shape[0], array.shape[1])).numpy()
        for mask, text in zip(masks, row["instance_texts"]):
            if mask.any():
                pending["instance"].append((crop_instance(array, mask, crop_fill, margin=0.0), text))
        for kind in ("global", "instance"):
            if len(pending[kind]) >= batch_size:
                flush(kind)
    flush("global")
    flush("instance")
    return {
        "clip_score_global": round(statistics.fmean(global_scores), 4) if global_scores else None,
        "clip_score_instance": round(statistics.fmean(instance_scores), 4) if instance_scores else None,
        "clip_images": count,
        "clip_instances": len(instance_scores),
    }


def dataset_statistics(
    path: str | Path,
    split: str | None = None,
    clip_model: str | None = None,
    clip_weights: str | None = None,
    clip_config: str | None = None,
    device: str | None = None,
    max_images: int | None = None,
    batch_size: int = 32,
) -> dict:
    """Statistics of a record dataset (see the module docstring); CLIP-scores when ``clip_weights``."""
    from mtcolor.records import load_records

    dataset = load_records(path, split)
    texts = dataset.select_columns(list(TEXT_COLUMNS))
    per_image, instance_words, global_words, globals_ = [], [], [], []
    colors, labels, verification, captioners, global_captioners = (
        Counter(),
        Counter(),
        Counter(),
        Counter(),
        Counter(),
    )
    for row in texts:
        per_image.append(len(row["masks"]))
        colors.update(c or "(none)" for c in row["instance_colors"])
        labels.update(row["instance_labels"])
        verification.update(row["verification"])
        captioners.update(row["instance_captioners"])
        global_captioners[row["global_captioner"]] += 1
        instance_words += [len(t.split()) for t in row["instance_texts"]]
        global_words.append(len(row["global_text"].split()))
        globals_.append(row["global_text"])
    judged = verification.get("agree", 0) + verification.get("disagree", 0)
    result = {
        "images": len(per_image),
        "instances": sum(per_image),
        "instances_per_image": _summary(per_image),
        "instances_per_image_histogram": dict(sorted(Counter(per_image).items())),
        "color_words": dict(colors.most_common()),
        "labels_top": dict(labels.most_common(20)),
        "verification": dict(verification),
        "agreement_rate": round(verification.get("agree", 0) / judged, 4) if judged else None,
        "instance_text_words": _summary(instance_words),
        "global_text_words": _summary(global_words),
        "instance_captioners": dict(captioners),
        "global_captioners": dict(global_captioners),
    }
    tokens = _clip_token_counts(globals_)
    if tokens is not None:
        result["global_text_clip_tokens"] = _summary(tokens)
        result["global_text_over_77_tokens"] = round(sum(t > 77 for t in tokens) / max(len(tokens), 1), 4)
    if clip_weights or clip_model:
        if not (clip_weights and clip_model or clip_weights and clip_config):
            raise ValueError("CLIP-score needs clip_weights (a local file) and clip_model (or clip_config).")
        model, preprocess, tokenizer = load_clip(clip_model, clip_weights, clip_config, device)
        result.update(clip_scores(dataset, model, preprocess, tokenizer, batch_size, max_images=max_images))
    return result


def format_statistics(stats: dict) -> str:
    """Markdown rendering of :func:`dataset_statistics`."""
    lines = ["| statistic | value |", "| --- | --- |"]
    for key in (
        "images",
        "instances",
        "agreement_rate",
        "global_text_over_77_tokens",
        "clip_score_global",
        "clip_score_instance",
    ):
        if key in stats:
            lines.append(f"| {key} | {stats[key]} |")
    for key in ("instances_per_image", "instance_text_words", "global_text_words", "global_text_clip_tokens"):
        if key in stats:
            s = stats[key]
            lines.append(
                f"| {key} (mean / median / min / max) | {s['mean']} / {s['median']} / {s['min']} / {s['max']} |"
            )
    for key in (
        "color_words",
        "verification",
        "instance_captioners",
        "global_captioners",
        "instances_per_image_histogram",
        "labels_top",
    ):
        if stats.get(key):
            lines.append(f"| {key} | {', '.join(f'{k}: {v}' for k, v in stats[key].items())} |")
    return "\n".join(lines)
