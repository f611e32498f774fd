"""Sweeps: each versioned sweep expands to its grid of valid configs; a real smoke sweep leaves one
MLflow parent run with tagged children; jobs writing to one sqlite store at once lose nothing."""

from __future__ import annotations

import copy
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf, open_dict

from entropic import tracking
from entropic.config import RunConfig, check_reward_parameters
from entropic.sweeps import (
    COMPARISON_FIGURE,
    PARENT_RUN_FILE,
    children,
    final_status,
    grid_points,
    log_comparison,
    sweep_points,
    sweep_table,
    swept_values,
)
from tests.conftest import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
SWEEPS_DIR = ROOT / "sweeps"
SWEEPS = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
SEEDS = (0, 1, 2)


def compose_sweep(sweep: str, overrides: list[str]):
    """Compose like `python -m entropic.run -cd sweeps -cn <sweep>`: the CLI keeps conf/ (the
    entry point's config path) on the search path next to sweeps/; here we name it."""
    with initialize_config_dir(config_dir=str(SWEEPS_DIR), version_base="1.3"):
        return compose(
            sweep,
            overrides=[f"hydra.searchpath=[file://{CONF_DIR}]", *overrides],
            return_hydra_config=True,
        )


def point_config(sweep: str, point: list[str], tmp_path: Path) -> RunConfig:
    """One job's validated config, resolved the way Hydra's run_job resolves it."""
    cfg = compose_sweep(sweep, [*point, f"output_dir={tmp_path}"])
    HydraConfig.instance().set_config(cfg)  # `${hydra:...}` (the sweep_point tag) resolves
    job = copy.deepcopy(cfg)
    with open_dict(job):
        del job["hydra"]
    return RunConfig.from_hydra(job)


def expand(sweep: str) -> list[list[str]]:
    params = compose_sweep(sweep, []).hydra.sweeper.params
    return grid_points(OmegaConf.to_container(params), [])


def points(runs, seeds=SEEDS):
    return {(*run, seed) for run in runs for seed in seeds}


# Each point as (pool, labeled_fraction, epochs, trains?, prompt, seed).
GRIDS = {
    # why: Run C's pool and epochs, with every labeled share from pure stability to pure Brier
    "mix_ratio": points([(1600, lf, 2, True, "default") for lf in (0.0, 0.25, 0.5, 0.75, 1.0)]),
    # why: Runs A, B, C of the reference: one epoch vs two of pure Brier, two of 50/50
    "scarce_collapse": points(
        [(1600, 1.0, 1, True, "default"), (1600, 1.0, 2, True, "default")]
        + [(1600, 0.5, 2, True, "default")]
    ),
    # why: the abundant pool for one epoch, labels 100% / 50% / 0%
    "abundant_ablation": points([(5000, lf, 1, True, "default") for lf in (1.0, 0.5, 0.0)]),
    # why: the calibration prompt without training against Run C with the default prompt, and
    # against the read-out (one epoch over its 512 questions, examples stating 60, 40, 20)
    "rl_vs_prompting": points(
        [
            (1600, 0.5, 1, False, "calibration_aggressive"),
            (1600, 0.5, 2, True, "default"),
            (1600, 0.5, 1, True, "middle_scale"),
        ]
    ),
}


def test_every_sweep_has_a_grid_here():
    assert sorted(GRIDS) == SWEEPS


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_expands_to_its_grid(sweep, tmp_path):
    configs = [point_config(sweep, point, tmp_path) for point in expand(sweep)]
    got = [
        (
            c.data.train_size,
            c.reward.labeled_fraction,
            c.trainer.epochs,
            c.train,
            c.prompt.name,
            c.seed,
        )
        for c in configs
    ]
    assert len(got) == len(GRIDS[sweep])  # no point twice
    assert set(got) == GRIDS[sweep]
    for config in configs:
        # why: no point sets a reward parameter its reward ignores (a brier point with a mix)
        check_reward_parameters(config.reward)
        # why: parent and children share the sweep's MLflow experiment, so the UI nests them
        assert config.tracking.experiment_name == sweep
        assert config.tags["sweep"] == sweep
        assert f"seed={config.seed}" in config.tags["sweep_point"]
        # why: every sweep logs eval/* during training, for the reports' curves
        assert config.trainer.eval_every_n_steps > 0
        # why: outside a running sweep no parent run exists
        assert config.tracking.parent_run_id is None


