"""A tokenizer's vocabulary as text: each token's bytes, and its normalised symbols ready for the mask kernel.

Built once per tokenizer and shared (immutable) by every term set: `filters.token_mask` turns the normalised
characters into one term set's symbol classes and runs the automaton over the whole vocabulary at once.

Token texts (DESIGN.md, "Surface layer", use 2):
- byte-level BPE (GPT-2 style; `ByteLevel` decoder): each character of a token string stands for one byte, through
  the inverse of GPT-2's `bytes_to_unicode` table;
- SentencePiece (`Metaspace` / `Replace("▁", " ")` decoders): `▁` is a space and `<0xHH>` is the raw byte 0xHH
  (byte fallback);
- anything else: the token string in UTF-8.
Added tokens are literal text (never byte-encoded); special tokens carry no text (`None`): detokenisation skips them.

A token's bytes need not be complete UTF-8. `token_text` decodes them as a stream that starts clean, exactly as an
incremental UTF-8 decoder with errors="replace" would: a trailing incomplete sequence stays pending (`tail`), and a
leading continuation byte with nothing pending becomes U+FFFD (a separator once normalised).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from filters.normalize import SEPARATOR, surface_symbols

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SENTENCEPIECE_SPACE = "\u2581"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def byte_level_bytes(token: str) -> bytes:
    """The bytes a byte-level BPE token string stands for; ValueError for a character outside the table."""
    table = _unicode_to_byte()
    try:
        return bytes(table[ch] for ch in token)
    except KeyError as exc:
        raise ValueError(f"token {token!r} has {exc.args[0]!r}, which is not a byte-level BPE character") from None


def sentencepiece_bytes(token: str) -> bytes:
    """The bytes of a SentencePiece token: `<0xHH>` is one raw byte, `▁` is a space."""
    fallback = _BYTE_FALLBACK.match(token)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    return token.replace(_SENTENCEPIECE_SPACE, " ").encode("utf-8")


def token_text(data: bytes) -> tuple[str, bytes]:
    """(text, tail): the text a clean incremental UTF-8 decoder emits for `data`, and the bytes it holds back."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(data, final=False)
    return text, decoder.getstate()[0]


def normalized_symbols(text: str, after_lower: bool = False) -> str:
    """A text's symbols as the surface layer reads it (`filters.normalize.surface_symbols`), with runs of
    separators collapsed to one (they act as one)."""
    out: list[str] = []
    for sym in surface_symbols(text, after_lower)[0]:
        if sym == SEPARATOR and out and out[-1] == SEPARATOR:
            continue
        out.append(sym)
    return "".join(out)


def _decoder_kinds(decoder: dict[str, Any] | None) -> set[str]:
    if not decoder:
        return set()
    kinds = {decoder.get("type", "")}
    for sub in decoder.get("decoders") or ():
        kinds |= _decoder_kinds(sub)
    if decoder.get("type") == "Replace" and decoder.get("pattern", {}).get("String") == _SENTENCEPIECE_SPACE:
        kinds.add("Metaspace")
    return kinds


