"""MLflow runs always end with a status, on a real sqlite store."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from entropic import tracking


def status_after(uri: str, error: BaseException | None) -> str:
    client = tracking.get_client(uri)
    expect = pytest.raises(type(error)) if error else contextlib.nullcontext()
    with expect, tracking.mlflow_run(client, "exp", "run", {}) as run_id:
        if error:
            raise error
    return client.get_run(run_id).info.status


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "FINISHED"),  # a run that returns
        (RuntimeError("boom"), "FAILED"),  # a crash mid-training
        (KeyboardInterrupt(), "KILLED"),  # Ctrl-C
    ],
)
def test_runs_end_with_a_status(error, status, mlflow_uri):
    assert status_after(mlflow_uri, error) == status


def test_sigterm_marks_the_run_killed(mlflow_uri):
    """SLURM pre-emption sends SIGTERM; the run must not stay RUNNING."""
    client = tracking.get_client(mlflow_uri)
    with pytest.raises(KeyboardInterrupt), tracking.mlflow_run(client, "exp", "run", {}) as run_id:
        os.kill(os.getpid(), signal.SIGTERM)
    assert client.get_run(run_id).info.status == "KILLED"


def test_resumed_run_reopens_the_same_run(mlflow_uri):
    client = tracking.get_client(mlflow_uri)
    with pytest.raises(KeyboardInterrupt), tracking.mlflow_run(client, "exp", "run", {}) as run_id:
        raise KeyboardInterrupt
    with tracking.mlflow_run(client, "exp", "run", {}, resume_run_id=run_id) as resumed:
        assert resumed == run_id
    assert client.get_run(run_id).info.status == "FINISHED"


def test_flatten_gives_dotted_params():
    flat = tracking.flatten({"reward": {"name": "mixed", "labeled_fraction": 0.5}, "seed": 0})
    assert flat == {"reward.name": "mixed", "reward.labeled_fraction": "0.5", "seed": "0"}


def test_parallel_jobs_creating_one_experiment_share_it(mlflow_uri):
    client = tracking.get_client(mlflow_uri)
    first = tracking.get_or_create_experiment(client, "shared")
    assert tracking.get_or_create_experiment(client, "shared") == first