@pytest.mark.parametrize(
    ("params", "command_line", "expected"),
    [
        # the grid is a product, in the order Hydra launches it
        (
            {"a": "1,2", "seed": "0,1"},
            [],
            [["a=1", "seed=0"], ["a=1", "seed=1"]] + [["a=2", "seed=0"], ["a=2", "seed=1"]],
        ),
        # a command-line key replaces its list: `make sweep ARGS=seed=0` runs one seed
        ({"a": "1,2", "seed": "0,1"}, ["seed=0"], [["a=1", "seed=0"], ["a=2", "seed=0"]]),
        # a fixed command-line override joins every point
        ({"a": "1,2"}, ["compute=cpu"], [["a=1", "compute=cpu"], ["a=2", "compute=cpu"]]),
    ],
)
def test_grid_points_follow_hydras_basic_sweeper(params, command_line, expected):
    assert grid_points(params, command_line) == expected


def test_swept_values_list_each_keys_values_once():
    points = [["a=1", "seed=0"], ["a=1", "seed=1"], ["a=2", "seed=0"]]
    assert swept_values(points) == {"sweep.a": "1,2", "sweep.seed": "0,1"}


@pytest.mark.parametrize(
    ("statuses", "completed", "expected"),
    [
        (["FINISHED", "FINISHED"], True, "FINISHED"),  # every point ran
        (["FINISHED", "FAILED"], True, "FAILED"),  # one crash fails the sweep
        (["FINISHED", "KILLED"], False, "KILLED"),  # Ctrl-C / SIGTERM in a job
        (["FAILED", "KILLED"], False, "FAILED"),  # a failure outranks an interruption
        ([], False, "FAILED"),  # stopped before any run: a rejected config
        (["FINISHED"], False, "FAILED"),  # stopped early though what ran finished
    ],
)
def test_parent_status_is_the_worst_outcome(statuses, completed, expected):
    assert final_status(statuses, completed) == expected


def test_smoke_sweep_makes_one_parent_with_tagged_children(smoke_sweep):
    assert smoke_sweep.done.returncode == 0, smoke_sweep.done.stderr[-3000:]
    client = MlflowClient(smoke_sweep.uri)
    experiment = client.get_experiment_by_name("rl_vs_prompting")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (parent,) = parents
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(kids) == 2 and len(runs) == 3
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep"] == "rl_vs_prompting"
    assert parent.data.params["sweep.points"] == "2"
    assert parent.data.params["sweep.experiment"] == "prompting_baseline,scarce_mixed"
    assert parent.data.params["sweep.seed"] == "0"
    assert (smoke_sweep.sweep_dir / PARENT_RUN_FILE).read_text() == parent.info.run_id
    by_experiment = {r.data.params["name"]: r for r in kids}
    assert set(by_experiment) == {"prompting_baseline", "scarce_mixed"}
    for name, run in by_experiment.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweep"] == "rl_vs_prompting"
        point = run.data.tags["sweep_point"].split(",")
        assert f"experiment={name}" in point and "seed=0" in point
    # why: the baseline only evaluates (step 0); Run C also evaluates at step 1 (periodic, every
    # step) and at its last step 2, which the reports' training curves draw
    for name, steps in (("prompting_baseline", [0]), ("scarce_mixed", [0, 1, 2])):
        run_id = by_experiment[name].info.run_id
        for metric in ("accuracy", "calibration_gap"):
            history = client.get_metric_history(run_id, f"eval/{metric}")
            assert sorted(m.step for m in history) == steps, (name, metric)
    assert by_experiment["prompting_baseline"].data.params["prompt.name"] == (
        "calibration_aggressive"
    )
    assert "parent run" in smoke_sweep.done.stdout
    # why: the sweep's comparison is on its parent (the figure and the table in its description)
    assert COMPARISON_FIGURE in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "experiment=scarce_mixed" in parent.data.tags["mlflow.note.content"]


