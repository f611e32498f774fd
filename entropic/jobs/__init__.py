"""The jobs `python -m entropic.run` can run, and `run(cfg)`, which runs the one the config names.

Each job is one module of this package with `run(context) -> RunResult`, listed in `JOBS`; an
experiment selects one with `job: <name>`. `run` checks the config and loads the questions once
(`entropic.jobs.context.prepare`) and hands the job that context: the typed config, the questions,
the base model's handles and, once the job opens it, the MLflow run. Tests call `run(cfg)` with a
config composed by Hydra, as the CLI does.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from entropic.jobs import stability_study, train
from entropic.jobs.context import RunContext, RunResult, prepare

# Every kind of job; experiments choose one with `job: <name>` (conf/experiment/*.yaml). The names
# are entropic.config.JOB_NAMES too, which refuses an unknown one before torch loads
# (tests/test_configs.py holds the two to the same names).
JOBS: dict[str, Callable[[RunContext], RunResult]] = {
    "train": train.run,
    "stability_study": stability_study.run,
}


def run(cfg: DictConfig) -> RunResult:
    """Run the job the config names (`job: train` unless an experiment says otherwise); the
    typed config refuses an unknown name (entropic.config.JOB_NAMES)."""
    context = prepare(cfg)
    return JOBS[context.config.job](context)
