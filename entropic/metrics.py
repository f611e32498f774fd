"""Calibration and discrimination metrics for stated confidences, with their uncertainty.

Every metric takes confidences in [0, 1] and 0/1 (or bool) correctness labels, validates them
loudly (empty, mismatched, NaN, out of range or non-binary inputs raise ``ValueError``), and
returns a plain float; `constant_brier` needs the correctness alone. `reliability_bins` is the
one binning implementation: the expected calibration error is computed from the same bins a
reliability diagram draws. `bootstrap_ci` and `mean_ci` put intervals on any of them, across
questions and across seeds respectively.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

ArrayLike = Sequence[float] | np.ndarray


def reliability_bins(
    confidences: ArrayLike, correct: ArrayLike, n_bins: int = 10
) -> list[dict[str, float]]:
    """Split predictions into ``n_bins`` equal-width confidence bins, empty bins included.

    Bin i is [i/n, (i+1)/n), except the last, which is closed so that confidence 1.0 lands in
    it. Each dict has ``lower``, ``upper``, ``count``, ``mean_confidence`` and ``accuracy``; the
    last two are NaN for an empty bin (matplotlib leaves NaN points out of a plot).
    """
    confidences, correct = _validated(confidences, correct)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    # Parsed percentages sit on bin edges (0.3, 0.7) and 0.29 * 100 is 28.999...; rounding away
    # float noise keeps an edge value in the bin it starts, as the [lower, upper) rule promises.
    bin_index = np.minimum(np.floor(np.round(confidences * n_bins, 9)).astype(int), n_bins - 1)
    bins = []
    for index in range(n_bins):
        in_bin = bin_index == index
        count = int(in_bin.sum())
        bins.append(
            {
                "lower": index / n_bins,
                "upper": (index + 1) / n_bins,
                "count": count,
                "mean_confidence": float(confidences[in_bin].mean()) if count else float("nan"),
                "accuracy": float(correct[in_bin].mean()) if count else float("nan"),
            }
        )
    return bins


def expected_calibration_error(
    confidences: ArrayLike, correct: ArrayLike, n_bins: int = 10
) -> float:
    """ECE = sum over bins of (bin count / N) * |bin accuracy - bin mean confidence|."""
    bins = reliability_bins(confidences, correct, n_bins)
    total = sum(bin_["count"] for bin_ in bins)
    return float(
        sum(
            bin_["count"] / total * abs(bin_["accuracy"] - bin_["mean_confidence"])
            for bin_ in bins
            if bin_["count"]
        )
    )


def brier_score(confidences: ArrayLike, correct: ArrayLike) -> float:
    """Mean squared difference between confidence and the 0/1 outcome."""
    confidences, correct = _validated(confidences, correct)
    return float(np.mean((confidences - correct) ** 2))


def constant_brier(correct: ArrayLike) -> float:
    """The Brier score of the best single confidence for these outcomes: their accuracy p said
    to every one scores p (1 - p) (the climatological forecast), the least any one number can."""
    accuracy = float(_validated_correct(correct).mean())
    return accuracy * (1 - accuracy)


def brier_skill(confidences: ArrayLike, correct: ArrayLike) -> float:
    """Brier skill score against the best single confidence: 1 - Brier / `constant_brier`.

    Positive when the stated confidences beat every constant on the same answers (1 is perfect),
    0 when they tie the best one, negative below it. NaN when all answers are right or all are
    wrong: the constant then scores 0 and no confidence can beat it.
    """
    confidences, correct = _validated(confidences, correct)
    reference = constant_brier(correct)
    if reference == 0:
        return float("nan")
    return 1 - brier_score(confidences, correct) / reference


def auroc(confidences: ArrayLike, correct: ArrayLike) -> float:
    """ROC AUC of confidence as a score for correctness.

    Returns NaN rather than raising when only one class is present (all right or all wrong), as
    happens on small evaluation sets and bootstrap resamples; NaN says "undefined" honestly.
    """
    confidences, correct = _validated(confidences, correct)
    if np.unique(correct).size < 2:
        return float("nan")
    return float(roc_auc_score(correct, confidences))


def calibration_gap(confidences: ArrayLike, correct: ArrayLike) -> float:
    """Mean confidence minus accuracy: positive is overconfident, negative underconfident."""
    confidences, correct = _validated(confidences, correct)
    return float(confidences.mean() - correct.mean())


def discrimination(confidences: ArrayLike, correct: ArrayLike) -> dict[str, float]:
    """Mean confidence on right and on wrong answers (NaN when there are none), and how many
    distinct confidence values were stated: whether the confidence separates the two, or is one
    number said to everything."""
    confidences, correct = np.asarray(confidences, float), np.asarray(correct, bool)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else math.nan

    return {
        "confidence_correct": mean(confidences[correct]),
        "confidence_wrong": mean(confidences[~correct]),
        "distinct_confidences": float(len(np.unique(confidences))),
    }


def pearson_r(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation of ``x`` and ``y``; NaN when either is constant (r is undefined)."""
    x, y = _validated_pair(x, y, "x", "y")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: ArrayLike,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` for ``statistic(*arrays)``.

    Rows are resampled jointly (the same indices for every array), so paired data such as
    confidence and correctness stay paired. Resamples where the statistic is NaN (a resample
    with one class for `auroc`, a constant one for `pearson_r`) are skipped; if all are, the
    interval is ``(nan, nan)``.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample")
    columns = [np.asarray(array) for array in arrays]
    if any(len(column) != len(columns[0]) for column in columns):
        raise ValueError(f"arrays must have equal lengths, got {[len(c) for c in columns]}")
    if len(columns[0]) == 0:
        raise ValueError("bootstrap_ci got empty arrays")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    _check_confidence_level(confidence)
    rng = np.random.default_rng(seed)
    size = len(columns[0])
    values = []
    for _ in range(n_resamples):
        rows = rng.integers(0, size, size)
        value = statistic(*(column[rows] for column in columns))
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_ci(values: ArrayLike, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval ``(mean, low, high)``, e.g. of a metric across seeds.

    With one value there is no spread to estimate, so ``low == high == mean``.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values contain NaN or infinity")
    _check_confidence_level(confidence)
    mean = float(values.mean())
    if values.size == 1:
        return mean, mean, mean
    half_width = stats.t.ppf((1 + confidence) / 2, values.size - 1) * stats.sem(values)
    return mean, float(mean - half_width), float(mean + half_width)


def _validated(confidences: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    confidences, correct = _validated_pair(confidences, correct, "confidences", "correct")
    if ((confidences < 0) | (confidences > 1)).any():
        outside = confidences[(confidences < 0) | (confidences > 1)]
        raise ValueError(f"confidences must lie in [0, 1]; found {outside[:5].tolist()}")
    _check_binary(correct)
    return confidences, correct


def _validated_correct(correct: ArrayLike) -> np.ndarray:
    correct = _validated_array(correct, "correct")
    _check_binary(correct)
    return correct


def _check_binary(correct: np.ndarray) -> None:
    if not np.isin(correct, (0, 1)).all():
        raise ValueError(f"correct must be 0/1 or bool; found {np.unique(correct)[:5].tolist()}")


def _validated_array(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one prediction")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return array


def _validated_pair(
    first: ArrayLike, second: ArrayLike, first_name: str, second_name: str
) -> tuple[np.ndarray, np.ndarray]:
    arrays = [_validated_array(first, first_name), _validated_array(second, second_name)]
    if arrays[0].size != arrays[1].size:
        raise ValueError(
            f"{first_name} and {second_name} differ in length: {arrays[0].size} vs {arrays[1].size}"
        )
    return arrays[0], arrays[1]


def _check_confidence_level(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {confidence}")
