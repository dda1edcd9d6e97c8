"""Token texts as bytes: toy tables first, then a SentencePiece-style tokenizer built here, then the real model's."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models

from filters.vocab import (
    VocabularyIndex,
    byte_level_bytes,
    bytes_to_unicode,
    normalized_symbols,
    sentencepiece_bytes,
    token_text,
)

MODEL_DIR = Path(__file__).resolve().parents[2] / ".cache" / "models" / "SmolLM2-135M-Instruct"


def test_bytes_to_unicode_is_a_bijection_onto_printables() -> None:
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


@pytest.mark.parametrize(
    "piece, expected",
    [("Ġhello", b" hello"), ("Ċ", b"\n"), ("ĠSpider", b" Spider"), ("Ã©", b"\xc3\xa9"), ("âĢ", b"\xe2\x80")],
)
def test_byte_level_pieces(piece: str, expected: bytes) -> None:
    assert byte_level_bytes(piece) == expected


def test_byte_level_rejects_foreign_characters() -> None:
    with pytest.raises(ValueError, match="not a byte-level BPE character"):
        byte_level_bytes("▁hi")


@pytest.mark.parametrize(
    "piece, expected",
    [
        ("▁hello", b" hello"),
        ("<0x0A>", b"\n"),
        ("<0xE2>", b"\xe2"),
        ("<0xe2>", b"\xe2"),
        ("<0xE2", b"<0xE2"),
        ("é", "é".encode()),
    ],
)
def test_sentencepiece_pieces(piece: str, expected: bytes) -> None:
    assert sentencepiece_bytes(piece) == expected


@pytest.mark.parametrize(
    "data, text, tail",
    [
        (b"plain", "plain", b""),
        (b"caf\xc3", "caf", b"\xc3"),
        (b"\xe2\x82", "", b"\xe2\x82"),
        (b"\xa9x", "\ufffdx", b""),
        (b"\xe2A", "\ufffdA", b""),
        ("é!".encode(), "é!", b""),
    ],
)
def test_token_text_decodes_from_a_clean_stream(data: bytes, text: str, tail: bytes) -> None:
    assert token_text(data) == (text, tail)


def test_normalized_symbols_collapse_separators() -> None:
    assert normalized_symbols("  Spi\u200bder -\t Man..") == " spider man "
    assert normalized_symbols("Sp!der$ M@n") == "sp!der$ m@n"  # stand-in marks are kept for the automaton
    assert normalized_symbols("teamSpider") == "team spider"  # a case change inside a word is a word start
    assert normalized_symbols("Spider", after_lower=True) == " spider"


def test_tokens_that_start_a_word_after_a_lowercase_letter() -> None:
    vocab = VocabularyIndex.from_texts(["Man", "man", " Man", "\u200bMan", "SPIDER", "4", None, "\u00c9t\u00e9"])
    assert vocab.starts_upper.tolist() == [True, False, False, True, True, False, False, True]


def test_toy_vocabulary_table() -> None:
    vocab = VocabularyIndex.from_texts([None, "spider", "-", " man", b"\xc3", b"\xa9s", "é"], eos_token_ids=[0])
    assert vocab.has_text.tolist() == [False, True, True, True, True, True, True]
    assert vocab.symbols == ("", "spider", " ", " man", "", " s", "e")
    assert vocab.tails[4] == b"\xc3"
    assert vocab.continues_bytes.tolist() == [False, False, False, False, False, True, False]
    table = vocab.char_table
    assert table.order[0] == 1  # "spider" is the longest
    assert 0 not in table.order.tolist()  # the special token has no row
    lengths = [len(vocab.symbols[t]) for t in table.order.tolist()]
    assert lengths == sorted(lengths, reverse=True)
    assert table.active.tolist() == [sum(n > p for n in lengths) for p in range(max(lengths))]
    row = table.order.tolist().index(3)
    assert "".join(vocab.alphabet[i] for i in table.chars[row, : len(" man")]) == " man"


def test_eos_outside_vocabulary_is_rejected() -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        VocabularyIndex.from_texts(["a"], eos_token_ids=[5])


def test_sentencepiece_with_byte_fallback() -> None:
    vocab = {"<unk>": 0, "</s>": 1, "<0xE2>": 2, "<0x82>": 3, "<0xAC>": 4, "▁spider": 5, "▁man": 6, "-": 7, "man": 8}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens(["</s>"])
    index = VocabularyIndex.from_hf_tokenizer(tokenizer)
    assert index.token_bytes[1] is None
    assert index.token_bytes[2:7] == (b"\xe2", b"\x82", b"\xac", b" spider", b" man")
    ids = [5, 7, 8, 2, 3, 4, 6]
    joined = b"".join(index.token_bytes[i] for i in ids).decode()
    assert joined.lstrip(" ") == tokenizer.decode(ids)


@pytest.fixture(scope="module")
def smollm():
    transformers = pytest.importorskip("transformers")
    if not (MODEL_DIR / "tokenizer.json").exists():
        pytest.skip(f"model not prepared at {MODEL_DIR} (run `make setup`)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR))
    return tokenizer, VocabularyIndex.from_hf_tokenizer(tokenizer)


def test_real_tokenizer_special_tokens_have_no_text(smollm) -> None:
    tokenizer, index = smollm
    assert index.size == len(tokenizer)
    assert index.eos_token_ids == {tokenizer.eos_token_id}
    for special in tokenizer.all_special_ids:
        assert index.token_bytes[special] is None
    assert index.has_text.sum() == index.size - len(tokenizer.added_tokens_decoder)


def test_real_tokenizer_bytes_decode_like_the_tokenizer(smollm) -> None:
    tokenizer, index = smollm
    rng = random.Random(7)
    text_ids = [i for i in range(index.size) if index.token_bytes[i] is not None]
    for _ in range(500):
        ids = rng.sample(text_ids, rng.randint(1, 6)) + [tokenizer.eos_token_id]
        ours = b"".join(index.token_bytes[i] or b"" for i in ids).decode("utf-8", errors="replace")
        assert ours == tokenizer.decode(ids, skip_special_tokens=True)
    for text in ["Spider-Man's 🕷️ café, 東京!", "  \n\tx"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert b"".join(index.token_bytes[i] for i in ids).decode() == text
