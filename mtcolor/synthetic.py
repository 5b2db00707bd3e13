"""Deterministic synthetic scenes with exact masks, known colours and texts (offline, from a seed).

A scene is a textured or plain background with 2-4 (configurable) shapes painted one after the
other. **Overlaps are resolved by paint order**: a later object owns every pixel it covers and the
earlier objects' masks lose those pixels, so the stored masks never overlap and are exactly the
pixels painted in each object's colour. Placement is re-drawn until every earlier object keeps at
least ``1 - max_occlusion`` of its area (and ``min_visible_pixels``); an object that cannot be
placed so is left out.

Colours come from the lexicon (XKCD prototypes of :mod:`mtcolor.lexicon`). Each colour has a
*stable lightness interval*: the Lab L values (around its prototype's L) for which the painted
colour (prototype a, b at that L, clipped to sRGB, quantised to uint8) is still measured as that
colour by the builder's namer (:class:`~mtcolor.color_names.ColorNamer`). Textures vary only L
within that interval, and ``decorrelate_luminance=True`` draws each object's L uniformly from it, so
brightness does not predict hue (a model has to read the text).

``holdout_pairs`` lists (colour, shape) pairs that never occur in the ``"train"`` split; every
``"test"`` scene contains at least one of them (its first object), for generalisation tests.
Some scenes (``same_kind_prob``) contain two objects of the same shape in different colours.

This module is the generator (a library function of the scene's seed); writing scenes as dataset
shards or as a COCO collection is :mod:`mtcolor.dataset_builder.synthetic`.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field, fields

import numpy as np

from .color_names import (
    ColorNamer,
    color_categories,
    compose_global_text,
    describe_scheme,
    instance_phrase,
    lab_to_rgb8,
    rgb_to_lab,
)
from .lexicon import BASIC_COLORS, default_lexicon
from .phrasing import PHRASINGS, phrase, scene_text

SHAPES = ("circle", "square", "triangle", "star", "ring", "ellipse", "diamond", "cross")
TEXTURES = ("flat", "stripes", "gradient", "noise")
BACKGROUNDS = ("solid", "gradient", "noise", "checker")


@dataclass
class SyntheticConfig:
    """Options of the synthetic generator.

    Attributes:
        image_size: side of the square images (pixels).
        num_objects: (min, max) objects per scene, inclusive.
        shapes: shape kinds to draw (subset of :data:`SHAPES`).
        colors: colour vocabulary (lexicon words; default: the eleven basic colour terms).
        size_range: (min, max) object size as a fraction of the image side (bounding-box diameter).
        same_kind_prob: probability that a scene has two objects of the same shape, different colours.
        decorrelate_luminance: draw each object's Lab L uniformly from its colour's stable interval.
        holdout_pairs: (colour, shape) pairs kept out of "train" and put in every "test" scene.
        textures: object textures to draw from (:data:`TEXTURES`; all vary only L).
        texture_prob: probability that an object gets a non-flat texture.
        texture_strength: L amplitude of textures.
        backgrounds: background kinds to draw from (:data:`BACKGROUNDS`).
        background_chroma: maximum Lab chroma of background colours.
        noise_std: std of Gaussian pixel noise (uint8 levels) added to the whole image (0 = exact
            colours; masks stay exact either way).
        max_occlusion: largest fraction of an object's area later objects may cover.
        min_visible_pixels: smallest visible area of an object.
        phrasing: instance texts: ``"plain"`` ("a red star"), ``"varied"`` (training synonyms and
            templates: "the star is ruby") or ``"language"`` (words and templates never used in
            training: "a crimson star", "a star painted navy"); see :mod:`mtcolor.phrasing`.
            Non-plain phrasings build the global text from the instance texts.
    """

    image_size: int = 64
    num_objects: tuple[int, int] = (2, 4)
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = BASIC_COLORS
    size_range: tuple[float, float] = (0.25, 0.5)
    same_kind_prob: float = 0.3
    decorrelate_luminance: bool = False
    holdout_pairs: list[tuple[str, str]] = field(default_factory=list)
    textures: tuple[str, ...] = TEXTURES
    texture_prob: float = 0.3
    texture_strength: float = 10.0
    backgrounds: tuple[str, ...] = BACKGROUNDS
    background_chroma: float = 20.0
    noise_std: float = 0.0
    max_occlusion: float = 0.5
    min_visible_pixels: int = 12
    phrasing: str = "plain"

    def __post_init__(self):
        self.num_objects = tuple(int(v) for v in self.num_objects)
        self.shapes = tuple(self.shapes)
        self.colors = tuple(default_lexicon("extended").canonical(c) for c in self.colors)
        self.size_range = tuple(float(v) for v in self.size_range)
        self.textures = tuple(self.textures)
        self.backgrounds = tuple(self.backgrounds)
        self.holdout_pairs = [(default_lexicon("extended").canonical(c), s) for c, s in self.holdout_pairs]
        if self.phrasing not in PHRASINGS:
            raise ValueError(f"phrasing={self.phrasing!r}; expected one of {PHRASINGS}.")
        if self.image_size < 16:
            raise ValueError(f"image_size={self.image_size}; expected >= 16 pixels.")
        if len(self.num_objects) != 2 or not 1 <= self.num_objects[0] <= self.num_objects[1]:
            raise ValueError(f"num_objects={self.num_objects}; expected (min, max) with 1 <= min <= max.")
        for name, values, allowed in (
            ("shapes", self.shapes, SHAPES),
            ("textures", self.textures, TEXTURES),
            ("backgrounds", self.backgrounds, BACKGROUNDS),
        ):
            bad = [v for v in values if v not in allowed]
            if not values or bad:
                raise ValueError(f"{name}={values}; expected a non-empty subset of {allowed}.")
        lexicon = default_lexicon("extended")
        bad = [c for c in self.colors if c not in lexicon]
        if len(set(self.colors)) < 2 or bad:
            raise ValueError(
                f"colors={self.colors}; expected >= 2 distinct lexicon colour words (unknown: {bad})."
            )
        if not 0 < self.size_range[0] <= self.size_range[1] <= 1:
            raise ValueError(f"size_range={self.size_range}; expected 0 < min <= max <= 1.")
        if not 0 <= self.max_occlusion < 1:
            raise ValueError(f"max_occlusion={self.max_occlusion}; expected a fraction in [0, 1).")
        for color, shape in self.holdout_pairs:
            if color not in self.colors or shape not in self.shapes:
                raise ValueError(
                    f"holdout pair {(color, shape)} uses a colour or shape not in colors/shapes."
                )
        for shape in self.shapes:
            if all((c, shape) in self.holdout_pairs for c in self.colors):
                raise ValueError(
                    f"every colour of shape {shape!r} is held out; the train split could not draw it."
                )

    @classmethod
    def from_dict(cls, data: dict) -> SyntheticConfig:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown synthetic option(s) {unknown}; valid: {sorted(valid)}.")
        return cls(**{k: ([tuple(p) for p in v] if k == "holdout_pairs" else v) for k, v in data.items()})


def scene_seed(seed: int, split: str, index: int) -> int:
    """The seed of scene ``index`` of ``split`` in a job with base ``seed`` (stable across runs)."""
    return int(
        np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index)]).generate_state(1)[0]
    )


@functools.lru_cache(maxsize=64)
def stable_lightness(color: str, min_chroma_ratio: float = 0.35) -> tuple[float, float]:
    """(lo, hi): the contiguous L interval around ``color``'s prototype L where the painted colour
    (prototype a, b at that L, sRGB-clipped, uint8) is still measured as ``color``'s category by the
    namer and, for chromatic colours, keeps at least ``min_chroma_ratio`` of the prototype's chroma
    (so a "green" is never painted near-black)."""
    proto = default_lexicon("extended").lab_of(color).numpy()
    grid = np.arange(0, 101, 1.0)
    painted = lab_to_rgb8(np.stack([grid, np.full_like(grid, proto[1]), np.full_like(grid, proto[2])], 1))
    namer = _namer()
    target = namer.categories.index(color_categories(color)[0])
    ok = namer.pixel_categories(painted) == target
    proto_chroma = float(np.hypot(proto[1], proto[2]))
    if proto_chroma >= 10:
        lab = rgb_to_lab(painted)
        ok &= np.hypot(lab[:, 1], lab[:, 2]) >= min_chroma_ratio * proto_chroma
    centre = int(np.clip(round(float(proto[0])), 0, 100))
    if not ok[centre]:
        return float(proto[0]), float(proto[0])
    lo = hi = centre
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    while hi < 100 and ok[hi + 1]:
        hi += 1
    return float(lo), float(hi)


@functools.lru_cache(maxsize=2)
def _namer(vocabulary: str = "natural") -> ColorNamer:
    return ColorNamer(vocabulary)


def _shape_mask(
    kind: str, size: int, cx: float, cy: float, r: float, theta: float, aspect: float
) -> np.ndarray:
    """Exact raster (pixel centres) of one shape: bool (size, size)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xs - cx, ys - cy
    cos, sin = math.cos(theta), math.sin(theta)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    if kind == "circle":
        return dx**2 + dy**2 <= r**2
    if kind == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if kind == "ellipse":
        return (u / r) ** 2 + (v / (r * aspect)) ** 2 <= 1
    if kind == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= r
    if kind == "cross":
        arm = 0.32 * r
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    from matplotlib.path import Path as PolygonPath

    if kind == "triangle":
        angles = theta + np.arange(3) * 2 * math.pi / 3 - math.pi / 2
        radii = np.full(3, r)
    elif kind == "star":
        angles = theta + np.arange(10) * math.pi / 5 - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    else:
        raise ValueError(f"shape kind {kind!r}; expected one of {SHAPES}.")
    vertices = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    inside = PolygonPath(vertices).contains_points(np.stack([xs.ravel(), ys.ravel()], 1))
    return inside.reshape(size, size)


