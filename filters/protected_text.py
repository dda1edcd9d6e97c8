"""Protected text: no run of more than `max_quote_words` consecutive words of a corpus reaches the user.

Words are runs of word characters after the per-character surface normaliser (`filters.normalize.normalize`: case,
lookalikes, accents, zero-width characters and separators do not matter), so `THE BOY WHO LIVED`, `the  boy\nwho
lived` and `The Boy Who Lived` are one run. A case change inside a word is not a word break here ("TheBoyWhoLived"
is one word): reading it as one keeps ALL-CAPS forms of words such as "McGonagall" the same word.

Three parts, one concept:
- `scan_sources` (policy load): resolve the policy's source globs, reject missing, unreadable, binary and empty
  files and corpora over the memory budget, and give the corpus a content hash;
- `ProtectedIndex` (built once per content hash, cached on disk under the index directory, memory-mapped): for every
  run of k = max_quote_words words of the corpus, the 64-bit hash of the run (`gram_hash` over xxh3 word hashes)
  and the id of the word that follows it, sorted by hash. A run of k+1 protected words is "the first k words hash
  to an entry whose next word is the (k+1)-th";
- users of the index: `ProtectedStream` (the text backstop: streaming, holds back only the trailing words that could
  still extend a protected run) and `ProtectedMasks` / `ProtectedCursor` (decode time: a token is banned when the
  word it forms, complete or still growing, would be the (k+1)-th word of a protected run).

Decode time is stricter than the backstop by design: it bans the growing word as soon as it equals the protected
next word ("lived" after "the boy who"), so no continuation of that token can complete the run; the backstop only
counts complete words. Everything the mask lets through therefore passes the backstop too.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import xxhash

from filters.decision import Action, Decision, Layer
from filters.normalize import SEPARATOR, normalize_char
from filters.vocab import VocabularyIndex, token_text
from filters.word_stream import Word, WordHit, WordStream

SUFFIXES = (".txt", ".md", ".jsonl")
JSONL_FIELD = "text"
MIN_QUOTE_WORDS = 3
INDEX_FORMAT = 1
"""Bumped whenever normalisation or the hash changes: part of every content hash, so old indexes are not reused."""
BYTES_PER_WORD = 16
"""Index memory per corpus word: an 8-byte run hash, a 4-byte next-word id and a 4-byte source position."""
DEFAULT_BUDGET_MIB = 1024
BUDGET_ENV = "QUELL_PROTECTED_TEXT_BUDGET_MIB"
INDEX_DIR_ENV = "QUELL_INDEX_DIR"
CACHE_DIR_ENV = "QUELL_CACHE_DIR"
_BLOCK_CHARS = 1 << 20
_ASCII_WORD = re.compile(r"[a-z0-9]+")
_WORD_CHAR = re.compile(r"[^\W_]")
_MASK64 = (1 << 64) - 1
_SEED = 0x9E3779B97F4A7C15
_MULT = 0xBF58476D1CE4E5B9
_DOC_BREAK = -1


class CorpusError(ValueError):
    """A protected-text source cannot be used; the message names the file and the reason."""


# ---- words and hashes ------------------------------------------------------------------------------------------
def words_of(text: str) -> list[str]:
    """The words of a text: runs of word characters after per-character normalisation."""
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    return text.translate({ord(ch): normalize_char(ch) for ch in set(text)}).split()


def word_hash(word: str) -> int:
    return xxhash.xxh3_64_intdigest(word.encode("utf-8", errors="surrogatepass"))


def gram_hash(hashes: Sequence[int]) -> int:
    """64-bit hash of a run of words from their word hashes (`gram_hashes` is the same over arrays)."""
    h = _SEED
    for x in hashes:
        h = ((h ^ x) * _MULT) & _MASK64
        h ^= h >> 31
    return h


def gram_hashes(word_hashes: np.ndarray, k: int) -> np.ndarray:
    """`gram_hash` of every window of k consecutive entries (len - k + 1 of them), vectorised."""
    n = len(word_hashes) - k + 1
    h = np.full(max(n, 0), _SEED, dtype=np.uint64)
    for j in range(k):
        h ^= word_hashes[j : j + n]
        h *= np.uint64(_MULT)
        h ^= h >> np.uint64(31)
    return h


# ---- sources ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Corpus:
    """A target's protected sources as found at policy load: files, their content hash and a word estimate."""

    files: tuple[Path, ...]
    max_quote_words: int
    digest: str
    """sha256 over the index format, k and every file's name and bytes: the index's name on disk."""
    words: int  # estimated (spaces and line breaks), for the memory budget
    budget_bytes: int

    @property
    def estimated_bytes(self) -> int:
        return self.words * BYTES_PER_WORD


