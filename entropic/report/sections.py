"""A study's report, rendered from its definition: the main table, then its sections in order.

Each section kind is a function here that a study.yaml selects by name (`kind: transfer`); a
study that needs a computation the others lack gets a new kind, not code of its own.

    bars, share          a summary figure of the main table (bars per condition, or a line along
                         a swept share such as reward.labeled_fraction)
    paired_differences   second - first per seed of two conditions, with the reference's number
    untrained            one line: the trained runs' step 0
    text                 a paragraph ({untrained_prompts}: the prompts of the runs never trained)
    transfer, behaviour  a table per evaluation set, the untrained model and each condition
    curves, traces       eval/* against the training step; the answers that moved most
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import pandas as pd

from entropic.evaluate import HELD_OUT
from entropic.report.definition import Section, StudyDefinition
from entropic.report.figures import bar_figure, curves_figure, share_figure
from entropic.report.labels import DESCRIPTIONS, label_conditions
from entropic.report.numbers import (
    DIFFERENCE_BOUNDS,
    interval,
    paired_difference,
    percent,
    shown,
    stage,
    summarize,
    with_reference,
)
from entropic.report.runs import ReportError, SweepRuns
from entropic.report.traces import traces_section

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
# The untrained row's label in the transfer and behaviour tables.
UNTRAINED = "Untrained"
# What makes two trained runs' step 0 one untrained model (greedy evaluation of one model, in one
# dtype, under one prompt); runs that differ in one of these start from different models. A
# prompt-only arm is the untrained model of its MODEL_KEY under another prompt.
MODEL_KEY = ("model", "dtype")
UNTRAINED_KEY = ("prompt", *MODEL_KEY)
# Rows of the transfer and behaviour tables: label -> (its runs, "before" or "after" training).
Rows = dict[str, tuple[pd.DataFrame, str]]


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


@dataclass
class Study:
    """What every section reads: the sweep, the study's definition and its labelled conditions."""

    sweep: SweepRuns
    definition: StudyDefinition
    # label -> the condition's runs, in the table's order
    groups: dict[str, pd.DataFrame]
    # the main table as numbers
    numbers: pd.DataFrame

    @property
    def trained(self) -> pd.DataFrame:
        """Every trained run of the study's conditions (step 0 of them is the untrained model)."""
        return trained_runs(self.groups)


def trained_runs(groups: dict[str, pd.DataFrame]) -> pd.DataFrame:
    runs = pd.concat(groups.values())
    return runs[runs["trained"]]


def untrained_models(trained: pd.DataFrame, label: str) -> dict[str, pd.DataFrame]:
    """The trained runs grouped by the untrained model their step 0 evaluated (UNTRAINED_KEY),
    in the order they come: one group under `label` when they share one, else each under
    `label (prompt middle_scale, dtype float32)`, naming what sets it apart (two RL arms with
    their own prompts start from two models, and a mean of the two would be neither)."""
    if trained.empty:
        return {}
    keys = pd.Series(
        [tuple(str(run[name]) for name in UNTRAINED_KEY) for _, run in trained.iterrows()],
        index=trained.index,
    )
    distinct = list(dict.fromkeys(keys))
    if len(distinct) == 1:
        return {label: trained}
    differing = [i for i in range(len(UNTRAINED_KEY)) if len({key[i] for key in distinct}) > 1]
    return {
        f"{label} ({', '.join(f'{UNTRAINED_KEY[i]} {key[i]}' for i in differing)})": trained[
            keys == key
        ]
        for key in distinct
    }


def build(definition: StudyDefinition, sweep: SweepRuns) -> Report:
    """The report of `definition` from the runs of `sweep`."""
    runs = sweep.runs
    if definition.conditions.runs == "trained":
        runs = runs[runs["trained"]]
    if runs.empty:
        raise ReportError(
            f"parent run {sweep.parent_run_id} has no finished training run (train: true). "
            "Fix: pass the --parent-run-id of this study's sweep"
        )
    groups = label_conditions(runs, sweep.params, definition.conditions)
    numbers = main_numbers(definition, groups)
    study = Study(sweep, definition, groups, numbers)
    described = pd.DataFrame.from_dict(
        {
            label: {
                heading: DESCRIPTIONS[name](runs)
                for heading, name in definition.conditions.columns.items()
            }
            for label, runs in groups.items()
        },
        orient="index",
    )
    table = shown(numbers, definition.table.metrics)
    if not described.empty:
        table = pd.concat([described, table], axis=1)
    sections, figures, more = [], {}, {}
    for section in definition.sections:
        text, figure, numbers_of_section = SECTION_KINDS[section.kind](study, section)
        if text is not None:
            sections.append(text)
        figures.update(figure)
        more.update(numbers_of_section)
    return Report(definition.title, numbers, table, sections, figures, more)


