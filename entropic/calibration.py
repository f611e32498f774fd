"""Entropy -> Platt -> RL: calibrated confidence targets for `reward.name=calibrated` (the
`calibration` config group), after "From Entropy to Calibrated Uncertainty" (arXiv 2603.06317).

    python -m entropic.run +experiment=entropy_platt
    python -m entropic.run -m +experiment=entropy_platt trainer.learning_rate=3e-6,1e-5

This module is the method: the score cache and Platt scaling. The keys they depend on are checked
with the config, before torch loads (`entropic.config.check_calibration_pipeline`). The train job
runs it as one stage, `entropic.jobs.calibrated_target`, after the base model's greedy evaluation
and before GRPO. The three stages:

1. **Score.** K answers per training question are sampled from the base model
   (`entropic.sampling`), and the question's score is the embedding entropy of its answers: the
   von Neumann entropy of the cosine kernel of their all-MiniLM-L6-v2 embeddings over K
   (`entropic.semantic.embedding_entropy`), an unparseable answer counting as a meaning of its
   own. The held-out questions that judge the calibration (the first `calibration.eval_questions`
   of the eval split) are scored the same way. Sampling is the expensive part, so each split's
   scores are cached as `<cache>/scores/<hash>.parquet` (default `$ENTROPIC_CACHE/scores`), keyed
   by everything that changes the samples: the model, the data source (name, options, sizes),
   the split and its question ids, the prompt, K, the temperature, the answer length and the
   seed. The batch size is not in the key: it changes floating-point order, not the distribution.
   A run that finds its key reuses the file without sampling, across runs and sweep points, and
   says so in the run's `score_cache` tag (`hit` when every split was reused, else `miss`).
2. **Calibrate.** Platt scaling: P(correct) = sigmoid(slope * entropy + intercept), fitted by a
   one-feature, unpenalised scikit-learn logistic regression on the labeled training questions
   (the `labeled` column, `reward.labeled_fraction` of them), whose label is whether the base
   model's greedy answer is correct. The held-out ECE, Brier score and AUROC of the calibrated
   score are logged next to those of the model's own stated confidence on the same questions.
3. **Train.** Every training question gets `calibrated_target` = the Platt probability of its
   entropy, and GRPO pays 1 - (calibrated_target - confidence)^2 (`entropic.rewards.calibrated`).

Choices the abstract leaves open (experiments/entropy_platt/README.md gives the reasons):

* The entropy is the embedding entropy above: "distributional variability in embedding space"
  with no clustering threshold to tune.
* Platt is fitted on the entropy itself; the slope should come out negative (more disagreement,
  less often right). Its sign is logged, not forced: a positive slope is what the data said.
* Platt's own targets (1999) replace the 0/1 labels: (N+ + 1) / (N+ + 2) for a correct answer
  and 1 / (N- + 2) for a wrong one. They keep the fit finite when the labeled questions are
  separable by their entropy, which is common with a few dozen of them, and when they are all
  right or all wrong the fit becomes the constant (N+ + 1) / (N + 2) rather than failing.
* Labeled and unlabeled questions get the same kind of target, the Platt probability of their
  entropy: labels are spent on two parameters, not on the targets themselves.
* The scores are logged to the run as MLflow dataset inputs (`mlflow.data.from_pandas`: name,
  digest, schema, and the cache file as source), so runs that share cached scores show the same
  digest; the per-question targets and the held-out table are logged as tables.
* One process only: the targets are computed where the base model is evaluated (rank 0).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from entropic.config import CalibrationConfig, RunConfig, cache_dir
from entropic.metrics import auroc, brier_score, expected_calibration_error
from entropic.sampling import sample_answers, score_questions
from entropic.semantic import build_clusterer

log = logging.getLogger(__name__)

# Bump when the cached table's columns or their meaning change, so old files are not reused.
CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------
# Stage 1: entropy scores, cached.
# --------------------------------------------------------------------------------------------


def score_key(
    config: RunConfig, calibration: CalibrationConfig, split: str, questions: datasets.Dataset
) -> dict[str, Any]:
    """Everything that changes the sampled answers of `questions`, as plain JSON values."""
    ids = "\n".join(questions["question_id"])
    return {
        "version": CACHE_VERSION,
        "model": dataclasses.asdict(config.model),
        "data": {
            "name": config.data.name,
            "options": config.data.options,
            "train_size": config.data.train_size,
            "eval_size": config.data.eval_size,
        },
        "split": split,
        "num_questions": len(questions),
        "question_ids_sha256": hashlib.sha256(ids.encode()).hexdigest(),
        "prompt": dataclasses.asdict(config.prompt),
        "num_samples": calibration.num_samples,
        "temperature": calibration.temperature,
        "max_new_tokens": calibration.max_new_tokens,
        "seed": config.seed,
    }


def score_path(calibration: CalibrationConfig, key: dict[str, Any]) -> Path:
    root = Path(calibration.cache_dir) if calibration.cache_dir else cache_dir() / "scores"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return root / f"{digest[:24]}.parquet"


def entropy_scores(
    model,
    tokenizer,
    questions: datasets.Dataset,
    config: RunConfig,
    calibration: CalibrationConfig,
    split: str,
) -> tuple[pd.DataFrame, Path, bool]:
    """Per-question scores of `questions`: (table, cache file, whether it was read from cache).

    The table has question_id, question, sampled_answers (K parsed answers, None where one did
    not parse), sample_accuracy, format_rate, stability and semantic_entropy (exact clustering),
    and embedding_entropy, the score Platt scaling reads.
    """
    key = score_key(config, calibration, split, questions)
    path = score_path(calibration, key)
    if path.exists():
        log.info("score cache hit: %s (%s, %d questions)", path, split, len(questions))
        return pd.read_parquet(path), path, True
    log.info("score cache miss: sampling %s answers for %d questions", split, len(questions))
    samples = sample_answers(
        model,
        tokenizer,
        questions,
        config.prompt,
        k=calibration.num_samples,
        temperature=calibration.temperature,
        max_new_tokens=calibration.max_new_tokens,
        batch_size=calibration.batch_size,
        seed=config.seed,
        engine=config.generation.name,
    )
    scored = score_questions(samples, build_clusterer("exact"))
    answers = samples.groupby("question_id", sort=False)["answer"].agg(list)
    table = pd.DataFrame(
        {
            "question_id": scored["question_id"],
            "question": scored["question"],
            "sampled_answers": answers.loc[scored["question_id"]].to_list(),
            "sample_accuracy": scored["accuracy"],
            "format_rate": scored["format_rate"],
            "stability": scored["stability"],
            "semantic_entropy": scored["semantic_entropy"],
            "embedding_entropy": scored["embedding_entropy"],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed, so a parallel sweep job never reads half a file.
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    table.to_parquet(staging, index=False)
    staging.with_suffix(".json").write_text(json.dumps(key, indent=2, sort_keys=True, default=str))
    staging.with_suffix(".json").replace(path.with_suffix(".json"))
    staging.replace(path)
    return table, path, False


# --------------------------------------------------------------------------------------------
# Stage 2: Platt scaling.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlattFit:
    """P(correct | score) = sigmoid(slope * score + intercept)."""

    slope: float
    intercept: float

    def predict(self, scores: np.ndarray | pd.Series) -> np.ndarray:
        return expit(self.slope * np.asarray(scores, dtype=float) + self.intercept)


def fit_platt(scores: np.ndarray | pd.Series, correct: np.ndarray | pd.Series) -> PlattFit:
    """Platt scaling (Platt 1999): a one-feature logistic regression of correctness on a score.

    Each 0/1 label is replaced by Platt's target, (N+ + 1) / (N+ + 2) for a positive and
    1 / (N- + 2) for a negative, and the unpenalised cross-entropy with those soft targets is
    minimised: every question enters once as a positive with weight t and once as a negative
    with weight 1 - t. The fit stays finite on separable data and falls back to the constant
    (N+ + 1) / (N + 2) with one class; with many labels it is the plain logistic regression.
    """
    x = np.asarray(scores, dtype=float)
    y = np.asarray(correct, dtype=int)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"need one score per label, got shapes {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("Platt scaling needs finite scores")
    positives = int(y.sum())
    negatives = y.size - positives
    target = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    # A tight tolerance: one feature is cheap, and the default stops ~1e-3 short of the optimum.
    model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(
        np.concatenate([x, x])[:, None],
        np.concatenate([np.ones(x.size), np.zeros(x.size)]),
        sample_weight=np.concatenate([target, 1 - target]),
    )
    return PlattFit(slope=float(model.coef_[0, 0]), intercept=float(model.intercept_[0]))


def heldout_metrics(judged: pd.DataFrame, n_bins: int) -> dict[str, float]:
    """ECE, Brier and AUROC of the calibrated score, and of the stated confidence where it
    parsed, against the base model's greedy correctness on the held-out questions."""
    correct = judged["correct"].to_numpy(int)
    score = judged["calibrated_score"].to_numpy(float)
    stated = judged.dropna(subset=["confidence"])
    nan = float("nan")
    return {
        "heldout_questions": float(len(judged)),
        "heldout_accuracy": float(correct.mean()),
        "heldout_ece": expected_calibration_error(score, correct, n_bins),
        "heldout_brier": brier_score(score, correct),
        "heldout_auroc": auroc(score, correct),
        "heldout_stated_ece": (
            expected_calibration_error(stated["confidence"], stated["correct"].astype(int), n_bins)
            if len(stated)
            else nan
        ),
        "heldout_stated_auroc": (
            auroc(stated["confidence"], stated["correct"].astype(int)) if len(stated) else nan
        ),
    }
