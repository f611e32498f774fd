"""`make ui`: the MLflow UI on the project's store, opened on the runs of its newest experiment.

    make ui                                             # ./mlflow.db, or $MLFLOW_TRACKING_URI
    MLFLOW_TRACKING_URI=sqlite:////tmp/demo/mlflow.db make ui
    make ui PORT=5001                                   # python -m entropic.ui --port 5001

MLflow 3.17 opens an experiment in its GenAI mode: a traces overview that is empty for training
runs. The URL printed (and opened where there is a display) is the experiment's runs view in the
"Model training" mode (`workflowType=machine_learning`), with the columns of the view every
experiment carries (`tracking.runs_view`): before/after/change of the eval metrics, the params
that tell runs apart, the commit. MLflow shows it as a "shared view"; "Override saved view" keeps
it as your own.

The server is a light one: one worker and MLflow's job execution off (a task queue with its own
worker processes, which only the GenAI features use). On 2 cores `mlflow ui` with its defaults
started 14 processes, used 2.9 GB and answered after 23 s; one worker without job execution
answered in 9 s with 564 MB, and serves the runs, charts, compare view and artifacts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path

from mlflow.entities import Experiment
from mlflow.tracking import MlflowClient

from entropic import tracking

# MLflow's own default port; `make ui PORT=...` picks another.
DEFAULT_PORT = 5000
# The UI's switch between its GenAI and its model-training layout.
TRAINING_MODE = "workflowType=machine_learning"
# How long the server may take to answer before `make ui` gives up on it.
START_TIMEOUT_S = 180


def ui_command(tracking_uri: str, cwd: Path | None = None) -> str:
    """The exact command that opens `tracking_uri` in the UI, typed where the job ran: plain
    `make ui` for the project's own store, with the store named otherwise, and `-C <project>`
    when the job ran outside the project folder."""
    cwd = (cwd or Path.cwd()).resolve()
    make = (
        "make ui"
        if cwd == tracking.PROJECT_ROOT
        else f"make -C {shlex.quote(str(tracking.PROJECT_ROOT))} ui"
    )
    if tracking_uri == tracking.PROJECT_STORE_URI:
        return make
    return f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)} {make}"


def closing_line(run_id: str, tracking_uri: str) -> str:
    """A job's last line: where its run is, and the command that opens it."""
    return f"MLflow run {run_id} in {tracking_uri}; browse it with: {ui_command(tracking_uri)}"


def newest_experiment(client: MlflowClient) -> Experiment | None:
    """The experiment of the most recently started run (None for a store without runs)."""
    experiments = {e.experiment_id: e for e in client.search_experiments()}
    if not experiments:
        return None
    runs = client.search_runs(
        list(experiments), order_by=["attributes.start_time DESC"], max_results=1
    )
    return experiments[runs[0].info.experiment_id] if runs else None


def runs_url(base: str, experiment: Experiment) -> str:
    """The runs view of an experiment in the model-training mode, with the project's columns
    where the experiment has that view (experiments logged before it existed do not)."""
    url = f"{base}/#/experiments/{experiment.experiment_id}/runs?{TRAINING_MODE}"
    if tracking.RUNS_VIEW_TAG in experiment.tags:
        url += f"&viewStateShareKey={tracking.RUNS_VIEW_KEY}"
    return url


def server_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """`mlflow server` with one worker; artifacts the UI uploads go beside the store too."""
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", tracking_uri,
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    root = tracking.artifact_root(tracking_uri)
    if root is not None:
        command += ["--artifacts-destination", root]
    return command


def server_env() -> dict[str, str]:
    """The environment of the server: job execution off (MLflow 3.17 has no flag for it)."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def wait_until_up(base: str, server: subprocess.Popen, timeout_s: float) -> bool:
    """True once the server answers /health; False if it exits or the timeout passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    return False


def port_is_free(host: str, port: int) -> bool:
    """Whether the server can bind: an MLflow UI left running there would answer /health in its
    place, and `make ui` would open the other store's runs."""
    with socket.socket() as probe:
        # as uvicorn binds: connections of an earlier server waiting out TIME_WAIT do not count
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def stop_on_sigterm() -> None:
    """SIGTERM (kill, a closing terminal's session) unwinds like Ctrl-C, so the server is stopped
    too rather than left running without its parent."""

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


def has_display() -> bool:
    """Whether a browser can open here; on a server over ssh `webbrowser` would start a text
    browser in the terminal instead."""
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to serve on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve on")
    parser.add_argument("--no-browser", action="store_true", help="print the URL only")
    args = parser.parse_args(argv)

    uri = tracking.default_tracking_uri()
    store = tracking.sqlite_path(uri)
    if store is not None and not store.exists():
        print(
            f"error: no MLflow store at {store}. Fix: make demo (it writes one there), or name "
            "the store a run printed: MLFLOW_TRACKING_URI=sqlite:///<path>.db make ui",
            file=sys.stderr,
        )
        return 2
    if not port_is_free(args.host, args.port):
        print(
            f"error: port {args.port} on {args.host} is in use (another MLflow UI?). Fix: stop it, "
            f"or make ui PORT={args.port + 1}",
            file=sys.stderr,
        )
        return 2
    base = f"http://{args.host}:{args.port}"
    experiment = newest_experiment(MlflowClient(uri))
    url = runs_url(base, experiment) if experiment else f"{base}/#/experiments?{TRAINING_MODE}"
    print(f"MLflow UI on {uri}")
    if experiment:
        print(f"  runs of {experiment.name} (the newest run's experiment): {url}")
    else:
        print(f"  no runs yet (make demo logs one): {url}")
    print(f"  every experiment: {base}/#/experiments?{TRAINING_MODE}")
    print("  starting the server (one worker, job execution off); Ctrl-C stops it", flush=True)
    stop_on_sigterm()
    server = subprocess.Popen(server_command(uri, args.host, args.port), env=server_env())
    try:
        if not wait_until_up(base, server, START_TIMEOUT_S):
            print(f"error: the MLflow server did not answer on {base}", file=sys.stderr)
            return 1
        print(f"ready: {url}", flush=True)
        if not args.no_browser and has_display():
            webbrowser.open(url)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()  # mlflow's launcher passes it on to its worker
            server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
