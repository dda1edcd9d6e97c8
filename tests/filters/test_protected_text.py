"""Protected text (filters.protected_text): the policy field, the index, the streaming backstop and decode masks."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from filters.policy_loader import PolicyError, load_policy_file, parse_policy
from filters.protected_text import (
    BUDGET_ENV,
    ProtectedCursor,
    ProtectedIndex,
    ProtectedMasks,
    ProtectedRule,
    ProtectedStream,
    cached_index,
    find_runs,
    gram_hash,
    gram_hashes,
    word_hash,
    words_of,
)
from filters.vocab import VocabularyIndex
from tests.procs import ROOT

# An invented passage (not from any book); k = 3, so any 4 consecutive words of it are a protected run.
PASSAGE = (
    "Nobody expected the boy who lived under the old stairs to become the keeper of the lantern. "
    "He polished brass every morning and counted the gulls that circled the harbour wall."
)
K = 3


@pytest.fixture(autouse=True)
def _index_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a policy builds its index (filters.policy_loader): keep them out of the project's cache."""
    monkeypatch.setenv("QUELL_INDEX_DIR", str(tmp_path / "indexes"))


def _policy(tmp_path: Path, body: str, corpus: dict[str, bytes | str] | None = None) -> Path:
    for name, data in (corpus if corpus is not None else {"corpus/a.txt": PASSAGE}).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    policy = tmp_path / "p.yaml"
    policy.write_text(body)
    return policy


def _body(sources: str = "[corpus/*.txt]", k: int = K, action: str = "mask") -> str:
    return (f"id: books\nrefusal: no quotes\ntargets:\n  - id: lantern\n    protected_text:\n"
            f"      sources: {sources}\n      max_quote_words: {k}\n    on_protected: {action}\n")  # fmt: skip


def _rule(tmp_path: Path, action: str = "mask", k: int = K, text: str = PASSAGE) -> ProtectedRule:
    policy = load_policy_file(_policy(tmp_path, _body(k=k, action=action), {"corpus/a.txt": text}))
    corpus = policy.targets[0].protected_text.corpus
    return ProtectedRule(policy.ref, "lantern", action, policy.refusal, ProtectedIndex.build(corpus))


# ---- the policy field ----------------------------------------------------------------------------------------------
def test_policy_loads_and_version_follows_corpus_content(tmp_path: Path) -> None:
    path = _policy(tmp_path, _body())
    first = load_policy_file(path)
    assert first.targets[0].protected_text.corpus.files == (tmp_path / "corpus" / "a.txt",)
    (tmp_path / "corpus" / "a.txt").write_text(PASSAGE + " One more sentence here.")
    second = load_policy_file(path)
    assert second.version != first.version  # same YAML, new corpus text: a new policy version


@pytest.mark.parametrize(
    ("sources", "corpus", "fragment"),
    [
        ("[corpus/missing.txt]", {}, "matches no file"),
        ("[corpus/a.txt]", {"corpus/a.txt": b"\x00\x01\x02binary"}, "binary file"),
        ("[corpus/a.txt]", {"corpus/a.txt": b"caf\xe9 latin-1"}, "not UTF-8"),
        ("[corpus/a.txt]", {"corpus/a.txt": " \n -- \n"}, "is empty"),
        ("[corpus/a.pdf]", {"corpus/a.pdf": "text"}, "unsupported file type"),
        ("[corpus/a.jsonl]", {"corpus/a.jsonl": '{"body": "x"}\n'}, "no string field 'text'"),
    ],
)
def test_bad_sources_are_rejected_naming_file_and_reason(tmp_path: Path, sources: str, corpus: dict,
                                                         fragment: str) -> None:  # fmt: skip
    path = _policy(tmp_path, _body(sources), corpus)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    issue = info.value.issues[0]
    assert issue.file == str(path) and issue.field == "targets[0].protected_text" and issue.line == 5
    assert fragment in issue.message
    assert "corpus/" in issue.message  # the source file (or pattern) is named


