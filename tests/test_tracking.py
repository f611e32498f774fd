"""MLflow runs always end with a status, on a real sqlite store."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal

import pytest
from mlflow.tracking import MlflowClient

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


class RacingClient(MlflowClient):
    """A real client that, after its first lookup, waits until every job has looked up: all of
    them find no experiment and all try to create it, the race that sweep jobs can run into."""

    def __init__(self, uri: str, barrier):
        super().__init__(uri)
        self.barrier = barrier
        self.looked_up = False

    def get_experiment_by_name(self, name):
        experiment = super().get_experiment_by_name(name)
        if not self.looked_up:
            self.looked_up = True
            self.barrier.wait()
        return experiment


def create_shared_experiment(uri: str, barrier, results) -> None:
    """One sweep job: look up or create the experiment "shared" and report its id."""
    results.put(tracking.get_or_create_experiment(RacingClient(uri, barrier), "shared"))


def test_parallel_jobs_creating_one_experiment_share_it(mlflow_uri):
    # As in a sweep, the parent process creates the store before the jobs start.
    tracking.get_client(mlflow_uri).search_experiments()
    workers = 2  # each job imports transformers (a spawn), so two: one winner, one loser
    context = multiprocessing.get_context("spawn")
    # the timeout frees a job whose partner died before the barrier
    barrier, results = context.Barrier(workers, timeout=120), context.Queue()
    processes = [
        context.Process(target=create_shared_experiment, args=(mlflow_uri, barrier, results))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    # why: one job creates it; the rest lose the race and must read the winner's, not crash
    assert [p.exitcode for p in processes] == [0] * workers
    ids = [results.get(timeout=10) for _ in range(workers)]
    client = MlflowClient(mlflow_uri)
    (shared,) = [e for e in client.search_experiments() if e.name == "shared"]
    assert ids == [shared.experiment_id] * workers
