"""Colour adherence: does each instance have the colour its text names? (reference-free, offline)

For every instance whose text names exactly one colour word ``w`` of the lexicon
(:func:`mtcolor.lexicon.default_lexicon`, XKCD-survey prototypes), the instance's measured colour
is compared in CIE Lab with ``w``'s prototype ``P = (L_w, a_w, b_w)`` (chroma ``C_w``):

1. **Achromatic words** (``C_w < achromatic_chroma``: black, white, gray, silver): the measured
   colour ``m`` is the component-wise median of (L, a, b) over all the instance's pixels and
   ``d = sqrt((lambda_A (L_m - L_w))^2 + (a_m - a_w)^2 + (b_m - b_w)^2)`` with
   ``lambda_A = achromatic_lightness_weight``: lightness separates white / gray / black, and any
   chroma counts against the word.
2. **Chromatic words**: pixels with chroma ``sqrt(a^2 + b^2) < c_0 = min(achromatic_chroma,
   C_w / 2)`` are near-achromatic (highlights, shadows, the windows of a "red car") and are
   ignored *if* the other (chromatic) pixels make up at least ``min_chromatic_share`` of the
   instance; ``m`` is then the component-wise median of (L, a, b) over the chromatic pixels.
   Otherwise (a mostly gray instance) ``m`` is the median over all pixels. The reference keeps the
   word's hue and is **gamut-aware**: its chroma is scaled by the largest ``s`` in (0, 1] for which
   ``(L_m, s a_w, s b_w)`` is inside the sRGB gamut (a red at lightness 85 cannot be as saturated
   as the prototype red at lightness 48), and
   ``d = sqrt((lambda_C (L_m - L_w))^2 + (a_m - s a_w)^2 + (b_m - s b_w)^2)`` with
   ``lambda_C = lightness_weight``, small because a colorizer that keeps the input's luminance
   cannot choose L: hue and chroma decide.

An instance **agrees** with its text when ``d <= tolerance`` and, for a chromatic word, its
measured chroma is at least ``c_0`` (near black or near white the gamut leaves almost no chroma,
so without this a black object would "match" any chromatic word). Reported: per-instance
distances and flags, the accuracy (share of agreeing instances) and the mean distance. Texts with
no colour word or with several different colour words ("a red and white bus"), and instances with
fewer than ``min_pixels`` pixels, are skipped and listed with the reason.

Painting an instance with ``lexicon.rgb[word]`` gives ``d = 0``. Defaults, chosen on synthetic
instances (``docs/metrics.md``): ``tolerance = 20``, ``lightness_weight = 0.25``,
``achromatic_lightness_weight = 0.75``, ``achromatic_chroma = 10``, ``min_chromatic_share = 0.2``.
With them, each basic chromatic word painted with its own hue at a random lightness in [20, 90]
(decorrelated luminance) agrees with its word in 95% of cases, and another basic word is accepted
in 3% of (instance, word) pairs, mostly the physically close pairs orange/red and brown/orange
(brown *is* a dark orange); painted at the prototype's own lightness, only brown is also accepted
as orange.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from ..color import rgb_to_lab
from ..lexicon import ColorLexicon, default_lexicon
from ._inputs import check_images, check_instance_count, check_label_maps, check_texts


@dataclass(frozen=True)
class InstanceAdherence:
    """The adherence measurement of one instance.

    Attributes:
        image_index: index of the image in the batch.
        instance: the instance label (1-based).
        text: the instance text.
        word: the canonical colour word it names (None when skipped for that reason).
        measured: measured Lab (L, a, b) of the instance.
        reference: the gamut-aware reference Lab the distance is taken to.
        distance: ``d`` as defined in the module docstring.
        agrees: ``distance <= tolerance``.
        chromatic_share: share of the instance's pixels above the near-achromatic chroma threshold.
        pixels: the instance's pixel count.
    """

    image_index: int
    instance: int
    text: str
    word: str
    measured: tuple[float, float, float]
    reference: tuple[float, float, float]
    distance: float
    agrees: bool
    chromatic_share: float
    pixels: int


@dataclass
class AdherenceResult:
    """Colour adherence of a batch (or of a subset of its instances, see :meth:`where`).

    Attributes:
        instances: the evaluated instances.
        skipped: ``(image_index, instance, reason)`` for instances that were not evaluated.
        tolerance: the agreement tolerance used.
        batch_size: number of images evaluated.
    """

    instances: list[InstanceAdherence]
    skipped: list[tuple[int, int, str]] = field(default_factory=list)
    tolerance: float = 20.0
    batch_size: int = 0

    @property
    def distances(self) -> torch.Tensor:
        """(N,) float tensor of per-instance distances."""
        return torch.tensor([i.distance for i in self.instances], dtype=torch.float32)

    @property
    def agrees(self) -> torch.Tensor:
        """(N,) bool tensor of per-instance agreement flags."""
        return torch.tensor([i.agrees for i in self.instances], dtype=torch.bool)

    @property
    def accuracy(self) -> float:
        """Share of evaluated instances within the tolerance (NaN if none was evaluated)."""
        return float(self.agrees.float().mean()) if self.instances else float("nan")

    @property
    def mean_distance(self) -> float:
        """Mean distance over evaluated instances (NaN if none was evaluated)."""
        return float(self.distances.mean()) if self.instances else float("nan")

    def per_image_accuracy(self) -> torch.Tensor:
        """(B,) accuracy of each image's evaluated instances (NaN for images without any)."""
        hits = torch.zeros(self.batch_size, dtype=torch.float64)
        count = torch.zeros(self.batch_size, dtype=torch.float64)
        for item in self.instances:
            hits[item.image_index] += float(item.agrees)
            count[item.image_index] += 1
        return (hits / count).float()

    def where(self, predicate: Callable[[InstanceAdherence], bool]) -> AdherenceResult:
        """The result restricted to the instances for which ``predicate(instance)`` is true.

        E.g. held-out colour-object pairs:
        ``result.where(lambda r: (r.word, label_of[r.image_index][r.instance - 1]) in held_out)``.
        """
        return replace(self, instances=[i for i in self.instances if predicate(i)])

    def to_dict(self) -> dict:
        """JSON-ready summary with the per-instance records."""
        return {
            "accuracy": self.accuracy,
            "mean_distance": self.mean_distance,
            "tolerance": self.tolerance,
            "evaluated": len(self.instances),
            "skipped": len(self.skipped),
            "instances": [
                {
                    "image_index": i.image_index,
                    "instance": i.instance,
                    "text": i.text,
                    "word": i.word,
                    "measured_lab": list(i.measured),
                    "reference_lab": list(i.reference),
                    "distance": i.distance,
                    "agrees": i.agrees,
                }
                for i in self.instances
            ],
        }


