"""Who generates the GRPO rollouts (the `rollout` config group), and the vLLM server's lifecycle.

Four backends, each a set of `trl.GRPOConfig` arguments (`ROLLOUTS`, `grpo_kwargs`):

- `hf` (the default): GRPOTrainer samples with the policy's own `generate`.
- `prefix_cache`: the policy samples through `entropic.generation`'s prefix-cached engine, given
  to GRPOTrainer as its documented `rollout_func` (`prefix_cache_rollout`): the prompt tokens
  every question shares are prefilled once per generation batch and each prompt once for its G
  completions, where `generate` prefills all G copies in full. CPU or GPU.
- `vllm_colocate`: vLLM runs inside every training process on its GPU (`vllm_mode="colocate"`),
  taking `rollout.gpu_memory_utilization` of it.
- `vllm_server`: vLLM runs as a server on GPUs of its own (`vllm_mode="server"`); GRPOTrainer sends
  prompts over HTTP and pushes the trained weights to it over NCCL after each step. Either the job
  starts it (`compute=server_split`, see entropic/launch.py) or `rollout.server_url` names a running
  one.

TRL 1.16's `trl vllm-serve` only execs `vllm serve` with the flags TRL needs (weight transfer over
NCCL, processed logprobs) and `VLLM_SERVER_DEV_MODE=1`; `server_command` builds that same command
with TRL's own `build_command`, so the job does not depend on a deprecated CLI. The server answers
`GET /health` with 200 once the model is loaded; that is what TRL's VLLMClient polls too.

`serving(...)` starts a server command in its own process group, waits for its health route, and
stops the whole group (vLLM forks engine and worker processes) when the block ends: normally, on an
exception, on Ctrl-C, or on SIGTERM turned into an exception by the caller.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from entropic.config import RolloutConfig, RunConfig

# vLLM's OpenAI-compatible server; TRL's VLLMClient.check_server polls the same route.
HEALTH_ROUTE = "/health"
# seconds between health polls
POLL_SECONDS = 1.0
# seconds a stopped server gets to exit after SIGTERM before SIGKILL
STOP_GRACE_SECONDS = 30.0


def _hf(cfg: RolloutConfig) -> dict[str, Any]:
    return {"use_vllm": False}


def _prefix_cache(cfg: RolloutConfig) -> dict[str, Any]:
    # the policy generates in the training process; the rollout_func is build_trainer's business
    return {"use_vllm": False}


def _vllm_colocate(cfg: RolloutConfig) -> dict[str, Any]:
    return {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": cfg.gpu_memory_utilization,
        "vllm_tensor_parallel_size": cfg.tensor_parallel_size,
        "vllm_enable_sleep_mode": cfg.enable_sleep_mode,
        "vllm_max_model_length": cfg.max_model_length,
    }


def _vllm_server(cfg: RolloutConfig) -> dict[str, Any]:
    if cfg.server_url is None:
        raise ValueError(
            "rollout.server_url: rollout=vllm_server has no server to talk to. Fix: use "
            "compute=server_split (the job starts one) or rollout.server_url=http://host:port"
        )
    return {
        "use_vllm": True,
        "vllm_mode": "server",
        # TRL ignores vllm_server_host/port when a base URL is given.
        "vllm_server_base_url": cfg.server_url,
        "vllm_server_timeout": cfg.server_timeout,
        "vllm_group_port": cfg.group_port,
    }


# Every rollout backend and the GRPOConfig arguments it sets.
ROLLOUTS: dict[str, Callable[[RolloutConfig], dict[str, Any]]] = {
    "hf": _hf,
    "prefix_cache": _prefix_cache,
    "vllm_colocate": _vllm_colocate,
    "vllm_server": _vllm_server,
}


def grpo_kwargs(cfg: RolloutConfig) -> dict[str, Any]:
    """The `trl.GRPOConfig` arguments of this rollout backend."""
    if cfg.name not in ROLLOUTS:
        raise ValueError(
            f"rollout.name: unknown backend {cfg.name!r}. Fix: use one of {sorted(ROLLOUTS)}"
        )
    return ROLLOUTS[cfg.name](cfg)


# GRPOConfig generation settings the prefix_cache engine does not apply, and the value that means
# "off"; with another value only TRL's own generation would honour them.
PREFIX_CACHE_UNSUPPORTED = {
    "min_p": None,
    "repetition_penalty": 1.0,
    "generation_kwargs": None,
    "cache_implementation": None,
    "use_transformers_continuous_batching": False,
}


def check(config: RunConfig, device: str) -> None:
    """Reject a rollout backend that cannot run here, before any model loads."""
    rollout = config.rollout
    if rollout.name == "prefix_cache":
        unsupported = sorted(
            key
            for key, off in PREFIX_CACHE_UNSUPPORTED.items()
            if config.trainer.grpo.get(key, off) != off
        )
        if unsupported:
            raise ValueError(
                f"trainer.grpo: rollout=prefix_cache samples with temperature, top_p and top_k "
                f"only, so {unsupported} would be ignored. Fix: drop them, or rollout=hf"
            )
        return
    if rollout.name == "hf":
        return
    if config.trainer.confidence_samples > 1:
        raise ValueError(
            f"trainer.confidence_samples={config.trainer.confidence_samples} continues each "
            f"answer in the training process, which rollout={rollout.name} does not generate in. "
            "Fix: rollout=prefix_cache or rollout=hf, or trainer.confidence_samples=1"
        )
    if device != "cuda":
        raise ValueError(
            f"rollout={rollout.name} needs CUDA GPUs and this job runs on {device}. "
            "Fix: rollout=hf or rollout=prefix_cache (the CPU backends)"
        )
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            f"rollout={rollout.name} needs vLLM. Fix: pip install -e '.[gpu]' (make install-gpu)"
        )
    needs_server = rollout.name == "vllm_server" and rollout.server_url is None
    if needs_server and not config.compute.vllm_gpus:
        raise ValueError(
            "rollout.server_url: rollout=vllm_server needs a server. Fix: compute=server_split "
            "(the job starts one on compute.vllm_gpus GPUs) or rollout.server_url=http://host:port"
        )


def prefix_cache_rollout(prompts: list, trainer, batch_size: int) -> dict[str, list]:
    """TRL `rollout_func` of rollout=prefix_cache: TRL's prompts, sampled by the policy through
    `entropic.generation` with the trainer's own settings (temperature, top_p, top_k, completion
    length, stop tokens), returning what TRL 1.16's `_generate` reads.

    TRL 1.16 hands over each prompt as many times as it wants completions of it (its
    RepeatSampler repeats each one G times in a row), so one completion per prompt is the right
    count; the engine prefills each distinct prompt once however often it appears. `logprobs` are
    the sampled tokens' log-probabilities under the processed (temperature, top-k/top-p)
    distribution, vLLM's "processed logprobs": TRL reads them only for its importance-sampling
    and off-policy corrections. The prompts are tokenised by TRL's own `_tokenize_prompts` (trl is
    pinned to 1.16.*), so they are the tokens TRL scores the completions after.
    """
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    generated = sample_policy(trainer, prompt_ids, batch_size)
    return {
        "prompt_ids": [list(ids) for ids in prompt_ids],
        "completion_ids": generated.token_ids,
        "logprobs": generated.logprobs,
    }


def sample_policy(
    trainer,
    prompt_ids: Sequence[Sequence[int]],
    batch_size: int,
    samples_per_prompt: int = 1,
    max_new_tokens: int | None = None,
):
    """`samples_per_prompt` completions of each token prompt, sampled by the trainer's policy
    through `entropic.generation` with the trainer's sampling settings and stop tokens
    (`max_new_tokens` defaults to its completion length), with their log-probabilities. The
    model is unwrapped for generation as TRL does it (DDP, ZeRO-3 parameter gathering)."""
    # imported when a rollout runs: the launcher and the config checks import this module too
    from trl.extras.profiling import profiling_context
    from trl.models.utils import unwrap_model_for_generation

    from entropic.generation import Sampling, generate

    args = trainer.args
    with (
        profiling_context(trainer, "prefix_cache.generate"),
        unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        ) as model,
    ):
        return generate(
            model,
            prompt_ids,
            max_new_tokens=max_new_tokens or trainer.max_completion_length,
            stop_ids=trainer.eos_token_ids,
            pad_token_id=trainer.processing_class.pad_token_id,
            samples_per_prompt=samples_per_prompt,
            sampling=Sampling(
                temperature=trainer.temperature, top_p=trainer.top_p, top_k=trainer.top_k or 0
            ),
            batch_size=batch_size,
            logprobs=True,
        )


def server_command(
    model: str, rollout: RolloutConfig, tensor_parallel_size: int, dtype: str, port: int
) -> list[str]:
    """`vllm serve` as `trl vllm-serve` runs it, bound to this node's loopback address."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    return build_command(
        ScriptArguments(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            host="127.0.0.1",
            port=port,
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            dtype=dtype,
            max_model_len=rollout.max_model_length,
        )
    )


