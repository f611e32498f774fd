"""Does a run's stated confidence rank answers within a question kind, or only between kinds?

The held-out geography split mixes question kinds whose base accuracies differ, so a confidence
that only knew the kind of a question could rank answers a little. This script splits a run's
AUROC into the two parts: the AUROC of each answer's kind mean (the confidence the run stated on
average for that kind: what knowing the kind alone gives), the AUROC of the confidence centred on
its kind's mean (what it knows beyond the kind), and the AUROC inside each kind.

    python experiments/lora_recipe/kind_ranking.py RUN_FOLDER [RUN_FOLDER ...] [--when after] \
        [--tracking-uri sqlite:///mlflow.db]

RUN_FOLDER is a train job's folder (Hydra's run dir, with `mlflow_run_id.txt`). The kind is the
part of each question id before its first colon (geo's ids: `continent_of_city:BR:João Dias`);
the script refuses a table whose ids carry no kind. Answers without a stated number are left
out, as the run's own AUROC leaves them. Seconds a run; no model is loaded.

Findings (2026-11-30, p53-p54) are in README.md beside this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from entropic.metrics import auroc
from entropic.report.traces import load_predictions


def kind_split(table: pd.DataFrame) -> tuple[dict[str, float], pd.DataFrame]:
    """(overall, kind-mean and within-kind AUROC; one row per kind) of a prediction table."""
    stated = table.dropna(subset=["confidence"]).copy()
    if not stated["question_id"].str.contains(":").all():
        raise SystemExit(
            "question ids carry no kind (expected 'kind:...', as data=geo writes them); "
            "this split needs a source with question kinds"
        )
    stated["kind"] = stated["question_id"].str.split(":").str[0]
    kind_mean = stated.groupby("kind")["confidence"].transform("mean")
    correct = stated["correct"].astype(float)
    overall = {
        "answers": len(stated),
        "auroc": auroc(stated["confidence"], correct),
        "kind_mean_auroc": auroc(kind_mean, correct),
        # a centred confidence is no probability (it runs below 0), so sklearn's AUROC, which
        # only ranks, takes it where entropic.metrics.auroc would refuse it
        "within_kind_auroc": float(roc_auc_score(correct, stated["confidence"] - kind_mean)),
    }
    kinds = pd.DataFrame(
        [
            {
                "kind": kind,
                "answers": len(rows),
                "accuracy": rows["correct"].mean(),
                "confidence": rows["confidence"].mean(),
                "auroc": auroc(rows["confidence"], rows["correct"].astype(float)),
            }
            for kind, rows in stated.groupby("kind")
        ]
    )
    return overall, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folders", type=Path, nargs="+")
    parser.add_argument("--when", choices=("before", "after"), default="after")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    args = parser.parse_args()
    client = MlflowClient(args.tracking_uri)
    for folder in args.run_folders:
        run_id = (folder / "mlflow_run_id.txt").read_text().strip()
        table = load_predictions(client, run_id, f"predictions/{args.when}.json")
        overall, kinds = kind_split(table)
        print(
            f"{folder.name} ({args.when}, {overall['answers']} answers stating a number): "
            f"AUROC {overall['auroc']:.3f}, kind mean alone {overall['kind_mean_auroc']:.3f}, "
            f"within kinds {overall['within_kind_auroc']:.3f}"
        )
        print(kinds.to_string(index=False, float_format=lambda x: f"{x:.2f}"))


if __name__ == "__main__":
    main()
