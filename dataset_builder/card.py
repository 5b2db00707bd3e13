"""The dataset card: ``README.md`` with Hugging Face YAML metadata, counts and the builder configuration.

Rewritten (atomically) by every ``build`` / ``synthetic`` process when it finishes, from the
statistics of all finished shards; ``python -m mtcolor.dataset_builder card OUT`` rewrites it by hand (e.g.
after N uncoordinated processes finished).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .config import find_secrets
from .writer import COUNTER_KEYS, DatasetWriter

FORMAT_TABLE = """| column | type | meaning |
| --- | --- | --- |
| `id` | string | unique, stable id of the image in its source |
| `image` | image | the colour image (original file bytes, or PNG) |
| `width`, `height` | int32 | image size |
| `masks` | list of `{size: [H, W], counts: str}` | one COCO compressed RLE (pycocotools) per instance |
| `instance_texts` | list of string | one "colour + object" phrase per instance ("a red apple") |
| `instance_labels` | list of string | object label per instance ("apple") |
| `instance_colors` | list of string | canonical colour word of each text ("" if none) |
| `global_text` | string | overall colour scheme first, then the objects with their colours |
| `source` | string | provenance of the image |
| `instance_captioners` | list of string | captioner of each instance text (`+rule`: rewritten by the verifier) |
| `global_captioner` | string | captioner of the global text |
| `verification` | list of string | per instance: `agree` / `disagree` / `unknown` (text colour vs measured pixels) |
"""


def _size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "1M<n<10M"


def _redact(value):
    if isinstance(value, dict):
        secret = {p.split(".")[-1] for p in find_secrets({k: None for k in value})}
        return {k: ("<redacted>" if k in secret else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _table(title: str, counter: dict, total_label: str = "count") -> str:
    if not counter:
        return ""
    lines = [f"| {title} | {total_label} |", "| --- | ---: |"]
    lines += [
        f"| {key} | {value} |" for key, value in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return "\n".join(lines) + "\n"


_EMPTY_SPLIT = {"units_done": 0, "items": 0, "images": 0, "instances": 0, "skipped": Counter()}


def _metadata(pretty_name: str, splits: list[str], stats: dict) -> dict:
    """The card's YAML metadata (Hugging Face dataset card fields)."""
    from mtcolor.records import FEATURES

    total_images = sum(s["images"] for s in stats.values())
    return {
        "pretty_name": pretty_name,
        "tags": ["image-colorization", "instance-segmentation", "text-guided-colorization", "mtcolor"],
        "task_categories": ["image-to-image"],
        "size_categories": [_size_category(total_images)],
        "configs": [
            {"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}
        ],
        "dataset_info": {
            "features": FEATURES._to_yaml_list(),
            "splits": [{"name": s, "num_examples": stats.get(s, {}).get("images", 0)} for s in splits],
        },
    }


def _build_status(splits: list[str], configs: dict, stats: dict) -> list[str]:
    """The "Build status" section: one table row per split, then whether every shard is done."""
    lines = [
        "## Build status",
        "",
        "| split | shards done | inputs | images | skipped | instances | instances / image | verification agree rate |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    complete = True
    for split in splits:
        s = stats.get(split, _EMPTY_SPLIT)
        units = configs.get(split, {}).get("units", s["units_done"])
        complete &= s["units_done"] >= units
        verification = s.get("verification", Counter())
        judged = verification.get("agree", 0) + verification.get("disagree", 0)
        rate = f"{verification.get('agree', 0) / judged:.3f}" if judged else "-"
        per_image = f"{s['instances'] / s['images']:.2f}" if s["images"] else "-"
        lines.append(
            f"| {split} | {s['units_done']} / {units} | {s['items']} | {s['images']} | {sum(s['skipped'].values())} "
            f"| {s['instances']} | {per_image} | {rate} |"
        )
    lines += [
        "",
        "Complete."
        if complete
        else "**In progress**: some shards are not finished yet (re-run the build to resume).",
        "",
    ]
    return lines


def _count_sections(splits: list[str], stats: dict) -> list[str]:
    """The count tables summed over the splits (skipped inputs, dropped instances, verification,
    captioners, rejected answers) and up to 10 examples of skipped inputs."""
    skipped_all: Counter = Counter()
    counters_all: dict[str, Counter] = {k: Counter() for k in COUNTER_KEYS}
    examples = []
    for split in splits:
        s = stats.get(split, _EMPTY_SPLIT)
        skipped_all.update(s["skipped"])
        examples += s.get("skip_examples", [])
        for key in COUNTER_KEYS:
            counters_all[key].update(s.get(key, {}))
    sections = [
        ("Skipped inputs", _table("reason", skipped_all)),
        ("Dropped instances", _table("reason", counters_all["dropped_instances"])),
        ("Verification", _table("result", counters_all["verification"], "instances")),
        ("Instance captioners", _table("captioner", counters_all["instance_captioners"], "texts")),
        ("Global captioners", _table("captioner", counters_all["global_captioners"], "texts")),
        ("Rejected captioner answers", _table("captioner:problem", counters_all["caption_problems"])),
    ]
    lines = []
    for title, body in sections:
        if body:
            lines += [f"## {title}", "", body]
    if examples:
        lines += (
            ["Examples of skipped inputs:", ""]
            + [f"- `{e[0]}`: {e[1]} ({e[2]})" for e in examples[:10]]
            + [""]
        )
    return lines


def _reference_sections(splits: list[str], configs: dict) -> list[str]:
    """Format, loading, the (secret-free) builder configuration, licence and provenance."""
    return [
        "## Format",
        "",
        FORMAT_TABLE,
        "Masks are stored as written by the segmenter (annotation masks may overlap; synthetic masks do "
        "not). `mtcolor.records.decode_record` builds the label map with the rule of "
        "`mtcolor.masks.masks_to_label_map` (an overlapping pixel belongs to the smallest mask).",
        "",
        "## Loading",
        "",
        "```python",
        "from mtcolor.records import load_records, decode_record",
        "",
        f'dataset = load_records("path/to/this/folder", split="{splits[0] if splits else "train"}")',
        "record = decode_record(dataset[0])  # image (3, H, W), gray (1, H, W), masks, label_map, texts",
        "```",
        "",
        "## Builder configuration",
        "",
        "Secret-free by construction (keys and tokens are only read from the environment).",
        "",
        "```json",
        json.dumps(_redact(configs), indent=1, sort_keys=True, default=str),
        "```",
        "",
        "## Licence and provenance",
        "",
        "Images keep the licences of their sources (see the `source` column); generated texts come from "
        "the captioners named in each row.",
        "",
    ]


def render_card(out_dir: str | Path, pretty_name: str = "mtcolor instance colorization dataset") -> str:
    """The card text for a dataset folder (see :func:`write_card`)."""
    import yaml

    writer = DatasetWriter(out_dir)
    configs = writer.read_configs()
    stats = writer.collect_stats()
    splits = sorted(set(configs) | set(stats), key=lambda split: (split != "train", split))
    metadata = _metadata(pretty_name, splits, stats)
    lines = ["---", yaml.safe_dump(metadata, sort_keys=False).rstrip(), "---", "", f"# {pretty_name}", ""]
    lines += [
        "Instance-level, text-guided colorization data in the `mtcolor` record format (GPT-Color style, "
        'MT-Color section III.D): per image, instance masks (COCO RLE), one "colour + object" text per '
        "instance, the object labels, a global text that opens with the overall colour scheme and "
        "enumerates the objects with their colours, and provenance (source, captioner of each text, "
        "verification of each text's colour against the measured pixels).",
        "",
    ]
    lines += _build_status(splits, configs, stats)
    lines += _count_sections(splits, stats)
    lines += _reference_sections(splits, configs)
    return "\n".join(lines)


def write_card(out_dir: str | Path, pretty_name: str = "mtcolor instance colorization dataset") -> Path:
    """Write ``out_dir/README.md`` atomically and return its path."""
    writer = DatasetWriter(out_dir)
    path = Path(out_dir) / "README.md"
    writer.atomic_write_bytes(path, render_card(out_dir, pretty_name).encode("utf-8"))
    return path