def test_unreadable_source_is_rejected(tmp_path: Path) -> None:
    path = _policy(tmp_path, _body("[corpus/a.txt]"))
    (tmp_path / "corpus" / "a.txt").chmod(0)
    try:
        if (tmp_path / "corpus" / "a.txt").open("rb").readable():
            pytest.skip("running as root: permissions do not stop reads")
    except PermissionError:
        pass
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy_file(path)


def test_max_quote_words_below_three_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_file(_policy(tmp_path, _body(k=2)))
    issue = info.value.issues[0]
    assert issue.field == "targets[0].protected_text.max_quote_words" and "at least 3" in issue.message


def test_corpus_over_the_memory_budget_says_its_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUDGET_ENV, "0.001")  # about 1 KiB: 65 words of index
    with pytest.raises(PolicyError, match=r"about \d+ words .* over the 0 MiB budget"):
        load_policy_file(_policy(tmp_path, _body(), {"corpus/a.txt": PASSAGE * 4}))


def test_policy_text_without_a_file_cannot_name_sources() -> None:
    with pytest.raises(PolicyError, match="relative to the policy file"):
        parse_policy(_body())


def test_shipped_example_policy_is_valid() -> None:
    policy = load_policy_file(ROOT / "policies" / "examples" / "dickens-quotes.yaml")
    assert policy.targets[0].protected_text.max_quote_words == 7


def test_broken_corpus_keeps_the_last_good_policy(tmp_path: Path) -> None:
    from service.policy_registry import PolicyRegistry

    _policy(tmp_path, _body())
    registry = PolicyRegistry(tmp_path)
    good = registry.reload().policies["books"].policy.version
    (tmp_path / "corpus" / "a.txt").write_bytes(b"\x00binary now")
    snapshot = registry.reload()
    assert snapshot.policies["books"].policy.version == good
    assert any("binary" in str(i) for issues in snapshot.errors.values() for i in issues)


# ---- words, hashes, index ------------------------------------------------------------------------------------------
def test_words_ignore_case_lookalikes_accents_zero_width_and_separators() -> None:
    want = ["the", "boy", "who", "lived"]
    for form in ["THE BOY WHO LIVED", "the  boy\nwho\tlived", "The-Boy—Who...Lived", "thе bоy whо lived",
                 "the b\u200boy who l\u00edved", "ＴＨＥ ＢＯＹ ＷＨＯ ＬＩＶＥＤ"]:  # fmt: skip
        assert words_of(form) == want, form


def test_vectorised_gram_hash_equals_scalar() -> None:
    words = words_of(PASSAGE)
    table = np.array([word_hash(w) for w in words], dtype=np.uint64)
    vector = gram_hashes(table, K)
    for i in range(len(words) - K + 1):
        assert int(vector[i]) == gram_hash([word_hash(w) for w in words[i : i + K]])


def test_index_knows_every_run_and_nothing_across_documents(tmp_path: Path) -> None:
    corpus = {"corpus/a.jsonl": '{"text": "alpha beta gamma delta"}\n{"text": "epsilon zeta eta theta"}\n'}
    policy = load_policy_file(_policy(tmp_path, _body("[corpus/a.jsonl]"), corpus))
    index = ProtectedIndex.build(policy.targets[0].protected_text.corpus)
    assert index.protected(["alpha", "beta", "gamma", "delta"])
    assert index.protected(["epsilon", "zeta", "eta", "theta"])
    assert not index.protected(["gamma", "delta", "epsilon", "zeta"])  # two rows are two documents
    assert index.where(["epsilon", "zeta", "eta", "theta"]) == (str(tmp_path / "corpus" / "a.jsonl"), 5)


def test_index_is_cached_on_disk_by_content_hash(tmp_path: Path) -> None:
    from filters import protected_text

    corpus = load_policy_file(_policy(tmp_path, _body())).targets[0].protected_text.corpus
    assert (tmp_path / "indexes" / corpus.digest / "meta.json").is_file()  # loading the policy built it
    built = cached_index(corpus.digest, tmp_path / "idx", corpus)
    assert (tmp_path / "idx" / corpus.digest / "grams.npy").is_file()
    protected_text._LOADED.clear()  # a fresh process: the next call reads the disk copy, no corpus needed
    loaded = cached_index(corpus.digest, tmp_path / "idx")
    assert isinstance(loaded.grams, np.memmap)
    assert np.array_equal(loaded.grams, built.grams) and loaded.words == built.words
    with pytest.raises(FileNotFoundError, match="no protected-text index"):
        cached_index("0" * 64, tmp_path / "idx")


