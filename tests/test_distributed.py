"""Two processes on CPU (gloo), started by torchrun as accelerate launch starts GPU ranks.

- The rewards of a batch whose G completions straddle the two ranks equal one process's rewards
  on the whole batch, and the hand-worked values (tests/distributed_rewards.py).
- The real CLI as two ranks (the command every rank of `compute=multi_gpu` runs), on the embedded
  SmolLM2, whose answers parse, so the reward's cross-rank stability gather sees real answers:
  GRPO steps in step on both ranks, and rank 0 alone records one MLflow run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests import distributed_rewards

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(args: list[str], env: dict[str, str] | None = None, timeout: int = 600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    # A rank of its own: this pytest process may itself run under a launcher.
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(
        [*TORCHRUN, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_groups_split_across_ranks_get_the_single_process_rewards(tmp_path):
    out = tmp_path / "ranks.json"
    done = torchrun([str(ROOT / "tests" / "distributed_rewards.py"), str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["num_processes"] == 2
    ranks = sorted(result["ranks"], key=lambda r: r["rank"])
    stability = ranks[0]["stability"] + ranks[1]["stability"]
    mixed = ranks[0]["mixed"] + ranks[1]["mixed"]
    # why: q1's four answers sit on both ranks (2 + 2); per rank it would not even be a group
    assert stability == pytest.approx(
        [0.75, 0.75, 0.25, 0.75] + [0.75, 0.25, 0.75, 0.75] + [0.25] * 4
    )
    # Hand-worked: q0 and q2 labeled (Brier 1 - (correct - c)^2), q1 stability 1 - (s - c)^2,
    # an unparseable completion gets the format penalty 0.
    assert mixed == pytest.approx(
        [0.99, 0.96, 0.75, 0.91] + [0.9775, 0.8775, 0.9375, 0.6975] + [0.75, 0.0, 0.75, 0.64]
    )
    # why: the same as one process on the whole batch
    whole = distributed_rewards.score(slice(None))
    assert stability == pytest.approx(whole["stability"])
    assert mixed == pytest.approx(whole["mixed"])


TWO_RANK_SMOKE = [
    "compute=cpu",
    "compute.cpu_scale.train_questions=8",
    "compute.cpu_scale.eval_questions=8",
    "compute.cpu_scale.set_questions=4",
    "compute.cpu_scale.per_device_train_batch_size=4",
    "trainer.max_steps=2",
    "trainer.save_steps=0",
    "eval.max_new_tokens=8",
]


@pytest.mark.slow  # two ranks each load the stack and SmolLM2 on two shared cores
def test_two_rank_cli_trains_in_step_and_records_one_run(tmp_path, mlflow_uri, embedded_checkpoint):
    done = torchrun(
        [
            "-m",
            "entropic.run",
            "+experiment=scarce_mixed",
            *TWO_RANK_SMOKE,
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        env={"MLFLOW_TRACKING_URI": mlflow_uri},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("scarce_mixed")
    # why: rank 1 trains but must not open a run of its own
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")]
    assert steps == [0, 2]
    # why: TRL logs the reward of the whole (gathered) batch at every step from rank 0
    history = client.get_metric_history(run.info.run_id, "train/reward")
    assert [m.step for m in history] == [1, 2]
    # why: the embedded model's answers parse, so the gathered stability was computed on real
    # answers (a model whose answers never parse gives every group the same trivial clusters)
    parsed = client.get_metric_history(run.info.run_id, "train/calibration/format_rate")
    assert max(m.value for m in parsed) > 0
    assert (tmp_path / "run" / "mlflow_run_id.txt").read_text() == run.info.run_id