def budget_bytes() -> int:
    raw = os.environ.get(BUDGET_ENV, "")
    try:
        mib = float(raw) if raw else DEFAULT_BUDGET_MIB
    except ValueError:
        raise CorpusError(f"{BUDGET_ENV}={raw!r} is not a number of MiB") from None
    return int(mib * 1024 * 1024)


def scan_sources(patterns: Sequence[str], base_dir: Path, max_quote_words: int) -> Corpus:
    """Resolve and check the sources (globs relative to `base_dir`); CorpusError names the file and the reason."""
    files: list[Path] = []
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else str(base_dir / pattern)
        found = sorted(Path(p) for p in glob.glob(full, recursive=True))
        if not found:
            raise CorpusError(f"source {pattern!r} matches no file (looked for {full})")
        for path in found:
            if path.is_dir():
                continue
            if path.suffix.lower() not in SUFFIXES:
                raise CorpusError(f"source {path}: unsupported file type {path.suffix!r}; use .txt, .md or .jsonl")
            if path not in files:
                files.append(path)
    if not files:
        raise CorpusError(f"sources {list(patterns)!r} name only folders; name the files (e.g. corpora/*.txt)")
    digest = hashlib.sha256(f"quell-protected-text/{INDEX_FORMAT}/k={max_quote_words}\n".encode())
    words, budget = 0, budget_bytes()
    for path in files:
        text = _read_source(path)
        count = sum(t.count(" ") + t.count("\n") + 1 for t in _documents(path, text))  # no word list in memory
        if not any(_WORD_CHAR.search(t) for t in _documents(path, text)):
            raise CorpusError(f"source {path} is empty: it has no words")
        words += count
        digest.update(path.name.encode() + b"\0" + text.encode("utf-8", errors="surrogatepass") + b"\0")
        if words * BYTES_PER_WORD > budget:
            raise CorpusError(
                f"the sources hold about {words:,} words (at {path}), an index of about "
                f"{words * BYTES_PER_WORD / 2**20:,.0f} MiB, over the {budget / 2**20:,.0f} MiB budget; "
                f"split the corpus across targets or raise {BUDGET_ENV}"
            )
    return Corpus(tuple(files), max_quote_words, digest.hexdigest(), words, budget)


def _read_source(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"source {path} cannot be read: {exc.strerror or exc}") from None
    if b"\0" in data[:65536]:
        raise CorpusError(f"source {path} is a binary file (it holds NUL bytes); give plain UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"source {path} is not UTF-8 text (bad byte at offset {exc.start}); "
                          "give plain UTF-8 text") from None  # fmt: skip


def source_documents(path: Path) -> Iterator[str]:
    """The texts of one source file (checked as at load: CorpusError names the file and the reason)."""
    return _documents(path, _read_source(path))


def _documents(path: Path, text: str) -> Iterator[str]:
    """The texts of a source: the whole file, or each line's `text` field for .jsonl."""
    if path.suffix.lower() != ".jsonl":
        yield text
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"source {path}:{number} is not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get(JSONL_FIELD), str):
            raise CorpusError(f"source {path}:{number} has no string field {JSONL_FIELD!r}")
        yield row[JSONL_FIELD]


# ---- the index -------------------------------------------------------------------------------------------------
def default_index_dir() -> Path:
    """Where the gateway writes indexes and the vLLM plugin reads them (both processes must agree): $QUELL_INDEX_DIR,
    else $QUELL_CACHE_DIR/protected, else .cache/protected (relative to the working directory)."""
    explicit = os.environ.get(INDEX_DIR_ENV)
    if explicit:
        return Path(explicit).resolve()
    return (Path(os.environ.get(CACHE_DIR_ENV) or ".cache") / "protected").resolve()


_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def is_digest(value: object) -> bool:
    return isinstance(value, str) and bool(_DIGEST.match(value))


