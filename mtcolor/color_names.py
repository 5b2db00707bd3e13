"""Measuring and naming colours: shared by the synthetic generator, the demo, and the dataset builder's
rule-based captioner and verifier.

Measurement (:meth:`ColorNamer.measure`): the instance's pixels (a deterministic subsample of at most
``max_pixels``) are converted to CIE Lab (kornia, D65) and each pixel gets its nearest word of the
*measurement* lexicon (the 154-word ``"extended"`` lexicon of :mod:`mtcolor.lexicon`, CIE76 distance).
Words vote for their **basic colour category** (the eleven Berlin & Kay terms: "light blue" and
"navy" vote for blue, "maroon" for red ...). A category holding at least ``min_share`` of the pixels
is a *cluster*, described by its pixel share and the mean Lab of its pixels. The dominant colour is
the largest cluster.

Naming (:meth:`ColorNamer.name`): the dominant cluster's mean Lab is named by its nearest word of
the *naming* vocabulary among the words of that category, so a pale sky is "light blue" (not
"white", which a plain nearest-basic-prototype rule would say, the XKCD basic prototypes being very
saturated) and a pure prototype colour gets its own name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .lexicon import BASIC_COLORS, ColorLexicon, default_lexicon

#: Basic categories of the non-basic words of the extended lexicon (first = the category a pixel of
#: that colour votes for; any listed one counts as agreement when the word appears in a text).
EXTRA_CATEGORIES: dict[str, tuple[str, ...]] = {
    "cyan": ("blue", "green"), "teal": ("green", "blue"), "navy": ("blue",), "beige": ("brown", "white"),
    "gold": ("yellow", "orange"), "silver": ("gray", "white"), "maroon": ("red", "brown"),
    "olive": ("green", "brown"), "turquoise": ("blue", "green"), "magenta": ("pink", "purple"),
    "violet": ("purple",), "tan": ("brown",), "cream": ("white", "yellow"), "khaki": ("brown", "green"),
    "lime": ("green", "yellow"), "indigo": ("blue", "purple"), "lavender": ("purple", "pink"),
    "peach": ("orange", "pink"), "salmon": ("pink", "orange"), "burgundy": ("red", "purple"),
    "coral": ("pink", "orange", "red"), "mustard": ("yellow", "brown"), "crimson": ("red",),
    "aqua": ("blue", "green"), "mauve": ("purple", "pink"), "lilac": ("purple", "pink"),
    "rust": ("orange", "brown", "red"), "ochre": ("yellow", "brown", "orange"), "tangerine": ("orange",),
}  # fmt: skip
#: Words the rule-based namer may output (besides the basic terms): common, unambiguous names.
NATURAL_EXTRAS = (
    "navy", "beige", "teal", "gold", "silver", "tan", "maroon", "olive", "cream", "turquoise", "lavender",
    "cyan", "magenta", "khaki",
)  # fmt: skip
_CHROMATIC = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
#: The basic colour categories in the order of :attr:`ColorNamer.categories` (pixel votes index it).
CATEGORIES = tuple(sorted(BASIC_COLORS))
#: Neutral anchors of the natural naming vocabulary (without them dark neutral pixels would be named
#: "dark teal"); the shared lexicon spells them "gray" like every other gray word.
NEUTRAL_ANCHORS = ("dark gray", "light gray")


def color_categories(word: str) -> tuple[str, ...]:
    """Basic categories of a colour word: ``"light blue"`` -> ("blue",), ``"teal"`` -> ("green", "blue")."""
    word = default_lexicon("extended").canonical(word)
    if word in BASIC_COLORS:
        return (word,)
    head = word.split()[-1].replace("grey", "gray")
    if head in BASIC_COLORS:
        return (head,)
    if head in EXTRA_CATEGORIES:
        return EXTRA_CATEGORIES[head]
    raise KeyError(f"{word!r} has no basic colour category; add it to EXTRA_CATEGORIES.")


@functools.lru_cache(maxsize=1)
def measurement_lexicon() -> ColorLexicon:
    """The per-pixel vocabulary: the extended lexicon (which includes :data:`NEUTRAL_ANCHORS`)."""
    return default_lexicon("extended")


@functools.lru_cache(maxsize=4)
def naming_lexicon(vocabulary: str = "natural") -> ColorLexicon:
    """The vocabulary the namer outputs: ``"basic"``, ``"extended"`` or ``"natural"`` (basic + light/dark
    variants of the chromatic basics + :data:`NATURAL_EXTRAS`)."""
    if vocabulary == "basic":
        return default_lexicon(vocabulary)
    if vocabulary == "extended":
        return measurement_lexicon()
    if vocabulary != "natural":
        raise ValueError(f"vocabulary={vocabulary!r}; expected 'natural', 'basic' or 'extended'.")
    extended = default_lexicon("extended")
    words = (
        list(BASIC_COLORS)
        + [f"{m} {c}" for m in ("light", "dark") for c in _CHROMATIC]
        + list(NATURAL_EXTRAS)
    )
    return ColorLexicon([w for w in words if w in extended] + list(NEUTRAL_ANCHORS))


@dataclass(frozen=True)
class ColorCluster:
    """Pixels of one basic colour category: ``share`` of the measured pixels, mean ``lab`` (L, a, b)."""

    category: str
    share: float
    lab: tuple[float, float, float]


@dataclass(frozen=True)
class ColorMeasurement:
    """What the pixels of a region look like: clusters sorted by share (largest first).

    Attributes:
        num_pixels: measured pixels (a deterministic subsample of at most ``max_pixels``).
        clusters: basic categories holding at least ``min_share`` of them.
        pixels: the measured pixels, uint8 (num_pixels, 3) sRGB (None for a measurement built by hand).
        pixel_categories: each measured pixel's basic category, uint8 (num_pixels,) index into
            :data:`CATEGORIES`.
    """

    num_pixels: int
    clusters: tuple[ColorCluster, ...]
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)
    pixel_categories: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def dominant(self) -> ColorCluster | None:
        return self.clusters[0] if self.clusters else None

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(c.category for c in self.clusters)

    def pixels_of(self, category: str) -> np.ndarray:
        """uint8 (n, 3) measured pixels whose basic category is ``category``."""
        if self.pixels is None or self.pixel_categories is None:
            return np.zeros((0, 3), np.uint8)
        return self.pixels[self.pixel_categories == CATEGORIES.index(category)]


def sample_pixels(image: np.ndarray, mask: np.ndarray | None, max_pixels: int) -> np.ndarray:
    """Deterministic subsample of the pixels under ``mask``.

    Args:
        image: uint8 (H, W, 3).
        mask: bool (H, W) or None for every pixel.
        max_pixels: at most this many pixels, evenly spaced in raster order.

    Returns:
        uint8 (N, 3).
    """
    flat = image.reshape(-1, 3)
    index = np.flatnonzero(mask.reshape(-1)) if mask is not None else np.arange(flat.shape[0])
    if index.size > max_pixels:
        index = index[np.linspace(0, index.size - 1, max_pixels).round().astype(np.int64)]
    return flat[index]


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) (uint8, or float in [0, 1]) -> CIE Lab (..., 3) float32 (D65; scikit-image, which
    agrees with kornia's conversion of :mod:`mtcolor.color` to 1e-4 and stays fast on small arrays)."""
    from skimage.color import rgb2lab

    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        rgb = rgb.astype(np.float32) / 255.0
    if rgb.size == 0:
        return np.zeros(rgb.shape, np.float32)
    return rgb2lab(rgb.reshape(-1, 1, 3)).reshape(rgb.shape).astype(np.float32)


