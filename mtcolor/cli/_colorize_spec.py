"""The instances of ``mtcolor colorize``: parsed from ``--mask`` / ``--box`` / ``--point`` / ``--text``
/ ``--color`` on the command line or from a ``--spec`` JSON/YAML file, each checked (finite
coordinates, known keys, exactly one text per mask source, colours the library can parse) with errors
naming the flag or the spec entry.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

SPEC_KEYS = ("image", "prompt", "negative_prompt", "instances")
INSTANCE_KEYS = ("text", "mask", "box", "points", "color")
#: what ``--color`` / a spec's ``"color"`` accepts to say "no explicit colour for this instance"
NO_COLOR = ("none", "-")


@dataclass
class Instance:
    """One instance: its text, exactly one mask source (a mask file, or SAM box and/or points) and an
    optional explicit colour target (:class:`mtcolor.color_targets.ColorTarget`, None = none)."""

    text: str
    where: str  # for error messages: "--box #2", "instances[1] of spec.json"
    mask: str | None = None
    box: tuple[float, float, float, float] | None = None
    points: list[tuple[float, float]] | None = None
    color: object = None


def parse_color_value(value, where: str):
    """A ``--color`` value or a spec's ``"color"`` -> a ``ColorTarget``, or None for ``none`` / ``-``
    (no explicit target: the text's colour word may still give one). Raises ValueError / TypeError
    naming ``where`` (:func:`mtcolor.color_targets.parse_color`'s messages)."""
    from mtcolor.color_targets import parse_color

    if value is None or (isinstance(value, str) and value.strip().lower() in NO_COLOR):
        return None
    if isinstance(value, list):
        value = tuple(value)
    return parse_color(value, where)


def numbers(value: str, count: int, flag: str, form: str, example: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(part) for part in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise ValueError(
            f"{flag} {value!r} is not {form} (comma-separated finite numbers in pixels), e.g. {flag} {example}."
        )
    return numbers


def finite_coordinates(values, where: str, key: str, form: str) -> None:
    """Spec ``box`` / ``points`` entries: plain finite numbers (JSON/YAML accept NaN and infinity)."""
    flat = [v for item in values for v in (item if isinstance(item, (list, tuple)) else [item])]
    for value in flat:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where} has {key} {values!r}; expected {form} with finite numbers in pixels.")


def parse_box(value: str, flag: str = "--box") -> tuple[float, float, float, float]:
    return numbers(value, 4, flag, "x0,y0,x1,y1", "10,20,200,160")  # type: ignore[return-value]


def parse_points(value: str, flag: str = "--point") -> list[tuple[float, float]]:
    points = []
    for part in value.split(";"):
        try:
            points.append(numbers(part.strip(), 2, flag, "x,y", "120,80"))
        except ValueError as err:
            raise ValueError(
                f"{flag} {value!r} is not x,y[;x,y...] in pixels, e.g. {flag} '120,80;130,95'."
            ) from err
    return points  # type: ignore[return-value]


def load_spec(path: str) -> dict:
    import json

    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--spec {path!r} does not exist; pass a JSON or YAML instance file.")
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".json", ".yaml", ".yml"):
        raise ValueError(f"--spec {path!r} has extension {extension!r}; use a .json, .yaml or .yml file.")
    with open(path, encoding="utf-8") as handle:
        try:
            spec = json.load(handle) if extension == ".json" else yaml.safe_load(handle)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise ValueError(f"--spec {path!r} is not valid {extension[1:].upper()}: {err}") from err
    if not isinstance(spec, dict):
        raise ValueError(
            f"--spec {path!r} holds a {type(spec).__name__}; expected an object with keys {SPEC_KEYS}."
        )
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"--spec {path!r} has unknown keys {unknown}; allowed keys: {list(SPEC_KEYS)}.")
    for key in ("image", "prompt", "negative_prompt"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise ValueError(f"--spec {path!r} has {key} {spec[key]!r}; expected a string.")
    return spec


def spec_instances(spec: dict, path: str) -> list[Instance]:
    base = os.path.dirname(os.path.abspath(path))
    entries = spec.get("instances") or []
    if not isinstance(entries, list):
        raise ValueError(
            f"'instances' in --spec {path!r} is a {type(entries).__name__}; expected a list of objects."
        )
    instances = []
    for i, entry in enumerate(entries):
        where = f"instances[{i}] of --spec {path!r}"
        if not isinstance(entry, dict):
            raise ValueError(
                f'{where} is {entry!r}; expected an object such as {{"mask": "m1.png", "text": "a red car"}}.'
            )
        unknown = sorted(set(entry) - set(INSTANCE_KEYS))
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; allowed keys: {list(INSTANCE_KEYS)}.")
        text = entry.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f'{where} has text {text!r}; every instance needs a non-empty "text".')
        has_sam = entry.get("box") is not None or entry.get("points") is not None
        if (entry.get("mask") is not None) == has_sam:
            raise ValueError(
                f'{where} needs exactly one of "mask" or SAM "box"/"points"; got keys {sorted(entry)}.'
            )
        instance = Instance(text=text, where=where)
        if entry.get("mask") is not None:
            if not isinstance(entry["mask"], str):
                raise ValueError(
                    f"{where} has mask {entry['mask']!r}; expected a file path (relative to the spec)."
                )
            instance.mask = os.path.join(base, os.fspath(entry["mask"]))
        if entry.get("box") is not None:
            box = entry["box"]
            if not isinstance(box, (list, tuple)) or len(box) != 4:
                raise ValueError(f"{where} has box {box!r}; expected [x0, y0, x1, y1] in pixels.")
            finite_coordinates(box, where, "box", "[x0, y0, x1, y1]")
            instance.box = tuple(box)
        if entry.get("points") is not None:
            points = entry["points"]
            if not isinstance(points, (list, tuple)) or not points:
                raise ValueError(f"{where} has points {points!r}; expected [[x, y], ...] in pixels.")
            finite_coordinates(points, where, "points", "[[x, y], ...]")
            instance.points = [tuple(p) if isinstance(p, (list, tuple)) else p for p in points]
        instance.color = parse_color_value(entry.get("color"), f"{where}: color")
        instances.append(instance)
    return instances


def command_line_instances(args) -> list[Instance]:
    sources = args.instances or []
    texts = args.texts or []
    if len(sources) != len(texts):
        raise ValueError(
            f"got {len(sources)} instances (--mask/--box/--point) but {len(texts)} --text; give exactly one "
            "--text per instance, in the same order."
        )
    colors = args.colors or []
    if colors and len(colors) != len(sources):
        raise ValueError(
            f"got {len(sources)} instances (--mask/--box/--point) but {len(colors)} --color; give either no "
            "--color or exactly one per instance, in the same order (--color none for an instance without one)."
        )
    counters: dict[str, int] = {}
    instances = []
    for i, ((kind, value), text) in enumerate(zip(sources, texts)):
        counters[kind] = counters.get(kind, 0) + 1
        where = f"--{kind} #{counters[kind]}"
        if kind == "mask":
            instance = Instance(text=text, where=where, mask=value)
        elif kind == "box":
            instance = Instance(text=text, where=where, box=parse_box(value))
        else:
            instance = Instance(text=text, where=where, points=parse_points(value))
        if colors:
            instance.color = parse_color_value(colors[i], f"--color #{i + 1} (of {where})")
        instances.append(instance)
    return instances
