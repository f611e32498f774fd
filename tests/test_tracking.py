"""MLflow bookkeeping on a real sqlite store: runs always end with a status, params are what ran,
runs say where their code came from, experiments carry the runs view `make ui` opens."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

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


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # why: the project's store keeps its artifacts beside it, named after it
        ("sqlite:////work/mlflow.db", "file:///work/mlflow-artifacts"),
        # why: two stores in one folder (make demo into /tmp/a.db and /tmp/b.db) share nothing
        ("sqlite:////tmp/runs/a.db", "file:///tmp/runs/a-artifacts"),
        ("sqlite:////tmp/runs/b.db", "file:///tmp/runs/b-artifacts"),
        # why: a server decides where its artifacts go
        ("http://127.0.0.1:5000", None),
    ],
)
def test_artifacts_go_to_a_folder_named_after_the_store(uri, expected):
    assert tracking.artifact_root(uri) == expected


def test_a_new_experiment_stores_its_artifacts_beside_the_store(tmp_path):
    client = tracking.get_client(f"sqlite:///{tmp_path / 'demo.db'}")
    experiment_id = tracking.get_or_create_experiment(client, "exp")
    location = client.get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "demo-artifacts" / "exp").as_uri()


def test_log_config_logs_the_values_used_and_keeps_the_requested_ones(mlflow_uri):
    cfg = OmegaConf.create({"trainer": {"num_generations": 8, "epochs": 2}, "seed": 0})
    client = tracking.get_client(mlflow_uri)
    with tracking.mlflow_run(client, "exp", "run", {}) as run_id:
        tracking.log_config(client, run_id, cfg, {"trainer.num_generations": (8, 4)})
    params = client.get_run(run_id).data.params
    # why: filtering or grouping runs by a param must find the value the run used
    assert params["trainer.num_generations"] == "4"
    assert params["requested.trainer.num_generations"] == "8"
    # why: an unchanged value has one param only
    assert params["trainer.epochs"] == "2" and "requested.trainer.epochs" not in params
    with tracking.mlflow_run(client, "exp", "run", {}) as run_id, pytest.raises(KeyError):
        tracking.log_config(client, run_id, cfg, {"trainer.num_generation": (8, 4)})


def make_repo(path: Path) -> Path:
    """A git repository with one commit: a tracked file and a .gitignore."""
    path.mkdir()
    for command in (
        ["init", "-q"],
        ["config", "user.email", "test@example.com"],
        ["config", "user.name", "test"],
    ):
        subprocess.run(["git", "-C", str(path), *command], check=True)
    (path / "code.py").write_text("x = 1\n")
    (path / ".gitignore").write_text("outputs/\n")
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", "first"], check=True)
    (path / "outputs").mkdir()
    return path


@pytest.mark.parametrize(
    ("change", "dirty"),
    [
        # why: a checkout at its commit ran exactly the committed code
        pytest.param(lambda repo: None, "False", id="clean"),
        # why: an edited file is code no commit holds
        pytest.param(lambda repo: (repo / "code.py").write_text("x = 2\n"), "True", id="edited"),
        # why: a new file (an experiment config not yet added) ran too
        pytest.param(lambda repo: (repo / "new.yaml").write_text("a: 1\n"), "True", id="new"),
        # why: ignored outputs of earlier runs are not code
        pytest.param(
            lambda repo: (repo / "outputs" / "log.txt").write_text("done\n"), "False", id="ignored"
        ),
    ],
)
def test_source_tags_name_the_commit_and_mark_a_dirty_checkout(tmp_path, change, dirty):
    repo = make_repo(tmp_path / "repo")
    change(repo)
    tags = tracking.source_tags(repo, entry_point=str(repo / "entropic" / "run.py"))
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    assert tags["git_dirty"] == dirty
    # why: the UI's Source column shows the entry point, relative to the project
    assert tags["mlflow.source.name"] == "entropic/run.py"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"]


def test_source_tags_outside_a_checkout_name_the_entry_point_only(tmp_path):
    tags = tracking.source_tags(tmp_path, entry_point=str(tmp_path / "run.py"))
    assert "mlflow.source.git.commit" not in tags and "git_dirty" not in tags
    assert tags["mlflow.source.name"] == "run.py"


def test_a_new_run_carries_the_source_of_this_checkout(mlflow_uri):
    """On the real project checkout: its commit, and its changes when it has any."""
    client = tracking.get_client(mlflow_uri)
    with tracking.mlflow_run(client, "exp", "run", {"reward": "mixed"}) as run_id:
        pass
    run = client.get_run(run_id)
    root = tracking.PROJECT_ROOT
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True)
    assert run.data.tags["mlflow.source.git.commit"] == head.stdout.decode().strip()
    assert run.data.tags["reward"] == "mixed"  # the job's own tags beside them
    dirty = run.data.tags["git_dirty"] == "True"
    logged = {a.path for a in client.list_artifacts(run_id, "source")}
    # why: a dirty run's code is the commit plus the diff logged beside it
    assert (tracking.DIFF_ARTIFACT in logged) == dirty


def test_every_experiment_gets_the_runs_view(mlflow_uri):
    client = tracking.get_client(mlflow_uri)
    new = tracking.get_or_create_experiment(client, "new")
    # an experiment logged before the view existed gets it when a run opens there
    old = client.create_experiment("old")
    tracking.get_or_create_experiment(client, "old")
    for experiment_id in (new, old):
        view = json.loads(client.get_experiment(experiment_id).tags[tracking.RUNS_VIEW_TAG])
        columns = view["selectedColumns"]
        # why: before, after and change of each main metric side by side in the runs table
        for name in tracking.VIEW_METRICS:
            expected = [f"metrics.`{stage}/{name}`" for stage in tracking.STAGES]
            start = columns.index(expected[0])
            assert columns[start : start + 3] == expected
        assert "params.`reward.labeled_fraction`" in columns
        # why: without an order MLflow sorts metric columns by name: every after/* first
        assert view["columnOrder"] == columns
