"""Uncertainty estimators of a question from K sampled answers, and how well each one predicts
accuracy: the table the stability study (`entropic.jobs.stability_study`) reports.

For each estimator of `ESTIMATORS`, `estimator_table` gives, with percentile-bootstrap intervals
over questions:

* **Pearson r with accuracy**: accuracy is the share of the question's K sampled answers that are
  correct (the reference's per-question accuracy).
* **AUROC for correctness of the greedy answer**: how well the estimator, computed from the K
  samples, separates questions the model answers right at temperature 0 from those it answers
  wrong (Farquhar et al.'s protocol: uncertainty from samples, correctness of the most likely
  answer). One score per question for every estimator keeps the two columns comparable; the
  per-sample alternative would favour the per-answer estimators.

"Stability" in the table is the majority share, the share of the K answers in the largest
cluster; `mean_stability` (each answer's stability, averaged) is reported beside it. Entropies are
negated so that higher always means more confident. A question whose estimate is undefined (no
stated confidence parsed) is left out of that estimator's row, whose `questions` column says how
many remain; r or AUROC is NaN where it is undefined (a constant estimate, one class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from entropic.metrics import auroc, bootstrap_ci, pearson_r


@dataclass(frozen=True)
class Estimator:
    # column of the per-question table
    column: str
    # +1: higher is more confident; -1 for entropies, which are negated
    sign: float
    # what the table's reader needs to know
    description: str


# Every estimator the study reports, in table order.
ESTIMATORS: dict[str, Estimator] = {
    "stability": Estimator(
        "stability", 1.0, "share of the K answers in the largest cluster (majority share)"
    ),
    "mean_stability": Estimator(
        "mean_stability", 1.0, "each answer's share of the group in its cluster, averaged"
    ),
    "semantic_entropy": Estimator(
        "semantic_entropy", -1.0, "-(entropy of the cluster frequencies), Farquhar et al."
    ),
    "likelihood_semantic_entropy": Estimator(
        "likelihood_semantic_entropy",
        -1.0,
        "-(entropy of likelihood-weighted cluster masses), Kuhn et al.",
    ),
    "embedding_entropy": Estimator(
        "embedding_entropy", -1.0, "-(von Neumann entropy of the answers' cosine kernel / K)"
    ),
    "stated_confidence": Estimator(
        "confidence", 1.0, "stated confidence, mean over the K sampled answers"
    ),
    "greedy_confidence": Estimator(
        "greedy_confidence", 1.0, "stated confidence of the greedy answer"
    ),
}


# The numeric columns of the estimator table, each logged as study/<estimator>/<stat>.
TABLE_STATS = ("pearson_r", "pearson_r_low", "pearson_r_high", "auroc", "auroc_low", "auroc_high")


def score_auroc(scores: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of any real-valued score: AUROC depends only on the ranking, and ranks scaled into
    (0, 1] meet `metrics.auroc`'s probability domain (negated entropies are negative)."""
    return auroc(rankdata(scores) / len(scores), correct)


def estimator_table(
    per_question: pd.DataFrame, n_resamples: int, ci_level: float, seed: int
) -> pd.DataFrame:
    """One row per estimator: Pearson r with accuracy and AUROC for greedy correctness, with
    bootstrap intervals; questions where the estimate is NaN are left out of its row."""
    rows = []
    for name, estimator in ESTIMATORS.items():
        values = per_question[estimator.column].to_numpy(float) * estimator.sign
        defined = np.isfinite(values)
        scores = values[defined]
        accuracy = per_question["accuracy"].to_numpy(float)[defined]
        correct = per_question["greedy_correct"].to_numpy(int)[defined]
        row: dict[str, Any] = {"estimator": name, "questions": int(defined.sum())}
        for stat, function, target in (
            ("pearson_r", pearson_r, accuracy),
            ("auroc", score_auroc, correct),
        ):
            if len(scores) < 2:
                row.update({stat: math.nan, f"{stat}_low": math.nan, f"{stat}_high": math.nan})
                continue
            low, high = bootstrap_ci(
                function, scores, target, n_resamples=n_resamples, confidence=ci_level, seed=seed
            )
            row.update({stat: function(scores, target), f"{stat}_low": low, f"{stat}_high": high})
        row["description"] = estimator.description
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """The estimator table as markdown: r and AUROC with their intervals in one cell each."""

    def cell(row: pd.Series, stat: str) -> str:
        if math.isnan(row[stat]):
            return "n/a"
        return f"{row[stat]:.2f} [{row[f'{stat}_low']:.2f}, {row[f'{stat}_high']:.2f}]"

    shown = pd.DataFrame(
        {
            "estimator": table["estimator"],
            "r with accuracy [95% CI]": [cell(row, "pearson_r") for _, row in table.iterrows()],
            "AUROC, greedy correct [95% CI]": [cell(row, "auroc") for _, row in table.iterrows()],
            "questions": table["questions"],
            "what it is": table["description"],
        }
    )
    return shown.to_markdown(index=False)