def server_env(gpus: Sequence[str]) -> dict[str, str]:
    """The server's environment: its own GPUs, and the dev endpoints TRL pushes weights through."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus), "VLLM_SERVER_DEV_MODE": "1"}


def is_healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + HEALTH_ROUTE, timeout=5) as response:
            return response.status == 200
    # Refused, reset, timed out or an HTTP error status (URLError is an OSError): not yet.
    except (OSError, http.client.HTTPException):
        return False


def wait_healthy(
    process: subprocess.Popen, base_url: str, timeout: float, log_path: Path | None
) -> None:
    """Poll the health route until it answers 200; fail early if the server process exits."""
    deadline = time.monotonic() + timeout
    while not is_healthy(base_url):
        if process.poll() is not None:
            raise RuntimeError(
                f"the rollout server exited with code {process.returncode} before {base_url} "
                f"was healthy.{_log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the rollout server at {base_url} was not healthy after {timeout:.0f} s. Fix: "
                f"raise rollout.server_timeout, or read its log.{_log_tail(log_path)}"
            )
        time.sleep(POLL_SECONDS)


def stop(process: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after `grace` seconds, and
    return once every process of the group has exited (so its GPUs and port are free)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    # vLLM's engine and workers share the group; a leader that exited may have left them behind.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # SIGKILL is delivered at once but a process holding GBs takes a moment to exit.
    deadline = time.monotonic() + grace
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def group_members(pgid: int) -> list[int]:
    """Processes of a process group that have not exited (zombies count as exited: they hold no
    memory, and an init that does not reap leaves them about). Linux /proc; elsewhere none."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # exited while we looked
        if int(pgrp) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


@contextlib.contextmanager
def serving(
    command: Sequence[str],
    base_url: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Run a server command for the duration of the block; yields its base URL once healthy."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        # A session of its own: the group can be killed whole, and Ctrl-C in the terminal reaches
        # only us, so the server is stopped after the trainer, not in the middle of a request.
        process = subprocess.Popen(
            list(command),
            env=dict(env) if env is not None else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_healthy(process, base_url, timeout, log_path)
            yield base_url
        finally:
            stop(process)
    finally:
        if log_path:
            log.close()


def _log_tail(log_path: Path | None, lines: int = 20) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"\nLast lines of {log_path}:\n" + "\n".join(tail)
