"""The figures of a report: our means with 95% intervals beside the reference, and curves.

Summary figures draw one panel per metric (bars per condition, or points along a swept share)
with each seed's value as a dot and the reference as black diamonds; the training curves draw
`eval/*` against the step from the periodic evaluations.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on clusters and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from entropic.report.numbers import BOUNDS, interval  # noqa: E402
from entropic.report.runs import SweepRuns  # noqa: E402

# The training curves: one panel each, and its axis label.
CURVE_METRICS = {"accuracy": "Eval accuracy", "calibration_gap": "Calibration gap"}


def each_run(ax: plt.Axes, numbers: pd.DataFrame, metric: str, x) -> None:
    """Each run's value as a small dot beside its condition's mean: with two or three seeds the
    points say more than an interval."""
    if f"{metric}_runs" not in numbers:
        return
    for position, values in zip(x, numbers[f"{metric}_runs"], strict=True):
        if values:
            ax.scatter(
                [position] * len(values), 100 * np.asarray(values, float), s=14,
                color="tab:orange", edgecolor="black", linewidth=0.5, zorder=3,
            )  # fmt: skip
    ax.scatter(
        [], [], s=14, color="tab:orange", edgecolor="black", linewidth=0.5, label="each seed"
    )


def ours_and_reference(
    ax: plt.Axes, numbers: pd.DataFrame, metric: str, heading: str, x, draw: Callable
) -> None:
    """One panel of a summary figure: `draw(ax, x, mean, error)` plots our means with their 95%
    intervals (bars, or points on a line); each run's value, the reference as black diamonds and
    the zero line go on top."""
    mean = 100 * numbers[f"{metric}_mean"].to_numpy(float)
    low = 100 * numbers[f"{metric}_low"].to_numpy(float)
    high = 100 * numbers[f"{metric}_high"].to_numpy(float)
    draw(ax, x, mean, np.nan_to_num(np.vstack([mean - low, high - mean])))
    each_run(ax, numbers, metric, x)
    if f"ref_{metric}" in numbers:
        ax.scatter(x, 100 * numbers[f"ref_{metric}"], marker="D", color="black", label="reference")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel(f"{heading} (%)")


def bar_figure(numbers: pd.DataFrame, metrics: dict[str, str], title: str) -> plt.Figure:
    """One panel per metric: our means with 95% intervals, the reference as black diamonds."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 4), squeeze=False)
    x = np.arange(len(numbers))
    for ax, (metric, heading) in zip(axes[0], metrics.items(), strict=True):
        ours_and_reference(
            ax, numbers, metric, heading, x,
            lambda axis, at, mean, error: axis.bar(
                at, mean, yerr=error, capsize=4, color="tab:blue", alpha=0.8, label="ours, 95% CI"
            ),
        )  # fmt: skip
        # wrapped: a row named by what sets it apart ("Untrained (prompt middle_scale, dtype
        # float32)") would run into its neighbours
        ax.set_xticks(x, [textwrap.fill(str(label), 12) for label in numbers.index], fontsize=7)
    fig.suptitle(title, fontsize=11)
    legend_below(fig, axes[0][0])
    return fig


def share_figure(numbers: pd.DataFrame, metrics: dict[str, str], x: list[float], xlabel: str):
    """One panel per metric against a swept share in [0, 1], with 95% intervals and the
    reference."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 4), squeeze=False)
    for ax, (metric, heading) in zip(axes[0], metrics.items(), strict=True):
        ours_and_reference(
            ax, numbers, metric, heading, x,
            lambda axis, at, mean, error: axis.errorbar(
                at, mean, yerr=error, marker="o", capsize=4, label="ours, 95% CI"
            ),
        )  # fmt: skip
        ax.set_xlim(-0.05, 1.05)
        ax.set_xticks(np.linspace(0, 1, 5))
        ax.set_xlabel(xlabel)
    legend_below(fig, axes[0][0])
    return fig


def legend_below(fig: plt.Figure, ax: plt.Axes) -> None:
    """One legend for all panels, under them, where it cannot hide a point."""
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))


def curves_figure(sweep: SweepRuns, groups: dict[str, pd.DataFrame]) -> plt.Figure | None:
    """eval/accuracy and eval/calibration_gap against the training step, per condition: the mean
    over seeds at the steps every seed evaluated, with a 95% band."""
    trained = {label: runs[runs["trained"]] for label, runs in groups.items()}
    trained = {label: runs for label, runs in trained.items() if not runs.empty}
    if not trained:
        return None
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5.2 * len(CURVE_METRICS), 4))
    for ax, (metric, heading) in zip(axes, CURVE_METRICS.items(), strict=True):
        for label, runs in trained.items():
            per_seed = pd.concat([sweep.histories[r][metric] for r in runs.index], axis=1).dropna()
            bands = [interval(per_seed.loc[step], BOUNDS[metric]) for step in per_seed.index]
            mean, low, high = (100 * np.array(column) for column in zip(*bands, strict=True))
            ax.plot(per_seed.index, mean, marker="o", ms=3, label=label)
            ax.fill_between(per_seed.index, low, high, alpha=0.2)
        ax.axhline(0, color="grey", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{heading} (%)")
    axes[0].legend(fontsize=8)
    runs = pd.concat(trained.values())
    fig.suptitle(
        f"Held-out evaluation during training: steps between the first and the last on the first "
        f"{runs['periodic_size'].min()} of {runs['eval_questions'].min()} questions",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
