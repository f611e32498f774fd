"""The numbers of a report: a metric across seeds as a mean with a 95% interval, and as shown.

Every number is a run's own greedy evaluation: `before` is step 0 (the untrained model), `after`
the last step. Across seeds a number is the mean with a 95% Student-t interval
(`entropic.metrics.mean_ci`), cut to the values the metric can take.
"""

from __future__ import annotations

import math

import pandas as pd

from entropic.evaluate import BEHAVIOUR_NAMES, HELD_OUT, METRIC_NAMES
from entropic.metrics import mean_ci

# Signed metrics are printed with their sign (+ overconfident, - underconfident).
SIGNED = {"calibration_gap", "reduction"}
# The values each metric can take. An interval across seeds is cut to them: a Student-t interval
# from two or three seeds easily runs past 0% or 100%, which no run can reach.
BOUNDS = {
    **{metric: (0.0, 1.0) for metric in (*METRIC_NAMES, *BEHAVIOUR_NAMES)},
    "calibration_gap": (-1.0, 1.0),
    # the share of the gap's size that is gone: all of it at most, unbounded below (a run can
    # end further from calibrated than it began)
    "reduction": (-math.inf, 1.0),
}
# Shown as fractions, as RLCR reports them (ECE 0.058, AUROC 0.73), not as percentages.
FRACTIONS = {"ece", "auroc"}
# A difference of two rates (the paired B - A, C - B accuracies).
DIFFERENCE_BOUNDS = (-1.0, 1.0)
# A value with no natural range.
UNBOUNDED = (-math.inf, math.inf)


def stage(
    runs: pd.DataFrame, when: str, eval_set: str = HELD_OUT, metrics=METRIC_NAMES
) -> pd.DataFrame:
    """The eval metrics of `runs` on one evaluation set (the held-out split unless named) before
    training (step 0) or after it (the last step)."""
    prefix = "" if eval_set == HELD_OUT else f"{eval_set}/"
    return runs[[f"{when}/{prefix}{m}" for m in metrics]].set_axis(list(metrics), axis=1)


def interval(
    values: pd.Series, bounds: tuple[float, float] = UNBOUNDED
) -> tuple[float, float, float]:
    """Mean and 95% interval across seeds, the interval cut to `bounds` (the values the metric can
    take); NaN when no run has the value."""
    values = values.dropna()
    if values.empty:
        return math.nan, math.nan, math.nan
    mean, low, high = mean_ci(values.to_numpy(float))
    return mean, max(low, bounds[0]), min(high, bounds[1])


def summarize(groups: dict[str, pd.DataFrame], metrics) -> pd.DataFrame:
    """One row per condition: <metric>_mean/_low/_high over its runs, <metric>_runs (each run's
    value, for the figures), and how many runs."""
    rows = {}
    for label, values in groups.items():
        row = {"seeds": len(values)}
        for metric in metrics:
            row[f"{metric}_mean"], row[f"{metric}_low"], row[f"{metric}_high"] = interval(
                values[metric], BOUNDS.get(metric, UNBOUNDED)
            )
            row[f"{metric}_runs"] = values[metric].dropna().tolist()
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def with_reference(numbers: pd.DataFrame, reference: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Add ref_<metric> columns (NaN where the reference has no such condition or number)."""
    numbers = numbers.copy()
    metrics = sorted({m for ref in reference.values() for m in ref})
    for metric in metrics:
        numbers[f"ref_{metric}"] = [
            reference.get(label, {}).get(metric, math.nan) for label in numbers.index
        ]
    return numbers


def paired_difference(first: pd.DataFrame, second: pd.DataFrame, metric: str) -> pd.Series:
    """second - first per seed (same seed, same training subset), for seeds both have."""
    a = first.set_index("seed")[f"after/{metric}"]
    b = second.set_index("seed")[f"after/{metric}"]
    return (b - a).dropna()


def percent(mean: float, low: float = math.nan, high: float = math.nan, signed=False) -> str:
    """43.6% [40.1, 47.0]; the interval is left out when there is none (one seed)."""
    if math.isnan(mean):
        return "-"
    form = "{:+.1f}" if signed else "{:.1f}"
    text = form.format(100 * mean) + "%"
    if not (math.isnan(low) or math.isnan(high)) and high > low:
        text += f" [{form.format(100 * low)}, {form.format(100 * high)}]"
    return text


def fraction(mean: float, low: float = math.nan, high: float = math.nan) -> str:
    """0.058 [0.041, 0.075]: ECE and AUROC as RLCR reports them."""
    if math.isnan(mean):
        return "-"
    text = f"{mean:.3f}"
    if not (math.isnan(low) or math.isnan(high)) and high > low:
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def formatted(metric: str, mean: float, low: float = math.nan, high: float = math.nan) -> str:
    """A metric as the tables show it: a fraction (FRACTIONS) or a percentage, signed if SIGNED."""
    if metric in FRACTIONS:
        return fraction(mean, low, high)
    return percent(mean, low, high, signed=metric in SIGNED)


def shown(numbers: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """The table as printed: ours with intervals, then the reference, for `columns` (metric ->
    heading)."""
    table = pd.DataFrame(index=numbers.index)
    for metric, heading in columns.items():
        table[heading] = [
            formatted(metric, row[f"{metric}_mean"], row[f"{metric}_low"], row[f"{metric}_high"])
            for _, row in numbers.iterrows()
        ]
    table["Seeds"] = numbers["seeds"].astype(int)
    for metric, heading in columns.items():
        if f"ref_{metric}" in numbers:
            table[f"Reference: {heading.lower()}"] = [
                formatted(metric, v) for v in numbers[f"ref_{metric}"]
            ]
    return table
