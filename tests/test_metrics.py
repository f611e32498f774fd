"""Tests for `entropic.metrics`, checked against scikit-learn, SciPy and worked examples."""

import math
import re

import numpy as np
import pytest
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from entropic.metrics import (
    auroc,
    bootstrap_ci,
    brier_score,
    brier_skill,
    calibration_gap,
    constant_brier,
    expected_calibration_error,
    mean_ci,
    pearson_r,
    reliability_bins,
)


def random_predictions(seed: int, size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Confidences with correctness drawn from them, so the model is roughly calibrated."""
    rng = np.random.default_rng(seed)
    confidences = rng.uniform(0, 1, size)
    return confidences, (rng.uniform(0, 1, size) < confidences).astype(int)


def test_ece_hand_worked_example():
    # Five predictions, two occupied bins of width 0.1:
    #   bin [0.2, 0.3): confidences 0.2, 0.25        -> mean 0.225, correct 0, 1 -> accuracy 0.5
    #   bin [0.9, 1.0]: confidences 0.9, 0.95, 1.0   -> mean 0.95,  correct 1, 1, 0 -> acc 2/3
    # ECE = 2/5 * |0.5 - 0.225| + 3/5 * |2/3 - 0.95| = 0.4 * 0.275 + 0.6 * 0.28333... = 0.28
    confidences = [0.2, 0.25, 0.9, 0.95, 1.0]
    correct = [0, 1, 1, 1, 0]
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.28)


def test_ece_of_a_perfectly_calibrated_bin_is_zero():
    # Why: confidence 0.5 on half-right questions is the calibration we are training for.
    assert expected_calibration_error([0.5] * 4, [1, 0, 1, 0]) == pytest.approx(0.0)


BIN_EDGE_CASES = [
    # (confidence, n_bins, expected bin index, why)
    (0.0, 10, 0, "zero goes in the first bin"),
    (1.0, 10, 9, "one goes in the last bin, which is closed"),
    (0.3, 10, 3, "a lower edge belongs to the bin it starts, despite 0.3 * 10 float noise"),
    (0.29, 100, 29, "0.29 * 100 is 28.999... in floating point yet belongs in bin 29"),
    (0.0999, 10, 0, "just under an edge stays in the lower bin"),
]


@pytest.mark.parametrize(
    ("confidence", "n_bins", "expected_index"),
    [case[:3] for case in BIN_EDGE_CASES],
    ids=[case[3] for case in BIN_EDGE_CASES],
)
def test_reliability_bin_edges(confidence, n_bins, expected_index):
    counts = [bin_["count"] for bin_ in reliability_bins([confidence], [1], n_bins)]
    assert counts.index(1) == expected_index


def test_reliability_bins_shape_and_empty_bins():
    bins = reliability_bins([0.05, 0.95], [0, 1], n_bins=4)
    assert [(bin_["lower"], bin_["upper"]) for bin_ in bins] == [
        (0.0, 0.25),
        (0.25, 0.5),
        (0.5, 0.75),
        (0.75, 1.0),
    ]
    assert [bin_["count"] for bin_ in bins] == [1, 0, 0, 1]
    # Why: empty bins stay in the list (stable indices for plots) with NaN statistics.
    assert math.isnan(bins[1]["accuracy"]) and math.isnan(bins[1]["mean_confidence"])


@pytest.mark.parametrize("seed", range(5))
def test_reliability_bins_match_sklearn_calibration_curve(seed):
    confidences, correct = random_predictions(seed)
    bins = [bin_ for bin_ in reliability_bins(confidences, correct) if bin_["count"]]
    # Continuous random confidences never sit on an edge, where sklearn's bins are right-closed.
    accuracy, mean_confidence = calibration_curve(correct, confidences, n_bins=10)
    np.testing.assert_allclose([bin_["accuracy"] for bin_ in bins], accuracy)
    np.testing.assert_allclose([bin_["mean_confidence"] for bin_ in bins], mean_confidence)


@pytest.mark.parametrize("seed", range(5))
def test_ece_equals_weighted_gap_of_sklearn_bins(seed):
    confidences, correct = random_predictions(seed)
    accuracy, mean_confidence = calibration_curve(correct, confidences, n_bins=10)
    counts = np.bincount(np.minimum((confidences * 10).astype(int), 9), minlength=10)
    counts = counts[counts > 0]
    expected = np.sum(counts / len(confidences) * np.abs(accuracy - mean_confidence))
    assert expected_calibration_error(confidences, correct) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_brier_score_matches_sklearn(seed):
    confidences, correct = random_predictions(seed)
    assert brier_score(confidences, correct) == pytest.approx(
        brier_score_loss(correct, confidences)
    )


@pytest.mark.parametrize("seed", range(5))
def test_constant_brier_is_the_best_single_confidence(seed):
    # why: the baseline a trained model must beat is the least Brier any one number scores on
    # the same answers; search the numbers 0.000-1.000 with scikit-learn's Brier
    _, correct = random_predictions(seed, size=50 + 37 * seed)
    grid = np.linspace(0, 1, 1001)
    best = min(brier_score_loss(correct, np.full(correct.size, c)) for c in grid)
    assert constant_brier(correct) == pytest.approx(best, abs=1e-6)


BRIER_SKILL_CASES = [
    # (confidences, correct, expected, why)
    ([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], 0.0, "the accuracy said to all ties the best constant"),
    ([1.0, 0.0, 1.0, 0.0], [1, 0, 1, 0], 1.0, "a perfect forecaster: Brier 0"),
    ([0.9, 0.9, 0.9, 0.9], [1, 0, 0, 0], 1 - 0.61 / 0.1875, "one number, the wrong one: below 0"),
    ([0.8, 0.6, 0.2, 0.4], [1, 1, 0, 0], 1 - 0.1 / 0.25, "ranked and close: Brier .10 vs .25"),
    ([0.3, 0.7], [1, 1], math.nan, "all right: the constant 1 scores 0, nothing beats it"),
]


@pytest.mark.parametrize(
    ("confidences", "correct", "expected"),
    [case[:3] for case in BRIER_SKILL_CASES],
    ids=[case[3] for case in BRIER_SKILL_CASES],
)
def test_brier_skill(confidences, correct, expected):
    # by hand: .9 to one right of four is (.1^2 + 3 x .9^2) / 4 = .61 against .25 x .75 = .1875;
    # .8 .6 .2 .4 on 1 1 0 0 is (.04 + .16 + .04 + .16) / 4 = .10 against .5 x .5 = .25
    assert brier_skill(confidences, correct) == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn(seed):
    confidences, correct = random_predictions(seed)
    assert auroc(confidences, correct) == pytest.approx(roc_auc_score(correct, confidences))


def test_metrics_accept_bool_correctness():
    # Why: graders return bools; they must mean the same as 0/1.
    confidences = [0.9, 0.2, 0.6]
    assert brier_score(confidences, [True, False, True]) == brier_score(confidences, [1, 0, 1])


@pytest.mark.parametrize("correct", [[1, 1, 1], [0, 0, 0]], ids=["all correct", "all wrong"])
def test_auroc_with_one_class_is_nan(correct):
    # Why: undefined, and it happens in bootstrap resamples, so NaN rather than an exception.
    assert math.isnan(auroc([0.1, 0.5, 0.9], correct))


def test_calibration_gap_sign():
    # Mean confidence 0.8, accuracy 0.5: overconfident by 0.3.
    assert calibration_gap([0.9, 0.7, 0.8, 0.8], [1, 0, 1, 0]) == pytest.approx(0.3)


INVALID_INPUT_CASES = [
    # (confidences, correct, message fragment, why)
    ([], [], "empty", "no predictions: every metric is undefined"),
    ([0.5, 0.5], [1], "differ in length", "rows must pair up"),
    ([0.5, float("nan")], [1, 0], "NaN", "a NaN confidence would poison every mean"),
    ([0.5, 1.2], [1, 0], "[0, 1]", "a percentage passed unscaled"),
    ([-0.1, 0.5], [1, 0], "[0, 1]", "negative confidence"),
    ([0.5, 0.5], [1, 2], "0/1", "correctness must be binary"),
    ([[0.5]], [[1]], "1-D", "a nested list is a caller bug"),
]


@pytest.mark.parametrize(
    ("confidences", "correct", "message"),
    [case[:3] for case in INVALID_INPUT_CASES],
    ids=[case[3] for case in INVALID_INPUT_CASES],
)
@pytest.mark.parametrize(
    "metric",
    [
        expected_calibration_error,
        brier_score,
        brier_skill,
        auroc,
        calibration_gap,
        reliability_bins,
    ],
    ids=lambda metric: metric.__name__,
)
def test_invalid_inputs_raise(metric, confidences, correct, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        metric(confidences, correct)


PEARSON_CASES = [
    # (x, y, expected, why)
    ([1, 2, 3], [2, 4, 6], 1.0, "a perfect positive line"),
    ([1, 2, 3], [3, 2, 1], -1.0, "a perfect negative line"),
    ([1, 2, 3], [5, 5, 5], float("nan"), "constant y: r is undefined"),
    ([4], [7], float("nan"), "one point is constant too"),
]


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [case[:3] for case in PEARSON_CASES],
    ids=[case[3] for case in PEARSON_CASES],
)
def test_pearson_r(x, y, expected):
    assert pearson_r(x, y) == pytest.approx(expected, nan_ok=True)


def test_pearson_r_matches_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson_r(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)


def test_bootstrap_ci_contains_true_correlation():
    # y = r x + sqrt(1 - r^2) noise has correlation exactly r in the population.
    true_r = 0.6
    rng = np.random.default_rng(1)
    x = rng.normal(size=2000)
    y = true_r * x + math.sqrt(1 - true_r**2) * rng.normal(size=2000)
    low, high = bootstrap_ci(pearson_r, x, y, n_resamples=500)
    assert low < true_r < high
    # Why: the standard error of r at n=2000 is about 0.014, so the interval must be tight.
    assert high - low < 0.1


def test_bootstrap_ci_is_reproducible_and_skips_nan_resamples():
    confidences, correct = [0.9, 0.8, 0.3, 0.2], [1, 1, 0, 1]
    first = bootstrap_ci(auroc, confidences, correct, n_resamples=200, seed=3)
    # Why: tiny samples often resample one class; auroc is NaN there and must not poison the CI.
    assert not any(math.isnan(bound) for bound in first)
    assert first == bootstrap_ci(auroc, confidences, correct, n_resamples=200, seed=3)


def test_bootstrap_ci_all_nan_gives_nan_interval():
    low, high = bootstrap_ci(auroc, [0.5, 0.6], [1, 1], n_resamples=10)
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_ci_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="equal lengths"):
        bootstrap_ci(pearson_r, [1, 2, 3], [1, 2])


def test_mean_ci_hand_computed():
    # values 1, 2, 3, 4: mean 2.5, sample sd sqrt(5/3) = 1.29099, sem = 1.29099 / 2 = 0.645497,
    # t(0.975, df=3) = 3.182446, half-width = 3.182446 * 0.645497 = 2.054260.
    mean, low, high = mean_ci([1, 2, 3, 4])
    assert mean == pytest.approx(2.5)
    assert low == pytest.approx(2.5 - 2.054260, abs=1e-5)
    assert high == pytest.approx(2.5 + 2.054260, abs=1e-5)


def test_mean_ci_single_seed_has_zero_width():
    # Why: one seed gives no spread to estimate; report the value rather than NaN bounds.
    assert mean_ci([0.42]) == (0.42, 0.42, 0.42)


@pytest.mark.parametrize(
    ("values", "message"),
    [([], "non-empty"), ([1.0, float("nan")], "NaN")],
    ids=["no seeds", "a failed seed's NaN"],
)
def test_mean_ci_invalid_inputs(values, message):
    with pytest.raises(ValueError, match=message):
        mean_ci(values)