def sweep_in_a_process(
    tmp_path: Path, uri: str, arguments: list[str]
) -> tuple[subprocess.CompletedProcess, str]:
    """`python -m entropic.run` with `arguments` (a multirun), on the MLflow store at `uri`."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    env.pop("ENTROPIC_PARENT_RUN_ID", None)
    done = subprocess.run(
        [sys.executable, "-m", "entropic.run", *arguments, f"hydra.sweep.dir={tmp_path / 's'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, uri


def test_a_sweep_stopped_by_a_rejected_config_leaves_its_parent_failed(tmp_path, mlflow_uri):
    """A bad value exits the first job with status 2; the exit hook still closes the parent."""
    done, uri = sweep_in_a_process(
        tmp_path,
        mlflow_uri,
        ["-cd", "sweeps", "-cn", "rl_vs_prompting", "seed=0", "reward.labeled_fraction=1.5"],
    )
    assert done.returncode == 2 and "reward.labeled_fraction" in done.stderr
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("rl_vs_prompting").experiment_id])
    assert parent.info.status == "FAILED"


def test_a_sweep_under_the_kept_heap_is_refused_before_its_first_job_loads(tmp_path, mlflow_uri):
    """malloc=keep in one process grew a sweep to 22 GB by its third job: refused up front."""
    done, _ = sweep_in_a_process(
        tmp_path,
        mlflow_uri,
        ["-m", "+experiment=scarce_mixed", "seed=0,1", "compute=cpu"]
        + ["compute.cpu_scale.malloc=keep"],
    )
    assert done.returncode == 2
    assert "compute.cpu_scale.malloc=keep" in done.stderr and "Fix:" in done.stderr
    # refused in the first job's checks: no job reached evaluation
    assert "Evaluating the base model" not in done.stderr + done.stdout


def write_metrics(uri: str, worker: int, barrier, count: int) -> None:
    """One parallel job: open a run, log `count` metric steps one call at a time, close it."""
    client = tracking.get_client(uri)
    barrier.wait()  # all workers write at the same moment
    with tracking.mlflow_run(client, "parallel", f"worker{worker}", {}) as run_id:
        for step in range(count):
            tracking.log_metrics(client, run_id, {"value": worker * 1000 + step}, step, "x/")


def test_parallel_jobs_writing_one_sqlite_store_lose_nothing(mlflow_uri):
    """MLflow's sqlite store waits on a locked database (busy_timeout) instead of failing."""
    uri = mlflow_uri
    # As in a sweep, the parent process creates the store before any job writes to it.
    tracking.get_or_create_experiment(tracking.get_client(uri), "parallel")
    workers, count = 3, 50
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    processes = [
        context.Process(target=write_metrics, args=(uri, w, barrier, count)) for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * workers
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"worker{w}" for w in range(workers)]
    for run in runs:
        worker = int(run.info.run_name.removeprefix("worker"))
        history = client.get_metric_history(run.info.run_id, "x/value")
        assert sorted((m.step, m.value) for m in history) == [
            (step, worker * 1000 + step) for step in range(count)
        ]
        assert run.info.status == "FINISHED"


def logged_children(client: MlflowClient, points: list[tuple[str, str, float | None]]):
    """A parent and one child per (sweep point, status, after/accuracy), as entropic.sweeps and
    entropic.jobs.train leave them: before/* and after/* (None: the point did not train)."""
    experiment_id = tracking.get_or_create_experiment(client, "sweep")
    parent = tracking.create_run(client, "sweep", "parent", {"sweep": "sweep"})
    for point, status, accuracy in points:
        run_id = tracking.create_run(client, "sweep", point, {"sweep_point": point}, parent)
        seed = point.rsplit("seed=", 1)[-1]
        tracking.log_params(client, run_id, {"seed": seed})
        before = {name: 0.2 for name in tracking.VIEW_METRICS}
        tracking.log_stage(client, run_id, "before", before)
        if accuracy is not None:
            after = {**before, "accuracy": accuracy}
            tracking.log_stage(client, run_id, "after", after)
        client.set_terminated(run_id, status)
    return parent, experiment_id


