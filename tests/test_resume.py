"""Rerunning a job's folder: Ctrl-C after a checkpoint resumes from it, Ctrl-C before the first
one trains again, both in the same MLflow run; a FINISHED run is left alone.

The job runs in-process on the tiny random model (seconds, not minutes): resuming is plumbing
that does not depend on the model. Ctrl-C is the KeyboardInterrupt Python raises for SIGINT,
raised by a callback at an exact point of training, so no race with a real signal decides what
was saved; the CLI's SIGINT -> KILLED path is tracking's (test_tracking.py).
"""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import TrainerCallback

from entropic import jobs
from entropic.config import ConfigError
from entropic.jobs import train
from tests.conftest import compose_config

TINY = [
    "model=tiny_random",
    "compute=cpu",
    "compute.cpu_scale.train_questions=8",
    "compute.cpu_scale.eval_questions=8",
    "compute.cpu_scale.set_questions=4",
    "compute.cpu_scale.per_device_train_batch_size=4",
    "trainer.max_completion_length=8",
    "eval.max_new_tokens=8",
]


class CtrlC(TrainerCallback):
    """Ctrl-C right after checkpoint-<step> is complete, or (step None) before the first step."""

    def __init__(self, step: int | None):
        self.step = step

    def on_train_begin(self, args, state, control, **kwargs):
        if self.step is None:
            raise KeyboardInterrupt

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class TrainStart(TrainerCallback):
    """Where the trainer starts: its global step and its optimizer's state."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.global_step = state.global_step
        self.optimizer_state = optimizer.state_dict()["state"]


def tiny_config(folder, mlflow_uri: str, max_steps: int, save_steps: int):
    return compose_config(
        [
            *TINY,
            f"trainer.max_steps={max_steps}",
            f"trainer.save_steps={save_steps}",
            f"tracking.tracking_uri={mlflow_uri}",
        ],
        folder,
    )


def with_callback(monkeypatch, callback: TrainerCallback) -> None:
    """Every trainer the job builds gets the callback."""
    build = train.build_trainer

    def build_with_callback(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(callback)
        return trainer

    monkeypatch.setattr(train, "build_trainer", build_with_callback)


def steps(client: MlflowClient, run_id: str, name: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, name))


def only_run(client: MlflowClient):
    (run,) = client.search_runs([client.get_experiment_by_name("default").experiment_id])
    return run


def test_ctrl_c_after_a_checkpoint_resumes_from_it_in_the_same_run(
    tmp_path, mlflow_uri, monkeypatch, capsys, embedded_checkpoint
):
    cfg = tiny_config(tmp_path / "run", mlflow_uri, max_steps=3, save_steps=1)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        with_callback(patch, CtrlC(step=1))
        jobs.run(cfg)
    client = MlflowClient(mlflow_uri)
    killed = only_run(client)
    assert killed.info.status == "KILLED"
    assert steps(client, killed.info.run_id, "train/loss") == [1]
    # the rerun's own checkpoints will rotate checkpoint-1 out (save_total_limit)
    saved = torch.load(tmp_path / "run" / "checkpoint-1" / "optimizer.pt")["state"]

    start = TrainStart()
    with_callback(monkeypatch, start)
    result = jobs.run(cfg)
    finished = only_run(client)
    assert result.run_id == finished.info.run_id == killed.info.run_id
    assert finished.info.status == "FINISHED"
    # why: a restart from step 0 would log step 1 twice; a resume logs each step once
    assert steps(client, result.run_id, "train/loss") == [1, 2, 3]
    assert steps(client, result.run_id, "eval/accuracy") == [0, 3]
    # why: training continued from checkpoint-1's step with its Adam moments, not a fresh optimizer
    assert start.global_step == 1
    assert saved and saved.keys() == start.optimizer_state.keys()
    for index, moments in saved.items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(moments[name], start.optimizer_state[index][name]), (index, name)
    assert "resuming from checkpoint-1" in capsys.readouterr().out


def test_ctrl_c_before_the_first_checkpoint_trains_again_in_the_same_run(
    tmp_path, mlflow_uri, monkeypatch, capsys, embedded_checkpoint
):
    cfg = tiny_config(tmp_path / "run", mlflow_uri, max_steps=1, save_steps=0)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        with_callback(patch, CtrlC(step=None))
        jobs.run(cfg)
    client = MlflowClient(mlflow_uri)
    killed = only_run(client)
    assert killed.info.status == "KILLED"

    result = jobs.run(cfg)
    # why: the killed run is reopened and finished, not left KILLED beside a new one
    finished = only_run(client)
    assert result.run_id == finished.info.run_id == killed.info.run_id
    assert finished.info.status == "FINISHED"
    # the base evaluation is logged once (reused from predictions_before.parquet), then step 1's
    assert steps(client, result.run_id, "eval/accuracy") == [0, 1]
    assert steps(client, result.run_id, "train/loss") == [1]
    assert "no checkpoint found, so training starts again from step 0" in capsys.readouterr().out


def test_a_finished_run_is_left_untouched(tmp_path, mlflow_uri, capsys, embedded_checkpoint):
    cfg = tiny_config(tmp_path / "run", mlflow_uri, max_steps=1, save_steps=1)
    first = jobs.run(cfg)
    client = MlflowClient(mlflow_uri)
    before = client.get_run(first.run_id)
    capsys.readouterr()

    again = jobs.run(cfg)
    after = only_run(client)
    # why: it has checkpoint-1, but reopening it would log the final evaluation a second time
    assert steps(client, first.run_id, "eval/accuracy") == [0, 1]
    assert (after.info.status, after.info.end_time) == ("FINISHED", before.info.end_time)
    # the result is the finished run's, as the first job returned it (an Optuna sweep reads it)
    assert again.run_id == first.run_id
    assert again.before == pytest.approx(first.before, nan_ok=True)
    assert again.after == pytest.approx(first.after, nan_ok=True)
    assert "is already FINISHED; nothing to do" in capsys.readouterr().out


def test_a_folder_whose_run_is_not_in_the_store_is_rejected(
    tmp_path, mlflow_uri, embedded_checkpoint
):
    # tiny and one step: before this check, the job would have trained into a new run
    cfg = tiny_config(tmp_path, mlflow_uri, max_steps=1, save_steps=0)
    (tmp_path / train.RUN_ID_FILE).write_text("0123456789abcdef0123456789abcdef")
    with pytest.raises(ConfigError) as err:
        jobs.run(cfg)
    assert "output_dir" in str(err.value) and "Fix:" in str(err.value)
    client = MlflowClient(mlflow_uri)
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())