@dataclass(frozen=True)
class ProtectedIndex:
    """Runs of k words of one corpus: `grams` (sorted 64-bit run hashes), `nexts` (the following word's id) and
    `positions` (word offset of the run in the concatenated sources); `words` maps ids to words."""

    digest: str
    k: int
    grams: np.ndarray = field(repr=False)
    nexts: np.ndarray = field(repr=False)
    positions: np.ndarray = field(repr=False)
    words: tuple[str, ...] = field(repr=False)
    sources: tuple[tuple[str, int], ...] = field(repr=False)  # (file, first word offset) in corpus order

    @cached_property
    def vocabulary(self) -> frozenset[str]:
        return frozenset(self.words)

    def next_words(self, previous: Sequence[str]) -> list[str]:
        """Words that would make `previous` (its last k words) plus that word a protected run of k+1."""
        if len(previous) < self.k:
            return []
        lo, hi = self._range(previous)
        return list(dict.fromkeys(self.words[i] for i in self.nexts[lo:hi].tolist()))

    def protected(self, run: Sequence[str]) -> bool:
        """Whether the k+1 words of `run` appear consecutively in the corpus."""
        if len(run) != self.k + 1:
            raise ValueError(f"a protected run has {self.k + 1} words, got {len(run)}")
        return run[-1] in self.next_words(run[:-1])

    def where(self, run: Sequence[str]) -> tuple[str, int] | None:
        """(source file, word offset in it) of one occurrence of the k+1 words of `run`, or None."""
        lo, hi = self._range(run[:-1])
        for i in range(lo, hi):
            if self.words[int(self.nexts[i])] == run[-1]:
                pos = int(self.positions[i])
                file, first = max((s for s in self.sources if s[1] <= pos), key=lambda s: s[1])
                return file, pos - first
        return None

    def _range(self, previous: Sequence[str]) -> tuple[int, int]:
        h = np.uint64(gram_hash([word_hash(w) for w in previous[-self.k :]]))
        return int(np.searchsorted(self.grams, h, "left")), int(np.searchsorted(self.grams, h, "right"))

    @property
    def nbytes(self) -> int:
        return int(self.grams.nbytes + self.nexts.nbytes + self.positions.nbytes)

    # ---- build, save, load ------------------------------------------------------------------------------------
    @classmethod
    def build(cls, corpus: Corpus, progress: Callable[[int], None] | None = None) -> ProtectedIndex:
        """Index a corpus; `progress(words)` is called as its words are read (the slow part), then once more with
        `corpus.words` when the runs are hashed and sorted."""
        k = corpus.max_quote_words
        ids: dict[str, int] = {}
        chunks: list[np.ndarray] = []
        sources: list[tuple[str, int]] = []
        offset = 0
        for path in corpus.files:
            sources.append((str(path), offset))
            offset += _word_ids(path, ids, chunks, progress, offset)  # the file's text is freed when it returns
        seq = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
        del chunks
        vocab = tuple(ids)
        table = np.fromiter((word_hash(w) for w in vocab), np.uint64, len(vocab))
        n = max(len(seq) - k, 0)  # runs of k words that have a next word
        grams = np.empty(n, dtype=np.uint64)
        for first in range(0, n, _BLOCK_CHARS):  # in slices, so the temporaries stay small
            last = min(first + _BLOCK_CHARS, n)
            grams[first:last] = gram_hashes(table[np.maximum(seq[first : last + k - 1], 0)], k)
        # A run starting at i is valid when none of its k words nor the next one is a document break.
        breaks = np.flatnonzero(seq < 0)
        edges = np.zeros(n + 1, dtype=np.int32)
        np.add.at(edges, np.clip(breaks - k, 0, n), 1)
        np.add.at(edges, np.clip(breaks + 1, 0, n), -1)
        valid = np.flatnonzero(np.cumsum(edges[:n]) == 0).astype(np.uint32)
        del edges
        grams, nexts = grams[valid], seq[k : k + n][valid]
        del seq
        order = np.lexsort((nexts, grams))
        grams, nexts, positions = grams[order], nexts[order], valid[order]
        del order, valid
        keep = np.ones(len(grams), dtype=np.bool_)
        keep[1:] = (grams[1:] != grams[:-1]) | (nexts[1:] != nexts[:-1])
        if progress is not None:
            progress(corpus.words)
        return cls(corpus.digest, k, grams[keep], nexts[keep].astype(np.uint32), positions[keep], vocab,
                   tuple(sources))  # fmt: skip

    def save(self, directory: Path) -> Path:
        """Write under `directory/<digest>` atomically (a temp folder renamed into place)."""
        final = directory / self.digest
        if final.is_dir():
            return final
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{self.digest}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir()
        try:
            np.save(tmp / "grams.npy", self.grams)
            np.save(tmp / "nexts.npy", self.nexts)
            np.save(tmp / "positions.npy", self.positions)
            (tmp / "words.txt").write_text("\n".join(self.words), encoding="utf-8", errors="surrogatepass")
            meta = {"format": INDEX_FORMAT, "k": self.k, "sources": self.sources, "runs": len(self.grams)}
            (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            os.replace(tmp, final)
        except OSError:
            if final.is_dir():  # another process won the race with the same content
                return final
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    @classmethod
    def load(cls, directory: Path, digest: str) -> ProtectedIndex:
        """Memory-map the index `digest` under `directory`; FileNotFoundError when it is not there."""
        if not is_digest(digest):
            raise ValueError(f"protected-text index id must be 64 hex digits, got {digest!r}")
        root = directory / digest
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != INDEX_FORMAT:
            raise FileNotFoundError(f"{root} has index format {meta.get('format')}, expected {INDEX_FORMAT}")
        text = (root / "words.txt").read_text(encoding="utf-8", errors="surrogatepass")
        return cls(digest, int(meta["k"]), np.load(root / "grams.npy", mmap_mode="r"),
                   np.load(root / "nexts.npy", mmap_mode="r"), np.load(root / "positions.npy", mmap_mode="r"),
                   tuple(text.split("\n")) if text else (), tuple((f, int(o)) for f, o in meta["sources"]))  # fmt: skip


def _word_ids(path: Path, ids: dict[str, int], chunks: list[np.ndarray],
              progress: Callable[[int], None] | None = None, before: int = 0) -> int:  # fmt: skip
    """Append the word ids of one source (a break after each document) to `chunks`; returns how many were added."""
    added = 0
    for doc in _documents(path, _read_source(path)):
        for block in _blocks(doc):
            words = words_of(block)
            for word in set(words).difference(ids):
                ids[word] = len(ids)
            chunks.append(np.fromiter(map(ids.__getitem__, words), np.int32, len(words)))
            added += len(words)
            if progress is not None:
                progress(before + added)
        chunks.append(np.array([_DOC_BREAK], dtype=np.int32))  # no run spans two documents
        added += 1
    return added


def _blocks(text: str) -> Iterator[str]:
    """Slices of about _BLOCK_CHARS cut at whitespace, so that no word is split and memory stays bounded."""
    start = 0
    while start < len(text):
        end = min(start + _BLOCK_CHARS, len(text))
        if end < len(text):
            space = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            end = space + 1 if space > start else end
        yield text[start:end]
        start = end


@dataclass
class IndexBuild:
    """One index being built: which corpus, how far (words read of about `words`), since when."""

    digest: str
    files: int
    words: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, object]:
        return {"index": self.digest[:12], "files": self.files, "words": self.words, "words_read": self.done,
                "percent": round(100 * min(self.done / self.words, 1.0), 1) if self.words else 100.0,
                "seconds": round(time.monotonic() - self.started, 1)}  # fmt: skip