# ---- the text backstop ---------------------------------------------------------------------------------------------
QUOTES = [
    "THE BOY WHO LIVED",
    "the  boy\nwho\n\nlived",
    "The Boy Who Lived",
    "the boy who l\u00edved",
    "tHe B\u200bOy wHo LiVeD",
]


@pytest.mark.parametrize("quote", QUOTES)
def test_backstop_redacts_every_form_of_a_protected_run(tmp_path: Path, quote: str) -> None:
    stream = ProtectedStream([_rule(tmp_path)])
    out = stream.feed(f"He said {quote} and left.")
    end = stream.finish()
    text = out.text + end.text
    assert text == "He said [redacted] and left."
    assert [d.action for d in out.decisions + end.decisions] == ["redact"]


def test_runs_of_exactly_max_quote_words_pass(tmp_path: Path) -> None:
    rule = _rule(tmp_path)
    for text in ["the boy who", "boy who lived", "BOY WHO LIVED and THE BOY WHO but", "lived under the"]:
        assert find_runs([rule], text) == [], text
        stream = ProtectedStream([rule])
        assert stream.feed(text).text + stream.finish().text == text


def test_stream_gives_the_same_text_under_any_chunking(tmp_path: Path) -> None:
    rule = _rule(tmp_path)
    text = "Listen: NOBODY EXPECTED THE BOY who lived under the old stairs, a story. Gulls circled the harbour."
    whole = ProtectedStream([rule])
    expected = whole.feed(text).text + whole.finish().text
    assert "[redacted]" in expected and "stairs" not in expected and "Listen:" in expected
    rng = random.Random(7)
    for _ in range(20):
        stream, out, pos = ProtectedStream([rule]), "", 0
        while pos < len(text):
            size = rng.randint(1, 9)
            out += stream.feed(text[pos : pos + size]).text
            pos += size
        assert out + stream.finish().text == expected


def test_stream_holds_back_only_words_that_could_extend_a_run(tmp_path: Path) -> None:
    rule = _rule(tmp_path)
    stream = ProtectedStream([rule])
    # "zebra" is not a corpus word: nothing before it can join a later run
    assert stream.feed("Some zebra ").text == "Some zebra "
    step = stream.feed("the boy who")
    assert step.text == ""  # three corpus words: a fourth would make a run
    assert stream.feed(" xylophone ").text == "the boy who xylophone "


@pytest.mark.parametrize("action", ["stop", "refuse"])
def test_stop_and_refuse_cut_before_the_run(tmp_path: Path, action: str) -> None:
    stream = ProtectedStream([_rule(tmp_path, action)])
    step = stream.feed("Sure. The boy who lived under the old stairs.")
    assert step.stopped and step.text == "Sure. "
    assert step.refusal == ("no quotes" if action == "refuse" else None)


def test_find_runs_reports_source_offset_and_length(tmp_path: Path) -> None:
    rule = _rule(tmp_path)
    text = "x: THE KEEPER OF THE LANTERN. HE POLISHED brass"
    (run,) = find_runs([rule], text)
    assert text[run.start : run.end] == "THE KEEPER OF THE LANTERN. HE POLISHED brass"
    assert run.words == 8 and run.offset == words_of(PASSAGE).index("keeper") - 1
    assert run.source.endswith("a.txt")


