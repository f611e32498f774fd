"""The entropy -> Platt -> RL pipeline: Platt scaling on synthetic data, the score cache's key,
config checks, and the whole pipeline twice on the embedded model (the second run reuses scores)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy.special import expit

from entropic.calibration import fit_platt, score_key, score_path
from entropic.compute import apply_cpu_scale
from entropic.config import ConfigError, RunConfig
from entropic.data import load_questions
from entropic.jobs import run
from entropic.jobs.context import prepare
from tests.conftest import compose_config


@pytest.mark.parametrize(
    ("slope", "intercept"),
    [
        (-2.0, 0.5),  # the expected shape: more entropy, less often right
        (1.5, -1.0),  # a positive slope is fitted as well, never forced negative
        (-0.3, 0.0),  # a weak score: the slope must not be shrunk towards 0 by a penalty
    ],
)
def test_platt_scaling_recovers_known_parameters(slope, intercept):
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 2.0, size=40_000)
    correct = rng.random(scores.size) < expit(slope * scores + intercept)
    fit = fit_platt(scores, correct)
    # standard errors at n = 40,000 are ~0.03; Platt's targets shift the fit by ~1e-4
    assert fit.slope == pytest.approx(slope, abs=0.1)
    assert fit.intercept == pytest.approx(intercept, abs=0.1)


def test_platt_targets_keep_separable_and_one_class_fits_finite():
    scores = np.array([0.0, 0.1, 0.2, 1.0, 1.2, 1.5])
    separable = fit_platt(scores, [1, 1, 1, 0, 0, 0])
    # a plain logistic regression diverges here; Platt's targets (4/5 and 1/5) keep it finite
    assert -50 < separable.slope < 0
    # at the optimum the predictions sum to the targets' sum: (3 * 4/5 + 3 * 1/5) / 6 = 1/2
    assert separable.predict(scores).mean() == pytest.approx(0.5, abs=1e-4)
    # all wrong: every target is 1 / (N- + 2) = 1/8, so the fit is that constant
    all_wrong = fit_platt(scores, [0] * 6)
    assert all_wrong.predict(scores) == pytest.approx([1 / 8] * 6, abs=1e-4)


def _key_after(tmp_path, overrides, split="train", questions=None):
    cfg = compose_config(["+experiment=entropy_platt", *overrides], tmp_path)
    config = RunConfig.from_hydra(cfg)
    calibration = config.calibration
    if questions is None:
        questions = load_questions("geo", train_size=20, eval_size=5, seed=0).train
    return score_path(calibration, score_key(config, calibration, split, questions))


@pytest.mark.parametrize(
    ("overrides", "changes"),
    [
        (["calibration.num_samples=4"], True),  # K
        (["calibration.temperature=0.7"], True),  # another distribution
        (["calibration.max_new_tokens=16"], True),  # truncation changes what parses
        (["seed=1"], True),  # other samples
        (["model=tiny_random"], True),  # another model
        (["prompt=calibration_aggressive"], True),  # another prompt, other answers
        (["data.train_size=1700"], True),  # the data source's sizes are part of the key
        (["calibration.batch_size=2"], False),  # float order only, same distribution
        (["generation=prefix_cache"], False),  # another engine, the same distribution
        (["reward.labeled_fraction=0.25"], False),  # a sweep over the label share reuses scores
        (["trainer.learning_rate=3e-6"], False),  # nor does training touch the base scores
    ],
)
def test_score_cache_key(tmp_path, overrides, changes):
    base = _key_after(tmp_path, [])
    assert (_key_after(tmp_path, overrides) != base) is changes


def test_score_cache_key_covers_the_split_and_its_questions(tmp_path):
    questions = load_questions("geo", train_size=20, eval_size=5, seed=0).train
    base = _key_after(tmp_path, [], questions=questions)
    assert _key_after(tmp_path, [], split="eval", questions=questions) != base
    assert _key_after(tmp_path, [], questions=questions.select(range(19))) != base
    # the default location is $ENTROPIC_CACHE/scores
    assert base.parent.name == "scores" and base.suffix == ".parquet"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        # the calibrated reward without the pipeline's config
        (["reward.name=calibrated"], "calibration"),
        # no labeled question to fit Platt on
        (["+experiment=entropy_platt", "reward.labeled_fraction=0"], "reward.labeled_fraction"),
        (["+experiment=entropy_platt", "calibration.num_samples=1"], "calibration.num_samples"),
        (["+experiment=entropy_platt", "calibration.name=isotonic"], "calibration.name"),
        (["+experiment=entropy_platt", "+calibration.bins=3"], "calibration"),  # unknown key
    ],
)
def test_prepare_rejects_a_pipeline_that_cannot_run(tmp_path, overrides, key):
    with pytest.raises(ConfigError) as err:
        prepare(compose_config(overrides, tmp_path))
    assert key in str(err.value) and "Fix:" in str(err.value)


def test_prepare_accepts_the_experiment(tmp_path):
    prepared = prepare(compose_config(["+experiment=entropy_platt", "compute=cpu"], tmp_path))
    assert prepared.config.reward.name == "calibrated"
    assert sum(prepared.train["labeled"]) == round(0.5 * len(prepared.train))


def calibration_caps(changes: dict) -> dict:
    return {key: pair for key, pair in changes.items() if key.startswith("calibration.")}


def test_cpu_caps_apply_only_on_cpu():
    # conf/calibration/platt.yaml: cpu_scale {eval_questions: 100, max_new_tokens: 32}
    config = RunConfig.from_hydra(compose_config(["+experiment=entropy_platt", "compute=cpu"]))
    calibration = config.calibration
    scaled, changes = apply_cpu_scale(config, "cpu")
    assert (scaled.calibration.eval_questions, scaled.calibration.max_new_tokens) == (100, 32)
    # (requested, used): the job logs the used value as the param, the other as requested.*
    assert calibration_caps(changes) == {
        "calibration.eval_questions": (200, 100),
        "calibration.max_new_tokens": (48, 32),
    }
    scaled, changes = apply_cpu_scale(config, "cuda")
    assert (scaled.calibration, changes) == (calibration, {})
    # compute=single_gpu has no cpu_scale: it never scales
    never = dataclasses.replace(config, compute=dataclasses.replace(config.compute, cpu_scale=None))
    scaled, changes = apply_cpu_scale(never, "cpu")
    assert (scaled.calibration, changes) == (calibration, {})
    uncapped = dataclasses.replace(calibration, cpu_scale=None)
    uncapped = dataclasses.replace(config, calibration=uncapped)
    assert calibration_caps(apply_cpu_scale(uncapped, "cpu")[1]) == {}


# Easy and hard capitals, so the base model is right on some and wrong on others.
EASY_AND_HARD = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("the United Kingdom", "London"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Burkina Faso", "Ouagadougou"),
    ("Bhutan", "Thimphu"),
    ("Kyrgyzstan", "Bishkek"),
    ("Vanuatu", "Port Vila"),
    ("Tuvalu", "Funafuti"),
    ("Eswatini", "Mbabane"),
]


def write_questions(path: Path) -> Path:
    lines = [
        json.dumps({"question": f"What is the capital of {country}?", "answers": [capital]})
        for country, capital in EASY_AND_HARD
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pipeline_end_to_end_and_the_second_run_reuses_the_scores(
    tmp_path, mlflow_uri, embedded_checkpoint
):
    smoke = [
        "+experiment=entropy_platt",
        "compute=cpu",
        "data=jsonl",
        f"data.path={write_questions(tmp_path / 'questions.jsonl')}",
        "data.train_size=6",
        "data.eval_size=4",
        "compute.cpu_scale.num_generations=2",
        "compute.cpu_scale.per_device_train_batch_size=4",
        "trainer.max_completion_length=12",
        "trainer.max_steps=1",
        "trainer.save_steps=0",
        "trainer.beta=0",  # no reference model to load: faster, same pipeline
        "calibration.num_samples=3",
        "calibration.max_new_tokens=12",
        "calibration.eval_questions=4",
        f"calibration.cache_dir={tmp_path / 'scores'}",
        "eval.max_new_tokens=12",
        # the pipeline, not transfer: no other evaluation sets
        "eval.sets=null",
        f"tracking.tracking_uri={mlflow_uri}",
    ]
    first = run(compose_config(smoke, tmp_path / "first"))
    # why: train=false skips GRPO, but the targets (and so the cache) are still computed
    second = run(compose_config([*smoke, "train=false"], tmp_path / "second"))

    client = MlflowClient(mlflow_uri)
    runs = {r.info.run_id: r for r in map(client.get_run, (first.run_id, second.run_id))}
    trained, reused = runs[first.run_id], runs[second.run_id]
    assert trained.info.status == reused.info.status == "FINISHED"
    assert trained.data.tags["score_cache"] == "miss"
    assert reused.data.tags["score_cache"] == "hit"
    assert {"score_cache.train", "score_cache.eval"} <= set(reused.data.tags)
    assert len(list((tmp_path / "scores").glob("*.parquet"))) == 2  # one file per split
    # the same scores give the same fit, and the run says where they came from
    for name in ("platt/slope", "platt/intercept", "platt/heldout_ece"):
        assert trained.data.metrics[name] == reused.data.metrics[name]
    assert (
        reused.data.metrics["time/scoring_seconds"] < trained.data.metrics["time/scoring_seconds"]
    )
    assert trained.data.params["platt.slope"] == reused.data.params["platt.slope"]
    digests = [sorted(d.dataset.digest for d in r.inputs.dataset_inputs) for r in runs.values()]
    assert len(digests[0]) == 2 and digests[0] == digests[1]

    metrics = trained.data.metrics
    assert metrics["platt/labeled_questions"] == 3  # half of the 6 training questions
    assert metrics["platt/heldout_questions"] == 4
    assert 0 <= metrics["platt/heldout_ece"] <= 1 and 0 <= metrics["platt/heldout_brier"] <= 1
    # GRPO trained on the calibrated reward, which read the calibrated_target column (TRL's
    # rewards/calibrated/mean is the one reward, logged once as train/reward)
    assert trained.data.params["reward.name"] == "calibrated"
    assert math.isfinite(metrics["train/reward"])

    targets = client.load_table(
        client.get_run(first.run_id).info.experiment_id,
        "platt/train_targets.json",
        run_ids=[first.run_id],
    )
    assert len(targets) == 6 and targets["calibrated_target"].between(0, 1).all()
    # every question's target is the fitted sigmoid of its entropy, labeled or not
    expected = expit(
        metrics["platt/slope"] * targets["embedding_entropy"] + metrics["platt/intercept"]
    )
    assert targets["calibrated_target"].to_numpy() == pytest.approx(expected.to_numpy())
    assert targets["labeled"].sum() == 3
