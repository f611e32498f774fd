"""`make ui` (entropic/ui.py): the command a job prints, the URL it opens, the light server; and,
where Chromium is installed, the real UI on a real store showing before/after/change."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from entropic import tracking, ui

ROOT = tracking.PROJECT_ROOT


@pytest.mark.parametrize(
    ("uri", "cwd", "expected"),
    [
        # why: the project's own store in the project folder: what the Makefile opens by default
        (tracking.PROJECT_STORE_URI, ROOT, "make ui"),
        # why: a run in another store must name it, or make ui opens ./mlflow.db
        (
            "sqlite:////tmp/demo/mlflow.db",
            ROOT,
            "MLFLOW_TRACKING_URI=sqlite:////tmp/demo/mlflow.db make ui",
        ),
        # why: typed elsewhere, make must be told where the Makefile is
        (tracking.PROJECT_STORE_URI, Path("/"), f"make -C {ROOT} ui"),
        # why: a path with a space still makes one shell word
        (
            "sqlite:////tmp/my runs/mlflow.db",
            ROOT,
            "MLFLOW_TRACKING_URI='sqlite:////tmp/my runs/mlflow.db' make ui",
        ),
    ],
)
def test_the_printed_command_opens_the_store_the_run_went_to(uri, cwd, expected):
    assert ui.ui_command(uri, cwd) == expected


def logged_runs(uri: str) -> dict[str, str]:
    """Two experiments with a run each, as entropic.jobs.train leaves them (single-value
    before/after/change metrics, the runs view); the second is the newer. Returns name ->
    experiment id."""
    client = tracking.get_client(uri)
    ids = {}
    for name, accuracy in (("older", 0.2), ("newer", 0.3)):
        with tracking.mlflow_run(client, name, f"{name}-run", {}) as run_id:
            tracking.log_params(client, run_id, {"reward.labeled_fraction": "0.5", "seed": "0"})
            tracking.log_stage(client, run_id, "before", {"accuracy": 0.1})
            tracking.log_stage(client, run_id, "after", {"accuracy": accuracy})
            tracking.log_stage(client, run_id, "change", {"accuracy": accuracy - 0.1})
        ids[name] = client.get_run(run_id).info.experiment_id
    return ids


def test_the_ui_opens_on_the_runs_of_the_newest_experiment(mlflow_uri):
    ids = logged_runs(mlflow_uri)
    client = MlflowClient(mlflow_uri)
    experiment = ui.newest_experiment(client)
    assert experiment.name == "newer"
    url = ui.runs_url("http://127.0.0.1:5000", experiment)
    # why: the runs view in the model-training mode, not MLflow 3's GenAI overview, with the
    # project's columns
    assert url == (
        f"http://127.0.0.1:5000/#/experiments/{ids['newer']}/runs"
        "?workflowType=machine_learning&viewStateShareKey=entropic"
    )
    # why: an experiment without the view (logged before it existed) must not get an error page
    plain = client.get_experiment(client.create_experiment("plain"))
    assert "viewStateShareKey" not in ui.runs_url("http://h:1", plain)


def test_a_store_without_runs_has_no_newest_experiment(mlflow_uri):
    assert ui.newest_experiment(tracking.get_client(mlflow_uri)) is None


def test_the_server_is_the_light_one(tmp_path):
    command = ui.server_command(f"sqlite:///{tmp_path / 'a.db'}", "127.0.0.1", 5001)
    # why: one worker and no job execution fit a laptop (14 processes and 2.9 GB otherwise)
    assert command[command.index("--workers") + 1] == "1"
    assert ui.server_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    # why: artifacts uploaded through the UI land beside the store, as the jobs' do
    destination = command[command.index("--artifacts-destination") + 1]
    assert destination == (tmp_path / "a-artifacts").as_uri()


def test_a_missing_store_names_the_variable_and_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")
    assert ui.main(["--no-browser"]) == 2
    error = capsys.readouterr().err
    assert "none.db" in error and "MLFLOW_TRACKING_URI" in error and "Fix:" in error
    # why: it must not create an empty store where the user expected their runs
    assert not (tmp_path / "none.db").exists()


def test_a_busy_port_is_an_error_not_another_stores_ui(mlflow_uri, monkeypatch, capsys):
    """An MLflow UI left running on the port would answer in place of the new one, showing
    whatever store it was started on."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # a store that exists
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert ui.main(["--no-browser", "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert f"port {port}" in error and f"PORT={port + 1}" in error and "Fix:" in error


def test_stopping_make_ui_stops_its_server(mlflow_uri):
    """`kill <pid of make ui>` (SIGTERM) must not leave the MLflow server on the port without
    its parent, where the next make ui would find it (about 10 s)."""
    uri = mlflow_uri  # a store that exists
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "entropic.ui", "--no-browser", "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        # the wrapper prints "ready" once /health answers, or exits after its own timeout
        assert any(line.startswith("ready") for line in process.stdout)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while not ui.port_is_free("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ui.port_is_free("127.0.0.1", port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium)")
def test_a_real_browser_sees_before_after_and_change_in_the_runs_table(tmp_path):
    """The light server on a real store, the page rendered by headless Chromium: the runs view
    the URL opens lists the run with the before/after/change columns (about 15 s)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logged_runs(uri)
    experiment = ui.newest_experiment(MlflowClient(uri))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        ui.server_command(uri, "127.0.0.1", port),
        env=ui.server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert ui.wait_until_up(base, server, 120), "the MLflow server did not answer"
        page = subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu"]
            + ["--window-size=2400,1000", "--virtual-time-budget=20000", "--dump-dom"]
            + [ui.runs_url(base, experiment)],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "newer-run" in page
    for stage in tracking.STAGES:
        assert f"{stage}/accuracy" in page, stage
    # why: MLflow 3.17's default landing page is the GenAI traces overview, empty for our runs
    assert "No data available" not in page