@dataclass(frozen=True)
class VocabularyIndex:
    """Every token id's text as bytes (`None`: a special token, no text), plus the table the mask kernel gathers from.

    Build one from raw bytes (toy vocabularies in tests) or with `from_hf_tokenizer`.
    """

    token_bytes: tuple[bytes | None, ...]
    eos_token_ids: frozenset[int]

    def __post_init__(self) -> None:
        bad = sorted(i for i in self.eos_token_ids if not 0 <= i < len(self.token_bytes))
        if bad:
            raise ValueError(f"end-of-sequence ids {bad} are outside the vocabulary of {len(self.token_bytes)} tokens")

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    # ---- per-token views (built once, lazily) ---------------------------------------------------------------
    @cached_property
    def has_text(self) -> np.ndarray:
        """Bool per token: False for special (text-less) tokens."""
        return np.array([b is not None for b in self.token_bytes], dtype=np.bool_)

    @cached_property
    def _decoded(self) -> tuple[tuple[str, bytes], ...]:
        return tuple(token_text(b) if b is not None else ("", b"") for b in self.token_bytes)

    @cached_property
    def symbols(self) -> tuple[str, ...]:
        """Normalised characters (separators collapsed) of each token decoded from a clean stream."""
        return tuple(normalized_symbols(text) for text, _ in self._decoded)

    @cached_property
    def starts_upper(self) -> np.ndarray:
        """Bool per token: after text that ended on a lowercase letter, its symbols gain a leading separator (its
        first visible character is an uppercase letter: a word start). Exactly `SEPARATOR + symbols`, checked."""
        out = np.zeros(self.size, dtype=np.bool_)
        for token, (text, _) in enumerate(self._decoded):
            after = normalized_symbols(text, True)
            if after != self.symbols[token]:
                if after != SEPARATOR + self.symbols[token]:
                    raise AssertionError(f"token {token}: a case edge changed more than its start: {text!r}")
                out[token] = True
        return out

    @cached_property
    def tails(self) -> tuple[bytes, ...]:
        """Bytes each token leaves pending (an incomplete UTF-8 sequence at its end), from a clean stream."""
        return tuple(tail for _, tail in self._decoded)

    @cached_property
    def continues_bytes(self) -> np.ndarray:
        """Bool per token: its first byte is a UTF-8 continuation byte, so pending bytes before it change its text."""
        return np.array([bool(b and 0x80 <= b[0] <= 0xBF) for b in self.token_bytes], dtype=np.bool_)

    @cached_property
    def alphabet(self) -> tuple[str, ...]:
        """Every distinct normalised character in the vocabulary; index 0 is the separator."""
        chars = sorted({ch for sym in self.symbols for ch in sym} - {SEPARATOR})
        return (SEPARATOR, *chars)

    @cached_property
    def char_table(self) -> CharTable:
        """Text tokens sorted by symbol count (longest first) and their characters as alphabet indices."""
        char_id = {ch: i for i, ch in enumerate(self.alphabet)}
        lengths = np.array([len(sym) for sym in self.symbols], dtype=np.int64)
        text_ids = np.flatnonzero(self.has_text)
        order = text_ids[np.argsort(-lengths[text_ids], kind="stable")]
        width = int(lengths.max()) if len(lengths) else 0
        table = np.zeros((len(order), width), dtype=np.int32)
        for row, token in enumerate(order.tolist()):
            sym = self.symbols[token]
            if sym:
                table[row, : len(sym)] = [char_id[ch] for ch in sym]
        sorted_lengths = lengths[order]
        active = np.array([int((sorted_lengths > p).sum()) for p in range(width)], dtype=np.int64)
        return CharTable(order=order, chars=table, active=active)

    # ---- constructors -------------------------------------------------------------------------------------
    @classmethod
    def from_hf_tokenizer(cls, tokenizer: Any) -> VocabularyIndex:
        """From a transformers tokenizer backed by `tokenizers` (fast), or a `tokenizers.Tokenizer`."""
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not hasattr(backend, "to_str"):
            raise TypeError(
                f"expected a Hugging Face fast tokenizer (with a `tokenizers` backend), got {type(tokenizer).__name__}"
            )
        spec = json.loads(backend.to_str())
        vocab: dict[str, int] = backend.get_vocab(with_added_tokens=True)
        added = {entry["id"]: entry for entry in spec.get("added_tokens") or ()}
        kinds = _decoder_kinds(spec.get("decoder"))
        piece_bytes: Callable[[str], bytes]
        if "ByteLevel" in kinds:
            piece_bytes = byte_level_bytes
        elif "Metaspace" in kinds or "ByteFallback" in kinds:
            piece_bytes = sentencepiece_bytes
        else:
            piece_bytes = _utf8
        size = max(vocab.values()) + 1 if vocab else 0
        texts: list[bytes | None] = [None] * size
        for piece, token_id in vocab.items():
            entry = added.get(token_id)
            if entry is not None:
                texts[token_id] = None if entry.get("special") else entry["content"].encode("utf-8")
            else:
                texts[token_id] = piece_bytes(piece)
        eos = getattr(tokenizer, "eos_token_id", None)
        return cls(tuple(texts), frozenset([eos] if isinstance(eos, int) else []))

    @classmethod
    def from_pretrained(cls, path: str, *, revision: str | None = None) -> VocabularyIndex:
        """Load the tokenizer at `path` (a folder or hub id, offline as configured) with transformers."""
        from transformers import AutoTokenizer

        return cls.from_hf_tokenizer(AutoTokenizer.from_pretrained(path, revision=revision))

    @classmethod
    def from_texts(cls, texts: Iterable[str | bytes | None], eos_token_ids: Sequence[int] = ()) -> VocabularyIndex:
        """A toy vocabulary: str entries are UTF-8 text, bytes are raw, None is a special token."""
        data = tuple(t.encode("utf-8") if isinstance(t, str) else t for t in texts)
        return cls(data, frozenset(eos_token_ids))


def _utf8(piece: str) -> bytes:
    return piece.encode("utf-8")


@dataclass(frozen=True)
class CharTable:
    """Text tokens in `order` (longest symbol string first); `chars[row, p]` is the p-th character's alphabet index.

    Only the first `active[p]` rows have a p-th character, so the kernel works on prefixes and needs no padding.
    """

    order: np.ndarray
    chars: np.ndarray
    active: np.ndarray
