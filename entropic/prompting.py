"""Chat prompts that ask for an answer and a stated confidence (the `prompt` config group).

Measured on SmolLM2-135M: a system message plus two few-shot turns in the `Answer:` /
`Confidence:` line format gets the format in about 78% of samples, the tag format in 0%. Both are
kept, since larger models handle tags, and `entropic.parsing` reads both.

`prompt=reasoning` is for models that reason (Qwen3-4B-Instruct on a GPU): a few sentences of
thought before the two lines, as in the reference's traces, with room for them
(`prompt.completion_tokens`, applied by `fit_completion_length`). The CPU default keeps the short
prompt: SmolLM2-135M's reasoning would cost tokens it cannot use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import datasets

from entropic.config import PromptConfig, RunConfig


def format_reply(answer: str, confidence: int, fmt: str, reasoning: str = "") -> str:
    """The assistant turn the few-shot examples teach."""
    if fmt == "tags":
        return f"<answer>{answer}</answer><confidence>{confidence}</confidence>"
    lines = f"Answer: {answer}\nConfidence: {confidence}"
    return f"{reasoning.strip()}\n{lines}" if fmt == "reasoning" else lines


def build_messages(question: str, cfg: PromptConfig) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": cfg.system}]
    for turn in cfg.few_shot:
        messages.append({"role": "user", "content": turn["question"]})
        messages.append(
            {
                "role": "assistant",
                "content": format_reply(
                    turn["answer"], int(turn["confidence"]), cfg.format, turn.get("reasoning", "")
                ),
            }
        )
    messages.append({"role": "user", "content": question})
    return messages


def add_prompts(dataset: datasets.Dataset, cfg: PromptConfig) -> datasets.Dataset:
    """Add TRL's conversational `prompt` column; the other columns reach the reward functions."""

    def _one(row: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": build_messages(row["question"], cfg)}

    return dataset.map(_one, desc="prompts")


# The lengths fit_completion_length may raise, by dotted key.
FITTED_KEYS = ("trainer.max_completion_length", "eval.max_new_tokens")


def fit_completion_length(cfg: RunConfig) -> RunConfig:
    """Give rollouts and evaluation the completion length the prompt needs
    (`prompt.completion_tokens`): a reasoning reply cut at the CPU profile's 32 tokens never
    reaches its Answer line. The job logs what this changed (FITTED_KEYS) with the CPU caps."""
    needed = cfg.prompt.completion_tokens
    if needed is None:
        return cfg
    trainer = dataclasses.replace(
        cfg.trainer, max_completion_length=max(cfg.trainer.max_completion_length, needed)
    )
    evaluation = dataclasses.replace(cfg.eval, max_new_tokens=max(cfg.eval.max_new_tokens, needed))
    return dataclasses.replace(cfg, trainer=trainer, eval=evaluation)
