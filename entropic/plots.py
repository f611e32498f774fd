"""Figures logged to MLflow: reliability diagrams (before vs after) and other report plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: runs on clusters and CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from entropic.metrics import reliability_bins  # noqa: E402


def reliability_diagram(tables: dict[str, pd.DataFrame], n_bins: int = 10) -> plt.Figure:
    """One panel per prediction table: accuracy per confidence bin against the diagonal.

    Bar width is the bin; the number above a bar is how many questions fell in it, so an empty-
    looking diagram of a model that always says 90% reads as what it is.
    """
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 4.2), squeeze=False)
    for ax, (title, table) in zip(axes[0], tables.items(), strict=True):
        parsed = table.dropna(subset=["confidence"])
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        if not parsed.empty:
            bins = reliability_bins(
                parsed["confidence"].to_numpy(float), parsed["correct"].to_numpy(int), n_bins
            )
            for b in bins:
                if b["count"] == 0:
                    continue
                width = b["upper"] - b["lower"]
                ax.bar(
                    b["lower"],
                    b["accuracy"],
                    width=width,
                    align="edge",
                    alpha=0.7,
                    edgecolor="black",
                    color="tab:blue",
                )
                ax.text(
                    b["lower"] + width / 2,
                    min(b["accuracy"] + 0.02, 0.95),
                    str(b["count"]),
                    ha="center",
                    fontsize=7,
                )
        accuracy = table["correct"].mean()
        mean_conf = parsed["confidence"].mean() if not parsed.empty else float("nan")
        ax.set_title(f"{title}\nacc {accuracy:.1%}, mean conf {mean_conf:.1%}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("stated confidence")
        ax.set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def stability_scatter(
    per_question: pd.DataFrame,
    num_samples: int,
    r_stability: float,
    r_confidence: float,
    seed: int = 0,
) -> plt.Figure:
    """Per-question accuracy against stability (left) and against stated confidence (right).

    One point per question, from the stability study's per-question table. With K =
    `num_samples` answers, stability and accuracy take only K + 1 values, so they are jittered by
    up to a quarter of 1/K (seeded) to show how many share a spot; stated confidence is not. The
    r in each title is the study's, computed on the exact values.
    """
    rng = np.random.default_rng(seed)
    jitter = 0.25 / num_samples
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    panels = (
        ("stability", "stability (share of answers in the largest cluster)", r_stability, True),
        ("confidence", "stated confidence (mean over samples)", r_confidence, False),
    )
    for ax, (column, label, r, discrete) in zip(axes, panels, strict=True):
        shown = per_question.dropna(subset=[column])
        noise = rng.uniform(-jitter, jitter, size=(2, len(shown)))
        noise[0] *= discrete
        ax.scatter(shown[column] + noise[0], shown["accuracy"] + noise[1], s=14, alpha=0.5, lw=0)
        ax.set_title(f"{label}\nr = {r:.2f} with accuracy (n = {len(shown)})", fontsize=10)
        # wide enough for the jitter: a point at 0 or 1 must not fall outside the axes
        ax.set_xlim(-jitter - 0.02, 1 + jitter + 0.02)
        ax.set_ylim(-jitter - 0.02, 1 + jitter + 0.02)
        ax.set_xlabel(column)
    axes[0].set_ylabel("accuracy (share of sampled answers correct)")
    fig.tight_layout()
    return fig


def sweep_comparison(points: pd.DataFrame, metrics: tuple[str, ...], x_label: str) -> plt.Figure:
    """A sweep at a glance: one panel per eval metric, its conditions along x, before training
    (open grey circles) and after (the mean over seeds, each seed a small dot).

    `points` has one row per finished run: `condition`, `x` (the condition's position: the swept
    value when it is a number, else its order), `before/<metric>` and, for a run that trained,
    `after/<metric>`. A numeric sweep (the mix ratio) is drawn as a curve.
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.8), squeeze=False)
    by_condition = points.groupby("x", sort=True)
    numeric = pd.api.types.is_float_dtype(points["x"])
    for ax, metric in zip(axes[0], metrics, strict=True):
        before = by_condition[f"before/{metric}"].mean()
        ax.scatter(before.index, before, s=40, facecolors="none", edgecolors="grey", zorder=2)
        after_column = f"after/{metric}"
        if after_column in points:
            trained = points.dropna(subset=[after_column])
            after = trained.groupby("x", sort=True)[after_column].mean()
            ax.plot(after.index, after, marker="o", ls="-" if numeric else "none", color="tab:blue")
            ax.scatter(trained["x"], trained[after_column], s=10, color="tab:blue", alpha=0.5)
        ax.set_title(metric, fontsize=10)
        if metric == "calibration_gap":
            ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(x_label)
        if not numeric:
            labels = points.drop_duplicates("x").set_index("x")["condition"].sort_index()
            # the axis names the key; the ticks need only its values
            labels = labels.str.removeprefix(f"{x_label}=")
            ax.set_xticks(labels.index, labels, fontsize=7, rotation=15)
            ax.margins(x=0.25)
    handles = [
        plt.Line2D(
            [], [], marker="o", ls="none", mfc="none", color="grey", label="before training"
        ),
        plt.Line2D([], [], marker="o", color="tab:blue", label="after (mean over seeds)"),
        plt.Line2D([], [], marker="o", ls="none", ms=3, color="tab:blue", label="each seed"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
