"""Calibration rewards (the `reward` config group): pure scoring rules plus their TRL adapter.

Each rule in `REWARDS` is a pure, batched function of a `ScoredBatch` (stated confidence,
correctness, stability, labeled mask, calibrated target):

- `brier`       1 - (correct - confidence)^2                      (needs labels)
- `stability`   1 - (stability - confidence)^2                    (no labels)
- `mixed`       brier on labeled questions, stability on the rest (`reward.labeled_fraction`)
- `rlcr`        correct - (confidence - correct)^2               (RLCR, arXiv 2507.16806)
- `log_score`   log(c) if correct else log(1 - c), c clipped     (Rewarding Doubt, arXiv 2503.02623)
- `calibrated`  1 - (calibrated_target - confidence)^2            (entropy -> Platt target)

Pure Brier pays a wrong answer at confidence 0 as much as a right answer at 1. That is the collapse
the reference describes (accuracy 49.7% -> 31.5% on a second epoch of scarce data), so it is kept
as is, and training logs accuracy so the collapse is visible.

`TRLReward` is what GRPOTrainer calls. TRL calls a reward function on each process's slice of the
batch, and the G completions of one prompt can straddle two processes, so the group-level stability
gathers the whole batch from every rank first (every rank calls it), clusters each group once, and
hands each rank back its own slice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from accelerate import PartialState
from accelerate.utils import gather_object

from entropic.config import RewardConfig
from entropic.grading import is_correct
from entropic.metrics import discrimination
from entropic.parsing import parse_completion
from entropic.semantic import cluster_groups, stability


@dataclass(frozen=True)
class ScoredBatch:
    """One row per completion. `confidence` is NaN where it could not be parsed."""

    confidence: np.ndarray
    correct: np.ndarray
    labeled: np.ndarray
    stability: np.ndarray | None = None
    calibrated_target: np.ndarray | None = None


# What each rule pays the stated confidence toward: the value that maximises a completion's
# reward (the grade for the proper scoring rules, the group's stability, or the mix of the two).
# Logged as train/calibration/target beside train/calibration/accuracy, so a reward that asks
# for more confidence than the answers earn is seen in the run, not inferred after it.


def grade(batch: ScoredBatch) -> np.ndarray:
    return batch.correct


def group_share(batch: ScoredBatch) -> np.ndarray:
    return batch.stability


def grade_or_group_share(batch: ScoredBatch) -> np.ndarray:
    return np.where(batch.labeled, batch.correct, batch.stability)


def platt_target(batch: ScoredBatch) -> np.ndarray:
    return batch.calibrated_target


def quadratic(batch: ScoredBatch, target: np.ndarray) -> np.ndarray:
    """1 - (target - confidence)^2: the reference's Brier and stability rewards, and the rest of
    the family, each with its own target."""
    return 1.0 - (target - batch.confidence) ** 2


def brier(batch: ScoredBatch, cfg: RewardConfig) -> np.ndarray:
    return quadratic(batch, grade(batch))


def stability_reward(batch: ScoredBatch, cfg: RewardConfig) -> np.ndarray:
    return quadratic(batch, group_share(batch))


def mixed(batch: ScoredBatch, cfg: RewardConfig) -> np.ndarray:
    return quadratic(batch, grade_or_group_share(batch))


def rlcr(batch: ScoredBatch, cfg: RewardConfig) -> np.ndarray:
    return batch.correct - (batch.confidence - batch.correct) ** 2


def log_score(batch: ScoredBatch, cfg: RewardConfig) -> np.ndarray:
    clipped = np.clip(batch.confidence, cfg.log_score_floor, 1.0 - cfg.log_score_floor)
    return np.where(batch.correct > 0, np.log(clipped), np.log1p(-clipped))


def calibrated(batch: ScoredBatch, cfg: RewardConfig) -> np.ndarray:
    return quadratic(batch, platt_target(batch))


@dataclass(frozen=True)
class RewardRule:
    score: Callable[[ScoredBatch, RewardConfig], np.ndarray]
    # the confidence that maximises each completion's reward
    target: Callable[[ScoredBatch], np.ndarray]
    # the group-level stability must be computed (clustering, cross-rank gather)
    needs_stability: bool


# Every rule by name (reward.name). What the config knows of each (the reward.* keys it reads,
# whether it needs calibrated targets) is entropic.config.REWARD_PARAMETERS, under the same names
# (tests/test_rewards.py), so that a bad reward setting is refused before torch loads.
REWARDS: dict[str, RewardRule] = {
    "brier": RewardRule(brier, grade, False),
    "stability": RewardRule(stability_reward, group_share, True),
    # Brier on that share of the questions, stability on the rest
    "mixed": RewardRule(mixed, grade_or_group_share, True),
    "rlcr": RewardRule(rlcr, grade, False),
    "log_score": RewardRule(log_score, grade, False),
    # calibrated targets, made by entropic.calibration
    "calibrated": RewardRule(calibrated, platt_target, False),
}


def get_rule(name: str) -> RewardRule:
    if name not in REWARDS:
        raise ValueError(
            f"reward.name: unknown reward {name!r}. Fix: use one of {sorted(REWARDS)} "
            f"(e.g. reward=mixed)"
        )
    return REWARDS[name]


def mark_labeled(dataset: datasets.Dataset, labeled_fraction: float, seed: int) -> datasets.Dataset:
    """Add a `labeled` column: a seeded, fixed subset of round(fraction * n) questions."""
    n = len(dataset)
    n_labeled = int(round(labeled_fraction * n))
    chosen = np.random.default_rng(seed).permutation(n)[:n_labeled]
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return dataset.add_column("labeled", mask.tolist())


def completion_text(completion: str | list[dict[str, str]]) -> str:
    """TRL passes conversational completions as a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content", "") for message in completion)