class IndexBuilds:
    """The index builds under way in this process (a reload builds in a worker thread while the last good policies
    serve); `/readyz` lists them. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builds: dict[str, IndexBuild] = {}

    def build(self, corpus: Corpus, progress: Callable[[int], None] | None = None) -> ProtectedIndex:
        """`ProtectedIndex.build`, listed in `active()` until it returns; `progress` is called as it goes too."""
        entry = IndexBuild(corpus.digest, len(corpus.files), corpus.words)
        with self._lock:
            self._builds[corpus.digest] = entry

        def report(done: int) -> None:
            entry.done = done
            if progress is not None:
                progress(done)

        try:
            return ProtectedIndex.build(corpus, report)
        finally:
            with self._lock:
                if self._builds.get(corpus.digest) is entry:
                    del self._builds[corpus.digest]

    def active(self) -> list[IndexBuild]:
        with self._lock:
            return list(self._builds.values())


BUILDS = IndexBuilds()
"""Every build `cached_index` starts in this process."""
_LOADED: OrderedDict[tuple[str, str], ProtectedIndex] = OrderedDict()
_LOADED_MAX = 32


def cached_index(digest: str, directory: Path | None = None, corpus: Corpus | None = None) -> ProtectedIndex:
    """The index `digest`: from this process's cache, else from disk, else built from `corpus` and saved.
    Without a corpus a missing index raises FileNotFoundError naming the directory."""
    directory = directory or default_index_dir()
    key = (str(directory), digest)
    index = _LOADED.get(key)
    if index is not None:
        _LOADED.move_to_end(key)
        return index
    try:
        index = ProtectedIndex.load(directory, digest)
    except FileNotFoundError:
        if corpus is None:
            raise FileNotFoundError(f"no protected-text index {digest[:12]}... in {directory}") from None
        index = BUILDS.build(corpus)
        index.save(directory)
    _LOADED[key] = index
    if len(_LOADED) > _LOADED_MAX:
        _LOADED.popitem(last=False)
    return index


# ---- text backstop ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProtectedRule:
    policy_ref: str
    target_id: str
    action: str  # mask | stop | refuse
    refusal: str
    index: ProtectedIndex


@dataclass(frozen=True)
class ProtectedRun:
    """A quote longer than allowed: `text[start:end]`, `words` long, found at `source` (word offset `offset`)."""

    rule: ProtectedRule
    start: int
    end: int
    words: int
    source: str | None = None
    offset: int | None = None

    def as_dict(self) -> dict[str, object]:
        """As clients see it: the source by file name only (where the corpus lives on the server is not theirs)."""
        return {"policy": self.rule.policy_ref, "target": self.rule.target_id, "layer": "protected_text",
                "action": str(self.rule.action), "score": 1.0, "span": [self.start, self.end], "words": self.words,
                "source": Path(self.source).name if self.source else None, "source_word_offset": self.offset}  # fmt: skip


@dataclass
class ProtectedStream(WordStream):
    """Feed text chunk by chunk (or pipe another stage's `GuardStep`s through it); release what no protected run
    can still reach, redact (`mask`), cut (`stop`) or refuse on a run of k+1 protected words."""

    rules: Sequence[ProtectedRule] = ()

    def __post_init__(self) -> None:
        self.keep = max((r.index.k for r in self.rules), default=0)
        self._vocabularies = [r.index.vocabulary for r in self.rules]

    def _on_word(self, word: Word, previous: list[Word]) -> list[WordHit]:
        texts = [w.text for w in previous]
        hits = []
        for rule in self.rules:
            k = rule.index.k
            if len(texts) >= k and word.text in rule.index.next_words(texts[-k:]):
                action = Action.REDACT if rule.action == "mask" else Action(rule.action)
                decision = Decision(rule.policy_ref, rule.target_id, Layer.PROTECTED_TEXT, action, 1.0,
                                    previous[-k].start, word.end)  # fmt: skip
                hits.append(WordHit(decision, rule.refusal if action is Action.REFUSE else None))
        return hits

    def _may_join(self, word: Word) -> bool:
        return any(word.text in v for v in self._vocabularies)


def find_runs(rules: Sequence[ProtectedRule], text: str) -> list[ProtectedRun]:
    """Every quote longer than allowed in a complete text, overlapping windows merged, with where it comes from."""
    out: list[ProtectedRun] = []
    for rule in rules:
        words: list[Word] = []
        hits: list[tuple[int, int]] = []  # (first word index, last word index)
        for w in _spans(text):
            previous = [x.text for x in words[-rule.index.k :]]
            if len(previous) == rule.index.k and w.text in rule.index.next_words(previous):
                hits.append((len(words) - rule.index.k, len(words)))
            words.append(w)
        for first, last in _merge(hits):
            run = [x.text for x in words[first : first + rule.index.k + 1]]
            found = rule.index.where(run)
            out.append(ProtectedRun(rule, words[first].start, words[last].end, last - first + 1,
                                    found[0] if found else None, found[1] if found else None))  # fmt: skip
    return sorted(out, key=lambda r: r.start)


def _spans(text: str) -> Iterator[Word]:
    current: Word | None = None
    for pos, ch in enumerate(text):
        for sym in normalize_char(ch):
            if sym == SEPARATOR:
                if current is not None:
                    yield current
                current = None
            elif current is None:
                current = Word(pos, pos + 1, sym)
            else:
                current.text += sym
                current.end = pos + 1
    if current is not None:
        yield current


def _merge(hits: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Overlapping windows of word indices merged into maximal runs."""
    current: tuple[int, int] | None = None
    for first, last in hits:
        if current is not None and first <= current[1]:
            current = (current[0], last)
            continue
        if current is not None:
            yield current
        current = (first, last)
    if current is not None:
        yield current


# ---- decode time -----------------------------------------------------------------------------------------------
MAX_CACHED_BANS = 4096


class ProtectedMasks:
    """Banned token ids per cursor position for one index over one vocabulary.

    Tokens are grouped once by the shape of their normalised text: one word glued to what came before (`W`, `W.`),
    one word after a separator (` W`, ` W,`), no word (never banned), or several words (simulated one by one; three
    tokens in SmolLM2's vocabulary). A step then costs a few index look-ups, whatever the vocabulary size.
    """

    def __init__(self, index: ProtectedIndex, vocab: VocabularyIndex):
        self.index = index
        self.vocab = vocab
        self._texts: list[str] = []
        self._glued: dict[str, list[int]] = {}
        self._spaced: dict[str, list[int]] = {}
        self._complex: list[int] = []
        for token, data in enumerate(vocab.token_bytes):
            text = token_text(data)[0] if data is not None else ""
            self._texts.append(text)
            segments = "".join(map(normalize_char, text)).split(SEPARATOR)
            words = [s for s in segments if s]
            if len(words) >= 2:
                self._complex.append(token)
            elif words:
                (self._glued if segments[0] else self._spaced).setdefault(words[0], []).append(token)
        self._continuing = np.flatnonzero(vocab.continues_bytes).tolist()
        self._cache: OrderedDict[tuple[tuple[str, ...], str, bytes], np.ndarray] = OrderedDict()

    def banned_ids(self, previous: tuple[str, ...], current: str = "", tail: bytes = b"") -> np.ndarray:
        """Sorted token ids (int64) that would form the (k+1)-th word of a protected run from this position."""
        k = self.index.k
        key = (previous[-k:], current, tail)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        ids = self._compute(previous[-k:], current, tail)
        self._cache[key] = ids
        if len(self._cache) > MAX_CACHED_BANS:
            self._cache.popitem(last=False)
        return ids

    def _compute(self, previous: tuple[str, ...], current: str, tail: bytes) -> np.ndarray:
        index = self.index
        after = (previous + (current,))[-index.k :] if current else previous
        banned: list[int] = []
        if not tail:
            for word in index.next_words(previous):
                if len(word) > len(current) and word.startswith(current):
                    banned += self._glued.get(word[len(current) :], ())
            for word in index.next_words(after):
                banned += self._spaced.get(word, ())
            banned += [t for t in self._complex if self._forms_run(previous, current, self._texts[t])]
        else:
            # Pending bytes before a token that does not continue them decode as U+FFFD, a separator.
            continuing = set(self._continuing)
            for word in index.next_words(after):
                banned += [t for t in self._glued.get(word, []) + self._spaced.get(word, []) if t not in continuing]
            banned += [t for t in self._complex if t not in continuing
                       and self._forms_run(previous, current, "\ufffd" + self._texts[t])]  # fmt: skip
            for t in self._continuing:
                data = self.vocab.token_bytes[t]
                if self._forms_run(previous, current, token_text(tail + data)[0]):
                    banned.append(t)
        return np.unique(np.array(banned, dtype=np.int64))

    def _forms_run(self, previous: tuple[str, ...], current: str, text: str) -> bool:
        """Whether `text` after (previous, current) completes a word, or leaves one growing, that ends a run."""
        k, words, word, grew = self.index.k, list(previous), current, False
        for ch in text:
            for sym in normalize_char(ch):
                if sym != SEPARATOR:
                    word, grew = word + sym, True
                    continue
                if word:
                    if grew and word in self.index.next_words(words[-k:]):
                        return True
                    words.append(word)
                word, grew = "", False
        return grew and bool(word) and word in self.index.next_words(words[-k:])


class ProtectedCursor:
    """One request's position in the text for one index: the last k complete words, the word still growing, and
    the UTF-8 bytes still pending."""

    def __init__(self, masks: ProtectedMasks):
        self.masks = masks
        self.previous: tuple[str, ...] = ()
        self.current = ""
        self.consumed = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def tail(self) -> bytes:
        return self._decoder.getstate()[0]

    def advance(self, token_id: int) -> None:
        """Feed one sampled token; ids outside the tokenizer and special tokens carry no text."""
        self.consumed += 1
        vocab = self.masks.vocab
        data = vocab.token_bytes[token_id] if 0 <= token_id < vocab.size else None
        if data is None:
            return
        k = self.masks.index.k
        for ch in self._decoder.decode(data, final=False):
            for sym in normalize_char(ch):
                if sym != SEPARATOR:
                    self.current += sym
                elif self.current:
                    self.previous = (self.previous + (self.current,))[-k:]
                    self.current = ""

    def banned(self) -> np.ndarray:
        return self.masks.banned_ids(self.previous, self.current, self.tail)
