"""Sweeps in MLflow: one parent run per sweep, each point a nested child run.

A sweep is a primary config in `sweeps/` (see `sweeps/common/sweep.yaml`), run as

    python -m entropic.run -cd sweeps -cn scarce_collapse         # or: make sweep SWEEP=...
    python -m entropic.run -cd sweeps -cn mix_ratio seed=0        # a command-line key replaces
                                                                  # its list in the grid

`MlflowSweepCallback` is the Hydra callback those configs install. Before the first job it creates
the parent run in the sweep's MLflow experiment (`tracking.experiment_name`), records the grid as
params, and hands the run id to the jobs through the environment variable `PARENT_RUN_ENV`, which
`conf/tracking/mlflow.yaml` reads into `tracking.parent_run_id`; `entropic.jobs` then opens each
job's run as a child (the `mlflow.parentRunId` tag), so the MLflow UI nests and compares them. The
id also goes to `<sweep dir>/mlflow_parent_run_id.txt`.

After the last job it closes the parent with the worst status among its children: FAILED if any
child failed, KILLED if any was interrupted, else FINISHED. Before that it logs the sweep at a
glance to the parent: `sweep_comparison.png` (each eval metric before and after training across
the sweep's conditions, the mix-ratio curve for `mix_ratio`) and, as the parent's description, the
same numbers as a table (mean over seeds). When a job's failure aborts the sweep
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

import pandas as pd
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from omegaconf import DictConfig, OmegaConf

from entropic import tracking
from entropic.plots import sweep_comparison

log = logging.getLogger(__name__)

# How the parent run id reaches the jobs (read by conf/tracking/mlflow.yaml).
PARENT_RUN_ENV = "ENTROPIC_PARENT_RUN_ID"
# Written into the sweep folder, beside Hydra's multirun.yaml.
PARENT_RUN_FILE = "mlflow_parent_run_id.txt"
# Parent and child runs carry the sweep's name under this tag (children: sweeps/common/sweep.yaml).
SWEEP_TAG = "sweep"
# A child's overrides, e.g. reward.labeled_fraction=0.25,seed=1 (sweeps/common/sweep.yaml).
POINT_TAG = "sweep_point"
# The parent's figure of the sweep's conditions, before and after training.
COMPARISON_FIGURE = "sweep_comparison.png"


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


def sweep_points(runs: list[Run]) -> tuple[pd.DataFrame, str]:
    """One row per finished child that logged before/* (entropic.jobs.train): its condition,
    position `x`, seed and before/after metrics; and the name of the x axis.

    A condition is the child's sweep point without its seed and without what every point shares.
    When the points differ in one numeric key (reward.labeled_fraction), x is its value; else x
    numbers the conditions in launch order. The axis is named after the key when there is one
    (`experiment`), else `condition`.
    """
    rows = []
    for run in runs:
        metrics = run.data.metrics
        if run.info.status != "FINISHED" or not any(k.startswith("before/") for k in metrics):
            continue
        point = run.data.tags.get(POINT_TAG, "")
        rows.append(
            {
                "parts": [p for p in point.split(",") if p and not p.startswith("seed=")],
                "seed": run.data.params.get("seed"),
                **{k: v for k, v in metrics.items() if k.startswith(("before/", "after/"))},
            }
        )
    if not rows:
        return pd.DataFrame(), ""
    shared = set.intersection(*(set(row["parts"]) for row in rows))
    for row in rows:
        row["condition"] = ",".join(p for p in row.pop("parts") if p not in shared) or "all"
    points = pd.DataFrame(rows)
    key, _, value = (points["condition"].str.partition("=")[i] for i in range(3))
    one_key = key.nunique() == 1 and (value != "").all() and not value.str.contains(",").any()
    numbers = pd.to_numeric(value, errors="coerce")
    if one_key and numbers.notna().all():
        return points.assign(x=numbers.astype(float)), key.iloc[0]
    order = {condition: i for i, condition in enumerate(points["condition"].unique())}
    return points.assign(x=points["condition"].map(order)), key.iloc[0] if one_key else "condition"


def sweep_table(points: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """Per condition: how many runs, and per metric one cell "before -> after (change)" of the
    means over seeds; "before" alone where the condition does not train (prompting baseline).
    One cell per metric keeps the table narrow enough for the run page's description."""
    points = points.reindex(
        columns=[*points, *(f"after/{m}" for m in metrics if f"after/{m}" not in points)]
    )
    grouped = points.groupby("condition", sort=False)
    table = pd.DataFrame({"runs": grouped.size()})
    for metric in metrics:
        before = grouped[f"before/{metric}"].mean()
        after = grouped[f"after/{metric}"].mean()
        moved = (
            tracking.cells(before, ".3f")
            + " -> "
            + tracking.cells(after, ".3f")
            + " ("
            + tracking.cells(after - before, "+.3f")
            + ")"
        )
        table[metric] = moved.where(after.notna(), tracking.cells(before, ".3f"))
    return table


def log_comparison(client: MlflowClient, parent_run_id: str, runs: list[Run]) -> None:
    """The sweep at a glance on its parent run: the figure, and as the description the figure
    again and its numbers, so the parent's page shows both."""
    points, x_label = sweep_points(runs)
    if points.empty:
        return
    metrics = tracking.VIEW_METRICS
    client.log_figure(parent_run_id, sweep_comparison(points, metrics, x_label), COMPARISON_FIGURE)
    note = [
        f"**{len(points)} finished runs**: before -> after training (change), means over seeds.",
        "",
        # the UI renders the description's markdown: a URL relative to the UI's own address
        # reaches the artifact through the server that shows it (its get-artifact endpoint);
        # first, because the run page shows the top of a long description until "Show more"
        f"![sweep comparison](get-artifact?path={COMPARISON_FIGURE}&run_uuid={parent_run_id})",
        "",
        tracking.markdown_numbers(sweep_table(points, metrics)),
    ]
    tracking.log_tags(client, parent_run_id, {MLFLOW_RUN_NOTE: "\n".join(note)})


class MlflowSweepCallback(Callback):
    """Opens the sweep's parent MLflow run before the jobs and closes it after them."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        name = config.tracking.experiment_name
        self.client = tracking.get_client(config.tracking.tracking_uri)
        sweep_dir = Path(config.hydra.sweep.dir)
        self.parent_run_id = tracking.create_run(
            self.client,
            name,
            f"{name}-{sweep_dir.name}",
            {SWEEP_TAG: name, "sweep_dir": str(sweep_dir.resolve())},
        )
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
        runs = children(client, run_id)
        statuses = [child.info.status for child in runs]
        status = final_status(statuses, sweep_completed)
        counts = {f"sweep.children_{s.lower()}": statuses.count(s) for s in sorted(set(statuses))}
        tracking.log_tags(client, run_id, counts)
        try:
            log_comparison(client, run_id, runs)
        finally:
            client.set_terminated(run_id, status)
        print(f"MLflow sweep parent run {run_id}: {status}, {len(statuses)} child runs")
