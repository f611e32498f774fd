"""Every experiment composes and validates; bad input is rejected early with the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from entropic.config import ConfigError, RunConfig
from entropic.job import prepare
from tests.conftest import compose_config

EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")
)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose_config([f"+experiment={experiment}"])
    config = RunConfig.from_hydra(cfg)
    # why: the MLflow experiment is named after the experiment config
    assert config.tracking.experiment_name == experiment


@pytest.mark.parametrize(
    ("experiment", "train_size", "labeled_fraction", "epochs"),
    [
        ("scarce_brier_1ep", 1600, 1.0, 1),  # Run A
        ("scarce_brier_2ep", 1600, 1.0, 2),  # Run B
        ("scarce_mixed", 1600, 0.5, 2),  # Run C
        ("abundant_brier", 5000, 1.0, 1),
        ("abundant_mixed", 5000, 0.5, 1),
        ("abundant_stability", 5000, 0.0, 1),
    ],
)
def test_reference_runs_have_the_reference_settings(
    experiment, train_size, labeled_fraction, epochs
):
    config = RunConfig.from_hydra(compose_config([f"+experiment={experiment}"]))
    assert config.data.train_size == train_size
    assert config.reward.labeled_fraction == labeled_fraction
    assert config.trainer.epochs == epochs


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("reward.labeled_fraction=1.5", "reward.labeled_fraction"),  # a share above 1
        ("reward.labeled_fraction=-0.1", "reward.labeled_fraction"),  # a negative share
        ("trainer.num_generations=1", "trainer.num_generations"),  # no group to compare
        ("trainer.per_device_train_batch_size=10", "trainer.per_device_train_batch_size"),  # 10 % 8
        ("trainer.epochs=0", "trainer.epochs"),  # nothing to train
        ("trainer.epochs=-1", "trainer.epochs"),
        ("compute.device=tpu", "compute.device"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(override, key):
    cfg = compose_config([override])
    with pytest.raises(ConfigError) as err:
        RunConfig.from_hydra(cfg)
    assert key in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["reward.name=brierr"], "mixed"),  # a typo lists the valid names
        (["data.name=geoo"], "geo"),
        (["data=jsonl", "data.path=/nonexistent/questions.jsonl"], "data.path"),
        (["model=local", "model.path=/nonexistent/ckpt"], "model.path"),
        (["semantic.method=fuzzy"], "exact"),
    ],
)
def test_prepare_rejects_unknown_names_and_missing_files(overrides, expected, tmp_path):
    with pytest.raises(ConfigError) as err:
        prepare(compose_config(overrides, tmp_path))
    assert expected in str(err.value)


def test_model_local_path_is_required():
    with pytest.raises(ConfigError, match="model.path"):
        RunConfig.from_hydra(compose_config(["model=local"]))


def test_cpu_profile_scales_down_but_keeps_the_pool(tmp_path):
    prepared = prepare(compose_config(["+experiment=scarce_mixed", "compute=cpu"], tmp_path))
    scale = prepared.config.compute.cpu_scale
    assert len(prepared.train) == scale.train_questions
    assert len(prepared.splits.train) == 1600  # the subset is drawn from the experiment's pool
    assert len(prepared.splits.eval) >= 200
    assert (
        prepared.config.trainer.per_device_train_batch_size
        % prepared.config.trainer.num_generations
        == 0
    )
    # why: the labeled subset is a seeded share of the questions actually trained on
    assert sum(prepared.train["labeled"]) == round(0.5 * scale.train_questions)