def _background(config: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    size = config.image_size

    def random_lab(n):
        hue = rng.uniform(0, 2 * math.pi, n)
        chroma = rng.uniform(0, config.background_chroma, n)
        return np.stack([rng.uniform(15, 95, n), chroma * np.cos(hue), chroma * np.sin(hue)], 1)

    kind = config.backgrounds[rng.integers(len(config.backgrounds))]
    if kind == "solid":
        lab = np.broadcast_to(random_lab(1)[0], (size, size, 3))
    elif kind == "gradient":
        a, b = random_lab(2)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = np.clip((math.cos(angle) * (xs - 0.5) + math.sin(angle) * (ys - 0.5)) + 0.5, 0, 1)[..., None]
        lab = (1 - t) * a + t * b
    elif kind == "noise":
        cells = int(rng.integers(3, 7))
        from skimage.transform import resize

        lab = resize(
            random_lab(cells * cells).reshape(cells, cells, 3), (size, size, 3), order=3, mode="edge"
        )
    else:  # checker
        a, b = random_lab(2)
        cell = int(rng.integers(max(2, size // 16), max(3, size // 4) + 1))
        ys, xs = np.mgrid[0:size, 0:size] // cell
        lab = np.where(((xs + ys) % 2 == 0)[..., None], a, b)
    return lab_to_rgb8(lab), kind


def _paint_colors(config, color, mask, rng, u_coords, r) -> np.ndarray:
    """uint8 (k, 3) colours of the k pixels of ``mask``."""
    lexicon = default_lexicon("extended")
    proto_lab = lexicon.lab_of(color).numpy().astype(np.float64)
    lo, hi = stable_lightness(color)
    lightness = rng.uniform(lo, hi) if config.decorrelate_luminance else float(proto_lab[0])
    texture = "flat"
    if rng.random() < config.texture_prob:
        choices = [t for t in config.textures if t != "flat"] or ["flat"]
        texture = choices[rng.integers(len(choices))]
    count = int(mask.sum())
    if texture == "flat" and not config.decorrelate_luminance:
        proto_rgb = (lexicon.rgb[lexicon.words.index(color)].numpy() * 255).round().astype(np.uint8)
        return np.broadcast_to(proto_rgb, (count, 3))
    strength = config.texture_strength
    u = u_coords[mask]
    if texture == "stripes":
        period = rng.uniform(0.4, 0.9) * r
        offset = np.where(np.floor(u / period) % 2 == 0, strength, -strength) / 2
    elif texture == "gradient":
        offset = strength * np.clip(u / max(r, 1e-6), -1, 1)
    elif texture == "noise":
        offset = rng.normal(0, strength / 2, count)
    else:
        offset = np.zeros(count)
    values = np.clip(lightness + offset, lo, hi)
    lab = np.stack([values, np.full(count, proto_lab[1]), np.full(count, proto_lab[2])], 1)
    return lab_to_rgb8(lab)


def generate_scene(
    config: SyntheticConfig, seed: int, split: str = "train", phrasing: str | None = None
) -> dict:
    """One scene as a record row (not yet encoded; see :func:`mtcolor.records.encode_record`).

    Args:
        config: generator options.
        seed: the scene's seed (the scene is a pure function of ``config``, ``seed`` and ``split``).
        split: ``"train"`` never draws a ``holdout_pairs`` pair; any other split (``"test"``) forces
            its first object to one of them (when there are holdout pairs).
        phrasing: overrides ``config.phrasing`` (e.g. ``"language"`` for the held-out language
            split); the pixels and masks do not depend on it.

    Returns:
        dict with ``id`` ("synthetic-<seed>"), ``image`` (PIL RGB), ``width``, ``height``, ``masks``
        (bool ndarray (n, H, W), exact and disjoint, in paint order), ``instance_texts`` ("a red
        star"), ``instance_labels`` (shape names), ``instance_colors``, ``global_text``, ``source``,
        ``instance_captioners`` / ``global_captioner`` ("synthetic") and ``verification``
        ("agree": the colours are ground truth).
    """
    rng = np.random.default_rng(seed)
    size = config.image_size
    image, _ = _background(config, rng)
    image = image.copy()
    count = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    kinds = [config.shapes[i] for i in rng.integers(len(config.shapes), size=count)]
    if count >= 2 and rng.random() < config.same_kind_prob:
        kinds[1] = kinds[0]
    holdout = set(config.holdout_pairs)
    colors: list[str] = []
    for k, kind in enumerate(kinds):
        if k == 0 and split != "train" and config.holdout_pairs:
            color, kinds[0] = config.holdout_pairs[int(rng.integers(len(config.holdout_pairs)))]
            colors.append(color)
            continue
        allowed = [c for c in config.colors if split != "train" or (c, kind) not in holdout]
        if k == 1 and kinds[1] == kinds[0]:
            allowed = [c for c in allowed if c != colors[0]] or allowed
        colors.append(allowed[int(rng.integers(len(allowed)))])
    masks: list[np.ndarray] = []
    areas: list[int] = []
    placed: list[tuple[str, str]] = []
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    for kind, color in zip(kinds, colors):
        for _attempt in range(60):
            r = rng.uniform(*config.size_range) * size / 2
            cx, cy = rng.uniform(0.5 * r, size - 0.5 * r, 2)
            theta = rng.uniform(0, 2 * math.pi)
            full = _shape_mask(kind, size, cx, cy, r, theta, rng.uniform(0.45, 0.7))
            if full.sum() < config.min_visible_pixels:
                continue
            if all(
                (m & ~full).sum() >= max(config.min_visible_pixels, (1 - config.max_occlusion) * a)
                for m, a in zip(masks, areas)
            ):
                break
        else:
            continue
        u_coords = math.cos(theta) * (xs - cx) + math.sin(theta) * (ys - cy)
        image[full] = _paint_colors(config, color, full, rng, u_coords, r)
        masks = [m & ~full for m in masks]
        masks.append(full)
        areas.append(int(full.sum()))
        placed.append((color, kind))
    if config.noise_std > 0:
        noisy = image.astype(np.float32) + rng.normal(0, config.noise_std, image.shape)
        image = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    from PIL import Image

    namer = _namer()
    background = ~np.any(np.stack(masks), 0) if masks else np.ones((size, size), bool)
    background_color = namer.name(namer.measure(image, background)) if background.any() else None
    phrasing = config.phrasing if phrasing is None else phrasing
    if phrasing == "plain":
        texts = [instance_phrase(c, k) for c, k in placed]
        global_text = compose_global_text(describe_scheme(image, namer), placed, max_objects=None)
        if background_color and placed:
            global_text = global_text[:-1] + f" on {instance_phrase(background_color, 'background')}."
    else:  # a separate stream, so the scene's pixels never depend on the phrasing
        words = np.random.default_rng([seed, 1])
        texts = [phrase(c, k, phrasing, words) for c, k in placed]
        # the background in basic colour terms, so no training text uses a language-split word (navy, ivory)
        basic = _namer("basic")
        background_word = basic.name(basic.measure(image, background)) if background.any() else None
        global_text = scene_text(texts, background_word)
    n = len(placed)
    return {
        "id": f"synthetic-{seed}",
        "image": Image.fromarray(image),
        "width": size,
        "height": size,
        "masks": np.stack(masks) if masks else np.zeros((0, size, size), bool),
        "instance_texts": texts,
        "instance_labels": [k for _, k in placed],
        "instance_colors": [c for c, _ in placed],
        "global_text": global_text,
        "source": f"synthetic:seed={seed}:split={split}",
        "instance_captioners": ["synthetic"] * n,
        "global_captioner": "synthetic",
        "verification": ["agree"] * n,
    }
