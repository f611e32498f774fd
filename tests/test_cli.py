"""The real CLI, end to end, in a subprocess: geo data, a temporary MLflow store.

The job runs on the tiny random model: what is checked here is plumbing (exit codes, what reaches
MLflow, rerunning a folder), not the model. The smoke sweep (conftest.smoke_sweep) runs the same
job on the embedded SmolLM2 through the same CLI; resuming is tested in-process (test_resume.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from entropic import models
from entropic.config import ConfigError
from entropic.evaluate import SUMMARY_NAMES
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]

SMOKE = [
    "model=tiny_random",
    # as smollm2_135m says: the run resolves auto on the CPU by the machine's own probe
    "model.dtype=auto",
    "compute=cpu",
    "compute.cpu_scale.train_questions=8",
    "compute.cpu_scale.eval_questions=16",
    "compute.cpu_scale.set_questions=4",
    "compute.cpu_scale.per_device_train_batch_size=8",
    "trainer.max_steps=2",
    "trainer.save_steps=0",
    "trainer.max_completion_length=8",
    "eval.max_new_tokens=8",
]


def cli(
    args: list[str],
    tmp_path: Path,
    uri: str,
    timeout: int = 900,
    entry: tuple[str, ...] = ("-m", "entropic.run"),
) -> subprocess.CompletedProcess:
    """`python -m entropic.run <args>` (or `python <entry> <args>`) into tmp_path/run and the
    MLflow store at uri."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    # A job of its own, not a rank: this pytest process may itself run under a launcher.
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, *entry, *args, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_main_job_runs_end_to_end_and_a_rerun_leaves_it_finished(
    tmp_path, mlflow_uri, embedded_checkpoint
):
    # a periodic evaluation at step 1, of the held-out split and of the elements set only
    periodic = [
        "trainer.eval_every_n_steps=1",
        "eval.periodic_size=4",
        "eval.sets.elements.periodic=true",
    ]
    args = ["+experiment=scarce_mixed", *SMOKE, *periodic]
    done = cli(args, tmp_path, mlflow_uri)
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
        # before training, the periodic evaluation, and at the final global step
        assert steps == [0, 1, 2], (name, steps)
    # why: what each evaluation took (every set evaluated at its step), at its step, sums to
    # what evaluation cost the run
    seconds = client.get_metric_history(run.info.run_id, "time/eval_seconds")
    assert [m.step for m in seconds] == [0, 1, 2] and all(m.value > 0 for m in seconds)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["reward.labeled_fraction"] == "0.5"
    # why: dtype=auto on the CPU is what this machine's bf16-vs-fp32 probe says, and is logged
    expected = "bfloat16" if models.cpu_bf16_is_faster() else "float32"
    assert params["model.resolved_dtype"] == expected
    # why: the allocator mode changes speed and peak memory, so a run says which one it used
    assert params["compute.cpu_scale.malloc"] == "system"
    assert params["compute.resolved_malloc"] == "system"
    # why: the training subset's kinds are part of what a run trained on; they add up to it
    kinds = dict(entry.split("=") for entry in params["data.train_kinds_used"].split(", "))
    assert sum(map(int, kinds.values())) == int(params["data.train_questions_used"])
    for name in SUMMARY_NAMES:
        # why: the runs table and the compare view show a metric's latest value only, so before,
        # after and change are single values of their own beside the eval/* history; all at
        # step 0, which MLflow's charts draw as one bar per run
        for stage in ("before", "after", "change"):
            history = client.get_metric_history(run.info.run_id, f"{stage}/{name}")
            assert [m.step for m in history] == [0], (stage, name)
        # (rounded to 4 decimals for the table; eval/* keeps every digit)
        assert metrics[f"change/{name}"] == pytest.approx(
            metrics[f"after/{name}"] - metrics[f"before/{name}"], abs=2e-4, nan_ok=True
        )
        assert metrics[f"before/{name}"] == pytest.approx(
            at_step(client, run.info.run_id, f"eval/{name}", 0), abs=1e-4, nan_ok=True
        )
    # one name per quantity: the renamed ones, and not the names that repeated them
    assert {"train/reward", "train/mean_loss", "time/train_seconds", "time/step_seconds"} <= set(
        metrics
    )
    repeats = {"time/loss", "train/train_loss", "train/train_runtime", "train/step_time"}
    assert not repeats & set(metrics)
    assert not any(name.startswith("train/rewards/") for name in metrics)
    # why: the params are what ran (the CPU caps), the experiment's values stay as requested.*
    for key, requested, used in (
        ("trainer.num_generations", "8", "4"),
        ("trainer.per_device_train_batch_size", "32", "8"),
        ("data.eval_size", "500", "16"),
    ):
        assert (params[key], params[f"requested.{key}"]) == (used, requested)
    assert "requested.trainer.max_completion_length" not in params  # 8: under its cap
    # where it came from: the entry point and the commit of this checkout
    assert tags["mlflow.source.name"] == "entropic/run.py"
    assert tags["mlflow.source.git.commit"] == git("rev-parse", "HEAD")
    assert tags["git_dirty"] == str(bool(git("status", "--porcelain")))
    # the description is the summary table
    assert "| accuracy" in tags["mlflow.note.content"]
    assert "`trainer.num_generations` 8 -> 4" in tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "reliability_diagram.png", "predictions"} <= artifacts
    # the terminal shows the before/after table, the run id and the command that browses it
    assert run.info.run_id in done.stdout and "calibration_gap" in done.stdout
    assert f"MLFLOW_TRACKING_URI={mlflow_uri} make ui" in done.stdout
    # why: the default evaluation sets (eval.sets) are evaluated before and after, each under
    # its own name, with its own prediction tables and reliability diagram, and periodically
    # only when asked (elements here, not arithmetic)
    for name, steps in (("elements", [0, 1, 2]), ("arithmetic", [0, 2])):
        for metric in ("accuracy", "ece", "auroc", "abstain_share", "alternatives_share"):
            history = client.get_metric_history(run.info.run_id, f"eval/{name}/{metric}")
            assert [m.step for m in history] == steps, (name, metric)
        tables = {a.path for a in client.list_artifacts(run.info.run_id, f"predictions/{name}")}
        assert tables == {f"predictions/{name}/before.json", f"predictions/{name}/after.json"}
        assert f"-- {name} --" in done.stdout
        assert run.data.params[f"eval.sets.{name}.questions_used"] == "4"
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "reliability_diagram")}
    assert figures == {"reliability_diagram/elements.png", "reliability_diagram/arithmetic.png"}
    # why: the behaviour table is printed with the summaries, a row per set and stage
    assert "-- behaviour --" in done.stdout and "alternatives_share" in done.stdout

    # rerunning the folder of a finished run says so and exits 0, leaving the run as it was
    again = cli(args, tmp_path, mlflow_uri)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"run {run.info.run_id} in " in again.stdout and "already FINISHED" in again.stdout
    (rerun,) = client.search_runs([experiment.experiment_id])
    assert (rerun.info.run_id, rerun.info.end_time) == (run.info.run_id, run.info.end_time)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/ece")] == [0, 1, 2]