def max_chroma_scale(lightness: torch.Tensor, ab: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Largest ``s`` in [0, 1] with Lab ``(L, s a, s b)`` inside the sRGB gamut, by bisection.

    Args:
        lightness: (N,) L values in [0, 100].
        ab: (N, 2) chroma directions.

    Returns:
        (N,) scales (1 when the full chroma is already in gamut; 0 at L = 0 or 100 for any ab != 0).
    """
    import kornia.color

    lo = torch.zeros_like(lightness)
    hi = torch.ones_like(lightness)

    def inside(scale):
        lab = torch.stack([lightness, scale * ab[:, 0], scale * ab[:, 1]], -1)  # (N, 3)
        rgb = kornia.color.lab_to_rgb(lab[..., None, None], clip=False)[..., 0, 0]
        return ((rgb >= -1e-4) & (rgb <= 1 + 1e-4)).all(-1)

    full = inside(hi)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        ok = inside(mid)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return torch.where(full, torch.ones_like(lo), lo)


def single_color_word(text: str, lexicon: ColorLexicon | None = None) -> tuple[str | None, str]:
    """The one canonical colour word ``text`` names, else ``(None, reason)``: ``"no colour word"`` or
    ``"several colour words [...]"`` (``"a red and white bus"``)."""
    lexicon = lexicon or default_lexicon()
    words = list(dict.fromkeys(match.word for match in lexicon.find(text)))
    if not words:
        return None, "no colour word"
    if len(words) > 1:
        return None, f"several colour words {words}"
    return words[0], ""


@dataclass(frozen=True)
class WordMatch:
    """How a region's colour compares with one colour word (definition: module docstring).

    Attributes:
        word: the canonical colour word.
        measured: measured Lab (L, a, b) of the region.
        reference: the gamut-aware reference Lab the distance is taken to.
        distance: ``d``.
        agrees: ``d <= tolerance`` (and, for a chromatic word, measured chroma >= ``c_0``).
        chromatic_share: share of the region's pixels above the near-achromatic chroma threshold.
    """

    word: str
    measured: tuple[float, float, float]
    reference: tuple[float, float, float]
    distance: float
    agrees: bool
    chromatic_share: float


def match_color_word(
    lab: torch.Tensor,
    word: str,
    tolerance: float = 20.0,
    *,
    lexicon: ColorLexicon | None = None,
    lightness_weight: float = 0.25,
    achromatic_lightness_weight: float = 0.75,
    achromatic_chroma: float = 10.0,
    min_chromatic_share: float = 0.2,
) -> WordMatch:
    """Does a region have the colour ``word`` names? The project's one colour-word matcher: the
    adherence metric scores each instance with it and the dataset builder's verifier
    (:class:`mtcolor.dataset_builder.verification.Verifier`) checks instance texts with it, so the two
    cannot disagree on an instance.

    Args:
        lab: (3, n) Lab values of the region's pixels (L in [0, 100]), n >= 1.
        word: a colour word of ``lexicon`` (any spelling variant).
        tolerance, lightness_weight, achromatic_lightness_weight, achromatic_chroma,
        min_chromatic_share: see the module docstring.

    Returns:
        :class:`WordMatch`.
    """
    lexicon = lexicon or default_lexicon()
    word = lexicon.canonical(word)
    prototype = lexicon.lab_of(word).to(lab)
    proto_chroma = float(torch.hypot(prototype[1], prototype[2]))
    chroma = torch.hypot(lab[1], lab[2])
    if proto_chroma < achromatic_chroma:
        threshold, weight = achromatic_chroma, achromatic_lightness_weight
        share = float((chroma >= threshold).float().mean())
        measured = lab.median(dim=1).values
        reference = prototype
    else:
        threshold, weight = min(achromatic_chroma, proto_chroma / 2), lightness_weight
        chromatic = chroma >= threshold
        share = float(chromatic.float().mean())
        chosen = lab[:, chromatic] if share >= min_chromatic_share else lab
        measured = chosen.median(dim=1).values
        scale = max_chroma_scale(measured[:1].cpu().float(), prototype[1:].cpu().float()[None])[0].to(lab)
        reference = torch.stack([prototype[0], scale * prototype[1], scale * prototype[2]])
    delta = measured - reference
    distance = float(torch.sqrt((weight * delta[0]) ** 2 + delta[1] ** 2 + delta[2] ** 2))
    measured_chroma = float(torch.hypot(measured[1], measured[2]))
    agrees = distance <= tolerance and (proto_chroma < achromatic_chroma or measured_chroma >= threshold)
    return WordMatch(
        word=word,
        measured=tuple(round(float(v), 4) for v in measured),
        reference=tuple(round(float(v), 4) for v in reference),
        distance=distance,
        agrees=agrees,
        chromatic_share=share,
    )


def pixels_to_lab(rgb) -> torch.Tensor:
    """uint8 sRGB pixels (N, 3) -> (3, N) Lab, with the same conversion as the metric's images
    (:func:`mtcolor.color.rgb_to_lab`)."""
    pixels = torch.as_tensor(rgb).reshape(-1, 3).to(torch.float32) / 255.0  # (N, 3) in [0, 1]
    return rgb_to_lab(pixels.T[None, :, None, :])[0, :, 0, :]  # (3, N)


def color_adherence(
    images: torch.Tensor,
    label_maps,
    instance_texts,
    tolerance: float = 20.0,
    *,
    instance_colors=None,
    lexicon: ColorLexicon | None = None,
    lightness_weight: float = 0.25,
    achromatic_lightness_weight: float = 0.75,
    achromatic_chroma: float = 10.0,
    min_chromatic_share: float = 0.2,
    min_pixels: int = 16,
) -> AdherenceResult:
    """Colour adherence of each instance to the colour word of its text (definition: module docstring).

    Args:
        images: sRGB (B, 3, H, W) in [0, 1].
        label_maps: (B, H, W) int tensor or B tensors (H, W): 0 = background, k = instance k.
        instance_texts: per image, one text per instance (``instance_texts[b][k - 1]`` is label k's).
        tolerance: agreement threshold on the distance (Lab units).
        instance_colors: optional per-image lists of canonical colour words ("" = none) used instead
            of parsing the texts (e.g. the records' ``instance_colors``).
        lexicon: the colour lexicon (default: the shared extended lexicon).
        lightness_weight, achromatic_lightness_weight, achromatic_chroma, min_chromatic_share,
        min_pixels: see the module docstring.

    Returns:
        :class:`AdherenceResult` with per-instance records, ``accuracy`` and ``mean_distance``.
    """
    images = check_images(images, "images", channels=(3,))
    maps = check_label_maps(label_maps, images)
    texts = check_texts(instance_texts, images.shape[0], "instance_texts")
    colors = (
        None if instance_colors is None else check_texts(instance_colors, images.shape[0], "instance_colors")
    )
    if not tolerance > 0:
        raise ValueError(f"tolerance={tolerance!r}; it must be a positive Lab distance (default 20).")
    lexicon = lexicon or default_lexicon()
    lab_images = rgb_to_lab(images.float())  # (B, 3, H, W)
    instances, skipped = [], []
    for index, (lab, label_map, items) in enumerate(zip(lab_images, maps, texts)):
        check_instance_count(label_map, len(items), index, "instance_texts")
        if colors is not None and len(colors[index]) != len(items):
            raise ValueError(
                f"instance_colors[{index}] has {len(colors[index])} entries but instance_texts[{index}] has {len(items)}."
            )
        pixels = lab.flatten(1)  # (3, H*W)
        flat_labels = label_map.flatten()
        for label, text in enumerate(items, start=1):
            if colors is not None:
                word = lexicon.canonical(colors[index][label - 1]) or None
                reason = (
                    "no colour word"
                    if word is None
                    else ("" if word in lexicon else f"unknown colour {word!r}")
                )
                word = word if not reason else None
            else:
                word, reason = single_color_word(text, lexicon)
            values = pixels[:, flat_labels == label]  # (3, n)
            if word is None:
                skipped.append((index, label, reason))
                continue
            if values.shape[1] < min_pixels:
                skipped.append((index, label, f"{values.shape[1]} pixels < min_pixels={min_pixels}"))
                continue
            match = match_color_word(
                values,
                word,
                tolerance,
                lexicon=lexicon,
                lightness_weight=lightness_weight,
                achromatic_lightness_weight=achromatic_lightness_weight,
                achromatic_chroma=achromatic_chroma,
                min_chromatic_share=min_chromatic_share,
            )
            instances.append(
                InstanceAdherence(
                    image_index=index, instance=label, text=text, pixels=int(values.shape[1]), **vars(match)
                )
            )
    return AdherenceResult(instances, skipped, float(tolerance), images.shape[0])