def main_numbers(definition: StudyDefinition, groups: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The main table as numbers: each condition after training (a run never trained: its one
    evaluation), the untrained row first where the table has one, and the reference's numbers.

    `reduction` is how much of the untrained model's calibration gap is gone, by size:
    1 - |gap| / |untrained gap|, so a run that overshoots to underconfidence (+21 -> -10) has
    removed half its miscalibration, not 149% of it. A trained run is measured against its own
    step 0, a run never trained (a prompt alone) against the mean step 0 of the trained runs of
    its model and dtype, or of all trained runs where none shares them (greedy evaluation makes
    step 0 the same for every seed). Trained runs that start from different untrained models
    (`untrained_models`) get an untrained row each.
    """
    values = {label: stage(runs, "after") for label, runs in groups.items()}
    trained = trained_runs(groups)
    untrained = stage(trained, "before")
    if definition.table.untrained_row:
        rows = untrained_models(trained, definition.table.untrained_row)
        values = {
            label: stage(runs, "before").assign(reduction=math.nan) for label, runs in rows.items()
        } | values
    if "reduction" in definition.table.metrics:
        gaps = untrained["calibration_gap"]
        for label, runs in groups.items():
            baseline = gaps.reindex(runs.index)
            for run_id, run in runs[~runs["trained"]].iterrows():
                same = (trained[list(MODEL_KEY)] == run[list(MODEL_KEY)]).all(axis=1)
                baseline[run_id] = (gaps[same] if same.any() else gaps).mean()
            gap = values[label]["calibration_gap"]
            values[label]["reduction"] = 1 - gap.abs() / baseline.abs()
    return with_reference(summarize(values, definition.table.metrics), definition.reference)


# A section kind: (markdown or None, figures by file stem, further tables by name).
Rendered = tuple[str | None, dict[str, plt.Figure], dict[str, pd.DataFrame]]


def bars(study: Study, section: Section) -> Rendered:
    """The main table's metrics as bars per row, with the reference."""
    name = section.options["name"]
    figure = bar_figure(study.numbers, section.options["metrics"], section.options["title"])
    return image(name), {name: figure}, {}


def share(study: Study, section: Section) -> Rendered:
    """The main table's metrics along a swept share in [0, 1] (the param `x`)."""
    name, x = section.options["name"], section.options["x"]
    positions = [float(study.sweep.params[runs.index[0]][x]) for runs in study.groups.values()]
    figure = share_figure(
        study.numbers, section.options["metrics"], positions, section.options["xlabel"]
    )
    return image(name), {name: figure}, {}


def image(name: str) -> str:
    return f"![{name.replace('_', ' ')}]({name}.png)"


def paired_differences(study: Study, section: Section) -> Rendered:
    """second - first of a metric per seed, for each pair of conditions the study has: the
    same seed trains on the same questions, so the pairing removes the subset's share of noise."""
    metric, lines = section.options["metric"], []
    for pair in section.options["pairs"]:
        first, second = study.groups.get(pair["first"]), study.groups.get(pair["second"])
        if first is None or second is None:
            continue
        diff = paired_difference(first, second, metric)
        if not diff.empty:
            ours = percent(*interval(diff, DIFFERENCE_BOUNDS), signed=True)
            lines.append(
                f"- {pair['meaning']}, paired by seed ({len(diff)} seeds): {ours} "
                f"(reference {percent(pair['reference'], signed=True)})"
            )
    return ("\n".join(lines) if lines else None), {}, {}


def untrained(study: Study, section: Section) -> Rendered:
    """The untrained model in one line (a line each where the trained runs start from several):
    step 0 of the trained runs."""
    models = untrained_models(study.trained, UNTRAINED)
    before = summarize(
        {label: stage(runs, "before") for label, runs in models.items()}, DESCRIBED_METRICS
    )
    lines = []
    for label, row in before.iterrows():
        which = label.removeprefix(UNTRAINED).strip(" ()")
        lines.append(
            f"Before training (step 0 of the same runs{', ' + which if which else ''}): accuracy "
            f"{percent(row['accuracy_mean'])}, calibration gap "
            f"{percent(row['calibration_gap_mean'], signed=True)}, mean confidence "
            f"{percent(row['confidence_mean'])}."
        )
    return "\n\n".join(lines), {}, {}


# The metrics of the untrained line.
DESCRIBED_METRICS = ("accuracy", "calibration_gap", "confidence")


def text(study: Study, section: Section) -> Rendered:
    """A paragraph of the study's own; {untrained_prompts} names the prompts of the runs that
    never trained."""
    runs = pd.concat(study.groups.values())
    prompts = ", ".join(sorted(runs[~runs["trained"]]["prompt"].unique())) or "-"
    return section.options["text"].strip().format(untrained_prompts=prompts), {}, {}


def before_after_rows(study: Study) -> Rows:
    """The untrained model (step 0 of every trained run: greedy, so one model on one question
    set; a row per model where they start from several) and each condition after training (or
    its one evaluation, never trained)."""
    models = untrained_models(study.trained, UNTRAINED)
    rows: Rows = {label: (runs, "before") for label, runs in models.items()}
    return rows | {label: (runs, "after") for label, runs in study.groups.items()}


def set_title(eval_set: str) -> str:
    if eval_set == HELD_OUT:
        return "Held-out split of the training source (in domain, eval/*)"
    return f"`{eval_set}` (out of domain, eval/{eval_set}/*)"


def per_set_section(
    sweep: SweepRuns, rows: Rows, columns: dict[str, str], name: str, heading: str, intro: str
) -> Rendered:
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
    return "\n".join(lines), {}, numbers


def transfer(study: Study, section: Section) -> Rendered:
    """In-domain and out-of-domain numbers side by side, as calibration-RL papers report them."""
    return per_set_section(
        study.sweep,
        before_after_rows(study),
        TRANSFER_METRICS,
        "transfer",
        "Transfer: in domain and out of domain",
        "Every evaluation set of the runs, greedy before training (Untrained: step 0) and after. "
        "Accuracy and gap in %, ECE (10 equal-width bins) and AUROC as fractions, as RLCR "
        "reports them; what the papers report is in `experiments/transfer/README.md`.",
    )


def behaviour(study: Study, section: Section) -> Rendered:
    """The reference's "The Pattern" table, measured: how the answers read before and after."""
    return per_set_section(
        study.sweep,
        before_after_rows(study),
        BEHAVIOUR_COLUMNS,
        "behaviour",
        "Behaviour: confidence when right and wrong, abstaining, alternatives",
        "Mean stated confidence on right and on wrong answers, the share of answers that abstain "
        '("I don\'t know", "None", "Unknown") and the share that put forward more than one '
        "candidate (entropic.grading.abstains, mentions_alternatives). The reference "
        "(Qwen3-4B, traces): confidence when right 95-98% -> 80-90%, when wrong 85-95% -> "
        "60-70%, alternatives rarely -> often, abstains never -> sometimes.",
    )


def trained_groups(study: Study) -> dict[str, pd.DataFrame]:
    """The conditions that trained (a prompting arm has no curve and no before/after)."""
    groups = {label: runs[runs["trained"]] for label, runs in study.groups.items()}
    return {label: runs for label, runs in groups.items() if not runs.empty}


def curves(study: Study, section: Section) -> Rendered:
    """eval/accuracy and eval/calibration_gap against the training step, per condition."""
    groups = trained_groups(study)
    if not groups:
        return None, {}, {}
    figure = curves_figure(study.sweep, groups)
    return (
        "## Training curves\n\n![training curves](training_curves.png)",
        {"training_curves": figure},
        {},
    )


def traces(study: Study, section: Section) -> Rendered:
    """Per trained condition, the answers whose stated confidence moved most in one run."""
    groups = trained_groups(study)
    return (traces_section(study.sweep, groups) if groups else None), {}, {}


SECTION_KINDS: dict[str, Callable[[Study, Section], Rendered]] = {
    "bars": bars,
    "share": share,
    "paired_differences": paired_differences,
    "untrained": untrained,
    "text": text,
    "transfer": transfer,
    "behaviour": behaviour,
    "curves": curves,
    "traces": traces,
}
