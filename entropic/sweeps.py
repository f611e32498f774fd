"""Sweeps in MLflow: one parent run per sweep, each point a nested child run.

A sweep is a primary config in `sweeps/` (see `sweeps/common/sweep.yaml`), run as

    python -m entropic.run -cd sweeps -cn scarce_collapse         # or: make sweep SWEEP=...
    python -m entropic.run -cd sweeps -cn mix_ratio seed=0        # a command-line key replaces
                                                                  # its list in the grid

`MlflowSweepCallback` is the Hydra callback those configs install. Before the first job it creates
the parent run in the sweep's MLflow experiment (`tracking.experiment_name`), records the grid as
params, and hands the run id to the jobs through the environment variable `PARENT_RUN_ENV`, which
`conf/tracking/mlflow.yaml` reads into `tracking.parent_run_id`; `entropic.job` then opens each
job's run as a child (the `mlflow.parentRunId` tag), so the MLflow UI nests and compares them. The
id also goes to `<sweep dir>/mlflow_parent_run_id.txt`.

After the last job it closes the parent with the worst status among its children: FAILED if any
child failed, KILLED if any was interrupted, else FINISHED. When a job's failure aborts the sweep
(Hydra's basic sweeper raises once the batch is done, and a rejected config exits at once), Hydra
never calls `on_multirun_end`; an exit hook closes the parent then, FAILED unless a child was
KILLED, so no parent is left RUNNING.

Creating the parent also creates the sqlite store's tables before any job starts. That matters
for parallel launchers: jobs that write to one existing sqlite store at once lose nothing (MLflow's
store sets `PRAGMA busy_timeout = 20000`, so a writer waits for the lock rather than failing), but
processes that create a fresh store at the same moment race on its schema migration.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from entropic import tracking

log = logging.getLogger(__name__)

# How the parent run id reaches the jobs (read by conf/tracking/mlflow.yaml).
PARENT_RUN_ENV = "ENTROPIC_PARENT_RUN_ID"
# Written into the sweep folder, beside Hydra's multirun.yaml.
PARENT_RUN_FILE = "mlflow_parent_run_id.txt"
# Parent and child runs carry the sweep's name under this tag (children: sweeps/common/sweep.yaml).
SWEEP_TAG = "sweep"


def grid_points(params: dict[str, Any], command_line: list[str]) -> list[list[str]]:
    """The overrides of every job Hydra's basic sweeper launches, in launch order.

    `params` is `hydra.sweeper.params`; a command-line override of the same key replaces its
    list, as in `BasicSweeper.sweep`, whose own expansion this calls.
    """
    parser = OverridesParser.create()
    overrides = parser.parse_overrides(
        [f"{key}={value}" for key, value in params.items()] + list(command_line)
    )
    (points,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return points


def swept_values(points: list[list[str]]) -> dict[str, str]:
    """`sweep.<key>` -> the values the key takes across the points, for the parent's params."""
    values: dict[str, list[str]] = {}
    for point in points:
        for override in point:
            key, value = override.split("=", 1)
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return {f"sweep.{key}": ",".join(vals) for key, vals in values.items()}


def children(client: MlflowClient, parent_run_id: str) -> list:
    """Every child run of a sweep's parent run, oldest first."""
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10_000,
    )


def final_status(child_statuses: list[str], sweep_completed: bool) -> str:
    """The parent's status: the worst of its children's; FAILED for a sweep that stopped early."""
    if "FAILED" in child_statuses:
        return "FAILED"
    if "KILLED" in child_statuses:
        return "KILLED"
    return "FINISHED" if sweep_completed else "FAILED"


class MlflowSweepCallback(Callback):
    """Opens the sweep's parent MLflow run before the jobs and closes it after them."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        name = config.tracking.experiment_name
        self.client = tracking.get_client(config.tracking.tracking_uri)
        sweep_dir = Path(config.hydra.sweep.dir)
        run = self.client.create_run(
            tracking.get_or_create_experiment(self.client, name),
            run_name=f"{name}-{sweep_dir.name}",
            tags={SWEEP_TAG: name, "sweep_dir": str(sweep_dir.resolve())},
        )
        self.parent_run_id = run.info.run_id
        points = grid_points(
            OmegaConf.to_container(config.hydra.sweeper.params) or {},
            OmegaConf.to_container(config.hydra.overrides.task),
        )
        tracking.log_params(
            self.client,
            self.parent_run_id,
            {"sweep.points": str(len(points)), **swept_values(points)},
        )
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(self.parent_run_id)
        atexit.register(self._close, sweep_completed=False)
        log.info("MLflow parent run %s (experiment %s)", self.parent_run_id, name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close(sweep_completed=True)

    def _close(self, sweep_completed: bool) -> None:
        """End the parent run once, with the status its children and the sweep call for."""
        if self.parent_run_id is None:
            return
        client, run_id = self.client, self.parent_run_id
        self.parent_run_id = None
        os.environ.pop(PARENT_RUN_ENV, None)
        statuses = [child.info.status for child in children(client, run_id)]
        status = final_status(statuses, sweep_completed)
        counts = {f"sweep.children_{s.lower()}": statuses.count(s) for s in sorted(set(statuses))}
        tracking.log_tags(client, run_id, counts)
        client.set_terminated(run_id, status)
        print(f"MLflow sweep parent run {run_id}: {status}, {len(statuses)} child runs")
