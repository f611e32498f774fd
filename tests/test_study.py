"""The stability study: the estimator table on hand-worked values, config checks, and the job end
to end on the embedded model, its table checked against numpy and scikit-learn."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score

from entropic.compute import apply_cpu_scale
from entropic.config import ConfigError, RunConfig
from entropic.estimators import ESTIMATORS, estimator_table
from entropic.jobs import run
from tests.conftest import compose_config
from tests.test_calibration import write_questions


def per_question_table(**columns) -> pd.DataFrame:
    """Four questions; every estimator column defaults to the stability values."""
    stability = [1.0, 0.5, 0.5, 0.25]
    table = {estimator.column: stability for estimator in ESTIMATORS.values()}
    table.update(
        accuracy=[1.0, 1 / 3, 1 / 3, 0.0],
        greedy_correct=[True, True, False, False],
    )
    table.update(columns)
    return pd.DataFrame(table)


def test_estimator_table_on_hand_worked_values():
    se = [0.0, math.log(2), math.log(2), math.log(4)]
    table = estimator_table(
        per_question_table(
            semantic_entropy=se,
            # constant: r is undefined, AUROC is 0.5 (every pair tied)
            confidence=[0.9, 0.9, 0.9, 0.9],
            # one question without a parsed confidence drops out of this row only
            greedy_confidence=[0.9, np.nan, 0.5, 0.1],
        ),
        n_resamples=200,
        ci_level=0.95,
        seed=0,
    ).set_index("estimator")
    assert list(table.index) == list(ESTIMATORS)
    # accuracy = (4 * stability - 1) / 3 exactly, so r = 1
    assert table.loc["stability", "pearson_r"] == pytest.approx(1.0)
    # greedy correct [1, 1, 0, 0] against scores [1, .5, .5, .25]: pairs (1>.5, 1>.25, .5=.5,
    # .5>.25) -> (1 + 1 + 0.5 + 1) / 4
    assert table.loc["stability", "auroc"] == pytest.approx(0.875)
    # entropy is negated: the lowest entropy is the most confident, same ranking as stability
    assert table.loc["semantic_entropy", "auroc"] == pytest.approx(0.875)
    assert table.loc["semantic_entropy", "pearson_r"] == pytest.approx(
        np.corrcoef(-np.array(se), [1.0, 1 / 3, 1 / 3, 0.0])[0, 1]
    )
    assert table.loc["semantic_entropy", "pearson_r"] > 0
    assert math.isnan(table.loc["stated_confidence", "pearson_r"])
    assert math.isnan(table.loc["stated_confidence", "pearson_r_low"])
    assert table.loc["stated_confidence", "auroc"] == pytest.approx(0.5)
    assert table.loc["greedy_confidence", "questions"] == 3
    assert table.loc["stability", "questions"] == 4
    for stat in ("pearson_r", "auroc"):
        low, value, high = table.loc["semantic_entropy", [f"{stat}_low", stat, f"{stat}_high"]]
        assert low <= value + 1e-9 and value <= high + 1e-9


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["study.num_samples=1"], "study.num_samples"),  # one answer cannot disagree
        (["study.ci_level=1.5"], "study.ci_level"),  # not a coverage
        (["study.bootstrap_resamples=0"], "study.bootstrap_resamples"),
        (["+study.samples=4"], "study"),  # a typo of a key
        (["data.eval_size=5"], "study.num_questions"),  # more questions than the eval split
    ],
)
def test_study_rejects_bad_config_before_any_model_loads(tmp_path, mlflow_uri, overrides, key):
    cfg = compose_config(
        ["+experiment=stability_study", f"tracking.tracking_uri={mlflow_uri}", *overrides],
        tmp_path,
    )
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert key in str(err.value) and "Fix:" in str(err.value)
    client = MlflowClient(mlflow_uri)
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_study_job_without_a_study_config_says_how_to_fix_it(tmp_path):
    with pytest.raises(ConfigError, match=r"\+experiment=stability_study"):
        run(compose_config(["job=stability_study"], tmp_path))


def test_cpu_caps_apply_only_on_cpu():
    # conf/study/stability.yaml: cpu_scale {num_questions: 100, max_new_tokens: 32}
    config = RunConfig.from_hydra(compose_config(["+experiment=stability_study", "compute=cpu"]))
    scaled, changes = apply_cpu_scale(config, "cpu")
    assert (scaled.study.num_questions, scaled.study.max_new_tokens) == (100, 32)
    # (requested, used): the job logs the used value as the param, the other as requested.*
    study_caps = {key: pair for key, pair in changes.items() if key.startswith("study.")}
    assert study_caps == {"study.num_questions": (150, 100), "study.max_new_tokens": (48, 32)}
    scaled, changes = apply_cpu_scale(config, "cuda")
    assert (scaled.study, changes) == (config.study, {})


def test_study_end_to_end(tmp_path, mlflow_uri, embedded_checkpoint):
    cfg = compose_config(
        [
            "+experiment=stability_study",
            "compute=cpu",
            "data=jsonl",
            f"data.path={write_questions(tmp_path / 'questions.jsonl')}",
            "data.train_size=2",
            "data.eval_size=10",
            "study.num_questions=6",
            "study.num_samples=3",
            "study.max_new_tokens=12",
            "study.bootstrap_resamples=50",
            "eval.max_new_tokens=12",
            f"tracking.tracking_uri={mlflow_uri}",
        ],
        tmp_path,
    )
    result = run(cfg)
    client = MlflowClient(mlflow_uri)
    finished = client.get_run(result.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.info.run_name == "exact-K3-seed0"

    def artifact(path: str) -> str:
        return open(client.download_artifacts(result.run_id, path, str(tmp_path))).read()

    table = pd.read_csv(io.StringIO(artifact("study/estimators.csv"))).set_index("estimator")
    assert list(table.index) == list(ESTIMATORS)  # one row per estimator
    assert "| stability " in artifact("study/estimators.md")
    per_question = client.load_table(
        finished.info.experiment_id, "study/per_question.json", run_ids=[result.run_id]
    )
    assert len(per_question) == 6
    samples = client.load_table(
        finished.info.experiment_id, "study/samples.json", run_ids=[result.run_id]
    )
    assert len(samples) == 6 * 3
    # per-question accuracy is the share of that question's samples that are correct
    share = samples.groupby("question_id")["correct"].mean()
    assert per_question.set_index("question_id")["accuracy"].to_dict() == pytest.approx(
        share.to_dict()
    )

    # Every number of the table, recomputed from the per-question table with numpy and
    # scikit-learn: finite where defined, NaN exactly where it is not.
    for name, estimator in ESTIMATORS.items():
        values = per_question[estimator.column].to_numpy(float) * estimator.sign
        defined = np.isfinite(values)
        x = values[defined]
        accuracy = per_question["accuracy"].to_numpy(float)[defined]
        correct = per_question["greedy_correct"].to_numpy(int)[defined]
        assert table.loc[name, "questions"] == defined.sum()
        if len(x) >= 2 and np.ptp(x) > 0 and np.ptp(accuracy) > 0:
            assert table.loc[name, "pearson_r"] == pytest.approx(np.corrcoef(x, accuracy)[0, 1])
        else:
            assert math.isnan(table.loc[name, "pearson_r"])
        if len(x) >= 2 and len(set(correct)) == 2:
            assert table.loc[name, "auroc"] == pytest.approx(roc_auc_score(correct, x))
        else:
            assert math.isnan(table.loc[name, "auroc"])
        logged = finished.data.metrics[f"study/{name}/pearson_r"]
        assert logged == pytest.approx(table.loc[name, "pearson_r"], nan_ok=True)
    assert "study/stability_vs_confidence.png" in {
        a.path for a in client.list_artifacts(result.run_id, "study")
    }
