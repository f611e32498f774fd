"""The train job's entropy -> Platt stage: each training question gets a `calibrated_target`.

The train job runs it for `reward.name=calibrated` (`python -m entropic.run
+experiment=entropy_platt`), after the base model's greedy evaluation and before GRPO. The method
(the cached entropy scores, Platt scaling, the held-out metrics, and the reasons behind each
choice) is `entropic.calibration`; this stage runs it on the context's questions and logs what
it found to the job's MLflow run: the fit as `platt.*` params and `platt/*` metrics, the score
tables as dataset inputs, the targets and the held-out table as tables, and a reliability
diagram. One process only: the targets are computed where the base model is evaluated (rank 0).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import datasets
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from entropic import tracking
from entropic.calibration import entropy_scores, fit_platt, heldout_metrics
from entropic.config import _require
from entropic.evaluate import evaluate
from entropic.jobs.context import RunContext
from entropic.plots import reliability_diagram

log = logging.getLogger(__name__)


def add(context: RunContext, base_eval: pd.DataFrame) -> datasets.Dataset:
    """Score, calibrate, and return the context's training questions with a `calibrated_target`
    column, for the job to put in its context; everything is logged to the context's run.

    `base_eval` is the base model's greedy evaluation of the eval split (one row per question,
    with `correct` and `confidence`); the held-out questions are judged against it.
    """
    started = time.perf_counter()
    config, client, run_id = context.config, context.run.client, context.run.run_id
    # the section as the CPU caps left it (entropic.compute.apply_cpu_scale)
    calibration = config.calibration
    train = context.train
    heldout = context.splits.eval.select(
        range(min(calibration.eval_questions, len(context.splits.eval)))
    )
    model = context.policy.load_model()
    tokenizer = context.policy.tokenizer
    train_scores, train_path, train_hit = entropy_scores(
        model, tokenizer, train, config, calibration, "train"
    )
    eval_scores, eval_path, eval_hit = entropy_scores(
        model, tokenizer, heldout, config, calibration, "eval"
    )
    scoring_seconds = time.perf_counter() - started

    labeled = train.select(np.flatnonzero(train["labeled"]))
    _require(
        len(labeled) > 0,
        "reward.labeled_fraction",
        f"{config.reward.labeled_fraction} labels none of the {len(train)} training "
        "questions, so there is nothing to fit Platt scaling on",
        "raise reward.labeled_fraction (or the number of training questions)",
    )
    greedy, _ = evaluate(
        model, tokenizer, labeled, config.prompt, config.eval, config.generation.name
    )
    fitted_on = greedy[["question_id", "correct"]].merge(
        train_scores[["question_id", "embedding_entropy"]], on="question_id", validate="1:1"
    )
    fit = fit_platt(fitted_on["embedding_entropy"], fitted_on["correct"])
    if fit.slope > 0:
        log.warning(
            "Platt slope %.3f > 0: on these labeled questions more disagreement went with more "
            "correct answers; the targets follow the data",
            fit.slope,
        )

    targets = train_scores.set_index("question_id").loc[train["question_id"]]
    targets = targets.reset_index()[["question_id", "question", "embedding_entropy"]]
    targets["labeled"] = train["labeled"]
    targets["calibrated_target"] = fit.predict(targets["embedding_entropy"])
    targets = targets.merge(
        greedy[["question_id", "correct"]].rename(columns={"correct": "greedy_correct"}),
        on="question_id",
        how="left",
    )

    judged = eval_scores[["question_id", "question", "embedding_entropy"]].merge(
        base_eval[["question_id", "answer", "confidence", "correct"]],
        on="question_id",
        validate="1:1",
    )
    judged["calibrated_score"] = fit.predict(judged["embedding_entropy"])
    metrics = {
        "slope": fit.slope,
        "intercept": fit.intercept,
        "labeled_questions": float(len(fitted_on)),
        "labeled_accuracy": float(fitted_on["correct"].mean()),
        "target_mean": float(targets["calibrated_target"].mean()),
        "target_std": float(targets["calibrated_target"].std(ddof=0)),
        **heldout_metrics(judged, calibration.ece_bins),
    }

    hits = {"train": train_hit, "eval": eval_hit}
    tracking.log_tags(
        client,
        run_id,
        {
            "score_cache": "hit" if all(hits.values()) else "miss",
            **{f"score_cache.{split}": "hit" if hit else "miss" for split, hit in hits.items()},
        },
    )
    tracking.log_params(
        client,
        run_id,
        {
            "platt.slope": f"{fit.slope:.6g}",
            "platt.intercept": f"{fit.intercept:.6g}",
            "platt.score_cache.train": str(train_path),
            "platt.score_cache.eval": str(eval_path),
        },
    )
    tracking.log_metrics(client, run_id, metrics, step=0, prefix="platt/")
    tracking.log_metrics(client, run_id, {"scoring_seconds": scoring_seconds}, 0, "time/")
    log_score_datasets(
        client, run_id, {"train": (train_scores, train_path), "eval": (eval_scores, eval_path)}
    )
    client.log_table(run_id, targets, "platt/train_targets.json")
    client.log_table(run_id, judged, "platt/heldout.json")
    client.log_figure(
        run_id,
        reliability_diagram(
            {
                "stated confidence (base model)": judged,
                "Platt(embedding entropy)": judged.assign(confidence=judged["calibrated_score"]),
            }
        ),
        "platt/reliability_heldout.png",
    )
    print(
        f"entropy -> Platt: slope {fit.slope:+.3f}, intercept {fit.intercept:+.3f} on "
        f"{len(fitted_on)} labeled questions; held-out ECE {metrics['heldout_ece']:.3f} "
        f"(stated confidence {metrics['heldout_stated_ece']:.3f}), AUROC "
        f"{metrics['heldout_auroc']:.3f}; score cache: "
        + ", ".join(f"{split} {'hit' if hit else 'miss'}" for split, hit in hits.items())
    )
    return train.add_column("calibrated_target", targets["calibrated_target"].tolist())


def log_score_datasets(
    client: MlflowClient, run_id: str, splits: dict[str, tuple[pd.DataFrame, Path]]
) -> None:
    """Each split's score table as an MLflow dataset input, with the cache file as its source."""
    inputs = []
    for split, (table, path) in splits.items():
        with warnings.catch_warnings():
            # MLflow registers one local-file source class for both "" and "file" URIs and warns
            # that a plain path matches both; either reading is the same file.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            dataset = mlflow.data.from_pandas(
                table, source=str(path), name=f"entropy_scores_{split}"
            )
        # MlflowClient takes entities; _to_mlflow_entity is how mlflow.log_input builds one.
        entity = dataset._to_mlflow_entity()
        inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", split)]))
    client.log_inputs(run_id, datasets=inputs)
