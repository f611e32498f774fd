"""Greedy held-out evaluation (the `eval` config group): answers, confidences and calibration.

Evaluation is always greedy (temperature 0), before training, during it (optionally) and after, so
the untrained model, a calibration prompt and the RL-trained model compare like with like.

Accuracy counts every question (an unparseable answer is wrong). The calibration metrics
(confidence, gap, ECE, Brier, AUROC) are computed on the questions whose confidence parsed;
`format_rate` says how many that is.
"""

from __future__ import annotations

import math
import time

import datasets
import numpy as np
import pandas as pd

from entropic.config import (  # noqa: F401 (the names are evaluate's; config holds them torch-free)
    BASELINE_NAMES,
    BEHAVIOUR,
    DISCRIMINATION_NAMES,
    HELD_OUT,
    METRIC_NAMES,
    SHARE_NAMES,
    SUMMARY_NAMES,
    EvalConfig,
    PromptConfig,
)
from entropic.data import check_eval_source, load_eval_questions
from entropic.generation import generate_chats
from entropic.grading import abstains, is_correct, mentions_alternatives
from entropic.metrics import (
    auroc,
    brier_score,
    brier_skill,
    calibration_gap,
    constant_brier,
    discrimination,
    expected_calibration_error,
)
from entropic.parsing import parse_completion, reasoning_text
from entropic.prompting import build_messages

# The behaviour table's columns, before vs after: confidence when right, when wrong, and the shares.
BEHAVIOUR_NAMES = ("confidence_correct", "confidence_wrong", *SHARE_NAMES)


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


def grade(questions: datasets.Dataset, completions: list[str], fmt: str = "lines") -> pd.DataFrame:
    """One row per question: what was asked and answered, what it parsed to, whether right, and
    how it behaved (abstained, put forward alternatives). `fmt` is the prompt's format, which
    says which Answer/Confidence lines count (entropic.parsing)."""
    rows = []
    for row, completion in zip(questions, completions, strict=True):
        answer, confidence = parse_completion(completion, fmt)
        rows.append(
            {
                "question_id": row["question_id"],
                "question": row["question"],
                "gold": " | ".join(row["answers"][:5]),
                "completion": completion,
                "answer": answer,
                "confidence": confidence,
                "correct": bool(is_correct(answer, row["answers"], question=row["question"])),
                "abstains": abstains(answer),
                "alternatives": mentions_alternatives(answer, reasoning_text(completion, fmt)),
            }
        )
    return pd.DataFrame(rows)


def summarize(predictions: pd.DataFrame) -> dict[str, float]:
    """The eval/* metrics of one prediction table (a table from before the behaviour columns
    existed, a resumed run's, has NaN shares)."""
    parsed = predictions.dropna(subset=["confidence"])
    metrics = {
        "accuracy": float(predictions["correct"].mean()),
        "format_rate": float(
            (predictions["answer"].notna() & predictions["confidence"].notna()).mean()
        ),
        "abstain_share": share(predictions, "abstains"),
        "alternatives_share": share(predictions, "alternatives"),
    }
    if parsed.empty:
        nan = math.nan
        metrics.update(confidence=nan, calibration_gap=nan, ece=nan, brier=nan, auroc=nan)
        metrics.update(brier_constant=nan, brier_skill=nan)
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
        brier_constant=constant_brier(correct),
        brier_skill=brier_skill(confidences, correct),
        auroc=auroc(confidences, correct),
    )
    return metrics


def share(predictions: pd.DataFrame, column: str) -> float:
    """The share of rows where a boolean column holds (NaN without the column or rows)."""
    if column not in predictions or predictions.empty:
        return math.nan
    return float(predictions[column].astype(bool).mean())


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
    predictions = grade(questions, completions, prompt.format)
    return predictions, summarize(predictions)


# --- evaluation sets (eval.sets): other question sources, evaluated beside the held-out split ---


def evaluate_sets(
    model,
    tokenizer,
    sets: dict[str, datasets.Dataset],
    prompt: PromptConfig,
    cfg: EvalConfig,
    engine: str,
) -> tuple[dict[str, tuple[pd.DataFrame, dict[str, float]]], float]:
    """`evaluate` on each named set: set name -> (prediction table, metrics), and the seconds
    all of them took (logged as time/eval_seconds)."""
    started = time.perf_counter()
    results = {
        name: evaluate(model, tokenizer, questions, prompt, cfg, engine)
        for name, questions in sets.items()
    }
    return results, time.perf_counter() - started


def metric_prefix(name: str) -> str:
    """Where a set's metrics are logged: eval/ for the held-out split, eval/<set>/ otherwise."""
    return "eval/" if name == HELD_OUT else f"eval/{name}/"


def predictions_path(name: str, when: str) -> str:
    """The artifact a set's prediction table is logged as, `when` being before or after."""
    return f"predictions/{when}.json" if name == HELD_OUT else f"predictions/{name}/{when}.json"


def behaviour_table(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> pd.DataFrame:
    """The reference's "The Pattern" table for this run: per evaluation set, before vs after,
    mean confidence on right and on wrong answers, the share of answers that abstain and the
    share that put forward more than one candidate."""
    rows = {
        (name, when): [metrics.get(column, math.nan) for column in BEHAVIOUR_NAMES]
        for name in before
        for when, metrics in (("before", before[name]), ("after", after.get(name)))
        if metrics is not None
    }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(BEHAVIOUR_NAMES))
    table.index = pd.MultiIndex.from_tuples(table.index, names=["set", "when"])
    return table


def figure_path(figure: str, name: str) -> str:
    """A figure's artifact: <figure>.png for the held-out split, <figure>/<set>.png otherwise."""
    return f"{figure}.png" if name == HELD_OUT else f"{figure}/{name}.png"


def set_key(name: str) -> str:
    """Where set `name` sits in the config, for error messages."""
    return f"eval.sets.{name}"


def check_sets(cfg: EvalConfig) -> None:
    """The checks of every `eval.sets` entry that need its source's loader, before any model
    loads: the source takes its options (a jsonl file is read whole, as `data=jsonl` is). Raises
    ValueError naming the set's key. Its name and its source's name were checked with the config
    (entropic.config.eval_sets, RESERVED_SET_NAMES)."""
    for name, entry in cfg.sets.items():
        check_eval_source(entry.source, key=set_key(name), **entry.options)


def load_sets(cfg: EvalConfig, trained_ids: set[str]) -> dict[str, datasets.Dataset]:
    """Each set's questions: `size` of its source's eval draw (by the set's split_seed), loaded
    without a training pool. A set that shares questions with what the run trains on is
    rejected: it would not measure transfer."""
    sets = {}
    for name, entry in cfg.sets.items():
        key = set_key(name)
        questions = load_eval_questions(
            entry.source, eval_size=entry.size, key=key, **entry.options
        )
        shared = trained_ids & set(questions["question_id"])
        if shared:
            raise ValueError(
                f"{key}: {len(shared)} of its {len(questions)} questions are in the training "
                f"questions of this run (e.g. {sorted(shared)[0]!r}), so it would not measure "
                f"transfer. Fix: evaluate a source or kinds the run does not train on, or use "
                "the held-out split (eval/*) for in-domain numbers"
            )
        sets[name] = questions
    return sets
