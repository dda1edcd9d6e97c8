"""Concept classifier, embedding blocklist and SemanticGuard on whole texts, with the real embedding model."""

from __future__ import annotations

import numpy as np
import pytest

from filters.concept_classifier import (
    DEFAULT_HEAD,
    MIN_CV_RECALL,
    PREVIOUS_HEAD,
    ClassifierCache,
    ConceptClassifier,
    _class_weights,
    _fit_logistic,
    load_background,
    pick_threshold,
)
from filters.embedding import Embedder
from filters.policy import InputScope
from filters.policy_loader import PolicyError
from filters.semantic import SemanticGuard, input_text
from tests.semantic_support import (
    VECTORS,
    parse,
    shared_cache,
    shared_embedder,
    shared_minilm,
    spiderman_policy,
    spiderman_variant,
)

PARAPHRASES = [
    "The young photographer from Queens was bitten by a radioactive spider and now swings between skyscrapers.",
    "A boy gets superpowers from a spider bite, sticks to walls and fights a goblin in a green costume.",
    "Peter's uncle told him that great power brings great responsibility.",
]
NEIGHBOURS = [
    "Batman protects Gotham City from the Joker.",
    "The garden spider builds an orb web every night.",
    "Queens is the most diverse borough of New York.",
    "New York has great pizza and the subway runs all night.",
    "How do I bake sourdough bread?",
]


@pytest.fixture(scope="module")
def guard():
    return SemanticGuard([spiderman_policy()], shared_embedder(), shared_cache())


@pytest.mark.parametrize("text", PARAPHRASES)
def test_paraphrases_of_the_concept_are_detected(guard, text):
    detections = guard.check(text)
    assert [(d.target_id, d.layer) for d in detections] == [("spider-man", "classifier")]
    detection = detections[0]
    assert detection.score >= detection.threshold
    assert detection.policy_ref == spiderman_policy().ref
    assert detection.action == "refuse"
    assert detection.span == (0, len(text))


@pytest.mark.parametrize("text", NEIGHBOURS)
def test_neighbours_are_not_detected(guard, text):
    assert guard.check(text) == []


def test_span_points_at_the_window_that_talks_about_it(guard):
    text = (
        "Our trip started in the morning. We had coffee by the harbour. The weather was mild. "
        "Later a teenager bitten by a radioactive spider swung between the skyscrapers, shooting webs. "
        "Then we took the train home. Dinner was pasta. We went to bed early."
    )
    detections = guard.check(text)
    assert detections, "the Spider-Man sentence was not detected"
    start, end = detections[0].span
    assert "radioactive spider" in text[start:end]
    assert start > 0 and end < len(text) and "Dinner" not in text[start:end]


def test_scores_report_every_target_flagged_or_not(guard):
    (bread,), (spider,) = guard.scores(["How do I bake sourdough bread?", PARAPHRASES[0]])
    assert not bread.flagged and spider.flagged
    assert 0.0 <= bread.score < spider.score <= 1.0


def test_batch_check_equals_single_checks(guard):
    texts = PARAPHRASES + NEIGHBOURS
    batched, single = guard.check_batch(texts), [guard.check(t) for t in texts]

    def where(results):
        return [[(d.target_id, d.span) for d in ds] for ds in results]

    assert where(batched) == where(single)
    for ds_b, ds_s in zip(batched, single, strict=True):  # batching pads inputs: scores agree to float precision
        assert [d.score for d in ds_b] == pytest.approx([d.score for d in ds_s], abs=1e-4)


def test_auto_threshold_meets_the_target_fpr_on_its_own_negatives(guard):
    model = guard.models[0]
    background = shared_cache().embedded(shared_embedder(), load_background())
    share = float(np.mean(model.classifier.scores(background) >= model.classifier.threshold))
    assert model.classifier.threshold_auto
    assert share <= 0.02  # cross-validated for 1%; on the training rows it can only be lower or close


def test_numeric_threshold_is_used_as_given():
    numeric = "layers: [classifier]\n      thresholds: {classifier: 0.99}"
    policy = parse(_POLICY.replace("layers: [classifier]", numeric))
    guard = SemanticGuard([policy], shared_embedder(), shared_cache())
    assert guard.models[0].classifier.threshold == 0.99
    assert guard.check(PARAPHRASES[1]) == []


