"""MLflow bookkeeping (the `tracking` config group): one run per job, always closed with a status.

Everything goes through `MlflowClient` with an explicit run id rather than the fluent API, because
transformers' MLflowCallback owns a fluent run of its own and ends it in `on_train_end`; TRL's
metrics reach our run through `entropic.training.MlflowMetricsCallback` instead. This module
imports neither torch nor transformers, so `make ui` (entropic/ui.py) starts in a second.

The default store is the sqlite file `mlflow.db` in the project root (MLflow 3's file store is
deprecated), with artifacts beside it in a folder named after it (`mlflow-artifacts/`);
`MLFLOW_TRACKING_URI` or `tracking.tracking_uri` override it. A run that raises ends FAILED, one
interrupted by Ctrl-C or SIGTERM (a SLURM pre-emption) ends KILLED, never RUNNING.

What a researcher reads in the UI is decided here too: every run carries MLflow's source tags
(commit, branch, entry point, user) and `git_dirty`, and every experiment a saved runs-table view
(`RUNS_VIEW_TAG`) whose columns are the before/after/change metrics the job logs.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag, SourceType
from mlflow.tracking import MlflowClient
from mlflow.utils import mlflow_tags
from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The store when neither MLFLOW_TRACKING_URI nor tracking.tracking_uri names one.
PROJECT_STORE_URI = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
# MLflow rejects longer param values.
MAX_PARAM_LENGTH = 6000
# MLflow's log_batch accepts at most this many params per call.
PARAM_BATCH = 100
# A sqlite store's artifacts go to <store name><this>/ beside it: mlflow.db -> mlflow-artifacts/.
ARTIFACTS_SUFFIX = "-artifacts"
# Where a value the run changed from the config (the CPU caps) keeps the value that was asked for.
REQUESTED_PREFIX = "requested."
# The three single-value metric groups of the held-out evaluation (entropic.jobs.train): the base
# model at step 0, the trained model at the last step, and after - before. Single values, because
# the runs table and the compare view show a metric's latest value only.
STAGES = ("before", "after", "change")
# Decimals of those single values: a table cell shows 0.1727 where 0.17272727272727273 would be
# cut off (an evaluation on 200 questions moves accuracy in steps of 0.005); eval/* keeps all.
STAGE_DECIMALS = 4
# The metrics the runs view shows for each stage (all of evaluate.SUMMARY_NAMES are logged).
VIEW_METRICS = ("accuracy", "calibration_gap", "ece", "auroc")
# Width of a metric column in the runs view, px: wide enough for "before/calibration_gap".
VIEW_METRIC_WIDTH = 150
# The params that tell runs apart in the runs view.
VIEW_PARAMS = ("reward.name", "reward.labeled_fraction", "model.name", "seed")
# MLflow's shared-view mechanism: the UI loads the view state stored in the experiment tag
# mlflow.sharedViewState.<key> when its URL carries ?viewStateShareKey=<key>.
RUNS_VIEW_KEY = "entropic"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"
# Set on every run: True when the checkout had changes the commit does not hold.
DIRTY_TAG = "git_dirty"
# A dirty checkout's changes, logged beside the run so the code that ran can be rebuilt.
DIFF_ARTIFACT = "source/git_diff.patch"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or PROJECT_STORE_URI


def sqlite_path(tracking_uri: str) -> Path | None:
    """The file of a sqlite store (None for any other kind of store)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///"))
    return None


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a sqlite store, in a folder named after it: not under whatever the cwd
    happens to be, and not in one generic `mlartifacts/` that every store in a folder would
    share (`runs/a.db` -> `runs/a-artifacts/`)."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    return path.parent.joinpath(path.stem + ARTIFACTS_SUFFIX).absolute().as_uri()


