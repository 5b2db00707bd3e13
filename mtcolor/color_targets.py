"""Colour targets: the exact colour a user asks for, per instance (docs/colors.md).

A target is given as any of:

* ``"#rrggbb"`` or ``"#rgb"`` (any case): ``"#d0302a"``, ``"#F80"``;
* ``"rgb(r, g, b)"`` (commas or spaces between the numbers): ``"rgb(208, 48, 42)"``;
* an ``(r, g, b)`` tuple, list, NumPy array or torch tensor of three numbers in **0..255** (the
  8-bit convention, fractions allowed: ``(208, 48, 42.5)``). Three numbers all <= 1 with a fraction,
  such as ``(0.8, 0.2, 0.1)``, are rejected as probably [0, 1] values (multiply them by 255);
* a colour name of the lexicon (:func:`mtcolor.lexicon.lookup_color_name`): the 949 names of the
  XKCD colour survey, the CSS4 names ("darkslategray" or "dark slate gray"), spelling variants
  ("grey" = "gray", "navy-blue" = "navy blue") and a modifier before any of them ("dark crimson");
* ``None``: no target (the instance keeps what the model paints from its text).

:func:`color_from_text` reads a target from an instance text ("a crimson apple", "a car #ff8800")
and says why when it finds none ("no colour word", "several colours: red, white", "a pattern word:
striped").
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .lexicon import (
    PATTERN_WORDS,
    find_color_mentions,
    lookup_color_name,
    normalize_color_name,
    srgb_to_lab,
    suggest_color_names,
)

SOURCES = ("hex", "rgb", "name", "text")
EXAMPLES = "'#d0302a', 'rgb(208, 48, 42)', (208, 48, 42) or a colour name such as 'crimson'"


@dataclass(frozen=True)
class ColorTarget:
    """A requested colour.

    Attributes:
        lab: CIE Lab (D65; L in [0, 100]) of the colour as given (kornia's sRGB conversion, as in
            :mod:`mtcolor.color`).
        hex: ``"#rrggbb"`` of its sRGB colour (8-bit rounded).
        source: ``"hex"``, ``"rgb"`` (a triple or ``rgb(...)``), ``"name"`` or ``"text"`` (found by
            :func:`color_from_text`).
        label: what to show a user: the canonical name ("crimson", "dark crimson") or the hex.
    """

    lab: tuple[float, float, float]
    hex: str
    source: str
    label: str

    @property
    def ab(self) -> tuple[float, float]:
        """The chroma part (a, b) of :attr:`lab`."""
        return (self.lab[1], self.lab[2])

    @property
    def chroma(self) -> float:
        """``sqrt(a^2 + b^2)``."""
        return math.hypot(self.lab[1], self.lab[2])


def _from_rgb255(rgb: Sequence[float], source: str, label: str | None = None) -> ColorTarget:
    """A target from sRGB values in 0..255 (fractions allowed)."""
    lab = srgb_to_lab(torch.tensor([float(v) / 255.0 for v in rgb], dtype=torch.float64).float())
    code = "#" + "".join(f"{min(255, max(0, round(float(v)))):02x}" for v in rgb)
    return ColorTarget(tuple(round(float(v), 4) for v in lab), code, source, label or code)


def _bad(name: str, value, problem: str) -> str:
    return f"{name}={value!r} is not a colour: {problem}. Valid examples: {EXAMPLES}."


def _check_rgb(values: list, name: str, value) -> list[float]:
    """Validate three numbers in 0..255; ValueError naming ``name`` otherwise."""
    if len(values) != 3:
        raise ValueError(_bad(name, value, f"{len(values)} numbers where (r, g, b) needs 3"))
    numbers_ = [float(v) for v in values]
    if not all(math.isfinite(v) for v in numbers_):
        raise ValueError(_bad(name, value, "NaN or infinite values"))
    if any(v < 0 or v > 255 for v in numbers_):
        raise ValueError(_bad(name, value, "values outside 0..255 (8-bit sRGB)"))
    if all(v <= 1 for v in numbers_) and any(v != int(v) for v in numbers_):
        scaled = tuple(round(v * 255) for v in numbers_)
        raise ValueError(
            _bad(name, value, f"these look like [0, 1] values; triples are 0..255, e.g. {scaled}")
        )
    return numbers_


def _parse_triple(value, name: str) -> ColorTarget:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or array.ndim != 1:
            raise TypeError(
                f"{name} is an array of dtype {array.dtype} and shape {tuple(array.shape)}; expected 3 "
                f"numbers (r, g, b) in 0..255. Valid examples: {EXAMPLES}."
            )
        items = array.tolist()
    else:
        items = list(value)
        wrong = [v for v in items if isinstance(v, bool) or not isinstance(v, numbers.Real)]
        if wrong:
            raise TypeError(
                f"{name}={value!r} has non-numeric entries {wrong!r}; expected 3 numbers (r, g, b) in 0..255. "
                f"Valid examples: {EXAMPLES}."
            )
    return _from_rgb255(_check_rgb(items, name, value), "rgb")


_HEX = re.compile(r"#?([0-9a-f]{3}|[0-9a-f]{6})", re.IGNORECASE)
_RGB = re.compile(r"rgba?\s*\((.*)\)", re.IGNORECASE | re.DOTALL)


def _parse_hex(text: str, name: str, value) -> ColorTarget:
    digits = text[1:]
    if not re.fullmatch(r"[0-9a-fA-F]{3}|[0-9a-fA-F]{6}", digits):
        raise ValueError(_bad(name, value, "malformed hex code (write #rrggbb or #rgb with digits 0-9, a-f)"))
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return _from_rgb255([int(digits[i : i + 2], 16) for i in (0, 2, 4)], "hex", "#" + digits.lower())


def _parse_rgb_call(text: str, name: str, value) -> ColorTarget:
    if text.lower().startswith("rgba"):
        raise ValueError(_bad(name, value, "rgba() has an alpha channel; write rgb(r, g, b)"))
    inner = _RGB.fullmatch(text).group(1)
    parts = [p for p in re.split(r"[\s,]+", inner.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(_bad(name, value, "rgb() needs three numbers in 0..255")) from None
    return _from_rgb255(_check_rgb(values, name, value), "rgb")


def _parse_name(text: str, name: str, value) -> ColorTarget:
    found = lookup_color_name(text)
    if found is None:
        hint = ""
        if _HEX.fullmatch(text):
            hint = f" (did you mean '#{text.lower()}')"
        else:
            close = suggest_color_names(text)
            hint = f"; closest names: {', '.join(close)}" if close else ""
        raise ValueError(_bad(name, value, f"unknown colour name {normalize_color_name(text)!r}{hint}"))
    lab = srgb_to_lab(torch.tensor([int(found.hex[i : i + 2], 16) / 255.0 for i in (1, 3, 5)]))
    return ColorTarget(tuple(round(float(v), 4) for v in lab), found.hex, "name", found.name)


def parse_color(value, name: str = "colors[0]") -> ColorTarget | None:
    """One colour target from any accepted form (module docstring); ``None`` -> ``None``.

    Args:
        value: ``None``, a :class:`ColorTarget` (returned as is), a string (hex, ``rgb(...)`` or a
            name) or three numbers in 0..255.
        name: the argument's name for error messages (e.g. ``"colors[2]"``).

    Raises:
        ValueError: unknown name (with the closest names), malformed hex, NaN / infinite /
            out-of-range values, a triple of the wrong length, an empty string.
        TypeError: any other type (bool, dict, numbers inside strings ...).
        Each message names ``name``, the value received and valid examples.
    """
    if value is None or isinstance(value, ColorTarget):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError(_bad(name, value, "an empty string"))
        if text.startswith("#"):
            return _parse_hex(text, name, value)
        if _RGB.fullmatch(text):
            return _parse_rgb_call(text, name, value)
        return _parse_name(text, name, value)
    if isinstance(value, (tuple, list, np.ndarray, torch.Tensor)):
        return _parse_triple(value, name)
    raise TypeError(
        f"{name} has type {type(value).__name__} ({value!r}); expected None or a colour: {EXAMPLES}."
    )


def target_lab(value, name: str, none_means: str = "") -> tuple[float, float, float] | None:
    """A resolved target (a :class:`ColorTarget`, a Lab triple (L in [0, 100], a, b) or None) -> its Lab
    tuple or None; ``name`` names the argument in errors, ``none_means`` says what None does
    (e.g. ``" (not measured)"``)."""
    if value is None:
        return None
    if isinstance(value, ColorTarget):
        return value.lab
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise TypeError(
            f"{name}={value!r}; expected a ColorTarget (mtcolor.color_targets.parse_color('#d0302a')), a Lab "
            f"triple (L, a, b) such as (46.6, 61.0, 42.7), or None{none_means}."
        )
    lab = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in lab) or not 0 <= lab[0] <= 100:
        raise ValueError(f"{name}={value!r}; a Lab triple needs finite values and L in [0, 100].")
    return lab


def parse_colors(colors, count: int, name: str = "colors") -> list[ColorTarget | None]:
    """Per-instance targets aligned with ``count`` masks (entry ``k`` belongs to mask ``k``).

    Args:
        colors: ``None`` (no targets: ``[None] * count``) or a list/tuple with one entry per mask,
            each accepted by :func:`parse_color` (``None`` = no target for that mask).
        count: the number of masks.

    Raises:
        ValueError: a length different from ``count`` (both counts in the message) or a bad entry
            (named ``colors[k]``).
        TypeError: ``colors`` is not a list (a single string or triple: wrap it, ``["#d0302a"]``).
    """
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
        raise ValueError(f"count={count!r}; expected the number of masks, an integer >= 0.")
    if colors is None:
        return [None] * int(count)
    if isinstance(colors, (str, ColorTarget)) or not isinstance(colors, (list, tuple)):
        raise TypeError(
            f"{name} has type {type(colors).__name__} ({colors!r}); expected a list with one entry per mask "
            f"({count} masks), e.g. ['#d0302a', None]."
        )
    if len(colors) != count:
        hint = ""
        if colors and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in colors):
            hint = f" (one (r, g, b) triple is one entry: write [{tuple(colors)!r}])"
        raise ValueError(
            f"{name} has {len(colors)} entries but there are {count} masks; pass one entry per mask "
            f"(None for a mask without a target){hint}."
        )
    return [parse_color(value, f"{name}[{index}]") for index, value in enumerate(colors)]


@dataclass(frozen=True)
class TextColor:
    """The colour target an instance text names, or why it names none.

    Attributes:
        target: the target (``source="text"``), or None.
        reason: ``""`` when a target was found, else a user-readable reason: ``"no colour word"``,
            ``"several colours: red, white"``, ``"a pattern word: striped"``, ``"a negated colour: not
            red"``, ``"an unreadable colour code: '#ff88' (...)"``.
    """

    target: ColorTarget | None
    reason: str


_CODE = re.compile(r"(?<![\w#])#[0-9a-z]{3,8}\b|\brgba?\s*\([^)]*\)", re.IGNORECASE)
_PATTERN = re.compile(
    r"\b("
    + "|".join(re.escape(w).replace(r"\-", r"[-\s]?") for w in sorted(PATTERN_WORDS, key=len)[::-1])
    + r")\b",
    re.IGNORECASE,
)


def _codes_in(text: str) -> TextColor | None:
    """The target of the hex / rgb() codes of a text (None when it has none)."""
    targets = []
    for match in _CODE.finditer(text):
        try:
            targets.append(parse_color(match.group(), "text"))
        except ValueError as error:
            problem = str(error).split(" is not a colour: ", 1)[-1].split(". Valid examples", 1)[0]
            return TextColor(None, f"an unreadable colour code: {match.group()!r} ({problem})")
    if not targets:
        return None
    codes = list(dict.fromkeys(t.hex for t in targets))
    if len(codes) > 1:
        return TextColor(None, f"several colours: {', '.join(codes)}")
    first = targets[0]
    return TextColor(ColorTarget(first.lab, first.hex, "text", first.hex), "")


def color_from_text(text: str) -> TextColor:
    """The colour target an instance text names (rules: docs/colors.md).

    1. Hex codes and ``rgb(...)`` inside the text are exact and win over colour words ("a car
       #ff8800"); different codes are several colours.
    2. A pattern word (:data:`mtcolor.lexicon.PATTERN_WORDS`: striped, checkered, multicoloured,
       rainbow, tabby ...) outside a colour name means no single colour.
    3. Colour names found by :func:`mtcolor.lexicon.find_color_mentions` ("a crimson apple", "a sky
       blue kite", "the star is lemon"; not "a dog on the grass"): a negated one ("not red") gives no
       target; one colour (repeats allowed) is the target; several different ones give none.
    """
    if not isinstance(text, str):
        raise TypeError(f"text has type {type(text).__name__} ({text!r}); expected an instance text (str).")
    coded = _codes_in(text)
    if coded is not None:
        return coded
    mentions = find_color_mentions(text)
    spans = [(m.start, m.end) for m in mentions]
    for match in _PATTERN.finditer(text):
        if not any(start <= match.start() < end for start, end in spans):
            return TextColor(None, f"a pattern word: {match.group().lower()}")
    negated = [m for m in mentions if m.negated]
    if negated:
        return TextColor(None, f"a negated colour: not {negated[0].name}")
    if not mentions:
        return TextColor(None, "no colour word")
    names = list(dict.fromkeys(m.name for m in mentions))
    colors = {lookup_color_name(n).hex for n in names}
    if len(colors) > 1:
        return TextColor(None, f"several colours: {', '.join(names)}")
    target = _parse_name(names[0], "text", text)
    return TextColor(ColorTarget(target.lab, target.hex, "text", target.label), "")