def test_embedding_layer_alone_detects_a_close_paraphrase():
    guard = SemanticGuard([spiderman_variant(layers=["embedding"])], shared_embedder(), shared_cache())
    (detection,) = guard.check("The web-slinger from Queens swings between the skyscrapers of Manhattan.")
    assert detection.layer == "embedding" and detection.score > 0.8
    assert guard.check("How do I bake sourdough bread?") == []


def test_classifier_is_cached_by_policy_version():
    cache = ClassifierCache(directory=VECTORS)
    first = SemanticGuard([spiderman_policy()], shared_embedder(), cache)
    again = SemanticGuard([spiderman_policy()], shared_embedder(), cache)
    assert again.models[0] is first.models[0]
    edited = SemanticGuard([spiderman_variant(layers=["classifier", "embedding"])], shared_embedder(), cache)
    assert edited.models[0] is not first.models[0]


class _Counting(Embedder):
    """The real default encoder, counting the texts it is asked to embed (to see what the disk cache saves)."""

    def __init__(self, persistent: bool) -> None:
        self.name = shared_embedder().name
        self.persistent = persistent
        self.texts = 0

    def encode(self, texts):
        self.texts += len(texts)
        return shared_embedder().encode(texts)


def test_embedded_texts_are_kept_on_disk_for_the_next_process(tmp_path):
    texts = ("A first background sentence.", "Another, about the weather.", "A third one, about trains.")
    first = _Counting(persistent=True)
    vectors = ClassifierCache(directory=tmp_path).embedded(first, texts)
    (kept,) = tmp_path.glob("*.npy")
    again = _Counting(persistent=True)  # a new process: a new cache, the same folder
    assert np.array_equal(ClassifierCache(directory=tmp_path).embedded(again, texts), vectors) and again.texts == 0
    assert first.texts == 3
    kept.write_bytes(b"torn")  # a half-written or foreign file is embedded again and replaced
    repaired = _Counting(persistent=True)
    assert np.array_equal(ClassifierCache(directory=tmp_path).embedded(repaired, texts), vectors)
    assert repaired.texts == 3 and np.array_equal(np.load(kept), vectors)
    remote = _Counting(persistent=False)  # a remote model can change behind its name: never read from disk
    ClassifierCache(directory=tmp_path).embedded(remote, texts)
    assert remote.texts == 3 and len(list(tmp_path.glob("*.npy"))) == 1


def test_directions_follow_applies_to(guard):
    assert guard.check(PARAPHRASES[0], direction="input") == []  # the example policy screens output only
    assert guard.check(PARAPHRASES[0], direction=None)  # None: every target, whatever it applies to
    both = SemanticGuard([spiderman_variant(applies_to=["input", "output"])], shared_embedder(), shared_cache())
    assert both.check(PARAPHRASES[0], direction="input")


def test_input_screen_reads_the_policy_scope():
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": PARAPHRASES[0]},
        {"role": "assistant", "content": "I can't help with that."},
        {"role": "user", "content": [{"type": "text", "text": "Then tell me how to bake bread."}]},
    ]
    last = spiderman_variant(applies_to=["input"], input_scope="last_user")
    whole = spiderman_variant(applies_to=["input"], input_scope="conversation")
    assert SemanticGuard([last], shared_embedder(), shared_cache()).check_messages(messages) == []
    (detection,) = SemanticGuard([whole], shared_embedder(), shared_cache()).check_messages(messages)
    text = input_text(messages, InputScope.CONVERSATION)
    assert "radioactive spider" in text[detection.span[0] : detection.span[1]]
    assert input_text(messages, InputScope.LAST_USER) == "Then tell me how to bake bread."


@pytest.mark.parametrize(
    ("scores", "fpr", "expected_above"),
    [([0.1, 0.2, 0.3, 0.4], 0.0, 0), ([0.1, 0.2, 0.3, 0.4], 0.25, 1), ([0.5] * 10, 0.05, 0), ([0.9], 0.5, 0)],
)
def test_pick_threshold_allows_at_most_the_target_share(scores, fpr, expected_above):
    threshold = pick_threshold(np.array(scores), fpr)
    assert int(np.sum(np.array(scores) >= threshold)) == expected_above


