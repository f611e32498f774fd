"""`summarize` and `discrimination` on hand-worked prediction tables; `grade` on real
completions; the evaluation sets' names and the behaviour table."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pandas as pd
import pytest

from entropic.config import RESERVED_SET_NAMES
from entropic.evaluate import (
    BEHAVIOUR,
    BEHAVIOUR_NAMES,
    HELD_OUT,
    SUMMARY_NAMES,
    behaviour_table,
    grade,
    metric_prefix,
    predictions_path,
    summarize,
)
from entropic.metrics import discrimination


def predictions(rows: list[tuple]) -> pd.DataFrame:
    """A prediction table as `grade` builds it: None where the answer or confidence is missing;
    the behaviour columns (abstains, alternatives) when a row gives them."""
    columns = ["answer", "confidence", "correct", "abstains", "alternatives"]
    return pd.DataFrame(
        [dict(zip(columns, row, strict=False)) for row in rows], columns=columns[: len(rows[0])]
    )


SIX = predictions(
    [
        ("Paris", 0.9, True, False, False),
        ("Rome", 0.6, True, False, False),
        ("Madrid or Rome", 0.6, False, False, True),
        ("Unknown", 0.2, False, True, False),
        # a confidence with no answer: wrong, but its confidence is parsed
        (None, 0.5, False, False, False),
        ("Oslo", None, True, False, False),  # right, but no confidence: counts for accuracy only
    ]
)
# By hand:
#   accuracy       all six rows, unparsed included: 3 right / 6                         = 0.5
#   format_rate    answer and confidence both parsed: rows 1-4 -> 4 / 6                 = 2/3
#   the parsed subset (confidence present): rows 1-5, confidences .9 .6 .6 .2 .5, right 1 1 0 0 0
#   confidence     (.9 + .6 + .6 + .2 + .5) / 5 = 2.8 / 5                               = 0.56
#   calibration_gap  0.56 - 2/5                                                          = 0.16
#   brier          (.1^2 + .4^2 + .6^2 + .2^2 + .5^2) / 5 = (.01+.16+.36+.04+.25) / 5  = 0.164
#   brier_constant the parsed subset is 2 right of 5: .4 x .6                           = 0.24
#   brier_skill    1 - .164 / .24                                                       = 19/60
#   ece            bins of 0.1: {.9} acc 1, {.6,.6} acc .5, {.2} acc 0, {.5} acc 0
#                  1/5 * .1 + 2/5 * .1 + 1/5 * .2 + 1/5 * .5 = .02 + .04 + .04 + .10    = 0.20
#   auroc          right {.9, .6} vs wrong {.6, .2, .5}: .9 beats 3, .6 beats 2 and ties 1
#                  (3 + 2.5) / (2 * 3)                                                  = 11/12
#   confidence_correct    (.9 + .6) / 2                                                 = 0.75
#   confidence_wrong      (.6 + .2 + .5) / 3                                            = 1.3/3
#   distinct_confidences  {.9, .6, .2, .5}                                              = 4
#   abstain_share         "Unknown", of all six rows                                    = 1/6
#   alternatives_share    "Madrid or Rome", of all six rows                             = 1/6
SIX_EXPECTED = {
    "accuracy": 0.5,
    "format_rate": 4 / 6,
    "confidence": 0.56,
    "calibration_gap": 0.16,
    "brier": 0.164,
    "brier_constant": 0.24,
    "brier_skill": 19 / 60,
    "ece": 0.20,
    "auroc": 11 / 12,
    "confidence_correct": 0.75,
    "confidence_wrong": 1.3 / 3,
    "distinct_confidences": 4.0,
    "abstain_share": 1 / 6,
    "alternatives_share": 1 / 6,
}


def test_summarize_hand_worked_table():
    metrics = summarize(SIX)
    assert set(metrics) == set(SUMMARY_NAMES)
    assert metrics == pytest.approx(SIX_EXPECTED)


def test_summarize_with_nothing_parsed():
    # why: an untrained model often states no confidence at all; accuracy still counts, the
    # calibration metrics are undefined (NaN) and no confidence value was stated
    metrics = summarize(predictions([("Paris", None, True), (None, None, False)]))
    assert metrics["accuracy"] == 0.5 and metrics["format_rate"] == 0.0
    assert metrics["distinct_confidences"] == 0.0
    # why: a table saved before the behaviour columns existed (a resumed run's) has no shares
    undefined = ("confidence", "calibration_gap", "brier", "brier_constant", "brier_skill")
    for name in (*undefined, "confidence_correct", "abstain_share"):
        assert math.isnan(metrics[name]), name
    assert set(metrics) == set(SUMMARY_NAMES)


DISCRIMINATION_CASES = [
    # (confidences, correct, expected (correct, wrong, distinct), why)
    ([0.9, 0.3, 0.5, 0.1], [1, 0, 1, 0], (0.7, 0.2, 4), "(.9+.5)/2 right, (.3+.1)/2 wrong"),
    ([0.8, 0.6], [1, 1], (0.7, math.nan, 2), "all right: no wrong answer to average"),
    ([0.8, 0.6], [0, 0], (math.nan, 0.7, 2), "all wrong: no right answer to average"),
    ([0.7, 0.7, 0.7], [1, 0, 1], (0.7, 0.7, 1), "one number said to everything separates none"),
    ([], [], (math.nan, math.nan, 0), "no parsed confidence at all"),
]


@pytest.mark.parametrize(
    ("confidences", "correct", "expected"),
    [case[:3] for case in DISCRIMINATION_CASES],
    ids=[case[3] for case in DISCRIMINATION_CASES],
)
def test_discrimination(confidences, correct, expected):
    metrics = discrimination(np.array(confidences, float), np.array(correct, bool))
    got = (
        metrics["confidence_correct"],
        metrics["confidence_wrong"],
        metrics["distinct_confidences"],
    )
    assert got == pytest.approx(expected, nan_ok=True)


GRADE_CASES = [
    # (completion, fmt, (answer, confidence, correct, abstains, alternatives), why)
    ("Answer: Paris\nConfidence: 80", "lines", ("Paris", 0.8, True, False, False), "right"),
    ("Answer: I don't know\nConfidence: 5", "lines", ("I don't know", 0.05, False, True, False),
     "an abstention is graded wrong and counted"),
    ("Answer: Paris or Lyon\nConfidence: 50", "lines", ("Paris or Lyon", 0.5, False, False, True),
     "a hedged list is graded wrong and counted as alternatives"),
    ("Answer: Lyon\nConfidence: 20\nQuestion: And Spain?\nAnswer: Paris", "lines",
     ("Lyon", 0.2, False, False, False), "an invented next turn is neither graded nor reasoning"),
    ("It could also be Lyon, but Paris is the capital.\nAnswer: Paris\nConfidence: 70",
     "reasoning", ("Paris", 0.7, True, False, True),
     "the reasoning prompt: the last lines graded, the reasoning read for alternatives"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("completion", "fmt", "expected"),
    [case[:3] for case in GRADE_CASES],
    ids=[case[3] for case in GRADE_CASES],
)
def test_grade(completion, fmt, expected):
    questions = datasets.Dataset.from_dict(
        {"question_id": ["q"], "question": ["Capital of France?"], "answers": [["Paris"]]}
    )
    row = grade(questions, [completion], fmt).iloc[0]
    got = (row["answer"], row["confidence"], row["correct"], row["abstains"], row["alternatives"])
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("name", "prefix", "before", "after", "why"),
    [
        (HELD_OUT, "eval/", "predictions/before.json", "predictions/after.json",
         "the held-out split stays where reports and the UI read it"),
        ("elements", "eval/elements/", "predictions/elements/before.json",
         "predictions/elements/after.json", "each other set under its own name"),
    ],
)  # fmt: skip
def test_where_each_set_is_logged(name, prefix, before, after, why):
    assert metric_prefix(name) == prefix
    assert (predictions_path(name, "before"), predictions_path(name, "after")) == (before, after)


def test_the_config_reserves_every_name_a_set_would_shadow():
    # why: eval.sets names are checked against the torch-free RESERVED_SET_NAMES before torch
    # loads; a metric added to SUMMARY_NAMES alone would let a set named after it shadow it
    assert len(set(RESERVED_SET_NAMES)) == len(RESERVED_SET_NAMES)
    assert set(RESERVED_SET_NAMES) == {*SUMMARY_NAMES, HELD_OUT, BEHAVIOUR}


def test_behaviour_table_reads_before_and_after_of_every_set():
    before = {HELD_OUT: {**SIX_EXPECTED}, "elements": {**SIX_EXPECTED, "abstain_share": 0.0}}
    after = {HELD_OUT: {**SIX_EXPECTED, "confidence_wrong": 0.2}}
    table = behaviour_table(before, after)
    # why: one row per set and stage that ran; a set evaluated only before has no after row
    assert list(table.index) == [(HELD_OUT, "before"), (HELD_OUT, "after"), ("elements", "before")]
    assert list(table.columns) == list(BEHAVIOUR_NAMES)
    assert table.loc[(HELD_OUT, "after"), "confidence_wrong"] == 0.2
    assert table.loc[("elements", "before"), "abstain_share"] == 0.0
