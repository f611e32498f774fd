"""Compute profiles and the launcher: what `accelerate launch` gets, how GPUs split, when to launch.

Nothing here needs a GPU: the command line and the split are pure, and the CLI test checks that a
GPU profile on this CPU machine is refused before any process starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from entropic import launch
from entropic.config import ComputeConfig, ConfigError, RunConfig
from tests.conftest import CONF_DIR, compose_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("profile", "device", "num_processes", "accelerate_config", "vllm_gpus", "zero_stage"),
    [
        ("cpu", "cpu", 1, None, 0, 0),  # why: the laptop never launches
        ("single_gpu", "cuda", 1, None, 0, 0),  # why: one GPU trains in the Hydra process
        ("multi_gpu", "cuda", 0, "conf/accelerate/multi_gpu.yaml", 0, 0),  # DDP on every GPU
        ("zero2", "cuda", 0, "conf/accelerate/zero2.yaml", 0, 2),  # optimizer/grads sharded
        ("zero3", "cuda", 0, "conf/accelerate/zero3.yaml", 0, 3),  # parameters sharded too
        ("server_split", "cuda", 0, "conf/accelerate/multi_gpu.yaml", 1, 0),  # 1 vLLM + N-1 DDP
    ],
)
def test_every_compute_profile_composes(
    profile, device, num_processes, accelerate_config, vllm_gpus, zero_stage
):
    compute = RunConfig.from_hydra(compose_config([f"compute={profile}"])).compute
    assert (compute.name, compute.device, compute.num_processes) == (profile, device, num_processes)
    assert (compute.accelerate_config, compute.vllm_gpus) == (accelerate_config, vllm_gpus)
    # why: GPU profiles run the experiment's own sizes
    assert (compute.cpu_scale is None) == (profile != "cpu")
    if accelerate_config:
        assert launch.accelerate_config_path(compute).is_file()
    assert launch.zero_stage(compute) == zero_stage


@pytest.mark.parametrize(
    ("profile", "rollout"),
    [
        ("multi_gpu", "vllm_colocate"),
        ("zero3", "hf"),
        ("server_split", "vllm_server"),
    ],
)
def test_gpu_profiles_compose_with_every_experiment(profile, rollout):
    # why: the same experiment configs run on a laptop and on a cluster, with no other change
    for experiment in sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")):
        cfg = compose_config(
            [f"+experiment={experiment}", f"compute={profile}", f"rollout={rollout}"]
        )
        if cfg.adapter.get("centre") and (rollout.startswith("vllm") or profile == "zero3"):
            # but for the read-out's gate, which a merge (vLLM) or ZeRO-3's shards cannot hold:
            # that pairing is refused with the config
            with pytest.raises(ConfigError, match="adapter.centre"):
                RunConfig.from_hydra(cfg)
            continue
        config = RunConfig.from_hydra(cfg)
        assert (config.compute.name, config.rollout.name) == (profile, rollout)


def test_accelerate_command_is_exact():
    command = launch.accelerate_command(
        Path("/repo/conf/accelerate/multi_gpu.yaml"),
        3,
        29611,
        ["--config-path", "/repo/conf", "--config-name", "config"],
        [
            "+experiment=scarce_mixed",
            "compute=server_split",
            "rollout.server_url=http://127.0.0.1:8000",
        ],
        "/repo/outputs/scarce_mixed/2026-01-01_00-00-00",
    )
    assert command == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "/repo/conf/accelerate/multi_gpu.yaml",
        "--num_processes",
        "3",
        "--main_process_port",
        "29611",
        "-m",
        "entropic.run",
        "--config-path",
        "/repo/conf",
        "--config-name",
        "config",
        "+experiment=scarce_mixed",
        "compute=server_split",
        "rollout.server_url=http://127.0.0.1:8000",
        # why: ${now:} differs per rank; every rank must write to this job's folder
        "hydra.run.dir=/repo/outputs/scarce_mixed/2026-01-01_00-00-00",
        # why: a sweep config sets MULTIRUN; each rank runs only this point
        "hydra.mode=RUN",
    ]


def test_hydra_config_args_reproduce_the_search_path():
    hydra_cfg = OmegaConf.create(
        {
            "job": {"config_name": "mix_ratio"},
            "runtime": {
                "config_sources": [
                    {"path": "hydra.conf", "schema": "pkg", "provider": "hydra"},
                    {"path": "/repo/conf", "schema": "file", "provider": "main"},
                    {"path": "/repo/sweeps", "schema": "file", "provider": "command-line"},
                    {"path": "", "schema": "structured", "provider": "schema"},
                ]
            },
        }
    )
    # why: `-cd sweeps -cn mix_ratio` must reach the ranks, or they compose the wrong config
    assert launch.hydra_config_args(hydra_cfg) == [
        "--config-path",
        "/repo/conf",
        "--config-dir",
        "/repo/sweeps",
        "--config-name",
        "mix_ratio",
    ]


@pytest.mark.parametrize(
    ("visible", "vllm_gpus", "num_processes", "server", "training"),
    [
        (["0", "1", "2", "3"], 0, 0, [], ["0", "1", "2", "3"]),  # all GPUs train
        (["0", "1", "2", "3"], 1, 0, ["0"], ["1", "2", "3"]),  # server_split on 4 GPUs
        (["4", "5", "6", "7"], 2, 0, ["4", "5"], ["6", "7"]),  # SLURM's ids are kept, TP=2 server
        (["0", "1", "2", "3"], 1, 2, ["0"], ["1", "2"]),  # an explicit process count
    ],
)
def test_gpus_split_between_server_and_training(
    visible, vllm_gpus, num_processes, server, training
):
    compute = ComputeConfig(
        name="server_split", device="cuda", num_processes=num_processes, vllm_gpus=vllm_gpus
    )
    split = launch.split_gpus(visible, compute)
    assert (split.server, split.training) == (server, training)


@pytest.mark.parametrize(
    ("visible", "vllm_gpus", "num_processes"),
    [
        (["0"], 1, 0),  # why: the server would take the only GPU, leaving none to train
        (["0", "1"], 0, 3),  # why: more processes than GPUs
        ([], 0, 0),  # why: no GPU at all
    ],
)
def test_impossible_gpu_splits_name_the_keys(visible, vllm_gpus, num_processes):
    compute = ComputeConfig(
        name="server_split", device="cuda", num_processes=num_processes, vllm_gpus=vllm_gpus
    )
    with pytest.raises(ConfigError, match="compute.num_processes") as err:
        launch.split_gpus(visible, compute)
    assert "Fix:" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "rejected"),
    [
        (["compute=zero3"], None),  # the defaults run under ZeRO-3
        # rank 0 evaluates alone mid-training while the others wait in a gather
        (["compute=zero3", "trainer.eval_every_n_steps=1"], "trainer.eval_every_n_steps"),
        # every rank evaluates at the end; only generate's synced_gpus keeps them in step
        (["compute=zero3", "generation=prefix_cache"], "generation.name"),
        (["compute=multi_gpu", "generation=prefix_cache"], None),  # DDP: rank 0 evaluates alone
        # TRL gathers the model for rollouts, so the ranks' rollouts need not end together
        (["compute=zero3", "rollout=prefix_cache"], None),
        # ...unless told not to gather
        (
            [
                "compute=zero3",
                "rollout=prefix_cache",
                "+trainer.grpo.ds3_gather_for_generation=false",
            ],
            "trainer.grpo.ds3_gather_for_generation",
        ),
    ],
)
def test_zero3_rejects_what_would_leave_a_rank_waiting(overrides, rejected):
    config = RunConfig.from_hydra(compose_config(overrides))
    if rejected is None:
        launch.check_zero3(config)
        return
    with pytest.raises(ConfigError, match=rejected) as err:
        launch.check_zero3(config)
    assert "Fix:" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "world_size", "expected"),
    [
        (["compute=cpu"], None, False),  # the laptop trains in-process
        (["compute=single_gpu"], None, False),
        (["compute=multi_gpu"], None, True),  # the Hydra process launches the ranks
        (["compute=zero3"], None, True),
        (["compute=multi_gpu"], "4", False),  # why: a launched rank must train, not relaunch
        (["rollout=vllm_server", "compute=server_split"], None, True),
        # why: a given server needs no launch from a single-GPU job
        (
            ["rollout=vllm_server", "rollout.server_url=http://h:8000", "compute=single_gpu"],
            None,
            False,
        ),
        # why: with no URL the job must start a server, whatever the profile
        (["rollout=vllm_server", "compute=single_gpu"], None, True),
    ],
)
def test_needs_launch(overrides, world_size, expected, monkeypatch):
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    assert launch.needs_launch(compose_config(overrides)) is expected


def test_slurm_launcher_profile_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "output_dir=x"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 4, 1)
    assert launcher.timeout_min == 720


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_gpu_profile_on_a_cpu_machine_exits_2_before_launching(tmp_path, mlflow_uri):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "entropic.run",
            "compute=multi_gpu",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "compute=multi_gpu asks for CUDA" in done.stderr and "Fix:" in done.stderr
    # why: nothing was launched, so nothing was recorded
    client = MlflowClient(mlflow_uri)
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


@pytest.mark.slow  # ~1-2 min: a real job through submitit's local executor
def test_submitit_local_runs_one_sweep_point(tmp_path, mlflow_uri, embedded_checkpoint):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "entropic.run",
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=20",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
            "+experiment=scarce_mixed",
            "model=tiny_random",
            "compute=cpu",
            "compute.cpu_scale.train_questions=8",
            "compute.cpu_scale.eval_questions=8",
            "compute.cpu_scale.set_questions=4",
            "compute.cpu_scale.per_device_train_batch_size=4",
            "trainer.max_steps=1",
            "trainer.save_steps=0",
            "eval.max_new_tokens=8",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("scarce_mixed").experiment_id])
    assert run.info.status == "FINISHED"
    # why: the job ran in submitit's own process, which leaves its logs in the sweep folder
    assert list((tmp_path / "multirun" / ".submitit").glob("*/*_log.out"))
    assert (tmp_path / "multirun" / "0" / "mlflow_run_id.txt").read_text() == run.info.run_id