@pytest.mark.parametrize("c", [0.1, 10.0])  # the old head's C and the default head's
def test_newton_solver_agrees_with_scikit_learn(c):
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 16))
    y = (x[:, 0] + 0.5 * rng.normal(size=120) > 1).astype(float)
    weights = _class_weights(int(y.sum()), int(len(y) - y.sum()))
    order = np.argsort(-y, kind="stable")  # positives first, as _class_weights expects
    w, b = _fit_logistic(x[order], y[order], weights, c)
    reference = sklearn.LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(x[order], y[order], weights)
    np.testing.assert_allclose(w, reference.coef_[0], atol=1e-4)
    assert b == pytest.approx(reference.intercept_[0], abs=1e-4)


def test_classifier_needs_examples_to_train():
    vectors = shared_embedder().encode(["only one", "a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match="at least 2 positive"):
        ConceptClassifier.train(vectors[:1], vectors[1:2], vectors[2:], threshold="auto", target_fpr=0.01)


def _trained(embedder, head, examples=None):
    concept = spiderman_policy().targets[0].concept
    anchors = embedder.encode([concept.description, *(examples or concept.examples)])
    counter = embedder.encode(concept.counterexamples)
    background = shared_cache().embedded(embedder, load_background())
    model = ConceptClassifier.train(anchors, counter, background, threshold="auto", target_fpr=0.01, head=head)
    return model, background


def test_centred_head_scores_vectors_relative_to_the_background_mean():
    model, background = _trained(shared_embedder(), DEFAULT_HEAD)
    assert DEFAULT_HEAD.center
    np.testing.assert_allclose(model.center, background.mean(axis=0), atol=1e-6)
    # a vector that is only the background mean carries no direction of its own: it scores like generic text
    mean = background.mean(axis=0, keepdims=True)
    assert model.scores(mean / np.linalg.norm(mean))[0] < model.threshold
    raw, _ = _trained(shared_embedder(), PREVIOUS_HEAD)
    assert not raw.center.any()
    text = shared_embedder().encode([PARAPHRASES[0]])
    assert model.scores(text)[0] != pytest.approx(raw.scores(text)[0], abs=1e-3)  # centring changed the model


def test_shipped_policy_is_ready_with_the_default_encoder_and_was_not_with_minilm_and_the_old_head():
    # the issue's complaint: the shipped Spider-Man policy logged "cross-validated recall on examples 0.33"
    guard = SemanticGuard([spiderman_policy()], shared_embedder(), shared_cache())
    assert guard.models[0].classifier.cv_recall >= MIN_CV_RECALL
    assert guard.warnings() == []
    old, _ = _trained(shared_minilm(), PREVIOUS_HEAD)
    assert old.cv_recall < MIN_CV_RECALL and not old.ready
    assert "add examples" in old.readiness().lower() and "counterexamples" in old.readiness()


def test_a_concept_whose_examples_do_not_agree_is_not_called_ready():
    scattered = _POLICY.replace(
        "examples: [one example, another example]",
        "examples: [The train was late again., She planted tomatoes in May., Prices rose by two percent., "
        "The cat slept all afternoon., He fixed the bicycle chain., We watched the sunset from the pier.]",
    )
    guard = SemanticGuard([parse(scattered)], shared_embedder(), shared_cache())
    (warning,) = guard.warnings()
    assert warning.target_id == "hero" and warning.cv_recall < MIN_CV_RECALL
    assert "not ready to refuse on" in warning.message and "add examples" in warning.message.lower()


def test_boundary_lists_the_texts_nearest_the_threshold(guard):
    nearest = guard.boundary("spider-man", k=12)
    assert len(nearest) == 12
    threshold = guard.models[0].classifier.threshold
    gaps = [abs(b.score - threshold) for b in nearest]
    assert gaps == sorted(gaps)
    assert {b.source for b in nearest} <= {"background", "example", "counterexample"}
    assert all(b.flagged == (b.score >= threshold) for b in nearest)
    background = load_background()
    scores = guard.models[0].classifier.scores(shared_cache().embedded(shared_embedder(), background))
    farthest_listed = max(gaps)
    # nothing left out of the list is nearer the threshold than what is in it
    assert all(abs(x - threshold) >= farthest_listed - 1e-6 for t, x in zip(background, scores, strict=True)
               if t not in {b.text for b in nearest})  # fmt: skip
    with pytest.raises(KeyError, match="batman"):
        guard.boundary("batman")


def test_classifiers_are_cached_per_encoder():
    cache = ClassifierCache(directory=VECTORS)
    e5 = SemanticGuard([spiderman_policy()], shared_embedder(), cache)
    minilm = SemanticGuard([spiderman_policy()], shared_minilm(), cache)
    assert minilm.models[0] is not e5.models[0]
    assert minilm.models[0].classifier.threshold != e5.models[0].classifier.threshold
    assert SemanticGuard([spiderman_policy()], shared_minilm(), cache).models[0] is minilm.models[0]


# ---- policy fields: every bad value names its field ------------------------------------------------------------

_POLICY = """\
id: test
targets:
  - id: hero
    concept:
      description: A hero.
      examples: [one example, another example]
      layers: [classifier]
"""


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        ("layers: [classifier]", "layers: [classifier]\n      thresholds: {classifier: 1.5}",
         "targets[0].concept.thresholds.classifier", 'must be "auto" or a number from 0 to 1, got 1.5'),
        ("layers: [classifier]", "layers: [classifier]\n      thresholds: {classifier: high}",
         "targets[0].concept.thresholds.classifier", "got 'high'"),
        ("layers: [classifier]", "layers: [keywords]", "targets[0].concept.layers[0]", "embedding"),
        ("layers: [classifier]", "layers: []", "targets[0].concept.layers", "at least 1"),
        ("layers: [classifier]", "layers: [classifier]\n      target_fpr: 0.5",
         "targets[0].concept.target_fpr", "0.2"),
        ("layers: [classifier]", "layers: [classifier]\n      thresholds: {embedding: 0.5}",
         "targets[0].concept", "thresholds.embedding is set but 'embedding' is not in layers"),
        ("examples: [one example, another example]", "examples: [one example]",
         "targets[0].concept", "at least 2"),
        ("examples: [one example, another example]", "examples: [one example, '  ']",
         "targets[0].concept.examples", "examples[1] is empty"),
        ("layers: [classifier]", "layers: [classifier]\n      treshold: 0.5",
         "targets[0].concept.treshold", "unknown field"),
    ],
)  # fmt: skip
def test_bad_concept_fields_are_named(old, new, field, message):
    with pytest.raises(PolicyError) as caught:
        parse(_POLICY.replace(old, new))
    issues = caught.value.issues
    assert any(i.field == field and message in i.message for i in issues), [str(i) for i in issues]
    assert all(i.file == "test.yaml" and i.line is not None for i in issues)


@pytest.mark.parametrize(
    ("semantic", "field", "message"),
    [
        ("window: {size: 2, overlap: 2}", "semantic.window", "overlap (2) must be smaller than size (2)"),
        ("window: {unit: tokens}", "semantic.window.unit", "sentences"),
        ("window: {size: 0}", "semantic.window.size", "greater than or equal to 1"),
        ("stream_mode: slow", "semantic.stream_mode", "safe"),
        ("input_scope: everything", "semantic.input_scope", "last_user"),
    ],
)
def test_bad_semantic_settings_are_named(semantic, field, message):
    with pytest.raises(PolicyError) as caught:
        parse(_POLICY + f"semantic:\n  {semantic}\n")
    assert any(i.field == field and message in i.message for i in caught.value.issues), [
        str(i) for i in caught.value.issues
    ]


def test_example_policy_keeps_its_defaults():
    policy = spiderman_policy()
    assert policy.semantic.stream_mode == "safe"
    assert policy.semantic.window.size == 2 and policy.semantic.window.overlap == 1
    assert policy.targets[0].concept.layers == ["classifier"]
    assert policy.targets[0].concept.thresholds.classifier == "auto"
