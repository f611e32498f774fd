"""Rollout backends: the GRPOConfig each profile builds, and the vLLM server's lifecycle.

The lifecycle tests start a real process (tests/stand_in_server.py, a /health route and a forked
worker, as vLLM has) through the same `rollout.serving` the launcher uses.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from entropic import rollout
from entropic.config import ConfigError, RunConfig
from entropic.jobs.context import prepare
from entropic.training import build_grpo_config
from tests.conftest import compose_config
from tests.test_training import tiny_trainer

STAND_IN = str(Path(__file__).with_name("stand_in_server.py"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # why: the CPU default generates with the policy itself
        ([], {"use_vllm": False}),
        # why: the prefix cache generates with the policy too, through TRL's rollout_func
        (["rollout=prefix_cache"], {"use_vllm": False}),
        # why: colocate shares the training GPU, so its memory share must reach TRL
        (
            ["rollout=vllm_colocate", "rollout.gpu_memory_utilization=0.45"],
            {
                "use_vllm": True,
                "vllm_mode": "colocate",
                "vllm_gpu_memory_utilization": 0.45,
                "vllm_tensor_parallel_size": 1,
                "vllm_enable_sleep_mode": False,
            },
        ),
        # why: server mode talks to the URL the launcher (or the user) gives; host/port unused
        (
            ["rollout=vllm_server", "rollout.server_url=http://10.0.0.7:8011"],
            {
                "use_vllm": True,
                "vllm_mode": "server",
                "vllm_server_base_url": "http://10.0.0.7:8011",
                "vllm_server_timeout": 600.0,
                "vllm_group_port": 51216,
            },
        ),
    ],
)
def test_each_rollout_profile_builds_the_right_grpo_config(overrides, expected, tmp_path):
    config = RunConfig.from_hydra(compose_config(overrides, tmp_path))
    args = build_grpo_config(config, str(tmp_path), "cpu", torch.float32)
    assert {key: getattr(args, key) for key in expected} == expected


def test_server_mode_without_a_url_is_refused_when_building_the_trainer(tmp_path):
    # why: the launcher always fills in server_url; a GRPOConfig without one would talk to 0.0.0.0
    config = RunConfig.from_hydra(compose_config(["rollout=vllm_server"], tmp_path))
    with pytest.raises(ValueError, match="rollout.server_url"):
        build_grpo_config(config, str(tmp_path), "cpu", torch.float32)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["rollout.name=vllm"], "rollout.name"),  # a typo lists the backends
        (["rollout=vllm_colocate", "rollout.gpu_memory_utilization=0"], "gpu_memory_utilization"),
        (["rollout=vllm_colocate", "rollout.gpu_memory_utilization=1.5"], "gpu_memory_utilization"),
        (["rollout=vllm_colocate", "rollout.tensor_parallel_size=0"], "tensor_parallel_size"),
        (["rollout=vllm_server", "rollout.server_timeout=0"], "server_timeout"),
        (["rollout=prefix_cache", "rollout.batch_size=0"], "rollout.batch_size"),  # no rows
    ],
)
def test_bad_rollout_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_hydra(compose_config(overrides))
    assert key in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["rollout=vllm_colocate"],  # why: vLLM has no CPU path in TRL's colocate mode
        ["rollout=vllm_server", "rollout.server_url=http://127.0.0.1:8000"],  # nor as a client
    ],
)
def test_vllm_rollouts_are_rejected_on_cpu_before_any_model_loads(overrides, tmp_path):
    with pytest.raises(ConfigError) as err:
        prepare(compose_config(["compute=cpu", *overrides], tmp_path))
    assert "rollout=hf" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "accepted"),
    [
        ([], True),  # why: the prefix cache is a CPU backend
        (["+trainer.grpo.top_k=20"], True),  # top-k is applied
        (["+trainer.grpo.min_p=0.1"], False),  # min-p is not: it would be ignored silently
        (["+trainer.grpo.repetition_penalty=1.2"], False),
        (["+trainer.grpo.repetition_penalty=1.0"], True),  # the value that means "off"
        (["+trainer.grpo.generation_kwargs={suppress_tokens:[5]}"], False),
    ],
)
def test_prefix_cache_rollouts_refuse_settings_they_would_ignore(overrides, accepted, tmp_path):
    cfg = compose_config(["compute=cpu", "rollout=prefix_cache", *overrides], tmp_path)
    if accepted:
        prepare(cfg)
        return
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert "trainer.grpo" in str(err.value) and "rollout=hf" in str(err.value)


def test_prefix_cache_rollouts_feed_a_grpo_step(tmp_path):
    trainer, config = tiny_trainer(tmp_path, ["rollout=prefix_cache", "trainer.max_steps=1"])
    rollout_func = trainer.rollout_func
    calls = []

    def recording_rollout(prompts, grpo_trainer):
        output = rollout_func(prompts, grpo_trainer)
        calls.append((prompts, output))
        return output

    # the same rollout, recorded: TRL calls whatever trainer.rollout_func holds
    trainer.rollout_func = recording_rollout
    trainer.train()
    assert trainer.state.global_step == 1
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(v) for v in losses)
    ((prompts, output),) = calls
    # why: TRL hands over each prompt G times and wants one completion for each it handed over
    assert len(output["completion_ids"]) == len(prompts) == 4
    assert len({str(p) for p in prompts}) == 2
    # why: the prompt tokens are TRL's own tokenisation, which it scores the completions after
    assert output["prompt_ids"] == [list(ids) for ids in trainer._tokenize_prompts(prompts)[0]]
    for completion, logprobs in zip(output["completion_ids"], output["logprobs"], strict=True):
        assert 1 <= len(completion) <= config.trainer.max_completion_length
        assert len(logprobs) == len(completion) and all(lp <= 0 for lp in logprobs)


def test_server_command_is_trls_vllm_serve_on_loopback():
    cfg = rollout.RolloutConfig(name="vllm_server", gpu_memory_utilization=0.85)
    command = rollout.server_command(
        "/ckpt/qwen", cfg, tensor_parallel_size=2, dtype="auto", port=8011
    )
    assert command[:5] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", "/ckpt/qwen"]
    flags = dict(zip(command[5::2], command[6::2], strict=False))
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "8011"
    assert flags["--tensor-parallel-size"] == "2"
    assert flags["--gpu-memory-utilization"] == "0.85"
    # why: TRL pushes the trained weights through this engine; without it every step fails
    assert "--weight-transfer-config" in command
    env = rollout.server_env(["0", "1"])
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["VLLM_SERVER_DEV_MODE"] == "1"


# ------------------------------------------------------------------------------------------------
# Lifecycle against a real process.
# ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it has exited all the same
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def stand_in(port: int, tmp_path: Path, *flags: str) -> list[str]:
    pid_file = tmp_path / "worker.pid"
    return [
        sys.executable,
        STAND_IN,
        "--port",
        str(port),
        "--worker-pid-file",
        str(pid_file),
        *flags,
    ]


def worker_pid(tmp_path: Path) -> int:
    return int((tmp_path / "worker.pid").read_text())


def test_server_is_healthy_inside_the_block_and_gone_after(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with rollout.serving(stand_in(port, tmp_path, "--healthy-after", "1.5"), url, 30) as base_url:
        # why: the block must not start before /health says 200 (the stand-in waits 1.5 s)
        assert time.monotonic() - started >= 1.5
        assert base_url == url
        with urllib.request.urlopen(url + "/health") as response:
            assert response.status == 200
        worker = worker_pid(tmp_path)
        assert alive(worker)
    assert not rollout.is_healthy(url)
    # why: vLLM forks engine/worker processes; stopping only the leader would leak GPUs, and
    # the block ends only once they have exited
    assert not alive(worker)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("training crashed"),  # why: a failed run must not leave a server behind
        KeyboardInterrupt(),  # why: Ctrl-C (and SIGTERM, which the launcher turns into it)
    ],
)
def test_server_is_stopped_when_the_block_raises(error, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        pytest.raises(type(error)),
        rollout.serving(stand_in(port, tmp_path), url, 30, log_path=tmp_path / "server.log"),
    ):
        worker = worker_pid(tmp_path)
        raise error
    assert not rollout.is_healthy(url)
    assert not alive(worker)
    assert "serving on" in (tmp_path / "server.log").read_text()


def test_health_that_never_comes_times_out_and_stops_the_server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with (
        pytest.raises(TimeoutError, match="rollout.server_timeout"),
        rollout.serving(stand_in(port, tmp_path, "--healthy-after", "-1"), url, 3),
    ):
        pytest.fail("the block ran without a healthy server")
    # why: the wait honours the timeout instead of hanging (3 s plus one poll and the stop)
    assert 3 <= time.monotonic() - started < 20
    assert not alive(worker_pid(tmp_path))


def test_a_server_that_dies_while_starting_fails_fast_with_its_log(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    command = stand_in(port, tmp_path, "--healthy-after", "-1", "--exit-after", "0.5")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code 3") as err:  # noqa: SIM117
        with rollout.serving(command, url, 120, log_path=log):
            pytest.fail("the block ran without a healthy server")
    # why: no need to sit out the 120 s timeout once the process is gone
    assert time.monotonic() - started < 30
    assert "giving up" in str(err.value)
    assert not alive(worker_pid(tmp_path))
