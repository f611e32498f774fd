"""Reward rules on hand-worked values, their scoring-rule properties, and the TRL adapter."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from entropic.config import (
    COMMON_REWARD_PARAMETERS,
    REWARD_PARAMETERS,
    RewardConfig,
    check_reward_parameters,
)
from entropic.rewards import (
    REWARDS,
    ScoredBatch,
    TRLReward,
    confidence_spread,
    get_rule,
    group_stability,
    mark_labeled,
)
from entropic.semantic import build_clusterer


def cfg(name: str, **kw) -> RewardConfig:
    return RewardConfig(name=name, **kw)


def batch(confidence, correct, labeled=None, stability=None, target=None) -> ScoredBatch:
    n = len(confidence)
    return ScoredBatch(
        confidence=np.asarray(confidence, float),
        correct=np.asarray(correct, float),
        labeled=np.ones(n, bool) if labeled is None else np.asarray(labeled, bool),
        stability=None if stability is None else np.asarray(stability, float),
        calibrated_target=None if target is None else np.asarray(target, float),
    )


@pytest.mark.parametrize(
    ("rule", "scored", "expected"),
    [
        # 1 - (1 - 0.8)^2 = 0.96: right and fairly sure
        ("brier", batch([0.8], [1]), [0.96]),
        # 1 - (0 - 0.8)^2 = 0.36: wrong and fairly sure
        ("brier", batch([0.8], [0]), [0.36]),
        # wrong at confidence 0 pays as much as right at 1: the collapse the reference describes
        ("brier", batch([0.0, 1.0], [0, 1]), [1.0, 1.0]),
        # 1 - (0.5 - 0.5)^2 = 1: confidence matches the group's agreement
        ("stability", batch([0.5], [0], stability=[0.5]), [1.0]),
        # 1 - (1 - 0.2)^2 = 0.36: the whole group agrees but the model says 20%
        ("stability", batch([0.2], [0], stability=[1.0]), [0.36]),
        # labeled row -> Brier 1-(1-.5)^2 = .75; unlabeled -> stability 1-(.25-.5)^2 = .9375
        (
            "mixed",
            batch([0.5, 0.5], [1, 1], labeled=[True, False], stability=[0.0, 0.25]),
            [0.75, 0.9375],
        ),
        # RLCR: 1 - (0.9 - 1)^2 = 0.99 right; 0 - 0.9^2 = -0.81 wrong
        ("rlcr", batch([0.9, 0.9], [1, 0]), [0.99, -0.81]),
        # log score: ln 0.5 right; wrong at 1.0 clips to 0.99 -> ln 0.01
        ("log_score", batch([0.5, 1.0], [1, 0]), [math.log(0.5), math.log(0.01)]),
        # calibrated target 0.3, confidence 0.5 -> 1 - 0.04
        ("calibrated", batch([0.5], [1], target=[0.3]), [0.96]),
    ],
)
def test_rules_on_hand_worked_values(rule, scored, expected):
    np.testing.assert_allclose(REWARDS[rule].score(scored, cfg(rule)), expected, atol=1e-12)


@pytest.mark.parametrize("rule", ["brier", "log_score", "rlcr"])
def test_expected_reward_peaks_at_the_true_probability(rule):
    """A proper scoring rule: answering right with probability p, the best confidence is p."""
    grid = np.round(np.linspace(0.02, 0.98, 49), 2)
    for p in (0.1, 0.3, 0.5, 0.72, 0.9):
        right = REWARDS[rule].score(batch(grid, np.ones_like(grid)), cfg(rule))
        wrong = REWARDS[rule].score(batch(grid, np.zeros_like(grid)), cfg(rule))
        expected = p * right + (1 - p) * wrong
        assert abs(grid[np.argmax(expected)] - p) <= 0.02, (rule, p)


def test_the_config_knows_every_rule_by_the_registrys_names():
    # why: reward.name is checked against the torch-free REWARD_PARAMETERS before torch loads; a
    # rule added to REWARDS alone would be refused, one added there alone would fail in the job
    assert list(REWARD_PARAMETERS) == list(REWARDS)


def test_unknown_reward_lists_the_valid_names():
    with pytest.raises(ValueError, match="brier") as err:
        get_rule("brierr")
    assert "mixed" in str(err.value) and "stability" in str(err.value)


def completions(*texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


GROUP = completions(
    "Answer: Paris\nConfidence: 50",
    "Answer: paris.\nConfidence: 100",  # same meaning after normalisation
    "Answer: Lyon\nConfidence: 25",
    "I think it is Paris",  # no format: penalised, a singleton cluster
)


def call(rule, texts, labeled, question_ids=None, g=4, penalty=-1.0, metrics=None):
    reward = TRLReward(cfg(rule, format_penalty=penalty), g, build_clusterer("exact"))
    n = len(texts)
    return reward(
        prompts=[[]] * n,
        completions=texts,
        answers=[["Paris"]] * n,
        question_id=question_ids or ["capital:FR"] * n,
        labeled=labeled,
        log_metric=None if metrics is None else (lambda k, v: metrics.__setitem__(k, v)),
    )


def test_stability_reward_from_completions():
    # clusters {Paris, paris.}, {Lyon}, {None}: stability .5, .5, .25, .25
    rewards = call("stability", GROUP, [False] * 4)
    np.testing.assert_allclose(rewards, [1.0, 1 - 0.5**2, 1.0, -1.0])


def test_mixed_uses_brier_on_labeled_questions_only():
    labeled = call("mixed", GROUP, [True] * 4)
    np.testing.assert_allclose(labeled, [0.75, 1.0, 1 - 0.25**2, -1.0])
    unlabeled = call("mixed", GROUP, [False] * 4)
    np.testing.assert_allclose(unlabeled, call("stability", GROUP, [False] * 4))


def test_brier_grades_each_answer_after_its_question():
    # Why: TRL passes the dataset's `question` column; "Fiumicello, Italy" restates the city
    # before the country, and is graded right only when the reward reads the question.
    reward = TRLReward(cfg("brier"), 2, build_clusterer("exact"))
    texts = completions(
        "Answer: Fiumicello, Italy\nConfidence: 80", "Answer: Italy\nConfidence: 80"
    )
    kwargs = dict(prompts=[[]] * 2, completions=texts, answers=[["Italy"]] * 2)
    kwargs["question_id"] = ["country_of_city:x"] * 2
    with_question = reward(**kwargs, question=["In which country is the city of Fiumicello?"] * 2)
    np.testing.assert_allclose(with_question, [1 - 0.2**2] * 2)
    np.testing.assert_allclose(reward(**kwargs), [1 - 0.8**2, 1 - 0.2**2])


def test_training_metrics_are_logged():
    metrics: dict[str, float] = {}
    call("mixed", GROUP, [True, True, True, True], metrics=metrics)
    assert metrics["calibration/accuracy"] == 0.5  # two of four answers say Paris
    assert metrics["calibration/format_rate"] == 0.75
    assert metrics["calibration/labeled_share"] == 1.0
    assert metrics["calibration/confidence"] == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    # confidence_spread of one group, parsed confidences .5 1 .25 (Paris, paris., Lyon):
    # mean 7/12, deviations -1/12 5/12 -4/12 -> variance (1 + 25 + 16) / 144 / 3 = 7/72
    assert metrics["calibration/confidence_spread_within_group"] == pytest.approx(math.sqrt(7 / 72))
    assert metrics["calibration/confidence_spread_across_questions"] == 0.0  # one question
    assert metrics["calibration/distinct_confidences"] == 3
    assert metrics["calibration/confidence_correct"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["calibration/confidence_wrong"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("rule", "labeled", "target"),
    [
        # GROUP's well-formed rows: Paris, paris. (right), Lyon (wrong); stability .5 .5 .25
        ("brier", True, (1 + 1 + 0) / 3),
        ("rlcr", True, (1 + 1 + 0) / 3),
        ("stability", False, (0.5 + 0.5 + 0.25) / 3),
        ("mixed", True, (1 + 1 + 0) / 3),
        ("mixed", False, (0.5 + 0.5 + 0.25) / 3),
    ],
)
def test_the_target_the_reward_pays_toward_is_logged(rule, labeled, target):
    metrics: dict[str, float] = {}
    call(rule, GROUP, [labeled] * 4, metrics=metrics)
    assert metrics["calibration/target"] == pytest.approx(target)


def test_groups_are_clustered_separately():
    # Two groups of G=2: q1 agrees on Paris (stability 1), q2 splits Rome/Milan (.5 each).
    # Clustered as one group of four, Paris would get 2/4 and Rome, Milan 1/4 each.
    texts = completions(
        "Answer: Paris\nConfidence: 50",
        "Answer: Paris\nConfidence: 50",
        "Answer: Rome\nConfidence: 50",
        "Answer: Milan\nConfidence: 50",
    )
    stab = group_stability(
        ["q1", "q1", "q2", "q2"], ["Paris", "Paris", "Rome", "Milan"], 2, build_clusterer("exact")
    )
    np.testing.assert_allclose(stab, [1.0, 1.0, 0.5, 0.5])
    # the reward sees the same groups: 1 - (1 - .5)^2 = .75 on q1, 1 - (.5 - .5)^2 = 1 on q2
    rewards = call("stability", texts, [False] * 4, question_ids=["q1", "q1", "q2", "q2"], g=2)
    np.testing.assert_allclose(rewards, [0.75, 0.75, 1.0, 1.0])


def test_a_group_mixing_questions_is_an_error():
    with pytest.raises(RuntimeError, match="several questions"):
        group_stability(["q1", "q2", "q1", "q2"], ["a", "b", "c", "d"], 2, build_clusterer("exact"))


@pytest.mark.parametrize(
    ("fraction", "n", "expected"), [(0.5, 10, 5), (0.0, 7, 0), (1.0, 7, 7), (0.25, 6, 2)]
)
def test_mark_labeled_takes_a_fixed_seeded_share(fraction, n, expected):
    import datasets

    ds = datasets.Dataset.from_dict({"question_id": [str(i) for i in range(n)]})
    first = mark_labeled(ds, fraction, seed=3)["labeled"]
    assert sum(first) == expected
    assert first == mark_labeled(ds, fraction, seed=3)["labeled"]  # same seed, same subset


SPREAD_CASES = [
    # (question_ids, confidence, correct, expected, why)
    (
        ["q1", "q1", "q2", "q2"],
        [0.8, 0.4, 0.3, math.nan],
        [1, 0, 0, 1],
        {
            # q1 {.8, .4}: std .2; q2 {.3} (the NaN left out): std 0 -> (.2 + 0) / 2
            "confidence_spread_within_group": 0.1,
            # group means .6 and .3: std |.6 - .3| / 2
            "confidence_spread_across_questions": 0.15,
            "distinct_confidences": 3,
            # the NaN row is right but unparsed: only .8 is a parsed right answer
            "confidence_correct": 0.8,
            "confidence_wrong": (0.4 + 0.3) / 2,
        },
        "two groups of two, one confidence unparsed",
    ),
    (
        ["q1", "q1", "q2", "q2"],
        [0.7, 0.7, 0.7, 0.7],
        [1, 0, 1, 0],
        {
            "confidence_spread_within_group": 0.0,
            "confidence_spread_across_questions": 0.0,
            "distinct_confidences": 1,
            "confidence_correct": 0.7,
            "confidence_wrong": 0.7,
        },
        "the dead end: one number for everything spreads nothing",
    ),
    (
        ["q1", "q1"],
        [0.9, 0.5],
        [1, 1],
        {
            "confidence_spread_within_group": 0.2,  # std of {.9, .5}
            "confidence_spread_across_questions": 0.0,
            "distinct_confidences": 2,
            "confidence_correct": 0.7,
        },
        "all right: confidence_wrong is left out, not NaN (TRL would average the NaN)",
    ),
]


@pytest.mark.parametrize(
    ("question_ids", "confidence", "correct", "expected"),
    [case[:4] for case in SPREAD_CASES],
    ids=[case[4] for case in SPREAD_CASES],
)
def test_confidence_spread_hand_worked(question_ids, confidence, correct, expected):
    metrics = confidence_spread(question_ids, np.array(confidence, float), np.array(correct, float))
    assert metrics == pytest.approx(expected)


PARAMETER_CASES = [
    # (rule, parameters set, the fix named or None if accepted, why)
    ("brier", {"labeled_fraction": 0.5}, "reward=mixed reward.labeled_fraction=0.5", "pure Brier"),
    ("stability", {"labeled_fraction": 0.5}, "reward=mixed", "would run as pure stability"),
    ("rlcr", {"labeled_fraction": 0.25}, "reward=mixed", "RLCR needs every label"),
    ("brier", {"log_score_floor": 0.05}, "reward=log_score reward.log_score_floor=0.05", "unread"),
    ("mixed", {"labeled_fraction": 0.5, "log_score_floor": 0.2}, "reward=log_score", "unread"),
    ("brier", {"labeled_fraction": 1.0}, None, "the share brier is defined for"),
    ("stability", {"labeled_fraction": 0.0}, None, "the share stability is defined for"),
    ("mixed", {"labeled_fraction": 0.25}, None, "mixed reads the mix"),
    ("calibrated", {"labeled_fraction": 0.5}, None, "calibrated fits its Platt scaling on it"),
    ("log_score", {"log_score_floor": 0.05}, None, "log_score reads its floor"),
    ("rlcr", {"format_penalty": -1.0}, None, "every rule pays the format penalty"),
]


@pytest.mark.parametrize(
    ("name", "parameters", "fix"),
    [case[:3] for case in PARAMETER_CASES],
    ids=[f"{case[0]}-{case[3]}" for case in PARAMETER_CASES],
)
def test_a_parameter_the_rule_does_not_read_is_refused(name, parameters, fix):
    config = cfg(name, **parameters)
    if fix is None:
        check_reward_parameters(config)
        return
    with pytest.raises(ValueError) as err:
        check_reward_parameters(config)
    assert str(err.value).startswith("reward.") and fix in str(err.value).split("Fix:")[1]


def test_every_rule_declares_parameters_that_exist():
    # why: a misspelt name in `reads` would leave the real parameter unchecked
    names = {f.name for f in dataclasses.fields(RewardConfig)}
    for name, rule in REWARD_PARAMETERS.items():
        assert set(rule.reads) <= names - set(COMMON_REWARD_PARAMETERS), name
        # a rule either reads the mix or says which share it is defined for, never both
        assert ("labeled_fraction" in rule.reads) == (rule.labeled_fraction is None), name