# ---- decode time ---------------------------------------------------------------------------------------------------
def _walk_never_quotes(rule: ProtectedRule, vocab: VocabularyIndex, lures: list[list[int]], steps: int,
                       seed: int) -> int:  # fmt: skip
    """Random walks that try hard to copy the passage (prefer lure tokens); returns how many tokens were banned.
    Every walk's text must hold no protected run as the backstop reads it."""
    masks = ProtectedMasks(rule.index, vocab)
    rng = random.Random(seed)
    banned_total = 0
    for lure in lures:
        cursor, out = ProtectedCursor(masks), []
        for step in range(steps):
            banned = set(cursor.banned().tolist())
            banned_total += len(banned)
            wanted = lure[step % len(lure)] if rng.random() < 0.9 else rng.randrange(vocab.size)
            choice = wanted if wanted not in banned else rng.choice([t for t in lure if t not in banned] or [0])
            if choice in banned:
                choice = next(t for t in range(vocab.size) if t not in banned)
            out.append(choice)
            cursor.advance(choice)
        data = b"".join(vocab.token_bytes[t] or b"" for t in out)
        text = data.decode("utf-8", errors="replace")
        assert find_runs([rule], text) == [], text
    return banned_total


def test_toy_vocabulary_masks_never_let_a_run_through(tmp_path: Path) -> None:
    rule = _rule(tmp_path)
    pieces = ["the", " the", "THE", " THE", " boy", "boy", "BO", "Y", " who", "who", " W", "HO", " lived", "lived",
              "liv", "ed", " LIV", "ED", "\n", " ", ".", " under", "under", "\u200b", " old", " stairs", "the boy",
              " who lived", "y who", "ed under", "l", "i", "v", "e", "d", " ", "Ö", "\u00ed"]  # fmt: skip
    vocab = VocabularyIndex.from_texts(pieces + [None], eos_token_ids=[len(pieces)])
    ids = {p: i for i, p in enumerate(pieces)}
    lures = [
        [ids[" the"], ids[" boy"], ids[" who"], ids[" lived"], ids[" under"]],
        [ids["THE"], ids[" "], ids["BO"], ids["Y"], ids["\n"], ids[" W"], ids["HO"], ids[" LIV"], ids["ED"]],
        [ids["the boy"], ids[" who lived"], ids[" under"], ids[" old"]],
        [ids["the"], ids[" boy"], ids[" who"], ids[" "], ids["l"], ids["i"], ids["v"], ids["e"], ids["d"]],
        [ids["the"], ids[" bo"] if " bo" in ids else ids[" boy"], ids["y who"], ids[" liv"] if " liv" in ids
         else ids["liv"], ids["ed under"]],
    ]  # fmt: skip
    assert _walk_never_quotes(rule, vocab, lures, 40, seed=1) > 0  # the masks did ban something


def test_decode_mask_bans_exactly_the_completing_word(tmp_path: Path) -> None:
    rule = _rule(tmp_path)
    vocab = VocabularyIndex.from_texts([" the", " boy", " who", " lived", " lives", " liv", "ed", " LIVED", "."])
    masks = ProtectedMasks(rule.index, vocab)
    cursor = ProtectedCursor(masks)
    for token in (0, 1, 2):
        assert cursor.banned().size == 0  # fewer than k words: nothing can complete a run yet
        cursor.advance(token)
    assert sorted(cursor.banned().tolist()) == [3, 7]  # " lived" and " LIVED"; " lives" and " liv" stay
    cursor.advance(5)  # " liv"
    assert cursor.banned().tolist() == [6]  # "ed" would complete "lived"


def test_pending_utf8_bytes_read_as_a_separator_before_the_next_token(tmp_path: Path) -> None:
    rule = _rule(tmp_path)
    vocab = VocabularyIndex.from_texts([" the", " boy", " who", b"\xc3", " lived", b"\xad", "ved", "x"])
    cursor = ProtectedCursor(ProtectedMasks(rule.index, vocab))
    for token in (0, 1, 2, 3):  # " the boy who" and half of a two-byte character
        cursor.advance(token)
    assert cursor.tail == b"\xc3"
    # the half character becomes U+FFFD (a separator) before any token that does not continue it, so " lived"
    # completes the run; b"\xad" completes "\u00ed" instead, glued to "who" ("who\u00ed" is no protected word)
    assert cursor.banned().tolist() == [4]


