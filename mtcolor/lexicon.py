"""Colour words <-> Lab prototypes: detection, naming and replacement of colour words.

The prototypes are the XKCD colour-survey colours shipped with matplotlib
(``matplotlib._color_data.XKCD_COLORS``: the sRGB colour most people called by that name), so
"red" means what people mean by red. Two vocabularies:

* ``"basic"``: the eleven basic colour terms of Berlin & Kay (black, white, gray, red, orange,
  yellow, green, blue, purple, pink, brown), used for naming measured colours, and
* ``"extended"`` (default for *detection*): basic + common colour words (navy, teal, beige ...) and
  ``light`` / ``dark`` variants present in the XKCD table.

Spelling variants map to one canonical word (``grey`` -> ``gray``).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

import torch

BASIC_COLORS = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray",
)  # fmt: skip
EXTRA_COLORS = (
    "cyan", "teal", "navy", "beige", "gold", "silver", "maroon", "olive", "turquoise", "magenta",
    "violet", "tan", "cream", "khaki", "lime", "indigo", "lavender", "peach", "salmon", "burgundy",
    "coral", "mustard", "crimson", "aqua", "mauve", "lilac", "rust", "ochre", "tangerine",
)  # fmt: skip
MODIFIERS = ("light", "dark", "pale", "bright", "deep")
SYNONYMS = {"golden": "gold", "navy blue": "navy"}  # plus "grey" -> "gray" inside any word


def _xkcd_name(word: str, table: dict) -> str:
    """The XKCD table's spelling of a canonical word (XKCD spells gray "grey")."""
    return word if word in table else word.replace("gray", "grey")


def _xkcd_table() -> dict[str, str]:
    from matplotlib._color_data import XKCD_COLORS

    return {name.removeprefix("xkcd:"): hexcode for name, hexcode in XKCD_COLORS.items()}


def _hex_to_rgb(code: str) -> tuple[float, float, float]:
    code = code.lstrip("#")
    return tuple(int(code[i : i + 2], 16) / 255.0 for i in (0, 2, 4))


def srgb_to_lab(rgb) -> torch.Tensor:
    """sRGB triples (..., 3) in [0, 1] -> Lab (..., 3) (kornia, D65)."""
    import kornia.color

    rgb = torch.as_tensor(rgb, dtype=torch.float32)
    return kornia.color.rgb_to_lab(rgb[..., :, None, None])[..., 0, 0]


@dataclass(frozen=True)
class ColorMatch:
    """A colour word found in a text: ``text[start:end]`` names canonical colour ``word``."""

    start: int
    end: int
    word: str


class ColorLexicon:
    """A vocabulary of colour words with sRGB and Lab prototypes.

    Args:
        vocabulary: ``"basic"``, ``"extended"`` or an explicit iterable of canonical words (each must
            be an XKCD colour name, e.g. ``"light blue"``).
    """

    def __init__(self, vocabulary="extended"):
        table = _xkcd_table()
        if vocabulary == "basic":
            words = list(BASIC_COLORS)
        elif vocabulary == "extended":
            words = list(BASIC_COLORS) + list(EXTRA_COLORS)
            bases = list(BASIC_COLORS) + list(EXTRA_COLORS)
            words += [f"{m} {b}" for m in MODIFIERS for b in bases if _xkcd_name(f"{m} {b}", table) in table]
        elif isinstance(vocabulary, str):
            raise ValueError(f"vocabulary={vocabulary!r}; expected 'basic', 'extended' or a list of words.")
        else:
            words = [self.canonical(w) for w in vocabulary]
        missing = [w for w in words if _xkcd_name(w, table) not in table]
        if missing:
            raise ValueError(
                f"colour words {missing} have no XKCD prototype; pick names from the XKCD table."
            )
        self.words: tuple[str, ...] = tuple(dict.fromkeys(words))
        self.rgb = torch.tensor([_hex_to_rgb(table[_xkcd_name(w, table)]) for w in self.words])  # (K, 3)
        self.lab = srgb_to_lab(self.rgb)  # (K, 3)
        self._index = {w: i for i, w in enumerate(self.words)}
        surface = set(self.words) | {s for s, c in SYNONYMS.items() if c in self._index}
        surface = sorted(surface | {w.replace("gray", "grey") for w in surface}, key=len)
        alternation = "|".join(re.escape(s).replace(r"\ ", r"\s+") for s in reversed(surface))
        self._pattern = re.compile(rf"\b({alternation})\b", re.IGNORECASE)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return self.canonical(word) in self._index

    def canonical(self, word: str) -> str:
        """Lower-case, collapse spaces and map spelling variants (``Grey`` -> ``gray``)."""
        word = " ".join(word.lower().split()).replace("grey", "gray")
        return SYNONYMS.get(word, word)

    def lab_of(self, word: str) -> torch.Tensor:
        """Lab prototype (3,) of a colour word; ``KeyError`` naming the word if unknown."""
        key = self.canonical(word)
        if key not in self._index:
            raise KeyError(f"{word!r} is not a colour word of this lexicon ({len(self)} words).")
        return self.lab[self._index[key]]

    def find(self, text: str) -> list[ColorMatch]:
        """All colour words in ``text``, longest match first ("light blue" beats "blue")."""
        return [
            ColorMatch(m.start(), m.end(), self.canonical(m.group(1))) for m in self._pattern.finditer(text)
        ]

    def has_color(self, text: str) -> bool:
        return self._pattern.search(text) is not None

    def name(self, lab: torch.Tensor) -> list[str] | str:
        """Nearest colour word(s) in Lab (CIE76) for Lab colours (3,) or (N, 3)."""
        lab = torch.as_tensor(lab, dtype=torch.float32)
        single = lab.ndim == 1
        distances = torch.cdist(lab.view(-1, 3), self.lab)  # (N, K)
        names = [self.words[i] for i in distances.argmin(1).tolist()]
        return names[0] if single else names

    def distance(self, lab: torch.Tensor, word: str) -> torch.Tensor:
        """CIE76 distance (Euclidean in Lab) between colours (..., 3) and the prototype of ``word``."""
        return torch.linalg.vector_norm(torch.as_tensor(lab, dtype=torch.float32) - self.lab_of(word), dim=-1)

    def replace(self, text: str, rng: random.Random | None = None, min_distance: float = 20.0) -> str:
        """Replace every colour word in ``text`` by another word of this lexicon.

        The substitute is drawn uniformly among words whose prototype is at least ``min_distance``
        (CIE76) from the original's, so "light red" is never a substitute for "red". Used for the
        L-CoIns counter-colour pseudo captions (LC eq. 14). Text without colour words is unchanged.
        """
        rng = rng or random.Random()
        pieces, last = [], 0
        for match in self.find(text):
            original = self.lab_of(match.word)
            far = torch.linalg.vector_norm(self.lab - original, dim=-1) >= min_distance
            candidates = [w for w, ok in zip(self.words, far.tolist()) if ok]
            pieces += [text[last : match.start], rng.choice(candidates)]
            last = match.end
        pieces.append(text[last:])
        return "".join(pieces)


@functools.lru_cache(maxsize=4)
def default_lexicon(vocabulary: str = "extended") -> ColorLexicon:
    """A cached shared lexicon (``"basic"`` or ``"extended"``)."""
    return ColorLexicon(vocabulary)
