"""Builder configuration: YAML/JSON files -> :class:`BuildConfig`, and construction of components.

A config file (YAML or JSON)::

    output_dir: out/gpt-color-coco          # may also be given with --output_dir
    source: {type: coco, annotation_file: annotations/instances_val2017.json, image_root: val2017}
    segmenter: {type: annotations}          # or {type: sam, checkpoint: sam_vit_b.pth, ...}
    captioners:                             # the fallback chain for instance texts
      - {type: openai, requests_per_minute: 300}
      - {type: blip2, model_path: /models/blip2-opt-2.7b}
      - {type: rule}
    global_captioners: null                 # null = the same chain
    verification: {tolerance: 20, rewrite: false, drop_disagree: false}
    instances: {min_area_fraction: 0.001, min_area: 16, max_instances: 32, min_instances: 1}
    split: train
    test_fraction: 0.2                      # a stable hash of the image id puts ~20% in "test"
    shard_size: 256                         # images per output shard (the unit of resumption)

``type`` is a built-in name or an import path ``"package.module:ClassName"`` (plug-ins); every other
key is a constructor argument of that class, checked against its signature. Secrets never go in a
config: keys named like ``api_key`` / ``token`` / ``secret`` / ``password`` are rejected (give the
*name* of an environment variable instead, e.g. ``api_key_env: MY_KEY_VAR``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SOURCES = {
    "image_folder": "mtcolor.dataset_builder.sources:ImageFolderSource",
    "coco": "mtcolor.dataset_builder.sources:CocoSource",
    "hf": "mtcolor.dataset_builder.sources:HFDatasetSource",
    "synthetic": "mtcolor.dataset_builder.sources:SyntheticSource",
}
SEGMENTERS = {
    "annotations": "mtcolor.dataset_builder.segmenters:AnnotationSegmenter",
    "sam": "mtcolor.dataset_builder.segmenters:SAMSegmenter",
}
CAPTIONERS = {
    "rule": "mtcolor.dataset_builder.captioners:RuleBasedCaptioner",
    "blip2": "mtcolor.dataset_builder.captioners:Blip2Captioner",
    "openai": "mtcolor.dataset_builder.captioners:OpenAICompatibleCaptioner",
}
_SECRET = re.compile(r"(api_?key|token|secret|password|passwd|credential)s?$", re.IGNORECASE)


def find_secrets(value: Any, path: str = "") -> list[str]:
    """Paths of keys that look like secrets (``*_env`` names of environment variables are fine)."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _SECRET.search(str(key)) and not str(key).endswith("_env"):
                found.append(where)
            found += find_secrets(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += find_secrets(item, f"{path}[{i}]")
    return found


def resolve_class(kind: str, registry: dict[str, str], what: str):
    """A built-in name of ``registry`` or ``"module:Class"`` -> the class."""
    target = registry.get(kind, kind)
    if ":" not in target:
        raise ValueError(
            f"{what} type {kind!r} is unknown; use one of {sorted(registry)} or 'package.module:ClassName'."
        )
    module_name, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{what} type {kind!r}: cannot import {target!r} ({error}).") from error


def build_component(spec: dict, registry: dict[str, str], what: str):
    """Instantiate ``spec = {"type": ..., **kwargs}`` after checking the keys against the signature.

    Keyword-only parameters (after ``*``: injected collaborators such as a captioner's ``clock``,
    ``sleep`` or HTTP ``opener``) are for code, not for config files, and are refused as keys.
    """
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(
            f"{what} spec {spec!r} must be a mapping with a 'type' key (one of {sorted(registry)})."
        )
    cls = resolve_class(spec["type"], registry, what)
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    parameters = inspect.signature(cls.__init__).parameters
    code_only = sorted(n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
    injected = sorted(set(kwargs) & set(code_only))
    if injected:
        raise ValueError(
            f"{what} {spec['type']!r}: {injected} cannot be set from a config file (they take Python objects "
            "passed by code, e.g. in tests); remove them from the spec."
        )
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        valid = [
            n for n, p in parameters.items() if n != "self" and p.kind is not inspect.Parameter.KEYWORD_ONLY
        ]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(f"{what} {spec['type']!r} has no option(s) {unknown}; valid options: {valid}.")
    return cls(**kwargs)


@dataclass
class InstanceOptions:
    """Instance filtering applied after any segmenter: instances smaller than ``min_area`` pixels or
    ``min_area_fraction`` of the image are dropped; the ``max_instances`` largest are kept; images
    with fewer than ``min_instances`` instances left (after captioning/verification) are skipped."""

    min_area_fraction: float = 0.001
    min_area: int = 16
    max_instances: int = 32
    min_instances: int = 1

    def __post_init__(self):
        if not 0 <= self.min_area_fraction < 1:
            raise ValueError(
                f"instances.min_area_fraction={self.min_area_fraction}; expected a fraction in [0, 1)."
            )
        if self.max_instances < 1 or self.min_instances < 0 or self.min_area < 1:
            raise ValueError(
                f"instances: max_instances={self.max_instances}, min_instances={self.min_instances}, "
                f"min_area={self.min_area}; expected max_instances >= 1, min_instances >= 0, min_area >= 1."
            )


@dataclass
class BuildConfig:
    """Everything that decides the content of a built dataset (see the module docstring)."""

    source: dict
    output_dir: str | None = None
    segmenter: dict = field(default_factory=lambda: {"type": "annotations"})
    captioners: list = field(default_factory=lambda: [{"type": "rule"}])
    global_captioners: list | None = None
    verification: dict = field(default_factory=dict)
    instances: dict = field(default_factory=dict)
    split: str = "train"
    test_fraction: float = 0.0
    test_split: str = "test"
    shard_size: int = 256
    max_side: int | None = None
    image_format: str = "keep"
    skip_grayscale: bool = True
    limit: int | None = None
    name: str = "mtcolor instance colorization dataset"

    def __post_init__(self):
        secrets = find_secrets(asdict(self))
        if secrets:
            raise ValueError(
                f"the config holds secret-looking keys {secrets}; secrets only come from the environment "
                "(e.g. MTCOLOR_CAPTION_API_KEY, or name the variable with api_key_env)."
            )
        if not isinstance(self.source, dict) or "type" not in self.source:
            raise ValueError(
                f"source={self.source!r}; expected a mapping with a 'type' (image_folder, coco, hf, synthetic)."
            )
        if isinstance(self.captioners, dict):
            self.captioners = [self.captioners]
        if isinstance(self.global_captioners, dict):
            self.global_captioners = [self.global_captioners]
        if not self.captioners:
            raise ValueError("captioners is empty; give at least one, e.g. [{type: rule}].")
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.split) or not re.fullmatch(
            r"[A-Za-z0-9_]+", self.test_split
        ):
            raise ValueError(
                f"split={self.split!r}, test_split={self.test_split!r}; split names use letters, digits and _."
            )
        if self.split == self.test_split and self.test_fraction > 0:
            raise ValueError(f"split and test_split are both {self.split!r}; give them different names.")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction={self.test_fraction}; expected a fraction in [0, 1).")
        if self.shard_size < 1:
            raise ValueError(f"shard_size={self.shard_size}; expected images per shard >= 1.")
        if self.max_side is not None and self.max_side < 8:
            raise ValueError(f"max_side={self.max_side}; expected None or a longest side >= 8 pixels.")
        if self.image_format not in ("keep", "png", "jpeg"):
            raise ValueError(f"image_format={self.image_format!r}; expected 'keep', 'png' or 'jpeg'.")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit={self.limit}; expected None or a count >= 0.")
        InstanceOptions(**self.instances)

    @classmethod
    def from_dict(cls, data: dict) -> BuildConfig:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(valid)}.")
        if "source" not in data:
            raise ValueError(
                "the config has no 'source'; add e.g. source: {type: image_folder, root: images/}."
            )
        return cls(**copy.deepcopy(data))

    @classmethod
    def from_file(cls, path: str | Path) -> BuildConfig:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist.")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}.")
        return cls.from_dict(data)

    @property
    def instance_options(self) -> InstanceOptions:
        return InstanceOptions(**self.instances)

    def content(self) -> dict:
        """The fields that decide the dataset's content (everything but ``output_dir``)."""
        data = asdict(self)
        data.pop("output_dir")
        return data


def fingerprint(content: dict) -> str:
    """Stable hash of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]
