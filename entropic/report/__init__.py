"""Study reports from MLflow: the tables and figures of `experiments/<study>/`, with error bars.

    python -m entropic.report scarce_collapse                   # or: make report STUDY=...
    python -m entropic.report mix_ratio --parent-run-id <id>    # a particular sweep
    python -m entropic.report mix_ratio --all-sweeps            # every sweep of the study, merged
    python -m entropic.report --list

A study reads the finished child runs of one sweep (by default the newest parent run of the
sweep's MLflow experiment with at least one finished child; `--parent-run-id` may be repeated,
and `--all-sweeps` takes every such parent, so seeds run later as sweeps of their own join the
table) and never re-runs anything. Where two sweeps ran the same condition with the same seed,
the newer run counts and the report names the older one. Every
number is a run's own greedy held-out evaluation: `eval/<metric>` at step 0 is the untrained
model, at the last step the trained one. Across seeds a number is the mean with a 95% Student-t
interval (`entropic.metrics.mean_ci`); the reference's numbers stand beside ours.

Each report has its main table, its figure, the training curves of every condition (`eval/*` at
the periodic evaluations, `trainer.eval_every_n_steps`) and traces: per condition, the questions
whose stated confidence moved most between the before and after prediction tables of one run.
It writes `experiments/<study>/output/report.md` and PNGs, logs them to the sweep's parent run
under `report/`, and prints the main table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on clusters and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from entropic import tracking  # noqa: E402
from entropic.evaluate import BEHAVIOUR_NAMES, HELD_OUT, METRIC_NAMES  # noqa: E402
from entropic.metrics import mean_ci  # noqa: E402
from entropic.parsing import LAST_COUNTS, reasoning_text  # noqa: E402
from entropic.sweeps import SWEEP_TAG, children  # noqa: E402

EXPERIMENTS_DIR = tracking.PROJECT_ROOT / "experiments"
# What the tables show of each condition, and how.
TABLE_METRICS = {
    "accuracy": "Eval accuracy",
    "calibration_gap": "Calibration gap",
    "confidence": "Mean confidence",
}
# Signed metrics are printed with their sign (+ overconfident, - underconfident).
SIGNED = {"calibration_gap", "reduction"}
# The training curves: one panel each.
CURVE_METRICS = ("accuracy", "calibration_gap")
# The values each metric can take. An interval across seeds is cut to them: a Student-t interval
# from two or three seeds easily runs past 0% or 100%, which no run can reach.
BOUNDS = {
    **{metric: (0.0, 1.0) for metric in (*METRIC_NAMES, *BEHAVIOUR_NAMES)},
    "calibration_gap": (-1.0, 1.0),
}
# What the transfer tables show of each evaluation set, in-domain and out (RLCR reports these).
TRANSFER_METRICS = {
    "accuracy": "Accuracy",
    "calibration_gap": "Calibration gap",
    "ece": "ECE",
    "auroc": "AUROC",
}
# The behaviour table (the reference's "The Pattern"): how the answers read, not only how they
# score.
BEHAVIOUR_COLUMNS = {
    "confidence_correct": "Confidence when right",
    "confidence_wrong": "Confidence when wrong",
    "abstain_share": "Abstains",
    "alternatives_share": "Mentions alternatives",
}
# Shown as fractions, as RLCR reports them (ECE 0.058, AUROC 0.73), not as percentages.
FRACTIONS = {"ece", "auroc"}
# A difference of two rates (the paired B - A, C - B accuracies).
DIFFERENCE_BOUNDS = (-1.0, 1.0)
# A value with no natural range (a relative reduction).
UNBOUNDED = (-math.inf, math.inf)
# Questions shown per condition in the traces.
TRACES_PER_CONDITION = 5
# Characters of reasoning shown per answer in the traces (prompt=reasoning).
REASONING_CHARS = 400
# The prediction tables every training run logs (entropic.job).
PREDICTIONS = {"before": "predictions/before.json", "after": "predictions/after.json"}


class ReportError(ValueError):
    """There is nothing to report from; the message says what to run."""


@dataclass
class SweepRuns:
    """The finished child runs of one or more sweeps, one row each, and their eval/* histories."""

    client: MlflowClient
    # the sweeps read (found: newest first; given: in that order); the report is logged to the first
    parent_run_ids: list[str]
    # index run_id; the config values that tell conditions apart, and before/<m>, after/<m>
    runs: pd.DataFrame
    # run_id -> eval/* per step (rows: steps, columns: METRIC_NAMES)
    histories: dict[str, pd.DataFrame]
    # children that did not finish, as "run name (STATUS)"
    skipped: list[str] = field(default_factory=list)
    # finished runs that a newer run of the same condition and seed replaced, as "name (run id)"
    superseded: list[str] = field(default_factory=list)
    # the evaluation sets besides the held-out split (eval.sets) that any run logged
    sets: list[str] = field(default_factory=list)

    @property
    def parent_run_id(self) -> str:
        return self.parent_run_ids[0]


@dataclass
class Report:
    title: str
    # the main table as numbers: one row per condition, <metric>_mean/_low/_high, seeds, ref_*
    table: pd.DataFrame
    # the main table as shown (markdown and terminal)
    shown: pd.DataFrame
    # markdown sections after the main table
    sections: list[str]
    # file stem -> figure
    figures: dict[str, plt.Figure]
    # further tables as numbers: "transfer/<set>" and "behaviour/<set>", rows as in the sections
    more: dict[str, pd.DataFrame] = field(default_factory=dict)


# --- reading a sweep from MLflow -------------------------------------------------------------


def find_parents(client: MlflowClient, sweep: str) -> list[str]:
    """The parent runs of `sweep` with at least one finished child, newest first."""
    fix = f"Fix: make sweep SWEEP={sweep}, or point MLFLOW_TRACKING_URI at the store that has it"
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        raise ReportError(f"no MLflow experiment {sweep!r} in {client.tracking_uri}. {fix}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.{SWEEP_TAG} = '{sweep}'",
        order_by=["attributes.start_time DESC"],
        max_results=10_000,
    )
    finished_parents = {
        run.data.tags["mlflow.parentRunId"]
        for run in runs
        if run.info.status == "FINISHED" and "mlflow.parentRunId" in run.data.tags
    }
    parents = [run.info.run_id for run in runs if run.info.run_id in finished_parents]
    if not parents:
        raise ReportError(f"no sweep {sweep!r} with a finished run in {client.tracking_uri}. {fix}")
    return parents


def metric_history(client: MlflowClient, run_id: str) -> pd.DataFrame:
    """eval/<metric> of one run per step: step 0, the periodic evaluations, the last step."""
    columns = {
        name: pd.Series(
            {m.step: m.value for m in client.get_metric_history(run_id, f"eval/{name}")},
            dtype=float,
        )
        for name in METRIC_NAMES
    }
    return pd.DataFrame(columns).sort_index()


# params that differ between two runs of the same point: where it ran and what it was called
RUN_SPECIFIC_PARAMS = frozenset({"output_dir", "tracking.run_name", "tracking.parent_run_id"})


def load_sweep(client: MlflowClient, parent_run_ids: list[str]) -> SweepRuns:
    """The finished children of these parent runs; of runs at the same point (the same config
    values, seed included), the newest."""
    finished, skipped = [], []
    for parent_run_id in parent_run_ids:
        for child in children(client, parent_run_id):
            if child.info.status == "FINISHED":
                finished.append(child)
            else:
                skipped.append(f"{child.info.run_name} ({child.info.status})")
    rows, histories, superseded, seen = [], {}, [], set()
    for child in sorted(finished, key=lambda run: run.info.start_time, reverse=True):
        run_id, params = child.info.run_id, child.data.params
        # the config values that tell conditions and seeds apart
        point = {
            "seed": int(params["seed"]),
            "labeled_fraction": float(params["reward.labeled_fraction"]),
            "epochs": float(params["trainer.epochs"]),
            "train_size": int(params["data.train_size"]),
            "train_questions": int(params["data.train_questions_used"]),
            "eval_questions": int(params["data.eval_questions_used"]),
            "periodic_size": int(params["eval.periodic_size"]),
            "trained": params["train"] == "True",
            "prompt": params["prompt.name"],
            # which Answer/Confidence lines count, and whether completions hold reasoning
            "prompt_format": params.get("prompt.format", "lines"),
        }
        # every config value separates conditions (reward=brier and reward=rlcr at one seed are
        # two conditions), except what differs between two runs of one point
        key = tuple(sorted((k, v) for k, v in params.items() if k not in RUN_SPECIFIC_PARAMS))
        if key in seen:
            superseded.append(f"{child.info.run_name} ({run_id})")
            continue
        seen.add(key)
        histories[run_id] = metric_history(client, run_id)
        stages = logged_stages(client, child)
        rows.append({"run_id": run_id, "run_name": child.info.run_name, **point, **stages})
    if not rows:
        raise ReportError(
            f"parent run(s) {', '.join(parent_run_ids)} have no finished child run "
            f"(skipped: {skipped}). Fix: wait for the sweep, or pass another --parent-run-id"
        )
    # oldest first, as the runs of one sweep come; a metric a run did not log is NaN
    runs = pd.DataFrame(rows[::-1]).set_index("run_id")
    sets = sorted({column.split("/")[1] for column in runs if column.count("/") == 2})
    expected = [
        f"{when}/{prefix}{metric}"
        for when in ("before", "after")
        for prefix in ["", *(f"{name}/" for name in sets)]
        for metric in (*METRIC_NAMES, *BEHAVIOUR_NAMES)
    ]
    runs = runs.reindex(columns=[*runs.columns, *(c for c in expected if c not in runs)])
    return SweepRuns(client, parent_run_ids, runs, histories, skipped, superseded, sets)


def logged_stages(client: MlflowClient, run) -> dict[str, float]:
    """Every eval metric a report reads, of the held-out split (eval/<metric>) and of each
    evaluation set (eval/<set>/<metric>): before/<...> at step 0 and after/<...> at the last
    step (for a run that never trained, both are its one evaluation)."""
    wanted = set(METRIC_NAMES) | set(BEHAVIOUR_NAMES)
    values = {}
    for name in run.data.metrics:
        tail = name.removeprefix("eval/")
        if tail == name or tail.rsplit("/", 1)[-1] not in wanted:
            continue
        history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        values[f"before/{tail}"] = history[0].value
        values[f"after/{tail}"] = history[-1].value
    return values


# --- numbers ---------------------------------------------------------------------------------


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


# --- transfer and behaviour: every evaluation set, before vs after ------------------------------

# Rows of the transfer and behaviour tables: label -> (its runs, "before" or "after" training).
Rows = dict[str, tuple[pd.DataFrame, str]]


def before_after_rows(groups: dict[str, pd.DataFrame]) -> Rows:
    """The untrained model (step 0 of every trained run: greedy, so one model on one question
    set) and each condition after training."""
    trained = {label: runs[runs["trained"]] for label, runs in groups.items()}
    trained = {label: runs for label, runs in trained.items() if not runs.empty}
    if not trained:
        return {}
    rows: Rows = {"Untrained": (pd.concat(trained.values()), "before")}
    return rows | {label: (runs, "after") for label, runs in trained.items()}


def set_title(eval_set: str) -> str:
    if eval_set == HELD_OUT:
        return "Held-out split of the training source (in domain, eval/*)"
    return f"`{eval_set}` (out of domain, eval/{eval_set}/*)"


def per_set_section(
    sweep: SweepRuns, rows: Rows, columns: dict[str, str], name: str, heading: str, intro: str
) -> tuple[str, dict[str, pd.DataFrame]]:
    """One table per evaluation set (the held-out split first): a row per entry of `rows`, a
    column per metric of `columns` with its 95% interval across seeds. Returns the markdown
    section and the numbers by "<name>/<set>"."""
    lines, numbers = [f"## {heading}", "", intro], {}
    for eval_set in [HELD_OUT, *sweep.sets]:
        values = {
            label: stage(runs, when, eval_set, list(columns))
            for label, (runs, when) in rows.items()
        }
        numbers[f"{name}/{eval_set}"] = summarize(values, columns)
        table = shown(numbers[f"{name}/{eval_set}"], columns)
        # numbers as shown: tabulate would turn "0.100" back into 0.1
        lines += ["", f"### {set_title(eval_set)}", "", table.to_markdown(disable_numparse=True)]
    return "\n".join(lines), numbers


def transfer_section(sweep: SweepRuns, rows: Rows) -> tuple[str, dict[str, pd.DataFrame]]:
    """In-domain and out-of-domain numbers side by side, as calibration-RL papers report them."""
    return per_set_section(
        sweep,
        rows,
        TRANSFER_METRICS,
        "transfer",
        "Transfer: in domain and out of domain",
        "Every evaluation set of the runs, greedy before training (Untrained: step 0) and after. "
        "Accuracy and gap in %, ECE (10 equal-width bins) and AUROC as fractions, as RLCR "
        "reports them; what the papers report is in `experiments/transfer/README.md`.",
    )


def behaviour_section(sweep: SweepRuns, rows: Rows) -> tuple[str, dict[str, pd.DataFrame]]:
    """The reference's "The Pattern" table, measured: how the answers read before and after."""
    return per_set_section(
        sweep,
        rows,
        BEHAVIOUR_COLUMNS,
        "behaviour",
        "Behaviour: confidence when right and wrong, abstaining, alternatives",
        "Mean stated confidence on right and on wrong answers, the share of answers that abstain "
        '("I don\'t know", "None", "Unknown") and the share that put forward more than one '
        "candidate (entropic.grading.abstains, mentions_alternatives). The reference "
        "(Qwen3-4B, traces): confidence when right 95-98% -> 80-90%, when wrong 85-95% -> "
        "60-70%, alternatives rarely -> often, abstains never -> sometimes.",
    )


def reward_label(labeled_fraction: float) -> str:
    if labeled_fraction == 1.0:
        return "100% Brier"
    if labeled_fraction == 0.0:
        return "100% Stability"
    return f"{labeled_fraction:.0%} Brier, {1 - labeled_fraction:.0%} Stability"


def data_label(runs: pd.DataFrame) -> str:
    """The pool, and the subset the CPU profile trained on when it is smaller."""
    pool, used = int(runs["train_size"].iloc[0]), int(runs["train_questions"].iloc[0])
    return f"{pool:,}" if used >= pool else f"{pool:,} ({used} used)"


def ordered(groups: dict[str, pd.DataFrame], order: list[str]) -> dict[str, pd.DataFrame]:
    """The known conditions in the reference's order, any others after them."""
    known = [label for label in order if label in groups]
    return {label: groups[label] for label in known + sorted(set(groups) - set(order))}


def paired_difference(first: pd.DataFrame, second: pd.DataFrame, metric: str) -> pd.Series:
    """second - first per seed (same seed, same training subset), for seeds both have."""
    a = first.set_index("seed")[f"after/{metric}"]
    b = second.set_index("seed")[f"after/{metric}"]
    return (b - a).dropna()


# --- figures ---------------------------------------------------------------------------------


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
        ax.set_xticks(x, list(numbers.index), fontsize=8)
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
    for ax, metric in zip(axes, CURVE_METRICS, strict=True):
        for label, runs in trained.items():
            per_seed = pd.concat([sweep.histories[r][metric] for r in runs.index], axis=1).dropna()
            bands = [interval(per_seed.loc[step], BOUNDS[metric]) for step in per_seed.index]
            mean, low, high = (100 * np.array(column) for column in zip(*bands, strict=True))
            ax.plot(per_seed.index, mean, marker="o", ms=3, label=label)
            ax.fill_between(per_seed.index, low, high, alpha=0.2)
        ax.axhline(0, color="grey", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{TABLE_METRICS[metric]} (%)")
    axes[0].legend(fontsize=8)
    runs = pd.concat(trained.values())
    fig.suptitle(
        f"Held-out evaluation during training: steps between the first and the last on the first "
        f"{runs['periodic_size'].min()} of {runs['eval_questions'].min()} questions",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# --- traces ----------------------------------------------------------------------------------


def moved_most(
    before: pd.DataFrame, after: pd.DataFrame, k: int, fmt: str = "lines"
) -> pd.DataFrame:
    """The k questions whose stated confidence changed most, both confidences parsed.

    Among equal changes, questions whose answer changed come first, then question id order, so
    the same tables always give the same rows. With the reasoning prompt (`fmt="reasoning"`)
    the reasoning before each answer is shown too, cut at REASONING_CHARS.
    """
    both = before.merge(after, on="question_id", suffixes=("_before", "_after"))
    both = both.dropna(subset=["confidence_before", "confidence_after"])
    both["change"] = both["confidence_after"] - both["confidence_before"]
    both["size"] = both["change"].abs()
    both["answer_changed"] = both["answer_before"] != both["answer_after"]
    top = both.sort_values(
        ["size", "answer_changed", "question_id"], ascending=[False, False, True]
    ).head(k)

    def said(row: pd.Series, when: str) -> str:
        mark = "right" if row[f"correct_{when}"] else "wrong"
        return cell(f"{row[f'answer_{when}']} ({row[f'confidence_{when}']:.0%}, {mark})")

    columns = {
        "Question": [cell(q) for q in top["question_before"]],
        # the gold aliases are joined with " | " (entropic.evaluate.grade)
        "Gold": [cell(" / ".join(g.split(" | ")[:3])) for g in top["gold_before"]],
        "Before": [said(row, "before") for _, row in top.iterrows()],
        "After": [said(row, "after") for _, row in top.iterrows()],
        "Change": [f"{100 * c:+.0f} pts" for c in top["change"]],
    }
    if fmt in LAST_COUNTS:
        for when in ("before", "after"):
            columns[f"Reasoning {when}"] = [
                cell(shorten(reasoning_text(text, fmt), REASONING_CHARS))
                for text in top[f"completion_{when}"]
            ]
    return pd.DataFrame(columns)


def shorten(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters at a word, with an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def load_predictions(client: MlflowClient, run_id: str, path: str) -> pd.DataFrame:
    """A prediction table the job logged with `client.log_table` (JSON in pandas' "split" layout).

    Read through this client: `MlflowClient.load_table` finds runs through the global tracking
    URI, which need not be this client's store.
    """
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_json(client.download_artifacts(run_id, path, tmp), orient="split")


def cell(text: str) -> str:
    """Text that cannot break a markdown table row."""
    return str(text).replace("|", "/").replace("\n", " ")


def traces_section(sweep: SweepRuns, groups: dict[str, pd.DataFrame]) -> str:
    """Per condition, one run (the lowest seed): before vs after on the same questions."""
    lines = [
        "## Traces",
        "",
        f"Per condition, the {TRACES_PER_CONDITION} held-out questions whose stated confidence "
        "moved most between the evaluation before training and after it (one run, the lowest "
        "seed; greedy decoding both times).",
    ]
    for label, runs in groups.items():
        trained = runs[runs["trained"]].sort_values("seed")
        if trained.empty:
            continue
        run_id = trained.index[0]
        tables = {
            when: load_predictions(sweep.client, run_id, path) for when, path in PREDICTIONS.items()
        }
        fmt = trained["prompt_format"].iloc[0]
        moved = moved_most(tables["before"], tables["after"], TRACES_PER_CONDITION, fmt)
        lines += [
            "",
            f"### {label}: run {trained['run_name'].iloc[0]}",
            "",
            moved.to_markdown(index=False) if not moved.empty else "(no parsed confidences)",
        ]
    return "\n".join(lines)


# --- the studies -----------------------------------------------------------------------------


def training_report(
    sweep: SweepRuns,
    title: str,
    groups: dict[str, pd.DataFrame],
    reference: dict[str, dict[str, float]],
    describe: Callable[[pd.DataFrame], dict[str, str]],
    figure: Callable[[pd.DataFrame], plt.Figure],
    figure_name: str,
) -> Report:
    """The parts every training study shares: table, figure, curves, traces."""
    if not groups:
        raise ReportError(
            f"parent run {sweep.parent_run_id} has no finished training run (train: true). "
            "Fix: pass the --parent-run-id of this study's sweep"
        )
    numbers = with_reference(
        summarize({label: stage(runs, "after") for label, runs in groups.items()}, TABLE_METRICS),
        reference,
    )
    described = pd.DataFrame.from_dict(
        {label: describe(runs) for label, runs in groups.items()}, orient="index"
    )
    table = pd.concat([described, shown(numbers, TABLE_METRICS)], axis=1)
    figures = {figure_name: figure(numbers)}
    curves = curves_figure(sweep, groups)
    if curves is not None:
        figures["training_curves"] = curves
    behaviour, more = behaviour_section(sweep, before_after_rows(groups))
    sections = [
        f"![{figure_name}]({figure_name}.png)",
        untrained_line(sweep.runs),
        "## Training curves\n\n![training curves](training_curves.png)",
        behaviour,
        traces_section(sweep, groups),
    ]
    return Report(title, numbers, table, sections, figures, more)


def untrained_line(runs: pd.DataFrame) -> str:
    before = summarize({"untrained": stage(runs[runs["trained"]], "before")}, TABLE_METRICS)
    row = before.iloc[0]
    return (
        "Before training (step 0 of the same runs): accuracy "
        f"{percent(row['accuracy_mean'])}, calibration gap "
        f"{percent(row['calibration_gap_mean'], signed=True)}, mean confidence "
        f"{percent(row['confidence_mean'])}."
    )


ABUNDANT_CONDITIONS = {1.0: "100% Brier", 0.5: "50/50 Mixed", 0.0: "100% Stability"}
ABUNDANT_REFERENCE = {
    "100% Brier": {"accuracy": 0.449, "calibration_gap": 0.052},
    "50/50 Mixed": {"accuracy": 0.423, "calibration_gap": 0.130},
    "100% Stability": {"accuracy": 0.406, "calibration_gap": 0.219},
}


def abundant_ablation(sweep: SweepRuns) -> Report:
    trained = sweep.runs[sweep.runs["trained"]]
    groups = {
        ABUNDANT_CONDITIONS.get(lf, reward_label(lf)): runs
        for lf, runs in trained.groupby("labeled_fraction")
    }
    return training_report(
        sweep,
        "Abundant data: Brier, 50/50 and stability",
        ordered(groups, list(ABUNDANT_REFERENCE)),
        ABUNDANT_REFERENCE,
        lambda runs: {"Labels used": f"{runs['labeled_fraction'].iloc[0]:.0%}"},
        lambda numbers: bar_figure(
            numbers,
            {"accuracy": "Eval accuracy", "calibration_gap": "Calibration gap"},
            "Abundant-data ablation",
        ),
        "ablation_bars",
    )


# Runs A, B and C of the reference, by (labeled_fraction, epochs).
SCARCE_RUNS = {(1.0, 1.0): "A", (1.0, 2.0): "B", (0.5, 2.0): "C"}
SCARCE_REFERENCE = {
    "A": {"accuracy": 0.497, "calibration_gap": 0.300},
    "B": {"accuracy": 0.315, "calibration_gap": 0.057, "confidence": 0.372},
    "C": {"accuracy": 0.436, "calibration_gap": 0.114, "confidence": 0.549},
}


def scarce_collapse(sweep: SweepRuns) -> Report:
    trained = sweep.runs[sweep.runs["trained"]]
    groups = {
        SCARCE_RUNS.get(key, f"{reward_label(key[0])}, {key[1]:g} epochs"): runs
        for key, runs in trained.groupby(["labeled_fraction", "epochs"])
    }
    groups = ordered(groups, list(SCARCE_REFERENCE))
    report = training_report(
        sweep,
        "Scarce data: does stability prevent collapse? (Runs A, B, C)",
        groups,
        SCARCE_REFERENCE,
        lambda runs: {
            "Data": data_label(runs),
            "Reward": reward_label(runs["labeled_fraction"].iloc[0]),
            "Epochs": f"{runs['epochs'].iloc[0]:g}",
        },
        lambda numbers: bar_figure(
            numbers,
            {"accuracy": "Eval accuracy", "calibration_gap": "Calibration gap"},
            "Stability as a regulariser: a second epoch of pure Brier vs the 50/50 mix",
        ),
        "stability_as_regulariser",
    )
    lines = []
    for first, second, meaning, reference in (
        ("A", "B", "the collapse: B - A accuracy", -0.182),
        ("B", "C", "stability's effect: C - B accuracy", 0.121),
    ):
        if first in groups and second in groups:
            diff = paired_difference(groups[first], groups[second], "accuracy")
            if not diff.empty:
                ours = percent(*interval(diff, DIFFERENCE_BOUNDS), signed=True)
                lines.append(
                    f"- {meaning}, paired by seed ({len(diff)} seeds): {ours} "
                    f"(reference {percent(reference, signed=True)})"
                )
    if lines:
        report.sections.insert(1, "\n".join(lines))
    transfer, numbers = transfer_section(sweep, before_after_rows(groups))
    # after the figure and the paired differences, before the curves
    report.sections.insert(len(report.sections) - 3, transfer)
    report.more.update(numbers)
    return report


# The reference tested 0.5 (Run C) and 1.0 (Run B) on the scarce pool for 2 epochs.
MIX_REFERENCE = {
    "0.5": {"accuracy": 0.436, "calibration_gap": 0.114, "confidence": 0.549},
    "1": {"accuracy": 0.315, "calibration_gap": 0.057, "confidence": 0.372},
}


def mix_ratio(sweep: SweepRuns) -> Report:
    trained = sweep.runs[sweep.runs["trained"]]
    groups = {f"{lf:g}": runs for lf, runs in trained.groupby("labeled_fraction")}
    x = [float(label) for label in groups]
    return training_report(
        sweep,
        "Label mix on scarce data: accuracy and calibration against labeled_fraction",
        groups,
        MIX_REFERENCE,
        lambda runs: {
            "Reward": reward_label(runs["labeled_fraction"].iloc[0]),
            "Data": data_label(runs),
            "Epochs": f"{runs['epochs'].iloc[0]:g}",
        },
        lambda numbers: share_figure(
            numbers,
            {"accuracy": "Eval accuracy", "calibration_gap": "Calibration gap"},
            x,
            "reward.labeled_fraction (0: pure stability, 1: pure Brier)",
        ),
        "mix_ratio",
    )


RL_VS_PROMPTING_REFERENCE = {
    "Untrained": {"calibration_gap": 0.485},
    "Aggressive prompting": {"calibration_gap": 0.351, "reduction": 0.27},
    "RL training": {"calibration_gap": 0.117, "reduction": 0.76},
}


def rl_vs_prompting(sweep: SweepRuns) -> Report:
    runs = sweep.runs
    trained, prompted = runs[runs["trained"]], runs[~runs["trained"]]
    untrained = stage(trained, "before")
    untrained_gap = untrained["calibration_gap"].mean()
    values = {
        "Untrained": untrained,
        "Aggressive prompting": stage(prompted, "after"),
        "RL training": stage(trained, "after"),
    }
    # Reduction of the gap from the untrained model's: RL against its own step 0, prompting
    # against the untrained mean (greedy evaluation makes step 0 the same for every seed).
    values["Untrained"]["reduction"] = math.nan
    values["Aggressive prompting"]["reduction"] = 1 - (
        values["Aggressive prompting"]["calibration_gap"] / untrained_gap
    )
    values["RL training"]["reduction"] = 1 - (
        values["RL training"]["calibration_gap"] / untrained["calibration_gap"]
    )
    values = {label: frame for label, frame in values.items() if not frame.empty}
    columns = {
        "calibration_gap": "Calibration gap",
        "reduction": "Reduction from baseline",
        "accuracy": "Eval accuracy",
        "confidence": "Mean confidence",
    }
    numbers = with_reference(summarize(values, columns), RL_VS_PROMPTING_REFERENCE)
    table = shown(numbers, columns)
    figures = {
        "rl_vs_prompting": bar_figure(
            numbers,
            {"calibration_gap": "Calibration gap", "accuracy": "Eval accuracy"},
            "RL training vs prompting (greedy evaluation)",
        )
    }
    prompts = ", ".join(sorted(prompted["prompt"].unique())) or "-"
    sections = [
        "![rl vs prompting](rl_vs_prompting.png)",
        f"Prompting arm: `prompt={prompts}`, `train: false`. The untrained row is step 0 of the "
        "RL runs (default prompt, same questions, greedy).",
    ]
    # the table's rows: the untrained model, the prompt, RL (each on every evaluation set)
    rows: Rows = {"Untrained": (trained, "before"), "Aggressive prompting": (prompted, "after")}
    rows["RL training"] = (trained, "after")
    rows = {label: spec for label, spec in rows.items() if not spec[0].empty}
    transfer, more = transfer_section(sweep, rows)
    behaviour, behaviour_numbers = behaviour_section(sweep, rows)
    sections += [transfer, behaviour]
    more.update(behaviour_numbers)
    if not trained.empty:
        groups = {"RL training": trained}
        figures["training_curves"] = curves_figure(sweep, groups)
        sections += [
            "## Training curves\n\n![training curves](training_curves.png)",
            traces_section(sweep, groups),
        ]
    return Report("RL training vs prompting", numbers, table, sections, figures, more)


@dataclass(frozen=True)
class Study:
    # the sweep (sweeps/<sweep>.yaml) and MLflow experiment whose runs the study reads
    sweep: str
    build: Callable[[SweepRuns], Report]


STUDIES: dict[str, Study] = {
    "abundant_ablation": Study("abundant_ablation", abundant_ablation),
    "scarce_collapse": Study("scarce_collapse", scarce_collapse),
    "mix_ratio": Study("mix_ratio", mix_ratio),
    "rl_vs_prompting": Study("rl_vs_prompting", rl_vs_prompting),
}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ReportError(f"unknown study {name!r}. Fix: use one of {sorted(STUDIES)}")
    return STUDIES[name]


# --- writing ---------------------------------------------------------------------------------


def markdown(report: Report, sweep: SweepRuns, study: str) -> str:
    sweeps = ", ".join(
        f"`{sweep.client.get_run(run_id).info.run_name}` (parent run `{run_id}`)"
        for run_id in sweep.parent_run_ids
    )
    skipped = f" Not finished, left out: {', '.join(sweep.skipped)}." if sweep.skipped else ""
    if sweep.superseded:
        skipped += (
            " Replaced by a newer run of the same condition and seed: "
            f"{', '.join(sweep.superseded)}."
        )
    plural = "s" if len(sweep.parent_run_ids) > 1 else ""
    return "\n\n".join(
        [
            f"# {report.title}",
            f"Study `{study}`, built by `python -m entropic.report {study}` from the sweep{plural} "
            f"{sweeps} ({len(sweep.runs)} finished runs) in `{sweep.client.tracking_uri}`."
            f"{skipped} "
            "Ours: mean over seeds with a 95% Student-t interval, cut to the values the metric can "
            "take, where there is more than one seed.",
            report.shown.to_markdown(),
            *report.sections,
        ]
    )


def write_report(
    study: str,
    client: MlflowClient,
    output_dir: Path | None = None,
    parent_run_ids: list[str] | None = None,
    all_sweeps: bool = False,
) -> Report:
    """Build a study's report from MLflow, write it, log it to the (newest) parent run, print its
    table. Reads the given parent runs, or every sweep of the study, or the newest one."""
    definition = get_study(study)
    if not parent_run_ids:
        found = find_parents(client, definition.sweep)
        parent_run_ids = found if all_sweeps else found[:1]
    sweep = load_sweep(client, parent_run_ids)
    parent_run_id = sweep.parent_run_id
    report = definition.build(sweep)
    output_dir = Path(output_dir or EXPERIMENTS_DIR / study / "output")
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in report.figures.items():
        figure.savefig(output_dir / f"{name}.png", dpi=120)
        plt.close(figure)
        written.append(output_dir / f"{name}.png")
    text = markdown(report, sweep, study)
    (output_dir / "report.md").write_text(text + "\n")
    written.append(output_dir / "report.md")
    for path in written:
        client.log_artifact(parent_run_id, str(path), f"report/{study}")
    print(f"\n== {report.title} ==")
    print(report.shown.to_markdown())
    print(f"\nReport: {output_dir / 'report.md'}; MLflow run {parent_run_id}, report/{study}/")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m entropic.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("study", nargs="?", help=f"one of {', '.join(STUDIES)}")
    parser.add_argument(
        "--parent-run-id",
        action="append",
        help="a sweep to read; repeat to merge sweeps (default: the newest)",
    )
    parser.add_argument(
        "--all-sweeps",
        action="store_true",
        help="merge every sweep of the study in the store (newest run per condition and seed)",
    )
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--output", type=Path, help="default: experiments/<study>/output")
    parser.add_argument("--list", action="store_true", help="list the studies")
    args = parser.parse_args(argv)
    # A report downloads two prediction tables per run: one progress bar each would bury the table.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.list or not args.study:
        print("\n".join(f"{name}: sweeps/{s.sweep}.yaml" for name, s in STUDIES.items()))
        return 0
    try:
        write_report(
            args.study,
            tracking.get_client(args.tracking_uri),
            args.output,
            args.parent_run_id,
            all_sweeps=args.all_sweeps,
        )
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