def get_client(tracking_uri: str | None = None) -> MlflowClient:
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def runs_view() -> str:
    """The runs-table view `make ui` opens (MLflow's view-state JSON): before/after/change of the
    main eval metrics side by side, the params that tell runs apart, source and commit. Without
    it the table shows no metric or param column until the user picks them."""
    metrics = [f"metrics.`{stage}/{name}`" for name in VIEW_METRICS for stage in STAGES]
    columns = [
        *metrics,
        *(f"params.`{name}`" for name in VIEW_PARAMS),
        "attributes.`Source`",
        "attributes.`Version`",
        f"tags.`{DIRTY_TAG}`",
    ]
    # columnOrder: in this order, metrics first (beside the run names, where a laptop screen
    # shows them without scrolling), not MLflow's, which puts parameters first and sorts the
    # metrics by name (every after/* before every before/*)
    view = {
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": dict.fromkeys(metrics, VIEW_METRIC_WIDTH),
    }
    return json.dumps(view)


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id; a new experiment gets its artifact folder and the runs view, an
    older one the current runs view."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(RUNS_VIEW_TAG) != runs_view():
            client.set_experiment_tag(experiment.experiment_id, RUNS_VIEW_TAG, runs_view())
        return experiment.experiment_id
    root = artifact_root(client.tracking_uri)
    try:
        return client.create_experiment(
            name, artifact_location=root and f"{root}/{name}", tags={RUNS_VIEW_TAG: runs_view()}
        )
    except mlflow.exceptions.MlflowException:
        # Several sweep jobs may race to create it; the loser reads the winner's.
        return client.get_experiment_by_name(name).experiment_id


def git(root: Path, *args: str) -> str | None:
    """A git command's output in `root`; None where git or the repository is missing."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def source_tags(root: Path = PROJECT_ROOT, entry_point: str | None = None) -> dict[str, str]:
    """MLflow's standard source tags, which the UI shows as Source, Version and User, and
    `git_dirty`: whether files differ from the commit (changed or untracked, not ignored).

    The entry point is the script that started the process (`entropic/run.py` for the CLI and
    the sweeps), relative to the project. Outside a git checkout only the entry point and the
    user are known.
    """
    script = Path(entry_point or sys.argv[0]).resolve()
    tags = {
        mlflow_tags.MLFLOW_SOURCE_NAME: str(
            script.relative_to(root) if script.is_relative_to(root) else script
        ),
        mlflow_tags.MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL),
        mlflow_tags.MLFLOW_USER: getpass.getuser(),
    }
    commit = git(root, "rev-parse", "HEAD")
    if commit is None:
        return tags
    tags[mlflow_tags.MLFLOW_GIT_COMMIT] = commit.strip()
    tags[DIRTY_TAG] = str(bool(git(root, "status", "--porcelain")))
    branch = (git(root, "rev-parse", "--abbrev-ref", "HEAD") or "").strip()
    if branch and branch != "HEAD":  # HEAD: a detached checkout has no branch
        tags[mlflow_tags.MLFLOW_GIT_BRANCH] = branch
    remote = (git(root, "config", "--get", "remote.origin.url") or "").strip()
    if remote:
        tags[mlflow_tags.MLFLOW_GIT_REPO_URL] = remote
    return tags


def working_tree_changes(root: Path = PROJECT_ROOT) -> str:
    """What a dirty checkout holds beyond its commit: `git diff HEAD` and the untracked files."""
    diff = git(root, "diff", "HEAD") or ""
    untracked = git(root, "ls-files", "--others", "--exclude-standard") or ""
    if untracked:
        diff += "\n# untracked files (not in the diff):\n" + "".join(
            f"#   {name}\n" for name in untracked.splitlines()
        )
    return diff


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into MLflow params (dotted keys, values as text)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), PARAM_BATCH):
        client.log_batch(run_id, params=items[start : start + PARAM_BATCH])


def log_evaluation(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, Mapping[str, float]],
    seconds: float,
    step: int,
) -> None:
    """An evaluation's metrics by prefix (eval/ for the held-out split, eval/<set>/ for each
    other evaluation set) and the wall time of all of them as time/eval_seconds, at its step:
    summed over a run's steps (before, periodic, after), what evaluation cost the run."""
    for prefix, values in metrics.items():
        log_metrics(client, run_id, values, step, prefix)
    log_metrics(client, run_id, {"eval_seconds": seconds}, step, "time/")