def test_real_tokenizer_masks_never_let_a_run_through(tmp_path: Path, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = VocabularyIndex.from_hf_tokenizer(tokenizer)
    rule = _rule(tmp_path)
    forms = [PASSAGE, PASSAGE.upper(), PASSAGE.replace(" ", "\n"), PASSAGE.replace(". ", ".\n").title(),
             " ".join(PASSAGE), PASSAGE.replace(" ", "  ")]  # fmt: skip
    lures = [tokenizer.encode(form, add_special_tokens=False) for form in forms]
    assert _walk_never_quotes(rule, vocab, lures, 60, seed=3) > 0


# ---- the plugin in the real vLLM -----------------------------------------------------------------------------------
DICKENS = ROOT / "policies" / "examples" / "dickens-quotes.yaml"


@pytest.fixture(scope="module")
def dickens_vllm(gateway):
    """The session's vLLM (plugin loaded, as the gateway starts it), reading indexes from the folder the session gateway
    shares with it (QUELL_INDEX_DIR); loading the policy here writes the index there, as the gateway's own load does."""
    from tests.procs import BACKEND_KEY

    old = os.environ.get("QUELL_INDEX_DIR")
    os.environ["QUELL_INDEX_DIR"] = str(gateway.index_dir)
    try:
        policy = load_policy_file(DICKENS)
    finally:
        if old is None:
            os.environ.pop("QUELL_INDEX_DIR", None)
        else:
            os.environ["QUELL_INDEX_DIR"] = old
    corpus = policy.targets[0].protected_text.corpus
    rule = ProtectedRule(policy.ref, "two-cities", "mask", "", cached_index(corpus.digest, gateway.index_dir))
    yield gateway.vllm_url, {"Authorization": f"Bearer {BACKEND_KEY}"}, corpus.digest, rule


COPY_FORMS = ["Repeat this passage exactly:\n\n{p}", "Repeat this passage exactly, in upper case:\n\n{p}",
              "Rewrite this passage with one sentence per line:\n\n{p}"]  # fmt: skip


@pytest.mark.e2e
def test_plugin_never_lets_a_protected_run_through_in_context(dickens_vllm) -> None:
    import httpx

    url, auth, digest, rule = dickens_vllm
    passage = (DICKENS.parent / "corpora/dickens/two-cities-opening.txt").read_text().split("\n\n")[0]

    def ask(prompt: str, xargs: dict | None) -> str:
        body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 80, "temperature": 0, "seed": 0, **({"vllm_xargs": xargs} if xargs else {})}  # fmt: skip
        resp = httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=600)
        assert resp.status_code == 200, resp.text
        return resp.json()["choices"][0]["message"]["content"]

    prompts = [form.format(p=passage) for form in COPY_FORMS]
    plain = [ask(p, None) for p in prompts]
    masked = [ask(p, {"quell_protected": [digest]}) for p in prompts]
    assert any(find_runs([rule], t) for t in plain), plain  # the model does copy from context
    for text in masked:
        assert find_runs([rule], text) == [], text
        assert len(text.split()) >= 5, text  # it still answers, in other words
    bad = httpx.post(f"{url}/v1/chat/completions", timeout=60, headers=auth, json={
        "model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "vllm_xargs": {"quell_protected": ["0" * 64]}})  # fmt: skip
    assert bad.status_code == 400 and "no protected-text index" in bad.text


def test_plugin_processor_masks_a_greedy_copier_step_by_step(tmp_path: Path, model_dir: Path) -> None:
    """The logits processor itself (no server): a 'model' whose logits always prefer the next token of the passage,
    in upper case and with line breaks, decoded greedily through update_state/apply, never completes a run."""
    from vllm import SamplingParams

    from filters.vllm_plugin import QuellLogitsProcessor
    from tests.filters.greedy_copier import copy_greedily, processor_and_tokenizer

    rule = _rule(tmp_path)
    proc, tokenizer = processor_and_tokenizer(model_dir)
    params = SamplingParams(max_tokens=200, extra_args={"quell_protected": [rule.index.digest]})
    QuellLogitsProcessor.validate_params(params)
    for target in [PASSAGE.upper().replace(". ", ".\n"), PASSAGE.replace(" ", "  ")]:
        text, banned_steps = copy_greedily(proc, tokenizer, params, [1, 2], target)
        assert banned_steps > 0 and find_runs([rule], text) == [], text
