"""Sample K answers per question and score each question's group of answers.

The stability study (`entropic/jobs/stability_study.py`) and the entropy -> Platt pipeline
(`entropic/calibration.py`) both start here:

* `sample_answers` draws K completions per question with a generation engine
  (`entropic.generation`: one prefill per question for its K samples, or `model.generate`) by
  pure ancestral sampling at `temperature` (top_k and top_p off, as TRL's GRPO rollouts sample
  and as semantic entropy assumes) and grades each one: parsed answer, stated confidence,
  correctness against the gold aliases, and the sequence log-probability of the generated tokens.
* `score_questions` turns those samples into one row per question: the share of the K answers
  that are correct, the mean stated confidence, and every uncertainty estimate of
  `entropic.semantic` on the group.

Two conventions, both chosen so that every question gets a finite score:

* An answer that does not parse (or normalises to nothing) is its own meaning, as the clusterers
  treat it: for `embedding_entropy` it is a direction orthogonal to every other answer, so a group
  with one parsed answer out of eight does not read as certain, and a group with none has the
  maximal entropy log K. (`entropic.semantic.group_uncertainty` instead drops such answers and
  gives NaN for an empty group; a training target cannot be NaN.)
* `likelihood_semantic_entropy` weighs each answer by its length-normalised (mean token)
  log-probability, as Farquhar et al. (2024) do, so that a longer answer is not less likely for
  being long. The sequence log-probability covers the generated tokens up to and including the
  first end-of-sequence token, under the sampling distribution (temperature applied).
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
import pandas as pd
import torch

from entropic.config import PromptConfig
from entropic.generation import Sampling, generate_chats
from entropic.grading import is_correct, normalize_answer
from entropic.parsing import parse_completion
from entropic.prompting import build_messages
from entropic.semantic import (
    Clusterer,
    Embedder,
    cluster_groups,
    embed_answers,
    embedding_entropy,
    likelihood_semantic_entropy,
    majority_share,
    semantic_entropy,
    stability,
)


def sample_answers(
    model,
    tokenizer,
    questions: datasets.Dataset,
    prompt: PromptConfig,
    k: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    engine: str,
) -> pd.DataFrame:
    """K sampled completions per question, one row each, graded.

    Columns: question_id, question, sample (0..k-1), completion, answer, confidence (NaN when it
    does not parse), correct, logprob (sum over the generated tokens) and num_tokens. `batch_size`
    counts questions per batch, each generating k sequences; `engine` is the run's
    `generation.name` (entropic.generation). Seeded once with `torch.manual_seed(seed)`: the same
    seed, questions, batch size and engine give the same samples.
    """
    if k < 1 or batch_size < 1 or max_new_tokens < 1 or temperature <= 0:
        raise ValueError(
            f"sample_answers needs k, batch_size, max_new_tokens >= 1 and temperature > 0; got "
            f"k={k}, batch_size={batch_size}, max_new_tokens={max_new_tokens}, "
            f"temperature={temperature}"
        )
    torch.manual_seed(seed)
    prompts = [build_messages(question, prompt) for question in questions["question"]]
    texts, generated = generate_chats(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        engine=engine,
        samples_per_prompt=k,
        sampling=Sampling(temperature=temperature),
        batch_size=batch_size * k,
        logprobs=True,
        progress=f"sampling {k} answers per question",
    )
    rows = []
    # the k samples of a question come back side by side
    for index, (text, logprobs) in enumerate(zip(texts, generated.logprobs, strict=True)):
        row = questions[index // k]
        answer, confidence = parse_completion(text, prompt.format)
        rows.append(
            {
                "question_id": row["question_id"],
                "question": row["question"],
                "sample": index % k,
                "completion": text,
                "answer": answer,
                "confidence": np.nan if confidence is None else confidence,
                "correct": bool(is_correct(answer, row["answers"], question=row["question"])),
                "logprob": float(sum(logprobs)),
                "num_tokens": len(logprobs),
            }
        )
    return pd.DataFrame(rows)


def _comparable(answer: str | None) -> bool:
    """Whether an answer has a meaning to compare (the clusterers' rule for singletons)."""
    return answer is not None and bool(normalize_answer(answer))


def group_embedding_entropy(answers: Sequence[str | None], vectors: dict[str, np.ndarray]) -> float:
    """`embedding_entropy` of one group, unparseable answers orthogonal to everything.

    `vectors` maps each comparable answer text to its embedding. Each incomparable answer gets a
    one-hot direction of its own in extra dimensions, so the kernel holds it as a cluster of one,
    exactly as the discrete estimators count it.
    """
    comparable = [answer for answer in answers if _comparable(answer)]
    dimension = len(next(iter(vectors.values()))) if vectors else 0
    matrix = np.zeros((len(answers), dimension + len(answers) - len(comparable)))
    extra = dimension
    for row, answer in enumerate(answers):
        if _comparable(answer):
            matrix[row, :dimension] = vectors[answer]
        else:
            matrix[row, extra] = 1.0
            extra += 1
    return embedding_entropy(matrix)


def embed_groups(
    groups: Sequence[Sequence[str | None]], embedder: Embedder
) -> dict[str, np.ndarray]:
    """Embeddings of every distinct comparable answer of every group, in one encoder call."""
    texts = list(dict.fromkeys(a for answers in groups for a in answers if _comparable(a)))
    return dict(zip(texts, embedder(texts), strict=True)) if texts else {}


def score_questions(
    samples: pd.DataFrame, clusterer: Clusterer, embedder: Embedder = embed_answers
) -> pd.DataFrame:
    """One row per question of a `sample_answers` table: outcomes and uncertainty estimates.

    Columns: question_id, question, accuracy (share of the K answers correct), confidence (mean
    stated confidence over the answers where it parsed; NaN if none), format_rate, num_clusters,
    stability (majority share: the share of the K answers in the largest cluster),
    mean_stability (each answer's stability, averaged), semantic_entropy,
    likelihood_semantic_entropy and embedding_entropy. Gold aliases are never passed to the
    clusterer: merging every correct answer into one cluster would let the labels leak into the
    estimate that is meant to predict them.
    """
    grouped = list(samples.groupby("question_id", sort=False))
    # A missing answer may come back from a table as NaN rather than None.
    groups = [
        [answer if isinstance(answer, str) else None for answer in group["answer"]]
        for _, group in grouped
    ]
    cluster_ids = cluster_groups(
        clusterer, groups, questions=[group["question"].iloc[0] for _, group in grouped]
    )
    vectors = embed_groups(groups, embedder)
    rows = []
    for (question_id, group), answers, ids in zip(grouped, groups, cluster_ids, strict=True):
        parsed = group["answer"].notna() & group["confidence"].notna()
        confidences = group["confidence"].dropna()
        rows.append(
            {
                "question_id": question_id,
                "question": group["question"].iloc[0],
                "accuracy": float(group["correct"].mean()),
                "confidence": float(confidences.mean()) if len(confidences) else np.nan,
                "format_rate": float(parsed.mean()),
                "num_clusters": len(set(ids)),
                "stability": majority_share(ids),
                "mean_stability": float(stability(ids).mean()),
                "semantic_entropy": semantic_entropy(ids),
                "likelihood_semantic_entropy": likelihood_semantic_entropy(
                    ids, (group["logprob"] / group["num_tokens"]).to_numpy(float)
                ),
                "embedding_entropy": group_embedding_entropy(answers, vectors),
            }
        )
    return pd.DataFrame(rows)