def log_metrics(
    client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int, prefix: str = ""
) -> None:
    timestamp = int(time.time() * 1000)
    batch = [
        Metric(f"{prefix}{k}", float(v), timestamp, step)
        for k, v in metrics.items()
        if isinstance(v, int | float)
    ]
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_stage(client: MlflowClient, run_id: str, stage: str, values: Mapping[str, float]) -> None:
    """One stage of the evaluation (`STAGES`) as single values `<stage>/<metric>`, rounded to
    `STAGE_DECIMALS` for the runs table and the compare view.

    All at step 0, whatever the stage: a single value has no step, and MLflow's charts view draws
    a metric no run logged past step 0 as a bar per run, where the trained runs' last steps
    (16 for one run, 32 for the next) would make it a line chart of scattered dots.
    """
    rounded = {name: round(float(value), STAGE_DECIMALS) for name, value in values.items()}
    log_metrics(client, run_id, rounded, step=0, prefix=f"{stage}/")


def log_config(
    client: MlflowClient,
    run_id: str,
    cfg: DictConfig,
    changed: Mapping[str, tuple[Any, Any]] | None = None,
) -> None:
    """The config the run used as params (flattened), and the composed config as a YAML artifact.

    `changed` maps a dotted key to (requested, used) for every value the run changed from the
    config (the CPU caps): its param is the value used, so filtering and grouping runs by it
    tells the truth, and `requested.<key>` keeps the value that was asked for. `config.yaml`
    stays the composed config, which reruns the same job.
    """
    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = flatten(resolved)
    for key, (requested, used) in (changed or {}).items():
        if key not in params:
            raise KeyError(f"{key} is not a config key; the changed values must name one")
        params[key] = str(used)
        params[REQUESTED_PREFIX + key] = str(requested)
    log_params(client, run_id, params)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(OmegaConf.to_yaml(resolved))
        client.log_artifact(run_id, str(path))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the job is, so it unwinds like Ctrl-C."""


@contextlib.contextmanager
def mlflow_run(
    client: MlflowClient,
    experiment_name: str,
    run_name: str | None,
    tags: Mapping[str, str],
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """Open (or reopen) a run and always close it: FINISHED, FAILED or KILLED.

    A new run gets the source tags of the code that runs it (`source_tags`), and a dirty
    checkout's changes as `source/git_diff.patch`.
    """
    if resume_run_id:
        run_id = resume_run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    else:
        run_id = create_run(client, experiment_name, run_name, tags, parent_run_id)

    def _on_sigterm(signum, frame):
        raise _Terminated()

    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: no handler, Ctrl-C still works
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield run_id
    except KeyboardInterrupt:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def create_run(
    client: MlflowClient,
    experiment_name: str,
    run_name: str | None,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
) -> str:
    """A new run with the source tags (a job's, a sweep's parent), its id returned."""
    source = source_tags()
    all_tags = {**source, **tags}
    if parent_run_id:
        all_tags[mlflow_tags.MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = client.create_run(
        get_or_create_experiment(client, experiment_name), run_name=run_name, tags=all_tags
    )
    if source.get(DIRTY_TAG) == "True":
        client.log_text(run.info.run_id, working_tree_changes(), DIFF_ARTIFACT)
    return run.info.run_id


def cells(values: pd.Series, form: str) -> pd.Series:
    """Numbers as table cells in `form` (".3f", "+.3f"); "-" where there is none (NaN: a run
    that did not train has no after, an evaluation without parsed confidences no ECE)."""
    return values.map(lambda v: "-" if pd.isna(v) else format(v, form))


def markdown_numbers(table: pd.DataFrame) -> str:
    """A table of numbers formatted as text, as markdown for a run's description: right-aligned
    and kept as formatted (tabulate would print 0.000 as 0)."""
    align = ("left", *["right"] * len(table.columns))
    return table.to_markdown(disable_numparse=True, colalign=align)


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
