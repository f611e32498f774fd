"""MLflow bookkeeping (the `tracking` config group): one run per job, always closed with a status.

Everything goes through `MlflowClient` with an explicit run id rather than the fluent API, because
transformers' MLflowCallback owns a fluent run of its own and ends it in `on_train_end`; TRL's
metrics reach our run through `MlflowMetricsCallback` instead.

The default store is the sqlite file `mlflow.db` in the project root (MLflow 3's file store is
deprecated), with artifacts beside it in `mlartifacts/`; `MLFLOW_TRACKING_URI` or
`tracking.tracking_uri` override it. A run that raises ends FAILED, one interrupted by Ctrl-C or
SIGTERM (a SLURM pre-emption) ends KILLED, never RUNNING.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# MLflow rejects longer param values.
MAX_PARAM_LENGTH = 6000
# MLflow's log_batch accepts at most this many params per call.
PARAM_BATCH = 100


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def artifact_root(tracking_uri: str) -> str | None:
    """Keep artifacts beside a sqlite store instead of under whatever the cwd happens to be."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def get_client(tracking_uri: str | None = None) -> MlflowClient:
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = artifact_root(client.tracking_uri)
    try:
        return client.create_experiment(name, artifact_location=root and f"{root}/{name}")
    except mlflow.exceptions.MlflowException:
        # Several sweep jobs may race to create it; the loser reads the winner's.
        return client.get_experiment_by_name(name).experiment_id


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
    timestamp = int(pd.Timestamp.now().timestamp() * 1000)
    batch = [
        Metric(f"{prefix}{k}", float(v), timestamp, step)
        for k, v in metrics.items()
        if isinstance(v, int | float)
    ]
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_config(client: MlflowClient, run_id: str, cfg: DictConfig) -> None:
    """The resolved config as params (flattened) and as a YAML artifact."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    log_params(client, run_id, flatten(resolved))
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
    """Open (or reopen) a run and always close it: FINISHED, FAILED or KILLED."""
    if resume_run_id:
        run_id = resume_run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    else:
        all_tags = dict(tags)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(
            get_or_create_experiment(client, experiment_name),
            run_name=run_name,
            tags=all_tags,
        )
        run_id = run.info.run_id

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


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


class MlflowMetricsCallback(TrainerCallback):
    """Sends the Trainer's logged metrics (TRL's rewards, KL, our calibration/*) to our run."""

    def __init__(self, client: MlflowClient, run_id: str, prefix: str = "train/"):
        self.client = client
        self.run_id = run_id
        self.prefix = prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            log_metrics(self.client, self.run_id, logs, step=state.global_step, prefix=self.prefix)