@pytest.mark.parametrize(
    ("points", "x_label", "conditions", "x"),
    [
        # why: the mix-ratio sweep is a curve over the labeled share; what every point shares
        # (compute=cpu) and the seed do not tell conditions apart
        (
            [
                ("compute=cpu,reward.labeled_fraction=0.5,seed=0", "FINISHED", 0.3),
                ("compute=cpu,reward.labeled_fraction=0.5,seed=1", "FINISHED", 0.4),
                ("compute=cpu,reward.labeled_fraction=0,seed=0", "FINISHED", 0.1),
            ],
            "reward.labeled_fraction",
            ["reward.labeled_fraction=0.5", "reward.labeled_fraction=0"],
            [0.5, 0.5, 0.0],
        ),
        # why: named conditions (experiments) are placed in launch order along an axis named
        # after their key; a point that did not train has before/* only and is still drawn
        (
            [
                ("experiment=prompting_baseline,seed=0", "FINISHED", None),
                ("experiment=scarce_mixed,seed=0", "FINISHED", 0.3),
            ],
            "experiment",
            ["experiment=prompting_baseline", "experiment=scarce_mixed"],
            [0, 1],
        ),
        # why: points that differ in two keys have no one axis: conditions in launch order
        (
            [
                ("a=1,b=2,seed=0", "FINISHED", 0.3),
                ("a=2,b=3,seed=0", "FINISHED", 0.4),
            ],
            "condition",
            ["a=1,b=2", "a=2,b=3"],
            [0, 1],
        ),
        # why: a failed or killed point has no numbers to compare
        (
            [
                ("experiment=a,seed=0", "FINISHED", 0.3),
                ("experiment=b,seed=0", "FAILED", 0.9),
            ],
            "condition",
            ["all"],
            [0],
        ),
    ],
)
def test_sweep_points_tell_the_conditions_apart(points, x_label, conditions, x, mlflow_uri):
    client = tracking.get_client(mlflow_uri)
    parent, _ = logged_children(client, points)
    table, label = sweep_points(children(client, parent))
    assert label == x_label
    assert sorted(table["condition"].unique()) == sorted(conditions)
    assert sorted(table["x"]) == sorted(x)


def test_the_sweep_parent_shows_its_comparison(mlflow_uri):
    client = tracking.get_client(mlflow_uri)
    parent, _ = logged_children(
        client,
        [
            ("reward.labeled_fraction=0,seed=0", "FINISHED", 0.1),
            ("reward.labeled_fraction=1.0,seed=0", "FINISHED", 0.3),
            ("reward.labeled_fraction=1.0,seed=1", "FINISHED", 0.5),
        ],
    )
    log_comparison(client, parent, children(client, parent))
    logged = {a.path for a in client.list_artifacts(parent)}
    # why: the mix-ratio curve is one click away, on the parent's page
    assert COMPARISON_FIGURE in logged
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    # the description holds the same numbers: labeled share 1.0 over two seeds, mean 0.4
    row = next(line for line in note.splitlines() if "labeled_fraction=1.0" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:3] == ["2", "0.200 -> 0.400 (+0.200)"]
    # why: the parent's page shows the figure in its description, served by the UI's server
    assert f"get-artifact?path={COMPARISON_FIGURE}&run_uuid={parent}" in note


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # why: the mean over seeds before and after, and their difference, in one cell
        (
            [("lf=1", 0.2, 0.3), ("lf=1", 0.2, 0.5)],
            {"lf=1": (2, "0.200 -> 0.400 (+0.200)")},
        ),
        # why: a condition that does not train (the prompting baseline) has its one value only
        (
            [("prompted", 0.3, None), ("rl", 0.2, 0.25)],
            {"prompted": (1, "0.300"), "rl": (1, "0.200 -> 0.250 (+0.050)")},
        ),
    ],
)
def test_the_sweep_table_has_one_cell_per_metric(rows, expected):
    points = pd.DataFrame(
        [{"condition": c, "before/accuracy": b, "after/accuracy": a} for c, b, a in rows]
    )
    table = sweep_table(points, ("accuracy",))
    assert {c: (row["runs"], row["accuracy"]) for c, row in table.iterrows()} == expected