def at_step(client: MlflowClient, run_id: str, name: str, step: int) -> float:
    (value,) = [m.value for m in client.get_metric_history(run_id, name) if m.step == step]
    return value


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        # our own range check
        (["reward.labeled_fraction=1.5"], "reward.labeled_fraction"),
        # a pass-through typo, caught by TRL's field list with the close match as the fix
        (["+trainer.grpo.top_pp=0.9"], "did you mean trainer.grpo.top_p"),
        # a mix the chosen reward would ignore
        (["reward=brier", "reward.labeled_fraction=0.5"], "reward=mixed reward.labeled_fraction"),
    ],
)
def test_rejected_config_exits_nonzero_and_leaves_no_run(overrides, shown, tmp_path, mlflow_uri):
    done = cli(overrides, tmp_path, mlflow_uri)
    assert done.returncode == 2
    assert shown in done.stderr and "Fix:" in done.stderr
    client = MlflowClient(mlflow_uri)
    experiments = client.search_experiments()
    assert all(not client.search_runs([e.experiment_id]) for e in experiments)


def test_an_evaluation_only_job_on_a_users_file(tmp_path, mlflow_uri, embedded_checkpoint):
    # why: the prompting baseline with a set of one's own is the eval-only job
    path = tmp_path / "mine.jsonl"
    path.write_text(
        "\n".join(f'{{"question": "What is {n} + {n}?", "answers": ["{2 * n}"]}}' for n in range(5))
    )
    mine = f"+eval.sets.mine={{source: jsonl, path: {path}, size: 5}}"
    done = cli(["+experiment=prompting_baseline", *SMOKE, mine], tmp_path, mlflow_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("prompting_baseline").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["trained"] == "False"
    # evaluated once (step 0), never trained
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/mine/accuracy")] == [0]
    assert "-- mine --" in done.stdout and "untrained" in done.stdout


def test_a_bad_evaluation_set_exits_before_any_model_and_leaves_no_run(tmp_path, mlflow_uri):
    missing = "+eval.sets.mine={source: jsonl, path: /nonexistent/q.jsonl, size: 5}"
    done = cli([missing], tmp_path, mlflow_uri)
    assert done.returncode == 2
    assert "eval.sets.mine.path=/nonexistent/q.jsonl does not exist" in done.stderr
    client = MlflowClient(mlflow_uri)
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


# `python -m entropic.run` with a data loader that has a bug: it leaks eval questions into
# training, which entropic.data raises as RuntimeError. (run as __main__, as -m does, so that
# Hydra finds conf/ beside the entry point)
CLI_WITH_A_LOADER_BUG = """
import runpy

import entropic.jobs.context


def leaking_loader(*args, **kwargs):
    raise RuntimeError("data=geo: train and eval share question_ids ['q1']")


entropic.jobs.context.load_questions = leaking_loader
runpy.run_module("entropic.run", run_name="__main__", alter_sys=True)
"""


def test_a_bug_exits_with_its_traceback_not_as_a_rejected_config(tmp_path, mlflow_uri):
    # why: exit 2 without a traceback says "your config is wrong, here is the fix"; a bug must
    # show where it happened instead, and must not be filed as bad input
    done = cli([], tmp_path, mlflow_uri, entry=("-c", CLI_WITH_A_LOADER_BUG))
    assert done.returncode not in (0, 2), done.stderr[-3000:]
    assert "RuntimeError: data=geo: train and eval share question_ids" in done.stderr
    assert "Traceback" in done.stderr and "leaking_loader" in done.stderr
    assert "Fix:" not in done.stderr


def test_a_bug_in_an_open_run_ends_it_failed(tmp_path, mlflow_uri, monkeypatch):
    # why: a run left RUNNING (or FINISHED) by a crash would read as a result in the MLflow UI
    from entropic.jobs import run, train

    def broken_evaluation(*args, **kwargs):
        raise RuntimeError("a bug in the base evaluation")

    monkeypatch.setattr(train, "evaluate_base", broken_evaluation)
    cfg = compose_config([*SMOKE, f"tracking.tracking_uri={mlflow_uri}"], tmp_path)
    with pytest.raises(RuntimeError, match="a bug in the base evaluation") as err:
        run(cfg)
    assert not isinstance(err.value, ConfigError)
    client = MlflowClient(mlflow_uri)
    (failed,) = client.search_runs([client.get_experiment_by_name("default").experiment_id])
    assert failed.info.status == "FAILED"
