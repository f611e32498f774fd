"""The real CLI, end to end, in a subprocess: embedded model, geo data, a temporary MLflow store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]

SMOKE = [
    "compute=cpu",
    "compute.cpu_scale.train_questions=8",
    "compute.cpu_scale.eval_questions=16",
    "compute.cpu_scale.per_device_train_batch_size=8",
    "trainer.max_steps=2",
    "trainer.save_steps=0",
]


def cli(
    args: list[str], tmp_path: Path, uri: str, timeout: int = 900
) -> subprocess.CompletedProcess:
    """`python -m entropic.run <args>` into tmp_path/run and the MLflow store at uri."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    # A job of its own, not a rank: this pytest process may itself run under a launcher.
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "entropic.run", *args, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_main_job_runs_end_to_end(tmp_path, mlflow_uri, embedded_checkpoint):
    done = cli(["+experiment=scarce_mixed", *SMOKE], tmp_path, mlflow_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("scarce_mixed")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    for name in (
        "accuracy",
        "confidence",
        "calibration_gap",
        "ece",
        "brier",
        "auroc",
        "format_rate",
    ):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, f"eval/{name}")]
        assert steps == [0, 2], (name, steps)  # before training and at the final global step
    assert run.data.params["reward.labeled_fraction"] == "0.5"
    # why: smollm2_135m says dtype=auto, which is fp32 on the CPU
    assert run.data.params["model.resolved_dtype"] == "float32"
    assert any(k.startswith("train/rewards/mixed") for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "reliability_diagram.png", "predictions"} <= artifacts
    # the terminal shows the before/after table and the run id
    assert run.info.run_id in done.stdout and "calibration_gap" in done.stdout


def test_rejected_config_exits_nonzero_and_leaves_no_run(tmp_path, mlflow_uri):
    done = cli(["reward.labeled_fraction=1.5"], tmp_path, mlflow_uri)
    assert done.returncode == 2
    assert "reward.labeled_fraction" in done.stderr and "Fix:" in done.stderr
    client = MlflowClient(mlflow_uri)
    experiments = client.search_experiments()
    assert all(not client.search_runs([e.experiment_id]) for e in experiments)


# three GRPO steps, a 1.6 GB checkpoint and a restart: 96 s on two idle cores
def test_interrupted_run_is_killed_then_resumes_into_the_same_run(tmp_path, mlflow_uri):
    """Ctrl-C after the first checkpoint marks the run KILLED; rerunning the same job folder
    reopens that MLflow run and finishes training from the checkpoint."""
    args = ["+experiment=scarce_mixed", *SMOKE, "trainer.save_steps=1", "trainer.max_steps=3"]
    command = [sys.executable, "-m", "entropic.run", *args, f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "HF_HUB_OFFLINE": "1"}
    job = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    checkpoint = tmp_path / "run" / "checkpoint-1" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert checkpoint.exists(), job.stderr.read()[-3000:] if job.poll() is not None else "timeout"
    job.send_signal(signal.SIGINT)
    job.wait(timeout=120)
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("scarce_mixed").experiment_id])
    assert run.info.status == "KILLED"

    done = cli(args, tmp_path, mlflow_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    (resumed,) = client.search_runs([client.get_experiment_by_name("scarce_mixed").experiment_id])
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    after = client.get_metric_history(run.info.run_id, "eval/accuracy")
    assert sorted(m.step for m in after) == [0, 3]  # one base evaluation, one after the last step
