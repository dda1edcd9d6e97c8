"""Per-character text normalisation shared by every surface-layer component.

The contract (DESIGN.md, "Surface layer"): each input character maps to zero or more normalised characters by
NFKC, casefolding, folding of common lookalikes and dropping of format characters. We also drop combining marks
(after canonical decomposition), so "Pokémon", "Poke\u0301mon" and "Pokemon" normalise alike: an accent is as
cheap a disguise as a zero-width space. Letters and digits are word characters; everything else separates words.

The mapping is per character (never across characters), so a streaming consumer can normalise any chunking of a
text and get the same symbols as for the whole text.
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
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ɡ": "g", "ӏ": "l", "ь": "b",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "u", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ζ": "z",
    # Latin look-alikes that NFKC keeps apart
    "ı": "i", "ɩ": "i", "ℓ": "l", "ø": "o", "đ": "d", "ł": "l", "ħ": "h",
}


def is_word_char(ch: str) -> bool:
    """Letters and digits (Unicode categories L* and N*) are word characters."""
    return unicodedata.category(ch)[0] in "LN"


@lru_cache(maxsize=65536)
def normalize_char(ch: str) -> str:
    """Normalise one character: a string of word characters and `SEPARATOR`s, possibly empty."""
    category = unicodedata.category(ch)
    if category == "Cf" or category == "Mn" or category == "Me":
        return ""  # zero-width joiners, soft hyphens, BOMs, combining accents: invisible, so ignored
    out = []
    for c in unicodedata.normalize("NFKC", ch).casefold():
        for d in unicodedata.normalize("NFD", c):
            if unicodedata.category(d) in ("Mn", "Me", "Cf"):
                continue
            d = _LOOKALIKES.get(d, d)
            out.append(d if is_word_char(d) else SEPARATOR)
    return "".join(out)


def normalize(text: str) -> str:
    """Normalise a whole text; runs of separators are kept (callers that need one can collapse them)."""
    return "".join(normalize_char(ch) for ch in text)


def word_chars(term: str) -> str:
    """The word characters of a term, in order: what a match must spell out."""
    return normalize(term).replace(SEPARATOR, "")
