"""Colour words <-> Lab prototypes: detection, naming and replacement of colour words.

The prototypes are the XKCD colour-survey colours shipped with matplotlib
(``matplotlib._color_data.XKCD_COLORS``: the sRGB colour most people called by that name), so
"red" means what people mean by red. Two vocabularies:

* ``"basic"``: the eleven basic colour terms of Berlin & Kay (black, white, gray, red, orange,
  yellow, green, blue, purple, pink, brown), used for naming measured colours, and
* ``"extended"`` (default for *detection*): basic + common colour words (navy, teal, beige ...) and
  ``light`` / ``dark`` variants present in the XKCD table.

Spelling variants map to one canonical word (``grey`` -> ``gray``).

Beside these two vocabularies, the module knows every colour *name* a user may write
(:func:`lookup_color_name`: the 949 XKCD names, the CSS4 names, aliases and modifiers such as "dark
crimson") and finds the colour an instance text names (:func:`find_color_mentions`: "a cherry red
car", "the star is lemon", but not "a dog on the grass"); rules and measurements: docs/colors.md.
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


# ---------------------------------------------------------------------------- colour names and texts
# The whole XKCD table plus the CSS4 names, modifiers applied to any name, and the rules that find a
# colour named in free text (docs/colors.md). Names are canonical: lower case, single spaces, "grey"
# spelled "gray" inside any word ("bluegrey" -> "bluegray"), hyphens read as spaces ("cherry-red").

#: Words that name a colour wherever they appear ("a crimson apple", "the star is navy", "an ivory
#: vase"): the basic terms, words whose everyday sense is a colour, and gem, metal and wood names used
#: as colours. A table name whose last word is one of these ("sky blue") is a colour word too.
COLOR_WORDS = frozenset(
    """
    black white gray red orange yellow green blue purple pink brown
    amber amethyst aqua aquamarine auburn azure azul beige bluegreen bluegray bluish blurple blush
    bronze brownish burgundy burple carmine celadon cerise cerulean chartreuse cobalt copper crimson
    cyan darkblue darkgreen ebony ecru emerald fuchsia fuschia gold golden goldenrod grayblue grayish
    greenblue greenish heliotrope indigo ivory jade khaki lavender lightblue lightgreen lilac liliac
    magenta mahogany maroon mauve navy ocher ochre ocre onyx orangeish orangered orangish pearl
    periwinkle perrywinkle pinkish puce purpleish purpley purplish purply reddish ruby russet sapphire
    scarlet sepia sienna silver tan taupe teal tealish topaz toupe turquoise ultramarine umber
    vermilion vermillion violet viridian yellowgreen yellowish
    """.split()
)
#: Nouns that name a colour when they modify another noun ("a lemon star", "a slate roof", "a plum
#: scarf") but not on their own ("a lemon", "a plum on a plate").
COLOR_NOUNS = frozenset(
    """
    apricot aubergine bordeaux butterscotch camel canary caramel charcoal chestnut chocolate cinnamon
    claret cocoa coral cream creme denim eggplant fawn gunmetal hazel lemon lime mint mocha mustard
    olive orchid peach plum pumpkin raspberry rose rust saffron sage salmon seafoam slate tangerine
    wisteria
    """.split()
)
#: Table names never taken from a text on their own: modifiers and plain adjectives that the XKCD
#: survey also lists as colours ("a dark room", "a pale face", "a royal palace").
TEXT_EXCLUDED = frozenset({"dark", "pale", "bland", "drab", "royal", "dusk", "ice", "pinky"})
#: Words after a name that make it a colour: "a salmon-coloured shirt", "a coffee colored mug".
COLOR_SUFFIXES = frozenset({"coloured", "colored", "colour", "color", "hued", "tinted", "toned"})
#: Words before a name that make it a predicate colour: "the star is lemon", "a star painted pumpkin"
#: ("painted in", "dressed in" ... also work, see :data:`PREDICATE_IN`). A colour suffix that
#: follows a colour ("a red-coloured apple") is not one.
PREDICATE_WORDS = frozenset(
    "is are was were be been being looks look appears appear seems seem painted coloured colored dyed "
    "turned turns became becomes".split()
)
PREDICATE_IN = frozenset({"painted", "dressed", "clad", "dyed", "coloured", "colored", "done"})
#: Words after which a name at the end of a phrase is a predicate colour ("the ring is rose, ...").
_PHRASE_ENDS = frozenset({"and", "or", "but", "with", "while"})
#: Words that do not make a preceding colour noun attributive ("a lemon on the table" names no colour).
FUNCTION_WORDS = frozenset(
    """
    a an the and or but nor of on in at to into onto with without by for from near under over above
    below beside besides behind between among inside outside next against along across around through
    like as than that which who whom whose while where when is are was were be been has have had its
    his her their our my your this these those it there here then so very
    """.split()
)
NEGATIONS = frozenset({"not", "no", "non", "without", "never"})
#: Words that say a region has no single colour: a text with one of them gets no colour target.
PATTERN_WORDS = frozenset(
    """
    striped stripes stripe stripy stripey checkered chequered checkerboard checked plaid tartan gingham
    houndstooth paisley polka dotted spotted spotty speckled mottled dappled marbled floral flowery
    patterned multicoloured multicolored multicolour multicolor colourful colorful rainbow camo
    camouflage tabby calico brindle piebald tortoiseshell iridescent variegated tricolour tricolor
    two-tone two-toned tie-dye tie-dyed leopard-print zebra-print multi-coloured multi-colored
    multi-colour multi-color
    """.split()
)
#: Colour words missing from both tables, read as a table name ("pearl" is the survey's off white).
NAME_ALIASES = {
    "pearl": "off white", "ebony": "almost black", "onyx": "black", "jet": "black", "vermilion": "vermillion",
    "fuschia": "fuchsia",
}  # fmt: skip
#: Modifiers applied to any name ("dark crimson", "very light teal"); the table's own "light X" entry
#: is used when it exists, else the Lab transform of :func:`modifier_transforms`.
NAME_MODIFIERS = (
    "very light", "very dark", "light", "dark", "pale", "deep", "bright", "vivid", "pastel", "dull", "dusty",
    "muted", "neon", "soft", "faded", "lightish", "darkish",
)  # fmt: skip
#: Extra words to split CSS's one-word names ("papayawhip" -> "papaya whip").
_CSS_PARTS = (
    "alice antique blanched almond burly wood chiffon dim dodger floral ghost "
    "honeydew lace lawn linen medium misty moccasin navajo old papaya whip puff peru powder rebecca rosy "
    "saddle seashell smoke spring thistle bisque snow wheat white"
).split()


def normalize_color_name(name: str) -> str:
    """Canonical spelling of a colour name: ``" Navy-Blue "`` -> ``"navy blue"``, ``"Grey"`` ->
    ``"gray"``, ``"blue / green"`` -> ``"blue/green"``."""
    name = name.lower().replace("_", " ").replace("-", " ").replace("’", "'")
    name = re.sub(r"\s*/\s*", "/", " ".join(name.split()))
    return name.replace("grey", "gray")


def _split_compound(word: str, vocabulary: frozenset) -> list[str]:
    """Split a one-word CSS name into vocabulary words (fewest parts), or ``[word]`` if impossible."""
    best: list[list[str] | None] = [[]] + [None] * len(word)
    for end in range(1, len(word) + 1):
        for start in range(end):
            part = word[start:end]
            if best[start] is not None and part in vocabulary:
                candidate = best[start] + [part]
                if best[end] is None or len(candidate) < len(best[end]):
                    best[end] = candidate
    return best[-1] if best[-1] else [word]


@dataclass(frozen=True)
class ColorName:
    """A known colour name: canonical ``name``, its sRGB ``hex`` ("#rrggbb") and ``table``
    ("xkcd", "css", "alias" or "modifier": derived by :func:`modifier_transforms`)."""

    name: str
    hex: str
    table: str


@functools.lru_cache(maxsize=1)
def color_name_table() -> dict[str, ColorName]:
    """Every table colour name -> :class:`ColorName`: the XKCD survey's 949 names first (they win on
    a clash: "green" is what people call green), then the CSS4 names, each both as written
    ("darkslategray") and split into words ("dark slate gray"), then :data:`NAME_ALIASES`."""
    from matplotlib._color_data import CSS4_COLORS

    table: dict[str, ColorName] = {}
    for name, code in _xkcd_table().items():
        key = normalize_color_name(name)
        table.setdefault(key, ColorName(key, code.lower(), "xkcd"))
    vocabulary = frozenset(w for key in table for w in re.split(r"[ /]", key)) | frozenset(_CSS_PARTS)
    for name, code in sorted(CSS4_COLORS.items()):
        key = normalize_color_name(name)
        for form in (key, " ".join(_split_compound(key, vocabulary))):
            table.setdefault(form, ColorName(form, code.lower(), "css"))
    for alias, name in NAME_ALIASES.items():
        table.setdefault(alias, ColorName(alias, table[normalize_color_name(name)].hex, "alias"))
    return table


@functools.lru_cache(maxsize=1)
def _table_labs() -> dict[str, torch.Tensor]:
    table = color_name_table()
    labs = srgb_to_lab(torch.tensor([_hex_to_rgb(c.hex) for c in table.values()]))  # (N, 3)
    return dict(zip(table, labs))


@functools.lru_cache(maxsize=1)
def modifier_transforms() -> dict[str, tuple[float, float]]:
    """``modifier -> (lam, kappa)``: how a modifier moves a colour in Lab, measured on the XKCD table.

    For every base ``X`` with both ``X`` and ``"<modifier> X"`` in the table, with Lab L and chroma
    ``C = sqrt(a^2 + b^2)`` (``L0, C0`` of X, ``L1, C1`` of the modified colour): the lightness move
    ``lam_i = (L1 - L0) / (100 - L0)`` if ``L1 >= L0`` else ``(L1 - L0) / L0`` and the chroma factor
    ``C1 / C0`` (bases with ``C0 >= 10``). ``lam`` and ``kappa`` are their medians. A modifier is
    applied (:func:`lookup_color_name`) as ``L' = L + lam (100 - L)`` (``lam >= 0``) or
    ``L' = L (1 + lam)`` (``lam < 0``), ``C' = kappa C`` at the same hue, then the chroma is reduced at
    fixed hue until the colour is inside sRGB at ``L'``.
    """
    labs = _table_labs()
    out = {}
    for modifier in NAME_MODIFIERS:
        moves, factors = [], []
        for key, lab in labs.items():
            modified = labs.get(f"{modifier} {key}")
            if modified is None or color_name_table()[key].table != "xkcd":
                continue
            l0, l1 = float(lab[0]), float(modified[0])
            moves.append((l1 - l0) / max(100.0 - l0, 1e-6) if l1 >= l0 else (l1 - l0) / max(l0, 1e-6))
            c0 = float(torch.hypot(lab[1], lab[2]))
            if c0 >= 10:
                factors.append(float(torch.hypot(modified[1], modified[2])) / c0)
        if len(moves) < 3 or not factors:
            raise RuntimeError(f"modifier {modifier!r} has {len(moves)} pairs in the XKCD table; need >= 3.")
        out[modifier] = (float(torch.tensor(moves).median()), float(torch.tensor(factors).median()))
    return out


def apply_modifier(lab: torch.Tensor, modifier: str) -> torch.Tensor:
    """Lab (3,) -> Lab (3,) of ``"<modifier> <colour>"`` (equations: :func:`modifier_transforms`),
    inside the sRGB gamut."""
    from .color import fit_chroma_to_gamut

    lam, kappa = modifier_transforms()[modifier]
    lightness = float(lab[0])
    lightness = lightness + lam * (100.0 - lightness) if lam >= 0 else lightness * (1.0 + lam)
    lightness = min(max(lightness, 0.0), 100.0)
    ab = lab[1:].to(torch.float32) * kappa
    ab = fit_chroma_to_gamut(torch.tensor([[[lightness]]]), ab.view(2, 1, 1)).view(2)
    return torch.cat([torch.tensor([lightness]), ab])


def _lab_to_hex(lab: torch.Tensor) -> str:
    import kornia.color

    rgb = kornia.color.lab_to_rgb(lab.view(3, 1, 1).to(torch.float32), clip=True).view(3)
    return "#" + "".join(f"{round(float(v) * 255):02x}" for v in rgb)


@functools.lru_cache(maxsize=4096)
def lookup_color_name(name: str) -> ColorName | None:
    """A colour name -> :class:`ColorName`, or None if unknown.

    Any spelling :func:`normalize_color_name` accepts; a table name, or a modifier of
    :data:`NAME_MODIFIERS` before a known name ("dark crimson", "very light sky blue"): the table's
    own entry when it has one ("light blue"), else :func:`apply_modifier` of the base colour.
    """
    if not isinstance(name, str):
        return None
    key = normalize_color_name(name)
    table = color_name_table()
    if key in table:
        return table[key]
    for modifier in NAME_MODIFIERS:
        if key.startswith(modifier + " "):
            base = lookup_color_name(key[len(modifier) + 1 :])
            if base is not None:
                lab = srgb_to_lab(torch.tensor(_hex_to_rgb(base.hex)))
                return ColorName(key, _lab_to_hex(apply_modifier(lab, modifier)), "modifier")
    return None


def suggest_color_names(name: str, count: int = 3) -> list[str]:
    """Up to ``count`` known names closest in spelling to ``name`` ("crimsn" -> ["crimson", ...];
    "dark crimsn" -> ["dark crimson", ...])."""
    import difflib

    key = normalize_color_name(name)
    names = list(color_name_table())
    for modifier in NAME_MODIFIERS:
        if key.startswith(modifier + " "):
            bases = difflib.get_close_matches(key[len(modifier) + 1 :], names, n=count, cutoff=0.6)
            if bases:
                return [f"{modifier} {b}" for b in bases]
    return difflib.get_close_matches(key, names, n=count, cutoff=0.6)


def color_name_counts() -> dict[str, int]:
    """How many names the lexicon knows: ``table`` (XKCD + CSS4 + aliases, distinct canonical names),
    its parts, and ``with_modifiers`` (every table name alone or after one of :data:`NAME_MODIFIERS`)."""
    table = color_name_table()
    kinds = [c.table for c in table.values()]
    modified = {f"{m} {n}" for m in NAME_MODIFIERS for n in table} - set(table)
    return {
        "xkcd": kinds.count("xkcd"), "css": kinds.count("css"), "alias": kinds.count("alias"),
        "table": len(table), "modifiers": len(NAME_MODIFIERS), "with_modifiers": len(table) + len(modified),
    }  # fmt: skip


@dataclass(frozen=True)
class ColorMention:
    """A colour named in a text: ``text[start:end]`` names the colour ``name`` (canonical; a table
    name or a modifier + table name), ``negated`` when "not"/"no"/"non"/"without" precedes it."""

    start: int
    end: int
    name: str
    negated: bool = False


_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|\S")


def _tokens(text: str) -> list[tuple[str, int, int, str]]:
    """``(word, start, end, joiner)`` of each word of ``text`` (lower case). ``joiner`` links the word
    to the previous one: " " (spaces or a hyphen), "/" or "" (punctuation or the start: no name or
    rule spans it)."""
    out, pending = [], ""
    for match in _TOKEN.finditer(text.lower()):
        piece = match.group()
        if piece[0].isalnum():
            out.append((piece, match.start(), match.end(), pending))
            pending = " "
        elif piece in ("-", "/") and pending:
            pending = " " if piece == "-" else "/"
        else:
            pending = ""
    return out


def _head_class(key: str) -> str:
    """``"color"`` (counts anywhere), ``"noun"`` (counts before a noun) or ``"object"`` (counts only as
    a predicate or before "-coloured") for a table name, by its last word."""
    head = re.split(r"[ /]", key)[-1]
    if head in COLOR_WORDS:
        return "color"
    if head in COLOR_NOUNS:
        return "noun"
    entry = color_name_table().get(key)
    if entry is not None and entry.table == "css" and " " not in key and head not in _CSS_PARTS:
        return "color"  # one-word CSS compounds ("papayawhip") name nothing but a colour
    return "object"


class _MentionFinder:
    """Finds colour mentions in one text by the rules of :func:`find_color_mentions`."""

    max_words = 6

    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.words = [t[0] for t in self.tokens]
        self.table = color_name_table()
        self.suffixes: set[int] = set()  # colour suffixes that belong to a found colour

    def linked(self, i: int) -> bool:
        """Is word ``i`` joined to word ``i - 1`` (same phrase, no punctuation between)?"""
        return 0 < i < len(self.tokens) and self.tokens[i][3] != ""

    def key(self, i: int, j: int) -> str:
        return normalize_color_name(
            self.words[i] + "".join(self.tokens[k][3] + self.words[k] for k in range(i + 1, j))
        )

    def starts_color_word(self, i: int) -> bool:
        return self.linked(i) and any(
            self.key(i, j) in self.table and _head_class(self.key(i, j)) == "color"
            for j in range(i + 1, min(len(self.words), i + self.max_words) + 1)
            if all(self.linked(k) for k in range(i + 1, j))
        )

    def predicate(self, i: int, j: int) -> bool:
        before = self.words[i - 1] if self.linked(i) and i - 1 not in self.suffixes else ""
        before_in = self.words[i - 2] if before == "in" and self.linked(i - 1) else ""
        if before not in PREDICATE_WORDS and before_in not in PREDICATE_IN:
            return False
        return not self.linked(j) or self.words[j] in _PHRASE_ENDS

    def valid(self, key: str, i: int, j: int, after_color: bool) -> bool:
        kind = _head_class(key)
        if kind == "color":
            return True
        following = self.words[j] if self.linked(j) else ""
        if following in COLOR_SUFFIXES:
            return True
        if self.starts_color_word(j):
            return False  # "snow-white", "coffee brown": the colour head names the colour
        if self.predicate(i, j):
            return True
        verb = following in PREDICATE_WORDS or following in PREDICATE_IN
        return (
            kind == "noun"
            and bool(following)
            and following not in FUNCTION_WORDS
            and not verb
            and not after_color
        )

    def at(self, i: int, after_color: bool) -> tuple[int, str] | None:
        """(end word index, canonical name) of the mention starting at word ``i``, or None."""
        for j in range(min(len(self.words), i + self.max_words), i, -1):
            if not all(self.linked(k) for k in range(i + 1, j)):
                continue
            key = self.key(i, j)
            if key in self.table and key not in TEXT_EXCLUDED and self.valid(key, i, j, after_color):
                return j, key
        for modifier in NAME_MODIFIERS:
            parts = modifier.split()
            n = len(parts)
            if self.words[i : i + n] == parts and all(self.linked(k) for k in range(i + 1, i + n + 1)):
                inner = self.at(i + n, after_color)
                if inner is not None:
                    return inner[0], f"{modifier} {inner[1]}"
        return None

    def find(self) -> list[ColorMention]:
        mentions, i, last_end = [], 0, -1
        while i < len(self.words):
            found = self.at(i, after_color=last_end == i and self.linked(i))
            if found is None:
                i += 1
                continue
            end, name = found
            negated = self.linked(i) and self.words[i - 1] in NEGATIONS
            mentions.append(ColorMention(self.tokens[i][1], self.tokens[end - 1][2], name, negated))
            if self.linked(end) and self.words[end] in COLOR_SUFFIXES:
                self.suffixes.add(end)
            i = last_end = end
        return mentions


def find_color_mentions(text: str) -> list[ColorMention]:
    """Colours named in ``text`` (rules: docs/colors.md), longest name first.

    * a table name whose last word is in :data:`COLOR_WORDS` counts anywhere ("a crimson apple",
      "a sky blue kite", "a cherry-red car");
    * any other table name counts before "-coloured" / "coloured" (:data:`COLOR_SUFFIXES`: "a
      salmon-coloured shirt") or as a predicate at the end of a phrase ("the star is lemon", "a star
      painted pumpkin", "dressed in plum");
    * a name whose last word is in :data:`COLOR_NOUNS` also counts before another noun ("a lemon
      star"), except right after a colour ("a white rose bush" names white);
    * object nouns otherwise name no colour ("a dog on the grass", "an apple", "a coffee cup"), nor do
      the names of :data:`TEXT_EXCLUDED` ("a dark room");
    * a name followed by a colour word is part of that colour ("coffee brown" is the table's own name;
      "snow-white" is white);
    * a modifier of :data:`NAME_MODIFIERS` before a mention extends it ("dark crimson").
    """
    return _MentionFinder(text).find()
