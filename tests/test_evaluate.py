"""`summarize` and `discrimination` on hand-worked prediction tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from entropic.evaluate import SUMMARY_NAMES, summarize
from entropic.metrics import discrimination


def predictions(rows: list[tuple[str | None, float | None, bool]]) -> pd.DataFrame:
    """A prediction table as `grade` builds it: None where the answer or confidence is missing."""
    return pd.DataFrame(
        [{"answer": a, "confidence": c, "correct": ok} for a, c, ok in rows],
        columns=["answer", "confidence", "correct"],
    )


SIX = predictions(
    [
        ("Paris", 0.9, True),
        ("Rome", 0.6, True),
        ("Madrid", 0.6, False),
        ("Lyon", 0.2, False),
        (None, 0.5, False),  # a confidence with no answer: wrong, but its confidence is parsed
        ("Oslo", None, True),  # right, but no confidence: counts for accuracy only
    ]
)
# By hand:
#   accuracy       all six rows, unparsed included: 3 right / 6                         = 0.5
#   format_rate    answer and confidence both parsed: rows 1-4 -> 4 / 6                 = 2/3
#   the parsed subset (confidence present): rows 1-5, confidences .9 .6 .6 .2 .5, right 1 1 0 0 0
#   confidence     (.9 + .6 + .6 + .2 + .5) / 5 = 2.8 / 5                               = 0.56
#   calibration_gap  0.56 - 2/5                                                          = 0.16
#   brier          (.1^2 + .4^2 + .6^2 + .2^2 + .5^2) / 5 = (.01+.16+.36+.04+.25) / 5  = 0.164
#   ece            bins of 0.1: {.9} acc 1, {.6,.6} acc .5, {.2} acc 0, {.5} acc 0
#                  1/5 * .1 + 2/5 * .1 + 1/5 * .2 + 1/5 * .5 = .02 + .04 + .04 + .10    = 0.20
#   auroc          right {.9, .6} vs wrong {.6, .2, .5}: .9 beats 3, .6 beats 2 and ties 1
#                  (3 + 2.5) / (2 * 3)                                                  = 11/12
#   confidence_correct    (.9 + .6) / 2                                                 = 0.75
#   confidence_wrong      (.6 + .2 + .5) / 3                                            = 1.3/3
#   distinct_confidences  {.9, .6, .2, .5}                                              = 4
SIX_EXPECTED = {
    "accuracy": 0.5,
    "format_rate": 4 / 6,
    "confidence": 0.56,
    "calibration_gap": 0.16,
    "brier": 0.164,
    "ece": 0.20,
    "auroc": 11 / 12,
    "confidence_correct": 0.75,
    "confidence_wrong": 1.3 / 3,
    "distinct_confidences": 4.0,
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
    for name in ("confidence", "calibration_gap", "brier", "confidence_correct"):
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
