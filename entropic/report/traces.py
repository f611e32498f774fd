"""Traces: per condition, the questions whose stated confidence moved most in one run.

Read from the before and after prediction tables every training run logs (entropic.jobs.train), so a
reader sees what the numbers mean answer by answer.
"""

from __future__ import annotations

import tempfile

import pandas as pd
from mlflow.tracking import MlflowClient

from entropic.parsing import LAST_COUNTS, reasoning_text
from entropic.report.runs import SweepRuns

# Questions shown per condition in the traces.
TRACES_PER_CONDITION = 5
# Characters of reasoning shown per answer in the traces (prompt=reasoning).
REASONING_CHARS = 400
# The prediction tables every training run logs (entropic.jobs.train).
PREDICTIONS = {"before": "predictions/before.json", "after": "predictions/after.json"}


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
