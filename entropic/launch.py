"""Jobs that need several processes launch them: `accelerate launch`, and the vLLM server.

    python -m entropic.run +experiment=scarce_mixed model=qwen3_4b_instruct compute=multi_gpu
    python -m entropic.run +experiment=scarce_mixed model=qwen3_4b_instruct compute=zero3
    python -m entropic.run +experiment=scarce_mixed model=qwen3_4b_instruct \
        rollout=vllm_server compute=server_split

When the compute profile names an accelerate config, or the rollout needs a vLLM server the job
must start, the Hydra process does not train. It validates the config, splits the visible GPUs
(the first `compute.vllm_gpus` for the server, the rest for training), starts the server and waits
for its health route, then runs

    accelerate launch --config_file conf/accelerate/<profile>.yaml --num_processes N \
        --main_process_port <free port> -m entropic.run --config-path <conf> --config-name <name> \
        <this job's overrides> [rollout.server_url=http://127.0.0.1:8000] \
        hydra.run.dir=<this job's folder> hydra.mode=RUN

with CUDA_VISIBLE_DEVICES set to the training GPUs, and stops the server when that ends, fails,
or is interrupted (Ctrl-C, or SIGTERM from SLURM). Every rank gets the same resolved job folder
(`${now:}` would differ per rank) and the same overrides, so all ranks compose the same config.
The ranks see WORLD_SIZE in their environment (accelerate and torchrun set it) and train instead
of launching again; rank 0 alone talks to MLflow (entropic/jobs/train.py). Because the check is on
WORLD_SIZE, `accelerate launch -m entropic.run compute=multi_gpu ...` by hand works too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from entropic import models, rollout
from entropic.compute import resolve_device
from entropic.config import (
    ComputeConfig,
    ConfigError,
    RolloutConfig,
    RunConfig,
    accelerate_config_path,
    zero_stage,
)

log = logging.getLogger(__name__)

# log file of a server the job starts, in the job folder
SERVER_LOG = "vllm_server.log"
# seconds the launched ranks get to exit after SIGTERM when this process is interrupted
CHILD_GRACE_SECONDS = 120


def inside_launch() -> bool:
    """True in a rank that accelerate launch (or torchrun) started."""
    return "WORLD_SIZE" in os.environ


def starts_server(rollout_cfg: RolloutConfig | DictConfig) -> bool:
    """rollout=vllm_server without a server_url: the job has to start the server."""
    return rollout_cfg.name == "vllm_server" and rollout_cfg.get("server_url") is None


def needs_launch(cfg: DictConfig) -> bool:
    """Does this Hydra job start other processes rather than train itself?

    Reads only the compute and rollout groups, so jobs whose other keys a study fills differently
    are not validated here.
    """
    if inside_launch():
        return False
    return cfg.compute.get("accelerate_config") is not None or starts_server(cfg.rollout)


@dataclass(frozen=True)
class GpuSplit:
    # CUDA device ids of the vLLM server
    server: list[str]
    # CUDA device ids of the training processes, one process each
    training: list[str]


def split_gpus(visible: Sequence[str], compute: ComputeConfig) -> GpuSplit:
    """The first `vllm_gpus` GPUs serve, then `num_processes` (0: all the rest) train."""
    rest = list(visible[compute.vllm_gpus :])
    wanted = compute.num_processes or len(rest)
    if not rest or wanted > len(rest):
        raise ConfigError(
            f"compute.num_processes: compute={compute.name} needs {compute.vllm_gpus} server "
            f"GPU(s) and {wanted or 'at least 1'} training GPU(s); {len(visible)} are visible. "
            "Fix: request more GPUs, or lower compute.num_processes / compute.vllm_gpus"
        )
    return GpuSplit(server=list(visible[: compute.vllm_gpus]), training=rest[:wanted])


def visible_gpus() -> list[str]:
    """CUDA device ids this process may use (SLURM sets CUDA_VISIBLE_DEVICES to its allocation)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(
    accelerate_config: Path,
    num_processes: int,
    main_process_port: int,
    config_args: Sequence[str],
    overrides: Sequence[str],
    run_dir: str,
) -> list[str]:
    """The `accelerate launch` command line every rank of this job starts from."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config),
        "--num_processes",
        str(num_processes),
        "--main_process_port",
        str(main_process_port),
        "-m",
        "entropic.run",
        *config_args,
        *overrides,
        f"hydra.run.dir={run_dir}",
        # a sweep config may set MULTIRUN; each rank runs this one point
        "hydra.mode=RUN",
    ]


def hydra_config_args(hydra_cfg: DictConfig) -> list[str]:
    """--config-path/--config-dir/--config-name that reproduce how this job found its config."""
    args = []
    for source in hydra_cfg.runtime.config_sources:
        if source.schema != "file":
            continue
        if source.provider == "main":
            args += ["--config-path", source.path]
        elif source.provider == "command-line":
            args += ["--config-dir", source.path]
    return [*args, "--config-name", hydra_cfg.job.config_name]


def validate(config: RunConfig) -> GpuSplit:
    """Everything the launch needs, checked before any process starts."""
    try:
        device = resolve_device(config.compute)
        rollout.check(config, device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(str(err)) from err
    if device != "cuda":
        raise ConfigError(
            f"compute={config.compute.name} launches GPU processes and this job runs on {device}. "
            "Fix: compute=cpu (or compute=auto) on a machine without GPUs"
        )
    check_zero3(config)
    if config.compute.accelerate_config is None:
        raise ConfigError(
            f"compute.accelerate_config: compute={config.compute.name} has none, and the vLLM "
            "server needs the training to run as separate processes. Fix: compute=server_split"
        )
    return split_gpus(visible_gpus(), config.compute)


def check_zero3(config: RunConfig) -> None:
    """Under ZeRO-3 a forward pass gathers the sharded weights from every rank, so every rank
    must run the same forward passes: reject what would leave one rank waiting for the others."""
    if zero_stage(config.compute) != 3:
        return
    if config.trainer.eval_every_n_steps > 0:
        raise ConfigError(
            "trainer.eval_every_n_steps: the periodic evaluation runs on rank 0 alone, and ZeRO-3 "
            "needs every rank to generate. Fix: trainer.eval_every_n_steps=0 with compute=zero3"
        )
    # The final evaluation runs on every rank; transformers' generate keeps them in step
    # (synced_gpus) when one rank's answers end sooner, the prefix cache does not.
    if config.generation.name == "prefix_cache":
        raise ConfigError(
            "generation.name: every rank evaluates under ZeRO-3, and only transformers' generate "
            "keeps the ranks in step. Fix: generation=hf with compute=zero3"
        )
    # TRL gathers the whole model before a rollout unless told not to; then each forward pass
    # gathers, and ranks whose rollouts end at different steps would wait for each other.
    if config.rollout.name == "prefix_cache" and not config.trainer.grpo.get(
        "ds3_gather_for_generation", True
    ):
        raise ConfigError(
            "trainer.grpo.ds3_gather_for_generation: rollout=prefix_cache needs the gathered "
            "model under ZeRO-3. Fix: drop trainer.grpo.ds3_gather_for_generation, or rollout=hf"
        )


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SLURM ends a job with SIGTERM; unwind like Ctrl-C so the server and ranks get stopped."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_ranks(command: Sequence[str], env: dict[str, str]) -> int:
    """Run accelerate launch to the end; on an interrupt, stop its ranks before unwinding."""
    process = subprocess.Popen(list(command), env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=CHILD_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise


def launch(cfg: DictConfig) -> None:
    """Start the server (if any) and the training ranks of this Hydra job; wait for them."""
    config = RunConfig.from_hydra(cfg)
    split = validate(config)
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    overrides = list(hydra_cfg.overrides.task)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(split.training)}
    with sigterm_as_interrupt(), contextlib.ExitStack() as stack:
        if starts_server(config.rollout):
            port = config.rollout.server_port
            command = rollout.server_command(
                models.resolve_checkpoint(config.model),
                config.rollout,
                tensor_parallel_size=len(split.server),
                # the trainer's dtype, so the weights it pushes need no conversion
                dtype=models.dtype_name(config.model, "cuda"),
                port=port,
            )
            log.info("Starting the vLLM server on GPU(s) %s: %s", split.server, shlex.join(command))
            url = stack.enter_context(
                rollout.serving(
                    command,
                    f"http://127.0.0.1:{port}",
                    config.rollout.server_timeout,
                    env=rollout.server_env(split.server),
                    log_path=Path(run_dir) / SERVER_LOG,
                )
            )
            overrides.append(f"rollout.server_url={url}")
        command = accelerate_command(
            accelerate_config_path(config.compute),
            len(split.training),
            free_port(),
            hydra_config_args(hydra_cfg),
            overrides,
            run_dir,
        )
        log.info(
            "Launching %d training process(es) on GPU(s) %s: %s",
            len(split.training),
            split.training,
            shlex.join(command),
        )
        code = run_ranks(command, env)
    if code != 0:
        raise RuntimeError(f"accelerate launch exited with code {code}; see the log above")