def group_stability(
    question_ids: Sequence[str],
    answers: Sequence[str | None],
    num_generations: int,
    clusterer: Callable,
) -> np.ndarray:
    """Stability of each local completion within its question's group, across all ranks.

    Every rank must call this (it gathers). Stability never sees gold aliases: on unlabeled
    questions that would leak the labels the reward is meant to do without.
    """
    state = PartialState()
    local_ids, local_answers = list(question_ids), list(answers)
    offset = 0
    if state.num_processes > 1:
        lengths = gather_object([len(local_ids)])
        offset = sum(lengths[: state.process_index])
        local_ids, local_answers = gather_object(local_ids), gather_object(local_answers)
    if len(local_ids) % num_generations:
        raise RuntimeError(
            f"stability: the gathered batch has {len(local_ids)} completions, not a multiple of "
            f"num_generations={num_generations}"
        )
    groups, starts = [], range(0, len(local_ids), num_generations)
    for start in starts:
        block = local_ids[start : start + num_generations]
        if len(set(block)) != 1:
            raise RuntimeError(
                f"stability: completions {start}..{start + num_generations - 1} belong to several "
                f"questions {sorted(set(block))}; a group must hold one prompt's G completions"
            )
        groups.append(local_answers[start : start + num_generations])
    clusters = cluster_groups(clusterer, groups)
    everything = np.concatenate([stability(ids) for ids in clusters])
    return everything[offset : offset + len(question_ids)]


def confidence_spread(
    question_ids: Sequence[str], confidence: np.ndarray, correct: np.ndarray
) -> dict[str, float]:
    """Signs of the dead end where one confidence is stated for everything, on parsed rows.

    Within a group, equal confidences give equal Brier rewards (zero spread, zero advantage);
    across questions, equal confidences rank nothing. TRL's own `frac_reward_zero_std` counts the
    groups whose rewards are all equal. NaN entries (unparsed confidences) are left out; a metric
    with no rows to average is left out too, since TRL averages what it is given.
    """
    parsed = ~np.isnan(confidence)
    ids = np.asarray(question_ids)[parsed]
    values, right = confidence[parsed], correct[parsed] > 0
    by_question = [values[ids == q] for q in dict.fromkeys(ids)]
    split = discrimination(values, right)
    return {
        "confidence_spread_within_group": float(np.mean([v.std() for v in by_question])),
        "confidence_spread_across_questions": float(np.std([v.mean() for v in by_question])),
        **{name: value for name, value in split.items() if not np.isnan(value)},
    }


class TRLReward:
    """The callable GRPOTrainer gets; its `__name__` is what TRL logs under `rewards/<name>/`."""

    def __init__(
        self,
        cfg: RewardConfig,
        num_generations: int,
        clusterer: Callable | None,
        answer_format: str = "lines",
    ):
        self.cfg = cfg
        # the prompt's format (prompt.format): which Answer/Confidence lines count
        self.answer_format = answer_format
        self.rule = get_rule(cfg.name)
        self.num_generations = num_generations
        self.clusterer = clusterer
        self.__name__ = cfg.name

    def __call__(
        self,
        prompts: list,
        completions: list,
        answers: list[list[str]],
        question_id: list[str],
        question: list[str] | None = None,
        labeled: list[bool] | None = None,
        calibrated_target: list[float] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float]:
        parsed = [parse_completion(completion_text(c), self.answer_format) for c in completions]
        answer_texts = [answer for answer, _ in parsed]
        confidence = np.array([np.nan if c is None else c for _, c in parsed], dtype=float)
        questions = question if question is not None else [None] * len(parsed)
        correct = np.array(
            [
                float(is_correct(a, gold, question=q))
                for a, gold, q in zip(answer_texts, answers, questions, strict=True)
            ]
        )
        labeled_mask = np.ones(len(parsed), bool) if labeled is None else np.asarray(labeled, bool)
        batch = ScoredBatch(
            confidence=confidence,
            correct=correct,
            labeled=labeled_mask,
            stability=(
                group_stability(question_id, answer_texts, self.num_generations, self.clusterer)
                if self.rule.needs_stability
                else None
            ),
            calibrated_target=(
                None if calibrated_target is None else np.asarray(calibrated_target, float)
            ),
        )
        well_formed = np.array([a is not None and c is not None for a, c in parsed])
        with np.errstate(invalid="ignore"):
            rewards = self.rule.score(batch, self.cfg)
        rewards = np.where(well_formed, rewards, self.cfg.format_penalty)
        if log_metric is not None:
            log_metric("calibration/accuracy", float(correct.mean()))
            log_metric("calibration/format_rate", float(well_formed.mean()))
            log_metric("calibration/labeled_share", float(labeled_mask.mean()))
            if well_formed.any():
                log_metric("calibration/confidence", float(np.nanmean(confidence[well_formed])))
                target = self.rule.target(batch)[well_formed]
                log_metric("calibration/target", float(np.mean(target)))
                for name, value in confidence_spread(question_id, confidence, correct).items():
                    log_metric(f"calibration/{name}", value)
            if batch.stability is not None:
                log_metric("calibration/stability", float(batch.stability.mean()))
        return rewards.astype(float).tolist()
