"""Per-character text normalisation shared by every surface-layer component.

The contract (DESIGN.md, "Surface layer"): each input character maps to zero or more normalised characters by
NFKC, casefolding, folding of common lookalikes and dropping of format characters. We also drop combining marks
(after canonical decomposition), so "Pokémon", "Poke\u0301mon" and "Pokemon" normalise alike: an accent is as
cheap a disguise as a zero-width space. Letters and digits are word characters; everything else separates words.

The mapping is per character (never across characters), so a streaming consumer can normalise any chunking of a
text and get the same symbols as for the whole text.

The surface layer reads text as a reader does (`surface_symbols`), on top of that mapping:
- a lowercase letter followed by an uppercase one is a word start ("TeamSpiderman" reads as "Team Spiderman"): a
  `SEPARATOR` is emitted before the uppercase letter. This is the one rule that looks at the previous character, so
  it is carried as one bit (`after_lower`) from chunk to chunk, and from token to token at decode time;
- stand-in symbols used as letters (`STAND_INS`: "@" for a, "$" for s, ...) are kept as themselves instead of
  becoming separators, so the automaton can read them either way (digits are word characters already).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

SEPARATOR = " "
"""The one symbol every non-word character normalises to; runs of separators behave like one."""

# Cyrillic and Greek letters that render like Latin ones (after casefolding), plus a few symbols used as letters.
# Deliberately small and conservative: folding a real Cyrillic word into Latin costs nothing for matching, because
# terms are folded the same way.
_LOOKALIKES = {
    # Cyrillic
    "а": "a",
    "в": "b",
    "е": "e",
    "ё": "e",
    "к": "k",
    "м": "m",
    "н": "h",
    "о": "o",
    "р": "p",
    "с": "c",
    "т": "t",
    "у": "y",
    "х": "x",
    "ѕ": "s",
    "і": "i",
    "ї": "i",
    "ј": "j",
    "һ": "h",
    "ԁ": "d",
    "ԛ": "q",
    "ԝ": "w",
    "ɡ": "g",
    "ӏ": "l",
    "ь": "b",
    # Greek
    "α": "a",
    "β": "b",
    "ε": "e",
    "η": "n",
    "ι": "i",
    "κ": "k",
    "μ": "u",
    "ν": "v",
    "ο": "o",
    "ρ": "p",
    "τ": "t",
    "υ": "u",
    "χ": "x",
    "ω": "w",
    "ϲ": "c",
    "ζ": "z",
    # Latin look-alikes that NFKC keeps apart
    "ı": "i",
    "ɩ": "i",
    "ℓ": "l",
    "ø": "o",
    "đ": "d",
    "ł": "l",
    "ħ": "h",
}


STAND_INS: dict[str, str] = {
    "0": "o", "1": "il", "3": "e", "4": "a", "5": "s", "6": "gb", "7": "t", "8": "b", "9": "g",
    "@": "a", "$": "s", "!": "i", "|": "li",
}  # fmt: skip
"""Leetspeak: each stand-in and the letters it can be read as. A match must still hold at least one character read
as itself (`filters.automaton`), so numbers alone ("1154", "$300") never spell a term."""
STAND_IN_MARKS = frozenset(ch for ch in STAND_INS if not ch.isalnum())
"""Stand-ins that are not word characters: read either as their letter or as a separator."""


def is_word_char(ch: str) -> bool:
    """Letters and digits (Unicode categories L* and N*) are word characters."""
    return unicodedata.category(ch)[0] in "LN"


@lru_cache(maxsize=65536)
def normalize_char(ch: str) -> str:
    """Normalise one character: a string of word characters and `SEPARATOR`s, possibly empty."""
    return _normalize_char(ch, False)


@lru_cache(maxsize=65536)
def surface_char(ch: str) -> str:
    """`normalize_char`, except that stand-in marks ("@", "$", ...) are kept as themselves."""
    return _normalize_char(ch, True)


def _normalize_char(ch: str, keep_marks: bool) -> str:
    category = unicodedata.category(ch)
    if category == "Cf" or category == "Mn" or category == "Me":
        return ""  # zero-width joiners, soft hyphens, BOMs, combining accents: invisible, so ignored
    out = []
    for c in unicodedata.normalize("NFKC", ch).casefold():
        for d in unicodedata.normalize("NFD", c):
            if unicodedata.category(d) in ("Mn", "Me", "Cf"):
                continue
            d = _LOOKALIKES.get(d, d)
            out.append(d if is_word_char(d) or (keep_marks and d in STAND_IN_MARKS) else SEPARATOR)
    return "".join(out)


def surface_symbols(text: str, after_lower: bool = False) -> tuple[str, bool]:
    """(symbols, after_lower): the text as the surface layer reads it, and whether it ends on a lowercase letter.

    `after_lower` says whether the text before this one ended on a lowercase letter (characters that normalise to
    nothing, such as zero-width spaces and accents, are skipped: they do not change it). An uppercase or titlecase
    letter right after a lowercase one gets a `SEPARATOR` before it: a reader sees a new word there.
    """
    out: list[str] = []
    for ch in text:
        sym = surface_char(ch)
        if not sym:
            continue
        if after_lower and (ch.isupper() or ch.istitle()):
            out.append(SEPARATOR)
        out.append(sym)
        after_lower = ch.islower()
    return "".join(out), after_lower


def normalize(text: str) -> str:
    """Normalise a whole text; runs of separators are kept (callers that need one can collapse them)."""
    return "".join(normalize_char(ch) for ch in text)


def word_chars(term: str) -> str:
    """The word characters of a term, in order: what a match must spell out."""
    return normalize(term).replace(SEPARATOR, "")
