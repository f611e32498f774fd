"""What a condition is called and how it is described: the fields a study.yaml's labels and
columns are made of, and the grouping of a sweep's runs into labelled, ordered conditions."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd


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


def condition_text(runs: pd.DataFrame) -> str:
    """The params that set this condition apart from the sweep's others, as `key=value`."""
    condition = runs["condition"].iloc[0]
    return ", ".join(f"{name}={value}" for name, value in condition) or "all runs"


# The fields of a label template or a describing column: each is a text made from the runs of one
# condition (they share every value a field reads but the seed).
DESCRIPTIONS: dict[str, Callable[[pd.DataFrame], str]] = {
    # the labeled share as a number: 0.25
    "labeled_fraction": lambda runs: f"{runs['labeled_fraction'].iloc[0]:g}",
    # the labeled share as a percentage: 25%
    "labels_used": lambda runs: f"{runs['labeled_fraction'].iloc[0]:.0%}",
    # the reward mix: 100% Brier, 50% Brier, 50% Stability, 100% Stability
    "reward_mix": lambda runs: reward_label(runs["labeled_fraction"].iloc[0]),
    # training epochs: 2
    "epochs": lambda runs: f"{runs['epochs'].iloc[0]:g}",
    # the training pool, and the questions used when fewer: 1,600 (32 used)
    "data": data_label,
    # every param that sets the condition apart: reward.name=rlcr, trainer.epochs=2
    "condition": condition_text,
}


def describe(template: str, runs: pd.DataFrame) -> str:
    """`template` with its description fields filled in from the condition's runs."""
    return template.format_map({name: text(runs) for name, text in DESCRIPTIONS.items()})


def same_value(logged: str | None, wanted) -> bool:
    """Whether a logged param (always text) is the value a study.yaml names: numbers compare as
    numbers (a logged "1" is 1.0), booleans as Python writes them ("True")."""
    if logged is None:
        return False
    if isinstance(wanted, bool):
        return logged == str(wanted)
    if isinstance(wanted, int | float):
        try:
            return float(logged) == float(wanted)
        except ValueError:
            return False
    return logged == str(wanted)


def sort_key(values: list[str]) -> tuple:
    """Param values in their natural order: numbers by value before text."""

    def one(value: str) -> tuple:
        try:
            return (0, float(value), "")
        except ValueError:
            return (1, 0.0, value)

    return tuple(one(value) for value in values)


def label_conditions(
    runs: pd.DataFrame, params: dict[str, dict[str, str]], conditions
) -> dict[str, pd.DataFrame]:
    """The runs grouped by condition, labelled and ordered as `conditions` (a study.yaml's
    `Conditions`) says: named conditions in the order of their labels, then the others by
    `order_by` and their params. Two conditions that would share a label (a named one run with
    two rewards, say) each get the params that tell them apart appended, never one row."""
    # by hand: pandas would read each condition (a tuple) as several keys
    run_ids: dict[tuple, list[str]] = {}
    for run_id, condition in runs["condition"].items():
        run_ids.setdefault(condition, []).append(run_id)
    groups = {condition: runs.loc[ids] for condition, ids in run_ids.items()}
    placed = []
    for condition, group in groups.items():
        first = params[group.index[0]]
        rank = next(
            (
                i
                for i, named in enumerate(conditions.labels)
                if all(same_value(first.get(k), v) for k, v in named.params.items())
            ),
            None,
        )
        if rank is None:
            label = describe(conditions.otherwise, group)
            order = (1, 0, sort_key([first.get(k, "") for k in conditions.order_by]))
        else:
            label, order = conditions.labels[rank].label, (0, rank, ())
        placed.append((order + (sort_key([v for _, v in condition]),), label, condition, group))
    placed.sort(key=lambda entry: entry[0])
    labelled: dict[str, pd.DataFrame] = {}
    for _, label, condition, group in placed:
        twins = [other for _, name, other, _ in placed if name == label]
        if len(twins) > 1:
            differing = [
                (name, value)
                for i, (name, value) in enumerate(condition)
                if len({twin[i][1] for twin in twins}) > 1
            ]
            label += " (" + ", ".join(f"{name}={value}" for name, value in differing) + ")"
        labelled[label] = group
    return labelled