def lab_to_rgb8(lab: np.ndarray) -> np.ndarray:
    """CIE Lab (..., 3) -> sRGB uint8 (..., 3), clipped to the gamut (scikit-image)."""
    import warnings

    from skimage.color import lab2rgb

    lab = np.asarray(lab, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "negative Z values clipped" (out-of-gamut colours)
        rgb = lab2rgb(lab.reshape(-1, 1, 3)).reshape(lab.shape)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _nearest(lab: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Index of the nearest prototype (CIE76) for each Lab colour (N, 3), computed in chunks."""
    lab = np.asarray(lab, dtype=np.float32).reshape(-1, 3)
    squared = (prototypes**2).sum(1)
    out = np.empty(lab.shape[0], dtype=np.int64)
    for start in range(0, lab.shape[0], 65536):
        chunk = lab[start : start + 65536]
        out[start : start + 65536] = (squared[None] - 2.0 * chunk @ prototypes.T).argmin(1)
    return out


_LUT_BITS = 6  # 64 levels per channel: 262,144 bins, quantisation error <= 2 uint8 levels


@functools.lru_cache(maxsize=1)
def _word_lut() -> np.ndarray:
    """Nearest measurement-lexicon word of every RGB bin centre (a lookup table).

    Built once (about a second) and cached in ``$MTCOLOR_CACHE`` (default ``~/.cache/mtcolor``) under
    a name that hashes the prototypes, so worker processes load it in milliseconds.
    """
    import hashlib
    import os
    from pathlib import Path

    prototypes = measurement_lexicon().lab.numpy().astype(np.float32)
    digest = hashlib.sha256(prototypes.tobytes() + bytes([_LUT_BITS])).hexdigest()[:16]
    path = (
        Path(os.environ.get("MTCOLOR_CACHE", Path.home() / ".cache" / "mtcolor")) / f"color_lut_{digest}.npy"
    )
    try:
        table = np.load(path)
        if table.shape == (1 << (3 * _LUT_BITS),) and table.dtype == np.uint8:
            return table
    except (OSError, ValueError):
        pass
    levels = 1 << _LUT_BITS
    step = 256 // levels
    centres = (np.arange(levels, dtype=np.float32) * step + (step - 1) / 2.0) / 255.0
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3)
    table = _nearest(rgb_to_lab(grid), prototypes).astype(np.uint8)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, table)
        os.replace(tmp, path)
    except OSError:  # a read-only home: keep the table in memory only
        pass
    return table


class ColorNamer:
    """Measure the colours of a region and name its dominant colour.

    Per-pixel naming uses a lookup table from 6-bit-per-channel RGB bins to the nearest word (exact
    up to the bin's quantisation); cluster colours are the exact mean Lab of their pixels.

    Args:
        naming_vocabulary: words the namer outputs (see :func:`naming_lexicon`).
        min_share: a basic category needs this fraction of the pixels to count as a cluster.
        max_pixels: pixels measured per region (a deterministic, evenly spaced subsample).
    """

    def __init__(self, naming_vocabulary: str = "natural", min_share: float = 0.2, max_pixels: int = 4096):
        if not 0 < min_share <= 1:
            raise ValueError(f"min_share={min_share}; expected a fraction in (0, 1].")
        if max_pixels < 1:
            raise ValueError(f"max_pixels={max_pixels}; expected a positive pixel count.")
        self.min_share = float(min_share)
        self.max_pixels = int(max_pixels)
        self.measure_lexicon = measurement_lexicon()
        self.naming = naming_lexicon(naming_vocabulary)
        self.categories = list(CATEGORIES)
        index = {c: i for i, c in enumerate(self.categories)}
        # Pixel vote of every measurement word: its first category.
        self._word_category = np.array([index[color_categories(w)[0]] for w in self.measure_lexicon.words])
        self._naming_words: dict[str, tuple[list[str], np.ndarray]] = {}
        for category in self.categories:
            words = [w for w in self.naming.words if color_categories(w)[0] == category]
            self._naming_words[category] = (words, np.stack([self.naming.lab_of(w).numpy() for w in words]))

    def pixel_categories(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB pixels (N, 3) -> index into :attr:`categories` (N,) of each pixel's nearest word."""
        rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3) >> (8 - _LUT_BITS)
        bins = (
            (rgb[:, 0].astype(np.int64) << (2 * _LUT_BITS))
            | (rgb[:, 1].astype(np.int64) << _LUT_BITS)
            | rgb[:, 2]
        )
        return self._word_category[_word_lut()[bins]]

    def measure_pixels(self, rgb: np.ndarray) -> ColorMeasurement:
        """Measure uint8 RGB pixels (N, 3)."""
        rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        n = int(rgb.shape[0])
        if n == 0:
            return ColorMeasurement(0, (), rgb, np.zeros(0, np.uint8))
        votes = self.pixel_categories(rgb)
        counts = np.bincount(votes, minlength=len(self.categories))
        order = np.argsort(-counts, kind="stable")
        clusters = []
        for index in order:
            share = counts[index] / n
            if share < self.min_share:
                break
            mean = rgb_to_lab(rgb[votes == index]).mean(0)
            clusters.append(
                ColorCluster(self.categories[index], float(share), tuple(round(float(v), 3) for v in mean))
            )
        return ColorMeasurement(n, tuple(clusters), rgb, votes.astype(np.uint8))

    def measure(self, image: np.ndarray, mask: np.ndarray | None = None) -> ColorMeasurement:
        """Measure the pixels of ``image`` (uint8 (H, W, 3)) under ``mask`` (bool (H, W), None = all)."""
        return self.measure_pixels(sample_pixels(image, mask, self.max_pixels))

    def name_cluster(self, cluster: ColorCluster) -> str:
        """The naming word nearest to the cluster's mean Lab among the words of its category."""
        words, prototypes = self._naming_words[cluster.category]
        return words[int(_nearest(np.asarray(cluster.lab), prototypes)[0])]

    def name(self, measurement: ColorMeasurement) -> str | None:
        """Name of the dominant colour, or None when nothing was measured (or no category reaches
        ``min_share``)."""
        return self.name_cluster(measurement.dominant) if measurement.dominant else None


# ------------------------------------------------------------------------------------------ phrasing
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_IRREGULAR = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice", "foot": "feet",
    "tooth": "teeth", "sheep": "sheep", "deer": "deer", "fish": "fish", "knife": "knives", "leaf": "leaves",
    "shelf": "shelves", "wolf": "wolves", "scarf": "scarves", "goose": "geese", "ox": "oxen",
}  # fmt: skip


def article(phrase: str) -> str:
    """``"a"`` or ``"an"`` for the phrase that follows (by its first letter)."""
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def pluralize(noun: str) -> str:
    """Plural of a (possibly multi-word) English noun: the last word is inflected."""
    *head, last = noun.split(" ")
    lower = last.lower()
    if lower in _IRREGULAR:
        plural = _IRREGULAR[lower]
    elif lower.endswith(("s", "x", "z", "ch", "sh")):
        plural = last if lower.endswith("s") else last + "es"
    elif lower.endswith("y") and lower[-2:-1] not in ("a", "e", "i", "o", "u"):
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return " ".join([*head, plural])


def instance_phrase(color: str, label: str) -> str:
    """``("red", "apple")`` -> ``"a red apple"``."""
    return f"{article(color)} {color} {label}"


def join_words(items: list[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def enumerate_objects(pairs: list[tuple[str, str]], max_objects: int | None = None) -> str:
    """(colour, label) pairs -> "a red apple, two green leaves and a brown table".

    Identical pairs are counted ("two green leaves"), the order of first appearance is kept, and at
    most ``max_objects`` distinct phrases are listed ("... and other objects" ends a longer list).
    """
    counts: dict[tuple[str, str], int] = {}
    for pair in pairs:
        counts[pair] = counts.get(pair, 0) + 1
    phrases = []
    for (color, label), count in counts.items():
        if count == 1:
            phrases.append(instance_phrase(color, label) if color else f"{article(label)} {label}")
        else:
            number = _NUMBERS[count] if count < len(_NUMBERS) else str(count)
            phrases.append(" ".join(w for w in (number, color, pluralize(label)) if w))
    if max_objects is not None and len(phrases) > max_objects:
        phrases = phrases[:max_objects] + ["other objects"]
    return join_words(phrases)


def describe_scheme(image: np.ndarray, namer: ColorNamer, max_pixels: int = 16384) -> str:
    """One sentence on an image's overall colour scheme.

    From the Lab pixels (subsampled): mean L gives "bright" (> 65) / "dark" (< 35); mean chroma
    C = sqrt(a^2 + b^2) gives "nearly monochrome" (< 6), "muted" (< 15), "vivid" (> 35) colours; the
    chroma-weighted share of warm hues (hue angle in [-20, 100] degrees: reds to yellows) gives
    "warm-toned" (> 0.65) or "cool-toned" (< 0.35); the basic categories holding >= 15% of the pixels
    are listed as dominant. Example: "A bright, warm-toned image with vivid colors, dominated by red
    and yellow."

    Args:
        image: uint8 (H, W, 3).
    """
    pixels = sample_pixels(image, None, max_pixels)
    lab = rgb_to_lab(pixels)
    lightness = float(lab[:, 0].mean())
    chroma = np.linalg.norm(lab[:, 1:], axis=1)
    mean_chroma = float(chroma.mean())
    hue = np.degrees(np.arctan2(lab[:, 2], lab[:, 1]))
    warm = (hue >= -20) & (hue <= 100)
    warm_share = float((chroma * warm).sum() / max(float(chroma.sum()), 1e-6))
    adjectives = []
    if lightness > 65:
        adjectives.append("bright")
    elif lightness < 35:
        adjectives.append("dark")
    if mean_chroma >= 6:
        if warm_share > 0.65:
            adjectives.append("warm-toned")
        elif warm_share < 0.35:
            adjectives.append("cool-toned")
    if mean_chroma < 6:
        quality = "nearly monochrome colors"
    elif mean_chroma < 15:
        quality = "muted colors"
    elif mean_chroma > 35:
        quality = "vivid colors"
    else:
        quality = "natural colors"
    described = ", ".join(adjectives) + " image" if adjectives else "image"
    sentence = f"{article(described)} {described} with {quality}"
    shares = np.bincount(namer.pixel_categories(pixels), minlength=len(namer.categories)) / max(
        len(pixels), 1
    )
    dominant = [namer.categories[i] for i in np.argsort(-shares, kind="stable") if shares[i] >= 0.15][:3]
    if dominant:
        sentence += f", dominated by {join_words(dominant)}"
    return sentence[0].upper() + sentence[1:] + "."


def compose_global_text(scheme: str, pairs: list[tuple[str, str]], max_objects: int | None = 12) -> str:
    """Scheme sentence + enumeration: "A bright image with vivid colors, dominated by red. The image
    shows a red apple and two green leaves."."""
    if not pairs:
        return scheme
    return f"{scheme} The image shows {enumerate_objects(pairs, max_objects)}."


def color_phrase(text: str, lexicon: ColorLexicon | None = None) -> str:
    """The colour part of a phrase: "a dark gray chair" -> "dark gray", "a red and white bus" ->
    "red and white" (from the first to the last colour word, with a preceding light/dark/pale/
    bright/deep modifier)."""
    lexicon = lexicon or default_lexicon("extended")
    matches = lexicon.find(text)
    if not matches:
        return ""
    start = matches[0].start
    before = text[:start].rstrip().rsplit(" ", 1)[-1].lower()
    if before in ("light", "dark", "pale", "bright", "deep"):
        start = text.lower().rindex(before, 0, start)
    return " ".join(text[start : matches[-1].end].split()).lower()


def strip_color_words(text: str, lexicon: ColorLexicon | None = None) -> str:
    """Remove colour words, leading articles and punctuation: "A red apple." -> "apple"."""
    lexicon = lexicon or default_lexicon("extended")
    pieces, last = [], 0
    for match in lexicon.find(text):
        pieces.append(text[last : match.start])
        last = match.end
    pieces.append(text[last:])
    words = " ".join("".join(pieces).split()).strip(" .,;:!\"'").split()
    while words and words[0].lower() in (
        "a",
        "an",
        "the",
        "one",
        "and",
        "light",
        "dark",
        "pale",
        "bright",
        "deep",
    ):
        words = words[1:]
    words = [w for w in words if w.lower() not in ("and", "colored", "coloured")]
    return " ".join(words).strip(" .,;:!\"'").lower()
