"""Greedy held-out evaluation (the `eval` config group): answers, confidences and calibration.

Evaluation is always greedy (temperature 0), before training, during it (optionally) and after, so
the untrained model, a calibration prompt and the RL-trained model compare like with like.

Accuracy counts every question (an unparseable answer is wrong). The calibration metrics
(confidence, gap, ECE, Brier, AUROC) are computed on the questions whose confidence parsed;
`format_rate` says how many that is.
"""

from __future__ import annotations

import math

import datasets
import numpy as np
import pandas as pd

from entropic.config import EvalConfig, PromptConfig
from entropic.generation import generate_chats
from entropic.grading import is_correct
from entropic.metrics import (
    auroc,
    brier_score,
    calibration_gap,
    discrimination,
    expected_calibration_error,
)
from entropic.parsing import parse_completion
from entropic.prompting import build_messages

METRIC_NAMES = (
    "accuracy",
    "confidence",
    "calibration_gap",
    "ece",
    "brier",
    "auroc",
    "format_rate",
)
# How the stated confidence separates right from wrong answers, and whether it is one number
# said to every question (the dead end of group-normalised GRPO): printed and logged beside the
# METRIC_NAMES, which the study reports read.
DISCRIMINATION_NAMES = ("confidence_correct", "confidence_wrong", "distinct_confidences")
SUMMARY_NAMES = METRIC_NAMES + DISCRIMINATION_NAMES


def generate_greedy(
    model,
    tokenizer,
    prompts: list[list[dict]],
    batch_size: int,
    max_new_tokens: int,
    engine: str,
) -> list[str]:
    """Greedy completions for chat prompts, `batch_size` at a time, by a generation engine
    (entropic.generation: prefix_cache or hf, which give the same tokens)."""
    texts, _ = generate_chats(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        engine=engine,
        batch_size=batch_size,
        progress="eval",
    )
    return texts


def grade(questions: datasets.Dataset, completions: list[str]) -> pd.DataFrame:
    """One row per question: what was asked and answered, what it parsed to, whether right."""
    rows = []
    for row, completion in zip(questions, completions, strict=True):
        answer, confidence = parse_completion(completion)
        rows.append(
            {
                "question_id": row["question_id"],
                "question": row["question"],
                "gold": " | ".join(row["answers"][:5]),
                "completion": completion,
                "answer": answer,
                "confidence": confidence,
                "correct": bool(is_correct(answer, row["answers"])),
            }
        )
    return pd.DataFrame(rows)


def summarize(predictions: pd.DataFrame) -> dict[str, float]:
    """The eval/* metrics of one prediction table."""
    parsed = predictions.dropna(subset=["confidence"])
    metrics = {
        "accuracy": float(predictions["correct"].mean()),
        "format_rate": float(
            (predictions["answer"].notna() & predictions["confidence"].notna()).mean()
        ),
    }
    if parsed.empty:
        nan = math.nan
        metrics.update(confidence=nan, calibration_gap=nan, ece=nan, brier=nan, auroc=nan)
        metrics.update(confidence_correct=nan, confidence_wrong=nan, distinct_confidences=0.0)
        return metrics
    confidences = parsed["confidence"].to_numpy(float)
    correct = parsed["correct"].to_numpy(int)
    metrics.update(discrimination(confidences, correct))
    metrics.update(
        confidence=float(np.mean(confidences)),
        calibration_gap=calibration_gap(confidences, correct),
        ece=expected_calibration_error(confidences, correct, n_bins=10),
        brier=brier_score(confidences, correct),
        auroc=auroc(confidences, correct),
    )
    return metrics


def evaluate(
    model,
    tokenizer,
    questions: datasets.Dataset,
    prompt: PromptConfig,
    cfg: EvalConfig,
    engine: str,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Greedy answers to `questions`, graded, and their eval/* metrics; `engine` is the run's
    `generation.name`."""
    prompts = [build_messages(q, prompt) for q in questions["question"]]
    completions = generate_greedy(
        model, tokenizer, prompts, cfg.batch_size, cfg.max_new_tokens, engine
    )
    predictions = grade(questions, completions)
    return predictions, summarize(predictions)
