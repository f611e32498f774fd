"""Does a long run begin to tell right answers from wrong ones? The training curves of probes.

Greedy evaluation after training reads one number. The training batches show more: the
confidence the policy sampled on right and on wrong answers, step by step, and how far it spread
across questions. This script draws those curves (`train/calibration/*`, logged by every train
job) for the runs named, one column per run:

    python experiments/lora_recipe/training_curves.py RUN_NAME [RUN_NAME ...] \
        [--tracking-uri sqlite:///mlflow.db] [--window 8] [--out figure.png]

Each curve is a centred rolling mean over `--window` steps (a step holds 4 questions, so single
steps are noisy); the right-vs-wrong panel skips steps whose batch had no right answer. It also
prints, per run, on how many of the steps that held both right and wrong answers the right ones
were sampled with more confidence (the count the README's probe notes quote).

Findings (2026-11-29, AMD EPYC, 2 cores) are in README.md beside this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from entropic.report.runs import metric_frame  # noqa: E402

CURVES = {
    "accuracy": "train/calibration/accuracy",
    "confidence": "train/calibration/confidence",
    "right": "train/calibration/confidence_correct",
    "wrong": "train/calibration/confidence_wrong",
    "spread": "train/calibration/confidence_spread_across_questions",
}


def history(client: MlflowClient, run_name: str) -> pd.DataFrame:
    """One row per logged training step, one column per curve; NaN where a step logged none."""
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"attributes.run_name = '{run_name}'",
    )
    if not runs:
        raise SystemExit(f"no run named {run_name!r} in this store. Fix: --tracking-uri")
    return metric_frame(client, runs[0].info.run_id, CURVES)


def right_above_wrong(steps: pd.DataFrame) -> tuple[int, int]:
    """(steps whose right answers were sampled with more confidence, steps that had both)."""
    both = steps.dropna(subset=["right", "wrong"])
    return int((both["right"] > both["wrong"]).sum()), len(both)


def draw(runs: dict[str, pd.DataFrame], window: int) -> plt.Figure:
    fig, axes = plt.subplots(2, len(runs), figsize=(4.6 * len(runs), 6.4), squeeze=False)
    for column, (name, steps) in enumerate(runs.items()):
        smooth = steps.rolling(window, center=True, min_periods=1).mean()
        top, bottom = axes[0][column], axes[1][column]
        top.plot(smooth.index, smooth["right"], color="tab:green", label="on right answers")
        top.plot(smooth.index, smooth["wrong"], color="tab:red", label="on wrong answers")
        top.plot(smooth.index, smooth["accuracy"], color="grey", ls="--", label="sampled accuracy")
        up, both = right_above_wrong(steps)
        top.set_title(f"{name}\nright above wrong on {up} of {both} steps", fontsize=9)
        top.set_ylim(0, 1)
        bottom.plot(smooth.index, smooth["confidence"], color="tab:blue", label="mean confidence")
        bottom.plot(
            smooth.index, smooth["spread"], color="tab:orange", label="spread across questions"
        )
        bottom.set_ylim(0, 0.7)
        bottom.set_xlabel("GRPO step")
        if column == 0:
            top.set_ylabel(f"sampled confidence ({window}-step mean)")
            bottom.set_ylabel(f"{window}-step mean")
    axes[0][0].legend(fontsize=8, loc="upper right")
    axes[1][0].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="MLflow run names (tracking.run_name)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("training_curves.png"))
    args = parser.parse_args()
    client = MlflowClient(args.tracking_uri)
    runs = {name: history(client, name) for name in args.runs}
    for name, steps in runs.items():
        up, both = right_above_wrong(steps)
        print(f"{name}: {len(steps)} steps; right answers above wrong ones on {up} of {both}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(runs, args.window).savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
